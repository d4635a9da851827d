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
     "rate": 1048576, "fake_size": {"big.bin": 10**14}, "fake_name": {"a.txt": "../a.txt"},
     "unhashed": ["*.json"], "cdn": "127.0.0.1:8001", "redirect_all": true}

``cut`` closes the connection mid-file, ``corrupt`` flips one byte, ``status`` answers
429/500/..., ``oversize`` (``"extra": N``) sends N bytes more than the file, announced in
``Content-Length`` with ``"declare": true``, else without a length, ending by closing the
connection; ``rate`` throttles content to bytes per second; ``fake_size`` lies about a
file's size in listings, ``fake_name`` about its name (a hostile mirror); ``unhashed``
files are listed and served with no hash at all (no SHA-256, LFS oid, blob id or ETag);
``cdn`` moves the address LFS downloads are redirected to (``--also-port`` adds a listener
on another port of the same host), and ``redirect_all`` redirects every download there,
small files and ModelScope ones too. ``GET /_stats`` lists every content request with its
method, range start and the bytes sent, and under ``seen`` every request with the address
it reached and the ``Authorization`` header it carried. No Xet headers are ever sent:
clients fall back to plain HTTP.
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
from urllib.parse import parse_qs, unquote, urlsplit

import orjson

from autoglm.devtools.hub_conn import Conn
from autoglm.devtools.serving import serve_until_signalled

LFS_MIN = 1 << 20
LFS_SUFFIXES = (".gguf", ".safetensors", ".bin", ".pt")


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
        self.unhashed: list[str] = []  # globs of files published without any hash
        self.redirect_all = False
        self.requests: list[dict[str, Any]] = []
        self.seen: list[dict[str, Any]] = []  # every request: address reached, Authorization
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

    def hashed(self, f: RepoFile) -> bool:
        return not any(fnmatch.fnmatch(f.path, g) for g in self.unhashed)

    def take_fault(self, path: str) -> dict[str, Any] | None:
        for fault in self.faults:
            if fault.get("times", 1) > 0 and fnmatch.fnmatch(path, fault.get("path", "*")):
                fault["times"] = fault.get("times", 1) - 1
                return fault
        return None


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
            item: dict[str, Any] = {"type": "file", "size": hub.size_of(f), "path": f.path}
            if hub.hashed(f):
                item["oid"] = f.git_sha1
            if f.lfs:
                item["lfs"] = {"size": hub.size_of(f), "pointerSize": 134}
                if hub.hashed(f):
                    item["lfs"]["oid"] = f.sha256
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
            s: dict[str, Any] = {"rfilename": f.path, "size": hub.size_of(f)}
            if hub.hashed(f):
                s["blobId"] = f.git_sha1
            if f.lfs:
                s["lfs"] = {"size": hub.size_of(f), "pointerSize": 134}
                if hub.hashed(f):
                    s["lfs"]["sha256"] = f.sha256
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
            info["x-linked-size"] = str(hub.size_of(f))
            if hub.hashed(f):
                info.update({"x-linked-etag": f'"{f.sha256}"', "etag": f'"{f.sha256}"'})
        if f.lfs or hub.redirect_all:
            # another host, as the real hub's CDN: clients read the 302's headers and
            # follow it only to fetch the bytes
            conn.redirect(f, repo, path, info)
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
                    "Size": hub.size_of(f), "Revision": commit,
                    **({"Sha256": f.sha256} if hub.hashed(f) else {})} for f in files]
        conn.json(200, {"Code": 200, "Data": {"Files": listing}, "Success": True})
        return True
    if parts[5:] == ["repo"]:
        path = query.get("FilePath", [""])[0]
        f = next((x for x in files if x.path == path), None)
        if f is None:
            conn.ms_error("file not found")
            return True
        if hub.redirect_all:
            conn.redirect(f, repo, path, {})
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
                for knob in ("faults", "rate", "fake_size", "fake_name", "unhashed", "cdn",
                             "redirect_all"):
                    setattr(hub, knob, conf.get(knob, getattr(hub, knob)))
                if conf.get("reset_stats"):
                    hub.requests.clear()
                    hub.seen.clear()
                conn.json(200, {})
                continue
            if url.path == "/_stats":
                conn.json(200, {"requests": hub.requests, "seen": hub.seen, "pid": os.getpid()})
                continue
            host, port = writer.get_extra_info("sockname")[:2]
            hub.seen.append({"at": f"{host}:{port}", "method": method, "path": url.path,
                             "authorization": headers.get("authorization")})
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
    other = None
    if args.also_port:  # another origin on the same host: a redirect target for tests
        other = await asyncio.start_server(lambda r, w: handle(hub, r, w), args.host,
                                           args.also_port)
    await serve_until_signalled(
        server, f"stand-in hub serving {args.root} on {args.host}:{args.port}")
    if other is not None:
        other.close()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="autoglm-hub")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--root", required=True, help="directory of <org>/<name>/ repositories")
    p.add_argument("--cdn-host", default="127.0.0.2",
                   help="second loopback address, standing in for the CDN LFS files come from")
    p.add_argument("--also-port", type=int, default=None,
                   help="also listen on this port of --host (another origin, same host)")
    asyncio.run(main_async(p.parse_args(argv)))


if __name__ == "__main__":
    main()
