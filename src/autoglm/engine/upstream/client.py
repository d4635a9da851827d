"""A model served by a pool of OpenAI-compatible upstream servers (vLLM, llama-server, ...).

Requests are forwarded as they came (the body is rewritten only when the upstream knows
the model by another name, when a stage changed it, or to ask a stream for its usage)
over one pooled keep-alive client per model, and the answers parsed into the pipeline's
events (``engine/upstream/events.py``). A connection
failure, or a 5xx before any byte reached the client, is retried once on another
instance; nothing is retried once streaming has begun. Errors name the model, never an
upstream's address.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any


from autoglm.engine.admission import AdmissionQueue
from autoglm.engine.base import EngineHealth, Event, ModelCard, Started
from autoglm.engine.upstream.events import SSEParser, broken, from_json, rejection
from autoglm.engine.upstream.http import (
    ConnectError,
    HttpClient,
    HttpError,
    Response,
    Timeouts,
)
from autoglm.engine.upstream.router import Clock, Instance, Router
from autoglm.errors import (
    AutoGLMError,
    EngineUnavailableError,
    InvalidRequestError,
    UpstreamError,
    UpstreamTimeoutError,
)
from autoglm.pipeline.request import InferenceRequest
from autoglm.settings import ModelSpec, Settings, revealed

log = logging.getLogger("autoglm.upstream")

@dataclass
class Opened:
    """An upstream response whose status and headers are in; the body is still to read."""

    engine: UpstreamEngine
    instance: Instance
    response: Response
    released: bool = False

    def release(self, failure: str | None = None, abort: bool = False) -> None:
        """Done with the response. ``failure`` counts against the instance; ``abort`` (or a
        failure) closes the connection so the upstream stops generating."""
        if self.released:
            return
        self.released = True
        router = self.engine.router
        if failure is not None:
            router.failure(self.instance, failure)
        if failure is not None or abort:
            self.response.close()
        else:
            self.response.release()
        router.release(self.instance)


class UpstreamEngine:
    passthrough = True

    def __init__(self, settings: Settings, spec: ModelSpec, clock: Clock = time.monotonic) -> None:
        self.settings = settings
        self.spec = spec
        self.model = ModelCard(id=spec.id, owned_by=spec.engine, created=int(time.time()),
                               context_length=0)
        self.router = Router(spec.id, spec.max_fails, spec.fail_timeout_s, clock)
        for inst in spec.instances:
            self.router.add(inst)
        self.queue = AdmissionQueue.for_settings(self.capacity(), settings)
        self.http: HttpClient | None = None
        self._probe_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        s = self.settings
        self.http = HttpClient(s.upstream_max_connections, Timeouts(
            connect=s.upstream_connect_timeout_s, first_byte=s.upstream_first_byte_timeout_s,
            total=s.upstream_total_timeout_s))
        if self.spec.probe is not None:
            self._probe_task = asyncio.create_task(self._probe_loop(), name=f"probe-{self.spec.id}")

    async def close(self) -> None:
        if self._probe_task is not None:
            self._probe_task.cancel()
        if self.http is not None:
            await self.http.close()

    def attach_spec(self) -> dict[str, Any]:
        """What a gateway worker needs to route to the same instances."""
        return {"kind": "upstream", "spec": revealed(self.spec)}

    # --- active health ---------------------------------------------------------------------
    async def _probe_loop(self) -> None:
        probe = self.spec.probe
        if probe is None:
            return
        while True:
            await asyncio.sleep(probe.interval_s)
            await asyncio.gather(*(self.probe_once(i) for i in list(self.router.instances)))

    async def probe_once(self, inst: Instance) -> bool:
        """GET the probe path; a 2xx brings the instance back, anything else counts a failure."""
        probe = self.spec.probe
        if probe is None or self.http is None:
            return False
        headers = {"Authorization": f"Bearer {inst.api_key}"} if inst.api_key else {}
        limit = Timeouts(connect=probe.timeout_s, first_byte=probe.timeout_s,
                         total=probe.timeout_s)
        try:
            r = await self.http.request("GET", inst.url + probe.path, headers, timeouts=limit)
            try:
                await r.read()
            finally:
                r.release()
            ok = 200 <= r.status < 300
            reason = f"probe: HTTP {r.status}"
        except (HttpError, asyncio.TimeoutError) as exc:
            ok, reason = False, f"probe: {type(exc).__name__}"
        if ok:
            self.router.success(inst)
        else:
            self.router.failure(inst, reason)
        return ok

    # --- status ----------------------------------------------------------------------------
    def stats(self) -> dict[str, int]:
        insts = self.router.instances
        return {"up": int(self.router.healthy() > 0), "slots": len(insts),
                "busy": sum(i.in_flight for i in insts), "queued": self.queue.depth,
                "restarts": 0}

    def describe(self, *, with_url: bool) -> list[dict[str, Any]]:
        now = self.router.clock()
        return [i.describe(now, with_url=with_url) for i in self.router.instances]

    async def health(self) -> EngineHealth:
        healthy = self.router.healthy()
        detail = {"instances": self.describe(with_url=False), "healthy_instances": healthy}
        return EngineHealth(f"{self.spec.engine}:{self.spec.id}",
                            "ready" if healthy else "down", None, detail)

    # --- the engine contract ---------------------------------------------------------------
    def capacity(self) -> int:
        return self.spec.max_concurrency or self.settings.upstream_max_connections

    def check_available(self) -> None:
        if self.http is None:
            raise EngineUnavailableError(f"model '{self.spec.id}' is not started")
        if self.router.healthy() == 0:
            raise EngineUnavailableError(
                f"model '{self.spec.id}': no instance is available; retry shortly",
                retry_after=self.router.retry_after())

    def prepare(self, req: InferenceRequest) -> None:
        """What is checked before forwarding; the upstream validates the rest."""
        body = req.body
        if not isinstance(body.get("stream", False), bool):
            raise InvalidRequestError("Invalid value for 'stream': must be a boolean",
                                      param="stream")
        if req.kind == "chat":
            messages = body.get("messages")
            if not isinstance(messages, list) or not messages:
                raise InvalidRequestError("'messages' must be a non-empty array",
                                          param="messages")
        elif "prompt" not in body:
            raise InvalidRequestError("'prompt' is a required property", param="prompt")

    async def generate(self, req: InferenceRequest) -> AsyncIterator[Event]:
        chat = req.kind == "chat"
        stream = req.stream
        overrides: dict[str, Any] = {}
        if stream and not req.include_usage:  # usage is always known; the client sees it
            opts = req.body.get("stream_options")  # only where it asked
            overrides["stream_options"] = {**(opts if isinstance(opts, dict) else {}),
                                           "include_usage": True}
        opened = await self.open("/chat/completions" if chat else "/completions",
                                 req, overrides)
        resp = opened.response
        model = self.spec.id
        try:
            if resp.status >= 400:
                body = await resp.read()
                opened.release()
                raise rejection(model, resp.status, body)
            if stream and resp.headers.get("content-type", "").startswith("text/event-stream"):
                yield Started(None)
                parser = SSEParser(chat, model)
                try:
                    async for data in resp.chunks():  # what came before a break comes first
                        for ev in parser.feed(data):
                            yield ev
                except (HttpError, asyncio.TimeoutError) as exc:
                    for ev in parser.feed(b"\n"):  # a last line the break left unterminated
                        yield ev
                    reason = "timeout" if isinstance(exc, asyncio.TimeoutError) else \
                        type(exc).__name__
                    opened.release(failure=f"stream: {reason}")
                    log.error("upstream stream ended by error",
                              extra={"model": model, "reason": reason})
                    raise broken(model) from None
                opened.release()
                yield parser.end()
                return
            try:
                body = await resp.read()
            except asyncio.TimeoutError:
                opened.release(failure="timeout reading the answer")
                raise UpstreamTimeoutError(
                    f"model '{model}': the upstream did not finish in time") from None
            except HttpError as exc:
                opened.release(failure=f"read: {type(exc).__name__}")
                raise UpstreamError(f"model '{model}': the upstream connection broke") from None
            opened.release()
            for ev in from_json(chat, model, body):
                yield ev
        finally:
            opened.release(abort=True)  # no-op when released; else the client went away

    # --- forwarding ------------------------------------------------------------------------
    def _body_for(self, inst: Instance, req: InferenceRequest, overrides: dict[str, Any]) -> bytes:
        if inst.upstream_model is not None and inst.upstream_model != req.model:
            overrides = {**overrides, "model": inst.upstream_model}
        return req.encoded(**overrides)

    async def open(self, path: str, req: InferenceRequest,
                   overrides: dict[str, Any] | None = None) -> Opened:
        """Send the request; return once an instance answered with a non-5xx status."""
        http = self.http
        if http is None:
            raise EngineUnavailableError(f"model '{self.spec.id}' is not started")
        tried: set[Instance] = set()
        last: AutoGLMError | None = None
        for _ in range(2):  # first try, and one retry on another instance
            inst = self.router.pick(exclude=tried)
            if inst is None:
                break
            tried.add(inst)
            headers = inst.headers
            self.router.acquire(inst)
            try:
                resp = await http.request("POST", inst.url + path, headers,
                                          self._body_for(inst, req, overrides or {}))
            except ConnectError as exc:
                self.router.release(inst)
                self.router.failure(inst, f"connect: {type(exc).__name__}")
                last = UpstreamError(f"model '{self.spec.id}': could not reach an instance")
                continue
            except asyncio.TimeoutError:
                self.router.release(inst)
                self.router.failure(inst, "timeout waiting for the answer")
                raise UpstreamTimeoutError(
                    f"model '{self.spec.id}': the upstream did not answer in time") from None
            except BaseException:
                self.router.release(inst)
                raise
            if resp.status >= 500:
                resp.release()
                self.router.release(inst)
                self.router.failure(inst, f"HTTP {resp.status}")
                last = UpstreamError(f"model '{self.spec.id}': the upstream failed "
                                     f"(HTTP {resp.status})")
                continue
            self.router.success(inst)
            return Opened(self, inst, resp)
        if last is not None and self.router.healthy() > 0:
            raise last
        raise EngineUnavailableError(
            f"model '{self.spec.id}': no instance is available; retry shortly",
            retry_after=self.router.retry_after())
