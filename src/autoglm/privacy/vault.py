"""Personal data in audit records, sealed per data subject; erasure destroys the subject's key.

A record's personal fields (client address, processing purpose, and the prompt and answer
text a tenant's policy asks to keep) are never stored in clear. ``seal`` moves them out
of their columns into one JSON object, encrypted with AES-256-GCM under the key of the
record's *data subject* and stored in the record's ``personal`` column as
``pd1.<kid>.<base64url(nonce | ciphertext)>`` (the key id is the AEAD's associated data).
The subject is the record's principal; records without one (failed authentications) belong
to that day's anonymous subject, ``anonymous:2026-11-25``.

The chain's HMAC covers the sealed text, not the clear values: destroying a subject's key
later leaves every record exactly as sealed, so ``autoglm audit verify`` still passes,
while nobody can read that subject's personal fields any more (GDPR Art. 17, PIPL
Art. 47): ``autoglm privacy erase``.

A subject key is HKDF-SHA256 of the *master key* (32 random bytes in the 0600 file
``data_dir/secrets/personal_data_key``, never in the database) and the subject's random
*salt* (a row of ``subject_keys``). Neither the database nor the key file alone reads
personal data; erasure sets the salt to NULL, after which both together cannot either.
Database backups taken before an erasure still hold the salt until they expire.

Keys are cached per process for ``ttl_s`` (2 s): a record that another running process
seals within that time after an erasure is sealed under the destroyed key, and is as
unreadable as the rest (erasure errs towards forgetting). A subject erased and seen again
gets a fresh key: what it does afterwards is readable, what it did before is not.
"""

from __future__ import annotations

import base64
import os
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import orjson
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from sqlalchemy import Connection, insert, select, update
from sqlalchemy.orm import Session

from autoglm.store.db import Database
from autoglm.store.models import SubjectKey

PREFIX = "pd1"
PERSONAL_COLUMNS = ("client_addr", "purpose")  # moved out of their columns into ``personal``
TEXT_MAX_CHARS = 16_384  # per stored text (prompt, answer)
ANONYMOUS = "anonymous:"
_INFO = b"autoglm personal data v1|"
_T = SubjectKey.__table__

Executor = Connection | Session


def subject_of(actor: str | None, ts: datetime) -> str:
    """The data subject of a record: its principal, else that day's anonymous subject."""
    return actor if actor else f"{ANONYMOUS}{ts.astimezone(UTC).date().isoformat()}"


class PersonalVault:
    """Seals personal fields into ``personal`` and opens them while the key exists."""

    def __init__(self, db: Database, master_key: bytes, *, ttl_s: float = 2.0,
                 cache_max: int = 4096) -> None:
        if len(master_key) < 32:
            raise ValueError("the personal data master key must be at least 32 bytes")
        self._db = db
        self._master = master_key
        self._ttl_s = ttl_s
        self._cache_max = cache_max
        self._lock = threading.Lock()
        # subject -> (kid, AESGCM, fetched_at) for sealing; kid -> AESGCM | None for opening
        self._live: OrderedDict[str, tuple[str, AESGCM, float]] = OrderedDict()
        self._by_kid: OrderedDict[str, tuple[AESGCM | None, float]] = OrderedDict()
        self.erasures = 0  # erase calls so far: a sealing process forgets its keys on a change

    # --- sealing ----------------------------------------------------------------------------
    def seal(self, rows: Sequence[dict[str, Any]],
             texts: Sequence[Mapping[str, str] | None] | None = None,
             executor: Executor | None = None) -> None:
        """Move each row's personal fields (and its ``texts``) into ``row["personal"]``,
        sealed under its subject's key; rows without any get ``personal = None``.
        ``executor``: the transaction to create missing keys in (an admin act's session,
        whose SQLite write lock another connection would wait for); else one of our own."""
        payloads: list[dict[str, Any] | None] = []
        for i, row in enumerate(rows):
            payload = {c: row[c] for c in PERSONAL_COLUMNS if row.get(c) is not None}
            text = texts[i] if texts is not None else None
            if text:
                payload["text"] = {k: v[:TEXT_MAX_CHARS] for k, v in text.items() if v}
            for c in PERSONAL_COLUMNS:
                row[c] = None
            payloads.append(payload or None)
        subjects = {subject_of(row.get("actor"), row["ts"])
                    for row, p in zip(rows, payloads, strict=True) if p is not None}
        if not subjects:
            for row in rows:
                row["personal"] = None
            return
        keys = self._keys_for(subjects, executor)
        # every nonce of the batch from one read of the system's generator: each
        # ``os.urandom`` is a system call that lets go of the GIL, and in a busy gateway
        # getting it back costs more than the call
        nonces = os.urandom(12 * len(rows))
        for i, (row, payload) in enumerate(zip(rows, payloads, strict=True)):
            if payload is None:
                row["personal"] = None
                continue
            kid, aead = keys[subject_of(row.get("actor"), row["ts"])]
            nonce = nonces[12 * i:12 * i + 12]
            sealed = aead.encrypt(nonce, orjson.dumps(payload), kid.encode())
            row["personal"] = (f"{PREFIX}.{kid}."
                               f"{base64.urlsafe_b64encode(nonce + sealed).decode().rstrip('=')}")

    def _keys_for(self, subjects: set[str],
                  executor: Executor | None) -> dict[str, tuple[str, AESGCM]]:
        now = time.monotonic()
        out: dict[str, tuple[str, AESGCM]] = {}
        with self._lock:
            for s in subjects:
                hit = self._live.get(s)
                if hit is not None and now - hit[2] < self._ttl_s:
                    out[s] = (hit[0], hit[1])
        missing = sorted(subjects - out.keys())
        if missing:
            if executor is not None:
                found, made = self._fetch_or_create(executor, missing)
            else:
                with self._db.engine.begin() as conn:
                    found, made = self._fetch_or_create(conn, missing)
                made = set()  # committed: as good as found
            with self._lock:
                for s, (kid, aead) in found.items():
                    out[s] = (kid, aead)
                    if s in made:  # the caller's transaction may still roll it back
                        continue
                    self._live[s] = (kid, aead, now)
                    self._live.move_to_end(s)
                while len(self._live) > self._cache_max:
                    self._live.popitem(last=False)
        return out

    def _fetch_or_create(self, ex: Executor, subjects: list[str]
                         ) -> tuple[dict[str, tuple[str, AESGCM]], set[str]]:
        found: dict[str, tuple[str, AESGCM]] = {}
        q = (select(_T.c.kid, _T.c.subject, _T.c.salt)
             .where(_T.c.subject.in_(subjects), _T.c.salt.is_not(None))
             .order_by(_T.c.created_at))
        for kid, subject, salt in ex.execute(q):
            if subject not in found:  # the oldest live key, if two processes made one each
                found[subject] = (kid, self._derive(kid, salt))
        new = [{"kid": "sk_" + secrets.token_hex(12), "subject": s,
                "salt": secrets.token_hex(16), "created_at": datetime.now(UTC)}
               for s in subjects if s not in found]
        if new:
            ex.execute(insert(_T), new)
            for row in new:
                found[row["subject"]] = (row["kid"], self._derive(row["kid"], row["salt"]))
        return found, {row["subject"] for row in new}

    def _derive(self, kid: str, salt_hex: str) -> AESGCM:
        hkdf = HKDF(algorithm=SHA256(), length=32, salt=bytes.fromhex(salt_hex),
                    info=_INFO + kid.encode())
        return AESGCM(hkdf.derive(self._master))

    # --- opening ----------------------------------------------------------------------------
    def open_rows(self, rows: Sequence[dict[str, Any]], conn: Connection | None = None) -> None:
        """Put each row's personal fields back where they were read from (``client_addr``,
        ``purpose``, ``text``); a row whose subject was erased gets ``erased: True`` and
        None for them. Rows sealed before personal data was encrypted stay as they are."""
        kids = {kid for row in rows if (kid := _kid(row.get("personal"))) is not None}
        keys = self._keys_by_kid(kids, conn)
        for row in rows:
            token = row.get("personal")
            kid = _kid(token)
            if kid is None:
                continue
            aead = keys.get(kid)
            payload = _decrypt(aead, kid, token) if aead is not None else None
            for c in PERSONAL_COLUMNS:
                row[c] = payload.get(c) if payload is not None else None
            row["text"] = payload.get("text") if payload is not None else None
            row["erased"] = aead is None  # else a token that does not open was damaged

    def _keys_by_kid(self, kids: set[str], conn: Connection | None) -> dict[str, AESGCM | None]:
        now = time.monotonic()
        out: dict[str, AESGCM | None] = {}
        with self._lock:
            for kid in kids:
                hit = self._by_kid.get(kid)
                if hit is not None and now - hit[1] < self._ttl_s:
                    out[kid] = hit[0]
        missing = sorted(kids - out.keys())
        if missing:
            q = select(_T.c.kid, _T.c.salt).where(_T.c.kid.in_(missing))
            if conn is not None:
                salts = {k: v for k, v in conn.execute(q)}
            else:
                with self._db.engine.connect() as own:
                    salts = {k: v for k, v in own.execute(q)}
            with self._lock:
                for kid in missing:
                    salt = salts.get(kid)
                    aead = self._derive(kid, salt) if salt else None
                    self._by_kid[kid] = (aead, now)
                    out[kid] = aead
                while len(self._by_kid) > self._cache_max:
                    self._by_kid.popitem(last=False)
        return out

    # --- erasure ----------------------------------------------------------------------------
    def erase(self, subjects: Sequence[str], executor: Executor) -> int:
        """Destroy every key of ``subjects`` in ``executor``'s transaction (the caller
        commits); how many keys were destroyed."""
        if not subjects:
            return 0
        done = executor.execute(
            update(_T).where(_T.c.subject.in_(list(subjects)), _T.c.salt.is_not(None))
            .values(salt=None, erased_at=datetime.now(UTC)))
        with self._lock:
            for s in subjects:
                self._live.pop(s, None)
            self._by_kid.clear()
            self.erasures += 1
        return int(done.rowcount or 0)

    def forget(self) -> None:
        """Drop every cached key (another process erased some)."""
        with self._lock:
            self._live.clear()
            self._by_kid.clear()

    @staticmethod
    def anonymous_before(executor: Executor, day: datetime) -> list[str]:
        """The anonymous subjects of days before ``day`` that still have a key."""
        q = (select(_T.c.subject).distinct()
             .where(_T.c.subject.like(f"{ANONYMOUS}%"), _T.c.salt.is_not(None)))
        cut = f"{ANONYMOUS}{day.astimezone(UTC).date().isoformat()}"
        return sorted(s for (s,) in executor.execute(q) if s < cut)


def _kid(token: Any) -> str | None:
    if not isinstance(token, str) or not token.startswith(PREFIX + "."):
        return None
    parts = token.split(".", 2)
    return parts[1] if len(parts) == 3 else None


def _decrypt(aead: AESGCM, kid: str, token: str) -> dict[str, Any] | None:
    data = token.split(".", 2)[2]
    try:
        raw = base64.urlsafe_b64decode(data + "=" * (-len(data) % 4))
        out = orjson.loads(aead.decrypt(raw[:12], raw[12:], kid.encode()))
    except Exception:  # noqa: BLE001 - a damaged token reads as unreadable, never a crash
        return None
    return out if isinstance(out, dict) else None
