"""Authentication stage: bearer API key -> Identity.

Today there is one principal, the platform admin, whose key comes from
``AUTOGLM_ADMIN_KEY`` or is generated at first start (printed once; only its keyed
hash is stored). The key store of the identity issue replaces ``KeyStore`` behind the
same ``authenticate`` call. Every failure gives the same message: no oracle on whether
a key exists, is malformed, or was close.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence

from sqlalchemy import select

from autoglm.audit import AuditLog
from autoglm.errors import AuthenticationError, ConfigError
from autoglm.security import keys
from autoglm.security.failures import AuthFailures
from autoglm.security.keystore import Binding, Identity, KeyService
from autoglm.settings import MIN_ADMIN_KEY_CHARS, Settings
from autoglm.store.db import Database
from autoglm.store.directory import Act, Directory
from autoglm.store.models import ApiKey, RoleBinding
from autoglm.store.models import Principal as PrincipalRow

log = logging.getLogger("autoglm.auth")

BAD_KEY = "Incorrect API key provided. Pass a valid key as 'Authorization: Bearer <key>'."
NO_KEY = (
    "You didn't provide an API key. Pass it as 'Authorization: Bearer <key>' "
    "(the admin key was printed at first start, or set AUTOGLM_ADMIN_KEY)."
)


# The identity every request has when authentication is switched off (loudly).
ANONYMOUS_ADMIN = Identity(
    key_id="none", principal_id="anonymous", principal_name="auth disabled", tenant_id=None,
    bindings=(Binding("platform_admin", None, None),), projects=None, models=None,
    actions=None, expires_at=None,
)


class Authenticator:
    def __init__(self, keys_service: KeyService | None,
                 failures: AuthFailures | None = None) -> None:
        self.keys = keys_service  # None: authentication disabled by the loud flag
        self.failures = failures or AuthFailures()
        # a last word on an identity found (an edge node refuses tenant keys once its copy
        # of them is too old: ``edge.link``)
        self.gate: Callable[[Identity], None] | None = None

    @property
    def disabled(self) -> bool:
        return self.keys is None

    async def authenticate(self, authorization: str | None,
                           client: str | None = None) -> Identity:
        """The identity of a bearer key. ``client``: the caller's address, for the limit on
        failed attempts. A token that cannot be a key is refused before any hashing."""
        if self.keys is None:
            return ANONYMOUS_ADMIN
        self.failures.check(client)
        if not authorization:
            self.failures.failed(client)
            raise AuthenticationError(NO_KEY)
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not _plausible(token):
            self.failures.failed(client)
            raise AuthenticationError(BAD_KEY)
        identity = await self.keys.resolve(token)
        if identity is None:
            self.failures.failed(client)
            raise AuthenticationError(BAD_KEY)
        if self.gate is not None:
            self.gate(identity)
        return identity


def _plausible(token: str) -> bool:
    """A well-formed agk_ key (checksum and all), or a long secret (an admin key)."""
    if token.startswith(keys.PREFIX):
        return keys.well_formed(token)
    return MIN_ADMIN_KEY_CHARS <= len(token) <= 256


ADMIN_PRINCIPAL_ID = "prn_platform_admin"


def ensure_platform_admin(db: Database) -> str:
    """The platform admin principal of the serving core, with its role binding."""
    with db.session() as s, s.begin():
        if s.get(PrincipalRow, ADMIN_PRINCIPAL_ID) is None:
            s.add(PrincipalRow(id=ADMIN_PRINCIPAL_ID, tenant_id=None, name="admin",
                               kind="service"))
            s.flush()
            s.add(RoleBinding(principal_id=ADMIN_PRINCIPAL_ID, role="platform_admin"))
    return ADMIN_PRINCIPAL_ID


ENV_KEY_NAME = "AUTOGLM_ADMIN_KEY"


def _replace_env_key(service: KeyService, db: Database, admin: str, secret: str,
                     existing: Sequence[ApiKey], audit: AuditLog) -> None:
    """A new AUTOGLM_ADMIN_KEY: registered, and the one it replaces revoked, both audited
    (the actor is the bootstrap, not a person)."""
    directory = Directory(db, audit)
    act = Act("bootstrap", None)
    _, record = service.create(admin, name=ENV_KEY_NAME, secret=secret)
    replaced = [k for k in existing if k.name == ENV_KEY_NAME and k.revoked_at is None]
    for old in replaced:
        service.revoke(old.id)
    directory.record_act(act, "admin_key.replace" if replaced else "admin_key.create",
                         record.id, None, {"revoked": [k.id for k in replaced]})
    if replaced:
        log.warning("AUTOGLM_ADMIN_KEY changed: the previous admin key is revoked",
                    extra={"revoked": [k.id for k in replaced]})


def bootstrap(settings: Settings, announce: Callable[[str, str], None],
              db: Database, generate: bool = True,
              audit: AuditLog | None = None) -> Authenticator:
    """The authenticator; on first start, an admin key generated and announced once
    (not when ``generate`` is false: nobody would see it).

    ``AUTOGLM_ADMIN_KEY`` is registered as the platform admin's key; a key generated by
    an earlier version (``secrets/admin_key.json``) is imported, so it keeps working.
    """
    if settings.dangerously_disable_auth:
        log.warning(
            "AUTHENTICATION IS DISABLED (dangerously_disable_auth): anyone who can reach "
            "this port can use every model and admin route"
        )
        return Authenticator(None)
    secrets_dir = settings.data_dir / "secrets"
    if settings.key_pepper is not None:
        pepper = settings.key_pepper.get_secret_value().encode()
        if len(pepper) < 32:
            raise ConfigError("key_pepper must be at least 32 characters")
    else:
        pepper = keys.load_or_create_pepper(secrets_dir / "pepper")
    service = KeyService(db, pepper)
    failures = AuthFailures(settings.auth_failure_limit, settings.auth_failure_window_s)
    admin = ensure_platform_admin(db)
    with db.session() as s:
        admin_keys = s.scalars(select(ApiKey).where(ApiKey.principal_id == admin)).all()
    known = {k.key_hash for k in admin_keys}
    if settings.admin_key is not None:
        secret = settings.admin_key.get_secret_value()
        if keys.hash_key(pepper, secret) not in known:
            own = audit is None
            log_ = audit if audit is not None else AuditLog.from_settings(settings, db)
            try:
                _replace_env_key(service, db, admin, secret, admin_keys, log_)
            finally:
                if own:
                    log_.close()
        return Authenticator(service, failures)
    if admin_keys:
        return Authenticator(service, failures)
    legacy = secrets_dir / "admin_key.json"
    try:
        stored = json.loads(legacy.read_text())["hash"]
    except FileNotFoundError:
        if not generate:
            return Authenticator(service, failures)
        secret, _ = service.create(admin, name="generated at first start")
        announce(secret, db.url if db.url.startswith("sqlite") else "the database")
        return Authenticator(service, failures)
    except (KeyError, ValueError) as exc:
        raise ConfigError(f"admin key record {legacy} is damaged: {exc}") from exc
    with db.session() as s, s.begin():
        s.add(ApiKey(principal_id=admin, key_hash=stored, display="agk_…", name="imported"))
    return Authenticator(service, failures)
