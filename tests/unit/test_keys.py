import json
import stat

import pytest

from autoglm.errors import AuthenticationError
from autoglm.security import keys
from autoglm.security.auth import bootstrap
from autoglm.settings import Settings
from autoglm.store.db import Database, database_url


def test_key_format_and_checksum() -> None:
    key = keys.generate_key()
    assert key.startswith("agk_") and len(key) == 53
    assert keys.well_formed(key)
    tampered = key[:10] + ("A" if key[10] != "A" else "B") + key[11:]
    assert not keys.well_formed(tampered)
    assert keys.generate_key() != key


def _db(settings: Settings) -> Database:
    db = Database(database_url(settings))
    db.upgrade()
    return db


async def test_first_start_generates_key_and_stores_only_its_hash(tmp_path) -> None:
    shown: list[str] = []
    settings = Settings(data_dir=tmp_path)
    db = _db(settings)
    auth = bootstrap(settings, lambda key, where: shown.append(key), db)
    assert len(shown) == 1
    key = shown[0]
    assert keys.well_formed(key)
    for f in tmp_path.rglob("*"):
        if f.is_file():
            assert key.encode() not in f.read_bytes(), f
    assert stat.S_IMODE((tmp_path / "secrets" / "pepper").stat().st_mode) == 0o600
    ident = await auth.authenticate(f"Bearer {key}")
    assert ident.id == "prn_platform_admin" and "platform_admin" in ident.roles
    # second start (a new process): nothing printed, the same key still works
    again = bootstrap(settings, lambda key, where: shown.append(key), _db(settings))
    assert len(shown) == 1
    assert (await again.authenticate(f"Bearer {key}")).id == "prn_platform_admin"


def test_a_cli_command_before_the_first_serve_makes_no_unseen_admin_key(tmp_path) -> None:
    """The in-process CLI (``autoglm tenants create`` on the database) generated an admin
    key that nobody ever saw, so the first ``serve`` printed none."""
    from typer.testing import CliRunner

    from autoglm.cli.main import app

    result = CliRunner().invoke(app, ["tenants", "create", "bank", "--json"],
                                env={"AUTOGLM_DATA_DIR": str(tmp_path)})
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["name"] == "bank"  # logs may go to stderr
    shown: list[str] = []
    settings = Settings(data_dir=tmp_path)
    bootstrap(settings, lambda key, where: shown.append(key), _db(settings))
    assert len(shown) == 1 and keys.well_formed(shown[0])  # the first serve shows one


ENV_KEY = "from-env-secret-0123456789abcdef-0123456789"


async def test_env_admin_key_is_used_and_nothing_generated(tmp_path) -> None:
    shown: list[str] = []
    settings = Settings(data_dir=tmp_path, admin_key=ENV_KEY)
    auth = bootstrap(settings, lambda key, where: shown.append(key), _db(settings))
    assert shown == []
    assert (await auth.authenticate(f"Bearer {ENV_KEY}")).id == "prn_platform_admin"
    with pytest.raises(AuthenticationError):
        await auth.authenticate(f"Bearer {ENV_KEY[:-1]}X")


def test_a_weak_admin_key_is_refused(tmp_path) -> None:
    from pydantic import ValidationError

    for weak in ("admin", "x" * 31, "agk_notachecksummedkey"):
        with pytest.raises(ValidationError, match="too weak"):
            Settings(data_dir=tmp_path, admin_key=weak)
    assert Settings(data_dir=tmp_path, admin_key=keys.generate_key()).admin_key
    assert Settings(data_dir=tmp_path, admin_key="y" * 32).admin_key


async def test_changing_the_admin_key_revokes_the_previous_one_and_is_audited(tmp_path) -> None:
    first, second = ENV_KEY, "second-env-secret-0123456789abcdef-0123"
    db = _db(Settings(data_dir=tmp_path))
    bootstrap(Settings(data_dir=tmp_path, admin_key=first), lambda k, w: None, db)
    auth = bootstrap(Settings(data_dir=tmp_path, admin_key=second), lambda k, w: None, db)
    assert (await auth.authenticate(f"Bearer {second}")).id == "prn_platform_admin"
    with pytest.raises(AuthenticationError):
        await auth.authenticate(f"Bearer {first}")
    from autoglm.audit import AuditPaths, verify

    with db.session() as s:
        from autoglm.store.models import AuditRecord

        actions = [r.action for r in s.query(AuditRecord).order_by(AuditRecord.seq)]
    assert actions == ["admin_key.create", "admin_key.replace"]
    assert verify(db, AuditPaths.under(tmp_path)).intact
    with db.session() as s:
        from sqlalchemy import select

        from autoglm.store.models import ApiKey
        displays = s.scalars(select(ApiKey.display)).all()
    for secret in (first, second):  # what is stored to recognise a key is a short prefix
        assert all(secret not in d and len(d.rstrip("…")) <= len(secret) // 4 for d in displays)


async def test_key_from_the_earlier_json_record_keeps_working(tmp_path) -> None:
    settings = Settings(data_dir=tmp_path)
    pepper = keys.load_or_create_pepper(tmp_path / "secrets" / "pepper")
    old = keys.generate_key()
    keys.write_secret_file(tmp_path / "secrets" / "admin_key.json",
                           json.dumps({"hash": keys.hash_key(pepper, old)}).encode())
    shown: list[str] = []
    auth = bootstrap(settings, lambda key, where: shown.append(key), _db(settings))
    assert shown == []
    assert (await auth.authenticate(f"Bearer {old}")).id == "prn_platform_admin"


async def test_disabled_auth_needs_the_loud_flag(tmp_path) -> None:
    settings = Settings(data_dir=tmp_path, dangerously_disable_auth=True)
    auth = bootstrap(settings, print, _db(settings))
    assert auth.disabled
    assert (await auth.authenticate(None)).id == "anonymous"
