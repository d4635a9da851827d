"""The playground: a chat with a model the caller may use, streamed token by token.

The page's script (``static/console.js``) posts to ``/console/api/chat``, which is the
very endpoint of ``POST /v1/chat/completions`` behind the console's session: the whole
inference pipeline runs with the session's identity (authorization, limits, guards,
accounting, audit), so what the playground uses shows in usage and audit as any call."""

from __future__ import annotations

from starlette.responses import Response

from autoglm.api import models as models_api
from autoglm.console.web import View, page


@page
async def playground(view: View) -> Response:
    cards = (await view.call(models_api.list_models))["data"]
    identity = view.identity
    projects = sorted({b.project_id for b in identity.bindings if b.project_id}
                      | set(identity.projects or ()))
    return view.render("playground.html", models=[c["id"] for c in cards], projects=projects)
