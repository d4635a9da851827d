"""The gateway's HTTP protocol pieces: writes coalesced per event-loop turn, and the
slow-client deadline kept with one timer per connection."""

from __future__ import annotations

import asyncio
from typing import Any

from autoglm.serving.protocol import CoalescingTransport


class Recorder:
    """The transport underneath: what was written, in which calls."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = self.aborted = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def is_closing(self) -> bool:
        return self.closed or self.aborted

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 1)}.get(name, default)


async def test_writes_in_one_turn_leave_in_one_call() -> None:
    raw = Recorder()
    t = CoalescingTransport(raw, asyncio.get_running_loop())  # type: ignore[arg-type]
    t.write(b"HTTP/1.1 200 OK\r\n\r\n")
    t.write(b"{}")
    assert raw.writes == []  # nothing sent within the turn
    await asyncio.sleep(0)
    assert raw.writes == [b"HTTP/1.1 200 OK\r\n\r\n{}"]
    t.write(b"next")
    await asyncio.sleep(0)
    assert raw.writes[1:] == [b"next"]
    assert t.get_extra_info("peername") == ("127.0.0.1", 1)  # the rest passes through


async def test_close_sends_what_is_pending_and_abort_drops_it() -> None:
    loop = asyncio.get_running_loop()
    raw = Recorder()
    t = CoalescingTransport(raw, loop)  # type: ignore[arg-type]
    t.write(b"last words")
    t.close()
    assert raw.writes == [b"last words"] and raw.closed
    await asyncio.sleep(0)  # the scheduled flush finds nothing more to send
    assert raw.writes == [b"last words"]
    raw2 = Recorder()
    t2 = CoalescingTransport(raw2, loop)  # type: ignore[arg-type]
    t2.write(b"never sent")
    t2.abort()
    await asyncio.sleep(0)
    assert raw2.writes == [] and raw2.aborted


async def test_a_large_write_is_not_held_back() -> None:
    raw = Recorder()
    t = CoalescingTransport(raw, asyncio.get_running_loop())  # type: ignore[arg-type]
    t.write(b"a" * 10)
    t.write(b"b" * CoalescingTransport.FLUSH_BYTES)
    assert raw.writes == [b"a" * 10 + b"b" * CoalescingTransport.FLUSH_BYTES]
