"""The gateway's handle on an embedded llama.cpp engine process.

It starts the worker through a ``ProcessSupervisor``, holds the fair ``AdmissionQueue``
that the pipeline's admission stage uses (never more than the engine's slots at once),
and opens one Unix socket connection per request. Closing that connection (client gone, error) cancels
the generation in the engine and frees the slot before its next decode step.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

from autoglm.engine import ipc
from autoglm.engine.admission import AdmissionQueue
from autoglm.engine.attached import AttachedProcess
from autoglm.engine.base import (
    Delta,
    EngineHealth,
    Event,
    Finished,
    GenerationRequest,
    ModelCard,
    Started,
)
from autoglm.engine.supervisor import ProcessSupervisor, python_argv
from autoglm.errors import EngineError, EngineUnavailableError, error_from_wire
from autoglm.pipeline.request import InferenceRequest
from autoglm.pipeline.schemas import ChatCompletionRequest, CompletionRequest, parse
from autoglm.settings import Settings
from autoglm.structured.constraints import ConstraintCache
from autoglm.structured.tools import parse_tools
from autoglm.supply.encryption import KEY_ENV


class LlamaCppEngine:
    def __init__(self, settings: Settings, model_path: Path, model_id: str, run_dir: Path,
                 verification: dict | None = None, *, attached: bool = False,
                 adapters: dict[str, Path] | None = None, base_sha256: str = "") -> None:
        """``attached``: the engine process belongs to another process (the main process
        of ``--workers N``); this handle only connects to its socket and watches it.
        ``adapters``: LoRA adapter files the engine loads on this base, by name (checked
        against the base's digest ``base_sha256`` by ``engine/adapters.py`` and again at
        load)."""
        self.settings = settings
        self.model_path = model_path
        self.socket_path = run_dir / f"engine-{model_id}.sock"
        self.model = ModelCard(
            id=model_id, owned_by="autoglm", created=int(time.time()),
            context_length=settings.ctx_per_slot, verification=verification,
        )
        self.queue = AdmissionQueue.for_settings(settings.slots, settings)
        self.constraints = ConstraintCache()
        argv = python_argv(
            "autoglm.engine.llamacpp.worker",
            "--socket", str(self.socket_path),
            "--model-path", str(model_path),
            "--model-id", model_id,
            "--slots", str(settings.slots),
            "--ctx-per-slot", str(settings.ctx_per_slot),
            "--n-batch", str(settings.n_batch),
            "--n-threads", str(settings.n_threads),
            "--default-max-tokens", str(settings.default_max_tokens),
            *self._prefix_args(settings),
            "--log-level", settings.log_level,
            *self._integrity_args(verification),
            *self._key_args(settings),
            *[a for name, f in (adapters or {}).items() for a in ("--adapter", f"{name}={f}")],
            *(["--base-sha256", base_sha256] if adapters and base_sha256 else []),
        )
        self.supervisor: ProcessSupervisor | AttachedProcess
        if attached:
            self.supervisor = AttachedProcess(f"llamacpp:{model_id}", self._probe_pid,
                                              start_timeout_s=settings.engine_start_timeout_s)
        else:
            self.supervisor = ProcessSupervisor(
                f"llamacpp:{model_id}", argv, self._probe,
                start_timeout_s=settings.engine_start_timeout_s,
                backoff_min_s=settings.engine_restart_backoff_min_s,
                backoff_max_s=settings.engine_restart_backoff_max_s,
                env=self._key_env(settings),
            )
        self.last_hello: dict | None = None
        self.prefix: dict | None = None  # the engine's prefix-cache counters, latest seen

    @staticmethod
    def _prefix_args(settings: Settings) -> list[str]:
        return ["--prefix-cache", str(int(settings.prefix_cache)),
                "--prefix-cache-mib", str(settings.prefix_cache_mib),
                "--prefix-cache-scope", settings.prefix_cache_scope,
                "--prefix-cache-reuse-answers", str(int(settings.prefix_cache_reuse_answers)),
                "--prefill-budget-tokens", str(settings.prefill_budget_tokens),
                "--prefill-stall-factor", str(settings.prefill_stall_factor),
                "--prefill-short-tokens", str(settings.prefill_short_tokens)]

    def prefix_stats(self) -> dict | None:
        """The engine's prefix-cache counters (hits by source, misses, reused tokens,
        evictions), as of its last answer or health probe; /metrics exports them."""
        return self.prefix

    @staticmethod
    def _integrity_args(verification: dict | None) -> list[str]:
        """The engine hashes the file it loads, through the same open file, when the trust
        check vouched for a hash (``model_trust`` verified or signed)."""
        load = (verification or {}).get("load") or {}
        if not load.get("sha256"):
            return []
        args = ["--sha256", load["sha256"], "--size", str(load["bytes"])]
        header = load.get("header")
        if load.get("plain_sha256"):  # an encrypted package: its plaintext's hash too
            args += ["--plain-sha256", load["plain_sha256"]]
        if header:
            args += ["--header-bytes", str(header["bytes"]), "--header-sha256", header["sha256"]]
        return args

    @staticmethod
    def _key_args(settings: Settings) -> list[str]:
        """Where the engine finds the key of an encrypted model package (never the key
        itself on the command line: other users can read that)."""
        key = settings.model_key_file
        return ["--key-file", str(key.expanduser().absolute())] if key else []

    @staticmethod
    def _key_env(settings: Settings) -> dict[str, str] | None:
        """The engine's environment: the gateway's, plus the model key when it was given
        as a setting (the engine reads it, then drops it from its environment)."""
        if settings.model_key_file is not None or settings.model_key is None:
            return None
        return {**os.environ, KEY_ENV: settings.model_key.get_secret_value()}

    def _record_integrity(self, hello: dict) -> None:
        """What the engine checked at its last load, and when: /readyz and /v1/models."""
        found = hello.get("integrity")
        state = self.model.verification
        if not found or state is None or state.get("load", {}).get("checked_at") == \
                found.get("checked_at"):
            return
        self.model = replace(self.model, verification={**state, "load": found})

    def attach_spec(self) -> dict:
        """What a gateway worker needs to reach this engine (``factory.attach_engines``)."""
        return {"kind": "llamacpp", "model_id": self.model.id, "model_path": str(self.model_path),
                "socket": str(self.socket_path), "verification": self.model.verification}

    async def start(self) -> None:
        failed = Path(str(self.socket_path) + ".failed")  # worker.failed_path
        failed.unlink(missing_ok=True)
        try:
            await self.supervisor.start()
        except RuntimeError as exc:
            try:
                reason = failed.read_text(encoding="utf-8")
            except OSError:
                raise exc from None
            raise EngineError(f"model '{self.model.id}': {reason}") from None

    async def close(self) -> None:
        await self.supervisor.close()

    def stats(self) -> dict[str, int]:
        return {
            "up": int(self.supervisor.state == "ready"),
            "slots": self.queue.slots,
            "busy": self.queue.busy,
            "queued": self.queue.depth,
            "restarts": self.supervisor.restarts,
        }

    async def _hello(self, timeout: float) -> dict:
        reader, writer = await asyncio.wait_for(
            asyncio.open_unix_connection(str(self.socket_path), limit=ipc.LIMIT), timeout
        )
        try:
            await ipc.write_messages(writer, [{"op": "hello"}])
            msg = await asyncio.wait_for(ipc.read_message(reader), timeout)
        finally:
            writer.close()
        if not msg or msg.get("ev") != "hello":
            raise ConnectionError("engine did not answer hello")
        return msg

    async def _probe(self) -> bool:
        return await self._probe_pid() is not None

    async def _probe_pid(self) -> int | None:
        try:
            self.last_hello = await self._hello(2.0)
        except (TimeoutError, OSError, ConnectionError, ValueError):
            return None
        self._record_integrity(self.last_hello)
        self.prefix = self.last_hello.get("prefix") or self.prefix
        pid = self.last_hello.get("pid")
        return pid if isinstance(pid, int) else -1

    async def health(self) -> EngineHealth:
        sup = self.supervisor
        detail = {
            "verification": self.model.verification,
            "pid": sup.pid, "restarts": sup.restarts, "slots": self.settings.slots,
            "busy": self.queue.busy, "queued": self.queue.depth, "last_exit": sup.last_exit,
        }
        if sup.state != "ready":
            status = "starting" if sup.state == "starting" else "down"
            return EngineHealth(self.supervisor.name, status, None, detail)
        t0 = time.perf_counter()
        try:
            await self._hello(2.0)
        except (TimeoutError, OSError, ConnectionError, ValueError):
            return EngineHealth(self.supervisor.name, "down", None, detail)
        return EngineHealth(self.supervisor.name, "ready", (time.perf_counter() - t0) * 1e3, detail)

    def _unavailable(self) -> EngineUnavailableError:
        return EngineUnavailableError(
            f"model '{self.model.id}' is restarting; retry shortly",
            retry_after=self.supervisor.retry_after(),
        )

    # --- the engine contract ---------------------------------------------------------------
    def capacity(self) -> int:
        return self.settings.slots

    def check_available(self) -> None:
        if self.supervisor.state != "ready":
            raise self._unavailable()

    def prepare(self, req: InferenceRequest) -> None:
        """Every parameter checked (a 400 naming what cannot be honoured); the engine's own
        request built."""
        if req.kind == "chat":
            chat: ChatCompletionRequest = parse(ChatCompletionRequest, req.body)
            chat.check()
            tools = parse_tools(chat.tools, chat.tool_choice, chat.parallel_tool_calls)
            rf = chat.response_format
            spec = rf.json_schema if rf is not None and rf.type == "json_schema" else None
            constraint = self.constraints.get(spec.schema_ if spec else None,
                                              bool(spec and spec.strict), tools)
            sampling = chat.sampling(chat.json_object and constraint is None)
            if constraint is not None:
                sampling["grammar"] = constraint.grammar
                sampling["grammar_trigger"] = constraint.trigger
            req.generation = GenerationRequest(
                kind="chat", messages=chat.wire_messages(),
                max_tokens=chat.effective_max_tokens(), sampling=sampling,
                stop=chat.stop_list(),
                tools=None if tools is None else {"tools": chat.tools, "choice": chat.tool_choice,
                                                  "parallel": chat.parallel_tool_calls})
        else:
            comp: CompletionRequest = parse(CompletionRequest, req.body)
            comp.check()
            req.generation = GenerationRequest(
                kind="completion", prompt=comp.prompt_text(), max_tokens=comp.max_tokens,
                sampling=comp.sampling(False), stop=comp.stop_list())

    async def generate(self, req: InferenceRequest) -> AsyncIterator[Event]:
        gen = req.generation
        if gen is None:
            self.prepare(req)
            gen = req.generation
        writer: asyncio.StreamWriter | None = None
        try:
            try:
                reader, writer = await asyncio.open_unix_connection(
                    str(self.socket_path), limit=ipc.LIMIT
                )
                await ipc.write_messages(writer, [gen.to_wire()])  # type: ignore[union-attr]
            except OSError:
                raise self._unavailable() from None
            while True:
                try:
                    msg = await ipc.read_message(reader)
                except (OSError, ValueError):
                    msg = None
                if msg is None:  # the engine died: the supervisor restarts it
                    raise EngineUnavailableError(
                        f"the engine for model '{self.model.id}' stopped; retry shortly",
                        code="engine_crashed", retry_after=self.supervisor.retry_after())
                ev = msg.get("ev")
                if ev == "delta":
                    yield Delta(msg["text"])
                elif ev == "start":
                    yield Started(msg["prompt_tokens"])
                    if gen.kind == "chat":  # type: ignore[union-attr]
                        yield Delta("", role="assistant")
                elif ev == "done":
                    yield Delta("", finish_reason=msg["finish_reason"])
                    self.prefix = msg.get("prefix") or self.prefix
                    yield Finished(msg["prompt_tokens"], msg["completion_tokens"],
                                   cached_tokens=msg.get("cached_tokens", 0))
                    return
                elif ev == "error":
                    raise error_from_wire(msg)
        finally:
            if writer is not None:
                writer.close()
