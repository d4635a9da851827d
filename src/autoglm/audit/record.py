"""One audit record, its canonical form, and the chain over it.

The canonical form of record ``n`` is ``seq`` as 8 bytes big-endian followed by the
record's *body*: its fields other than ``seq`` and ``hash`` as JSON with sorted keys and
no whitespace (orjson), the time as ``timefmt.stamp`` text (UTC, milliseconds). The chain
is ``hash_n = HMAC-SHA256(key, hash_{n-1} || canonical_n)`` with ``hash_0 = SEED``. The
body does not hold the seq, so the writer builds it before it takes the chain's lock and
only the HMAC is computed under the lock.

Before a record is sealed its fields are *normalised* into exactly the values the
database hands back (strings cut to their column's length with NUL replaced, numbers as
int or float, the time cut to milliseconds, ``detail`` as plain JSON): the body computed
at seal time and the body computed by ``verify`` from the stored row are then the same
bytes.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from operator import attrgetter
from typing import Any

import orjson

from autoglm.errors import AuditError
from autoglm.timefmt import stamp

SEED = hashlib.sha256(b"autoglm audit chain v1").digest()  # hash_0
DECISIONS = frozenset({"allow", "deny", "error"})

# text fields and their column lengths (store/models.py AuditRecord)
TEXT_FIELDS: tuple[tuple[str, int], ...] = (
    ("actor", 64), ("key_id", 32), ("tenant_id", 32), ("project_id", 32), ("action", 64),
    ("resource", 256), ("decision", 8), ("client_addr", 64), ("request_id", 64),
    ("client_request_id", 160), ("model", 128), ("purpose", 256), ("consent_id", 128),
)
INT_FIELDS = ("status", "prompt_tokens", "completion_tokens", "count")
INT_MAX = 2**31 - 1  # an INTEGER column
DETAIL_MAX_BYTES = 4096
# every column of audit_log but seq and hash, in the order rows are written; ``personal``
# (the sealed personal fields, ``privacy.vault``) is left out of the body when NULL, so
# records sealed before it existed keep their canonical form
BODY_FIELDS = ("ts", *(n for n, _ in TEXT_FIELDS), *INT_FIELDS, "latency_ms", "detail",
               "personal")
COLUMNS = ("seq", *BODY_FIELDS, "hash")
_BODY_KEYS = frozenset(BODY_FIELDS)
_TEXTS = attrgetter(*(n for n, _ in TEXT_FIELDS))
_INTS = attrgetter(*INT_FIELDS)
_PLAIN = frozenset({str, int, bool, type(None)})  # detail values JSON hands back unchanged


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass(slots=True)
class Record:
    """What happened, who did it, to what, and how it ended. ``seq`` and ``hash`` are set
    when the record is sealed into the chain; everything else by the caller.

    ``actor`` is a principal id and ``key_id`` the id of the API key used (never the key
    itself). ``decision`` is allow, deny or error; ``status`` the HTTP status answered.
    ``request_id`` is the server's id, ``client_request_id`` the one the client sent.
    ``count`` is how many identical events the record stands for (see ``Folder``).
    ``detail`` is a small JSON object (at most 4 KiB). ``text`` (prompt and answer, only
    when a tenant's policy keeps them, after the guard) is never stored in clear: like
    ``client_addr`` and ``purpose`` it is sealed under the data subject's key
    (``privacy.vault``) into the ``personal`` column.
    """

    action: str
    decision: str = "allow"
    status: int | None = None
    actor: str | None = None
    key_id: str | None = None
    tenant_id: str | None = None
    project_id: str | None = None
    resource: str = ""
    client_addr: str | None = None
    request_id: str | None = None
    client_request_id: str | None = None
    model: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    latency_ms: float | None = None
    purpose: str | None = None
    consent_id: str | None = None
    count: int = 1
    detail: Mapping[str, Any] | None = None
    text: Mapping[str, str] | None = None  # sealed with the personal fields, never in clear
    ts: datetime | None = None  # server time; None: now
    seq: int | None = None
    hash: str | None = None

    def __post_init__(self) -> None:
        if self.decision not in DECISIONS:
            raise AuditError(f"audit record decision must be allow, deny or error, "
                             f"not {self.decision!r}")
        if not self.action:
            raise AuditError("an audit record needs an action")
        if self.ts is None:
            self.ts = _now()


def _text(value: Any, limit: int) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        value = str(value)
    if len(value) > limit:
        value = value[:limit]
    if "\x00" in value:  # PostgreSQL text refuses NUL; keep the rest
        value = value.replace("\x00", "\ufffd")
    if not value.isascii():  # lone surrogates cannot be stored as UTF-8
        value = value.encode("utf-8", "replace").decode("utf-8")
    return value


def _int(name: str, value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise AuditError(f"audit record field {name} must be a whole number, not {value!r}")
    if isinstance(value, float) and not value.is_integer():
        raise AuditError(f"audit record field {name} must be a whole number, not {value!r}")
    return max(-INT_MAX, min(INT_MAX, int(value)))


def _latency(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise AuditError(f"audit record latency_ms must be a number, not {value!r}")
    value = float(value)
    if not math.isfinite(value):
        return None
    return round(value, 3)


def _detail(value: Mapping[str, Any] | None) -> dict[str, Any]:
    if not value:
        return {}
    try:
        raw = orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
    except TypeError as exc:
        raise AuditError(f"audit record detail must be plain JSON data: {exc}") from None
    if len(raw) > DETAIL_MAX_BYTES:
        raise AuditError(f"audit record detail is {len(raw)} bytes of JSON; at most "
                         f"{DETAIL_MAX_BYTES} are kept (record less)")
    if type(value) is dict and all(type(k) is str and type(v) in _PLAIN
                                   for k, v in value.items()):
        return dict(value)  # flat text, whole numbers (in 64 bits: dumps said so), flags
    out = orjson.loads(raw)  # what the database hands back: lists, no NaN, str keys
    if not isinstance(out, dict):
        raise AuditError("audit record detail must be a JSON object")
    return out


def _utc_ms(value: datetime) -> datetime:
    if value.tzinfo is UTC:
        return value.replace(microsecond=value.microsecond // 1000 * 1000)
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    elif value.utcoffset():
        value = value.astimezone(UTC)
    return value.replace(microsecond=value.microsecond // 1000 * 1000, tzinfo=UTC)


def normalise(rec: Record) -> dict[str, Any]:
    """The record's body fields as the database stores and returns them (raises
    ``AuditError`` for a field that cannot be stored)."""
    row: dict[str, Any] = {"ts": _utc_ms(rec.ts or _now())}
    for (name, limit), value in zip(TEXT_FIELDS, _TEXTS(rec), strict=True):
        # most values are short ASCII text already, kept as they are
        if value is not None and (type(value) is not str or len(value) > limit
                                  or not value.isascii() or "\x00" in value):
            value = _text(value, limit)
        row[name] = value
    if row["resource"] is None:
        row["resource"] = ""
    for name, value in zip(INT_FIELDS, _INTS(rec), strict=True):
        if value is not None and not (type(value) is int and -INT_MAX <= value <= INT_MAX):
            value = _int(name, value)
        row[name] = value
    if row["count"] is None or row["count"] < 1:
        raise AuditError(f"audit record count must be at least 1, not {rec.count!r}")
    row["latency_ms"] = _latency(rec.latency_ms)
    row["detail"] = _detail(rec.detail)
    row["personal"] = None  # set by the vault's ``seal``
    return row


def body(row: Mapping[str, Any]) -> bytes:
    """The canonical body of a normalised row, or of a row read back from the database
    (where the time and ``detail`` may come as their stored text)."""
    if row.keys() == _BODY_KEYS:  # a normalised row (the writer's): copied whole
        doc = dict(row)
    else:
        doc = {name: row.get(name) for name in BODY_FIELDS}
    if doc["personal"] is None:
        del doc["personal"]
    ts = doc["ts"]
    if type(ts) is datetime and ts.tzinfo is UTC:
        doc["ts"] = ts.isoformat(timespec="milliseconds")  # ``stamp`` of a UTC time
    else:
        doc["ts"] = stamp(datetime.fromisoformat(ts) if isinstance(ts, str) else ts)
    detail = doc["detail"]
    if isinstance(detail, str):  # some drivers hand JSON back as text
        doc["detail"] = orjson.loads(detail)
    elif detail is None:
        doc["detail"] = {}
    return orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)


def seal(key: bytes, prev: bytes, seq: int, body_bytes: bytes) -> bytes:
    """``hash_seq``: one HMAC-SHA256 over the previous hash and the canonical form."""
    mac = _keyed(key).copy()  # the key's pads hashed once, not per record
    mac.update(prev)
    mac.update(seq.to_bytes(8, "big"))
    mac.update(body_bytes)
    return mac.digest()


@functools.lru_cache(maxsize=4)
def _keyed(key: bytes) -> hmac.HMAC:
    return hmac.new(key, digestmod=hashlib.sha256)


def canonical(seq: int, body_bytes: bytes) -> bytes:
    return seq.to_bytes(8, "big") + body_bytes
