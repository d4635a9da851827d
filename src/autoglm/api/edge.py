"""``/admin/v1/edge``: what a centre serves its edge nodes (``autoglm.edge``).

- ``GET /admin/v1/edge/snapshot``: the identity snapshot (tenants, projects, tenant
  principals with their bindings and key hashes, limits) an edge serves from; with
  ``If-None-Match`` of its ETag, a 304 when nothing changed.
- ``GET /admin/v1/edge/nodes``: the edge nodes whose records this centre keeps, with the
  end of each one's chain.
- ``GET /admin/v1/edge/nodes/{node}``: one node's chain end (where its forwarding resumes).
- ``POST /admin/v1/edge/nodes/{node}/audit``: ``{"records": [...]}``, the node's next
  audit records in seq order; each is checked against the node's chain and kept once
  (``edge.inbox``). Answers the chain end as kept, and how many were new and how many
  had been kept already.

Action ``edge.sync`` at platform scope (``edge.read`` for the list): give each edge a key
narrowed to it (``{"actions": ["edge.sync", "model.pull"]}`` on a platform principal).
Every forward that keeps or repeats records is audited (``edge.forward``) in the centre's own chain.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from autoglm.api.admin_authz import check, record
from autoglm.api.body import blocking, json_body
from autoglm.edge import snapshot
from autoglm.edge.inbox import MAX_BATCH, EdgeInbox
from autoglm.errors import InvalidRequestError, NotFoundError
from autoglm.timefmt import stamp

NODE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class ForwardIn(BaseModel):
    """The body of a forward (described in /openapi.json; each record is checked by the
    inbox, which names what is wrong with it)."""

    model_config = ConfigDict(extra="forbid")
    records: list[dict[str, Any]] = Field(max_length=MAX_BATCH, description=(
        "the node's next audit records in seq order, each with the columns of audit_log"))


def _node(request: Request) -> str:
    node = request.path_params["node"]
    if not NODE.match(node):
        raise NotFoundError("not found")  # names no node: no database, no audit row
    return node


def _inbox(request: Request) -> EdgeInbox:
    return request.app.state.edge_inbox


@blocking
def get_snapshot(request: Request, _body: bytes) -> Response:
    """The snapshot, with an ETag (the SHA-256 of its tables): an edge that already has it
    sends ``If-None-Match`` and gets a 304 without a body."""
    check(request, "edge.sync", None, resource="edge:snapshot")
    doc = snapshot.export(request.app.state.db)
    body = orjson.dumps(doc["tables"], option=orjson.OPT_SORT_KEYS)
    etag = f'"{hashlib.sha256(body).hexdigest()}"'
    if request.headers.get("if-none-match") == etag:
        return Response(status_code=304, headers={"etag": etag})
    return Response(orjson.dumps(doc), media_type="application/json", headers={"etag": etag})


@blocking
def list_nodes(request: Request, _body: bytes) -> JSONResponse:
    check(request, "edge.read", None, resource="edge:nodes")
    data = [{**n, "first_seen": stamp(n["first_seen"]), "last_seen": stamp(n["last_seen"])}
            for n in _inbox(request).nodes()]
    return JSONResponse({"object": "list", "data": data})


@blocking
def get_node(request: Request, _body: bytes) -> JSONResponse:
    node = _node(request)
    check(request, "edge.sync", None, resource=f"edge:{node}")
    seq, last = _inbox(request).position(node)
    return JSONResponse({"node": node, "seq": seq, "hash": last})


@blocking
def forward_audit(request: Request, body: bytes) -> JSONResponse:
    node = _node(request)
    check(request, "edge.sync", None, resource=f"edge:{node}")
    doc: dict[str, Any] = json_body(body)
    records = doc.get("records")
    if set(doc) != {"records"} or not isinstance(records, list):
        raise InvalidRequestError('expected {"records": [...]}', param="records")
    done = _inbox(request).accept(node, records)
    if done.stored or done.duplicates:  # a resend is worth a line too
        record(request, "edge.forward", f"edge:{node}",
               {"node": node, "stored": done.stored, "duplicates": done.duplicates,
                "seq": done.seq, "hash": done.hash})
    return JSONResponse({"node": node, "seq": done.seq, "hash": done.hash,
                         "stored": done.stored, "duplicates": done.duplicates})
