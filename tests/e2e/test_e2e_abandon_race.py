"""No race between gateway and engine: streams abandoned in bursts never make the next
ordinary request fail.

A client that hangs up frees its gateway permit at once, but the engine frees the slot
only when it sees the hang-up, a moment later. A request admitted in between used to
find every slot still held and got ``500 no free slot in the engine``; now it waits in
the engine until the slot is free.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import pytest

from .support import MODEL, ServerProcess

pytestmark = pytest.mark.e2e

SLOTS = 8
ABANDONED = 50
PROMPT = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10,"


@pytest.fixture(scope="module")
def eight_slots(start_server, stop_server) -> Iterator[ServerProcess]:
    srv = start_server("eight-slots", args=["--slots", str(SLOTS), "--ctx-per-slot", "256"])
    yield srv
    stop_server(srv)


async def _abandon(http: httpx.AsyncClient) -> None:
    """Open a stream, wait for its first token, hang up."""
    async with http.stream("POST", "/v1/completions", json={
            "model": MODEL, "prompt": PROMPT, "max_tokens": 200, "temperature": 0,
            "stream": True}) as r:
        assert r.status_code == 200
        async for _line in r.aiter_lines():
            if _line.startswith("data: {"):
                return  # leaving the block closes the connection mid-stream


async def _ordinary(http: httpx.AsyncClient) -> int:
    r = await http.post("/v1/chat/completions", json={
        "model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4})
    return r.status_code if r.status_code == 200 else -r.status_code


async def _run(srv: ServerProcess) -> list[int]:
    statuses: list[int] = []
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=srv.base_url, headers=srv.auth, timeout=60,
                                 limits=limits, trust_env=False) as http:
        left = ABANDONED
        while left > 0:
            burst = min(SLOTS, left)
            left -= burst
            # the burst fills every slot; ordinary requests race its hang-ups
            await asyncio.gather(*(_abandon(http) for _ in range(burst)))
            statuses += await asyncio.gather(*(_ordinary(http) for _ in range(3)))
            statuses.append(await _ordinary(http))
    return statuses


def test_abandoned_streams_never_fail_the_next_request(eight_slots: ServerProcess) -> None:
    statuses = asyncio.run(_run(eight_slots))
    assert len(statuses) == 7 * 4
    assert all(s == 200 for s in statuses), statuses
    assert eight_slots.metric("autoglm_requests_total", route="/v1/chat/completions",
                              model=MODEL, status="500") is None
