"""``autoglm audit``: verify the tamper-evident audit chain (in the database, or an export
offline), export it (JSONL or CEF), prune it."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer
from rich.console import Console

from autoglm.cli.output import fail
from autoglm.errors import AutoGLMError
from autoglm.settings import load_settings

if TYPE_CHECKING:
    from autoglm.audit.keys import AuditPaths
    from autoglm.audit.verify import Report

audit_app = typer.Typer(help="The tamper-evident audit log.", no_args_is_help=True)
Config = Annotated[Optional[Path], typer.Option("--config", "-c", help="YAML settings file.")]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON.")]


def _console() -> Console:
    return Console(stderr=True, highlight=False, soft_wrap=True)


@audit_app.command("verify")
def audit_verify(
    config: Config = None,
    as_json: AsJson = False,
    file: Annotated[Optional[Path], typer.Option(
        "--file", help="Check this JSONL export instead of the database (offline).")] = None,
    key: Annotated[Optional[Path], typer.Option(
        "--key", help="The chain's HMAC key file (default: data_dir/secrets/audit_hmac_key).")
    ] = None,
    checkpoints: Annotated[Optional[Path], typer.Option(
        "--checkpoints", help="Signed checkpoints to hold the export to (default: "
        "data_dir/audit/checkpoints.jsonl, when present).")] = None,
    public_key: Annotated[Optional[Path], typer.Option(
        "--public-key", help="The checkpoints' public key (default: "
        "data_dir/audit/checkpoint_key.pub.pem).")] = None,
) -> None:
    """Check the audit chain offline. Exit 0 only if it is intact.

    Recomputes every record's HMAC in order and checks the signed checkpoints; names the
    first bad seq and what happened to it (modified, deleted, inserted, reordered,
    truncated). After a prune the check starts at its signed anchor. With --file, checks
    an export (`autoglm audit export`) without the database."""
    from autoglm.audit.keys import AuditPaths
    from autoglm.audit.verify import verify

    try:
        settings = load_settings(config)
        paths = AuditPaths.under(settings.data_dir)
        edges: dict[str, Report] = {}
        if file is not None:
            report = _verify_file(file, paths, key, checkpoints, public_key)
        else:
            from autoglm.store.db import Database, database_url

            db = Database(database_url(settings))
            try:
                report = verify(db, paths)
                edges = _verify_edges(db, paths)
            finally:
                db.close()
    except AutoGLMError as exc:
        raise fail(exc.message) from None
    what = "audit export" if file is not None else "audit chain"
    if as_json:
        doc = report.to_dict()
        if edges:
            doc["edge_nodes"] = {node: r.to_dict() for node, r in edges.items()}
        print(json.dumps(doc, indent=2))
    else:
        fault = report.fault
        if fault is None:
            where = (f"last at seq {report.last_checkpoint}" if report.checkpoints
                     else "none yet, so a cut-off tail cannot be told")
            if file is not None:
                where = "none in its range" if not report.checkpoints else "all in its range"
            start = f" from seq {report.anchor + 1}" if report.anchor else ""
            _console().print(f"{what} intact: {report.records} record(s){start}, head seq "
                             f"{report.head_seq} hash {report.head_hash}; {report.checkpoints} "
                             f"signed checkpoint(s) match ({where})")
        else:
            at = f"seq {fault.seq}" if fault.seq is not None else "a checkpoint"
            if file is not None and fault.seq is None:
                at = "its trailer" if "trailer" in fault.detail else "a checkpoint"
            _console().print(f"[bold red]{what} broken at {at}: {fault.kind}[/] "
                             f"({fault.detail}); {report.records} record(s) verified before it")
        for node, r in edges.items():  # the chains edge nodes forwarded (``edge.inbox``)
            if r.fault is None:
                _console().print(f"edge node {node}: chain intact, {r.records} record(s), "
                                 f"head seq {r.head_seq}")
            else:
                _console().print(f"[bold red]edge node {node}: chain broken at seq "
                                 f"{r.fault.seq}: {r.fault.kind}[/] ({r.fault.detail})")
    if not report.intact or any(not r.intact for r in edges.values()):
        raise typer.Exit(1)


def _verify_edges(db: Any, paths: AuditPaths) -> dict[str, Report]:
    """The chains of the edge nodes whose records this centre keeps (none: empty)."""
    from autoglm.audit.keys import load_hmac_key
    from autoglm.edge.inbox import verify as verify_edges

    if not paths.hmac_key.exists():
        return {}
    return verify_edges(db, load_hmac_key(paths.hmac_key, create=False))


def _verify_file(file: Path, paths: AuditPaths, key: Path | None, checkpoints: Path | None,
                 public_key: Path | None) -> Report:
    from autoglm.audit.keys import load_hmac_key, load_public_key
    from autoglm.audit.segment import verify_file

    secret = load_hmac_key(key or paths.hmac_key, create=False)
    cps = checkpoints or (paths.checkpoints if paths.checkpoints.exists() else None)
    public = None
    if cps is not None:
        pem = public_key or paths.public_key
        public = load_public_key(pem)
    return verify_file(file, secret, public, cps)


@audit_app.command("export")
def audit_export(
    config: Config = None,
    since: Annotated[Optional[str], typer.Option(
        help="From records made at this time (RFC 3339, or a date: midnight UTC).")] = None,
    until: Annotated[Optional[str], typer.Option(
        help="To records made before this time (RFC 3339, or a date).")] = None,
    fmt: Annotated[str, typer.Option(
        "--format", help="jsonl (verifiable: `audit verify --file`) or cef (for a SIEM).")
    ] = "jsonl",
    out: Annotated[Optional[Path], typer.Option(
        "--out", "-o", help="Write here (mode 0600) instead of standard output.")] = None,
    open_personal: Annotated[bool, typer.Option(
        "--open-personal", help="Also write each record's personal fields (client address, "
        "purpose, kept text) in clear, where its subject was not erased. Off by default: "
        "they stay sealed.")] = False,
) -> None:
    """Export the records of a time window, streaming, with their chain fields.

    The export is the unbroken run of records from the first made at/after --since to
    the last made before --until, so a JSONL export verifies on its own. Personal fields
    stay sealed unless --open-personal."""
    from autoglm.audit.export import FORMATS, export
    from autoglm.audit.keys import AuditPaths
    from autoglm.audit.query import parse_time
    from autoglm.store.db import Database, database_url

    if fmt not in FORMATS:
        raise fail(f"--format must be jsonl or cef, not {fmt!r}")
    try:
        start = parse_time(since, "--since", date_ok=True) if since else None
        end = parse_time(until, "--until", date_ok=True) if until else None
        if start and end and end <= start:
            raise fail("--until must be later than --since")
        settings = load_settings(config)
        db = Database(database_url(settings))
        tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp") if out is not None else None
        try:
            if tmp is None:
                summary = export(db, AuditPaths.under(settings.data_dir), sys.stdout.buffer,
                                 since=start, until=end, fmt=fmt, open_personal=open_personal)
            else:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(fd, "wb") as fh:
                    summary = export(db, AuditPaths.under(settings.data_dir), fh,
                                     since=start, until=end, fmt=fmt,
                                     open_personal=open_personal)
                    os.fsync(fh.fileno())
                os.replace(tmp, out)  # whole, or not at all
        finally:
            if tmp is not None:
                tmp.unlink(missing_ok=True)
            db.close()
    except AutoGLMError as exc:
        raise fail(exc.message) from None
    span = (f"seq {summary.first_seq} to {summary.last_seq}" if summary.records
            else "no records in that window")
    _console().print(f"exported {summary.records} record(s) ({span})"
                     + (f" to {out}" if out is not None else ""))


@audit_app.command("prune")
def audit_prune(
    before: Annotated[str, typer.Option(
        help="Delete records made before this time (RFC 3339, or a date: midnight UTC).")],
    config: Config = None,
    yes: Annotated[bool, typer.Option(
        "--yes", help="Delete. Without it, only say what would be deleted (exit 1).")] = False,
) -> None:
    """Delete old records, keeping the chain verifiable from a signed anchor.

    Refuses when the chain is not intact, or when the records to delete are not covered by
    a signed checkpoint. Never prompts: pass --yes to delete."""
    from autoglm.audit.keys import AuditPaths
    from autoglm.audit.prune import plan, prune
    from autoglm.audit.query import parse_time
    from autoglm.store.db import Database, database_url

    try:
        cut = parse_time(before, "--before", date_ok=True)
        settings = load_settings(config)
        db = Database(database_url(settings))
        try:
            paths = AuditPaths.under(settings.data_dir)
            done = prune(db, paths, cut) if yes else plan(db, paths, cut)
        finally:
            db.close()
    except AutoGLMError as exc:
        raise fail(exc.message) from None
    if not done.records:
        _console().print("nothing to prune: no record before that time that a newer one does "
                         "not follow")
        return
    span = f"{done.records} record(s), seq {done.first_seq} to {done.cut_seq}"
    if not yes:
        _console().print(f"would delete {span} (covered by the checkpoint at seq "
                         f"{done.checkpoint}); nothing deleted: add --yes to delete")
        raise typer.Exit(1)
    _console().print(f"deleted {span}; the chain now starts after the signed anchor at seq "
                     f"{done.cut_seq} (hash {done.cut_hash})")
