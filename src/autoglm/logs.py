"""Structured JSON logs, one object a line, with the request id of the request being served.

The request id lives in a ``ContextVar`` so every line logged while serving a request
carries it, whichever module logs. Prompt and answer text are never passed to the
logger unless ``log_prompts`` is on. Every line, whatever logged it (ours, a library's,
a traceback), passes the PII guard with every category masked before it is written.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import sys
import time
from contextvars import ContextVar
from typing import TextIO

import orjson

request_id_var: ContextVar[str | None] = ContextVar("autoglm_request_id", default=None)

_RESERVED = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime", "color_message"}


class JsonFormatter(logging.Formatter):
    def __init__(self, component: str) -> None:
        from autoglm.privacy import GuardPolicy, PiiGuard

        super().__init__()
        self.component = component
        self._second = -1
        self._stamp = ""
        # logs keep no personal data, whatever a tenant's policy lets through to a model
        self._guard = PiiGuard(GuardPolicy(default="mask"))

    def masked(self, line: str) -> str:
        return self._guard.apply(line).text

    def _ts(self, created: float, msecs: float) -> str:
        second = int(created)
        if second != self._second:  # strftime once a second, not once a line
            self._second = second
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._stamp}.{int(msecs):03d}+00:00"

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "ts": self._ts(record.created, record.msecs),
            "level": record.levelname.lower(),
            "logger": record.name,
            "component": self.component,
            "msg": record.getMessage(),
            "request_id": request_id_var.get(),
        }
        for key, value in record.__dict__.items():
            if key not in _RESERVED and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return self.masked(orjson.dumps(out, default=str).decode())


# Access-line fields whose values the server makes itself (never a caller's text): the
# fast path masks every other string field, not the whole line.
OWN_FIELDS = frozenset({"method", "principal", "transport"})


class BatchingStreamHandler(logging.Handler):
    """Writes lines in batches: at once for warnings and errors, otherwise within
    ``interval_s`` of the first line of a batch (a timer on the event loop of the thread
    that logged it; a thread with no event loop writes at once), and at exit. One write
    system call per busy interval instead of one per request line, and no thread of its
    own competing for the interpreter lock. Each write ends on a line boundary and stays
    under ``PIPE_BUF``, so processes sharing stderr never split each other's lines.
    """

    CHUNK = 4096

    def __init__(self, stream: TextIO, interval_s: float = 0.05) -> None:
        super().__init__()
        self.stream = stream
        self.interval_s = interval_s
        self._lines: list[str] = []
        self._scheduled = False
        self._due = 0.0
        atexit.register(self.flush)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:  # noqa: BLE001 - logging must never break the caller
            self.handleError(record)
            return
        self._add(line, urgent=record.levelno >= logging.WARNING)

    def write_fields(self, logger: str, msg: str, fields: dict[str, object],
                     own: frozenset[str] = frozenset()) -> None:
        """One info line built straight from ``fields``, without a ``LogRecord`` (the
        per-request access line); the same JSON shape as every other line. ``own``: fields
        the server filled for this line besides ``OWN_FIELDS`` (not masked either)."""
        formatter = self.formatter
        component = formatter.component if isinstance(formatter, JsonFormatter) else ""
        now = time.time()
        stamp = formatter._ts(now, (now % 1) * 1000) if isinstance(formatter, JsonFormatter) \
            else str(now)
        rid = request_id_var.get()
        if isinstance(formatter, JsonFormatter):  # only what a caller could have put there
            fields = {k: formatter.masked(v) if isinstance(v, str) and k not in OWN_FIELDS
                      and k not in own else v for k, v in fields.items()}
            if rid is not None and not rid.startswith("req_"):  # a client's X-Request-ID
                rid = formatter.masked(rid)
        line = orjson.dumps({"ts": stamp, "level": "info", "logger": logger,
                             "component": component, "msg": msg,
                             "request_id": rid, **fields},
                            default=str).decode()
        self._add(line, urgent=False)

    def _add(self, line: str, urgent: bool) -> None:
        now = time.monotonic()
        with self.lock:  # type: ignore[union-attr]
            self._lines.append(line)
            stale = self._scheduled and now > self._due + 1.0  # its loop stopped first
            if urgent or stale or self._scheduled:
                schedule = False
            else:
                schedule = self._scheduled = True
                self._due = now + self.interval_s
        if urgent or stale:
            self.flush()
        elif schedule:
            try:
                asyncio.get_running_loop().call_later(self.interval_s, self.flush)
            except RuntimeError:  # no event loop in this thread: write now
                self.flush()

    def flush(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            lines, self._lines = self._lines, []
            self._scheduled = False
            if not lines:
                return
            chunk: list[str] = []
            size = 0
            try:
                for line in lines:
                    if size + len(line) + 1 > self.CHUNK and chunk:
                        self.stream.write("\n".join(chunk) + "\n")
                        self.stream.flush()
                        chunk, size = [], 0
                    chunk.append(line)
                    size += len(line) + 1
                self.stream.write("\n".join(chunk) + "\n")
                self.stream.flush()
            except (OSError, ValueError):  # stderr closed: nothing left to tell
                pass

    def close(self) -> None:
        self.flush()
        super().close()


class AccessLog:
    """The access log's one line per request: through the batching handler directly when
    logging is exactly as ``setup_logging`` set it up (a few microseconds less per
    request), else through the ``autoglm.access`` logger, so that every handler sees it."""

    def __init__(self) -> None:
        self.logger = logging.getLogger("autoglm.access")

    def write(self, fields: dict[str, object], own: frozenset[str] = frozenset()) -> None:
        """``own``: fields whose values the server made for this request (a route's
        template, a configured model id): the fast path does not mask them."""
        logger = self.logger
        if not logger.isEnabledFor(logging.INFO):
            return
        handlers = logging.getLogger().handlers
        if logger.propagate and not logger.handlers and len(handlers) == 1 \
                and isinstance(handlers[0], BatchingStreamHandler):
            handlers[0].write_fields(logger.name, "request", fields, own)
            return
        logger.info("request", extra=fields)  # other handlers attached: they see it too


def setup_logging(level: str, component: str = "gateway") -> None:
    handler = BatchingStreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(component))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        lg = logging.getLogger(name)
        lg.handlers[:] = []
        lg.propagate = True
    logging.getLogger("uvicorn.access").disabled = True  # our access log has the request id
    if level.lower() != "debug":  # migrations announce themselves at every start otherwise
        logging.getLogger("alembic").setLevel(logging.WARNING)
