"""The web console's sessions, in the control-plane database (so every gateway worker and
every replica sharing the database knows them).

A session is opened with an API key (``POST /console/login``) and speaks for that key's
identity, looked up again at every request: the session ends at once when the key is
revoked, expires, or its rotation's grace ends, or when its principal is disabled. The
cookie holds a random 256-bit token; only its SHA-256 is stored. A session also ends
``idle`` after its last use and ``lifetime`` after sign-in, whichever comes first.

The CSRF token of a session is derived from its token (HMAC), so it needs no storage and
cannot be computed without the cookie, which pages never see (HttpOnly).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import delete, select, update

from autoglm.security.auth import ANONYMOUS_ADMIN
from autoglm.security.keystore import KeyService
from autoglm.store.db import Database
from autoglm.store.models import ConsoleSession, utcnow

TOKEN_BYTES = 32
TOUCH_EVERY = timedelta(seconds=60)  # last_seen is written at most this often per session
_CSRF_LABEL = b"autoglm-console-csrf"


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def csrf_token(token: str) -> str:
    """The session's CSRF token: bound to the session, useless without it."""
    return hmac.new(token.encode(), _CSRF_LABEL, hashlib.sha256).hexdigest()


def same_token(expected: str, given: str | None) -> bool:
    return given is not None and hmac.compare_digest(expected.encode(), given.encode())


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


@dataclass(frozen=True)
class Session:
    """A live session and whom it speaks for."""

    token: str
    identity: Any
    key_id: str
    expires_at: datetime  # the earlier of the idle and the absolute end

    @property
    def csrf(self) -> str:
        return csrf_token(self.token)


class SessionStore:
    def __init__(self, db: Database, keys: KeyService | None, *, idle: timedelta,
                 lifetime: timedelta, clock: Callable[[], datetime] = utcnow) -> None:
        self.db = db
        self.keys = keys  # None: authentication is disabled (every session is the admin)
        self.idle = idle
        self.lifetime = lifetime
        self.clock = clock

    def open(self, identity: Any) -> Session:
        """A new session for ``identity`` (blocking). Expired sessions are swept here."""
        token = secrets.token_urlsafe(TOKEN_BYTES)
        now = self.clock()
        row = ConsoleSession(token_hash=_hash(token), key_id=identity.key_id,
                             principal_id=identity.principal_id, created_at=now,
                             last_seen=now, expires_at=now + self.lifetime)
        with self.db.session() as s, s.begin():
            s.execute(delete(ConsoleSession).where(ConsoleSession.expires_at <= now))
            s.add(row)
        return Session(token, identity, identity.key_id, min(now + self.idle, row.expires_at))

    def resolve(self, token: str | None) -> Session | None:
        """The live session of a cookie's token, or None (blocking). A session whose key no
        longer works, or that is past its idle or absolute end, is deleted."""
        if not token or len(token) > 128:
            return None
        digest = _hash(token)
        now = self.clock()
        with self.db.session() as s:
            row = s.get(ConsoleSession, digest)
        if row is None:
            return None
        last, end = _aware(row.last_seen), _aware(row.expires_at)
        identity = self._identity(row.key_id) if min(last + self.idle, end) > now else None
        if identity is None:
            with self.db.session() as s, s.begin():
                s.execute(delete(ConsoleSession).where(ConsoleSession.token_hash == digest))
            return None
        if now - last >= TOUCH_EVERY:
            with self.db.session() as s, s.begin():
                s.execute(update(ConsoleSession).where(ConsoleSession.token_hash == digest)
                          .values(last_seen=now))
            last = now
        return Session(token, identity, row.key_id, min(last + self.idle, end))

    def _identity(self, key_id: str) -> Any:
        if self.keys is None:
            return ANONYMOUS_ADMIN
        # the key itself, not its rotation's successor: a session opened with a rotated
        # key ends with that key's grace period
        return self.keys.identity_of(key_id, max_hops=0)

    def close(self, token: str | None) -> bool:
        """End one session (sign-out); whether there was one (blocking)."""
        if not token:
            return False
        with self.db.session() as s, s.begin():
            gone = s.execute(delete(ConsoleSession)
                             .where(ConsoleSession.token_hash == _hash(token)))
        return bool(gone.rowcount)

    def close_key(self, key_id: str) -> int:
        """End every session opened with ``key_id`` (blocking); how many."""
        with self.db.session() as s, s.begin():
            gone = s.execute(delete(ConsoleSession).where(ConsoleSession.key_id == key_id))
        return int(gone.rowcount or 0)

    def count(self) -> int:
        with self.db.session() as s:
            return len(s.scalars(select(ConsoleSession.token_hash)).all())
