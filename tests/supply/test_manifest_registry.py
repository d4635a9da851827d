import hashlib
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from autoglm.cli.main import app
from autoglm.errors import ConfigError, NotFoundError
from autoglm.supply import manifest as mf
from autoglm.supply.registry import Registry


def make_model(root: Path) -> Path:
    (root / "sub").mkdir(parents=True)
    (root / "model.Q8_0.gguf").write_bytes(b"GGUF" + bytes(range(256)) * 5000)
    (root / "config.json").write_text('{"a": 1}')
    (root / "sub" / "tokenizer.json").write_text("{}")
    (root / "x.incomplete").write_text("partial download, not part of the model")
    return root


def test_manifest_hashes_every_file_exactly(tmp_path: Path) -> None:
    root = make_model(tmp_path / "m")
    seen = []
    man = mf.build(root, progress=seen.append)
    paths = [f["path"] for f in man["files"]]
    assert paths == ["config.json", "model.Q8_0.gguf", "sub/tokenizer.json"]
    gguf = root / "model.Q8_0.gguf"
    entry = next(f for f in man["files"] if f["path"] == "model.Q8_0.gguf")
    assert entry["sha256"] == hashlib.sha256(gguf.read_bytes()).hexdigest()
    assert entry["size"] == gguf.stat().st_size
    assert sum(seen) == man["total_size"]


def test_verify_reports_changed_missing_extra(tmp_path: Path) -> None:
    root = make_model(tmp_path / "m")
    man = mf.build(root)
    assert mf.verify(root, man).intact
    data = bytearray((root / "model.Q8_0.gguf").read_bytes())
    data[1000] ^= 0xFF  # same size, one byte flipped
    (root / "model.Q8_0.gguf").write_bytes(bytes(data))
    (root / "config.json").unlink()
    (root / "new.bin").write_text("x")
    fast = mf.verify(root, man, full=False)  # the load-time check only sees sizes
    assert fast.changed == [] and fast.missing == ["config.json"]
    full = mf.verify(root, man)
    assert (full.changed, full.missing, full.extra) == (["model.Q8_0.gguf"], ["config.json"],
                                                        ["new.bin"])
    assert not full.intact


def test_registry_add_list_verify_remove(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "data")
    root = make_model(tmp_path / "m")
    entry = reg.add(root, "mine")
    assert (entry["format"], entry["quantization"]) == ("gguf", "Q8_0")
    assert [e["name"] for e in reg.list()] == ["mine"]
    with pytest.raises(ConfigError, match="already registered"):
        reg.add(root, "mine")
    with pytest.raises(ConfigError, match="invalid model name"):
        reg.add(root, "../escape")
    (root / "config.json").write_text('{"a": 2}')
    assert not reg.verify("mine").intact
    assert reg.get("mine")["verified"]["intact"] is False
    reg.remove("mine")
    with pytest.raises(NotFoundError):
        reg.get("mine")
    assert root.exists()  # files are left alone


def test_cli_verify_exit_status(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTOGLM_DATA_DIR", str(tmp_path / "data"))
    root = make_model(tmp_path / "m")
    run = CliRunner().invoke
    assert run(app, ["model", "add", str(root), "--name", "m1"]).exit_code == 0
    ok = run(app, ["model", "verify", "m1", "--json"])
    assert ok.exit_code == 0 and json.loads(ok.stdout)["intact"] is True
    (root / "sub" / "tokenizer.json").unlink()
    bad = run(app, ["model", "verify", "m1", "--json"])
    assert bad.exit_code == 1 and json.loads(bad.stdout)["missing"] == ["sub/tokenizer.json"]
    listed = run(app, ["model", "list", "--json"])
    assert json.loads(listed.stdout)[0]["verified"]["intact"] is False
    missing = run(app, ["model", "verify", "nope"])
    assert missing.exit_code == 1 and "no model named 'nope'" in missing.output
