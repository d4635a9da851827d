"""``GET /openapi.json``: the API described from the route table and the request models."""

from __future__ import annotations

import inspect
import re
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import JSONResponse

from autoglm import __version__
from autoglm.api import alerts, audit, batches, edge, files, identity, limits, usage
from autoglm.api.openapi_links import links, success_status
from autoglm.pipeline.schemas import ChatCompletionRequest, CompletionRequest
from autoglm.settings import InstanceSpec

BODIES: dict[str, type[BaseModel]] = {
    "create_tenant": identity.TenantIn, "set_grant": identity.GrantIn,
    "create_project": identity.ProjectIn,
    "update_project": identity.ProjectPatch, "create_principal": identity.PrincipalIn,
    "create_binding": identity.BindingIn, "create_key": identity.KeyIn,
    "rotate_key": identity.RotateIn, "add_instance": InstanceSpec,
    "chat_completions": ChatCompletionRequest, "completions": CompletionRequest,
    "create_batch": batches.BatchIn, "set_limits": limits.LimitsIn,
    "forward_audit": edge.ForwardIn,
}

# bodies sent as multipart/form-data: uploads
FORMS: dict[str, dict[str, Any]] = {"create_file": files.UPLOAD_SCHEMA}

# bodies that are text, not JSON: a policy file (YAML) to check
TEXT_BODIES = frozenset({"validate_policy"})

# keyset-paginated lists (``api/identity.py``): ``?limit=`` and ``?after=``
PAGED = frozenset({"list_tenants", "list_projects", "list_principals", "list_keys"})
PAGE_PARAMS = (
    {"name": "limit", "in": "query", "required": False,
     "schema": {"type": "integer", "minimum": 1, "maximum": 100, "default": 20}},
    {"name": "after", "in": "query", "required": False,
     "schema": {"type": "string", "description": "last_id of the previous page"}},
)

# other routes' query parameters
QUERY: dict[str, tuple[dict[str, Any], ...]] = {"list_audit": audit.QUERY_PARAMS,
                                                 "get_usage": usage.QUERY_PARAMS,
                                                 "list_files": files.QUERY_PARAMS,
                                                 "list_batches": batches.QUERY_PARAMS,
                                                 "list_alerts": alerts.QUERY_PARAMS}

DESCRIBED = {"200": "OK", "201": "Created"}

ERROR = {"type": "object", "properties": {"error": {"type": "object", "properties": {
    "message": {"type": "string"}, "type": {"type": "string"},
    "param": {"type": ["string", "null"]}, "code": {"type": ["string", "null"]}}}}}


def build(routes: Sequence[Any]) -> dict[str, Any]:
    """From the route table (``api/routes.py``), with links between operations
    (``api/openapi_links.py``)."""
    paths: dict[str, dict[str, Any]] = {}
    ops: dict[str, dict[str, Any]] = {}
    path_params: dict[str, list[str]] = {}
    schemas: dict[str, Any] = {"Error": ERROR}
    for method, path, endpoint, action, *_ in routes:
        oa_path = re.sub(r"\{(\w+)(:\w+)?\}", r"{\1}", path)
        doc = inspect.getdoc(endpoint) or endpoint.__name__.replace("_", " ")
        name = endpoint.__name__
        path_params[name] = re.findall(r"\{(\w+)\}", oa_path)
        ok = success_status(name)
        op: dict[str, Any] = {
            "operationId": name, "summary": doc.splitlines()[0],
            "parameters": [{"name": p, "in": "path", "required": True,
                            "schema": {"type": "string"}} for p in path_params[name]],
            "responses": {"default": {"description": "OpenAI-shaped error", "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
                ok: {"description": DESCRIBED[ok]}},
        }
        if name in PAGED:
            op["parameters"] += PAGE_PARAMS
        op["parameters"] += QUERY.get(name, ())
        if action is not None:
            op["security"] = [{"bearer": []}]
            op["x-autoglm-action"] = action
        body = BODIES.get(name)
        if body is not None:
            schema = body.model_json_schema(ref_template="#/components/schemas/{model}")
            schemas.update(schema.pop("$defs", {}))
            schemas[body.__name__] = schema
            op["requestBody"] = {"required": True, "content": {"application/json": {
                "schema": {"$ref": f"#/components/schemas/{body.__name__}"}}}}
        elif name in FORMS:
            op["requestBody"] = {"required": True, "content": {"multipart/form-data": {
                "schema": FORMS[name]}}}
        elif name in TEXT_BODIES:
            op["requestBody"] = {"required": True, "content": {"text/plain": {
                "schema": {"type": "string"}}}}
        paths.setdefault(oa_path, {})[method.lower()] = ops[name] = op
    for producer, found in links(path_params).items():
        op = ops[producer]
        op["responses"][success_status(producer)]["links"] = found
    return {
        "openapi": "3.1.0",
        "info": {"title": "Open-AutoGLM", "version": __version__},
        "paths": paths,
        "components": {"schemas": schemas,
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
    }


async def openapi(request: Request) -> JSONResponse:
    """This description."""
    return JSONResponse(request.app.state.openapi)
