"""API keys in the control-plane database: create, look up (cached), revoke, rotate.

Only the keyed hash (HMAC-SHA256 with the install's pepper) is stored; the secret is
returned once, at creation. Lookups are cached by hash for ``cache_ttl_s`` (2 s), so a
revocation made on another replica is seen within that time, and at once on this one.
Expiry is checked at every lookup against the injected clock, never cached.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from autoglm.errors import InvalidRequestError, NotFoundError
from autoglm.security import keys
from autoglm.store.db import Database
from autoglm.store.models import ApiKey, Principal, RoleBinding, utcnow

Clock = Callable[[], datetime]
DIGEST_CACHE = 4096
IDENTITY_CACHE = 50_000
InTransaction = Callable[[Session, ApiKey], None]  # e.g. add the audit event of the change


@dataclass(frozen=True)
class Binding:
    role: str
    tenant_id: str | None
    project_id: str | None


@dataclass(frozen=True)
class Identity:
    """Who a valid key speaks for, and how the key narrows that principal's rights."""

    key_id: str
    principal_id: str
    principal_name: str
    tenant_id: str | None
    bindings: tuple[Binding, ...]
    projects: tuple[str, ...] | None
    models: tuple[str, ...] | None
    actions: tuple[str, ...] | None
    expires_at: datetime | None

    @property
    def id(self) -> str:  # what logs and fairness keys use
        return self.principal_id

    @property
    def roles(self) -> frozenset[str]:
        return frozenset(b.role for b in self.bindings)


class KeyService:
    def __init__(self, db: Database, pepper: bytes, clock: Clock = utcnow,
                 cache_ttl_s: float = 2.0) -> None:
        self.db = db
        self.pepper = pepper
        self.clock = clock
        self.cache_ttl_s = cache_ttl_s
        self._cache: dict[str, tuple[Identity | None, float]] = {}
        self._pinned: dict[str, Identity] = {}  # in-process tokens: never stored anywhere
        # One database lookup per key at a time, however many requests want it at once;
        # a revocation or rotation bumps the generation, so a lookup that was already in
        # flight never puts its (older) answer back into the cache.
        self._inflight: dict[str, asyncio.Future[Identity | None]] = {}
        self._generation = 0
        # Presented secret -> its keyed hash, for the keys in use right now: a dict lookup
        # instead of an HMAC per request. Bounded; the oldest entry goes first.
        self._digests: dict[str, str] = {}

    def _digest(self, secret: str) -> str:
        digest = self._digests.get(secret)
        if digest is None:
            digest = keys.hash_key(self.pepper, secret)
            if len(self._digests) >= DIGEST_CACHE:
                del self._digests[next(iter(self._digests))]
            self._digests[secret] = digest
        return digest

    def pin(self, secret: str, identity: Identity) -> None:
        """Accept ``secret`` for ``identity`` in this process only (the local CLI)."""
        self._pinned[keys.hash_key(self.pepper, secret)] = identity

    # --- lookup (hot path) ------------------------------------------------------------------
    def cached(self, secret: str) -> tuple[bool, Identity | None]:
        """(hit, identity) from memory only; a hit with None means 'known bad'."""
        digest = self._digest(secret)
        pinned = self._pinned.get(digest)
        if pinned is not None:
            return True, pinned
        entry = self._cache.get(digest)
        if entry is None or time.monotonic() - entry[1] > self.cache_ttl_s:
            return False, None
        return True, self._valid(entry[0])

    async def resolve(self, secret: str) -> Identity | None:
        """The key's identity: from the cache, else from the database off the event loop,
        with concurrent lookups of the same key sharing one query."""
        hit, identity = self.cached(secret)
        if hit:
            return identity
        digest = self._digest(secret)
        fut = self._inflight.get(digest)
        if fut is not None:
            return self._valid(await asyncio.shield(fut))
        fut = asyncio.get_running_loop().create_future()
        self._inflight[digest] = fut
        generation = self._generation
        try:
            found = await asyncio.to_thread(self._load, digest)
        except BaseException as exc:
            fut.set_exception(exc)
            fut.exception()  # retrieved: waiters get it, nobody else needs to
            raise
        finally:
            del self._inflight[digest]
        if generation == self._generation:
            self._remember(digest, found)
        fut.set_result(found)
        return self._valid(found)

    def lookup(self, secret: str) -> Identity | None:
        """From the database (blocking; call off the event loop), then cached."""
        digest = keys.hash_key(self.pepper, secret)
        generation = self._generation
        identity = self._load(digest)
        if generation == self._generation:
            self._remember(digest, identity)
        return self._valid(identity)

    def _remember(self, digest: str, identity: Identity | None) -> None:
        """Bounded: a flood of unknown keys pushes out the oldest entries one by one, never
        the whole cache (which would send every valid key back to the database)."""
        cache = self._cache
        cache.pop(digest, None)  # re-inserted at the young end
        while len(cache) >= IDENTITY_CACHE:
            del cache[next(iter(cache))]
        cache[digest] = (identity, time.monotonic())

    def _valid(self, identity: Identity | None) -> Identity | None:
        if identity is None:
            return None
        if identity.expires_at is not None and self.clock() >= identity.expires_at:
            return None
        return identity

    def _load(self, digest: str) -> Identity | None:
        with self.db.session() as s:
            return _identity(s, ApiKey.key_hash == digest)

    def identity_of(self, key_id: str, max_hops: int = 16) -> Identity | None:
        """The identity a key speaks for now, by its id (blocking; call off the event loop):
        the work a key started (a batch) runs under it. A rotated key is followed to its
        successor (the same rights under a new secret); a revoked or expired key, or a
        disabled principal, speaks for nobody."""
        with self.db.session() as s:
            for _ in range(max_hops):
                successor = s.scalar(select(ApiKey.rotated_to).where(ApiKey.id == key_id))
                if successor is None:
                    break
                key_id = successor
            return self._valid(_identity(s, ApiKey.id == key_id))

    def forget(self, key_hash: str | None = None) -> None:
        self._generation += 1
        if key_hash is None:
            self._cache.clear()
        else:
            self._cache.pop(key_hash, None)

    # --- management -------------------------------------------------------------------------
    def create(self, principal_id: str, *, name: str = "", projects: list[str] | None = None,
               models: list[str] | None = None, actions: list[str] | None = None,
               expires_at: datetime | None = None, secret: str | None = None,
               also: InTransaction | None = None) -> tuple[str, ApiKey]:
        """A new key for the principal; returns (secret, record). The secret is not kept."""
        secret = secret or keys.generate_key()
        with self.db.session() as s, s.begin():
            if s.get(Principal, principal_id) is None:
                raise NotFoundError(f"principal '{principal_id}' not found")
            record = ApiKey(principal_id=principal_id, key_hash=keys.hash_key(self.pepper, secret),
                            display=keys.display(secret), name=name, projects=projects,
                            models=models, actions=actions, expires_at=expires_at)
            s.add(record)
            s.flush()
            if also is not None:
                also(s, record)
        return secret, record

    def revoke(self, key_id: str, also: InTransaction | None = None) -> ApiKey:
        with self.db.session() as s, s.begin():
            record = s.get(ApiKey, key_id)
            if record is None:
                raise NotFoundError(f"key '{key_id}' not found")
            if record.revoked_at is None:
                record.revoked_at = self.clock()
            if also is not None:
                also(s, record)
        self.forget(record.key_hash)
        return record

    def rotate(self, key_id: str, grace: timedelta = timedelta(hours=24),
               also: InTransaction | None = None) -> tuple[str, ApiKey]:
        """A new key with the same rights; the old one keeps working for ``grace`` (0: ends now)."""
        now = self.clock()
        with self.db.session() as s, s.begin():
            # locked: two rotations at once (two replicas) cannot both make a successor
            old = s.get(ApiKey, key_id, with_for_update=True)
            if old is None or old.revoked_at is not None:
                raise NotFoundError(f"key '{key_id}' not found")
            if old.rotated_to is not None:  # one successor per key: the chain stays whole
                raise InvalidRequestError(
                    f"key '{key_id}' was already rotated; rotate its successor "
                    f"'{old.rotated_to}' instead", param="key")
            old_expiry = _aware(old.expires_at)
            if old_expiry is not None and old_expiry <= now:
                raise InvalidRequestError(
                    f"key '{key_id}' has expired; create a new key instead", param="key")
            secret = keys.generate_key()
            new = ApiKey(principal_id=old.principal_id, key_hash=keys.hash_key(self.pepper, secret),
                         display=keys.display(secret), name=old.name, projects=old.projects,
                         models=old.models, actions=old.actions, expires_at=old.expires_at)
            s.add(new)
            s.flush()
            end = now + grace
            old.expires_at = end if old_expiry is None or end < old_expiry else old_expiry
            if grace <= timedelta(0):
                old.revoked_at = now
            old.rotated_to = new.id
            if also is not None:
                also(s, old)
        self.forget(old.key_hash)
        return secret, new


def _identity(s: Session, which: Any) -> Identity | None:
    """The identity of the key ``which`` selects; None for a revoked key or a disabled
    principal (expiry is checked by the caller, against its clock)."""
    row = s.execute(
        select(ApiKey, Principal).join(Principal, Principal.id == ApiKey.principal_id)
        .where(which)
    ).first()
    if row is None:
        return None
    key, principal = row
    if key.revoked_at is not None or principal.disabled:
        return None
    bindings = s.scalars(
        select(RoleBinding).where(RoleBinding.principal_id == principal.id)).all()
    return Identity(
        key_id=key.id, principal_id=principal.id, principal_name=principal.name,
        tenant_id=principal.tenant_id,
        bindings=tuple(Binding(b.role, b.tenant_id, b.project_id) for b in bindings),
        projects=tuple(key.projects) if key.projects is not None else None,
        models=tuple(key.models) if key.models is not None else None,
        actions=tuple(key.actions) if key.actions is not None else None,
        expires_at=_aware(key.expires_at),
    )


def _aware(value: datetime | None) -> datetime | None:
    """SQLite hands datetimes back without a zone; they were written in UTC."""
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value
