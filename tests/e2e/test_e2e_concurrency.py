"""Four streams on a 4-slot server are decoded together, not one after another."""

from __future__ import annotations

import asyncio
import time

import pytest

from .support import MODEL, ServerProcess

pytestmark = pytest.mark.e2e

STREAMS = 4
MAX_TOKENS = 48
TEST_TIMEOUT_S = 90.0
PROMPTS = [
    "Write a long story about a dragon.",
    "Explain how rain forms, in detail.",
    "List many fruits and describe each.",
    "Describe a city at night.",
]


async def test_four_concurrent_streams_progress_together(server: ServerProcess) -> None:
    arrivals: list[list[float]] = [[] for _ in range(STREAMS)]
    busy_seen: list[float] = []
    done = asyncio.Event()

    async def one(client, i: int) -> None:
        stream = await client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": PROMPTS[i]}], temperature=0,
            max_tokens=MAX_TOKENS, stream=True,
        )
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                arrivals[i].append(time.monotonic())

    async def watch_busy() -> None:
        async with server.async_client(auth=True, timeout=5.0) as http:
            while not done.is_set():
                r = await http.get("/readyz")
                busy_seen.append(r.json()["checks"][MODEL]["busy"])
                await asyncio.sleep(0.05)

    async with server.async_openai() as client:
        watcher = asyncio.create_task(watch_busy())
        try:
            await asyncio.wait_for(
                asyncio.gather(*(one(client, i) for i in range(STREAMS))), TEST_TIMEOUT_S
            )
        finally:
            done.set()
            await asyncio.wait_for(watcher, 10)

    counts = [len(a) for a in arrivals]
    assert min(counts) >= 10, f"streams too short to judge interleaving: {counts}"
    firsts = [a[0] for a in arrivals]
    lasts = [a[-1] for a in arrivals]
    # Every stream started before any stream finished: they ran at the same time.
    assert max(firsts) < min(lasts), (firsts, lasts)

    timeline = sorted((t, i) for i, a in enumerate(arrivals) for t in a)
    switches = sum(1 for (_, a), (_, b) in zip(timeline, timeline[1:]) if a != b)
    # Run one after another, the merged timeline switches stream 3 times; decoded
    # together (one token per stream per step) it switches about 4 * tokens times.
    # Ask for well over half of the round-robin ideal.
    needed = 3 * min(counts) // 2
    order = "".join(str(i) for _, i in timeline)
    assert switches >= needed, f"{switches} switches < {needed}; order: {order}"
    assert max(busy_seen, default=0) == STREAMS, f"busy slots seen: {sorted(set(busy_seen))}"
