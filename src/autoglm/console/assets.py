"""The console's static files (``console/static``: one stylesheet, small scripts), read
once when the app is built and served from memory at ``/console/static/{name}``. They
are the package's own files: no CDN, nothing fetched, so the console works air-gapped."""

from __future__ import annotations

from importlib import resources
from types import MappingProxyType

from starlette.requests import Request
from starlette.responses import Response

from autoglm.errors import NotFoundError

TYPES = MappingProxyType({".css": "text/css; charset=utf-8",
                          ".js": "text/javascript; charset=utf-8",
                          ".svg": "image/svg+xml"})


def load() -> MappingProxyType[str, tuple[bytes, str]]:
    """Every file of ``static/`` by name, with its content type."""
    out: dict[str, tuple[bytes, str]] = {}
    for entry in resources.files("autoglm.console").joinpath("static").iterdir():
        suffix = "." + entry.name.rpartition(".")[2]
        if entry.is_file() and suffix in TYPES:
            out[entry.name] = (entry.read_bytes(), TYPES[suffix])
    return MappingProxyType(out)


async def static_file(request: Request) -> Response:
    """A file of the console's own (public: the sign-in page uses them)."""
    found = request.app.state.console.static.get(request.path_params["name"])
    if found is None:
        raise NotFoundError("no such file")
    body, kind = found
    return Response(body, media_type=kind)
