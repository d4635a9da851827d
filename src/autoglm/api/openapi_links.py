"""OpenAPI 3 links: which response names the ids that other routes take in their path.

A stateful client (a fuzzer, a generated SDK) follows a link from a response to the next
call: the tenant just created to its projects and principals, a principal to its bindings
and keys, a key to get, rotate and revoke it. Without them a fuzzer only ever calls a route
with a path parameter with ids it made up, and sees nothing but 404s.

The links are derived, not written per route: ``PRODUCERS`` says which operation's
success response gives which path parameters, and every operation whose path parameters
are all given by a producer (one of them read from the response itself) gets a link from
it. A route added under ``{tenant}``
(``/admin/v1/tenants/{tenant}/models``, say) is linked from ``create_tenant`` with no edit
here; a route with a new kind of path parameter needs a producer added below, and
``tests/api/test_openapi_links.py`` says so until it has one.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

ID = "$response.body#/id"
FIRST = "$response.body#/data/0/id"  # the first row of a keyset page


class Producer(NamedTuple):
    status: str  # the success response that carries the links
    gives: Mapping[str, str]  # path parameter -> runtime expression naming its value


PRODUCERS: Mapping[str, Producer] = {
    # what creates an object names it
    # (and its limits: /admin/v1/limits/{scope}/{id}, the scope a constant)
    "create_tenant": Producer("201", {"tenant": ID, "scope": "tenant", "id": ID}),
    "create_project": Producer("201", {"project": ID}),
    "create_file": Producer("200", {"file_id": ID}),  # OpenAI answers 200, not 201
    "create_batch": Producer("200", {"batch_id": ID}),
    "create_principal": Producer("201", {"principal": ID}),
    "create_binding": Producer("201", {"binding": ID}),
    "create_key": Producer("201", {"key": ID}),
    "rotate_key": Producer("201", {"key": ID}),  # the successor
    "add_instance": Producer("201", {"model": "$request.path.model",
                                     "name": "$response.body#/name"}),
    # lists name their first row: objects made earlier, and models from the settings
    "list_tenants": Producer("200", {"tenant": FIRST}),
    "list_projects": Producer("200", {"project": FIRST}),
    "list_principals": Producer("200", {"principal": FIRST}),
    "list_keys": Producer("200", {"key": FIRST}),
    "list_files": Producer("200", {"file_id": FIRST}),
    "list_batches": Producer("200", {"batch_id": FIRST}),
    "list_engines": Producer("200", {"model": "$response.body#/data/0/model"}),
    "list_nodes": Producer("200", {"node": "$response.body#/data/0/node"}),  # edge nodes
}


def success_status(operation_id: str) -> str:
    producer = PRODUCERS.get(operation_id)
    return producer.status if producer is not None else "200"


def links(path_params: Mapping[str, list[str]]) -> dict[str, dict[str, Any]]:
    """``{producer operationId: {link name: link object}}``, from ``{operationId: its path
    parameters}`` for every operation of the document."""
    out: dict[str, dict[str, Any]] = {}
    for producer, spec in PRODUCERS.items():
        if producer not in path_params:
            continue  # a route renamed or removed: the table test names it
        named = {p for p, expr in spec.gives.items() if expr.startswith("$response.")}
        found = {
            target: {"operationId": target,
                     "parameters": {p: spec.gives[p] for p in params}}
            for target, params in path_params.items()
            # all its path parameters given, one of them by this response (not a mere
            # echo of the request: add_instance leads to its instance, not to its model)
            if params and set(params) <= set(spec.gives) and named & set(params)
        }
        if found:
            out[producer] = found
    return out
