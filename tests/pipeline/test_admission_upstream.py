"""The admission stage fronts upstream pools too: at most ``max_concurrency`` requests in
flight to the pool, the rest in the fair queue, and beyond it a 503 with Retry-After."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import pytest

from tests.conftest import AppClient, make_settings, start_app
from tests.standin import Standin

UP = "slow-upstream"


@pytest.fixture(scope="module")
def slow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Standin]:
    st = Standin("slow", tmp_path_factory.mktemp("slow")).start()
    st.control(delay_ms=400)
    yield st
    st.kill()


@pytest.fixture(scope="module")
async def app(tmp_path_factory: pytest.TempPathFactory, slow: Standin) -> AsyncIterator[AppClient]:
    settings = make_settings(
        tmp_path_factory.mktemp("adm"), max_queue=2, max_queue_share=1.0, queue_timeout_s=5,
        models=[{"id": UP, "engine": "openai", "max_concurrency": 2,
                 "instances": [{"url": slow.url}]}])
    async for client in start_app(settings):
        yield client


async def test_upstream_requests_are_admitted_through_the_queue(app: AppClient,
                                                                slow: Standin) -> None:
    body = {"model": UP, "messages": [{"role": "user", "content": "hi"}]}
    rs = await asyncio.gather(*(app.post("/v1/chat/completions", body) for _ in range(6)))
    statuses = sorted(r.status_code for r in rs)
    assert statuses == [200] * 4 + [503] * 2  # 2 in flight + 2 queued; the rest refused
    refused = [r for r in rs if r.status_code == 503]
    for r in refused:
        assert r.json()["error"]["code"] == "server_overloaded"
        assert r.headers["retry-after"].isdigit()
    assert slow.stats()["max_in_flight"] == 2
    engines = (await app.get("/admin/v1/engines")).json()["data"]
    view = next(e for e in engines if e["model"] == UP)
    assert view["busy"] == 0 and view["queued"] == 0
