"""``autoglm backup`` / ``restore`` on SQLite and PostgreSQL: a real installation made
with the CLI is backed up while it is live, restored into a fresh data directory (and a
fresh database), and `autoglm audit verify` passes there; the tenants, the key and the
model registry (manifest, no weights) came back."""

from __future__ import annotations

import io
import os
import stat
import tarfile
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from autoglm.security.keys import hash_key
from autoglm.settings import load_settings
from autoglm.store.db import Database, database_url
from autoglm.store.models import ApiKey
from tests.backup.install import cli, cli_json, make_installation
from tests.conftest import pg_database


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch,
            tmp_path: Path) -> Iterator[tuple[str, str | None]]:
    """The kind of database; the source one is configured, a fresh target's URL given
    (None: SQLite in the data directory)."""
    if request.param == "sqlite":
        yield "sqlite", None
        return
    with pg_database() as source, pg_database() as target:
        monkeypatch.setenv("AUTOGLM_DATABASE_URL", source)
        yield "postgresql", target


def _point_at(monkeypatch: pytest.MonkeyPatch, data_dir: Path, url: str | None) -> None:
    monkeypatch.setenv("AUTOGLM_DATA_DIR", str(data_dir))
    if url is not None:
        monkeypatch.setenv("AUTOGLM_DATABASE_URL", url)


def _members(path: Path) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(path, "r:gz") as tar:
        return {m.name: m for m in tar.getmembers()}


def test_backup_then_restore_into_a_fresh_installation_verifies(
        backend: tuple[str, str | None], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    kind, target_url = backend
    src_dir = tmp_path / "data"
    inst = make_installation(src_dir, tmp_path)
    out = tmp_path / "backups" / "b1.tar.gz"
    _, err = cli("backup", "--output", str(out), "--include-secrets")
    assert "keep it as a secret" in err
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    members = _members(out)
    db_member = "database/autoglm.db" if kind == "sqlite" else "database/autoglm.pgdump"
    assert {db_member, "secrets/audit_hmac_key", "secrets/audit_signing_key.pem",
            "secrets/pepper", "audit/checkpoints.jsonl", "models/tiny.json"} <= set(members)
    assert stat.S_IMODE(members["secrets/audit_hmac_key"].mode) == 0o600
    assert not any("tiny.gguf" in n or "weights" in n for n in members)  # never the weights
    with tarfile.open(out, "r:gz") as tar:
        manifest = orjson.loads(tar.extractfile("manifest.json").read())
    assert manifest["database"]["kind"] == kind
    assert {m["path"] for m in manifest["members"]} == set(members) - {"manifest.json"}
    assert all(len(m["sha256"]) == 64 for m in manifest["members"])

    # the live installation goes on after the backup; the backup does not see that
    cli_json("tenants", "create", "later")

    fresh = tmp_path / "fresh"
    _point_at(monkeypatch, fresh, target_url)
    _, err = cli("restore", str(out))
    assert "audit chain intact" in err
    _, err = cli("audit", "verify")
    assert "audit chain intact" in err
    names = {t["name"] for t in cli_json("tenants", "list")["data"]}
    assert names == {"bank"}  # as it was at the backup
    settings = load_settings()
    assert stat.S_IMODE((fresh / "secrets" / "audit_hmac_key").stat().st_mode) == 0o600
    assert (fresh / "secrets" / "audit_hmac_key").read_bytes() == \
        (src_dir / "secrets" / "audit_hmac_key").read_bytes()
    # the restored key authenticates: same pepper, same stored hash
    pepper = bytes.fromhex((fresh / "secrets" / "pepper").read_text().strip())
    db = Database(database_url(settings))
    try:
        with db.session() as s:
            row = s.get(ApiKey, inst.key_id)
    finally:
        db.close()
    assert row is not None and row.key_hash == hash_key(pepper, inst.key)
    assert orjson.loads((fresh / "models" / "tiny.json").read_bytes())["name"] == "tiny"

    # a second restore over it is refused, then done with --force (the old files set aside)
    _, err = cli("restore", str(out), code=1)
    assert "not empty" in err
    _, err = cli("restore", str(out), "--force")
    assert "audit chain intact" in err
    aside = [p for p in fresh.iterdir() if p.name.startswith(".replaced-")]
    assert len(aside) == 1 and (aside[0] / "secrets" / "audit_hmac_key").is_file()
    cli("audit", "verify")


def test_without_include_secrets_the_pepper_stays_out(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    make_installation(tmp_path / "data", tmp_path)
    out = tmp_path / "b.tar.gz"
    _, err = cli("backup", "-o", str(out))
    assert "Not included: secrets/pepper, secrets/personal_data_key" in err
    names = set(_members(out))
    assert "secrets/pepper" not in names and "secrets/personal_data_key" not in names
    assert "secrets/audit_hmac_key" in names  # verify needs it after a restore
    _point_at(monkeypatch, tmp_path / "fresh", None)
    _, err = cli("restore", str(out))
    assert "secrets/pepper was not in the backup" in err
    cli("audit", "verify")


def test_a_damaged_backup_is_refused_before_anything_is_restored(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_installation(tmp_path / "data", tmp_path)
    good = tmp_path / "b.tar.gz"
    cli("backup", "-o", str(good))
    assert cli("backup", "-o", str(good), code=1)[1].count("exists") == 1  # never overwrites
    # a member whose bytes differ from the manifest's SHA-256
    with tarfile.open(good, "r:gz") as tar:
        items = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    bad = tmp_path / "bad.tar.gz"
    with tarfile.open(bad, "w:gz") as tar:
        for info, data in items:
            if info.name == "secrets/audit_hmac_key":
                data = data[:-1] + (b"0" if data[-1:] != b"0" else b"1")
            tar.addfile(info, io.BytesIO(data))
    fresh = tmp_path / "fresh"
    _point_at(monkeypatch, fresh, None)
    _, err = cli("restore", str(bad), code=1)
    assert "does not match the SHA-256" in err
    assert not (fresh / "autoglm.db").exists() and not (fresh / "secrets").exists()
    # a file cut short
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    _, err = cli("restore", str(cut), code=1)
    assert not (fresh / "autoglm.db").exists()


def test_a_sqlite_backup_is_not_restored_into_postgresql(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    make_installation(tmp_path / "data", tmp_path)
    out = tmp_path / "b.tar.gz"
    cli("backup", "-o", str(out))
    with pg_database() as url:
        _point_at(monkeypatch, tmp_path / "fresh", url)
        _, err = cli("restore", str(out), code=1)
    assert "holds a sqlite database but this installation uses postgresql" in err


def test_a_pg_dump_older_than_the_server_is_named(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The client tools on PATH are the operator's, not ours: a pg_dump of an older major
    than the server is refused with what to install."""
    with pg_database() as url:
        monkeypatch.setenv("AUTOGLM_DATABASE_URL", url)
        cli("db", "upgrade")
        tools = tmp_path / "oldtools"
        tools.mkdir()
        fake = tools / "pg_dump"
        fake.write_text("#!/bin/sh\necho 'pg_dump (PostgreSQL) 9.6.24'\n")
        fake.chmod(0o755)
        monkeypatch.setenv("PATH", f"{tools}{os.pathsep}{os.environ['PATH']}")
        _, err = cli("backup", "-o", str(tmp_path / "b.tar.gz"), code=1)
    assert "pg_dump (PostgreSQL) 9.6.24 cannot dump a PostgreSQL" in " ".join(err.split())
    assert "client tools" in err
    assert not (tmp_path / "b.tar.gz").exists()
