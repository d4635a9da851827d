"""``autoglm compliance report|verify``: the signed compliance evidence report."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from autoglm.cli.output import fail
from autoglm.errors import AutoGLMError
from autoglm.settings import load_settings

compliance_app = typer.Typer(
    help="Compliance evidence: MLPS 2.0 level 3, GDPR, PIPL controls against this "
    "installation (supports an assessment; does not replace one).", no_args_is_help=True)
Config = Annotated[Optional[Path], typer.Option("--config", "-c", help="YAML settings file.")]


def _console() -> Console:
    return Console(stderr=True, highlight=False, soft_wrap=True)


@compliance_app.command("report")
def compliance_report(
    fmt: Annotated[str, typer.Option("--format", help="json or html (printable).")] = "json",
    output: Annotated[Optional[Path], typer.Option(
        "--output", "-o", help="Write here (atomically, mode 0600) instead of standard "
        "output.")] = None,
    config: Config = None,
) -> None:
    """Assess each control against live evidence: met, not met, not applicable, or needs a
    manual attestation, with the evidence and the remedy.

    The file is signed with the audit checkpoint key (Ed25519); `autoglm compliance
    verify FILE --public-key checkpoint_key.pub.pem` checks it offline. The report reads
    the audit chain in full (`audit verify`)."""
    from autoglm.audit.keys import AuditPaths, load_signing_key
    from autoglm.compliance.render import FORMATS, signed
    from autoglm.compliance.report import LABELS, build

    if fmt not in FORMATS:
        raise fail(f"--format must be json or html, not {fmt!r}")
    try:
        settings = load_settings(config)
        doc = build(settings)
        data = signed(doc, fmt, load_signing_key(AuditPaths.under(settings.data_dir)))
        if output is None:
            sys.stdout.buffer.write(data)
            sys.stdout.flush()
        else:
            _write(output, data)
    except AutoGLMError as exc:
        raise fail(exc.message) from None
    counts = doc["summary"]["all"]
    _console().print(
        ", ".join(f"{n} {LABELS[s]}" for s, n in counts.items()) + " of "
        f"{len(doc['controls'])} controls" + (f"; written to {output}" if output else "")
        + ". This report supports an assessment; it does not replace one.")


def _write(out: Path, data: bytes) -> None:
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)


@compliance_app.command("verify")
def compliance_verify(
    file: Annotated[Path, typer.Argument(help="A report file (JSON or HTML).")],
    public_key: Annotated[Optional[Path], typer.Option(
        "--public-key", help="The installation's checkpoint public key (PEM; default: "
        "data_dir/audit/checkpoint_key.pub.pem). No secret is needed.")] = None,
    config: Config = None,
) -> None:
    """Check a report offline: exit 0 only when it is byte for byte what the installation
    signed. Needs only the public key (or the data directory it is in)."""
    from autoglm.audit.keys import AuditPaths, load_public_key
    from autoglm.compliance.signing import verify

    try:
        key_path = public_key or AuditPaths.under(load_settings(config).data_dir).public_key
        key = load_public_key(key_path)
        try:
            data = file.read_bytes()
        except OSError as exc:
            raise AutoGLMError(f"cannot read {file}: {exc.strerror or exc}") from None
    except AutoGLMError as exc:
        raise fail(exc.message, code=2) from None
    verdict = verify(data, key)
    if not verdict.ok:
        _console().print(f"[bold red]{file} does not verify[/]: {verdict.reason}")
        raise typer.Exit(1)
    counts = (", ".join(f"{n} {s.replace('_', ' ')}" for s, n in verdict.summary.items())
              if verdict.summary else None)
    _console().print(f"{file} is unaltered: {verdict.kind} report generated "
                     f"{verdict.generated_at}, signed by {verdict.key}"
                     + (f" ({counts})" if counts else ""))
