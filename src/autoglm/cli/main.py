"""The ``autoglm`` command. Errors are turned into one-line messages only here."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.panel import Panel
from rich.table import Table

from autoglm import __version__
from autoglm.cli.audit import audit_app
from autoglm.cli.backup import backup as backup_command
from autoglm.cli.backup import restore as restore_command
from autoglm.cli.bundle import bundle_app
from autoglm.cli.compliance import compliance_app
from autoglm.cli.doctor import doctor as doctor_command
from autoglm.cli.federated import app as federated_app
from autoglm.cli.finetune import finetune as finetune_command
from autoglm.cli.identity import keys_app, principals_app, projects_app, tenants_app
from autoglm.cli.model import model_app
from autoglm.cli.output import err_console, fail
from autoglm.cli.privacy import privacy_app
from autoglm.cli.usage import usage as usage_command
from autoglm.cli.worker import worker as worker_command
from autoglm.errors import AutoGLMError
from autoglm.settings import Settings, load_settings

app = typer.Typer(help="Open-AutoGLM: private LLM deployment platform.", no_args_is_help=True,
                  pretty_exceptions_enable=False)
config_app = typer.Typer(help="Inspect settings.", no_args_is_help=True)
app.add_typer(config_app, name="config")
app.add_typer(tenants_app, name="tenants")
app.add_typer(projects_app, name="projects")
app.add_typer(principals_app, name="principals")
app.add_typer(keys_app, name="keys")
app.add_typer(model_app, name="model")
app.add_typer(bundle_app, name="bundle")
app.add_typer(audit_app, name="audit")
app.add_typer(privacy_app, name="privacy")
app.add_typer(compliance_app, name="compliance")
app.add_typer(federated_app, name="federated")
app.command("usage")(usage_command)
app.command("worker")(worker_command)
app.command("doctor")(doctor_command)
app.command("backup")(backup_command)
app.command("restore")(restore_command)
app.command("finetune")(finetune_command)

ConfigOpt = Annotated[
    Optional[Path], typer.Option("--config", "-c", help="YAML settings file.", exists=False)
]


def _announce_key(key: str, where: str) -> None:
    err_console().print(Panel.fit(
        f"[bold]{key}[/]\n\nThis admin API key is shown once and not stored (only its hash, in "
        f"{where}).\nKeep it in a secret store. Use it as 'Authorization: Bearer <key>'.",
        title="admin API key", border_style="yellow",
    ))


@app.command()
def serve(
    config: ConfigOpt = None,
    host: Annotated[Optional[str], typer.Option(help="Bind address.")] = None,
    port: Annotated[Optional[int], typer.Option(help="TCP port (default 8080).")] = None,
    grpc_port: Annotated[Optional[int], typer.Option(
        help="Also serve gRPC (autoglm.v1.Inference) on this port.")] = None,
    workers: Annotated[Optional[int], typer.Option(
        help="Gateway processes on the port, sharing one engine per model.")] = None,
    model_path: Annotated[Optional[Path], typer.Option(help="GGUF file to serve.")] = None,
    model: Annotated[Optional[str], typer.Option(
        help="A registered model to serve, by name.")] = None,
    model_id: Annotated[Optional[str], typer.Option(help="Model id clients use.")] = None,
    adapter: Annotated[Optional[list[str]], typer.Option(
        help="A registered LoRA adapter to serve on the model as MODEL:ADAPTER "
        "(repeatable).")] = None,
    engine: Annotated[Optional[str], typer.Option(
        help="Engine for --model-path: llamacpp (embedded) or vllm (managed).")] = None,
    slots: Annotated[Optional[int], typer.Option(help="Sequences decoded together.")] = None,
    ctx_per_slot: Annotated[Optional[int], typer.Option(help="Context tokens per slot.")] = None,
    n_threads: Annotated[Optional[int], typer.Option(help="llama.cpp threads (0: all).")] = None,
    max_queue: Annotated[Optional[int], typer.Option(help="Requests allowed to wait.")] = None,
    data_dir: Annotated[Optional[Path], typer.Option(help="Data directory.")] = None,
    ssl_certfile: Annotated[Optional[Path], typer.Option(help="TLS certificate (PEM).")] = None,
    ssl_keyfile: Annotated[Optional[Path], typer.Option(help="TLS private key (PEM).")] = None,
    log_level: Annotated[Optional[str], typer.Option(help="debug|info|warning|error")] = None,
    dangerously_disable_auth: Annotated[Optional[bool], typer.Option(
        "--dangerously-disable-auth", help="Serve WITHOUT API keys. Sandbox use only."
    )] = None,
    mirror: Annotated[Optional[bool], typer.Option(
        "--mirror", help="Also publish the registry's verified models over the Hugging Face "
        "API (`model pull --endpoint`), to keys allowed model.pull.")] = None,
) -> None:
    """Serve the OpenAI-compatible API (embedded llama.cpp engine by default)."""
    try:
        settings = load_settings(
            config, host=host, port=port, grpc_port=grpc_port, workers=workers, model=model,
            model_path=model_path,
            model_id=model_id, engine=engine, adapters=adapter or None,
            slots=slots,
            ctx_per_slot=ctx_per_slot, n_threads=n_threads, max_queue=max_queue,
            data_dir=data_dir, ssl_certfile=ssl_certfile, ssl_keyfile=ssl_keyfile,
            log_level=log_level, dangerously_disable_auth=dangerously_disable_auth,
            mirror=mirror,
        )
        run_server(settings)
    except AutoGLMError as exc:
        raise fail(exc.message) from None


def run_server(settings: Settings) -> None:
    from autoglm.logs import setup_logging
    from autoglm.serving.server import run_single
    from autoglm.serving.workers import run_workers

    setup_logging(settings.log_level)
    scheme = "https" if settings.tls_enabled else "http"

    def ready() -> None:
        workers = f" ({settings.workers} workers)" if settings.workers > 1 else ""
        err_console().print(
            f"Open-AutoGLM {__version__} listening on "
            f"{scheme}://{settings.host}:{settings.port}/v1{workers}", highlight=False)

    run = run_workers if settings.workers > 1 else run_single
    if not run(settings, _announce_key, ready):
        raise typer.Exit(1)


@config_app.command("show")
def config_show(
    config: ConfigOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Print the effective settings (secrets masked)."""
    try:
        settings = load_settings(config)
    except AutoGLMError as exc:
        raise fail(exc.message) from None
    values = settings.masked()
    if as_json:
        print(json.dumps(values, indent=2, default=str))
        return
    table = Table("setting", "value", "description", title="effective settings")
    for name, field in Settings.model_fields.items():
        if field.exclude:
            continue
        table.add_row(name, repr(values[name]) if values[name] is not None else "-",
                      field.description or "")
    Console().print(table)


@app.command()
def engines(
    config: ConfigOpt = None,
    url: Annotated[Optional[str], typer.Option(help="Server URL (default: from settings).")] = None,
    key: Annotated[Optional[str], typer.Option(
        help="Admin API key (default: $AUTOGLM_ADMIN_KEY).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show each model of a running server: instances, state, in-flight and load."""
    from autoglm.cli.engines import default_key, fetch_engines, render, server_url

    try:
        target = url or server_url(load_settings(config))
        data = fetch_engines(target, key or default_key())
    except AutoGLMError as exc:
        raise fail(exc.message) from None
    if as_json:
        print(json.dumps(data, indent=2))
        return
    # Piped or captured output gets one line per instance instead of 80-column folding.
    render(data, Console() if sys.stdout.isatty() else Console(width=200))


db_app = typer.Typer(help="The control-plane database.", no_args_is_help=True)
app.add_typer(db_app, name="db")


@db_app.command("upgrade")
def db_upgrade(config: ConfigOpt = None) -> None:
    """Apply the database migrations (the server also does this at every start)."""
    from sqlalchemy import text

    from autoglm.store.db import Database, database_url

    try:
        db = Database(database_url(load_settings(config)))
        db.upgrade()
        with db.engine.connect() as conn:
            rev = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
        db.close()
    except AutoGLMError as exc:
        raise fail(exc.message) from None
    err_console().print(f"database is at revision {rev}", highlight=False)


@app.command()
def version() -> None:
    """Print the version."""
    print(__version__)


def main() -> None:
    try:
        app()
    except AutoGLMError as exc:
        fail(exc.message)
        sys.exit(1)
