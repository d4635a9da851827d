"""``autoglm backup`` and ``autoglm restore``: the control plane in one file and back."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from autoglm.cli.output import fail
from autoglm.errors import AutoGLMError
from autoglm.settings import load_settings

Config = Annotated[Optional[Path], typer.Option("--config", "-c", help="YAML settings file.")]
DataDir = Annotated[Optional[Path], typer.Option(help="Data directory (overrides settings).")]


def _console() -> Console:
    return Console(stderr=True, highlight=False, soft_wrap=True)


def backup(
    output: Annotated[Optional[Path], typer.Option(
        "--output", "-o", help="The backup file (default: ./autoglm-backup-<UTC time>.tar.gz)."
    )] = None,
    include_secrets: Annotated[bool, typer.Option(
        "--include-secrets", help="Also include the API-key pepper (restored keys work only "
        "with it) and the personal-data key (sealed personal fields are unreadable without "
        "it). Off by default.")] = False,
    config: Config = None,
    data_dir: DataDir = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the manifest as JSON.")] = False,
) -> None:
    """Back up the control plane: the database (SQLite online backup or pg_dump), the
    audit keys and signed checkpoints, and the model registry (manifests, not weights).

    The file is written atomically, mode 0600, with a SHA-256 manifest of every member.
    It always holds the audit chain's HMAC and signing keys (0600): `audit verify` needs
    them after a restore, so keep the file as you keep secrets."""
    from autoglm.backup.create import create
    from autoglm.timefmt import stamp

    out = output or Path(f"autoglm-backup-{stamp()[:19].replace('-', '').replace(':', '')}Z"
                         ".tar.gz")
    try:
        result = create(load_settings(config, data_dir=data_dir), out,
                        include_secrets=include_secrets)
    except AutoGLMError as exc:
        raise fail(exc.message) from None
    m = result.manifest
    if as_json:
        print(json.dumps({"path": str(result.path), "sha256": result.sha256,
                          "bytes": result.bytes, "manifest": m}, indent=2))
    head = m["database"]["audit_head"]["seq"]
    checked = (f"; its audit chain verified ({m['audit_verified']['records']} records)"
               if m["audit_verified"] else "")
    _console().print(
        f"backup written to {result.path} ({result.bytes} bytes, sha256 {result.sha256}): "
        f"{m['database']['kind']} database at audit seq {head}{checked}, "
        f"{len(m['models'])} registered model(s) (manifests only, no weights). It holds the "
        f"audit keys ({', '.join(m['secrets_included'])}; mode 0600): keep it as a secret."
        + ("" if not m["secrets_not_included"] else
           f" Not included: {', '.join(m['secrets_not_included'])} (--include-secrets)."))


def restore(
    file: Annotated[Path, typer.Argument(help="A file made by `autoglm backup`.")],
    force: Annotated[bool, typer.Option(
        "--force", help="Replace an installation that is not empty (its files are moved "
        "aside to data_dir/.replaced-<time>/).")] = False,
    config: Config = None,
    data_dir: DataDir = None,
) -> None:
    """Restore a backup into this installation (stop the server first), then verify the
    audit chain. Refuses a non-empty installation unless --force. Exit 0 only when the
    restored chain verifies."""
    from autoglm.backup.restore import restore as run

    try:
        result = run(load_settings(config, data_dir=data_dir), file, force=force)
    except AutoGLMError as exc:
        raise fail(exc.message) from None
    out = _console()
    report = result.report
    if result.moved_aside is not None:
        out.print(f"the files it replaced are in {result.moved_aside}")
    if report.intact:
        out.print(f"restored {file} (made {result.manifest.get('created_at')}); audit chain "
                  f"intact: {report.records} record(s), head seq {report.head_seq}, "
                  f"{report.checkpoints} signed checkpoint(s) match")
    else:
        f = report.fault
        out.print(f"[bold red]restored {file}, but the audit chain does not verify[/] (seq "
                  f"{f.seq if f else '?'}: {f.kind if f else '?'}; {f.detail if f else ''})")
    for name in result.missing_secrets:
        what = ("API keys of the backup will not authenticate until it is copied from the old "
                "installation (or key_pepper is set)" if name.endswith("pepper") else
                "sealed personal fields of the audit records stay unreadable without it")
        out.print(f"[yellow]note:[/] {name} was not in the backup: {what}")
    if result.models_without_files:
        out.print(f"[yellow]note:[/] registered model(s) whose files are not at their path: "
                  f"{', '.join(result.models_without_files)} (copy the weights there, then "
                  "`autoglm model verify NAME`)")
    if not report.intact:
        raise typer.Exit(1)
