"""One gateway process: the app on uvicorn, TLS 1.3 minimum when TLS is on."""

from __future__ import annotations

import socket
import ssl
from collections.abc import Callable
from typing import Any

import uvicorn

from autoglm.serving.protocol import protocol_with_deadlines
from autoglm.settings import Settings

Announce = Callable[[str, str], None]


def uvicorn_config(settings: Settings, app: Any, **bind: Any) -> uvicorn.Config:
    """uvicorn settings shared by the single server and every worker."""
    tls: dict[str, str] = {}
    if settings.tls_enabled:
        tls = {"ssl_certfile": str(settings.ssl_certfile), "ssl_keyfile": str(settings.ssl_keyfile)}
    # X-Forwarded-* only from the proxies named; uvicorn alone would believe any process on
    # the loopback interface.
    proxies = list(settings.forwarded_allow_ips)
    config = uvicorn.Config(
        app, log_config=None, access_log=False, server_header=False,
        proxy_headers=bool(proxies), forwarded_allow_ips=proxies or None,
        timeout_graceful_shutdown=10,
        http=protocol_with_deadlines(settings.header_timeout_s, settings.body_timeout_s,
                                     settings.max_connections),
        **bind, **tls,
    )
    config.load()
    if config.ssl is not None:
        config.ssl.minimum_version = (
            ssl.TLSVersion.TLSv1_2 if settings.tls_allow_1_2 else ssl.TLSVersion.TLSv1_3
        )
    return config


def run_single(settings: Settings, announce: Announce, ready: Callable[[], None]) -> bool:
    """Serve in this process until a signal; False when the server could not start."""
    from autoglm.api.app import create_app

    app = create_app(settings, announce=announce)
    config = uvicorn_config(settings, app, host=settings.host, port=settings.port)
    ready()
    server = uvicorn.Server(config)
    server.run()
    return bool(server.started)


def listening_socket(host: str, port: int) -> socket.socket:
    """The one socket every worker accepts on."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock
