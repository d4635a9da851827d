"""``autoglm worker``: run batch lines from the queue, serving no HTTP.

A worker is the app without its listeners: the same settings, database, audit log,
pipeline and engines as ``autoglm serve`` (it loads its own copy of each model), and the
batch worker claiming lines from the shared queue: the Redis stream with ``redis_url``,
else the control-plane database. Run as many as the machines allow; a worker killed at
any point loses nothing (its lines are claimed again once their lease runs out). SIGTERM
or Ctrl-C: the lines in hand go back to the queue and the engines stop.
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Annotated, Optional

import typer

from autoglm.cli.output import err_console, fail
from autoglm.errors import AutoGLMError
from autoglm.settings import load_settings


def worker(
    config: Annotated[Optional[Path], typer.Option(
        "--config", "-c", help="YAML settings file.")] = None,
    concurrency: Annotated[Optional[int], typer.Option(
        help="Lines run at once by this worker (default: batch_concurrency).")] = None,
    model_path: Annotated[Optional[Path], typer.Option(help="GGUF file to serve.")] = None,
) -> None:
    """Run batch lines from the queue (no HTTP); as many workers as you like."""
    from autoglm.api.app import create_app

    try:
        settings = load_settings(config, batch_concurrency=concurrency, model_path=model_path)
        settings = settings.model_copy(update={"grpc_port": None})  # no listener at all
        if settings.batch_concurrency < 1:
            raise fail("a worker needs --concurrency of at least 1")
        app = create_app(settings, make_admin_key=False)
    except AutoGLMError as exc:
        raise fail(exc.message) from None
    queue = "redis stream" if settings.redis_url is not None else "database"
    err_console().print(f"batch worker: {settings.batch_concurrency} line(s) at a time from "
                        f"the {queue} queue; Ctrl-C to stop")
    try:
        asyncio.run(_run(app))
    except AutoGLMError as exc:
        raise fail(exc.message) from None


async def _run(app) -> None:  # noqa: ANN001
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with app.router.lifespan_context(app):  # engines, the batch worker; no listener
        await stop.wait()
