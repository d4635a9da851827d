"""Offline bundles: everything needed to install and serve on a machine with no network.

``create`` writes one directory::

    wheels/          autoglm and every dependency, as wheels for this Python and platform
                     (llama-cpp-python as the wheel built here), pinned to the versions
                     installed in this environment; wheels only, never an sdist
    models/NAME/     each model's files; models/NAME.json its registry entry and manifest;
                     models/NAME.sig its signature, if it is signed
    sbom.cdx.json    CycloneDX SBOM of the wheels and models
    install.py       the check and installer, standard library only (``bundle_installer``)
    install.sh       finds Python and runs install.py with it; needs nothing else
    bundle.json      what the bundle holds, with the SHA-256 and size of every file
    SHA256SUMS       the same hashes, for ``sha256sum --check`` by hand

It is written under a temporary name and renamed when complete, so a bundle that looks
complete is complete. ``verify`` runs install.py's check (every file hashed, unlisted files,
links, non-wheels and paths leaving the bundle refused) and cross-checks the SBOM and the
model manifests; ``install`` (run by install.py once pip is done) verifies, then registers
the models.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from autoglm import __version__
from autoglm.errors import ConfigError, IntegrityError, NotFoundError
from autoglm.supply import bundle_installer as bi
from autoglm.supply import manifest as mf
from autoglm.supply import sbom
from autoglm.supply.registry import Registry
from autoglm.supply.signing import signature_path, verify_files

FORMAT = bi.FORMAT
Log = Callable[[str], None]


def _python() -> str:
    return f"{sys.version_info[0]}.{sys.version_info[1]}"


def _project_source() -> str:
    """Where pip can build or take autoglm itself from: a source tree or a wheel."""
    try:
        raw = importlib.metadata.distribution("autoglm").read_text("direct_url.json")
    except importlib.metadata.PackageNotFoundError:
        raw = None
    if raw:
        url = json.loads(raw).get("url", "")
        if url.startswith("file://"):
            path = Path(unquote(urlsplit(url).path))
            if (path / "pyproject.toml").is_file() or path.suffix == ".whl" and path.is_file():
                return str(path)
    raise ConfigError("cannot find autoglm's source tree or wheel to put in the bundle; run "
                      "`autoglm bundle create` from an install made with `pip install -e .` or "
                      "from a wheel file")


def _constraints(path: Path) -> None:
    """Pin every distribution installed here, so the bundle holds the tested versions."""
    pins = {}
    for dist in importlib.metadata.distributions():
        name = re.sub(r"[-_.]+", "-", dist.metadata["Name"] or "").lower()
        if name and name != "autoglm":
            pins[name] = f"{name}=={dist.version}"
    path.write_text("\n".join(sorted(pins.values())) + "\n")


def _wheels(dest: Path, log: Log) -> None:
    dest.mkdir(parents=True)
    with tempfile.TemporaryDirectory() as tmp:
        constraints = Path(tmp) / "constraints.txt"
        _constraints(constraints)
        cmd = [sys.executable, "-m", "pip", "wheel", "--progress-bar", "off",
               "--disable-pip-version-check", "--wheel-dir", str(dest), "-c", str(constraints),
               _project_source()]
        log("collecting wheels with pip (llama-cpp-python from pip's cache when built before)")
        tail: deque[str] = deque(maxlen=15)
        with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) as proc:
            for line in proc.stdout or []:
                line = line.rstrip()
                tail.append(line)
                if line.startswith(("Collecting", "Saved", "Building wheel", "Using cached")):
                    log("  " + line.strip())
        if proc.returncode != 0:
            said = " | ".join(t for t in tail if t.strip())
            raise ConfigError(f"pip wheel failed: {said[-600:]}")
    if not list(dest.glob("autoglm-*.whl")):
        raise ConfigError("pip wheel did not produce autoglm's own wheel")


def _copy_model(registry: Registry, name: str, dest: Path, log: Log) -> dict[str, Any]:
    """Copy a registered model, checking every byte against its manifest on the way."""
    entry = registry.get(name)
    root = Path(entry["path"])
    target = dest / name
    log(f"copying model {name} ({entry['manifest']['total_size']:,} bytes), checking its "
        "manifest")
    for f in entry["manifest"]["files"]:
        src = root if root.is_file() else root / f["path"]
        if not src.is_file():
            raise IntegrityError(f"model '{name}': {f['path']} is missing; run `autoglm model "
                                 f"verify {name}`")
        if mf.copy_file(src, target / f["path"]) != f["sha256"]:
            raise IntegrityError(f"model '{name}': {f['path']} changed since it was "
                                 f"registered; run `autoglm model verify {name}`")
    bundled = {**entry, "path": f"{name}/{root.name}" if root.is_file() else name}
    sig = signature_path(registry, name)
    if entry.get("signed_by") and sig.is_file():
        shutil.copyfile(sig, dest / f"{name}.sig")
    (dest / f"{name}.json").write_text(json.dumps(bundled, indent=2))
    return bundled


def _hash_tree(root: Path) -> dict[str, dict[str, Any]]:
    present, problems = bi.scan(root)
    if problems:
        raise ConfigError(f"cannot bundle: {problems[0]}")
    return {rel: {"size": size, "sha256": mf.sha256_file(root / rel)}
            for rel, size in present.items() if rel not in bi.OWN}


def _take_wheels(wheelhouse: Path, dest: Path, log: Log) -> None:
    found = sorted(wheelhouse.glob("*.whl"))
    if not found:
        raise ConfigError(f"{wheelhouse} holds no wheels (*.whl)")
    log(f"taking {len(found)} wheels from {wheelhouse}")
    dest.mkdir(parents=True)
    for path in found:
        shutil.copyfile(path, dest / path.name)


INSTALL_SH = r"""#!/bin/sh
# Install Open-AutoGLM from this bundle on a machine with no network:
#   sh install.sh [VENV_DIR [--pubkey PUB.pem ...]]      or      sh install.sh --check
# VENV_DIR defaults to ./autoglm-venv; models go to autoglm's data dir (AUTOGLM_DATA_DIR);
# --pubkey checks the models' signatures with that key and records the signer; --check
# only checks the bundle. Needs Python {python} ($PYTHON or python3) and nothing else:
# install.py hashes every file and refuses unlisted ones before anything runs, then pip
# installs the listed wheels only, each by its hash, with no index.
set -eu
case $0 in */*) HERE=${{0%/*}} ;; *) HERE=. ;; esac
HERE=$(cd "$HERE" && pwd)
PY=${{PYTHON:-python3}}
if ! command -v "$PY" >/dev/null 2>&1; then
  echo "error: $PY not found; install Python {python} or set PYTHON to one" >&2
  exit 2
fi
have=$("$PY" -I -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null) || have=unknown
if [ "$have" != "{python}" ]; then
  echo "error: this bundle holds wheels for Python {python}; $PY is Python $have (set PYTHON)" >&2
  exit 2
fi
exec "$PY" -I "$HERE/install.py" "$@"
"""


def create(out: Path, models: list[str], registry: Registry, log: Log, *,
           wheelhouse: Path | None = None) -> dict[str, Any]:
    """Write a bundle at ``out``. ``wheelhouse``: take every wheel in that directory
    instead of collecting them with ``pip wheel`` (nothing checks that they are complete)."""
    out = out.expanduser().absolute()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"{out} already exists; give a new directory")
    if not models:
        raise ConfigError("name at least one model to bundle (--model NAME)")
    for name in models:
        registry.get(name)  # a clear error before the long part
    work = out.with_name(f".{out.name}.partial")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        entries = [_copy_model(registry, name, work / "models", log) for name in models]
        if wheelhouse is None:
            _wheels(work / "wheels", log)
        else:
            _take_wheels(wheelhouse, work / "wheels", log)
        files = _hash_tree(work)
        for rel in files:
            if rel.startswith("wheels/") and not bi.WHEEL.match(rel):
                raise ConfigError(f"cannot bundle {rel}: not a wheel, or a name outside the "
                                  "wheel format; a bundle holds wheels only")
        wheels = [sbom.wheel_component(work / rel, meta["sha256"])
                  for rel, meta in files.items() if rel.startswith("wheels/")]
        doc = sbom.document(wheels, [sbom.model_component(e) for e in entries])
        (work / "sbom.cdx.json").write_text(json.dumps(doc, indent=2))
        shutil.copyfile(bi.__file__, work / "install.py")
        script = work / "install.sh"
        script.write_text(INSTALL_SH.format(python=_python()))
        script.chmod(0o755)
        for rel in ("sbom.cdx.json", "install.py", "install.sh"):
            files[rel] = {"size": (work / rel).stat().st_size,
                          "sha256": mf.sha256_file(work / rel)}
        meta = {"format": FORMAT, "created_at": datetime.now(UTC).isoformat(),
                "autoglm_version": __version__, "python": _python(),
                "platform": sysconfig.get_platform(), "models": models, "files": files}
        (work / "bundle.json").write_text(json.dumps(meta, indent=2))
        sums = {**files, "bundle.json": {"sha256": mf.sha256_file(work / "bundle.json")}}
        (work / "SHA256SUMS").write_text("".join(f"{m['sha256']}  {rel}\n"
                                                 for rel, m in sums.items()))
        if out.exists():
            out.rmdir()
        os.replace(work, out)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return meta


@dataclass
class Report(bi.Findings):
    signatures: dict[str, str] = field(default_factory=dict)


def _load(bundle: Path) -> dict[str, Any]:
    try:
        meta = json.loads((bundle / "bundle.json").read_text())
    except FileNotFoundError:
        raise ConfigError(f"{bundle} is not a bundle (no bundle.json)") from None
    except (ValueError, UnicodeDecodeError):
        raise IntegrityError(f"{bundle}/bundle.json is damaged (not JSON)") from None
    if not isinstance(meta, dict):
        raise IntegrityError(f"{bundle}/bundle.json is damaged (not an object)")
    if meta.get("format") != FORMAT:
        raise ConfigError(f"{bundle}: bundle format {meta.get('format')} is not supported "
                          f"(this autoglm reads format {FORMAT})")
    return meta


def verify(bundle: Path, pubkey: Path | None = None) -> Report:
    """install.py's check (every file hashed unless the structure is already wrong), then
    the SBOM and each model's manifest and, with ``pubkey``, its signature."""
    bundle = bundle.expanduser().absolute()
    return _verify(bundle, _load(bundle), pubkey)


def _verify(bundle: Path, meta: dict[str, Any], pubkey: Path | None) -> Report:
    report = Report(**asdict(bi.check(bundle, meta)))
    listed = meta["files"] if isinstance(meta.get("files"), dict) else {}
    _check_sbom(bundle, listed, report)
    for name in meta.get("models") or []:
        if isinstance(name, str) and bi.MODEL_NAME.match(name):
            _check_model(bundle, name, listed, report, pubkey)
    return report


def _check_sbom(bundle: Path, listed: dict[str, Any], report: Report) -> None:
    try:
        doc = json.loads((bundle / "sbom.cdx.json").read_text())
    except (OSError, ValueError):
        report.problems.append("sbom.cdx.json is missing or not JSON")
        return
    by_file = {}
    for comp in doc.get("components", []):
        for prop in comp.get("properties", []):
            if prop.get("name") == "autoglm:file":
                by_file[prop["value"]] = comp["hashes"][0]["content"]
    for rel, m in listed.items():
        sha = m.get("sha256") if isinstance(m, dict) else None
        if rel.startswith("wheels/") and by_file.get(rel) != sha:
            report.problems.append(f"the SBOM does not list {rel} with its hash")


def _entry_problems(name: str, entry: Any) -> list[str]:
    """What makes a bundled registry entry unusable: a damaged shape, or a path (its own
    or a manifest file's) that would leave ``models/NAME/``."""
    manifest = entry.get("manifest") if isinstance(entry, dict) else None
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, list) or not all(isinstance(f, dict) for f in files):
        return [f"model {name}: its registry entry is damaged (no manifest file list)"]
    out = []
    for f in files:
        if (why := bi.unsafe(f.get("path"))) is not None:
            out.append(f"model {name}: its manifest lists {f.get('path')!r}, which {why} "
                       "(refused)")
    path = entry.get("path")
    why = bi.unsafe(path)
    if why is None and path.split("/")[0] != name:
        why = f"is not under models/{name}/"
    if why is not None:
        out.append(f"model {name}: its entry's path {path!r} {why} (refused)")
    return out


def _check_model(bundle: Path, name: str, listed: dict[str, Any], report: Report,
                 pubkey: Path | None) -> None:
    try:
        entry = json.loads((bundle / "models" / f"{name}.json").read_text())
    except (OSError, ValueError):
        report.problems.append(f"model {name}: its registry entry is missing or damaged")
        return
    if refused := _entry_problems(name, entry):
        report.problems += refused
        return
    for f in entry["manifest"]["files"]:
        if (listed.get(f"models/{name}/{f['path']}") or {}).get("sha256") != f.get("sha256"):
            report.problems.append(f"model {name}: {f['path']} differs from its manifest")
    if pubkey is not None and entry.get("signed_by"):
        try:
            report.signatures[name] = verify_files(
                bundle / "models" / entry["path"], bundle / "models" / f"{name}.sig", pubkey,
                name)
        except ConfigError as exc:
            report.problems.append(f"model {name}: {exc.message}")


def install(bundle: Path, registry: Registry, log: Log,
            keys: list[Path] | None = None) -> list[dict[str, Any]]:
    """Verify the bundle, then copy and register its models. A model's signature counts
    (``signed_by``) only once it verifies with one of ``keys`` here."""
    bundle = bundle.expanduser().absolute()
    meta = _load(bundle)  # read once: everything below is checked against this copy
    report = _verify(bundle, meta, None)
    if not report.intact:
        first = report.lines()[:3]
        raise IntegrityError(f"{bundle} fails verification ({'; '.join(first)}); it was "
                             "changed or damaged")
    out = []
    for name in meta["models"]:
        raw = (bundle / "models" / f"{name}.json").read_bytes()
        if hashlib.sha256(raw).hexdigest() != meta["files"][f"models/{name}.json"]["sha256"]:
            raise IntegrityError(f"model {name}: models/{name}.json changed while installing")
        entry = json.loads(raw)
        try:
            have = registry.get(name)
        except NotFoundError:
            have = None
        if have is not None:
            if have["manifest"]["files"] != entry["manifest"]["files"]:
                raise ConfigError(f"a different model named '{name}' is already registered")
            log(f"model {name} is already installed")
            out.append(have)
            continue
        out.append(_install_model(bundle, registry, name, entry, log, keys or []))
    return out


def _install_model(bundle: Path, registry: Registry, name: str, entry: dict[str, Any],
                   log: Log, keys: list[Path]) -> dict[str, Any]:
    staging = registry.dir / ".incoming" / f"{name}.bundle"
    shutil.rmtree(staging, ignore_errors=True)
    log(f"installing model {name} ({entry['manifest']['total_size']:,} bytes)")
    for f in entry["manifest"]["files"]:
        src = bundle / "models" / name / f["path"]
        if mf.copy_file(src, staging / f["path"]) != f["sha256"]:
            raise IntegrityError(f"model {name}: {f['path']} changed while installing")
    final = registry.dir / "store" / name
    final.parent.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(staging, final)
    rel = Path(entry["path"]).relative_to(name)
    new = registry.register(name, final / rel, entry["manifest"],
                            source=entry.get("source") or "bundle",
                            revision=entry.get("revision"))
    if entry.get("encryption"):  # an encrypted package: installed as the package it is
        new.update({k: entry.get(k) for k in ("format", "quantization", "encryption")})
        registry.save(new)
    sig = bundle / "models" / f"{name}.sig"
    if not sig.is_file():
        return new
    dest = signature_path(registry, name)
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(sig, dest)
    for key in keys:
        try:
            signer = verify_files(final / rel, dest, key, name)
        except ConfigError:
            continue
        new.update(signed_by=signer, signature_sha256=hashlib.sha256(
            dest.read_bytes()).hexdigest())
        registry.save(new)
        log(f"model {name}: signature verified ({signer})")
        return new
    if keys:
        raise IntegrityError(f"model {name}: its signature does not verify with any of the "
                             "given keys")
    log(f"model {name} carries a signature by {entry.get('signed_by')}, not checked: pass "
        "--pubkey (or set trusted_keys) to check it and record the signer")
    return new
