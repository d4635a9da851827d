"""``autoglm privacy``: erasure of a data subject's personal data in the audit log."""

from __future__ import annotations

import getpass
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from autoglm.cli.output import fail
from autoglm.errors import AutoGLMError
from autoglm.settings import load_settings

privacy_app = typer.Typer(help="Personal data: erasure (GDPR Art. 17, PIPL Art. 47).",
                          no_args_is_help=True)


@privacy_app.command("erase")
def privacy_erase(
    principal: Annotated[Optional[str], typer.Option(
        help="Erase this principal's personal data (prn_...).")] = None,
    anonymous_before: Annotated[Optional[str], typer.Option(
        help="Erase the personal data of records without a principal (failed "
        "authentications) made before this date (YYYY-MM-DD, UTC).")] = None,
    config: Annotated[Optional[Path], typer.Option(
        "--config", "-c", help="YAML settings file.")] = None,
    yes: Annotated[bool, typer.Option(
        "--yes", help="Erase. Without it, only say what would be erased (exit 1).")] = False,
) -> None:
    """Destroy a data subject's personal data keys: the client addresses, purposes and
    kept texts of its audit records become unreadable for good, while the records and
    the chain stay intact (`autoglm audit verify` still passes). The erasure is itself
    audited. Cannot be undone; never prompts: pass --yes."""
    from autoglm.audit import AuditLog
    from autoglm.audit.query import parse_time
    from autoglm.privacy.erasure import erase
    from autoglm.store.db import Database, database_url

    if principal is None and anonymous_before is None:
        raise fail("name what to erase: --principal prn_... and/or --anonymous-before DATE")
    try:
        cut = (parse_time(anonymous_before, "--anonymous-before", date_ok=True)
               if anonymous_before else None)
        what = " and ".join(
            ([f"principal {principal}"] if principal else [])
            + ([f"anonymous records before {anonymous_before}"] if cut else []))
        if not yes:
            Console(stderr=True, soft_wrap=True).print(f"would erase the personal data of {what}; nothing "
                                       "erased: add --yes to erase (it cannot be undone)")
            raise typer.Exit(1)
        settings = load_settings(config)
        db = Database(database_url(settings))
        audit = AuditLog.from_settings(settings, db)
        try:
            done = erase(audit, principal=principal, anonymous_before=cut,
                         actor=f"cli:{getpass.getuser()}"[:64])
        finally:
            audit.close()
            db.close()
    except AutoGLMError as exc:
        raise fail(exc.message) from None
    Console(stderr=True, highlight=False, soft_wrap=True).print(
        f"erased {what}: {done.keys} key(s) destroyed; the personal fields of "
        f"{done.records} audit record(s) can no longer be read (the chain is unchanged; "
        f"this erasure is audit record seq {done.seq})")
