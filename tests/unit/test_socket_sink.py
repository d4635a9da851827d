import asyncio
import socket
import threading

import orjson

from autoglm.engine.llamacpp.sink import SocketSink


async def test_slow_reader_falls_back_to_the_loop_and_keeps_order() -> None:
    ours, peer = socket.socketpair()
    peer.setblocking(False)
    _, writer = await asyncio.open_connection(sock=ours)
    sink = SocketSink(writer)
    sink.start_direct()
    n = 400
    payload = "x" * 4000  # 400 x 4 kB: far more than a socket buffer holds

    def decode_thread() -> None:
        for i in range(n):
            sink.send([{"ev": "delta", "i": i, "text": payload}])
        sink.send([{"ev": "done"}])

    t = threading.Thread(target=decode_thread)
    t.start()
    t.join(10)  # all sent before anything is read: the socket buffer must overflow
    assert not t.is_alive()
    reader, _ = await asyncio.open_connection(sock=peer, limit=1 << 20)
    lines = []
    while True:
        line = await asyncio.wait_for(reader.readline(), 10)
        msg = orjson.loads(line)
        lines.append(msg)
        if msg["ev"] == "done":
            break
    await asyncio.wait_for(sink.finished, 5)
    assert [m["i"] for m in lines[:-1]] == list(range(n))
    assert not sink._direct  # the fallback was really taken
    sink.close()


async def test_closed_sink_never_writes_again() -> None:
    ours, peer = socket.socketpair()
    _, writer = await asyncio.open_connection(sock=ours)
    sink = SocketSink(writer)
    sink.start_direct()
    sink.send([{"ev": "delta", "text": "a"}])
    sink.close()
    sink.send([{"ev": "delta", "text": "b"}])  # must be dropped, not written to a reused fd
    await asyncio.sleep(0.05)
    peer.settimeout(1)
    data = b""
    while chunk := peer.recv(4096):
        data += chunk
    assert data == b'{"ev":"delta","text":"a"}\n'
