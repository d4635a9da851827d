"""One connection of the stand-in hub (``autoglm.devtools.hub``): JSON answers, errors,
redirects to the stand-in CDN, and a file's bytes with the faults the tests ask for."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import orjson

if TYPE_CHECKING:
    from autoglm.devtools.hub import Hub, RepoFile

_REASONS = {200: "OK", 206: "Partial Content", 302: "Found", 404: "Not Found",
            416: "Range Not Satisfiable", 429: "Too Many Requests",
            500: "Internal Server Error", 503: "Service Unavailable"}


def _head(status: int, headers: dict[str, str], length: int | None) -> bytes:
    """A response head; ``length`` None: no length, the body ends when the connection does."""
    lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    lines.append(f"content-length: {length}" if length is not None else "connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


class Conn:
    def __init__(self, hub: Hub, writer: asyncio.StreamWriter, method: str) -> None:
        self.hub, self.writer, self.method = hub, writer, method

    def json(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        data = orjson.dumps(body)
        self.writer.write(_head(status, {"content-type": "application/json", **(headers or {})},
                                len(data)) + (data if self.method != "HEAD" else b""))

    def hf_error(self, code: str, message: str) -> None:
        self.json(404, {"error": message}, {"x-error-code": code, "x-error-message": message})

    def ms_error(self, message: str) -> None:
        self.json(404, {"Code": 10010205001, "Message": message, "Success": False})

    def redirect(self, f: RepoFile, repo: str, path: str, headers: dict[str, str]) -> None:
        """302 to the stand-in CDN (``hub.cdn``), which serves the bytes by SHA-256."""
        location = f"http://{self.hub.cdn}/_lfs/{f.sha256}?repo={quote(repo)}&path={quote(path)}"
        self.writer.write(_head(302, {**headers, "location": location}, 0))

    async def content(self, f: RepoFile, range_header: str | None,
                      headers: dict[str, str]) -> bool:
        """Send a file's bytes (from a range); False when the connection was cut."""
        hub = self.hub
        start = 0
        if range_header and range_header.startswith("bytes="):
            start = int(range_header[6:].split("-", 1)[0] or 0)
        record = {"path": f.path, "method": self.method, "range_start": start, "status": 200,
                  "bytes_sent": 0}
        hub.requests.append(record)
        fault = hub.take_fault(f.path)
        if fault and fault["kind"] == "status":
            record["status"] = fault["status"]
            self.json(fault["status"], {"error": "stand-in fault"}, {"retry-after": "0"})
            return True
        if start >= f.size and f.size:
            record["status"] = 416
            self.json(416, {"error": "range not satisfiable"},
                      {"content-range": f"bytes */{f.size}"})
            return True
        status = 206 if start else 200
        record["status"] = status
        extra = {"content-type": "application/octet-stream", "accept-ranges": "bytes",
                 **({"etag": f'"{f.sha256 if f.lfs else f.git_sha1}"'} if hub.hashed(f) else {}),
                 **headers}
        if start:
            extra["content-range"] = f"bytes {start}-{f.size - 1}/{f.size}"
        over = fault.get("extra", 1 << 20) if fault and fault["kind"] == "oversize" else 0
        declared = f.size - start + over if not over or fault.get("declare") else None
        self.writer.write(_head(status, extra, declared))
        if self.method == "HEAD":
            return True
        cut_at = fault.get("after_bytes", f.size // 2) if fault and fault["kind"] == "cut" else None
        corrupt_at = None
        if fault and fault["kind"] == "corrupt":
            corrupt_at = fault.get("at", f.size // 2)
        pos = start
        with f.file.open("rb") as fh:
            fh.seek(start)
            while pos < f.size:
                chunk = bytearray(fh.read(64 * 1024))
                if not chunk:
                    break
                if corrupt_at is not None and pos <= corrupt_at < pos + len(chunk):
                    chunk[corrupt_at - pos] ^= 0xFF
                if cut_at is not None and pos + len(chunk) > start + cut_at:
                    chunk = chunk[:max(0, start + cut_at - pos)]
                    self.writer.write(bytes(chunk))
                    record["bytes_sent"] += len(chunk)
                    await self.writer.drain()
                    record["status"] = "cut"
                    return False
                self.writer.write(bytes(chunk))
                record["bytes_sent"] += len(chunk)
                pos += len(chunk)
                await self.writer.drain()
                if hub.rate:
                    await asyncio.sleep(len(chunk) / hub.rate)
        while over > 0:  # a hostile mirror: more than the file, as long as the client reads
            self.writer.write(bytes(min(over, 64 * 1024)))
            record["bytes_sent"] += min(over, 64 * 1024)
            over -= 64 * 1024
            await self.writer.drain()
        return declared is not None
