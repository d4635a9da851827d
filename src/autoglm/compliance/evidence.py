"""Live evidence of this installation, read as it is now: settings, files, the database.

Nothing here judges; ``checks`` does. Every value is plain JSON data (it goes into the
report as it is), and every read that fails is recorded as an ``error`` beside the
value instead of stopping the report: a report that cannot read something says so.
"""

from __future__ import annotations

import hashlib
import stat
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from autoglm import __version__
from autoglm.audit import AuditPaths, verify
from autoglm.audit import checkpoints as cps
from autoglm.audit.verify import public_key_of
from autoglm.backup import log as backup_log
from autoglm.errors import AutoGLMError
from autoglm.settings import Settings, is_loopback
from autoglm.store.db import Database, database_url
from autoglm.store.models import (
    ApiKey,
    AuditRecord,
    Principal,
    RoleBinding,
    SubjectKey,
    Tenant,
)
from autoglm.timefmt import stamp


def collect(settings: Settings, now: datetime | None = None) -> dict[str, Any]:
    now = now or datetime.now(UTC)
    url = database_url(settings)
    db = Database(url)
    try:
        return {
            "collected_at": stamp(now),
            "installation": _installation(settings, url),
            "network": _network(settings),
            "tls": _tls(settings, now),
            "keys": _guard(lambda: _keys(db, now)),
            "principals": _guard(lambda: _principals(db)),
            "policy": _policy(settings),
            "audit": _guard(lambda: _audit(settings, db, now)),
            "secrets": _secrets(settings.data_dir, now),
            "privacy": {**_privacy(settings), **_guard(lambda: _erasures(db))},
            "models": _models(settings),
            "backups": _backups(settings.data_dir, now),
        }
    finally:
        db.close()


def _guard(read: Any) -> dict[str, Any]:
    try:
        return read()
    except (SQLAlchemyError, AutoGLMError, OSError) as exc:
        msg = exc.message if isinstance(exc, AutoGLMError) else " ".join(str(exc).split())
        return {"error": msg[:400]}


def _days(then: datetime | None, now: datetime) -> float | None:
    if then is None:
        return None
    if then.tzinfo is None:
        then = then.replace(tzinfo=UTC)
    return round((now - then).total_seconds() / 86400, 1)


def _installation(settings: Settings, url: str) -> dict[str, Any]:
    parsed = make_url(url)
    db: dict[str, Any] = {"kind": parsed.get_backend_name()}
    if db["kind"] == "postgresql":
        host = parsed.host or "localhost"
        db.update(host=host, local=host in ("localhost", "") or host.startswith("/")
                  or is_loopback(host), sslmode=parsed.query.get("sslmode"))
    return {"version": __version__, "data_dir": str(settings.data_dir),
            "config_file": str(settings.config_file) if settings.config_file else None,
            "database": db}


def _network(settings: Settings) -> dict[str, Any]:
    return {"host": settings.host, "loopback": is_loopback(settings.host),
            "port": settings.port, "grpc_port": settings.grpc_port,
            "ops_public": settings.ops_public, "cors_allow_origins": settings.cors_allow_origins,
            "auth_disabled": settings.dangerously_disable_auth,
            "auth_failure_limit": settings.auth_failure_limit,
            "auth_failure_window_s": settings.auth_failure_window_s,
            "header_timeout_s": settings.header_timeout_s,
            "body_timeout_s": settings.body_timeout_s, "max_body_bytes": settings.max_body_bytes,
            "max_connections": settings.max_connections,
            "admin_key_from_settings": settings.admin_key is not None,
            "workers": settings.workers, "redis": settings.redis_url is not None}


def _tls(settings: Settings, now: datetime) -> dict[str, Any]:
    out: dict[str, Any] = {"enabled": settings.tls_enabled,
                           "min_version": "TLSv1.2" if settings.tls_allow_1_2 else "TLSv1.3"}
    if not settings.tls_enabled or settings.ssl_certfile is None:
        return out
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    out["certfile"] = str(settings.ssl_certfile)
    try:
        cert = x509.load_pem_x509_certificate(settings.ssl_certfile.read_bytes())
    except (OSError, ValueError) as exc:
        out["error"] = f"cannot read the certificate: {exc}"
        return out
    key = cert.public_key()
    out.update(
        subject=cert.subject.rfc4514_string(), not_after=stamp(cert.not_valid_after_utc),
        days_left=round((cert.not_valid_after_utc - now).total_seconds() / 86400, 1),
        key=(f"RSA {key.key_size}" if isinstance(key, rsa.RSAPublicKey) else
             f"EC {key.curve.name}" if isinstance(key, ec.EllipticCurvePublicKey) else
             type(key).__name__.removeprefix("_")),
        signature_hash=cert.signature_hash_algorithm.name if cert.signature_hash_algorithm
        else None)
    if settings.ssl_keyfile is not None:
        out.update(keyfile=str(settings.ssl_keyfile), keyfile_mode=_mode(settings.ssl_keyfile))
    return out


def _mode(path: Path) -> str | None:
    try:
        return f"{stat.S_IMODE(path.stat().st_mode):04o}"
    except OSError:
        return None


def _keys(db: Database, now: datetime) -> dict[str, Any]:
    with db.session() as s:
        rows = s.execute(select(ApiKey, Principal.disabled).join(
            Principal, Principal.id == ApiKey.principal_id)).all()
    active, revoked, expired, rotated = [], 0, 0, 0
    for key, disabled in rows:
        expires = key.expires_at.replace(tzinfo=UTC) if key.expires_at and \
            key.expires_at.tzinfo is None else key.expires_at
        rotated += key.rotated_to is not None
        if key.revoked_at is not None:
            revoked += 1
            continue
        if expires is not None and expires <= now:
            expired += 1
            continue
        active.append({"id": key.id, "principal": key.principal_id, "name": key.name,
                       "created_at": stamp(key.created_at),
                       "age_days": _days(key.created_at, now),
                       "expires_at": stamp(expires) if expires else None,
                       "principal_disabled": bool(disabled)})
    active.sort(key=lambda k: -(k["age_days"] or 0))
    return {"active": active, "revoked": revoked, "expired": expired, "rotations": rotated}


def _principals(db: Database) -> dict[str, Any]:
    with db.session() as s:
        principals = s.scalars(select(Principal)).all()
        bindings = s.scalars(select(RoleBinding)).all()
        tenants = s.scalar(select(func.count()).select_from(Tenant)) or 0
    enabled = {p.id: p for p in principals if not p.disabled}
    roles: dict[str, int] = {}
    for b in bindings:
        if b.principal_id in enabled:
            roles[b.role] = roles.get(b.role, 0) + 1
    admins = sorted({b.principal_id for b in bindings
                     if b.role == "platform_admin" and b.principal_id in enabled})
    bound = {b.principal_id for b in bindings}
    return {"total": len(principals), "disabled": len(principals) - len(enabled),
            "tenants": tenants, "roles": roles,
            "platform_admins": [{"id": a, "name": enabled[a].name, "kind": enabled[a].kind}
                                for a in admins],
            "unbound": sorted(p for p in enabled if p not in bound)}


def _policy(settings: Settings) -> dict[str, Any]:
    from autoglm.security.policy import DEFAULT_POLICY, parse_policy

    path = settings.policy_file or DEFAULT_POLICY
    out: dict[str, Any] = {"source": "built-in default" if settings.policy_file is None
                           else str(path)}
    try:
        raw = path.read_bytes()
    except OSError as exc:
        out.update(valid=False, error=f"cannot read {path}: {exc.strerror or exc}")
        return out
    out["sha256"] = hashlib.sha256(raw).hexdigest()
    try:
        policy = parse_policy(raw.decode("utf-8", "replace"), str(path))
    except ValueError as exc:
        out.update(valid=False, error=str(exc))
        return out
    out.update(valid=True, rules={role: sum(len(r.actions) for r in rules)
                                  for role, rules in policy.doc.roles.items()})
    return out


def _audit(settings: Settings, db: Database, now: datetime) -> dict[str, Any]:
    paths = AuditPaths.under(settings.data_dir)
    report = verify(db, paths)
    out: dict[str, Any] = {"verify": report.to_dict(), "strict": settings.audit_strict,
                           "syslog": settings.audit_syslog,
                           "flush_ms": settings.audit_flush_ms}
    start = report.anchor or 0
    with db.engine.connect() as conn:
        first = conn.execute(select(AuditRecord.ts).where(AuditRecord.seq > start)
                             .order_by(AuditRecord.seq).limit(1)).scalar()
    out["first_record_at"] = stamp(first) if first else None
    out["first_record_age_days"] = _days(first, now)
    public = public_key_of(paths)
    anchor = cps.latest_anchor(paths.checkpoints, public) if public else None
    out["last_prune"] = {"seq": anchor.seq, "at": anchor.ts} if anchor else None
    last_cp = None
    if public is not None:
        for entry in cps.read(paths.checkpoints, public):
            if isinstance(entry, cps.Checkpoint) and not entry.anchor:
                last_cp = entry.ts
    out["last_checkpoint_at"] = last_cp
    return out


def _secrets(data_dir: Path, now: datetime) -> dict[str, Any]:
    folder = data_dir / "secrets"
    files = []
    for path in sorted(folder.iterdir()) if folder.is_dir() else []:
        if not path.is_file() or path.name.startswith("."):
            continue
        st = path.stat()
        files.append({"name": path.name, "mode": f"{stat.S_IMODE(st.st_mode):04o}",
                      "private": not st.st_mode & (stat.S_IRWXG | stat.S_IRWXO),
                      "age_days": _days(datetime.fromtimestamp(st.st_mtime, UTC), now)})
    return {"folder_mode": _mode(folder), "files": files}


def _privacy(settings: Settings) -> dict[str, Any]:
    return {"log_prompts": settings.log_prompts,
            "audit_text_tenants": settings.audit_text_tenants,
            "pii_actions": settings.pii_actions,
            "pii_tenant_actions": settings.pii_tenant_actions,
            "prefix_cache_scope": settings.prefix_cache_scope,
            "response_cache_tenants": settings.response_cache_tenants,
            "personal_data_key": (settings.data_dir / "secrets" / "personal_data_key").exists()}


def _erasures(db: Database) -> dict[str, Any]:
    with db.session() as s:
        subjects = s.scalar(select(func.count()).select_from(SubjectKey)) or 0
        erased = s.scalar(select(func.count()).select_from(SubjectKey)
                          .where(SubjectKey.erased_at.is_not(None))) or 0
    return {"subject_keys": subjects, "erased_subjects": erased}


def _models(settings: Settings) -> dict[str, Any]:
    from autoglm.supply.registry import Registry
    from autoglm.supply.signing import fingerprint_public, signature_path

    keys = []
    for key in settings.trusted_keys:
        try:
            keys.append({"path": str(key), "fingerprint": fingerprint_public(key.read_bytes())})
        except (OSError, AutoGLMError) as exc:
            keys.append({"path": str(key), "error": getattr(exc, "message", str(exc))})
    registry = Registry(settings.data_dir)
    models = []
    try:
        entries = registry.list()
    except (OSError, ValueError) as exc:
        entries, error = [], str(exc)
    else:
        error = None
    for e in entries:
        models.append({"name": e.get("name"), "source": e.get("source"),
                       "verified": e.get("verified"), "signed_by": e.get("signed_by"),
                       "signature": signature_path(registry, str(e.get("name"))).is_file(),
                       "files": len(e.get("manifest", {}).get("files", []))})
    local = not settings.models or any(m.engine != "openai" for m in settings.models)
    out = {"trust": settings.model_trust, "trusted_keys": keys, "registered": models,
           "serves_local_model": local}
    if error:
        out["error"] = error
    return out


def _backups(data_dir: Path, now: datetime) -> dict[str, Any]:
    entries = backup_log.entries(data_dir)
    if not entries:
        return {"count": 0, "latest": None}
    latest = dict(entries[-1])
    path = Path(str(latest.get("path")))
    try:
        at = datetime.fromisoformat(latest["created_at"])
    except ValueError:
        at = None
    latest["age_days"] = _days(at, now)
    latest["present"] = path.is_file() and path.stat().st_size == latest.get("bytes")
    return {"count": len(entries), "latest": latest}
