import json
import stat

from autoglm.security import keys
from autoglm.security.auth import bootstrap
from autoglm.settings import Settings


def test_key_format_and_checksum() -> None:
    key = keys.generate_key()
    assert key.startswith("agk_") and len(key) == 53
    assert keys.well_formed(key)
    tampered = key[:10] + ("A" if key[10] != "A" else "B") + key[11:]
    assert not keys.well_formed(tampered)
    assert keys.generate_key() != key


def test_first_start_generates_key_and_stores_only_its_hash(tmp_path) -> None:
    shown: list[str] = []
    settings = Settings(data_dir=tmp_path)
    auth = bootstrap(settings, lambda key, record: shown.append(key))
    assert len(shown) == 1
    key = shown[0]
    record = tmp_path / "secrets" / "admin_key.json"
    assert key not in record.read_text()
    assert stat.S_IMODE(record.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "secrets" / "pepper").stat().st_mode) == 0o600
    assert auth.authenticate(f"Bearer {key}").id == "admin"
    # second start: nothing printed, same key still works
    again = bootstrap(settings, lambda key, record: shown.append(key))
    assert len(shown) == 1
    assert again.authenticate(f"Bearer {key}").id == "admin"
    assert json.loads(record.read_text())["hash"] != key


def test_env_admin_key_is_used_and_nothing_generated(tmp_path) -> None:
    shown: list[str] = []
    settings = Settings(data_dir=tmp_path, admin_key="from-env-secret")
    auth = bootstrap(settings, lambda key, record: shown.append(key))
    assert shown == []
    assert auth.authenticate("Bearer from-env-secret").id == "admin"
    assert not (tmp_path / "secrets" / "admin_key.json").exists()


def test_disabled_auth_needs_the_loud_flag(tmp_path) -> None:
    auth = bootstrap(Settings(data_dir=tmp_path, dangerously_disable_auth=True), print)
    assert auth.disabled
    assert auth.authenticate(None).id == "anonymous"
