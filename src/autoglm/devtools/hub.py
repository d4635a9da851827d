"""A stand-in model hub: ``python -m autoglm.devtools.hub --root DIR --port P``.

For tests only. It serves every ``DIR/<org>/<name>/`` directory as a model repository and
speaks the parts of both hubs' HTTP APIs that model downloads use:

- Hugging Face: ``GET /api/models/<repo>``, ``GET /api/models/<repo>/revision/<rev>``
  (``siblings`` with sizes and LFS SHA-256), ``GET /api/models/<repo>/tree/<rev>`` (what
  ``huggingface_hub.snapshot_download`` lists), ``GET|HEAD /<repo>/resolve/<rev>/<path>``
  (LFS files answer 302 to ``/_lfs/<sha256>`` on a second loopback address standing in for
  the CDN, with ``X-Repo-Commit``, ``X-Linked-Etag`` and ``X-Linked-Size``;
  small files answer with their git blob id as ``ETag``), errors named by ``X-Error-Code``.
- ModelScope: ``GET /api/v1/models/<repo>``, ``GET /api/v1/models/<repo>/repo/files``
  (``Files`` with ``Size`` and ``Sha256``) and ``GET /api/v1/models/<repo>/repo?FilePath=``.

Content honours ``Range: bytes=N-`` (206). Faults are set with ``POST /_control``::

    {"faults": [{"kind": "cut", "after_bytes": 65536, "times": 1, "path": "*.gguf"},
                {"kind": "corrupt", "times": 1},
                {"kind": "status", "status": 429, "times": 2}],
     "rate": 1048576, "fake_size": {"big.bin": 10**14}, "fake_name": {"a.txt": "../a.txt"}}

``cut`` closes the connection mid-file, ``corrupt`` flips one byte, ``status`` answers
429/500/...; ``rate`` throttles content to bytes per second; ``fake_size`` lies about a
file's size in listings, ``fake_name`` about its name (a hostile mirror). ``GET /_stats``
lists every content request with its method, range start and the bytes sent. No Xet
headers are ever sent: clients fall back to plain HTTP.
"""

from __future__ import annotations

import argparse
import asyncio
import fnmatch
import hashlib
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

import orjson

from autoglm.devtools.serving import serve_until_signalled

LFS_MIN = 1 << 20
LFS_SUFFIXES = (".gguf", ".safetensors", ".bin", ".pt")
_REASONS = {200: "OK", 206: "Partial Content", 302: "Found", 404: "Not Found",
            416: "Range Not Satisfiable", 429: "Too Many Requests",
            500: "Internal Server Error", 503: "Service Unavailable"}


@dataclass
class RepoFile:
    path: str
    file: Path
    size: int
    sha256: str
    git_sha1: str

    @property
    def lfs(self) -> bool:
        return self.size >= LFS_MIN or self.path.endswith(LFS_SUFFIXES)


class Hub:
    def __init__(self, root: Path, cdn: str = "127.0.0.2:0") -> None:
        self.root = root
        self.cdn = cdn  # host:port that LFS downloads are redirected to
        self.faults: list[dict[str, Any]] = []
        self.rate: float | None = None
        self.fake_size: dict[str, int] = {}
        self.fake_name: dict[str, str] = {}
        self.requests: list[dict[str, Any]] = []
        self._cache: dict[Path, tuple[float, RepoFile]] = {}

    # -- repositories ------------------------------------------------------------------
    def files(self, repo: str) -> list[RepoFile] | None:
        base = (self.root / repo).resolve()
        if repo.count("/") != 1 or not base.is_dir() or self.root.resolve() not in base.parents:
            return None
        out = []
        for p in sorted(base.rglob("*")):
            if p.is_file():
                out.append(self._describe(base, p))
        return out

    def _describe(self, base: Path, p: Path) -> RepoFile:
        mtime = p.stat().st_mtime
        hit = self._cache.get(p)
        if hit and hit[0] == mtime:
            return hit[1]
        data = p.read_bytes()
        rf = RepoFile(p.relative_to(base).as_posix(), p, len(data),
                      hashlib.sha256(data).hexdigest(),
                      hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest())
        self._cache[p] = (mtime, rf)
        return rf

    @staticmethod
    def commit(files: list[RepoFile]) -> str:
        h = hashlib.sha1()
        for f in files:
            h.update(f"{f.path}\0{f.sha256}\n".encode())
        return h.hexdigest()

    def snapshot(self, repo: str, rev: str) -> tuple[str, list[RepoFile]] | str:
        """(commit, files), or the X-Error-Code to answer with."""
        files = self.files(repo)
        if files is None:
            return "RepoNotFound"
        commit = self.commit(files)
        if rev not in ("main", "master", commit):
            return "RevisionNotFound"
        return commit, [replace(f, path=self.fake_name.get(f.path, f.path)) for f in files]

    def size_of(self, f: RepoFile) -> int:
        return self.fake_size.get(f.path, f.size)

    def take_fault(self, path: str) -> dict[str, Any] | None:
        for fault in self.faults:
            if fault.get("times", 1) > 0 and fnmatch.fnmatch(path, fault.get("path", "*")):
                fault["times"] = fault.get("times", 1) - 1
                return fault
        return None


def _head(status: int, headers: dict[str, str], length: int) -> bytes:
    lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    lines.append(f"content-length: {length}")
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
                 "etag": f'"{f.sha256 if f.lfs else f.git_sha1}"', **headers}
        if start:
            extra["content-range"] = f"bytes {start}-{f.size - 1}/{f.size}"
        self.writer.write(_head(status, extra, f.size - start))
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
        return True


def _hf(conn: Conn, parts: list[str], query: dict[str, list[str]],
        headers: dict[str, str]) -> Any:
    hub = conn.hub
    if parts[:2] == ["api", "models"] and len(parts) >= 6 and parts[4] == "tree":
        snap = hub.snapshot("/".join(parts[2:4]), unquote(parts[5]))
        if isinstance(snap, str):
            conn.hf_error(snap, "not found")
            return True
        under = "/".join(parts[6:])
        tree = []
        for f in snap[1]:
            if under and not f.path.startswith(under + "/"):
                continue
            item: dict[str, Any] = {"type": "file", "oid": f.git_sha1, "size": hub.size_of(f),
                                    "path": f.path}
            if f.lfs:
                item["lfs"] = {"oid": f.sha256, "size": hub.size_of(f), "pointerSize": 134}
            tree.append(item)
        conn.json(200, tree)
        return True
    if parts[:2] == ["api", "models"] and len(parts) >= 4:
        repo = "/".join(parts[2:4])
        rev = parts[5] if len(parts) >= 6 and parts[4] == "revision" else "main"
        snap = hub.snapshot(repo, unquote(rev))
        if isinstance(snap, str):
            conn.hf_error(snap, f"{'Revision' if snap == 'RevisionNotFound' else 'Repository'} "
                                f"not found")
            return True
        commit, files = snap
        siblings = []
        for f in files:
            s: dict[str, Any] = {"rfilename": f.path, "size": hub.size_of(f),
                                 "blobId": f.git_sha1}
            if f.lfs:
                s["lfs"] = {"sha256": f.sha256, "size": hub.size_of(f), "pointerSize": 134}
            siblings.append(s)
        conn.json(200, {"id": repo, "modelId": repo, "sha": commit, "siblings": siblings,
                        "private": False, "gated": False})
        return True
    if len(parts) >= 5 and parts[2] == "resolve":
        repo, rev, path = "/".join(parts[:2]), unquote(parts[3]), "/".join(parts[4:])
        snap = hub.snapshot(repo, rev)
        if isinstance(snap, str):
            conn.hf_error(snap, "not found")
            return True
        commit, files = snap
        f = next((x for x in files if x.path == path), None)
        if f is None:
            conn.hf_error("EntryNotFound", "Entry not found")
            return True
        info = {"x-repo-commit": commit}
        if f.lfs:
            info.update({"x-linked-etag": f'"{f.sha256}"', "x-linked-size": str(hub.size_of(f)),
                         "etag": f'"{f.sha256}"',
                         # another host, as the real hub's CDN: clients read the 302's
                         # headers and follow it only to fetch the bytes
                         "location": f"http://{hub.cdn}/_lfs/{f.sha256}?repo={quote(repo)}"
                                     f"&path={quote(path)}"})
            conn.writer.write(_head(302, info, 0))
            return True
        return conn.content(f, headers.get("range"), info)
    if parts[:1] == ["_lfs"] and len(parts) == 2:
        files = hub.files(query.get("repo", [""])[0]) or []
        f = next((x for x in files if x.sha256 == parts[1]), None)
        if f is None:
            conn.json(404, {"error": "no such object"})
            return True
        return conn.content(f, headers.get("range"), {})
    return None


def _modelscope(conn: Conn, parts: list[str], query: dict[str, list[str]],
                headers: dict[str, str]) -> Any:
    if parts[:3] != ["api", "v1", "models"] or len(parts) < 5:
        return None
    hub = conn.hub
    repo = "/".join(parts[3:5])
    rev = query.get("Revision", ["master"])[0]
    snap = hub.snapshot(repo, rev)
    if isinstance(snap, str):
        conn.ms_error("model not found" if snap == "RepoNotFound"
                      else f"revision {rev} not found")
        return True
    commit, files = snap
    if len(parts) == 5:
        conn.json(200, {"Code": 200, "Data": {"Path": parts[3], "Name": parts[4]},
                        "Success": True})
        return True
    if parts[5:] == ["repo", "files"]:
        listing = [{"Name": f.path.rsplit("/", 1)[-1], "Path": f.path, "Type": "blob",
                    "Size": hub.size_of(f), "Sha256": f.sha256, "Revision": commit}
                   for f in files]
        conn.json(200, {"Code": 200, "Data": {"Files": listing}, "Success": True})
        return True
    if parts[5:] == ["repo"]:
        path = query.get("FilePath", [""])[0]
        f = next((x for x in files if x.path == path), None)
        if f is None:
            conn.ms_error("file not found")
            return True
        return conn.content(f, headers.get("range"), {})
    return None


async def handle(hub: Hub, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, target, _ = lines[0].split(" ", 2)
            headers = {}
            for line in lines[1:]:
                if ":" in line:
                    k, v = line.split(":", 1)
                    headers[k.strip().lower()] = v.strip()
            length = int(headers.get("content-length", 0))
            body = await reader.readexactly(length) if length else b""
            url = urlsplit(target)
            query = parse_qs(url.query)
            conn = Conn(hub, writer, method)
            if url.path == "/_control" and method == "POST":
                conf = orjson.loads(body or b"{}")
                hub.faults = conf.get("faults", hub.faults)
                hub.rate = conf.get("rate", hub.rate)
                hub.fake_size = conf.get("fake_size", hub.fake_size)
                hub.fake_name = conf.get("fake_name", hub.fake_name)
                if conf.get("reset_stats"):
                    hub.requests.clear()
                conn.json(200, {})
                continue
            if url.path == "/_stats":
                conn.json(200, {"requests": hub.requests, "pid": os.getpid()})
                continue
            parts = [p for p in url.path.split("/") if p]
            result = _modelscope(conn, parts, query, headers)
            if result is None:
                result = _hf(conn, parts, query, headers)
            if result is None:
                conn.json(404, {"error": "no such endpoint"})
            elif result is not True and not await result:
                return
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError, ValueError):
        pass
    finally:
        writer.close()


async def main_async(args: argparse.Namespace) -> None:
    hub = Hub(Path(args.root), f"{args.cdn_host}:{args.port}")
    server = await asyncio.start_server(lambda r, w: handle(hub, r, w),
                                        [args.host, args.cdn_host], args.port)
    await serve_until_signalled(
        server, f"stand-in hub serving {args.root} on {args.host}:{args.port}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="autoglm-hub")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--root", required=True, help="directory of <org>/<name>/ repositories")
    p.add_argument("--cdn-host", default="127.0.0.2",
                   help="second loopback address, standing in for the CDN LFS files come from")
    asyncio.run(main_async(p.parse_args(argv)))


if __name__ == "__main__":
    main()
