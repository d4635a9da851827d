"""``/v1/files``: the OpenAI Files API, for batch input files and batch results.

Upload is ``multipart/form-data`` with ``file`` and ``purpose`` (only ``batch``), and
optionally ``expires_after[anchor]=created_at`` and ``expires_after[seconds]`` (an hour to
30 days), as the openai SDK sends ``expires_after``; the file is then gone (a 404, and
swept: ``batch.sweep``) from ``expires_at`` on. The file is checked line by line as it is
stored (``batch.lines``): a bad line is a 400 naming it. Lists are OpenAI's (``limit``,
``order``, ``after``, ``purpose``; newest first). Who may do what, and why another
tenant's file is a 404: ``api/tenancy.py``.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import AsyncIterator
from typing import Any, BinaryIO

from python_multipart.exceptions import MultipartParseError
from starlette.datastructures import FormData, UploadFile
from starlette.formparsers import MultiPartException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from autoglm.api.body import blocking
from autoglm.api.tenancy import audited, new_scope, owned, visible
from autoglm.batch import ids
from autoglm.batch.files import expires_after, file_object
from autoglm.batch.lines import CHUNK
from autoglm.errors import InvalidRequestError

PURPOSES = ("batch", "batch_output")
MAX_LIST = 10_000
UPLOAD_SCHEMA = {"type": "object", "required": ["file", "purpose"], "properties": {
    "file": {"type": "string", "format": "binary",
             "description": "JSONL: one request per line (custom_id, method, url, body)"},
    "purpose": {"type": "string", "enum": ["batch"]},
    "expires_after[anchor]": {"type": "string", "enum": ["created_at"]},
    "expires_after[seconds]": {"type": "integer", "minimum": 3600, "maximum": 2592000}}}
QUERY_PARAMS = (
    {"name": "limit", "in": "query", "required": False,
     "schema": {"type": "integer", "minimum": 1, "maximum": MAX_LIST, "default": MAX_LIST}},
    {"name": "after", "in": "query", "required": False,
     "schema": {"type": "string", "description": "last_id of the previous page"}},
    {"name": "order", "in": "query", "required": False,
     "schema": {"type": "string", "enum": ["asc", "desc"], "default": "desc"}},
    {"name": "purpose", "in": "query", "required": False,
     "schema": {"type": "string", "enum": list(PURPOSES)}},
)


async def create_file(request: Request) -> JSONResponse:
    """Upload a file (multipart: file, purpose=batch)."""
    system = request.app.state.batch
    scope = await asyncio.to_thread(new_scope, request, "file.create", "files")
    try:
        form = await request.form(max_files=1, max_fields=8)
    except (MultiPartException, MultipartParseError, ValueError) as exc:
        raise InvalidRequestError(f"the body is not a valid multipart form: {exc}",
                                  param="file") from None
    try:
        purpose = form.get("purpose")
        if purpose != "batch":
            raise InvalidRequestError("purpose must be 'batch' (the only purpose of files "
                                      "here)", param="purpose")
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise InvalidRequestError("send the file as the multipart field 'file'",
                                      param="file")
        expires_s = _expires_after(form)
        row = await asyncio.to_thread(
            system.files.upload, scope, upload.filename, upload.file,
            max_bytes=system.max_file_bytes, max_lines=system.max_lines, expires_s=expires_s,
            also=audited(request, "file.create", lambda r: {"bytes": r.bytes,
                                                            "lines": r.lines}))
    finally:
        await form.close()
    return JSONResponse(file_object(row))


def _expires_after(form: FormData) -> int | None:
    """``expires_after[anchor]`` and ``expires_after[seconds]`` (the openai SDK's form of
    the object), or none of them: the seconds, or None (kept until deleted)."""
    anchor, seconds = form.get("expires_after[anchor]"), form.get("expires_after[seconds]")
    if anchor is None and seconds is None:
        if form.get("expires_after") is not None:
            raise InvalidRequestError("send expires_after as the fields expires_after[anchor] "
                                      "and expires_after[seconds]", param="expires_after")
        return None
    if not isinstance(seconds, str) or re.fullmatch(r"[0-9]{1,9}", seconds) is None:
        raise InvalidRequestError("expires_after.seconds must be an integer from 3600 (1 "
                                  "hour) to 2592000 (30 days)", param="expires_after.seconds")
    return expires_after(anchor, int(seconds), "expires_after")


def _list_args(request: Request) -> tuple[int, str | None, bool, str | None]:
    q = request.query_params
    raw = q.get("limit", str(MAX_LIST))
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= MAX_LIST:
        raise InvalidRequestError(f"limit must be an integer from 1 to {MAX_LIST}",
                                  param="limit")
    after = q.get("after")
    if after is not None and not ids.valid(ids.FILE, after):
        raise InvalidRequestError("after must be a file id from an earlier page",
                                  param="after")
    order = q.get("order", "desc")
    if order not in ("asc", "desc"):
        raise InvalidRequestError("order must be 'asc' or 'desc'", param="order")
    purpose = q.get("purpose")
    if purpose is not None and purpose not in PURPOSES:
        raise InvalidRequestError(f"purpose must be one of {', '.join(PURPOSES)}",
                                  param="purpose")
    return int(raw), after, order == "desc", purpose


@blocking
def list_files(request: Request, body: bytes) -> JSONResponse:
    """List files (newest first)."""
    limit, after, newest_first, purpose = _list_args(request)
    rows, more = request.app.state.batch.files.page(
        visible(request, "file.read"), limit=limit, after=after, newest_first=newest_first,
        purpose=purpose)
    return JSONResponse(page([file_object(r) for r in rows], more))


def page(data: list[dict[str, Any]], more: bool) -> dict[str, Any]:
    """An OpenAI cursor page."""
    return {"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None, "has_more": more}


def _file(request: Request, action: str) -> Any:
    files = request.app.state.batch.files
    return owned(request, files.get(request.path_params["file_id"]), action, "file",
                 read="file.read")


@blocking
def get_file(request: Request, body: bytes) -> JSONResponse:
    """One file's metadata."""
    return JSONResponse(file_object(_file(request, "file.read")))


@blocking
def delete_file(request: Request, body: bytes) -> JSONResponse:
    """Delete a file."""
    row = _file(request, "file.delete")
    request.app.state.batch.files.delete(row.id, also=audited(request, "file.delete"))
    return JSONResponse({"id": row.id, "object": "file", "deleted": True})


async def get_file_content(request: Request) -> Response:
    """A file's bytes."""
    def opened() -> BinaryIO:
        row = _file(request, "file.read")
        return request.app.state.batch.files.open(row.id)

    f = await asyncio.to_thread(opened)
    size = os.fstat(f.fileno()).st_size

    async def chunks() -> AsyncIterator[bytes]:
        try:
            while chunk := await asyncio.to_thread(f.read, CHUNK):
                yield chunk
        finally:
            f.close()

    return StreamingResponse(chunks(), media_type="application/octet-stream",
                             headers={"content-length": str(size)})
