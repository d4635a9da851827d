"""Load-time integrity: the bytes loaded are the bytes checked (issue: a registered, signed
model with one byte changed in place was served, and /readyz called it verified)."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest

from autoglm.api.app import create_app
from autoglm.engine.catalog import embedded_model_path
from autoglm.errors import ConfigError, IntegrityError
from autoglm.supply import signing
from autoglm.supply.integrity import load_verified
from autoglm.supply.registry import Registry
from tests.conftest import make_settings, start_app
from tests.supply.test_signing import keypair

pytestmark = pytest.mark.model


def _read(src: str) -> bytes:
    with open(src, "rb") as fh:
        return fh.read()


def test_a_file_replaced_at_its_path_after_the_check_is_not_the_one_loaded(tmp_path) -> None:
    path = tmp_path / "m.bin"
    path.write_bytes(b"approved" * 1000)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    evil = tmp_path / "evil.bin"
    evil.write_bytes(b"EVIL" * 2000)

    seen: list[bytes] = []

    def swap_then_load(src: str) -> bytes:
        os.replace(evil, path)  # the path now names other bytes
        seen.append(_read(src))
        return seen[-1]

    with pytest.raises(IntegrityError, match="replaced while it was loaded"):
        load_verified(path, digest, 8000, swap_then_load, lambda _: None)
    assert seen == [b"approved" * 1000]  # the loader read the checked bytes, never the new
    path.write_bytes(b"approved" * 1000)
    loaded, record = load_verified(path, digest, 8000, _read, lambda _: None)
    assert loaded == b"approved" * 1000
    assert record["sha256"] == digest and record["checked_at"]


def test_a_write_into_the_file_during_the_load_refuses_it(tmp_path) -> None:
    path = tmp_path / "m.bin"
    path.write_bytes(b"approved" * 1000)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    unloaded = []

    def write_then_load(src: str) -> bytes:
        with path.open("r+b") as fh:  # same inode, same size: only ctime tells
            fh.write(b"E")
        return _read(src)

    with pytest.raises(IntegrityError, match="written or replaced while it was loaded"):
        load_verified(path, digest, 8000, write_then_load, unloaded.append)
    assert len(unloaded) == 1


def test_bytes_that_do_not_hash_right_are_never_parsed(tmp_path) -> None:
    path = tmp_path / "m.bin"
    path.write_bytes(b"x" * 100)
    calls = []
    with pytest.raises(IntegrityError, match="SHA-256"):
        load_verified(path, "0" * 64, 100, calls.append, lambda _: None)
    with pytest.raises(IntegrityError, match="bytes"):
        load_verified(path, "0" * 64, 99, calls.append, lambda _: None)
    assert calls == []


def test_with_a_header_hash_the_header_is_checked_before_anything_is_parsed(tmp_path) -> None:
    path = tmp_path / "m.bin"
    path.write_bytes(b"H" * 100 + b"D" * 10_000)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    head = (100, hashlib.sha256(b"H" * 100).hexdigest())
    loaded, record = load_verified(path, digest, 10_100, _read, lambda _: None, header=head)
    assert loaded == path.read_bytes() and record["header_first"] is True
    calls: list = []
    with pytest.raises(IntegrityError, match="header"):  # the parsed part differs: no load
        load_verified(path, digest, 10_100, calls.append, calls.append,
                      header=(100, hashlib.sha256(b"X" * 100).hexdigest()))
    assert calls == []
    with path.open("r+b") as fh:  # the data differs: loaded beside the hash, then refused
        fh.seek(5000)
        fh.write(b"E")
    unloaded: list = []
    with pytest.raises(IntegrityError, match="SHA-256 is"):
        load_verified(path, digest, 10_100, _read, unloaded.append, header=head)
    assert len(unloaded) == 1


@pytest.fixture
def signed_model(tmp_path: Path) -> dict:
    model = tmp_path / "smol"
    model.mkdir()
    shutil.copyfile(embedded_model_path(), model / "smol.Q4_1.gguf")
    (model / "config.json").write_text("{}")
    reg = Registry(tmp_path / "d")
    reg.add(model, "smol")
    priv, pub = keypair(tmp_path, "ops")
    signing.sign(reg, "smol", priv)
    settings = make_settings(tmp_path / "d", model="smol", model_trust="signed",
                             trusted_keys=[pub])
    return {"dir": model, "gguf": model / "smol.Q4_1.gguf", "settings": settings}


def _flip_one_byte(path: Path, offset: int) -> None:
    with path.open("r+b") as fh:
        fh.seek(offset)
        b = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([b[0] ^ 0x01]))


async def test_one_byte_changed_in_place_is_refused_at_load(signed_model) -> None:
    """Same size, same name: the start-up size check passed it before."""
    settings, gguf = signed_model["settings"], signed_model["gguf"]
    async for client in start_app(settings):  # intact: served, and says what was checked
        card = (await client.get("/v1/models/smol")).json()
        v = card["verification"]
        assert v["verified"] and v["signed_by"] and "sha256 at load" in v["checks"]
        assert v["load"]["sha256"] == hashlib.sha256(gguf.read_bytes()).hexdigest()
        assert v["load"]["checked_at"] and v["load"]["hash_ms"] >= 0
        ready = (await client.get("/readyz")).json()
        assert ready["checks"]["smol"]["verification"]["load"]["checked_at"]
    _flip_one_byte(gguf, gguf.stat().st_size // 2)
    with pytest.raises(BaseException, match="SHA-256") as err:
        async for _ in start_app(settings):
            pass
    assert "smol.Q4_1.gguf" in str(err.value)


async def test_a_file_changed_between_the_check_and_the_engine_start_is_refused(
        signed_model) -> None:
    app_settings, gguf = signed_model["settings"], signed_model["gguf"]
    create_app(app_settings)  # the gateway's checks pass ...
    _flip_one_byte(gguf, 4096)  # ... then the file changes before the engine loads it
    with pytest.raises(BaseException, match="SHA-256"):
        async for _ in start_app(app_settings):
            pass


def test_extra_files_in_a_model_directory_are_refused(signed_model) -> None:
    (signed_model["dir"] / "extra.py").write_text("import os")
    with pytest.raises(ConfigError, match="extra.py not in the manifest"):
        create_app(signed_model["settings"])


def test_every_other_file_is_hashed_at_load(signed_model) -> None:
    (signed_model["dir"] / "config.json").write_text("[]")  # same size, other bytes
    with pytest.raises(ConfigError, match="config.json does not hash"):
        create_app(signed_model["settings"])


async def test_a_registered_gguf_checks_its_header_first_and_is_refused_when_either_changed(
        tmp_path: Path) -> None:
    from autoglm.supply.gguf_header import header_size

    model = tmp_path / "smol"
    model.mkdir()
    gguf = model / "smol.Q4_1.gguf"
    shutil.copyfile(embedded_model_path(), gguf)
    entry = Registry(tmp_path / "d").add(model, "smol")
    with gguf.open("rb") as fh:
        n = header_size(fh)
    assert entry["manifest"]["files"][0]["header"]["bytes"] == n
    settings = make_settings(tmp_path / "d", model="smol")
    async for client in start_app(settings):
        load = (await client.get("/v1/models/smol")).json()["verification"]["load"]
        assert load["header_first"] is True and load["checked_at"]
    _flip_one_byte(gguf, n + 4096)  # tensor data
    with pytest.raises(BaseException, match="SHA-256 is"):
        async for _ in start_app(settings):
            pass
    _flip_one_byte(gguf, n + 4096)  # as it was
    _flip_one_byte(gguf, n // 2)  # the header: refused before llama.cpp reads it
    with pytest.raises(BaseException, match="header"):
        async for _ in start_app(settings):
            pass
