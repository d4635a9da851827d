"""What the stand-in servers share: serve until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import os
import signal


async def serve_until_signalled(server: asyncio.Server, banner: str) -> None:
    """Print ``banner`` (with the pid), then serve until SIGTERM/SIGINT, then close."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"{banner} pid {os.getpid()}", flush=True)
    await stop.wait()
    server.close()
