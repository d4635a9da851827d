"""The links of /openapi.json (``api/openapi_links.py``): from a route without a path
parameter, links reach every route with one, carrying real ids, so a stateful client
(schemathesis in ``tests/e2e/test_e2e_fuzz.py``) never has to make an id up.

When a route with a new kind of path parameter is added, the first test names it: add a
producer for that parameter to ``PRODUCERS``.
"""

from __future__ import annotations

from typing import Any

import schemathesis
from starlette.requests import Request
from starlette.responses import JSONResponse

from autoglm.api import openapi
from autoglm.api.openapi_links import PRODUCERS
from autoglm.api.routes import ROUTES, RouteSpec

ID = "$response.body#/id"


def _operations(doc: dict[str, Any]) -> dict[str, tuple[str, str, dict[str, Any]]]:
    return {op["operationId"]: (method.upper(), path, op)
            for path, item in doc["paths"].items() for method, op in item.items()}


def _links(op: dict[str, Any]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for response in op["responses"].values():
        out.update(response.get("links", {}))
    return out


def _path_params(op: dict[str, Any]) -> set[str]:
    return {p["name"] for p in op["parameters"] if p["in"] == "path"}


def test_every_route_with_a_path_parameter_is_reached_through_links() -> None:
    ops = _operations(openapi.build(ROUTES))
    reached = {name for name, (_, _, op) in ops.items() if not _path_params(op)}
    frontier = list(reached)
    while frontier:
        for link in _links(ops[frontier.pop()][2]).values():
            if link["operationId"] not in reached:
                reached.add(link["operationId"])
                frontier.append(link["operationId"])
    unreached = sorted(f"{m} {p}" for name, (m, p, _) in ops.items() if name not in reached)
    assert unreached == [], "no chain of links leads to these: add a producer to PRODUCERS"


def test_each_link_fills_exactly_its_targets_path_parameters() -> None:
    ops = _operations(openapi.build(ROUTES))
    assert set(PRODUCERS) <= set(ops), "PRODUCERS names an operation that no route has"
    for name, (_, _, op) in ops.items():
        for code, response in op["responses"].items():
            for link in response.get("links", {}).values():
                assert code == PRODUCERS[name].status  # on the success answer only
                target = ops[link["operationId"]][2]
                assert set(link["parameters"]) == _path_params(target), (name, link)
                for expr in link["parameters"].values():  # an expression, or a constant
                    assert (expr.startswith(("$response.body#/", "$request.path."))
                            or expr.isidentifier()), expr


def test_the_chains_a_fuzzer_follows() -> None:
    ops = _operations(openapi.build(ROUTES))

    def links(name: str) -> dict[str, dict[str, str]]:
        return {k: v["parameters"] for k, v in _links(ops[name][2]).items()}

    tenant = links("create_tenant")
    for target in ("get_tenant", "create_project", "list_projects", "create_principal",
                   "list_principals", "get_grant", "set_grant"):
        assert tenant[target] == {"tenant": ID}, target
    assert "201" in ops["create_tenant"][2]["responses"]  # the status it answers
    principal = links("create_principal")
    for target in ("get_principal", "create_binding", "create_key", "list_keys"):
        assert principal[target] == {"principal": ID}, target
    for producer in ("create_key", "rotate_key"):  # rotating names the successor
        assert {t: links(producer)[t] for t in ("get_key", "rotate_key", "revoke_key")} == {
            t: {"key": ID} for t in ("get_key", "rotate_key", "revoke_key")}
    assert links("create_project") == {"get_project": {"project": ID},
                                       "update_project": {"project": ID}}
    assert links("create_binding") == {"delete_binding": {"binding": ID}}
    instance = {"model": "$request.path.model", "name": "$response.body#/name"}
    assert links("add_instance") == {t: instance for t in
                                     ("drain_instance", "resume_instance", "remove_instance")}
    assert links("list_engines")["add_instance"] == {"model": "$response.body#/data/0/model"}


async def widgets(request: Request) -> JSONResponse:
    """A route added later."""
    return JSONResponse({})


def test_a_route_added_under_a_tenant_is_linked_with_no_edit_of_the_table() -> None:
    doc = openapi.build((*ROUTES, RouteSpec("GET", "/admin/v1/tenants/{tenant}/widgets",
                                            widgets, "tenant.read")))
    assert _links(_operations(doc)["create_tenant"][2])["widgets"] == {
        "operationId": "widgets", "parameters": {"tenant": ID}}


def test_schemathesis_follows_the_links_into_every_route_with_a_path_parameter() -> None:
    doc = openapi.build(ROUTES)
    schema = schemathesis.openapi.from_dict(doc)
    with_ids = {f"{m} {p}" for m, p, op in _operations(doc).values() if _path_params(op)}
    assert with_ids and with_ids <= schema.operations_with_incoming_links()
