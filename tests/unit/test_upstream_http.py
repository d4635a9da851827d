"""The upstream HTTP client against small real servers on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from autoglm.engine.upstream.http import BrokenError, ConnectError, HttpClient, Timeouts

FAST = Timeouts(connect=2, first_byte=2, total=5)
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@contextlib.asynccontextmanager
async def server(handler: Handler) -> AsyncIterator[tuple[str, list[int]]]:
    """(base URL, one entry per accepted connection)."""
    accepted: list[int] = []

    async def on_connect(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        accepted.append(1)
        try:
            await handler(r, w)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            w.close()

    srv = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}", accepted
    finally:
        srv.close()


async def read_request(r: asyncio.StreamReader) -> bytes:
    head = await r.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    return await r.readexactly(length)


async def keep_alive(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    while True:
        body = await read_request(r)
        w.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
                % (len(body), body))
        await w.drain()


async def test_requests_reuse_one_keep_alive_connection() -> None:
    async with server(keep_alive) as (url, accepted):
        client = HttpClient(8, FAST)
        for i in range(5):
            r = await client.request("POST", url + "/v1/x", {"Content-Type": "a/b"}, b"n%d" % i)
            assert (r.status, r.headers["content-type"], await r.read()) == (
                200, "application/json", b"n%d" % i)
            r.release()
        assert len(accepted) == 1
        await client.close()


async def test_a_pooled_connection_the_server_closed_is_retried_fresh() -> None:
    async def one_per_connection(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await read_request(r)
        w.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        await w.drain()
        await asyncio.sleep(0.05)  # then the server drops the kept-alive connection

    async with server(one_per_connection) as (url, accepted):
        client = HttpClient(8, FAST)
        for _ in range(3):
            r = await client.request("POST", url, {}, b"x")
            assert await r.read() == b"ok"
            r.release()
            await asyncio.sleep(0.01)  # the close may or may not have arrived yet
        assert len(accepted) == 3
        await client.close()


async def test_chunks_arrive_as_sent_and_a_break_comes_after_them() -> None:
    async def two_chunks_then_cut(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await read_request(r)
        w.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nfirst\r\n")
        await w.drain()
        await asyncio.sleep(0.05)
        w.write(b"6\r\nsecond\r\n")
        await w.drain()
        w.transport.abort()

    async with server(two_chunks_then_cut) as (url, _):
        client = HttpClient(8, FAST)
        r = await client.request("POST", url, {}, b"")
        got = []
        with pytest.raises(BrokenError):
            async for chunk in r.chunks():
                got.append(chunk)
        assert b"".join(got) == b"firstsecond" and len(got) == 2
        r.close()
        await client.close()


async def test_refused_slow_and_malformed_are_told_apart() -> None:
    client = HttpClient(8, Timeouts(connect=1, first_byte=0.3, total=5))
    async with server(keep_alive) as (url, _):
        pass
    with pytest.raises(ConnectError):  # nobody listens there any more
        await client.request("POST", url, {}, b"")

    async def silent(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await read_request(r)
        await asyncio.sleep(5)

    async with server(silent) as (url, _):
        with pytest.raises(asyncio.TimeoutError):
            await client.request("POST", url, {}, b"")

    async def garbage(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await read_request(r)
        w.write(b"NOT HTTP AT ALL\r\n\r\n")
        await w.drain()
        await asyncio.sleep(1)

    async with server(garbage) as (url, _):
        with pytest.raises((BrokenError, ConnectError)):
            await client.request("POST", url, {}, b"")
    await client.close()
