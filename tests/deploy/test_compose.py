"""deploy/compose.yaml: validated against the Compose Specification's JSON schema (the copy
check-jsonschema vendors), then its structure; deploy/make-secrets.sh and deploy/settings/
run through the image's entrypoint and autoglm's own settings loader. Offline."""

from __future__ import annotations

import importlib.resources
import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from autoglm.settings import Settings, load_settings
from tests.deploy.support import DEPLOY, ENTRYPOINT

COMPOSE = DEPLOY / "compose.yaml"


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def test_valid_against_the_compose_spec_schema(compose: dict) -> None:
    pytest.importorskip("check_jsonschema", reason="check-jsonschema (the [test] extra) "
                        "vendors the compose-spec schema")
    import jsonschema

    schema_file = (importlib.resources.files("check_jsonschema.builtin_schemas.vendor")
                   / "compose-spec.json")
    schema = json.loads(schema_file.read_text())
    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = sorted(validator.iter_errors(compose), key=lambda e: list(e.path))
    assert not errors, [f"{'.'.join(map(str, e.path))}: {e.message}" for e in errors]


def test_services_and_the_optional_gpu_vllm(compose: dict) -> None:
    services = compose["services"]
    assert set(services) == {"gateway", "postgres", "redis", "vllm"}
    assert all("profiles" not in services[s] for s in ("gateway", "postgres", "redis"))
    vllm = services["vllm"]
    assert vllm["profiles"] == ["vllm"]
    (device,) = vllm["deploy"]["resources"]["reservations"]["devices"]
    assert device["capabilities"] == ["gpu"] and device["driver"] == "nvidia"
    # the vLLM pool settings name the compose service as its upstream
    pool = load_settings(DEPLOY / "settings" / "vllm-pool.yaml")
    (upstream,) = [m for m in pool.models if m.engine == "vllm"]
    assert upstream.instances[0].url == "http://vllm:8000/v1"
    port = vllm["command"][vllm["command"].index("--port") + 1]
    assert port == "8000"


def test_gateway_container_is_locked_down(compose: dict) -> None:
    gw = compose["services"]["gateway"]
    assert gw["build"] == {"context": "..", "dockerfile": "deploy/Dockerfile"}
    assert (DEPLOY / ".." / gw["build"]["dockerfile"]).resolve() == DEPLOY / "Dockerfile"
    assert gw["read_only"] is True and gw["user"] == "10001:10001"
    assert any(t.startswith("/tmp:") for t in gw["tmpfs"])
    assert gw["cap_drop"] == ["ALL"] and "no-new-privileges:true" in gw["security_opt"]
    mounts = {v["target"]: v for v in gw["volumes"]}
    assert mounts["/var/lib/autoglm"]["type"] == "volume"
    assert mounts["/var/lib/autoglm"]["source"] in compose["volumes"]
    assert mounts["/etc/autoglm"]["read_only"] is True
    assert (DEPLOY / mounts["/etc/autoglm"]["source"]).is_dir()
    assert gw["healthcheck"]["test"][-1] == "/usr/local/lib/autoglm/healthcheck.py"
    assert {s: c["condition"] for s, c in gw["depends_on"].items()} == {
        "postgres": "service_healthy", "redis": "service_healthy"}
    for name in ("postgres", "redis"):
        assert compose["services"][name]["healthcheck"]["test"]
    # only the gateway is on a network that leaves the host
    assert compose["networks"]["backend"]["internal"] is True
    for name in ("postgres", "redis", "vllm"):
        assert compose["services"][name]["networks"] == ["backend"]


def test_environment_names_are_real_settings_and_secrets_come_from_files(
        compose: dict) -> None:
    fields = Settings.model_fields
    file_settings = re.search(r"^for name in ([A-Z_ ]+); do", ENTRYPOINT.read_text(),
                              re.MULTILINE).group(1).split()
    declared = compose["secrets"]
    for name, service in compose["services"].items():
        mounted = {f"/run/secrets/{s}" for s in service.get("secrets", [])}
        assert set(service.get("secrets", [])) <= set(declared), name
        for var, value in (service.get("environment") or {}).items():
            if var.endswith("_FILE") and isinstance(value, str) and value.startswith(
                    "/run/secrets/"):
                assert value in mounted, f"{name}: {var} names a secret it does not mount"
            if var.startswith("AUTOGLM_"):
                setting = var.removeprefix("AUTOGLM_").lower()
                if var.endswith("_FILE") and setting.removesuffix("_file").upper() in \
                        file_settings:
                    continue
                assert setting in fields or setting == "config", f"{name}: {var}"
        assert not any(re.search(r"PASSWORD|PEPPER|ADMIN_KEY|_URL$", k) and
                       not k.endswith("_FILE") for k in service.get("environment") or {}), name
    gw_env = compose["services"]["gateway"]["environment"]
    assert {"AUTOGLM_KEY_PEPPER_FILE", "AUTOGLM_ADMIN_KEY_FILE", "AUTOGLM_DATABASE_URL_FILE",
            "AUTOGLM_REDIS_URL_FILE"} <= set(gw_env)
    config = gw_env["AUTOGLM_CONFIG"]  # /etc/autoglm/${AUTOGLM_SETTINGS:-gateway.yaml}
    default = re.search(r"\$\{AUTOGLM_SETTINGS:-([^}]+)\}", config).group(1)
    assert (DEPLOY / "settings" / default).is_file()


def test_settings_files_load(tmp_path: Path) -> None:
    for path in sorted((DEPLOY / "settings").glob("*.yaml")):
        settings = load_settings(path)
        assert settings.workers >= 1, path


def test_make_secrets_creates_every_compose_secret_consistently(
        compose: dict, tmp_path: Path) -> None:
    out = tmp_path / "secrets"
    r = subprocess.run(["sh", str(DEPLOY / "make-secrets.sh"), str(out)],
                       check=False, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    wanted = {Path(s["file"]).name for s in compose["secrets"].values()}
    assert {p.name for p in out.iterdir()} == wanted
    for name, s in compose["secrets"].items():
        assert Path(s["file"]).parent == Path("secrets"), name
    assert stat.S_IMODE(out.stat().st_mode) == 0o700
    read = {p.name: p.read_text().strip() for p in out.iterdir()}
    assert read["database_url"] == (f"postgresql+psycopg://autoglm:{read['postgres_password']}"
                                    "@postgres:5432/autoglm")
    assert read["redis_url"] == f"redis://:{read['redis_password']}@redis:6379/0"
    # a second run keeps what exists
    again = subprocess.run(["sh", str(DEPLOY / "make-secrets.sh"), str(out)],
                           check=False, capture_output=True, text=True, timeout=60)
    assert again.returncode == 0 and again.stdout == ""
    assert {p.name: p.read_text().strip() for p in out.iterdir()} == read
    # the gateway's view: its environment, its secrets at /run/secrets, its settings file
    gw_env = compose["services"]["gateway"]["environment"]
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path),
           "AUTOGLM_DATA_DIR": str(tmp_path / "data"),
           "AUTOGLM_CONFIG": str(DEPLOY / "settings" / "gateway.yaml")}
    for var, value in gw_env.items():
        if var.endswith("_FILE"):
            env[var] = str(out / Path(value).name)
    autoglm = str(Path(sys.executable).with_name("autoglm"))
    r = subprocess.run(["sh", str(ENTRYPOINT), autoglm, "config", "show", "--json"],
                       env=env, check=False, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr  # e.g. the generated admin key is strong enough
    shown = json.loads(r.stdout)
    for name in ("key_pepper", "admin_key", "database_url", "redis_url"):
        assert shown[name], name
    assert read["key_pepper"] not in r.stdout
