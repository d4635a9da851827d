"""``/v1/batches``: the OpenAI Batch API.

Creating a batch copies its input file's lines into the database (the file may be
deleted afterwards), publishes them to the queue, and wakes this process's worker
(``batch.worker``); the batch is ``in_progress`` when the answer comes. Lines run in
the background under the creating key's identity (``batch.owner``), through every
stage of the pipeline. Cancel stops the lines in flight at once in this process, within
about ``batch_poll_s`` in the others. With ``output_expires_after`` (``{"anchor":
"created_at", "seconds": N}``, an hour to 30 days) the batch's output and error files
expire N seconds after they are made.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from starlette.requests import Request
from starlette.responses import JSONResponse

from autoglm.api.body import blocking, read_json
from autoglm.api.files import page
from autoglm.api.tenancy import audited, new_scope, owned, visible
from autoglm.batch import ids
from autoglm.batch.batches import batch_object
from autoglm.batch.files import EXPIRES_MAX_S, EXPIRES_MIN_S
from autoglm.errors import InvalidRequestError, NotFoundError, ServiceUnavailableError
from autoglm.pipeline.schemas import parse

QUERY_PARAMS = (
    {"name": "limit", "in": "query", "required": False,
     "schema": {"type": "integer", "minimum": 1, "maximum": 100, "default": 20}},
    {"name": "after", "in": "query", "required": False,
     "schema": {"type": "string", "description": "last_id of the previous page"}},
)
MetaKey = Annotated[str, StringConstraints(max_length=64)]
MetaValue = Annotated[str, StringConstraints(max_length=512)]


class ExpiresAfter(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    anchor: Literal["created_at"]
    seconds: int = Field(ge=EXPIRES_MIN_S, le=EXPIRES_MAX_S)


class BatchIn(BaseModel):
    """Unknown fields are ignored, as OpenAI does."""

    model_config = ConfigDict(extra="ignore", strict=True)
    input_file_id: str = Field(min_length=1, max_length=64)
    endpoint: Literal["/v1/chat/completions", "/v1/completions"]
    completion_window: Literal["24h"]
    metadata: dict[MetaKey, MetaValue] | None = Field(None, max_length=16)
    output_expires_after: ExpiresAfter | None = None


async def create_batch(request: Request) -> JSONResponse:
    """Create a batch from an uploaded input file."""
    _, data = await read_json(request)
    args: BatchIn = parse(BatchIn, data)
    system = request.app.state.batch
    await system.queue.ready()  # the queue away (Redis down): a 503, nothing accepted
    row, whole = await asyncio.to_thread(_create, request, args)
    if not whole:  # cancelled while its lines were copied (or taken over): as it is
        return JSONResponse(batch_object(row))
    try:
        await system.queue.publish(row.id, row.total)
    except ServiceUnavailableError:  # went away just now: the batch must never run
        await asyncio.to_thread(system.store.cancel, row.id)
        raise
    await asyncio.to_thread(system.store.started, row.id)
    system.worker.wake()
    return JSONResponse(batch_object(await asyncio.to_thread(system.store.get, row.id)))


def _create(request: Request, args: BatchIn) -> Any:
    system = request.app.state.batch
    scope = new_scope(request, "job.create", "batches")
    source = system.files.get(args.input_file_id)
    try:
        source = owned(request, source, "file.read", "file")
    except NotFoundError:
        raise NotFoundError(f"No such file: {args.input_file_id[:64]}",
                            param="input_file_id") from None
    identity = request.scope["state"]["ctx"].identity
    expires = args.output_expires_after
    return system.store.create(
        scope, identity.key_id, source, args.endpoint, args.completion_window, args.metadata,
        output_expires_s=None if expires is None else expires.seconds,
        also=audited(request, "job.create", lambda b: {"input_file_id": b.input_file_id,
                                                       "lines": b.total}))


@blocking
def list_batches(request: Request, body: bytes) -> JSONResponse:
    """List batches (newest first)."""
    q = request.query_params
    raw = q.get("limit", "20")
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= 100:
        raise InvalidRequestError("limit must be an integer from 1 to 100", param="limit")
    after = q.get("after")
    if after is not None and not ids.valid(ids.BATCH, after):
        raise InvalidRequestError("after must be a batch id from an earlier page",
                                  param="after")
    rows, more = request.app.state.batch.store.page(visible(request, "job.read"),
                                                    limit=int(raw), after=after)
    return JSONResponse(page([batch_object(r) for r in rows], more))


def _batch(request: Request, action: str) -> Any:
    store = request.app.state.batch.store
    return owned(request, store.get(request.path_params["batch_id"]), action, "batch",
                 read="job.read")


@blocking
def get_batch(request: Request, body: bytes) -> JSONResponse:
    """One batch: status, counts, output and error files."""
    return JSONResponse(batch_object(_batch(request, "job.read")))


async def cancel_batch(request: Request) -> JSONResponse:
    """Cancel a batch: lines in flight stop, the lines done so far make its files."""
    system = request.app.state.batch

    def cancel() -> Any:
        b = _batch(request, "job.cancel")
        return system.store.cancel(b.id, also=audited(request, "job.cancel"))

    row = await asyncio.to_thread(cancel)
    await system.queue.drop(row.id)
    system.worker.stopped(row.id)
    return JSONResponse(batch_object(row))

