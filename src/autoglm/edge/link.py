"""At an edge node: the link to its centre (``centre_url``), and serving when it is cut.

Every ``edge_sync_s`` the edge fetches the centre's identity snapshot and applies it to
its own database (``edge.snapshot``): its keys, projects and limits are the centre's, with
their revocations, as of the last sync, and requests are served from that copy whether
the centre answers or not. Then it forwards the audit records it sealed since the last
forward, oldest first, in batches; the centre keeps each exactly once (``edge.inbox``), so
a forward whose answer was lost is simply sent again.

While the centre is unreachable the edge goes on serving tenant keys on its copy for up
to ``edge_max_staleness_s`` after the last sync (a revocation made at the centre meanwhile
can't be known); past it, tenant keys are refused with 503 ``edge_stale`` until the centre
answers again. The node's own platform keys always work. ``/readyz`` states the link:
reachable or not, the last sync and its age, the staleness allowed, records waiting.
The time of the last sync is kept in ``data_dir/edge/state.json``, so that a restarted
edge knows how stale its copy is.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import String, select, type_coerce

from autoglm.audit.record import COLUMNS
from autoglm.edge import snapshot
from autoglm.edge.inbox import wire
from autoglm.errors import AutoGLMError, EdgeStaleError, error_from_openai_body
from autoglm.security.keystore import Identity, KeyService
from autoglm.settings import Settings
from autoglm.store.db import Database
from autoglm.store.models import AuditRecord
from autoglm.timefmt import stamp

log = logging.getLogger("autoglm.edge")
FORWARD_BATCH = 200  # records per forward: well under the centre's body limit
_A = AuditRecord.__table__


class EdgeLink:
    def __init__(self, settings: Settings, db: Database, keys: KeyService | None,
                 clock: Any = time.time) -> None:
        if settings.centre_url is None or settings.centre_key is None:
            raise ValueError("an edge link needs centre_url and centre_key")
        self.url = settings.centre_url.rstrip("/")
        self.node = settings.edge_node
        self.db = db
        self.keys = keys
        self.clock = clock
        self.sync_s = settings.edge_sync_s
        self.max_staleness_s = settings.edge_max_staleness_s
        self._key = settings.centre_key.get_secret_value()
        self._verify: Any = str(settings.centre_ca_file) if settings.centre_ca_file else True
        self.state_file = settings.data_dir / "edge" / "state.json"
        self.last_sync: float | None = _read_state(self.state_file)
        self.reachable = False
        self.error: str | None = None
        self.forwarded: int | None = None  # the centre's end of our chain, once known
        self._ask = True  # whether to ask the centre for it before the next forward
        self._etag: str | None = None  # of the snapshot applied last
        self.pending = 0
        self.syncs = 0
        self._client: httpx.AsyncClient | None = None
        self._task: asyncio.Task[None] | None = None

    # --- serving on the copy ----------------------------------------------------------------
    def staleness_s(self) -> float | None:
        return None if self.last_sync is None else max(0.0, self.clock() - self.last_sync)

    def stale(self) -> bool:
        age = self.staleness_s()
        return age is None or age > self.max_staleness_s

    def gate(self, identity: Identity) -> None:
        """Refuse a tenant key once the copy it was checked against is too old."""
        if identity.tenant_id is not None and self.stale():
            age = self.staleness_s()
            since = "never reached its centre" if age is None else (
                f"has not reached its centre for {age:.0f} s")
            raise EdgeStaleError(f"this edge node {since} (allowed: "
                                 f"{self.max_staleness_s:.0f} s); try again later",
                                 retry_after=self.sync_s)

    def status(self) -> dict[str, Any]:
        return {"kind": "edge", "status": "degraded" if not self.reachable else "ready",
                "centre": self.url, "node": self.node, "reachable": self.reachable,
                "last_sync": (stamp(_utc(self.last_sync)) if self.last_sync is not None
                              else None),
                "staleness_s": (round(self.staleness_s() or 0.0, 3)
                                if self.last_sync is not None else None),
                "max_staleness_s": self.max_staleness_s, "stale": self.stale(),
                "forwarded_seq": self.forwarded, "pending_records": self.pending,
                **({"error": self.error} if self.error else {})}

    # --- the loop ---------------------------------------------------------------------------
    async def start(self) -> None:
        self._client = httpx.AsyncClient(
            base_url=self.url, verify=self._verify, trust_env=False,
            headers={"Authorization": f"Bearer {self._key}"},
            timeout=httpx.Timeout(10.0, connect=3.0))
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def _run(self) -> None:
        while True:
            await self.tick()
            await asyncio.sleep(self.sync_s)

    async def tick(self) -> None:
        """One sync and one forward; a failure is remembered (``status``), not raised."""
        try:
            await self.sync()
            await self.forward()
            self.reachable, self.error = True, None
        except (httpx.HTTPError, AutoGLMError, OSError, ValueError) as exc:
            if self.reachable or self.error is None:
                log.warning("centre not reachable", extra={"centre": self.url,
                                                          "reason": _reason(exc)})
            self.reachable, self.error = False, _reason(exc)
            self._ask = True  # ask again where the centre stands, once it answers
            with contextlib.suppress(Exception):  # records waiting: a local count
                self.pending = await asyncio.to_thread(_after, self.db, self.forwarded or 0)

    async def sync(self) -> None:
        if self._client is None:
            raise RuntimeError("the edge link is not started")
        r = await self._client.get("/admin/v1/edge/snapshot",
                                   headers={"If-None-Match": self._etag} if self._etag else {})
        applied = snapshot.Applied()
        if r.status_code == 200:
            applied = await asyncio.to_thread(snapshot.apply, self.db, r.json())
            self._etag = r.headers.get("etag")
        elif r.status_code != 304:  # 304: what we applied last is still the centre's
            raise error_from_openai_body(r.status_code, r.content, "the centre answered "
                                         f"{r.status_code} to the snapshot request")
        if applied.changed and self.keys is not None:
            self.keys.forget()  # a revocation works at once, not when the cache ages out
        now = self.clock()
        await asyncio.to_thread(_write_state, self.state_file, now)
        self.last_sync = now
        self.syncs += 1
        if applied.changed:
            log.info("identity snapshot applied", extra={
                "inserted": applied.inserted, "updated": applied.updated,
                "deleted": applied.deleted})

    async def forward(self) -> None:
        if self.forwarded is None or self._ask:
            self.forwarded = int((await self._call(
                "GET", f"/admin/v1/edge/nodes/{self.node}"))["seq"])
            self._ask = False
        while True:
            rows, left = await asyncio.to_thread(unforwarded, self.db, self.forwarded,
                                                 FORWARD_BATCH)
            self.pending = left
            if not rows:
                return
            done = await self._call("POST", f"/admin/v1/edge/nodes/{self.node}/audit",
                                    {"records": rows})
            self.forwarded = int(done["seq"])
            self.pending = max(0, left - len(rows))

    async def _call(self, method: str, path: str, body: Any = None) -> Any:
        if self._client is None:
            raise RuntimeError("the edge link is not started")
        r = await self._client.request(method, path, json=body)
        if r.status_code != 200:
            raise error_from_openai_body(r.status_code, r.content,
                                   f"the centre answered {r.status_code} to {method} {path}")
        return r.json()


def unforwarded(db: Database, after: int, limit: int) -> tuple[list[dict[str, Any]], int]:
    """Up to ``limit`` of this node's audit records after seq ``after``, as forwarded, and
    how many there are after ``after`` in all."""
    cols = [type_coerce(_A.c[c], String).label(c) if c == "detail" else _A.c[c]
            for c in COLUMNS]
    with db.engine.connect() as conn:
        rows = conn.execute(select(*cols).where(_A.c.seq > after)
                            .order_by(_A.c.seq).limit(limit))
        out = [wire(r._mapping) for r in rows]
    return out, _after(db, after)


def _after(db: Database, seq: int) -> int:
    with db.engine.connect() as conn:
        head = conn.execute(select(_A.c.seq).order_by(_A.c.seq.desc()).limit(1)).scalar()
    return max(0, int(head or 0) - seq)


def _reason(exc: BaseException) -> str:
    text = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"[:300]


def _utc(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


def _read_state(path: Path) -> float | None:
    try:
        value = json.loads(path.read_text())["last_sync"]
        return float(value)
    except (FileNotFoundError, KeyError, TypeError, ValueError):
        return None


def _write_state(path: Path, last_sync: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w") as f:
        json.dump({"last_sync": last_sync}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
