import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from autoglm.cli.main import app
from autoglm.errors import ConfigError
from autoglm.settings import Settings, load_settings


def test_defaults_are_safe(tmp_path, monkeypatch) -> None:
    s = load_settings()
    assert s.port == 8080 and s.host == "127.0.0.1"
    assert not s.dangerously_disable_auth and not s.log_prompts
    assert s.cors_allow_origins == [] and not s.tls_allow_1_2
    assert s.forwarded_allow_ips == []  # X-Forwarded-For believed from nobody


def test_forwarded_allow_ips_takes_addresses_and_networks_only() -> None:
    from autoglm.serving.server import uvicorn_config

    s = load_settings(forwarded_allow_ips=["127.0.0.1", "10.0.0.0/8", "::1"])
    cfg = uvicorn_config(s, object())
    assert cfg.proxy_headers and cfg.forwarded_allow_ips == ["127.0.0.1", "10.0.0.0/8", "::1"]
    assert not uvicorn_config(load_settings(), object()).proxy_headers
    for bad in ("*", "nginx.internal", "10.0.0.0/33"):
        with pytest.raises(ConfigError, match="forwarded_allow_ips"):
            load_settings(forwarded_allow_ips=[bad])


def test_precedence_flags_over_env_over_yaml(tmp_path: Path, monkeypatch) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("port: 9001\nslots: 3\nlog_level: debug\n")
    assert load_settings(cfg).port == 9001
    monkeypatch.setenv("AUTOGLM_PORT", "9002")
    s = load_settings(cfg)
    assert (s.port, s.slots, s.log_level) == (9002, 3, "debug")
    assert load_settings(cfg, port=9003).port == 9003


def test_yaml_errors_are_clear(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("prot: 1\n")
    with pytest.raises(ConfigError, match="unknown setting.*prot"):
        load_settings(bad)
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "missing.yaml")
    bad.write_text("port: [1\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_settings(bad)


def test_invalid_values_are_refused(monkeypatch) -> None:
    with pytest.raises(ConfigError):
        load_settings(cors_allow_origins=["*"])
    with pytest.raises(ConfigError):
        load_settings(ssl_certfile=Path("/x.pem"))
    monkeypatch.setenv("AUTOGLM_PORT", "eighty")
    with pytest.raises(ConfigError):
        load_settings()


def test_every_field_is_documented() -> None:
    for name, field in Settings.model_fields.items():
        assert field.description, name


def test_config_show_masks_secrets(monkeypatch) -> None:
    monkeypatch.setenv("AUTOGLM_ADMIN_KEY", "super-secret-value-0123456789abcdef-0123456789")
    result = CliRunner().invoke(app, ["config", "show", "--json"])
    assert result.exit_code == 0, result.output
    assert "super-secret-value" not in result.output
    data = json.loads(result.output)
    assert data["admin_key"] == "********" and data["port"] == 8080
    table = CliRunner().invoke(app, ["config", "show"])
    assert table.exit_code == 0 and "super-secret-value" not in table.output


def test_cli_reports_config_errors_in_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("nope: 1\n")
    result = CliRunner().invoke(app, ["config", "show", "--config", str(bad)])
    assert result.exit_code == 1
    assert "unknown setting" in result.output and "Traceback" not in result.output


def test_serve_refuses_missing_model_file(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["serve", "--model-path", str(tmp_path / "none.gguf"),
                                      "--data-dir", str(tmp_path)])
    assert result.exit_code == 1
    assert "model file not found" in result.output


def test_disabled_auth_only_binds_to_loopback(tmp_path) -> None:
    from autoglm.errors import ConfigError
    from autoglm.settings import load_settings

    for host in ("0.0.0.0", "10.1.2.3", "::", "example.org"):
        with pytest.raises(ConfigError, match="loopback"):
            load_settings(data_dir=tmp_path, dangerously_disable_auth=True, host=host)
    for host in ("127.0.0.1", "::1", "localhost", "127.0.0.2"):
        assert load_settings(data_dir=tmp_path, dangerously_disable_auth=True,
                             host=host).host == host
