"""One app in process with both engine kinds (the real bundled model on llama.cpp, and a
stand-in upstream process) and the test stage in its pipeline; HTTP through an in-process
client, gRPC on a free port (``app.state.rpc.port``)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from asgi_lifespan import LifespanManager

from autoglm.api.app import create_app
from tests.conftest import ADMIN_KEY, MODEL, AppClient, make_settings
from tests.pipeline.stages import RewriteStage
from tests.standin import Standin

UPSTREAM = "upstream-model"


@pytest.fixture(scope="module")
def standin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Standin]:
    st = Standin("pipe", tmp_path_factory.mktemp("standin")).start()
    yield st
    st.kill()


@pytest.fixture(scope="module")
async def both(tmp_path_factory: pytest.TempPathFactory,
               standin: Standin) -> AsyncIterator[tuple[AppClient, RewriteStage]]:
    # The PII guard off: these tests compare answers chunk by chunk with the upstream's,
    # and the guard re-cuts chunks where a value may continue (tests/pipeline/test_guard.py)
    settings = make_settings(tmp_path_factory.mktemp("pipeline"), grpc_port=0, models=[
        {"id": MODEL, "engine": "llamacpp"},
        {"id": UPSTREAM, "engine": "openai", "instances": [{"url": standin.url}]},
    ], pii_actions={"default": "allow"})
    stage = RewriteStage()
    app = create_app(settings, extra_stages={"admission": [stage]})
    async with LifespanManager(app, startup_timeout=120, shutdown_timeout=30):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test",
                                     timeout=60) as client:
            yield AppClient(app, client), stage


__all__ = ["ADMIN_KEY", "MODEL", "UPSTREAM"]
