"""Authentication stage: bearer API key -> Principal.

Today there is one principal, the platform admin, whose key comes from
``AUTOGLM_ADMIN_KEY`` or is generated at first start (printed once; only its keyed
hash is stored). The key store of the identity issue replaces ``KeyStore`` behind the
same ``authenticate`` call. Every failure gives the same message: no oracle on whether
a key exists, is malformed, or was close.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from autoglm.errors import AuthenticationError, ConfigError
from autoglm.security import keys
from autoglm.settings import Settings

log = logging.getLogger("autoglm.auth")

BAD_KEY = "Incorrect API key provided. Pass a valid key as 'Authorization: Bearer <key>'."
NO_KEY = (
    "You didn't provide an API key. Pass it as 'Authorization: Bearer <key>' "
    "(the admin key was printed at first start, or set AUTOGLM_ADMIN_KEY)."
)


@dataclass(frozen=True)
class Principal:
    id: str
    name: str
    roles: frozenset[str] = field(default_factory=frozenset)


ADMIN = Principal("admin", "platform admin", frozenset({"platform_admin"}))
ANONYMOUS_ADMIN = Principal("anonymous", "auth disabled", frozenset({"platform_admin"}))


class KeyStore:
    """Keyed hashes of the known keys, in memory; the admin key's hash on disk."""

    def __init__(self, pepper: bytes) -> None:
        self.pepper = pepper
        self._by_hash: dict[str, Principal] = {}

    def add(self, key_hash: str, principal: Principal) -> None:
        self._by_hash[key_hash] = principal

    def lookup(self, key: str) -> Principal | None:
        # The digest is an HMAC under a secret pepper: a caller cannot steer it, so a
        # dict lookup leaks nothing about stored hashes through timing.
        return self._by_hash.get(keys.hash_key(self.pepper, key))


class Authenticator:
    def __init__(self, store: KeyStore | None) -> None:
        self.store = store  # None: authentication disabled by the loud flag

    @property
    def disabled(self) -> bool:
        return self.store is None

    def authenticate(self, authorization: str | None) -> Principal:
        if self.store is None:
            return ANONYMOUS_ADMIN
        if not authorization:
            raise AuthenticationError(NO_KEY)
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise AuthenticationError(BAD_KEY)
        principal = self.store.lookup(token)
        if principal is None:
            raise AuthenticationError(BAD_KEY)
        return principal


def bootstrap(settings: Settings, announce: Callable[[str, Path], None]) -> Authenticator:
    """Build the authenticator; generate and announce the admin key on first start."""
    if settings.dangerously_disable_auth:
        log.warning(
            "AUTHENTICATION IS DISABLED (dangerously_disable_auth): anyone who can reach "
            "this port can use every model and admin route"
        )
        return Authenticator(None)
    secrets_dir = settings.data_dir / "secrets"
    pepper = keys.load_or_create_pepper(secrets_dir / "pepper")
    store = KeyStore(pepper)
    if settings.admin_key is not None:
        store.add(keys.hash_key(pepper, settings.admin_key.get_secret_value()), ADMIN)
        return Authenticator(store)
    record = secrets_dir / "admin_key.json"
    try:
        stored = json.loads(record.read_text())["hash"]
    except FileNotFoundError:
        key = keys.generate_key()
        stored = keys.hash_key(pepper, key)
        keys.write_secret_file(record, json.dumps({"hash": stored, "principal": "admin"}).encode())
        announce(key, record)
    except (KeyError, ValueError) as exc:
        raise ConfigError(f"admin key record {record} is damaged: {exc}") from exc
    store.add(stored, ADMIN)
    return Authenticator(store)


def reset_admin_key(data_dir: Path) -> Path:
    """Forget the stored admin key so the next start generates a new one."""
    record = data_dir / "secrets" / "admin_key.json"
    record.unlink(missing_ok=True)
    return record
