"""The two model hubs' HTTP APIs, as a pull uses them: list a revision's files with the
hashes the hub publishes, and give each file's download address.

Hugging Face (and its mirrors, e.g. ``HF_ENDPOINT``): ``/api/models/<repo>/revision/<rev>``
lists ``siblings`` with sizes and, for LFS files, their SHA-256; small files are checked
against their git blob id. ModelScope: ``/api/v1/models/<repo>/repo/files`` lists every
file with its SHA-256. Errors come back as one-line messages that say what is wrong:
no such repository, no such revision, or a hub that cannot be reached.

A listing must give every file's size (a download is never read past it). A hub token
(``HF_TOKEN``, ``MODELSCOPE_API_TOKEN``) is attached by ``HubToken`` to each request, redirects
included, whose origin (scheme, host, port) is the hub's own, and to no other: Hugging Face
answers LFS downloads with a redirect to its CDN, which never sees the token.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx

from autoglm.errors import ConfigError, HubError, NotFoundError
from autoglm.supply.transfer import Backoff, check_status

SOURCES = ("hf", "modelscope")


@dataclass(frozen=True)
class RemoteFile:
    path: str
    size: int  # as the hub publishes it: a download never reads more
    sha256: str | None  # published by the hub (HF: LFS files; ModelScope: every file)
    git_sha1: str | None = None  # HF's git blob id of a small (non-LFS) file

    @property
    def hashed(self) -> bool:
        """The hub publishes a hash the downloaded bytes can be checked against."""
        return bool(self.sha256 or self.git_sha1)


@dataclass(frozen=True)
class Snapshot:
    source: str
    repo: str
    revision: str
    commit: str
    files: list[RemoteFile]


def _token(*names: str) -> str | None:
    for name in names:
        if os.environ.get(name):
            return os.environ[name]
    return None


def _origin(url: httpx.URL) -> tuple[str, str, int | None]:
    return url.scheme, url.host, url.port or {"http": 80, "https": 443}.get(url.scheme)


class HubToken:
    """An httpx request hook: the token on every request to the hub's origin (scheme, host
    and port), and on no other, whatever a redirect or a copied header says."""

    def __init__(self, endpoint: str, token: str | None) -> None:
        self._origin = _origin(httpx.URL(endpoint))
        self._value = f"Bearer {token}" if token else None

    def __call__(self, request: httpx.Request) -> None:
        request.headers.pop("authorization", None)
        if self._value is not None and _origin(request.url) == self._origin:
            request.headers["authorization"] = self._value

    def __repr__(self) -> str:  # never the token itself
        return f"HubToken({'set' if self._value else 'none'} for {self._origin})"


def _size(value: Any, path: str, endpoint: str, repo: str) -> int:
    try:
        size = int(value)
    except (TypeError, ValueError):
        size = -1
    if size < 0:
        raise HubError(f"{endpoint} listed {path} of {repo} without a file size; is it a "
                       "model hub or a mirror of one?")
    return size


class HuggingFace:
    source = "hf"
    default_revision = "main"

    def __init__(self, endpoint: str | None = None) -> None:
        self.endpoint = (endpoint or os.environ.get("HF_ENDPOINT")
                         or "https://huggingface.co").rstrip("/")
        self.token = HubToken(self.endpoint, _token("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"))

    def snapshot(self, http: httpx.Client, backoff: Backoff, repo: str,
                 revision: str) -> Snapshot:
        url = f"{self.endpoint}/api/models/{repo}/revision/{quote(revision, safe='')}"
        r = backoff.run(f"listing {repo}", lambda: http.get(url, params={"blobs": "true"}))
        if r.status_code in (401, 403, 404):
            code = r.headers.get("x-error-code", "")
            if code == "RevisionNotFound":
                raise NotFoundError(f"revision '{revision}' not found in {repo} on {self.endpoint}")
            if code == "GatedRepo" or r.status_code == 403:
                raise ConfigError(f"{repo} on {self.endpoint} is gated or private: accept its "
                                  "terms and set HF_TOKEN")
            raise NotFoundError(f"repository {repo} not found on {self.endpoint} (if it is "
                                "private, set HF_TOKEN)")
        check_status(r, f"listing {repo}")
        body = _json(r, repo)
        files = []
        for s in body.get("siblings") or []:
            lfs = s.get("lfs") or {}
            if s.get("size") is None and lfs.get("size") is None:
                raise HubError(f"{self.endpoint} listed {repo} without file sizes; is it a "
                               "Hugging Face mirror?")
            size = _size(lfs.get("size", s.get("size")), s["rfilename"], self.endpoint, repo)
            files.append(RemoteFile(s["rfilename"], size, lfs.get("sha256"),
                                    None if lfs else s.get("blobId")))
        return Snapshot(self.source, repo, revision, body.get("sha") or revision, files)

    def file_url(self, snap: Snapshot, path: str) -> str:
        return f"{self.endpoint}/{snap.repo}/resolve/{snap.commit}/{quote(path)}"


class ModelScope:
    source = "modelscope"
    default_revision = "master"

    def __init__(self, endpoint: str | None = None) -> None:
        domain = os.environ.get("MODELSCOPE_DOMAIN")
        self.endpoint = (endpoint or os.environ.get("MODELSCOPE_ENDPOINT")
                         or (f"https://{domain}" if domain else "https://www.modelscope.cn")
                         ).rstrip("/")
        self.token = HubToken(self.endpoint, _token("MODELSCOPE_API_TOKEN"))

    def _get(self, http: httpx.Client, backoff: Backoff, what: str, url: str,
             params: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
        r = backoff.run(what, lambda: http.get(url, params=params))
        if r.status_code not in (400, 404):
            check_status(r, what)
        body = _json(r, what)
        return (200 if r.status_code == 200 and body.get("Code", 200) == 200 else 404), body

    def snapshot(self, http: httpx.Client, backoff: Backoff, repo: str,
                 revision: str) -> Snapshot:
        base = f"{self.endpoint}/api/v1/models/{repo}"
        status, _ = self._get(http, backoff, f"looking up {repo}", base)
        if status != 200:
            raise NotFoundError(f"repository {repo} not found on {self.endpoint}")
        status, body = self._get(http, backoff, f"listing {repo}", f"{base}/repo/files",
                                 {"Revision": revision, "Recursive": "true"})
        if status != 200:
            raise NotFoundError(f"revision '{revision}' not found in {repo} on {self.endpoint}")
        files, commit = [], revision
        for f in (body.get("Data") or {}).get("Files") or []:
            if f.get("Type", "blob") != "blob":
                continue
            files.append(RemoteFile(f["Path"], _size(f.get("Size"), f["Path"], self.endpoint,
                                                     repo), f.get("Sha256")))
            commit = f.get("Revision") or commit
        return Snapshot(self.source, repo, revision, commit, files)

    def file_url(self, snap: Snapshot, path: str) -> str:
        return (f"{self.endpoint}/api/v1/models/{snap.repo}/repo?"
                f"Revision={quote(snap.commit, safe='')}&FilePath={quote(path, safe='')}")


def _json(r: httpx.Response, what: str) -> dict[str, Any]:
    try:
        body = r.json()
    except ValueError:
        raise HubError(f"{what}: the hub answered {r.status_code} with something that is not "
                       "JSON; is the endpoint a model hub?") from None
    if not isinstance(body, dict):
        raise HubError(f"{what}: unexpected answer from the hub")
    return body


def hub_for(source: str, endpoint: str | None) -> HuggingFace | ModelScope:
    if source == "hf":
        return HuggingFace(endpoint)
    if source == "modelscope":
        return ModelScope(endpoint)
    raise ConfigError(f"unknown source '{source}': use one of {', '.join(SOURCES)}")

