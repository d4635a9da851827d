"""The bundle's own install.py, run as on the offline machine: what it refuses runs no code.

Bundles here are real ``bundle.create`` output with a tiny model and two tiny wheels
(``wheelhouse=``) instead of autoglm's ~60 (that full path, through pip and ``serve``, is
``tests/e2e/test_e2e_bundle.py``)."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from autoglm.errors import IntegrityError
from autoglm.supply import bundle
from autoglm.supply import bundle_installer as bi
from autoglm.supply import manifest as mf
from autoglm.supply.registry import Registry


def make_wheel(where: Path, name: str, version: str, requires: tuple[str, ...] = (),
               body: str = "") -> Path:
    """A minimal, valid pure-Python wheel with one module ``name``."""
    files = {f"{name}/__init__.py": f"VERSION = {version!r}\n{body}".encode(),
             f"{name}-{version}.dist-info/METADATA": (
                 f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
                 + "".join(f"Requires-Dist: {r}\n" for r in requires)).encode(),
             f"{name}-{version}.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\n"
                                                  b"Root-Is-Purelib: true\nTag: py3-none-any\n"}
    record = "".join(
        f"{p},sha256={base64.urlsafe_b64encode(hashlib.sha256(d).digest()).rstrip(b'=').decode()}"
        f",{len(d)}\n" for p, d in files.items())
    record += f"{name}-{version}.dist-info/RECORD,,\n"
    path = where / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        for p, d in files.items():
            zf.writestr(p, d)
        zf.writestr(f"{name}-{version}.dist-info/RECORD", record)
    return path


def hostile_sdist(where: Path, marker: Path, fmt: str) -> Path:
    """``autoglm-99.0``, an sdist newer than any autoglm wheel, whose setup.py (also its
    in-tree build backend, so that no setuptools is needed) writes ``marker`` as soon as
    anything imports it: whatever builds it runs the code."""
    code = f"open({str(marker)!r}, 'w').write('ran')\n"
    members = {"autoglm-99.0/setup.py": code.encode(),
               "autoglm-99.0/pyproject.toml": b'[build-system]\nrequires = []\n'
                                             b'build-backend = "setup"\nbackend-path = ["."]\n',
               "autoglm-99.0/PKG-INFO": b"Metadata-Version: 2.1\nName: autoglm\n"
                                        b"Version: 99.0\n"}
    path = where / f"autoglm-99.0.{fmt}"
    if fmt == "zip":
        with zipfile.ZipFile(path, "w") as zf:
            for p, d in members.items():
                zf.writestr(p, d)
    else:
        with tarfile.open(path, "w:gz") as tf:
            for p, d in members.items():
                info = tarfile.TarInfo(p)
                info.size = len(d)
                tf.addfile(info, io.BytesIO(d))
    return path


def relist(out: Path, extra: dict[str, Path] | None = None) -> None:
    """Rewrite bundle.json and SHA256SUMS to list what is there now (and ``extra``: path as
    listed -> the file it names), as someone who can write to the bundle would."""
    meta = json.loads((out / "bundle.json").read_text())
    present, _ = bi.scan(out)
    files = {rel: {"size": (out / rel).stat().st_size, "sha256": mf.sha256_file(out / rel)}
             for rel in present if rel not in bi.OWN}
    for rel, path in (extra or {}).items():
        files[rel] = {"size": path.stat().st_size, "sha256": mf.sha256_file(path)}
    meta["files"] = files
    (out / "bundle.json").write_text(json.dumps(meta))
    sums = {**{rel: m["sha256"] for rel, m in files.items()},
            "bundle.json": mf.sha256_file(out / "bundle.json")}
    (out / "SHA256SUMS").write_text("".join(f"{h}  {rel}\n" for rel, h in sums.items()))


@pytest.fixture
def made(tmp_path: Path) -> Path:
    model = tmp_path / "m"
    model.mkdir()
    (model / "weights.bin").write_bytes(b"w" * 4096)
    (model / "config.json").write_text("{}")
    reg = Registry(tmp_path / "data")
    reg.add(model, "m")
    house = tmp_path / "house"
    house.mkdir()
    make_wheel(house, "tinya", "1.0", ("tinyb==2.0",))
    make_wheel(house, "tinyb", "2.0")
    out = tmp_path / "bundle"
    bundle.create(out, ["m"], reg, print, wheelhouse=house)
    return out


def install_sh(out: Path, *args: str, env: dict[str, str] | None = None,
               cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["/bin/sh", str(out / "install.sh"), *args], capture_output=True,
                          text=True, timeout=120, cwd=cwd or out.parent,
                          env={**os.environ, "PYTHON": sys.executable, **(env or {})})


@pytest.fixture
def only_python(tmp_path: Path) -> dict[str, str]:
    """An environment whose PATH holds python3 and nothing else: no sha256sum, no dirname."""
    bindir = tmp_path / "onlypython"
    bindir.mkdir()
    (bindir / "python3").symlink_to(sys.executable)
    env = {k: v for k, v in os.environ.items() if k != "PYTHON"}
    env["PATH"] = str(bindir)
    assert shutil.which("sha256sum", path=env["PATH"]) is None
    return env


def test_the_check_hashes_every_file_with_python_alone(made: Path, only_python) -> None:
    """No sha256sum on PATH (today's install.sh then skips its check entirely)."""
    r = subprocess.run(["/bin/sh", str(made / "install.sh"), "--check"], env=only_python,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "intact" in r.stderr
    weights = made / "models" / "m" / "weights.bin"
    weights.write_bytes(b"x" * 4096)  # same size: only the hash tells
    r = subprocess.run(["/bin/sh", str(made / "install.sh"), "--check"], env=only_python,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    assert "models/m/weights.bin: its SHA-256 differs from bundle.json" in r.stderr
    assert "nothing was installed" in r.stderr


def test_the_hostile_sdist_is_hostile(tmp_path: Path) -> None:
    """The fixture below is real: pip, building it as today's install.sh would let it
    (``--no-index --find-links``, no ``--only-binary``), runs its code."""
    marker = tmp_path / "ran"
    links = tmp_path / "links"
    links.mkdir()
    hostile_sdist(links, marker, "tar.gz")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--isolated", "--quiet", "--no-deps",
                    "--no-index", "--find-links", str(links), "-w", str(tmp_path / "w"),
                    "autoglm"], capture_output=True, timeout=120)
    assert marker.read_text() == "ran"


@pytest.mark.parametrize(("fmt", "listed"), [("tar.gz", True), ("zip", True),
                                             ("tar.gz", False)])
def test_an_sdist_in_wheels_runs_no_code_and_stops_the_install(
        made: Path, tmp_path: Path, fmt: str, listed: bool) -> None:
    marker = tmp_path / "ran"
    sdist = hostile_sdist(made / "wheels", marker, fmt)
    rel = f"wheels/{sdist.name}"
    if listed:
        relist(made)  # bundle.json and SHA256SUMS rewritten to list it with its hash
    r = install_sh(made, str(tmp_path / "venv"))
    assert r.returncode == 1
    said = ("not a wheel (refused: only wheels are installed" if listed
            else "not listed in bundle.json")
    assert f"error: {rel}: {said}" in r.stderr, r.stderr
    assert not marker.exists()
    assert not (tmp_path / "venv").exists()  # stopped before the venv, before pip
    report = bundle.verify(made)
    assert not report.intact and (rel in report.extra or any(rel in p for p in
                                                             report.problems))


@pytest.mark.parametrize("drop", ["wheels/tinyc-1.0-py3-none-any.whl", "json.py",
                                  "models/m/extra.bin"])
def test_an_unlisted_file_stops_the_install(made: Path, tmp_path: Path, drop: str) -> None:
    """Even a ``json.py`` beside install.py (which imports json) runs no code: install.sh
    runs it with ``python -I``, so the bundle's directory is not on sys.path."""
    marker = tmp_path / "ran"
    if drop.endswith(".whl"):
        make_wheel(made / "wheels", "tinyc", "1.0")
    else:
        (made / drop).write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    r = install_sh(made, str(tmp_path / "venv"))
    assert r.returncode == 1
    assert f"error: {drop}: not listed in bundle.json (refused)" in r.stderr, r.stderr
    assert not marker.exists() and not (tmp_path / "venv").exists()
    assert bundle.verify(made).extra == [drop]


@pytest.mark.parametrize(("entry", "why"), [
    ("../outside.txt", "has a '..' component"),
    ("models/../../outside.txt", "has a '..' component"),
    ("ABSOLUTE", "is an absolute path"),
    ("models//outside.txt", "has an empty or '.' component"),
])
def test_a_listed_path_leaving_the_bundle_is_refused(made: Path, tmp_path: Path, entry: str,
                                                     why: str) -> None:
    outside = tmp_path / "outside.txt"
    outside.write_text("not the bundle's")
    entry = str(outside) if entry == "ABSOLUTE" else entry
    relist(made, {entry: outside})
    r = install_sh(made, "--check")
    assert r.returncode == 1
    assert f"bundle.json lists {entry!r}, which {why} (refused)" in r.stderr, r.stderr
    assert any(entry in p and why in p for p in bundle.verify(made).problems)
    with pytest.raises(IntegrityError, match="fails verification"):
        bundle.install(made, Registry(tmp_path / "target"), print)


def test_a_link_in_the_bundle_is_refused(made: Path, tmp_path: Path) -> None:
    (tmp_path / "outside.txt").write_text("x")
    (made / "models" / "m" / "link.bin").symlink_to(tmp_path / "outside.txt")
    relist(made, {"models/m/link.bin": tmp_path / "outside.txt"})
    r = install_sh(made, "--check")
    assert r.returncode == 1
    assert "models/m/link.bin: a link (refused" in r.stderr


@pytest.mark.parametrize("path", ["../../../escaped.bin", "ABSOLUTE"])
def test_a_model_manifest_path_leaving_the_model_is_refused(made: Path, tmp_path: Path,
                                                            path: str) -> None:
    """Every hash list rewritten to match: the path itself is what is refused, and nothing
    is written outside the data directory."""
    path = str(tmp_path / "escaped.bin") if path == "ABSOLUTE" else path
    entry_path = made / "models" / "m.json"
    entry = json.loads(entry_path.read_text())
    entry["manifest"]["files"][0]["path"] = path
    entry_path.write_text(json.dumps(entry))
    relist(made)
    report = bundle.verify(made)
    assert f"model m: its manifest lists {path!r}" in " ".join(report.problems)
    target = tmp_path / "target" / "data"
    with pytest.raises(IntegrityError, match="refused"):
        bundle.install(made, Registry(target), print)
    assert not (tmp_path / "escaped.bin").exists()
    assert not (tmp_path / "target" / "escaped.bin").exists()
    assert not (target / "store").exists()


def test_pip_installs_the_listed_wheels_by_hash_and_refuses_a_swapped_one(
        made: Path, tmp_path: Path) -> None:
    """install.py's own pip arguments and requirements, on real pip: the check's wheels
    install (dependency included); a wheel changed after the check is refused by pip."""
    meta = bi.load(made)
    found = bi.check(made, meta)
    assert found.intact and set(found.wheels) == {"wheels/tinya-1.0-py3-none-any.whl",
                                                  "wheels/tinyb-2.0-py3-none-any.whl"}
    req = tmp_path / "req.txt"
    req.write_text(bi.requirements(found.wheels))
    assert all(" --hash=sha256:" in line for line in req.read_text().splitlines())

    def pip(target: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-I", "-m", "pip",
                               *bi.pip_install_args(made, req), "--target",
                               str(tmp_path / target)],
                              capture_output=True, text=True, timeout=120)

    r = pip("ok")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "ok" / "tinya" / "__init__.py").is_file()
    assert (tmp_path / "ok" / "tinyb" / "__init__.py").is_file()
    make_wheel(made / "wheels", "tinyb", "2.0", body="SWAPPED = True\n")  # same name
    r = pip("swapped")
    assert r.returncode != 0
    assert "THESE PACKAGES DO NOT MATCH THE HASHES" in r.stderr
    assert not (tmp_path / "swapped" / "tinyb").exists()


def test_requirements_refuse_what_is_not_a_wheel() -> None:
    with pytest.raises(ValueError, match="not a wheel"):
        bi.requirements({"wheels/autoglm-99.0.tar.gz": "0" * 64})
    # a name that would smuggle an option into the requirements file is not a wheel name
    assert bi.WHEEL.match("wheels/x --index-url=http:--1-py3-none-any.whl") is None


def test_a_venv_inside_the_bundle_is_refused(made: Path) -> None:
    r = install_sh(made, str(made / "venv"))
    assert r.returncode == 2 and "inside the bundle" in r.stderr
    assert not (made / "venv").exists()


def test_install_py_uses_the_standard_library_only() -> None:
    """install.py runs before autoglm (or anything) is installed."""
    code = ("import sys, runpy; before = set(sys.modules); "
            f"runpy.run_path({bi.__file__!r}); "
            "bad = [m for m in set(sys.modules) - before if m.split('.')[0] not in "
            "sys.stdlib_module_names]; print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
