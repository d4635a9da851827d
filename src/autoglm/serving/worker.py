"""A gateway worker: ``python -m autoglm.serving.worker --fd N --index I``.

Started by the main process of ``autoglm serve --workers N`` (``workers.py``), which
writes the settings and the engines' attach specs as one JSON object on the worker's
standard input (secrets never go on a command line or into a file). The worker accepts
on the listening socket it inherited, shares the engine processes of the main process
and the database, and exits when the main process goes away.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
import threading
import time

import orjson
import uvicorn

from autoglm.errors import AutoGLMError
from autoglm.logs import setup_logging
from autoglm.serving.server import uvicorn_config
from autoglm.settings import Settings

log = logging.getLogger("autoglm.worker")


def _watch_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(1.0)
    os.kill(os.getpid(), signal.SIGTERM)  # graceful: uvicorn drains, then exits


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="autoglm-gateway-worker")
    p.add_argument("--fd", type=int, required=True)
    p.add_argument("--index", type=int, required=True)
    args = p.parse_args(argv)
    from autoglm.api.app import create_app
    from autoglm.engine.factory import attach_engines

    payload = orjson.loads(sys.stdin.buffer.read())
    settings = Settings(**payload["settings"])
    setup_logging(settings.log_level, component=f"gateway-{args.index}")
    threading.Thread(target=_watch_parent, args=(os.getppid(),), daemon=True).start()
    try:
        app = create_app(settings, engines=attach_engines(settings, payload["engines"]),
                         primary=False)
    except AutoGLMError as exc:
        log.error("gateway worker failed to start: %s", exc.message)
        raise SystemExit(78) from None
    sock = socket.socket(fileno=args.fd)
    server = uvicorn.Server(uvicorn_config(settings, app))
    server.run(sockets=[sock])
    raise SystemExit(0 if server.started else 1)


if __name__ == "__main__":
    main()
