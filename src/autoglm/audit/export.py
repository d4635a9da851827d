"""``autoglm audit export``: a stretch of the chain as JSON lines (or CEF), streamed.

The export is the *contiguous* run of records from the first made at or after
``since`` to the last made before ``until`` (a record's time is when it was made, before
it was sealed, so a few records at the edges may lie just outside the window): a run
with no gaps verifies on its own. It is read in one snapshot through a server-side
cursor, ``chunk`` rows at a time, and written as it is read, so memory does not grow with
its length.

JSONL: one record per line, every column as ``verify`` reads it (``ts`` in the one
timestamp format, ``detail`` as an object) plus ``prev``, the hash of the record before,
so each line can be checked alone with the key. The last line is the trailer::

    {"export": {"format": "autoglm-audit-export-v1", "first_seq": 101, "last_seq": 250,
                "records": 150, "prev": "<hash of 100>", "last_hash": "<hash of 250>",
                "since": ..., "until": ..., "exported_at": ...}, "mac": "<hex>"}

``mac`` is HMAC-SHA256 with the chain's key over ``autoglm-audit-export-v1\\n`` and the
``export`` object as sorted JSON: lines cut off at either end or a trailer rewritten are
caught by ``autoglm audit verify --file`` (``audit.segment``).

CEF: one ``cef.line`` per record, no trailer (for a SIEM, not for verification).

Personal fields stay sealed (``personal``) unless ``open_personal``: then each JSONL line
also carries ``opened`` (``client_addr``, ``purpose``, ``text``, ``erased``; outside the
chain's fields, so the export still verifies) and CEF lines carry them in their fields.
Exports leave the server, so that is a choice to make each time.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import IO, Any

import orjson
from sqlalchemy import Connection, select
from sqlalchemy.exc import OperationalError, ProgrammingError

from autoglm.audit import cef
from autoglm.audit import checkpoints as cps
from autoglm.audit.keys import AuditPaths, load_hmac_key, load_personal_key
from autoglm.audit.query import Filters, window
from autoglm.audit.record import COLUMNS, SEED
from autoglm.audit.verify import public_key_of, raw_columns, snapshot
from autoglm.errors import AuditError, ConfigError
from autoglm.privacy.vault import PERSONAL_COLUMNS, PersonalVault
from autoglm.store.db import Database
from autoglm.store.models import AuditRecord
from autoglm.timefmt import stamp

FORMAT = "autoglm-audit-export-v1"
FORMATS = ("jsonl", "cef")
T = AuditRecord.__table__


def trailer_mac(key: bytes, meta: dict[str, Any]) -> str:
    msg = FORMAT.encode() + b"\n" + orjson.dumps(meta, option=orjson.OPT_SORT_KEYS)
    return hmac.digest(key, msg, "sha256").hex()


@dataclass
class Summary:
    records: int = 0
    first_seq: int | None = None
    last_seq: int | None = None


def _text_ts(raw: Any) -> Any:
    """A stored time as the one format; a value no writer stores is kept as it is (its
    record then fails ``verify --file``, as it fails ``verify``)."""
    if isinstance(raw, datetime):
        return stamp(raw)
    try:
        return stamp(datetime.fromisoformat(raw))
    except (TypeError, ValueError):
        return raw


def _detail(raw: Any) -> Any:
    if raw is None or not isinstance(raw, str | bytes):
        return raw if raw is not None else {}
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return raw


def _prev_of(conn: Connection, first: int, anchor: cps.Checkpoint | None) -> str:
    """The hash before record ``first``: the seed, the stored record, or a prune's anchor."""
    if first == 1:
        return SEED.hex()
    if anchor is not None and anchor.seq == first - 1:
        return anchor.hash
    stored = conn.execute(select(T.c.hash).where(T.c.seq == first - 1)).scalar()
    if stored is None:
        raise AuditError(f"the record before seq {first} is missing and no prune anchor names "
                         "its hash, so an export from there could not be verified: see "
                         "`autoglm audit verify`")
    return str(stored)


def records(conn: Connection, first: int, last: int, prev: str,
            chunk: int) -> Iterator[dict[str, Any]]:
    """Records ``first``..``last`` in the export's shape, each with ``prev``."""
    rows = conn.execution_options(stream_results=True, yield_per=chunk).execute(
        select(*raw_columns()).where(T.c.seq >= first, T.c.seq <= last).order_by(T.c.seq))
    try:
        for r in rows:
            doc = dict(r._mapping)
            doc["ts"] = _text_ts(doc["ts"])
            doc["detail"] = _detail(doc["detail"])
            doc["prev"] = prev
            prev = doc["hash"]
            yield doc
    finally:
        rows.close()


def export(db: Database, paths: AuditPaths, out: IO[bytes], *, since: datetime | None = None,
           until: datetime | None = None, fmt: str = "jsonl", chunk: int = 2000,
           open_personal: bool = False) -> Summary:
    """Write the records of [since, until) to ``out``; see the module docstring."""
    if fmt not in FORMATS:
        raise ConfigError(f"format must be jsonl or cef, not {fmt!r}")
    key = load_hmac_key(paths.hmac_key, create=False) if fmt == "jsonl" else b""
    vault = (PersonalVault(db, load_personal_key(paths.personal_key, create=False))
             if open_personal else None)
    public = public_key_of(paths)
    anchor = cps.latest_anchor(paths.checkpoints, public) if public is not None else None
    summary = Summary()
    try:
        with db.engine.connect() as conn:
            conn = snapshot(conn)
            span = _span(conn, since, until, anchor.seq if anchor else 0)
            prev = last_hash = None
            if span is not None:
                first, last = span
                prev = _prev_of(conn, first, anchor)
                for doc in records(conn, first, last, prev, chunk):
                    line = {c: doc[c] for c in (*COLUMNS, "prev")}
                    if vault is not None and doc["personal"] is not None:
                        vault.open_rows([doc], conn)
                        line["opened"] = {c: doc[c] for c in (*PERSONAL_COLUMNS, "text",
                                                               "erased")}
                    if fmt == "jsonl":
                        out.write(orjson.dumps(line) + b"\n")
                    else:
                        out.write(cef.line(doc).encode() + b"\n")
                    if summary.first_seq is None:
                        summary.first_seq = doc["seq"]
                    summary.records += 1
                    summary.last_seq, last_hash = doc["seq"], doc["hash"]
    except (OperationalError, ProgrammingError) as exc:
        reason = " ".join(str(exc.orig).split())
        raise ConfigError(f"cannot read the audit log: {reason}") from None
    if fmt == "jsonl":
        meta = {"format": FORMAT, "first_seq": summary.first_seq, "last_seq": summary.last_seq,
                "records": summary.records, "prev": prev if summary.records else None,
                "last_hash": last_hash, "since": stamp(since) if since else None,
                "until": stamp(until) if until else None, "exported_at": stamp()}
        out.write(orjson.dumps({"export": meta, "mac": trailer_mac(key, meta)}) + b"\n")
    out.flush()
    return summary


def _span(conn: Connection, since: datetime | None, until: datetime | None,
          after: int) -> tuple[int, int] | None:
    """(first, last) seq to export: the records of the window, after the prune anchor."""
    bounds = window(conn, Filters(since=since, until=until))
    if bounds is None:
        return None
    low, high = bounds
    q = select(T.c.seq).where(T.c.seq > after)
    first = low if low is not None and low > after else conn.execute(
        q.order_by(T.c.seq).limit(1)).scalar()
    last = high if high is not None else conn.execute(
        q.order_by(T.c.seq.desc()).limit(1)).scalar()
    if first is None or last is None or last < first:
        return None
    return int(first), int(last)
