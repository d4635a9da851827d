"""TLS on the gRPC port, with the HTTP port's policy: TLS 1.3 minimum (1.2 only with
``tls_allow_1_2``).

grpcio's Python API cannot bound the TLS versions of a server: ``grpc.ssl_server_credentials``
has no such option, and gRPC core then accepts TLS 1.2 and 1.3 (the options are proposed
upstream in grpc/grpc#43074 and #43080, not released). Restricting TLS 1.2 cipher suites
(``GRPC_SSL_CIPHER_SUITES``) cannot do it either: a list without TLS 1.2 suites is refused.
So TLS is terminated here with Python's ``ssl`` (OpenSSL), ALPN ``h2`` as gRPC clients
require, and the decrypted HTTP/2 bytes are piped to the gRPC server, which listens only on a
Unix socket in the app's private run directory (mode 0700).
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import ssl
from pathlib import Path

log = logging.getLogger("autoglm.rpc")

_CHUNK = 256 * 1024


def server_context(certfile: Path, keyfile: Path, allow_tls12: bool) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2 if allow_tls12 else ssl.TLSVersion.TLSv1_3
    ctx.load_cert_chain(str(certfile), str(keyfile))
    ctx.set_alpn_protocols(["h2"])
    return ctx


class TlsFront:
    """Accepts TLS connections on (host, port); each becomes one connection to ``backend``."""

    def __init__(self, ctx: ssl.SSLContext, backend: Path,
                 peers: dict[str, str] | None = None) -> None:
        self.ctx = ctx
        self.backend = str(backend)
        # Each backend connection is bound to a random abstract socket name, which the gRPC
        # server sees as its peer (``unix-abstract:NAME``): NAME -> the client's address.
        self.peers = peers if peers is not None else {}
        self._server: asyncio.Server | None = None
        self._conns: set[asyncio.Task[None]] = set()

    async def start(self, host: str, port: int) -> int:
        """Listen (SO_REUSEPORT, so several gateway processes may share the port); returns
        the bound port."""
        self._server = await asyncio.start_server(
            self._serve, host, port, ssl=self.ctx, reuse_port=True, limit=_CHUNK)
        return self._server.sockets[0].getsockname()[1]

    def stop_accepting(self) -> None:
        if self._server is not None:
            self._server.close()

    async def close(self) -> None:
        """After the gRPC server stopped: end the connections still open."""
        self.stop_accepting()
        for task in list(self._conns):
            task.cancel()
        if self._conns:
            await asyncio.gather(*self._conns, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("the TLS front serves connections inside tasks")
        self._conns.add(task)
        name = f"autoglm-{os.getpid()}-{secrets.token_hex(8)}"
        try:
            try:
                b_reader, b_writer = await self._connect(name)
            except OSError as exc:
                log.error("gRPC server unreachable behind TLS", extra={"error": str(exc)})
                return
            peer = writer.get_extra_info("peername")
            if peer:
                self.peers[name] = peer[0]
            try:
                await asyncio.gather(_pipe(reader, b_writer), _pipe(b_reader, writer))
            finally:
                b_writer.close()
        finally:
            self.peers.pop(name, None)
            writer.close()
            self._conns.discard(task)

    async def _connect(self, name: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            sock.bind("\0" + name)  # Linux's abstract namespace: no file, gone with the socket
            await asyncio.get_running_loop().sock_connect(sock, self.backend)
        except OSError:
            sock.close()
            raise
        return await asyncio.open_unix_connection(sock=sock, limit=_CHUNK)


async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
    """Copy until either side ends; closing ``dst`` ends the other direction too."""
    try:
        while data := await src.read(_CHUNK):
            dst.write(data)
            await dst.drain()
    except OSError:  # reset, broken pipe, TLS alert: the connection is over
        pass
    finally:
        dst.close()
