"""``autoglm bundle create|verify|install``: carry a platform and its models offline."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from autoglm.cli.output import fail
from autoglm.errors import AutoGLMError
from autoglm.settings import load_settings
from autoglm.supply.registry import Registry

bundle_app = typer.Typer(help="Offline bundles: wheels, models, SBOM, install script.",
                         no_args_is_help=True)
Config = Annotated[Optional[Path], typer.Option("--config", "-c", help="YAML settings file.")]


def _console() -> Console:
    return Console(stderr=True, highlight=False, soft_wrap=True)


@bundle_app.command("create")
def bundle_create(out: Annotated[Path, typer.Argument(help="New directory to write.")],
                  model: Annotated[list[str], typer.Option(
                      help="Registered model to include (repeatable).")],
                  config: Config = None) -> None:
    """Write an offline bundle: wheels for this Python and platform, the models with
    manifests and signatures, a CycloneDX SBOM and install.sh."""
    from autoglm.supply import bundle

    err = _console()
    try:
        meta = bundle.create(out, model, Registry(load_settings(config).data_dir), err.print)
    except AutoGLMError as exc:
        raise fail(exc.message) from None
    wheels = sum(1 for f in meta["files"] if f.startswith("wheels/"))
    size = sum(m["size"] for m in meta["files"].values())
    err.print(f"bundle written to {out}: {wheels} wheels, {len(meta['models'])} model(s), "
              f"{size:,} bytes, for Python {meta['python']} on {meta['platform']}. On the "
              f"target machine: sh {out.name}/install.sh")


@bundle_app.command("verify")
def bundle_verify(path: Path, pubkey: Annotated[Optional[Path], typer.Option(
        help="Also check signed models' signatures with this public key (PEM).")] = None,
                  as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False
                  ) -> None:
    """Re-hash every file of a bundle (refusing unlisted files, links, non-wheels and paths
    that leave it) and cross-check its SBOM and model manifests. Exit 0 only if intact."""
    from autoglm.supply import bundle

    try:
        report = bundle.verify(path, pubkey)
    except AutoGLMError as exc:
        raise fail(exc.message) from None
    if as_json:
        print(json.dumps({"intact": report.intact, "changed": report.changed,
                          "missing": report.missing, "extra": report.extra,
                          "problems": report.problems, "signatures": report.signatures},
                         indent=2))
    else:
        err = _console()
        for kind in ("changed", "missing", "extra"):
            for f in getattr(report, kind):
                err.print(f"{kind}: {f}")
        for p in report.problems:
            err.print(f"problem: {p}")
        for name, signer in report.signatures.items():
            err.print(f"model {name}: signature valid ({signer})")
        if report.intact:
            err.print(f"{path}: intact")
    if not report.intact:
        raise typer.Exit(1)


@bundle_app.command("install")
def bundle_install(path: Path, pubkey: Annotated[Optional[list[Path]], typer.Option(
        help="Check models' signatures with this key (repeatable); trusted_keys count too.")
                   ] = None, config: Config = None) -> None:
    """Verify a bundle and register its models in this installation (install.sh runs it
    once the wheels are installed)."""
    from autoglm.supply import bundle

    err = _console()
    try:
        settings = load_settings(config)
        entries = bundle.install(path, Registry(settings.data_dir), err.print,
                                 keys=[*(pubkey or []), *settings.trusted_keys])
    except AutoGLMError as exc:
        raise fail(exc.message) from None
    err.print(f"registered {', '.join(e['name'] for e in entries)} in {settings.data_dir}")
