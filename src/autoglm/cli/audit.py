"""``autoglm audit verify``: check the tamper-evident audit chain offline."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from autoglm.cli.output import fail
from autoglm.errors import AutoGLMError
from autoglm.settings import load_settings

audit_app = typer.Typer(help="The tamper-evident audit log.", no_args_is_help=True)
Config = Annotated[Optional[Path], typer.Option("--config", "-c", help="YAML settings file.")]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON.")]


@audit_app.command("verify")
def audit_verify(config: Config = None, as_json: AsJson = False) -> None:
    """Check the audit chain offline. Exit 0 only if it is intact.

    Recomputes every record's HMAC in order and checks the signed checkpoints; names the
    first bad seq and what happened to it (modified, deleted, inserted, reordered,
    truncated)."""
    from autoglm.audit.keys import AuditPaths
    from autoglm.audit.verify import verify
    from autoglm.store.db import Database, database_url

    try:
        settings = load_settings(config)
        db = Database(database_url(settings))
        try:
            report = verify(db, AuditPaths.under(settings.data_dir))
        finally:
            db.close()
    except AutoGLMError as exc:
        raise fail(exc.message) from None
    if as_json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        err = Console(stderr=True, highlight=False, soft_wrap=True)
        fault = report.fault
        if fault is None:
            where = (f"last at seq {report.last_checkpoint}" if report.checkpoints
                     else "none yet, so a cut-off tail cannot be told")
            err.print(f"audit chain intact: {report.records} record(s), head seq "
                      f"{report.head_seq} hash {report.head_hash}; {report.checkpoints} signed "
                      f"checkpoint(s) match ({where})")
        else:
            at = f"seq {fault.seq}" if fault.seq is not None else "a checkpoint"
            err.print(f"[bold red]audit chain broken at {at}: {fault.kind}[/] ({fault.detail}); "
                      f"{report.records} record(s) verified before it")
    if not report.intact:
        raise typer.Exit(1)
