"""``autoglm model pull``: a model from a hub or mirror into the registry.

Files are fetched into ``data_dir/models/.incoming/<name>/`` and only moved to
``data_dir/models/store/<name>/`` and registered once every one of them matches the hash
the hub publishes; until then nothing in the registry points at them, so a half-written
model never looks complete. ``.incoming/<name>.json`` remembers the revision and the files
already checked: run the same command again after an interruption (network cut, SIGKILL,
disk full) and it resumes where it stopped. An exclusive lock on ``<name>.lock`` makes a
second pull of the same model wait for the first instead of writing the same files.

A file the hub publishes no hash for (no SHA-256, LFS oid or git blob id) cannot be checked:
it is refused, before any byte is fetched, unless the caller allows it (``--allow-unhashed``);
then its SHA-256 is computed here from the bytes received, the manifest lists it under
``unhashed``, and the reporter is told which files they were.
"""

from __future__ import annotations

import fcntl
import fnmatch
import json
import logging
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Protocol

import httpx

from autoglm import __version__
from autoglm.errors import (
    ConfigError,
    HubError,
    IntegrityError,
    NotFoundError,
    StorageFullError,
)
from autoglm.state.locks import Locks
from autoglm.supply import manifest as mf
from autoglm.supply import mirror
from autoglm.supply.hubs import RemoteFile, Snapshot, hub_for
from autoglm.supply.registry import Registry
from autoglm.supply.transfer import Backoff, fetch, git_blob_sha1
from autoglm.timefmt import stamp

STATE_VERSION = 1
log = logging.getLogger("autoglm.pull")


class Reporter(Protocol):
    def waiting(self, name: str) -> None: ...
    def start(self, snap: Snapshot, files: list[RemoteFile], on_disk: int) -> None: ...
    def advance(self, path: str, n: int) -> None: ...
    def retrying(self, what: str, why: str, delay: float) -> None: ...
    def unhashed(self, paths: list[str]) -> None: ...
    def done(self) -> None: ...


class Quiet:
    """No progress output; files accepted without a published hash are logged."""

    def waiting(self, name: str) -> None: ...
    def start(self, snap: Snapshot, files: list[RemoteFile], on_disk: int) -> None: ...
    def advance(self, path: str, n: int) -> None: ...
    def retrying(self, what: str, why: str, delay: float) -> None: ...

    def unhashed(self, paths: list[str]) -> None:
        log.warning("no hash published for %s: accepted (allow_unhashed), SHA-256 computed "
                    "locally", ", ".join(paths), extra={"unhashed": paths})

    def done(self) -> None: ...


@dataclass
class PullRequest:
    repo: str
    source: str = "hf"
    revision: str | None = None
    endpoint: str | None = None
    include: list[str] = field(default_factory=list)
    name: str | None = None
    allow_unhashed: bool = False  # accept files the hub publishes no hash for


@dataclass
class PullResult:
    entry: dict[str, Any]
    fetched: int  # bytes downloaded by this run
    resumed: int  # bytes found on disk from an earlier run and not fetched again
    up_to_date: bool = False
    unhashed: list[str] = field(default_factory=list)  # accepted with no published hash


def _unhashed(files: list[RemoteFile], repo: str, revision: str, allowed: bool) -> list[str]:
    """Files with no published hash: refused, unless ``allowed``."""
    paths = [f.path for f in files if not f.hashed]
    if paths and not allowed:
        shown = ", ".join(paths[:8]) + (f" and {len(paths) - 8} more" if len(paths) > 8 else "")
        raise IntegrityError(f"the hub publishes no hash for {shown} ({repo}@{revision}), so "
                             "the bytes cannot be checked; nothing was downloaded. Pass "
                             "--allow-unhashed to accept them (their SHA-256 is then computed "
                             "here and recorded in the manifest)")
    return paths


def _valid_repo(repo: str) -> str:
    parts = repo.strip("/").split("/")
    if len(parts) != 2 or not all(parts) or any(p in (".", "..") for p in parts):
        raise ConfigError(f"repository '{repo}' should look like ORG/NAME")
    return "/".join(parts)


class Puller:
    def __init__(self, registry: Registry, *, retries: int = 6, backoff_s: float = 1.0,
                 timeout_s: float = 60.0, reporter: Reporter | None = None,
                 locks: Locks | None = None) -> None:
        self.registry = registry
        self.locks = locks or Locks(None)  # with Redis: one pull of a name across hosts
        self.reporter = reporter or Quiet()
        self.backoff = Backoff(retries=retries, base=backoff_s, on_retry=self.reporter.retrying)
        self.timeout = httpx.Timeout(timeout_s, connect=min(timeout_s, 15.0))
        self.incoming = registry.dir / ".incoming"
        self.store = registry.dir / "store"

    @contextmanager
    def _locked(self, name: str) -> Iterator[None]:
        self.incoming.mkdir(parents=True, exist_ok=True)
        with self.locks.hold(f"pull:{name}", what=f"a pull of {name}"), \
                (self.incoming / f"{name}.lock").open("a+") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                self.reporter.waiting(name)
                fcntl.flock(fh, fcntl.LOCK_EX)  # the kernel drops it if its holder dies
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def pull(self, req: PullRequest) -> PullResult:
        repo = _valid_repo(req.repo)
        hub = hub_for(req.source, req.endpoint)
        name = req.name or repo.split("/")[-1]
        self.registry.check_name(name)
        with self._locked(name), httpx.Client(
                timeout=self.timeout, follow_redirects=True, event_hooks={"request": [hub.token]},
                headers={"user-agent": f"autoglm/{__version__}"}) as http:
            snap = hub.snapshot(http, self.backoff, repo, req.revision or hub.default_revision)
            source = f"{snap.source}:{repo}"
            existing = self._registered(name)
            if existing is not None:
                if existing.get("source") == source and existing.get("revision") == snap.commit:
                    return PullResult(existing, 0, 0, up_to_date=True)
                raise ConfigError(f"a model named '{name}' is already registered (from "
                                  f"{existing.get('source')}); pass --name, or `autoglm model "
                                  f"remove {name}` first")
            files = [f for f in snap.files
                     if not req.include or any(fnmatch.fnmatch(f.path, g) for g in req.include)]
            for f in files:
                parts = PurePosixPath(f.path).parts
                if not parts or f.path.startswith("/") or ".." in parts:
                    raise HubError(f"the hub listed an unsafe file name: {f.path!r}")
            if not files:
                raise ConfigError(f"no file of {repo}@{snap.revision} matches --include "
                                  f"{' '.join(req.include)}" if req.include
                                  else f"{repo}@{snap.revision} has no files")
            unhashed = _unhashed(files, repo, snap.revision, req.allow_unhashed)
            if unhashed:
                self.reporter.unhashed(unhashed)
            result = self._download(http, hub, snap, files, name, source, unhashed)
            result.unhashed = unhashed
            return result

    def _registered(self, name: str) -> dict[str, Any] | None:
        try:
            return self.registry.get(name)
        except NotFoundError:
            return None

    def _download(self, http: httpx.Client, hub: Any, snap: Snapshot, files: list[RemoteFile],
                  name: str, source: str, unhashed: list[str]) -> PullResult:
        staging, state_path = self.incoming / name, self.incoming / f"{name}.json"
        final = self.store / name
        kept = final.exists()
        if kept:  # stopped before registering, or `model remove`d: its files are checked again
            shutil.rmtree(staging, ignore_errors=True)
            os.replace(final, staging)
        state = self._state(state_path, staging, source, snap, files, keep=kept)
        wanted = {f.path for f in files}
        for path in list(state["done"]):
            if path not in wanted or not (staging / path).is_file():
                del state["done"][path]
        on_disk = sum(_on_disk(staging, f) for f in files)
        self._check_space(staging, sum(f.size for f in files) - on_disk, snap.repo)
        self.reporter.start(snap, files, on_disk)
        fetched = 0
        for f in files:
            if f.path in state["done"]:
                continue
            dest = staging / f.path
            if (digest := self._checked_on_disk(dest, f)) is not None:
                state["done"][f.path] = {"sha256": digest, "size": f.size}
                _write_json(state_path, state)
                continue
            before = _size(dest.with_name(dest.name + ".part"))

            def advance(n: int, path: str = f.path) -> None:
                self.reporter.advance(path, n)

            digest = fetch(http, self.backoff, hub.file_url(snap, f.path), {},
                           path=f.path, size=f.size, sha256=f.sha256, git_sha1=f.git_sha1,
                           dest=dest, progress=advance)
            fetched += max(0, dest.stat().st_size - before)
            # the size on disk: a mirror that lists no sizes still gets a true manifest
            state["done"][f.path] = {"sha256": digest, "size": dest.stat().st_size}
            _write_json(state_path, state)
        self.reporter.done()
        return PullResult(self._finish(staging, state_path, state, snap, name, source,
                                       unhashed), fetched, on_disk)

    @staticmethod
    def _checked_on_disk(dest: Path, f: RemoteFile) -> str | None:
        """A whole file already in place (a model moved back): its SHA-256 if the hub's hash
        confirms it; otherwise it is deleted, to be fetched again."""
        if not dest.is_file() or dest.with_name(dest.name + ".part").exists():
            return None
        if dest.stat().st_size == f.size:
            digest = mf.sha256_file(dest)
            if digest == f.sha256 or (not f.sha256 and f.git_sha1
                                      and git_blob_sha1(dest) == f.git_sha1):
                return digest
        dest.unlink()
        return None

    def _state(self, state_path: Path, staging: Path, source: str, snap: Snapshot,
               files: list[RemoteFile], *, keep: bool) -> dict[str, Any]:
        try:
            state = json.loads(state_path.read_text())
        except (OSError, ValueError):
            state = None
        if not state or state.get("source") != source or state.get("commit") != snap.commit:
            if not keep:  # bytes of another model or revision: start over
                shutil.rmtree(staging, ignore_errors=True)
            state = {"version": STATE_VERSION, "source": source, "commit": snap.commit,
                     "done": {}}
        staging.mkdir(parents=True, exist_ok=True)
        state["files"] = {f.path: {"size": f.size, "sha256": f.sha256} for f in files}
        _write_json(state_path, state)
        return state

    @staticmethod
    def _check_space(where: Path, needed: int, repo: str) -> None:
        free = shutil.disk_usage(where).free
        if needed > free:
            raise StorageFullError(f"not enough disk space for {repo}: {_human(needed)} still "
                                   f"to fetch, {_human(free)} free in {where}")

    def _finish(self, staging: Path, state_path: Path, state: dict[str, Any], snap: Snapshot,
                name: str, source: str, unhashed: list[str]) -> dict[str, Any]:
        listed = state["done"]
        published = mirror.take_published(staging, listed)  # an autoglm mirror's extras
        for path in mf.model_files(staging):  # leftovers of an older run are not the model
            if path.relative_to(staging).as_posix() not in listed:
                path.unlink()
        manifest = {"version": mf.MANIFEST_VERSION, "created_at": stamp(),
                    "source": source, "revision": snap.commit,
                    "files": [mf.file_entry(staging, staging / p, d["sha256"], d["size"])
                              for p, d in sorted(listed.items())],
                    "total_size": sum(d["size"] for d in listed.values())}
        if unhashed:  # their SHA-256 was computed here: the hub vouched for nothing
            manifest["unhashed"] = sorted(unhashed)
        self.store.mkdir(parents=True, exist_ok=True)
        final = self.store / name
        os.replace(staging, final)
        entry = self.registry.register(name, mirror.model_root(final, published, listed),
                                       manifest, source=source, revision=snap.commit)
        mirror.keep_signature(self.registry, name, published)
        state_path.unlink(missing_ok=True)
        return entry


def _on_disk(staging: Path, f: RemoteFile) -> int:
    dest = staging / f.path
    if dest.is_file() and _size(dest) == f.size:
        return f.size
    return min(_size(dest.with_name(dest.name + ".part")), f.size)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _human(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024
    return f"{n} B"


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("w") as fh:
        json.dump(data, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
