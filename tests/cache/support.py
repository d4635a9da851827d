"""What the response cache tests share: an app with optional test stages, requests and
answers in the OpenAI shapes, and the cache counters from /metrics."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Sequence
from typing import Any

import httpx
import orjson
from asgi_lifespan import LifespanManager

from autoglm.api.app import create_app
from autoglm.engine.base import Delta, Event
from autoglm.pipeline.context import RequestContext
from autoglm.pipeline.stage import Stage
from autoglm.settings import Settings
from tests.conftest import MODEL, AppClient

USE = {"X-AutoGLM-Cache": "use"}


def chat(content: str = "Say hi", model: str = MODEL, **kw: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": content}],
            "max_tokens": 6, "temperature": 0, **kw}


def sse_chunks(body: bytes) -> list[dict[str, Any]]:
    out = []
    for line in body.split(b"\n"):
        if line.startswith(b"data: ") and line != b"data: [DONE]":
            out.append(orjson.loads(line[6:]))
    return out


def streamed_text(body: bytes) -> str:
    return "".join(c["choices"][0]["delta"].get("content") or ""
                   for c in sse_chunks(body) if c["choices"])


def json_text(r: httpx.Response) -> str:
    return r.json()["choices"][0]["message"]["content"]


class SeenByAudit(Stage):
    """Before the audit stage: what ``ctx.state["cache"]`` says when the audit records the
    request (the audit stage can tell a hit)."""

    name = "test_seen_by_audit"

    def __init__(self) -> None:
        self.seen: dict[str, str | None] = {}

    def after(self, ctx: RequestContext) -> None:
        self.seen[ctx.request_id] = ctx.state.get("cache")


class SayPii(Stage):
    """After the engine, before the output guard: appends personal data to every answer.
    A replayed answer passes the stages like a fresh one, so it must get it once, too."""

    name = "test_say_pii"
    VALUES = ("13812345678", "alice.wang@example.com")

    def on_event(self, ctx: RequestContext, event: Event) -> Sequence[Event]:
        if isinstance(event, Delta) and event.finish_reason is not None:
            event.text += " call " + " or ".join(self.VALUES)
        return (event,)


async def run_app(settings: Settings, extra_stages: dict[str, list[Stage]] | None = None
                  ) -> AsyncIterator[AppClient]:
    app = create_app(settings, extra_stages=extra_stages)
    async with LifespanManager(app, startup_timeout=120, shutdown_timeout=30):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test",
                                     timeout=60) as client:
            yield AppClient(app, client)


async def cache_counts(client: AppClient, model: str = MODEL) -> dict[str, float]:
    text = (await client.get("/metrics")).text
    out = {"hit": 0.0, "miss": 0.0, "bypass": 0.0}
    pattern = re.compile(r'^autoglm_response_cache_total\{model="([^"]*)",result="(\w+)"\} '
                         r'([0-9.e+]+)$', re.M)
    for found_model, result, value in pattern.findall(text):
        if found_model == model:
            out[result] = float(value)
    return out
