"""Every HTTP route, in one table, and what is derived from it.

Each route names the action the authorization stage checks (None: public) and whether
the inference pipeline authenticates it (its own first stage) instead of the edge
middleware. The protected prefixes, the metric route labels, the OpenAPI document and
the isolation tests are all derived from this table, so a route added here is covered
everywhere, and a route added without an action fails the isolation tests.

The web console's routes (``CONSOLE_ROUTES``) are signed in with the console's session
cookie instead of a bearer key (``console.gate``): their action is ``console.use`` (the
policy's right to sign in) or None (the sign-in page and the console's static files);
what a page shows and changes is decided by the admin handlers it calls, with their own
actions. They are not part of the OpenAPI document (they answer HTML).
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Sequence
from typing import NamedTuple

from starlette.routing import compile_path

from autoglm.api import (
    admin,
    alerts,
    audit,
    batches,
    edge,
    files,
    health,
    identity,
    inference,
    limits,
    mirror,
    models,
    openapi,
    usage,
)
from autoglm.api.metrics import metrics_endpoint
from autoglm.console import assets
from autoglm.console.pages import alerts as c_alerts
from autoglm.console.pages import audit as c_audit
from autoglm.console.pages import auth as c_auth
from autoglm.console.pages import directory as c_dir
from autoglm.console.pages import keys as c_keys
from autoglm.console.pages import models as c_models
from autoglm.console.pages import playground as c_play
from autoglm.console.pages import usage as c_usage


class RouteSpec(NamedTuple):
    method: str
    path: str
    endpoint: Callable
    action: str | None  # None: public, no key needed
    pipeline: bool = False  # authenticated by the inference pipeline, not at the edge
    console: bool = False  # a web console route: its session cookie, not a bearer key


ROUTES: tuple[RouteSpec, ...] = (
    RouteSpec("POST", "/v1/chat/completions", inference.chat_completions, "inference", True),
    RouteSpec("POST", "/v1/completions", inference.completions, "inference", True),
    RouteSpec("GET", "/v1/models", models.list_models, "model.list"),
    RouteSpec("GET", "/v1/models/{model:path}", models.get_model, "model.list"),
    RouteSpec("POST", "/v1/files", files.create_file, "file.create"),
    RouteSpec("GET", "/v1/files", files.list_files, "file.read"),
    RouteSpec("GET", "/v1/files/{file_id}", files.get_file, "file.read"),
    RouteSpec("DELETE", "/v1/files/{file_id}", files.delete_file, "file.delete"),
    RouteSpec("GET", "/v1/files/{file_id}/content", files.get_file_content, "file.read"),
    RouteSpec("POST", "/v1/batches", batches.create_batch, "job.create"),
    RouteSpec("GET", "/v1/batches", batches.list_batches, "job.read"),
    RouteSpec("GET", "/v1/batches/{batch_id}", batches.get_batch, "job.read"),
    RouteSpec("POST", "/v1/batches/{batch_id}/cancel", batches.cancel_batch, "job.cancel"),
    RouteSpec("GET", "/admin/v1/engines", admin.list_engines, "engine.read"),
    RouteSpec("POST", "/admin/v1/models/{model}/instances", admin.add_instance, "engine.write"),
    RouteSpec("POST", "/admin/v1/models/{model}/instances/{name}/drain", admin.drain_instance,
              "engine.write"),
    RouteSpec("POST", "/admin/v1/models/{model}/instances/{name}/resume",
              admin.resume_instance, "engine.write"),
    RouteSpec("DELETE", "/admin/v1/models/{model}/instances/{name}", admin.remove_instance,
              "engine.write"),
    RouteSpec("POST", "/admin/v1/tenants", identity.create_tenant, "tenant.create"),
    RouteSpec("GET", "/admin/v1/tenants", identity.list_tenants, "tenant.list"),
    RouteSpec("GET", "/admin/v1/tenants/{tenant}", identity.get_tenant, "tenant.read"),
    RouteSpec("GET", "/admin/v1/tenants/{tenant}/models", identity.get_grant, "tenant.read"),
    RouteSpec("PUT", "/admin/v1/tenants/{tenant}/models", identity.set_grant, "tenant.grant"),
    RouteSpec("POST", "/admin/v1/tenants/{tenant}/projects", identity.create_project,
              "project.create"),
    RouteSpec("GET", "/admin/v1/tenants/{tenant}/projects", identity.list_projects,
              "project.list"),
    RouteSpec("GET", "/admin/v1/projects/{project}", identity.get_project, "project.read"),
    RouteSpec("PATCH", "/admin/v1/projects/{project}", identity.update_project,
              "project.update"),
    RouteSpec("POST", "/admin/v1/tenants/{tenant}/principals", identity.create_principal,
              "principal.create"),
    RouteSpec("GET", "/admin/v1/tenants/{tenant}/principals", identity.list_principals,
              "principal.list"),
    RouteSpec("GET", "/admin/v1/principals/{principal}", identity.get_principal,
              "principal.read"),
    RouteSpec("POST", "/admin/v1/principals/{principal}/bindings", identity.create_binding,
              "binding.create"),
    RouteSpec("DELETE", "/admin/v1/bindings/{binding}", identity.delete_binding,
              "binding.delete"),
    RouteSpec("POST", "/admin/v1/principals/{principal}/keys", identity.create_key,
              "key.create"),
    RouteSpec("GET", "/admin/v1/principals/{principal}/keys", identity.list_keys, "key.list"),
    RouteSpec("GET", "/admin/v1/keys/{key}", identity.get_key, "key.read"),
    RouteSpec("POST", "/admin/v1/keys/{key}/rotate", identity.rotate_key, "key.rotate"),
    RouteSpec("POST", "/admin/v1/keys/{key}/revoke", identity.revoke_key, "key.revoke"),
    RouteSpec("GET", "/admin/v1/policy", identity.get_policy, "policy.read"),
    RouteSpec("POST", "/admin/v1/policy/validate", identity.validate_policy,
              "policy.validate"),
    RouteSpec("GET", "/admin/v1/usage", usage.get_usage, "usage.read"),
    RouteSpec("GET", "/admin/v1/limits/{scope}/{id}", limits.get_limits, "limit.read"),
    RouteSpec("PUT", "/admin/v1/limits/{scope}/{id}", limits.set_limits, "limit.write"),
    RouteSpec("GET", "/admin/v1/audit", audit.list_audit, "audit.read"),
    RouteSpec("GET", "/admin/v1/alerts", alerts.list_alerts, "alert.read"),
    RouteSpec("GET", "/admin/v1/edge/snapshot", edge.get_snapshot, "edge.sync"),
    RouteSpec("GET", "/admin/v1/edge/nodes", edge.list_nodes, "edge.read"),
    RouteSpec("GET", "/admin/v1/edge/nodes/{node}", edge.get_node, "edge.sync"),
    RouteSpec("POST", "/admin/v1/edge/nodes/{node}/audit", edge.forward_audit, "edge.sync"),
    RouteSpec("GET", "/openapi.json", openapi.openapi, None),
    RouteSpec("GET", "/healthz", health.healthz, None),
    RouteSpec("GET", "/readyz", health.readyz, None),
    RouteSpec("GET", "/metrics", metrics_endpoint, None),
)

# The internal mirror (``mirror: true``): the Hugging Face HTTP API over the registry's
# verified models, served only when the setting is on (``routes_for``).
MIRROR_ROUTES: tuple[RouteSpec, ...] = (
    RouteSpec("GET", "/api/models", mirror.list_repos, "model.pull"),
    RouteSpec("GET", "/api/models/autoglm/{name}", mirror.repo_info, "model.pull"),
    RouteSpec("GET", "/api/models/autoglm/{name}/revision/{revision}", mirror.repo_revision,
              "model.pull"),
    RouteSpec("GET", "/api/models/autoglm/{name}/tree/{revision}", mirror.repo_tree,
              "model.pull"),
    RouteSpec("GET", "/api/models/autoglm/{name}/tree/{revision}/{path:path}",
              mirror.repo_tree_path, "model.pull"),
    RouteSpec("GET", "/autoglm/{name}/resolve/{revision}/{path:path}", mirror.resolve_file,
              "model.pull"),
)


USE = "console.use"


def _c(method: str, path: str, endpoint: Callable, action: str | None = USE) -> RouteSpec:
    return RouteSpec(method, path, endpoint, action, console=True)


# The web console (``autoglm.console``): pages, the forms of changes (POST, each with the
# session's CSRF token), and the playground's stream.
CONSOLE_ROUTES: tuple[RouteSpec, ...] = (
    _c("GET", "/console/login", c_auth.login_page, None),
    _c("POST", "/console/login", c_auth.login, None),
    _c("GET", "/console/static/{name}", assets.static_file, None),
    _c("POST", "/console/logout", c_auth.logout),
    _c("GET", "/console", c_auth.home),
    _c("GET", "/console/tenants", c_dir.tenants),
    _c("POST", "/console/tenants", c_dir.tenants),
    _c("GET", "/console/tenants/{tenant}", c_dir.tenant),
    _c("POST", "/console/tenants/{tenant}/models", c_dir.set_grant),
    _c("POST", "/console/tenants/{tenant}/projects", c_dir.create_project),
    _c("POST", "/console/tenants/{tenant}/principals", c_dir.create_principal),
    _c("GET", "/console/projects/{project}", c_dir.project),
    _c("POST", "/console/projects/{project}", c_dir.project),
    _c("GET", "/console/principals/{principal}", c_dir.principal),
    _c("POST", "/console/principals/{principal}/bindings", c_dir.create_binding),
    _c("POST", "/console/bindings/{binding}/delete", c_dir.delete_binding),
    _c("POST", "/console/principals/{principal}/keys", c_keys.create_key),
    _c("POST", "/console/keys/{key}/rotate", c_keys.rotate_key),
    _c("POST", "/console/keys/{key}/revoke", c_keys.revoke_key),
    _c("GET", "/console/models", c_models.models),
    _c("POST", "/console/models/{model}/instances/{name}/drain", c_models.drain),
    _c("POST", "/console/models/{model}/instances/{name}/resume", c_models.resume),
    _c("GET", "/console/usage", c_usage.usage),
    _c("GET", "/console/audit", c_audit.audit),
    _c("GET", "/console/audit/verify", c_audit.audit_verify),
    _c("GET", "/console/alerts", c_alerts.alerts),
    _c("GET", "/console/playground", c_play.playground),
    _c("POST", "/console/api/chat", inference.chat_completions),
)


def routes_for(mirror_on: bool) -> tuple[RouteSpec, ...]:
    """The routes an app serves: every one of ``ROUTES``, the console's, and the mirror's
    when it is on."""
    return ROUTES + CONSOLE_ROUTES + (MIRROR_ROUTES if mirror_on else ())


class RouteTable:
    """Lookups the edge middleware makes on every request, precomputed from the table."""

    def __init__(self, routes: Sequence[RouteSpec]) -> None:
        protected = [r for r in routes if r.action is not None and not r.console]
        # The first path segment of every protected route: an unknown path under one of
        # them still needs a key (401 before 404, so nothing is learnt without one).
        self.protected_prefixes = tuple(sorted({"/" + r.path.split("/")[1] + "/"
                                                for r in protected}))
        self.pipeline_paths = frozenset(r.path for r in routes if r.pipeline)
        # the inference endpoints (pure ASGI, authenticated by their pipeline) by method and
        # path: the edge calls them itself, without Starlette's router and exception layers
        self.direct = {(r.method, r.path): r.endpoint for r in routes
                       if r.pipeline and not inspect.isroutine(r.endpoint)}
        console = [r for r in routes if r.console]
        self.console_roots = tuple(sorted({"/" + r.path.split("/")[1] for r in console}))
        # console paths that need no session (every other one does, known or not)
        self._console_public = [compile_path(r.path)[0] for r in console if r.action is None]
        self._static = {r.path for r in routes if "{" not in r.path}
        self._templated: list[tuple[re.Pattern[str], str]] = []
        seen: set[str] = set()
        for r in routes:
            if "{" in r.path and r.path not in seen:
                seen.add(r.path)
                regex, template, _ = compile_path(r.path)
                self._templated.append((regex, template))

    def edge_authenticated(self, path: str) -> bool:
        return path.startswith(self.protected_prefixes) and path not in self.pipeline_paths

    def console_route(self, path: str) -> bool | None:
        """None: not a console path; else whether it needs a signed-in session."""
        if not any(path == root or path.startswith(root + "/") for root in self.console_roots):
            return None
        return not any(regex.match(path) for regex in self._console_public)

    def label(self, path: str) -> str:
        """A bounded metric label: the route's template, or 'unmatched'."""
        if path in self._static:
            return path
        for regex, template in self._templated:
            if regex.match(path):
                return template
        return "unmatched"
