"""``autoglm backup``: the control plane of this installation in one file.

What goes in, in this order (so the copy is consistent while the server runs):

1. the audit checkpoints file, up to its size now, and the checkpoint public key;
2. the audit chain's HMAC key and checkpoint signing key (mode 0600 in the archive):
   without them `audit verify` cannot check the restored chain and the restored server
   could not go on signing it, so they are always included and the output says so;
3. with ``include_secrets`` only: the API-key pepper (restored keys authenticate only
   with it) and the personal-data master key (sealed personal fields are unreadable
   without it);
4. the model registry: each model's manifest entry and signature, never its weights;
5. the database, last: SQLite's online backup or ``pg_dump`` in one snapshot. Every
   checkpoint copied in step 1 names a record committed before that snapshot, so the
   restored chain verifies against the restored checkpoints.

A SQLite backup is verified before it is written (the staged copy's chain against the
staged keys and checkpoints): a backup that would not verify is refused. The act is an
audit record of its own (``backup.create``), made before the snapshot so the backup holds
it.
"""

from __future__ import annotations

import getpass
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autoglm import __version__
from autoglm.audit import AuditPaths, Record, verify
from autoglm.audit.writer import AuditLog
from autoglm.backup import archive, database
from autoglm.backup import log as backup_log
from autoglm.errors import AuditError, ConfigError
from autoglm.settings import Settings
from autoglm.store.db import Database, database_url
from autoglm.timefmt import stamp

EXCLUDED = (("model weights (the registry keeps each model's manifest: re-fetch or copy the "
            "files, then `autoglm model verify`)"),
            "batch input and output files (data_dir/files)",
            ("the settings file and the policy file (keep them in your configuration "
            "management)"))


@dataclass(frozen=True)
class BackupResult:
    path: Path
    sha256: str
    bytes: int
    manifest: dict[str, Any]


def actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"[:64]
    except (KeyError, OSError):
        return "cli"


def create(settings: Settings, out: Path, *, include_secrets: bool = False) -> BackupResult:
    if out.exists():
        raise ConfigError(f"{out} exists: choose another name (a backup never overwrites)")
    url = database_url(settings)
    kind = database.kind_of(url)
    data_dir = settings.data_dir
    paths = AuditPaths.under(data_dir)
    if not database.holds_data(url):
        raise ConfigError("the database holds nothing yet (no server has started and no "
                          "command has written to it): nothing to back up")
    audit_act(settings, "backup.create", out.name, {"include_secrets": include_secrets})
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".autoglm-backup-", dir=out.parent) as tmp:
        stage = Path(tmp)
        members: list[archive.Member] = []
        _stage_prefix(paths.checkpoints, stage, archive.AUDIT_FILES[0], members)
        _stage(paths.public_key, stage, archive.AUDIT_FILES[1], members, 0o644)
        secrets = list(archive.AUDIT_SECRETS)
        if include_secrets:
            secrets += archive.OPTIONAL_SECRETS
        included = [s for s in secrets if _stage(data_dir / s, stage, s, members, 0o600)]
        models = _stage_registry(data_dir, stage, members)
        db_name = archive.DB_MEMBERS[0] if kind == "sqlite" else archive.DB_MEMBERS[1]
        dump = stage / db_name
        dump.parent.mkdir(mode=0o700)
        snap = (database.dump_sqlite(url, dump) if kind == "sqlite"
                else database.dump_postgresql(url, dump))
        members.append(archive.Member(db_name, dump, 0o600))
        checked = _verify_staged(stage, dump) if kind == "sqlite" else None
        manifest = {
            "created_at": stamp(), "autoglm_version": __version__,
            "source": {"data_dir": str(data_dir), "host": settings.host},
            "database": {"kind": kind, "revision": snap.revision, "tool": snap.tool,
                         "audit_head": {"seq": snap.head_seq, "hash": snap.head_hash}},
            "audit_verified": checked,
            "secrets_included": included,
            "secrets_not_included": [s for s in archive.OPTIONAL_SECRETS if s not in included],
            "models": models,
            "excluded": list(EXCLUDED),
        }
        digest = archive.write(out, manifest, members)
    size = out.stat().st_size
    backup_log.record(data_dir, {
        "created_at": manifest["created_at"], "path": str(out.resolve()), "sha256": digest,
        "bytes": size, "database": kind, "audit_head_seq": snap.head_seq,
        "secrets_included": included})
    return BackupResult(out, digest, size, manifest)


def audit_act(settings: Settings, action: str, resource: str, detail: dict[str, Any]) -> int | None:
    """One audit record for the act, committed now."""
    db = Database(database_url(settings))
    audit = AuditLog.from_settings(settings, db)
    try:
        seqs = audit.append([Record(action=action, actor=actor(), status=200,
                                    resource=resource[:256], detail=detail)])
    finally:
        audit.close()
        db.close()
    return seqs[0] if seqs else None


def _stage(src: Path, stage: Path, name: str, members: list[archive.Member],
           mode: int) -> bool:
    """Copy ``src`` into the staging directory as member ``name`` (if it exists)."""
    if not src.is_file():
        return False
    dst = stage / name
    dst.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    shutil.copyfile(src, dst)
    dst.chmod(0o600)
    members.append(archive.Member(name, dst, mode))
    return True


def _stage_prefix(src: Path, stage: Path, name: str, members: list[archive.Member]) -> None:
    """The checkpoints file up to its size now, whole lines (the writer may append)."""
    if not src.is_file():
        return
    dst = stage / name
    dst.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    size = src.stat().st_size
    with src.open("rb") as fh:
        data = fh.read(size)
    dst.write_bytes(data[:data.rfind(b"\n") + 1])
    members.append(archive.Member(name, dst, 0o644))


def _stage_registry(data_dir: Path, stage: Path, members: list[archive.Member]) -> list[str]:
    """Each registered model's entry (its manifest) and signature; no weights."""
    registry = data_dir / "models"
    names = []
    for entry in sorted(registry.glob("*.json")) if registry.is_dir() else []:
        if archive.allowed(f"models/{entry.name}") and entry.is_file():
            _stage(entry, stage, f"models/{entry.name}", members, 0o644)
            names.append(entry.stem)
    sigs = registry / "signatures"
    for sig in sorted(sigs.glob("*.sig")) if sigs.is_dir() else []:
        if archive.allowed(f"models/signatures/{sig.name}") and sig.is_file():
            _stage(sig, stage, f"models/signatures/{sig.name}", members, 0o644)
    return names


def _verify_staged(stage: Path, dump: Path) -> dict[str, Any]:
    """The staged SQLite copy's chain, checked with the staged keys and checkpoints."""
    db = Database(f"sqlite:///{dump}")
    try:
        report = verify(db, AuditPaths.under(stage))
    finally:
        db.close()
    for side in ("-wal", "-shm"):
        dump.with_name(dump.name + side).unlink(missing_ok=True)
    if not report.intact:
        f = report.fault
        raise AuditError(f"the audit chain in the backup copy does not verify (seq "
                         f"{f.seq if f else '?'}: {f.kind if f else '?'}); no backup written: "
                         "run `autoglm audit verify` and try again")
    return {"intact": True, "records": report.records, "head_seq": report.head_seq,
            "checkpoints": report.checkpoints}
