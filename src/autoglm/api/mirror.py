"""The internal mirror (``mirror: true``, ``autoglm serve --mirror``): the registry's verified
models over the Hugging Face HTTP API, which ``autoglm model pull --endpoint`` and the
official ``huggingface_hub`` client read. What is published is ``supply/mirror.py``'s.

- ``GET /api/models``: the repositories this caller may pull;
- ``GET /api/models/autoglm/<name>[/revision/<rev>]``: ``sha`` (the commit) and ``siblings``
  with each file's size, its LFS SHA-256 and blob id;
- ``GET /api/models/autoglm/<name>/tree/<rev>[/<dir>]``: the same as a tree listing (what
  ``snapshot_download`` reads);
- ``GET|HEAD /autoglm/<name>/resolve/<rev>/<file>``: the bytes, ``Range`` honoured (206), with
  ``X-Repo-Commit``, ``ETag`` / ``X-Linked-Etag`` (the SHA-256) and ``X-Linked-Size``.

Every route needs a key whose principal holds ``model.pull`` (the edge authenticates them:
they are in the route table); a caller without it gets 403, a model it may not pull is the
same 404 (``X-Error-Code: RepoNotFound``) as one that is not published. Each download
(a GET of a file) is an audit record.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from typing import Any

from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response

from autoglm.audit import Record
from autoglm.errors import (
    EntryNotFoundError,
    ModelNotFoundError,
    PermissionDeniedError,
    RepoNotFoundError,
    RevisionNotFoundError,
)
from autoglm.security.policy import may_ever
from autoglm.supply.mirror import ORG, REVISION, Catalog, MirrorFile, MirrorModel

ACTION = "model.pull"
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


class ModelFileResponse(FileResponse):
    """A model file with ``Range`` and ``HEAD`` (Starlette's), read in 1 MiB chunks: one
    worker-thread hop per MiB instead of per 64 KiB."""

    chunk_size = 1 << 20


def _pointer(f: MirrorFile) -> bytes:
    """The git-lfs pointer a Hugging Face repository stores for the file: its blob id and
    size are what the hub lists as ``blobId`` and ``pointerSize``."""
    return (f"version https://git-lfs.github.com/spec/v1\noid sha256:{f.sha256}\n"
            f"size {f.size}\n").encode()


def _blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


async def _authorize(request: Request, name: str | None) -> None:
    """403 without ``model.pull`` at all; for a model, the same 404 as a missing one when
    this caller may not pull it (a tenant's key: only the tenant's granted models)."""
    ctx = request.scope["state"]["ctx"]
    authz = request.app.state.authz
    if not may_ever(authz.policy.current(), ctx.identity, ACTION):
        raise PermissionDeniedError(f"not allowed: {ACTION}")
    if name is not None:
        try:
            await authz.require_model(ctx.identity, name, ctx.project, action=ACTION)
        except ModelNotFoundError:
            raise _no_repo(name) from None


def _no_repo(name: str) -> RepoNotFoundError:
    return RepoNotFoundError(f"Repository {ORG}/{name} not found, or not published to you.")


async def _model(request: Request) -> MirrorModel:
    name = request.path_params["name"]
    await _authorize(request, name)
    catalog: Catalog = request.app.state.mirror
    model = await asyncio.to_thread(catalog.get, name)
    if model is None:
        raise _no_repo(name)
    revision = request.path_params.get("revision", REVISION)
    if revision not in (REVISION, model.commit):
        raise RevisionNotFoundError(f"Revision '{revision[:64]}' not found in {model.repo}; "
                                    f"the mirror publishes '{REVISION}' ({model.commit}).")
    return model


def _lfs(f: MirrorFile, key: str) -> dict[str, Any]:
    return {key: f.sha256, "size": f.size, "pointerSize": len(_pointer(f))}


async def list_repos(request: Request) -> JSONResponse:
    """The mirror's repositories this key may pull."""
    await _authorize(request, None)
    catalog: Catalog = request.app.state.mirror
    ctx, authz = request.scope["state"]["ctx"], request.app.state.authz
    out = []
    for name in await asyncio.to_thread(catalog.names):
        try:
            await authz.require_model(ctx.identity, name, ctx.project, action=ACTION)
        except ModelNotFoundError:
            continue
        out.append({"id": f"{ORG}/{name}", "modelId": f"{ORG}/{name}", "private": True,
                    "library_name": "autoglm"})
    return JSONResponse(out)


async def repo_info(request: Request) -> JSONResponse:
    """A repository at its one revision (main): commit, and every file's size and SHA-256."""
    return await _info(request)


async def repo_revision(request: Request) -> JSONResponse:
    """A repository at a revision: main, or its commit."""
    return await _info(request)


async def _info(request: Request) -> JSONResponse:
    model = await _model(request)
    siblings = [{"rfilename": f.path, "size": f.size, "blobId": _blob_id(_pointer(f)),
                 "lfs": _lfs(f, "sha256")} for f in model.files]
    return JSONResponse({"_id": model.commit, "id": model.repo, "modelId": model.repo,
                         "author": ORG, "sha": model.commit, "private": True, "gated": False,
                         "disabled": False, "downloads": 0, "likes": 0, "tags": ["autoglm"],
                         "library_name": "autoglm", "siblings": siblings})


async def repo_tree(request: Request) -> JSONResponse:
    """A revision's files as a tree listing (``?recursive=true``: every file)."""
    return await _tree(request)


async def repo_tree_path(request: Request) -> JSONResponse:
    """The files under one directory of a revision."""
    return await _tree(request)


async def _tree(request: Request) -> JSONResponse:
    model = await _model(request)
    under = request.path_params.get("path", "").strip("/")
    recursive = request.query_params.get("recursive", "false").lower() in ("1", "true")
    out: list[dict[str, Any]] = []
    dirs: set[str] = set()
    for f in model.files:
        if under and not f.path.startswith(under + "/"):
            continue
        rest = f.path[len(under) + 1:] if under else f.path
        if not recursive and "/" in rest:  # a directory entry, once
            d = (f"{under}/" if under else "") + rest.split("/", 1)[0]
            if d not in dirs:
                dirs.add(d)
                out.append({"type": "directory", "oid": "0" * 40, "size": 0, "path": d})
            continue
        out.append({"type": "file", "oid": _blob_id(_pointer(f)), "size": f.size,
                    "path": f.path, "lfs": _lfs(f, "oid")})
    if under and not out:
        raise EntryNotFoundError(f"{under[:200]} not found in {model.repo}.")
    return JSONResponse(out)


async def resolve_file(request: Request) -> Response:
    """A file's bytes (``Range``, ``HEAD``), with its commit, SHA-256 and size in headers."""
    model = await _model(request)
    path = request.path_params["path"]
    f = model.file(path)
    if f is None:
        raise EntryNotFoundError(f"{path[:200]} not found in {model.repo}@{model.commit}.")
    headers = {"x-repo-commit": model.commit, "etag": f'"{f.sha256}"',
               "x-linked-etag": f'"{f.sha256}"', "x-linked-size": str(f.size),
               "accept-ranges": "bytes"}
    if request.method == "GET":
        _audit(request, model, f)
    if f.data is not None:
        return _bytes_response(f.data, request, headers)
    return ModelFileResponse(f.source, media_type="application/octet-stream", headers=headers)


def _bytes_response(data: bytes, request: Request, headers: dict[str, str]) -> Response:
    """A small file made here (the published manifest), with one ``Range`` honoured."""
    size = len(data)
    m = _RANGE.match(request.headers.get("range", "").replace(" ", ""))
    if m is None or not (m.group(1) or m.group(2)):
        return Response(data, media_type="application/octet-stream", headers=headers)
    if m.group(1):
        start = int(m.group(1))
        end = min(int(m.group(2)), size - 1) if m.group(2) else size - 1
    else:
        start, end = max(0, size - int(m.group(2))), size - 1
    if start >= size or end < start:  # ignored, as RFC 9110 allows: the whole file
        return Response(data, media_type="application/octet-stream", headers=headers)
    headers = {**headers, "content-range": f"bytes {start}-{end}/{size}"}
    return Response(data[start:end + 1], status_code=206,
                    media_type="application/octet-stream", headers=headers)


def _audit(request: Request, model: MirrorModel, f: MirrorFile) -> None:
    ctx = request.scope["state"]["ctx"]
    identity = ctx.identity
    rng = request.headers.get("range")
    rec = Record(action=ACTION, status=206 if rng else 200, actor=identity.id,
                 key_id=getattr(identity, "key_id", None),
                 tenant_id=getattr(identity, "tenant_id", None),
                 resource=f"{model.name}/{f.path}"[:500], client_addr=ctx.client,
                 request_id=ctx.request_id, model=model.name,
                 detail={"commit": model.commit, "bytes": f.size,
                         **({"range": rng[:64]} if rng else {})})
    request.app.state.audit.submit(rec)  # a download that cannot be recorded is refused
