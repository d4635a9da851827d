"""The check and installer that travel inside an offline bundle, as its ``install.py``.

``install.sh`` runs this file with the target machine's own Python (``python -I``: no
environment variables, no user site, and not the bundle's directory on ``sys.path``),
before autoglm is installed: so it uses the standard library only, and nothing else needs
to be on the machine (no ``sha256sum``, no ``dirname``). ``autoglm bundle verify`` runs the
same ``check``.

The check refuses, before a byte is hashed: a listed path that is absolute or has ``..``
(or ``.``, or empty) components, a link or special file anywhere in the bundle, a file not
listed in ``bundle.json``, anything in ``wheels/`` that is not a wheel (an sdist would run
its build code), and lists that disagree. Then it hashes every listed file (size first).
Only then does the installer make the virtual environment and run pip with no index, wheels
only, and every wheel's SHA-256 required (``--require-hashes``, so a wheel swapped after
the check is refused by pip too), then ``autoglm bundle install``, which registers models.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FORMAT = 1
CHUNK = 1 << 20
OWN = ("bundle.json", "SHA256SUMS")  # the lists themselves: checked, not listed
# name-version(-build)?-python-abi-platform.whl, each part from the wheel spec's alphabet:
# nothing that could become an option or a second requirement in a requirements file
WHEEL = re.compile(r"^wheels/([A-Za-z0-9][A-Za-z0-9_.]*)-([A-Za-z0-9_.!+]+)"
                   r"(?:-[0-9][A-Za-z0-9_.]*)?(?:-[A-Za-z0-9_.]+){3}\.whl$")
MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")  # as the registry's names
SHA256 = re.compile(r"^[0-9a-f]{64}$")
USAGE = """usage: sh install.sh [VENV_DIR [--pubkey PUB.pem ...]]   check, then install
                                 (VENV_DIR: ./autoglm-venv when not given)
       sh install.sh --check                           only check the bundle's files"""


@dataclass
class Findings:
    changed: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    wheels: dict[str, str] = field(default_factory=dict)  # checked wheels: path -> SHA-256

    @property
    def intact(self) -> bool:
        return not (self.changed or self.missing or self.extra or self.problems)

    def lines(self) -> list[str]:
        return ([f"{rel}: not listed in bundle.json (refused)" for rel in self.extra]
                + [f"{rel}: listed in bundle.json but missing" for rel in self.missing]
                + [f"{rel}: its SHA-256 differs from bundle.json" for rel in self.changed]
                + self.problems)


def unsafe(rel: object) -> str | None:
    """Why ``rel`` is not a path inside the bundle ('/'-separated, relative), or None."""
    if not isinstance(rel, str) or not rel:
        return "is not a path"
    if rel.startswith("/") or re.match(r"^[A-Za-z]:", rel):
        return "is an absolute path"
    if "\\" in rel or "\0" in rel:
        return "holds a backslash or NUL"
    parts = rel.split("/")
    if ".." in parts:
        return "has a '..' component"
    if "." in parts or "" in parts:
        return "has an empty or '.' component"
    return None


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    with path.open("rb", buffering=0) as fh:
        while n := fh.readinto(buf):
            h.update(view[:n])
    return h.hexdigest()


def scan(bundle: Path) -> tuple[dict[str, int], list[str]]:
    """Every regular file under ``bundle`` (relative path -> size), never following a
    link; links and special files are problems."""
    files: dict[str, int] = {}
    problems: list[str] = []
    for dirpath, dirnames, filenames in os.walk(bundle):
        base = Path(dirpath)
        for name in sorted(dirnames):
            if (base / name).is_symlink():
                problems.append(f"{(base / name).relative_to(bundle).as_posix()}: a link "
                                "(refused: a bundle holds plain files only)")
        dirnames[:] = sorted(d for d in dirnames if not (base / d).is_symlink())
        for name in sorted(filenames):
            path = base / name
            rel = path.relative_to(bundle).as_posix()
            st = path.lstat()
            if stat.S_ISREG(st.st_mode):
                files[rel] = st.st_size
            else:
                kind = "a link" if stat.S_ISLNK(st.st_mode) else "not a regular file"
                problems.append(f"{rel}: {kind} (refused: a bundle holds plain files only)")
    return files, problems


def _listed(meta: dict[str, Any], found: Findings) -> dict[str, dict[str, Any]]:
    files = meta.get("files")
    if not isinstance(files, dict):
        found.problems.append("bundle.json has no list of files")
        return {}
    listed = {}
    for rel, m in files.items():
        why = unsafe(rel)
        if why is not None:
            found.problems.append(f"bundle.json lists {rel!r}, which {why} (refused)")
        elif not (isinstance(m, dict) and isinstance(m.get("size"), int)
                  and isinstance(m.get("sha256"), str) and SHA256.match(m["sha256"])):
            found.problems.append(f"bundle.json: {rel} has no valid size and SHA-256")
        elif rel in OWN:
            found.problems.append(f"bundle.json lists {rel}, which cannot list itself")
        elif rel.startswith("wheels/") and not WHEEL.match(rel):
            found.problems.append(f"{rel}: not a wheel (refused: only wheels are installed; "
                                  "an sdist would run its build code)")
        else:
            listed[rel] = m
    return listed


def _check_wheels(listed: dict[str, dict[str, Any]], found: Findings) -> None:
    versions: dict[str, set[str]] = {}
    for rel in listed:
        if m := WHEEL.match(rel):
            versions.setdefault(_normalize(m[1]), set()).add(m[2])
    for name, vs in sorted(versions.items()):
        if len(vs) > 1:
            found.problems.append(f"wheels/ holds {len(vs)} versions of {name} "
                                  f"({', '.join(sorted(vs))}); a bundle pins one")
    if not versions:
        found.problems.append("bundle.json lists no wheels")


def _check_sums(bundle: Path, listed: dict[str, dict[str, Any]], found: Findings) -> None:
    try:
        lines = (bundle / "SHA256SUMS").read_text().splitlines()
    except (OSError, UnicodeDecodeError):
        found.problems.append("SHA256SUMS is missing or unreadable")
        return
    sums = dict(reversed(line.split("  ", 1)) for line in lines if "  " in line)
    if sums.pop("bundle.json", None) != sha256_file(bundle / "bundle.json"):
        found.problems.append("SHA256SUMS does not match bundle.json")
    if sums != {rel: m["sha256"] for rel, m in listed.items()}:
        found.problems.append("SHA256SUMS and bundle.json list different files or hashes")


def load(bundle: Path) -> dict[str, Any]:
    """``bundle.json``; ValueError (with a message to show) when it is not a usable one."""
    try:
        meta = json.loads((bundle / "bundle.json").read_text())
    except FileNotFoundError:
        raise ValueError(f"{bundle} is not a bundle (no bundle.json)") from None
    except (OSError, UnicodeDecodeError, ValueError):
        raise ValueError(f"{bundle}/bundle.json is damaged (not JSON)") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        got = meta.get("format") if isinstance(meta, dict) else None
        raise ValueError(f"{bundle}: bundle format {got} is not supported (this installer "
                         f"reads format {FORMAT})")
    return meta


def check(bundle: Path, meta: dict[str, Any]) -> Findings:
    """Everything about the bundle's files that can be known with the standard library;
    nothing is hashed when the structure is already wrong."""
    found = Findings()
    listed = _listed(meta, found)
    _check_wheels(listed, found)
    models = meta.get("models")
    if not isinstance(models, list) or not models or not all(
            isinstance(n, str) and MODEL_NAME.match(n) for n in models):
        found.problems.append("bundle.json: 'models' is not a list of model names")
    present, problems = scan(bundle)
    found.problems += problems
    named = set(meta["files"]) if isinstance(meta.get("files"), dict) else set()
    found.extra = sorted(set(present) - named - set(OWN))  # named but refused: problems
    if found.problems or found.extra:
        return found
    _check_sums(bundle, listed, found)
    for rel, m in sorted(listed.items()):
        if rel not in present:
            found.missing.append(rel)
        elif present[rel] != m["size"] or sha256_file(bundle / rel) != m["sha256"]:
            found.changed.append(rel)
    if found.intact:
        found.wheels = {rel: m["sha256"] for rel, m in listed.items() if WHEEL.match(rel)}
    return found


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirements(wheels: dict[str, str]) -> str:
    """A requirements file pinning every wheel by version and SHA-256 (for
    ``--require-hashes``): pip then installs exactly these files or nothing."""
    lines = []
    for rel, sha in sorted(wheels.items()):
        m = WHEEL.match(rel)
        if m is None:
            raise ValueError(f"{rel} is not a wheel")
        lines.append(f"{_normalize(m[1])}=={m[2]} --hash=sha256:{sha}\n")
    return "".join(lines)


def pip_install_args(bundle: Path, requirements_file: Path) -> list[str]:
    """``pip install`` arguments: this bundle's wheels only, each by its hash, no index,
    no sdist, no configuration or environment variables of pip's read."""
    return ["install", "--isolated", "--quiet", "--no-index", "--no-cache-dir",
            "--disable-pip-version-check", "--only-binary=:all:", "--require-hashes",
            "--find-links", str(bundle / "wheels"), "-r", str(requirements_file)]


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _run(what: str, cmd: list[str]) -> None:
    if subprocess.run(cmd).returncode != 0:
        raise RuntimeError(f"{what} failed (see above)")


def install(bundle: Path, meta: dict[str, Any], found: Findings, venv: Path,
            rest: list[str]) -> None:
    _say(f"creating the virtual environment {venv}...")
    _run("creating the virtual environment", [sys.executable, "-I", "-m", "venv", str(venv)])
    python = str(venv / "bin" / "python")
    _say(f"installing {len(found.wheels)} wheels by hash (no index, no network, no sdist)...")
    with tempfile.TemporaryDirectory() as tmp:
        req = Path(tmp) / "requirements.txt"
        req.write_text(requirements(found.wheels))
        _run("pip", [python, "-I", "-m", "pip", *pip_install_args(bundle, req)])
    _run("autoglm bundle install",
         [str(venv / "bin" / "autoglm"), "bundle", "install", str(bundle), *rest])
    _say(f"installed: {venv}/bin/autoglm (models: {' '.join(meta['models'])})")
    _say(f"serve with: {venv}/bin/autoglm serve --model {meta['models'][0]}")


def main(argv: list[str]) -> int:
    bundle = Path(__file__).resolve().parent
    if argv[:1] in (["-h"], ["--help"]):
        print(USAGE)
        return 0
    check_only = argv[:1] == ["--check"]
    if argv[:1] and argv[0].startswith("-") and not check_only:
        _say(f"error: {argv[0]}: give the virtual environment's directory first\n{USAGE}")
        return 2
    try:
        meta = load(bundle)
    except ValueError as exc:
        _say(f"error: {exc}")
        return 1
    have = f"{sys.version_info[0]}.{sys.version_info[1]}"
    if meta.get("python") != have:
        _say(f"error: this bundle holds wheels for Python {meta.get('python')}; "
             f"{sys.executable} is Python {have} (set PYTHON)")
        return 2
    _say("checking every file of the bundle (SHA-256)...")
    found = check(bundle, meta)
    if not found.intact:
        for line in found.lines():
            _say(f"error: {line}")
        _say(f"error: {bundle} was changed or damaged; nothing was installed")
        return 1
    if check_only:
        _say(f"{bundle}: intact ({len(meta['files'])} files checked)")
        return 0
    venv = Path(os.path.abspath(argv[0] if argv else "autoglm-venv"))
    if venv.resolve() == bundle or bundle in venv.resolve().parents:
        _say(f"error: {venv} is inside the bundle; give a directory outside it")
        return 2
    try:
        install(bundle, meta, found, venv, argv[1:])
    except RuntimeError as exc:
        _say(f"error: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
