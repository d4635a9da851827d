"""``autoglm model add|verify|list|remove``: the model registry and its manifests."""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from autoglm.errors import AutoGLMError
from autoglm.settings import load_settings
from autoglm.supply import manifest as mf
from autoglm.supply.registry import Registry

model_app = typer.Typer(help="Models: register, verify, list, remove.", no_args_is_help=True)
Config = Annotated[Optional[Path], typer.Option("--config", "-c", help="YAML settings file.")]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON.")]


def _registry(config: Path | None) -> Registry:
    return Registry(load_settings(config).data_dir)


@contextmanager
def _hashing(total: int, what: str):
    """A progress bar with speed and ETA on stderr; nothing when not a terminal."""
    console = Console(stderr=True)
    if not console.is_terminal:
        yield None
        return
    with Progress("[progress.description]{task.description}", BarColumn(), DownloadColumn(),
                  TransferSpeedColumn(), TimeRemainingColumn(), console=console) as bar:
        task = bar.add_task(what, total=total)
        yield lambda n: bar.advance(task, n)


def _size(root: Path) -> int:
    return sum(p.stat().st_size for p in mf.model_files(root)) if root.exists() else 0


def _fail(message: str) -> typer.Exit:
    from autoglm.cli.main import _fail as fail

    return fail(message)


@model_app.command("add")
def model_add(path: Path, name: Annotated[Optional[str], typer.Option(
        help="Registry name (default: the file or directory name).")] = None,
              config: Config = None, as_json: AsJson = False) -> None:
    """Register a model copied in by hand: hash every file into its manifest."""
    try:
        with _hashing(_size(path.expanduser()), "hashing") as progress:
            entry = _registry(config).add(path, name, progress=progress)
    except AutoGLMError as exc:
        raise _fail(exc.message) from None
    if as_json:
        print(json.dumps(entry, indent=2))
        return
    Console(stderr=True).print(f"registered {entry['name']}: {len(entry['manifest']['files'])} "
                               f"file(s), {entry['manifest']['total_size']:,} bytes",
                               highlight=False)


@model_app.command("verify")
def model_verify(name: str, pubkey: Annotated[Optional[Path], typer.Option(
        help="Also check the model's signature with this public key (PEM).")] = None,
                 config: Config = None, as_json: AsJson = False) -> None:
    """Re-hash every file; report changed, missing and extra files (and, with --pubkey, the
    signature). Exit 0 only if intact."""
    signer = None
    try:
        reg = _registry(config)
        entry = reg.get(name)
        with _hashing(entry["manifest"]["total_size"], f"verifying {name}") as progress:
            result = reg.verify(name, progress=progress)
        if pubkey is not None and result.intact:
            from autoglm.supply.signing import verify as verify_signature

            signer = verify_signature(reg, name, pubkey)
    except AutoGLMError as exc:
        raise _fail(exc.message) from None
    report = {"name": name, "intact": result.intact, "changed": result.changed,
              "missing": result.missing, "extra": result.extra, "signed_by": signer}
    if as_json:
        print(json.dumps(report, indent=2))
    else:
        err = Console(stderr=True)
        if result.intact:
            err.print(f"{name}: intact ({len(entry['manifest']['files'])} file(s))"
                      + (f", signature valid ({signer})" if signer else ""), highlight=False)
        for kind in ("changed", "missing", "extra"):
            for f in report[kind]:
                err.print(f"{name}: {kind}: {f}", highlight=False)
    if not result.intact:
        raise typer.Exit(1)


@model_app.command("list")
def model_list(config: Config = None, as_json: AsJson = False) -> None:
    """Registered models: source, revision, size, format, quantization, verified, signer."""
    try:
        entries = _registry(config).list()
    except AutoGLMError as exc:
        raise _fail(exc.message) from None
    if as_json:
        print(json.dumps(entries, indent=2))
        return
    table = Table(title="models")
    for col in ("name", "source", "revision", "size", "format", "quantization", "verified",
                "signed by", "path"):
        table.add_column(col, overflow="fold")
    for e in entries:
        v = e.get("verified") or {}
        table.add_row(e["name"], e["source"], e.get("revision") or "-",
                      f"{e['manifest']['total_size']:,}", e["format"], e.get("quantization") or "-",
                      ("yes" if v.get("intact") else "[red]NO[/]") + f" ({v.get('at', '?')[:19]})",
                      e.get("signed_by") or "-", e["path"])
    (Console() if sys.stdout.isatty() else Console(width=200)).print(table)


@model_app.command("remove")
def model_remove(name: str, config: Config = None) -> None:
    """Forget a model (its files are left where they are)."""
    try:
        entry = _registry(config).remove(name)
    except AutoGLMError as exc:
        raise _fail(exc.message) from None
    Console(stderr=True).print(f"removed {name} from the registry; files stay at {entry['path']}",
                               highlight=False)


@model_app.command("quantize")
def model_quantize(name: str,
                   qtype: Annotated[str, typer.Option("--type", help="q8_0, q4_k_m, q4_0, ...")],
                   out: Annotated[Optional[str], typer.Option(
                       help="Name of the result (default NAME-TYPE).")] = None,
                   config: Config = None, as_json: AsJson = False) -> None:
    """Quantize a registered GGUF model with llama.cpp; the result is registered."""
    from autoglm.supply.quantize import quantize

    err = Console(stderr=True)
    try:
        with err.status(f"quantizing {name} to {qtype} with llama.cpp..."):
            entry = quantize(_registry(config), name, qtype, out)
    except AutoGLMError as exc:
        raise _fail(exc.message) from None
    if as_json:
        print(json.dumps(entry, indent=2))
        return
    err.print(f"registered {entry['name']} ({entry['manifest']['total_size']:,} bytes); serve it "
              f"with `autoglm serve --model {entry['name']}`", highlight=False)


@model_app.command("sign")
def model_sign(name: str, key: Annotated[Path, typer.Option(
        help="Elliptic-curve private key (PEM) to sign with.")],
               config: Config = None) -> None:
    """Sign a registered model (OpenSSF model-signing, key-based, offline)."""
    from autoglm.supply.signing import sign

    err = Console(stderr=True)
    try:
        with err.status(f"signing {name}..."):
            entry = sign(_registry(config), name, key)
    except AutoGLMError as exc:
        raise _fail(exc.message) from None
    err.print(f"signed {name} with {entry['signed_by']}", highlight=False)
