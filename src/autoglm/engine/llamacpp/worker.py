"""The engine process: ``python -m autoglm.engine.llamacpp.worker --socket PATH ...``.

It loads the model, runs the decode loop on a thread, and serves the gateway over a
Unix socket with newline-delimited JSON (``engine_server.py``, ``engine/ipc.py``). One
connection carries one request: the gateway closes it to cancel, and the slot is freed
before the next decode step. A ``hello`` request answers with the engine's facts.

With ``--sha256`` (the trust policy vouched for the file's hash) the model file is opened
and hashed first, on a thread that starts before llama.cpp and the engine's modules are
imported, so the hash and the imports overlap; the weights are then loaded through that
same open file (``supply/integrity.py``). An encrypted model package is decrypted
into memory only (a sealed memfd, ``supply/memload.py``) with the key from
``--key-file`` or ``$AUTOGLM_MODEL_KEY``, and loaded from there.

The process exits by itself when its parent (the gateway) goes away.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
from pathlib import Path

from autoglm.errors import AutoGLMError
from autoglm.logs import setup_logging
from autoglm.supply.integrity import StartedHash, load_verified

log = logging.getLogger("autoglm.engine")


async def _watch_parent(parent: int) -> None:
    while os.getppid() == parent:
        await asyncio.sleep(1.0)
    log.warning("gateway process is gone; engine exits")
    os._exit(0)


async def serve(args: argparse.Namespace, hashing: StartedHash | None = None) -> None:
    from autoglm.engine import ipc
    from autoglm.engine.llamacpp.budget import BudgetConfig, PrefillBudget
    from autoglm.engine.llamacpp.engine_server import EngineServer
    from autoglm.engine.llamacpp.lora import AdapterSet
    from autoglm.engine.llamacpp.model import (
        ContextConfig,
        LlamaModel,
        free_weights,
        load_weights,
    )
    from autoglm.engine.llamacpp.prefix import PrefixCache, model_digest

    config = ContextConfig(args.slots, args.ctx_per_slot, args.n_batch, args.n_threads)
    path = Path(args.model_path)
    integrity = None
    memfd = -1  # an encrypted model's plaintext, in memory only: open while it is loaded
    if getattr(args, "encrypted", False):  # into a sealed memfd, checked, mapped by llama.cpp
        weights, integrity, memfd = _load_encrypted(args, hashing, load_weights)
        model = LlamaModel(path, config, weights=weights)
        log.info("encrypted model decrypted in memory and loaded",
                 extra={"model_id": args.model_id, **integrity})
    elif hashing is not None:  # the trust policy asked: the loaded bytes are the hashed bytes
        weights, integrity = load_verified(
            hashing, args.sha256, args.size, lambda src: load_weights(src, mmap=False),
            free_weights, header=((args.header_bytes, args.header_sha256)
                                  if args.header_sha256 else None))
        model = LlamaModel(path, config, weights=weights)
        log.info("model verified at load", extra={"model_id": args.model_id, **integrity})
    else:
        model = LlamaModel(path, config)
    prefix = PrefixCache(model, model_digest(path, integrity), enabled=bool(args.prefix_cache),
                         store_mib=args.prefix_cache_mib, scope=args.prefix_cache_scope,
                         reuse_answers=bool(args.prefix_cache_reuse_answers))
    budget = PrefillBudget(BudgetConfig(args.n_batch, args.prefill_budget_tokens,
                                        args.prefill_stall_factor, args.prefill_short_tokens))
    adapters = AdapterSet(model)
    for spec in args.adapter:  # NAME=PATH: each loaded once against the one base
        name, _, file = spec.partition("=")
        adapters.load(name, Path(file), args.base_sha256 or None)
    server = EngineServer(model, args.model_id, args.default_max_tokens, integrity,
                          prefix=prefix, budget=budget, adapters=adapters)
    server.scheduler.start()
    # The decode thread warms the weights up first (on that thread: llama.cpp's CPU
    # thread pool runs 40% slower if another thread decoded first); ready comes after.
    await asyncio.get_running_loop().run_in_executor(None, server.scheduler.warmed.wait)
    sock = Path(args.socket)
    sock.unlink(missing_ok=True)
    srv = await asyncio.start_unix_server(server.handle, path=str(sock), limit=ipc.LIMIT)
    os.chmod(sock, 0o600)
    log.info("engine ready", extra={"model_id": args.model_id, "pid": os.getpid()})
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    watcher = asyncio.create_task(_watch_parent(args.parent_pid))
    await stop.wait()
    watcher.cancel()
    srv.close()
    server.scheduler.stop()
    sock.unlink(missing_ok=True)
    if memfd >= 0:
        os.close(memfd)


def _load_encrypted(args: argparse.Namespace, hashing: StartedHash | None, load_weights):
    from autoglm.errors import ConfigError
    from autoglm.supply.encryption import KEY_ENV, model_key
    from autoglm.supply.memload import load_encrypted

    key = model_key(Path(args.key_file) if args.key_file else None)
    os.environ.pop(KEY_ENV, None)
    if key is None:
        raise ConfigError(f"{args.model_path} is an encrypted model package: set "
                          f"model_key_file or ${KEY_ENV} to a recipient's private key")
    return load_encrypted(hashing or Path(args.model_path), key,
                          lambda src: load_weights(src, mmap=True), sha256=args.sha256 or None,
                          size=args.size, plain_sha256=args.plain_sha256 or None)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="autoglm-engine-llamacpp")
    p.add_argument("--socket", required=True)
    p.add_argument("--model-path", required=True)
    p.add_argument("--model-id", required=True)
    p.add_argument("--slots", type=int, required=True)
    p.add_argument("--ctx-per-slot", type=int, required=True)
    p.add_argument("--n-batch", type=int, required=True)
    p.add_argument("--n-threads", type=int, default=0)
    p.add_argument("--default-max-tokens", type=int, required=True)
    p.add_argument("--sha256", default="", help="refuse the model unless its bytes hash to this")
    p.add_argument("--size", type=int, default=None)
    p.add_argument("--header-bytes", type=int, default=0)
    p.add_argument("--header-sha256", default="",
                   help="the GGUF header's hash: checked first, then the data is loaded while "
                        "the whole file is still being hashed")
    p.add_argument("--plain-sha256", default="",
                   help="an encrypted package: refuse it unless its plaintext hashes to this")
    p.add_argument("--key-file", default="", help="the key of an encrypted model package")
    p.add_argument("--prefix-cache", type=int, default=1, help="1: reuse cached prefixes")
    p.add_argument("--prefix-cache-mib", type=int, default=512)
    p.add_argument("--prefix-cache-scope", choices=["tenant", "platform"], default="tenant")
    p.add_argument("--prefix-cache-reuse-answers", type=int, default=0)
    p.add_argument("--prefill-budget-tokens", type=int, default=0)
    p.add_argument("--prefill-stall-factor", type=float, default=1.5)
    p.add_argument("--prefill-short-tokens", type=int, default=64)
    p.add_argument("--adapter", action="append", default=[],
                   help="NAME=PATH: a LoRA adapter served on this base (repeatable)")
    p.add_argument("--base-sha256", default="",
                   help="the base's digest: adapters recording another base are refused")
    p.add_argument("--parent-pid", type=int, default=os.getppid())
    p.add_argument("--log-level", default="info")
    args = p.parse_args(argv)
    setup_logging(args.log_level, component="engine")
    try:
        hashing = StartedHash(Path(args.model_path)) if args.sha256 else None
        from autoglm.supply.encryption import is_encrypted  # after the hash has started

        args.encrypted = is_encrypted(Path(args.model_path))
        asyncio.run(serve(args, hashing))
    except AutoGLMError as exc:
        log.error("engine failed to start: %s", exc.message)
        try:  # the reason, for the gateway to name (its socket directory is private)
            failed_path(args.socket).write_text(exc.message[:2000], encoding="utf-8")
        except OSError:
            pass
        raise SystemExit(78) from None


def failed_path(socket: str | Path) -> Path:
    """Where an engine that could not start leaves the reason."""
    return Path(str(socket) + ".failed")


if __name__ == "__main__":
    main()
