"""``Webhook``: alerts POSTed as JSON, signed, retried, from a bounded queue.

Each alert is one POST of its JSON (``Alert.payload``, compact, keys sorted) with:

- ``X-AutoGLM-Event: alert.raised`` and ``X-AutoGLM-Delivery: <alert id>`` (the same on
  every try: a receiver drops what it has seen);
- ``X-AutoGLM-Timestamp``: Unix seconds of this try;
- ``X-AutoGLM-Signature: sha256=<hex>``: HMAC-SHA256, keyed with the secret file's
  content (surrounding whitespace removed), of ``<timestamp>.<body>`` (the timestamp's
  digits, a dot, the body's bytes). A receiver recomputes it (``verify``), compares in
  constant time, and refuses timestamps older than a few minutes (replays).

A 2xx is delivered. A connection error, a timeout, 408, 429 or a 5xx is tried again,
``retries`` times, after ``backoff_s``, then twice as long each time (at most
``MAX_BACKOFF_S``); any other answer fails at once. One alert is delivered at a time; the
others wait in a queue of ``queue_max`` and beyond it are dropped (counted and logged),
so a dead receiver costs neither memory nor the request path. Every alert is in the
audit log whatever became of its delivery. Neither the secret nor the URL beyond its
host is ever logged (receivers may put a token in the path).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson

from autoglm.errors import ConfigError

log = logging.getLogger("autoglm.alerts")
MAX_BACKOFF_S = 60.0
MIN_SECRET_BYTES = 16
RETRY_STATUSES = frozenset({408, 429})
Results = Callable[[str], None]  # delivered | retried | failed | dropped


def sign(secret: bytes, timestamp: str, body: bytes) -> str:
    """The ``X-AutoGLM-Signature`` value of ``body`` sent at ``timestamp``."""
    mac = hmac.new(secret, timestamp.encode("ascii") + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify(secret: bytes, timestamp: str, body: bytes, signature: str, *,
           now: float | None = None, tolerance_s: float = 300.0) -> bool:
    """What a receiver checks: the signature, and a timestamp within ``tolerance_s``."""
    if not timestamp.isascii() or not timestamp.isdigit():
        return False
    if abs((time.time() if now is None else now) - int(timestamp)) > tolerance_s:
        return False
    return hmac.compare_digest(sign(secret, timestamp, body), signature)


def read_secret(path: Path) -> bytes:
    try:
        secret = path.read_bytes().strip()
    except OSError as exc:
        raise ConfigError(f"alerts_webhook_secret_file {path} cannot be read: "
                          f"{exc.strerror or exc}") from None
    if len(secret) < MIN_SECRET_BYTES:
        raise ConfigError(f"alerts_webhook_secret_file {path} must hold a secret of at least "
                          f"{MIN_SECRET_BYTES} bytes (e.g. `openssl rand -hex 32`)")
    return secret


def shown(url: str) -> str:
    """The URL for logs: scheme and host only (receivers may put a token in the path)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or ''}{f':{parts.port}' if parts.port else ''}"


class Webhook:
    def __init__(self, url: str, secret: bytes, *, retries: int = 5, backoff_s: float = 1.0,
                 timeout_s: float = 5.0, queue_max: int = 1000, results: Results | None = None,
                 sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep) -> None:
        self.url = url
        self._secret = secret
        self.retries = retries
        self.backoff_s = backoff_s
        self.timeout_s = timeout_s
        self._results = results or (lambda _result: None)
        self._sleep = sleep
        self._queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=queue_max)
        self._task: asyncio.Task[None] | None = None
        self._client: httpx.AsyncClient | None = None

    def __repr__(self) -> str:  # never the secret
        return f"Webhook({shown(self.url)!r})"

    def enqueue(self, payload: dict[str, Any]) -> bool:
        """Queue one alert for delivery; False (dropped, counted) when the queue is full."""
        try:
            self._queue.put_nowait(payload)
        except asyncio.QueueFull:
            self._results("dropped")
            log.warning("alert webhook queue full: alert dropped (it is in the audit log)",
                        extra={"alert": payload.get("id"), "url": shown(self.url)})
            return False
        return True

    @property
    def pending(self) -> int:
        return self._queue.qsize()

    async def start(self) -> None:
        self._client = httpx.AsyncClient(timeout=self.timeout_s, follow_redirects=False,
                                         trust_env=False)
        self._task = asyncio.get_running_loop().create_task(self._run(), name="alert-webhook")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def _run(self) -> None:
        while True:
            payload = await self._queue.get()
            try:
                await self.deliver(payload)
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - the worker must outlive any surprise
                log.exception("alert webhook delivery failed unexpectedly")
                self._results("failed")

    async def deliver(self, payload: dict[str, Any]) -> bool:
        """POST one alert, with its retries; whether it was delivered."""
        body = orjson.dumps(payload, option=orjson.OPT_SORT_KEYS)
        delay = self.backoff_s
        for attempt in range(self.retries + 1):
            if attempt:
                self._results("retried")
                await self._sleep(delay)
                delay = min(delay * 2, MAX_BACKOFF_S)
            outcome = await self._post(payload.get("id", ""), body)
            if outcome == "delivered":
                self._results("delivered")
                return True
            if outcome == "final":
                break
        self._results("failed")
        log.warning("alert webhook gave up (the alert is in the audit log)",
                    extra={"alert": payload.get("id"), "url": shown(self.url),
                           "tries": attempt + 1})
        return False

    async def _post(self, alert_id: str, body: bytes) -> str:
        """delivered, retry or final (an answer that trying again will not change)."""
        client = self._client
        if client is None:
            raise ConfigError("the alert webhook is not started")
        timestamp = str(int(time.time()))
        headers = {"content-type": "application/json", "x-autoglm-event": "alert.raised",
                   "x-autoglm-delivery": str(alert_id), "x-autoglm-timestamp": timestamp,
                   "x-autoglm-signature": sign(self._secret, timestamp, body),
                   "user-agent": "autoglm-alerts"}
        try:
            r = await client.post(self.url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            log.warning("alert webhook not reached", extra={
                "url": shown(self.url), "reason": type(exc).__name__})
            return "retry"
        if 200 <= r.status_code < 300:
            return "delivered"
        log.warning("alert webhook answered %d", r.status_code, extra={"url": shown(self.url)})
        return "retry" if r.status_code >= 500 or r.status_code in RETRY_STATUSES else "final"
