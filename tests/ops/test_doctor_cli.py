"""`autoglm doctor` as a command: the table, `--json`'s shape, the exit status, and the
runner's bounds (a hanging or crashing check does not hide the others)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from typer.testing import CliRunner

from autoglm.cli.main import app
from autoglm.ops.doctor import Context, run_checks
from autoglm.ops.doctor.result import passed
from autoglm.settings import Settings

AUTOGLM = Path(sys.executable).with_name("autoglm")


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUTOGLM_")}
    env.update({"AUTOGLM_DATA_DIR": str(tmp_path / "data"), "AUTOGLM_NTP_SERVER": "",
                "PATH": "/usr/bin:/bin", **extra})
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_fresh_embedded_default_passes_with_exit_0(tmp_path: Path) -> None:
    t0 = time.monotonic()
    done = subprocess.run([str(AUTOGLM), "doctor", "--json"], capture_output=True, text=True,
                          env=_env(tmp_path, AUTOGLM_PORT=str(_free_port())), timeout=60,
                          check=False)
    elapsed = time.monotonic() - t0
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert report["ok"] is True and report["summary"]["fail"] == 0
    assert set(report) == {"ok", "summary", "elapsed_s", "checks"}
    assert set(report["summary"]) == {"pass", "warn", "fail", "skip"}
    ids = [c["id"] for c in report["checks"]]
    for want in ("system.python", "system.cpu", "system.memory", "system.nofile",
                 "kernel.somaxconn", "storage.disk_free", "network.port_http", "network.clock",
                 "services.database", "services.redis", "tls.certificate", "models.registry",
                 "models.served", "gpu.driver"):
        assert want in ids
    for c in report["checks"]:
        assert set(c) == {"id", "group", "status", "detail", "remedy", "data"}
        assert c["status"] in ("pass", "warn", "fail", "skip") and c["detail"]
        assert c["group"] == c["id"].split(".")[0]
        if c["status"] in ("warn", "fail"):
            assert c["remedy"]
    status = {c["id"]: c["status"] for c in report["checks"]}
    assert status["gpu.driver"] == "skip" and status["services.redis"] == "skip"
    assert report["elapsed_s"] < 10 and elapsed < 30


def test_a_taken_port_fails_with_exit_1_and_a_table(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = CliRunner().invoke(app, ["doctor", "--ntp-server", ""],
                                    env={"AUTOGLM_PORT": str(port),
                                         "AUTOGLM_DATA_DIR": str(tmp_path / "d")})
    assert result.exit_code == 1, result.output
    out = result.output
    assert "network.port_http" in out and "fail" in out and f"127.0.0.1:{port} is taken" in out
    assert "fix:" in out and "not ready" in out


def test_json_names_the_failing_check(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    result = CliRunner().invoke(app, ["doctor", "--json", "--ntp-server", ""],
                                env={"AUTOGLM_DATA_DIR": str(tmp_path / "file"),
                                     "AUTOGLM_PORT": str(_free_port())})
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert report["ok"] is False and report["summary"]["fail"] >= 1
    bad = [c for c in report["checks"] if c["status"] == "fail"]
    assert any(c["id"] == "storage.data_dir" and "is a file" in c["detail"] for c in bad)


def test_invalid_settings_are_a_failed_check_not_a_crash(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("slots: 0\n")
    result = CliRunner().invoke(app, ["doctor", "--json", "--config", str(cfg),
                                      "--ntp-server", ""],
                                env={"AUTOGLM_DATA_DIR": str(tmp_path / "d")})
    assert result.exit_code == 1
    first = json.loads(result.stdout)["checks"][0]
    assert first["id"] == "settings" and first["status"] == "fail" and "slots" in first["detail"]


def test_a_hanging_or_crashing_check_does_not_hide_the_others(tmp_path: Path) -> None:
    ctx = Context(settings=Settings(data_dir=tmp_path), ntp_server="")

    def hangs(_ctx: Context):
        time.sleep(30)

    def crashes(_ctx: Context):
        raise KeyError("boom")

    t0 = time.monotonic()
    results = run_checks(ctx, deadline_s=0.5, checks=[
        ("x.hangs", hangs), ("x.crashes", crashes), ("x.fine", lambda c: passed("x.fine", "ok"))])
    assert time.monotonic() - t0 < 2
    assert [(r.id, r.status) for r in results] == [
        ("x.hangs", "warn"), ("x.crashes", "fail"), ("x.fine", "pass")]
    assert "did not finish" in results[0].detail and "KeyError" in results[1].detail
    assert results[1].remedy
