"""deploy/docker-entrypoint.sh (secrets from files, shared audit keys) and
deploy/healthcheck.py, run here with the same /bin/sh and Python the image has."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from autoglm.settings import Settings
from tests.deploy.support import ENTRYPOINT, HEALTHCHECK

ENV_DUMP = [sys.executable, "-c", "import json, os; print(json.dumps(dict(os.environ)))"]


def run_entrypoint(env: dict[str, str], argv: list[str] = ENV_DUMP):
    base = {"PATH": os.environ["PATH"], "HOME": "/tmp"}
    return subprocess.run(["sh", str(ENTRYPOINT), *argv], env={**base, **env},
                          check=False, capture_output=True, text=True, timeout=60)


def secret_names() -> list[str]:
    text = ENTRYPOINT.read_text()
    return re.search(r"^for name in ([A-Z_ ]+); do", text, re.MULTILINE).group(1).split()


def test_each_secret_file_name_is_a_setting_and_never_one_ending_in_file() -> None:
    fields = Settings.model_fields
    for name in secret_names():
        assert name.lower() in fields, name
        assert f"{name.lower()}_file" not in fields, f"AUTOGLM_{name}_FILE is a setting"
    # the settings that are paths ending in _file are not in the list
    assert "model_key_file" in fields and "MODEL_KEY" not in secret_names()


def test_file_contents_become_settings_and_the_file_variables_go(tmp_path: Path) -> None:
    (tmp_path / "pepper").write_text("pepper-value-with-$dollar and space\n")
    (tmp_path / "models").write_text('[\n {"id": "m",\n  "engine": "llamacpp"}\n]\n')
    r = run_entrypoint({"AUTOGLM_KEY_PEPPER_FILE": str(tmp_path / "pepper"),
                        "AUTOGLM_MODELS_FILE": str(tmp_path / "models"),
                        "AUTOGLM_MODEL_KEY_FILE": "/etc/model.pem",
                        "AUTOGLM_POLICY_FILE": "/etc/policy.yaml"})
    assert r.returncode == 0, r.stderr
    env = json.loads(r.stdout)
    assert env["AUTOGLM_KEY_PEPPER"] == "pepper-value-with-$dollar and space"  # newline dropped
    assert json.loads(env["AUTOGLM_MODELS"]) == [{"id": "m", "engine": "llamacpp"}]
    assert "AUTOGLM_KEY_PEPPER_FILE" not in env and "AUTOGLM_MODELS_FILE" not in env
    # settings that are themselves paths are passed on untouched
    assert env["AUTOGLM_MODEL_KEY_FILE"] == "/etc/model.pem"
    assert env["AUTOGLM_POLICY_FILE"] == "/etc/policy.yaml"
    assert "AUTOGLM_MODEL_KEY" not in env and "AUTOGLM_POLICY" not in env


def test_missing_file_and_double_source_are_refused(tmp_path: Path) -> None:
    r = run_entrypoint({"AUTOGLM_ADMIN_KEY_FILE": str(tmp_path / "absent")})
    assert r.returncode == 66 and "cannot read" in r.stderr
    (tmp_path / "k").write_text("x" * 40)
    r = run_entrypoint({"AUTOGLM_ADMIN_KEY_FILE": str(tmp_path / "k"),
                        "AUTOGLM_ADMIN_KEY": "y" * 40})
    assert r.returncode == 64 and "use one" in r.stderr


def test_audit_keys_are_copied_private_once_and_a_different_one_is_refused(
        tmp_path: Path) -> None:
    src = tmp_path / "mounted"
    src.mkdir()
    for name in ("audit_hmac_key", "audit_signing_key.pem", "personal_data_key"):
        (src / name).write_text(f"{name}-content\n")
        (src / name).chmod(0o440)  # as a Kubernetes Secret volume with fsGroup has them
    data = tmp_path / "data"
    env = {"AUDIT_KEYS_DIR": str(src), "AUTOGLM_DATA_DIR": str(data)}
    for _ in range(2):  # a restarted pod finds its copies already there
        r = run_entrypoint(env)
        assert r.returncode == 0, r.stderr
        assert "AUDIT_KEYS_DIR" not in json.loads(r.stdout)
    for name in ("audit_hmac_key", "audit_signing_key.pem", "personal_data_key"):
        copy = data / "secrets" / name
        assert copy.read_text() == f"{name}-content\n"
        assert stat.S_IMODE(copy.stat().st_mode) == 0o600
    assert stat.S_IMODE((data / "secrets").stat().st_mode) == 0o700
    (data / "secrets" / "audit_hmac_key").write_text("another key\n")
    r = run_entrypoint(env)
    assert r.returncode == 65 and "two keys" in r.stderr


def test_settings_from_files_reach_autoglm(tmp_path: Path) -> None:
    admin = "entrypoint-admin-key-0123456789abcdefghijkl"
    (tmp_path / "admin").write_text(admin + "\n")
    (tmp_path / "db").write_text(f"sqlite:///{tmp_path}/control.db\n")
    autoglm = str(Path(sys.executable).with_name("autoglm"))
    r = run_entrypoint({"AUTOGLM_ADMIN_KEY_FILE": str(tmp_path / "admin"),
                        "AUTOGLM_DATABASE_URL_FILE": str(tmp_path / "db"),
                        "AUTOGLM_DATA_DIR": str(tmp_path / "data")},
                       [autoglm, "config", "show", "--json"])
    assert r.returncode == 0, r.stderr
    shown = json.loads(r.stdout)
    assert shown["admin_key"] and admin not in r.stdout  # set, and masked
    assert shown["database_url"]
    (tmp_path / "weak").write_text("short\n")
    r = run_entrypoint({"AUTOGLM_ADMIN_KEY_FILE": str(tmp_path / "weak")},
                       [autoglm, "config", "show", "--json"])
    assert r.returncode != 0 and "too weak" in r.stderr


def test_healthcheck_fails_when_nothing_listens() -> None:
    import socket

    with socket.socket() as s:  # a port that was free a moment ago
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r = subprocess.run([sys.executable, str(HEALTHCHECK)], check=False, capture_output=True, text=True,
                       env={"AUTOGLM_PORT": str(port), "AUTOGLM_HOST": "127.0.0.1"},
                       timeout=30)
    assert r.returncode == 1 and f":{port}/healthz" in r.stderr


@pytest.mark.parametrize("host, url_host", [("0.0.0.0", "127.0.0.1"), ("::", "[::1]"),
                                            ("127.0.0.2", "127.0.0.2")])
def test_healthcheck_asks_its_own_address(host: str, url_host: str) -> None:
    r = subprocess.run([sys.executable, str(HEALTHCHECK)], check=False, capture_output=True, text=True,
                       env={"AUTOGLM_PORT": "1", "AUTOGLM_HOST": host}, timeout=30)
    assert r.returncode == 1 and f"http://{url_host}:1/healthz" in r.stderr
