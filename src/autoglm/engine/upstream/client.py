"""A model served by a pool of OpenAI-compatible upstream servers (vLLM, llama-server, ...).

Requests are forwarded as they came (the body is rewritten only when the upstream knows
the model by another name) over one pooled keep-alive client per model. A connection
failure, or a 5xx before any byte reached the client, is retried once on another
instance; nothing is retried once streaming has begun. Errors name the model, never an
upstream's address.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

from autoglm.engine.base import EngineHealth, ModelCard
from autoglm.engine.upstream.router import Clock, Instance, Router
from autoglm.errors import (
    AutoGLMError,
    EngineUnavailableError,
    InvalidRequestError,
    UpstreamError,
    UpstreamTimeoutError,
)
from autoglm.settings import ModelSpec, Settings

log = logging.getLogger("autoglm.upstream")

_CONNECT_ERRORS = (aiohttp.ClientConnectorError, aiohttp.ServerDisconnectedError,
                   aiohttp.ClientOSError, aiohttp.ConnectionTimeoutError)


@dataclass
class Opened:
    """An upstream response whose status and headers are in; the body is still to read."""

    engine: UpstreamEngine
    instance: Instance
    response: aiohttp.ClientResponse
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
        self.session: aiohttp.ClientSession | None = None
        self._probe_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        s = self.settings
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=s.upstream_max_connections, keepalive_timeout=60,
                                           ttl_dns_cache=60),
            timeout=aiohttp.ClientTimeout(total=s.upstream_total_timeout_s,
                                          sock_connect=s.upstream_connect_timeout_s,
                                          sock_read=s.upstream_first_byte_timeout_s),
            auto_decompress=False, skip_auto_headers=("User-Agent",),
        )
        if self.spec.probe is not None:
            self._probe_task = asyncio.create_task(self._probe_loop(), name=f"probe-{self.spec.id}")

    async def close(self) -> None:
        if self._probe_task is not None:
            self._probe_task.cancel()
        if self.session is not None:
            await self.session.close()

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
        if probe is None or self.session is None:
            return False
        headers = {"Authorization": f"Bearer {inst.api_key}"} if inst.api_key else {}
        try:
            async with self.session.get(inst.url + probe.path, headers=headers,
                                        timeout=aiohttp.ClientTimeout(total=probe.timeout_s)) as r:
                ok = 200 <= r.status < 300
                reason = f"probe: HTTP {r.status}"
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
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
                "busy": sum(i.in_flight for i in insts), "queued": 0, "restarts": 0}

    def describe(self, *, with_url: bool) -> list[dict[str, Any]]:
        now = self.router.clock()
        return [i.describe(now, with_url=with_url) for i in self.router.instances]

    async def health(self) -> EngineHealth:
        healthy = self.router.healthy()
        detail = {"instances": self.describe(with_url=False), "healthy_instances": healthy}
        return EngineHealth(f"{self.spec.engine}:{self.spec.id}",
                            "ready" if healthy else "down", None, detail)

    # --- forwarding ------------------------------------------------------------------------
    def _body_for(self, inst: Instance, payload: dict[str, Any], raw: bytes) -> bytes:
        if inst.upstream_model is None or inst.upstream_model == payload.get("model"):
            return raw
        return orjson.dumps({**payload, "model": inst.upstream_model})

    async def open(self, path: str, payload: dict[str, Any], raw: bytes) -> Opened:
        """Send the request; return once an instance answered with a non-5xx status."""
        if self.session is None:
            raise EngineUnavailableError(f"model '{self.spec.id}' is not started")
        tried: set[Instance] = set()
        last: AutoGLMError | None = None
        for _ in range(2):  # first try, and one retry on another instance
            inst = self.router.pick(exclude=tried)
            if inst is None:
                break
            tried.add(inst)
            headers = {"Content-Type": "application/json"}
            if inst.api_key:
                headers["Authorization"] = f"Bearer {inst.api_key}"
            self.router.acquire(inst)
            try:
                resp = await self.session.post(inst.url + path, data=self._body_for(inst, payload, raw),
                                               headers=headers)
            except _CONNECT_ERRORS as exc:
                self.router.release(inst)
                self.router.failure(inst, f"connect: {type(exc).__name__}")
                last = UpstreamError(f"model '{self.spec.id}': could not reach an instance")
                continue
            except asyncio.TimeoutError:
                self.router.release(inst)
                self.router.failure(inst, "timeout waiting for the answer")
                raise UpstreamTimeoutError(
                    f"model '{self.spec.id}': the upstream did not answer in time") from None
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


def upstream_client_error(status: int, body: bytes) -> AutoGLMError:
    """A 4xx from the upstream, kept a 4xx, in the OpenAI shape."""
    message = f"the upstream rejected the request (HTTP {status})"
    param = code = None
    try:
        err = orjson.loads(body).get("error")
        if isinstance(err, dict):
            message = str(err.get("message") or message)
            param, code = err.get("param"), err.get("code")
        elif isinstance(err, str):
            message = err
    except (orjson.JSONDecodeError, AttributeError):
        pass
    exc = InvalidRequestError(message, param=param if isinstance(param, str) else None)
    exc.status = status
    if isinstance(code, str):
        exc.code = code
    return exc
