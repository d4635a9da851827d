"""``autoglm restore FILE``: a backup back into this installation (stop the server first).

1. The manifest is read; the backup's database kind must be the configured one.
2. An installation that holds anything already (a table with rows, an audit key, a
   checkpoints file, a registered model) is refused unless ``force``; with ``force`` every
   file restore replaces or removes is moved aside to ``data_dir/.replaced-<time>/``
   (0700), and the database is replaced.
3. Every member is extracted into a staging directory under data_dir and checked against
   the manifest's SHA-256 before anything is put in place.
4. The database goes first (``pg_restore`` in one transaction, or the SQLite file renamed
   into place), then the files (renamed; secrets 0600 in a 0700 directory).
5. The restored chain is verified (``audit verify``), and the restore is an audit record
   of its own (``backup.restore``) when it is intact.
"""

from __future__ import annotations

import os
import secrets as pyrandom
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autoglm.audit import AuditPaths, Report, verify
from autoglm.backup import archive, database
from autoglm.backup.create import audit_act
from autoglm.errors import ConfigError
from autoglm.settings import Settings
from autoglm.store.db import Database, database_url
from autoglm.supply.registry import Registry

REPLACEABLE = (*archive.AUDIT_SECRETS, *archive.OPTIONAL_SECRETS, *archive.AUDIT_FILES)


@dataclass
class RestoreResult:
    manifest: dict[str, Any]
    report: Report
    moved_aside: Path | None
    missing_secrets: list[str] = field(default_factory=list)
    models_without_files: list[str] = field(default_factory=list)


def occupied(settings: Settings) -> list[str]:
    """What this installation holds already (empty: nothing a restore would replace)."""
    data_dir = settings.data_dir
    found = [f"database table {t}" for t in database.holds_data(database_url(settings))]
    found += [name for name in REPLACEABLE if (data_dir / name).exists()]
    found += [f"models/{p.name}" for p in sorted((data_dir / "models").glob("*.json"))]
    return found


def restore(settings: Settings, file: Path, *, force: bool = False) -> RestoreResult:
    data_dir = settings.data_dir
    url = database_url(settings)
    kind = database.kind_of(url)
    manifest = archive.read_manifest(file)
    theirs = manifest.get("database", {}).get("kind")
    if theirs != kind:
        raise ConfigError(f"{file} holds a {theirs} database but this installation uses "
                          f"{kind}: set database_url to a {theirs} database to restore it")
    there = occupied(settings)
    if there and not force:
        raise ConfigError(f"this installation is not empty ({', '.join(there[:4])}"
                          f"{', ...' if len(there) > 4 else ''}): restore into a fresh data "
                          "directory and database, or pass --force to replace it")
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    stage = data_dir / f".restore-{pyrandom.token_hex(6)}"
    try:
        doc = archive.extract(file, stage)
        names = {m["path"] for m in doc["members"]}
        aside = _move_aside(data_dir, names, url, kind) if there else None
        dump = stage / (archive.DB_MEMBERS[0] if kind == "sqlite" else archive.DB_MEMBERS[1])
        if not dump.is_file():
            raise ConfigError(f"{file} holds no database")
        if kind == "sqlite":
            database.restore_sqlite(dump, url)
        else:
            database.restore_postgresql(dump, url)
        for name in sorted(names - set(archive.DB_MEMBERS)):
            _place(stage / name, data_dir / name, secret=name.startswith("secrets/"))
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    db = Database(url)
    try:
        report = verify(db, AuditPaths.under(data_dir))
    finally:
        db.close()
    missing = [s for s in archive.OPTIONAL_SECRETS
               if s not in names and not (data_dir / s).exists()]
    if report.intact:
        audit_act(settings, "backup.restore", file.name, {
            "backup_created_at": doc.get("created_at"),
            "audit_head_seq": doc.get("database", {}).get("audit_head", {}).get("seq")})
    gone = [e["name"] for e in Registry(data_dir).list() if not Path(e["path"]).exists()]
    return RestoreResult(doc, report, aside, missing, gone)


def _place(src: Path, dst: Path, *, secret: bool) -> None:
    dst.parent.mkdir(mode=0o700 if secret else 0o755, parents=True, exist_ok=True)
    os.chmod(src, 0o600 if secret else 0o644)
    os.replace(src, dst)


def _move_aside(data_dir: Path, names: set[str], url: str, kind: str) -> Path:
    """Files the restore replaces or removes, and a SQLite database, into one folder."""
    from autoglm.timefmt import stamp

    when = stamp()[:19].replace("-", "").replace(":", "")
    aside = data_dir / f".replaced-{when}Z-{pyrandom.token_hex(2)}"
    aside.mkdir(mode=0o700)
    targets = {n for n in REPLACEABLE if (data_dir / n).exists()}
    targets |= {f"models/{p.name}" for p in (data_dir / "models").glob("*.json")}
    targets |= {f"models/signatures/{p.name}"
                for p in (data_dir / "models" / "signatures").glob("*.sig")}
    targets |= {n for n in names if (data_dir / n).exists() and not n.startswith("database/")}
    for name in sorted(targets):
        (aside / name).parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.replace(data_dir / name, aside / name)
    if kind == "sqlite":
        db_file = database.sqlite_path(url)
        for side in ("", "-wal", "-shm"):
            src = db_file.with_name(db_file.name + side)
            if src.exists():
                (aside / "database").mkdir(mode=0o700, exist_ok=True)
                os.replace(src, aside / "database" / src.name)
    return aside
