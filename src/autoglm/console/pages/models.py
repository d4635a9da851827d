"""Models: what each one proved at load (verification, signature), and, for those who
may read engines, every engine and instance with its health; platform admins drain and
resume instances of upstream pools (``/admin/v1`` engine handlers, audited there)."""

from __future__ import annotations

from starlette.responses import Response

from autoglm.api import admin
from autoglm.api import models as models_api
from autoglm.console.web import View, page


@page
async def models(view: View) -> Response:
    cards = (await view.call(models_api.list_models))["data"]
    engines = await view.maybe(admin.list_engines) if view.may("engine.read") else None
    return view.render("models.html", cards=cards,
                       engines=engines["data"] if engines else None,
                       can_write=view.may("engine.write"))


async def _change(view: View, endpoint: object) -> Response:
    params = {"model": view.request.path_params["model"],
              "name": view.request.path_params["name"]}
    await view.call(endpoint, method="POST", params=params)  # type: ignore[arg-type]
    return view.back("/console/models")


@page
async def drain(view: View) -> Response:
    return await _change(view, admin.drain_instance)


@page
async def resume(view: View) -> Response:
    return await _change(view, admin.resume_instance)
