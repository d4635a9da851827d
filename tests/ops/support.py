"""Helpers of the doctor tests: a context on a temporary data directory, stand-in
executables on PATH and stand-in installed distributions."""

from __future__ import annotations

import stat
from pathlib import Path

from autoglm.ops.doctor import Context, Result
from autoglm.settings import Settings


def ctx(tmp_path: Path, **settings: object) -> Context:
    base: dict[str, object] = {"data_dir": tmp_path / "data"}
    base.update(settings)
    return Context(settings=Settings(**base), ntp_server="")  # type: ignore[arg-type]


def by_id(results: list[Result] | Result) -> dict[str, Result]:
    items = [results] if isinstance(results, Result) else results
    return {r.id: r for r in items}


def executable(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return path


def install_dist(site: Path, name: str, version: str, *, requires: list[str] = (),
                 files: dict[str, str] | None = None) -> None:
    """A distribution as pip leaves it: ``NAME-VERSION.dist-info/METADATA`` (and the
    package's files), found by importlib.metadata on sys.path."""
    info = site / f"{name}-{version}.dist-info"
    info.mkdir(parents=True)
    lines = ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}",
             *[f"Requires-Dist: {r}" for r in requires]]
    (info / "METADATA").write_text("\n".join(lines) + "\n")
    for rel, text in (files or {}).items():
        (site / rel).parent.mkdir(parents=True, exist_ok=True)
        (site / rel).write_text(text)
