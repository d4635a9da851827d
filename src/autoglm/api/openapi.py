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
from autoglm.api import identity
from autoglm.pipeline.schemas import ChatCompletionRequest, CompletionRequest
from autoglm.settings import InstanceSpec

BODIES: dict[str, type[BaseModel]] = {
    "create_tenant": identity.TenantIn, "create_project": identity.ProjectIn,
    "update_project": identity.ProjectPatch, "create_principal": identity.PrincipalIn,
    "create_binding": identity.BindingIn, "create_key": identity.KeyIn,
    "rotate_key": identity.RotateIn, "add_instance": InstanceSpec,
    "chat_completions": ChatCompletionRequest, "completions": CompletionRequest,
}

ERROR = {"type": "object", "properties": {"error": {"type": "object", "properties": {
    "message": {"type": "string"}, "type": {"type": "string"},
    "param": {"type": ["string", "null"]}, "code": {"type": ["string", "null"]}}}}}


def build(routes: Sequence[Any]) -> dict[str, Any]:
    """From the route table (``api/routes.py``)."""
    paths: dict[str, dict[str, Any]] = {}
    schemas: dict[str, Any] = {"Error": ERROR}
    for method, path, endpoint, action, *_ in routes:
        oa_path = re.sub(r"\{(\w+)(:\w+)?\}", r"{\1}", path)
        doc = inspect.getdoc(endpoint) or endpoint.__name__.replace("_", " ")
        op: dict[str, Any] = {
            "operationId": endpoint.__name__, "summary": doc.splitlines()[0],
            "parameters": [{"name": p, "in": "path", "required": True,
                            "schema": {"type": "string"}}
                           for p in re.findall(r"\{(\w+)\}", oa_path)],
            "responses": {"default": {"description": "OpenAI-shaped error", "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
                "200": {"description": "OK"}},
        }
        if action is not None:
            op["security"] = [{"bearer": []}]
            op["x-autoglm-action"] = action
        body = BODIES.get(endpoint.__name__)
        if body is not None:
            schema = body.model_json_schema(ref_template="#/components/schemas/{model}")
            schemas.update(schema.pop("$defs", {}))
            schemas[body.__name__] = schema
            op["requestBody"] = {"required": True, "content": {"application/json": {
                "schema": {"$ref": f"#/components/schemas/{body.__name__}"}}}}
        paths.setdefault(oa_path, {})[method.lower()] = op
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
