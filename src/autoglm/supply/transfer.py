"""Moving bytes from a hub: retries with backoff, and one file's resumable download.

A file is fetched into ``<dest>.part``. Bytes already there (from an interrupted pull) are
hashed from disk and only the rest is asked for (``Range: bytes=N-``), so they are never
fetched again. The SHA-256 is computed as the bytes arrive; the finished file must match
the hash the hub publishes before it takes its real name, and a mismatch is an error.

The published size bounds what is read: a body announced or found to be longer is refused
at once (reading stops there, nothing past the size is ever written, and the partial file
is discarded), and so is a complete body that is shorter.
"""

from __future__ import annotations

import errno
import hashlib
import os
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from autoglm.errors import HubError, IntegrityError, NotFoundError, StorageFullError
from autoglm.supply.manifest import CHUNK

TRANSIENT = {408, 425, 429, 500, 502, 503, 504}
_SHA256 = re.compile(r"^[0-9a-f]{64}$")

Progress = Callable[[int], None]
OnRetry = Callable[[str, str, float], None]  # what, why, seconds until the next try


class Transient(Exception):
    """Worth another try. ``progressed``: bytes arrived first, so the try count restarts."""

    def __init__(self, reason: str, retry_after: float | None = None,
                 progressed: bool = False) -> None:
        super().__init__(reason)
        self.reason, self.retry_after, self.progressed = reason, retry_after, progressed


def describe(exc: BaseException) -> str:
    if isinstance(exc, Transient):
        return exc.reason
    if isinstance(exc, httpx.ConnectError):
        return f"cannot connect ({_short(exc)})"
    if isinstance(exc, httpx.TimeoutException):
        return "timed out"
    if isinstance(exc, httpx.RemoteProtocolError):
        return "the connection was closed mid-transfer"
    if isinstance(exc, httpx.TransportError):
        return f"network error ({_short(exc)})"
    return str(exc)


def _short(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    m = re.search(r"\[Errno -?\d+\] ([^\]\)]+)", text)
    return (m.group(1) if m else text).strip().lower()[:80]


def _retry_after(r: httpx.Response) -> float | None:
    try:
        return max(0.0, float(r.headers.get("retry-after", "")))
    except ValueError:
        return None


def check_status(r: httpx.Response, what: str) -> None:
    """A non-transient error status (transient ones were retried by ``Backoff``)."""
    if r.status_code >= 400:
        raise HubError(f"{what}: the hub answered {r.status_code}")


@dataclass
class Backoff:
    retries: int = 6
    base: float = 1.0
    cap: float = 60.0
    on_retry: OnRetry | None = None
    sleep: Callable[[float], None] = field(default=time.sleep)

    def run(self, what: str, fn: Callable[[], Any]) -> Any:
        """``fn()``, tried again on connection errors, resets and 408/429/5xx answers."""
        attempt = 0
        while True:
            try:
                result = fn()
                if isinstance(result, httpx.Response) and result.status_code in TRANSIENT:
                    raise Transient(f"the hub answered {result.status_code}",
                                    _retry_after(result))
                return result
            except (Transient, httpx.TransportError) as exc:
                reason = describe(exc)
                if isinstance(exc, Transient) and exc.progressed:
                    attempt = 0
                if attempt >= self.retries:
                    raise HubError(f"{what}: {reason}; gave up after {attempt + 1} tries") from None
                delay = min(self.cap, self.base * 2 ** attempt) * random.uniform(0.5, 1.0)
                if isinstance(exc, Transient) and exc.retry_after is not None:
                    delay = min(self.cap, exc.retry_after)
                if self.on_retry is not None:
                    self.on_retry(what, reason, delay)
                self.sleep(delay)
                attempt += 1


class _Partial:
    """The SHA-256 of the bytes in a ``.part`` file, kept up to date as bytes arrive."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.size = 0
        self._h = hashlib.sha256()

    def sync(self) -> int:
        """Hash what is on disk and not hashed yet (read from disk, never fetched)."""
        on_disk = self.path.stat().st_size if self.path.exists() else 0
        if on_disk < self.size:
            self.size, self._h = 0, hashlib.sha256()
        if on_disk > self.size:
            with self.path.open("rb") as fh:
                fh.seek(self.size)
                while chunk := fh.read(CHUNK):
                    self.update(chunk)
        return self.size

    def reset(self) -> None:
        self.path.unlink(missing_ok=True)
        self.size, self._h = 0, hashlib.sha256()

    def update(self, chunk: bytes) -> None:
        self._h.update(chunk)
        self.size += len(chunk)

    def hexdigest(self) -> str:
        return self._h.hexdigest()


def git_blob_sha1(path: Path) -> str:
    h = hashlib.sha1(b"blob %d\0" % path.stat().st_size)
    with path.open("rb") as fh:
        while chunk := fh.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _published(r: httpx.Response) -> str | None:
    """The SHA-256 a hub states for a download (an LFS ETag), if any."""
    for resp in [*r.history, r]:
        for name in ("x-linked-etag", "etag"):
            value = resp.headers.get(name, "").strip().removeprefix("W/").strip('"')
            if _SHA256.match(value):
                return value
    return None


def _declared(r: httpx.Response) -> int | None:
    """The body's length as the response announces it (None: not announced, or encoded)."""
    if r.headers.get("content-encoding", "identity").lower() != "identity":
        return None
    try:
        return int(r.headers["content-length"])
    except (KeyError, ValueError):
        return None


def _framed(r: httpx.Response) -> bool:
    """The response marks its own end (a length, or chunks): httpx raises on a cut one."""
    return "content-length" in r.headers or "chunked" in r.headers.get(
        "transfer-encoding", "").lower()


def _wrong_size(partial: _Partial, path: str, problem: str) -> IntegrityError:
    partial.reset()
    return IntegrityError(f"{path}: the mirror sends {problem}; the download was discarded (if "
                          "it repeats, the mirror does not serve the published file)")


def fetch(http: httpx.Client, backoff: Backoff, url: str, headers: dict[str, str], *,
          path: str, size: int, sha256: str | None, git_sha1: str | None, dest: Path,
          progress: Progress | None = None) -> str:
    """Download one file of the published ``size`` to ``dest`` (resuming ``dest.part``);
    its SHA-256, checked against ``sha256``, else the hub's ETag, else ``git_sha1`` (with
    none of them the bytes are taken as they come: the caller decides if that may be)."""
    part = dest.with_name(dest.name + ".part")
    part.parent.mkdir(parents=True, exist_ok=True)
    partial = _Partial(part)
    stated: list[str] = []
    longer = f"more than the {size:,} bytes the hub publishes"

    def attempt() -> None:
        have = partial.sync()
        if have > size:
            partial.reset()
            have = 0
        if have == size and part.exists():
            return
        req = {**headers, "accept-encoding": "identity",
               **({"range": f"bytes={have}-"} if have else {})}
        with http.stream("GET", url, headers=req) as r:
            if r.status_code == 416:  # not progress: a mirror that always says so gives up
                partial.reset()
                raise Transient("the hub refused the range; fetching the file again")
            if r.status_code in TRANSIENT:
                raise Transient(f"the hub answered {r.status_code}", _retry_after(r))
            if r.status_code == 404:
                raise NotFoundError(f"{path} is listed but the hub has no such file (404)")
            check_status(r, f"downloading {path}")
            if have and not (r.status_code == 206 and r.headers.get(
                    "content-range", "").startswith(f"bytes {have}-")):
                partial.reset()  # the whole file came back: start it again
            if (digest := _published(r)) is not None:
                stated.append(digest)
            announced = _declared(r)
            if announced is not None and announced > size - partial.size:
                raise _wrong_size(partial, path, longer)
            if announced is not None and announced < size - partial.size:
                raise _wrong_size(partial, path, f"{partial.size + announced:,} bytes but the "
                                                 f"hub publishes {size:,}")
            got, over = 0, False
            try:
                with part.open("ab") as fh:
                    for chunk in r.iter_bytes():  # as received: nothing lost on a cut
                        if len(chunk) > size - partial.size:
                            over = True  # stop reading: not one byte past the size
                            break
                        fh.write(chunk)
                        partial.update(chunk)
                        got += len(chunk)
                        if progress is not None:
                            progress(len(chunk))
                    fh.flush()
                    os.fsync(fh.fileno())
            except httpx.TransportError as exc:
                raise Transient(describe(exc), progressed=got > 0) from None
            if over:
                raise _wrong_size(partial, path, longer)
            if partial.size < size and _framed(r):  # a whole answer, and a shorter file
                raise _wrong_size(partial, path, f"{partial.size:,} bytes but the hub "
                                                 f"publishes {size:,}")
        if partial.size < size:  # the connection closed: maybe a cut, try again
            raise Transient("the download ended early", progressed=got > 0)

    try:
        backoff.run(f"downloading {path}", attempt)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise StorageFullError(
                f"disk full while writing {path} into {dest.parent}: free some space and run "
                f"the same command again; the {partial.size:,} bytes already fetched are "
                "kept") from None
        raise
    digest = partial.hexdigest()
    expected = sha256 or (stated[0] if stated else None)
    problem = None
    if partial.size != size:
        problem = f"{partial.size:,} bytes instead of {size:,}"
    elif expected and digest != expected:
        problem = f"SHA-256 {digest} but the hub publishes {expected}"
    elif not expected and git_sha1 and git_blob_sha1(part) != git_sha1:
        problem = f"its git blob id differs from the hub's {git_sha1}"
    if problem:
        partial.reset()
        raise IntegrityError(f"{path}: downloaded {problem}; the download was discarded (run "
                             "the command again; if it repeats, the mirror serves bad bytes)")
    os.replace(part, dest)
    return digest
