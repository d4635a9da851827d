"""The engine's socket server: requests in (``engine/ipc.py``), events out, one decode
scheduler for all of them. Only the engine process (``worker.py``) imports it."""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

from autoglm.engine import ipc
from autoglm.engine.llamacpp.budget import PrefillBudget
from autoglm.engine.llamacpp.lora import AdapterSet
from autoglm.engine.llamacpp.model import LlamaModel
from autoglm.engine.llamacpp.prefix import PrefixCache
from autoglm.engine.llamacpp.prompt import PromptBuilder, check_length
from autoglm.engine.llamacpp.sampling import GrammarCache, Sampler, SamplingParams
from autoglm.engine.llamacpp.scheduler import Job, Scheduler
from autoglm.engine.llamacpp.sink import SocketSink
from autoglm.engine.llamacpp.text import TextStream
from autoglm.errors import (
    AutoGLMError,
    ContextLengthError,
    EngineError,
    InvalidRequestError,
)
from autoglm.structured.tools import ToolSet, parse_tools

log = logging.getLogger("autoglm.engine")


class EngineServer:
    def __init__(self, model: LlamaModel, model_id: str, default_max_tokens: int,
                 integrity: dict[str, Any] | None = None, *, prefix: PrefixCache | None = None,
                 budget: PrefillBudget | None = None,
                 adapters: AdapterSet | None = None) -> None:
        self.model = model
        self.integrity = integrity
        self.model_id = model_id
        self.default_max_tokens = default_max_tokens
        self.prompts = PromptBuilder(model)
        self.grammars = GrammarCache(model)
        self.scheduler = Scheduler(model, self._emit, prefix, budget, adapters)
        # No token is longer than this: text beyond ctx_per_slot times it cannot fit, and
        # is refused before any tokenizing.
        self.max_token_bytes = max(1, max(len(model.piece(t)) for t in range(model.n_vocab)))

    @staticmethod
    def _emit(outbox: list[tuple[SocketSink, list[dict]]]) -> None:
        for sink, events in outbox:  # on the decode thread
            sink.send(events)

    def hello(self) -> dict[str, Any]:
        cfg = self.model.config
        return {
            "ev": "hello",
            "model_id": self.model_id,
            "pid": os.getpid(),
            "slots": cfg.slots,
            "busy": self.scheduler.busy(),
            "ctx_per_slot": cfg.ctx_per_slot,
            "n_ctx_train": self.model.n_ctx_train,
            "path": str(self.model.path),
            "integrity": self.integrity,
            "prefix": self.scheduler.prefix.stats(),
            "adapters": {"loaded": self.scheduler.adapters.names,
                         "switches": self.scheduler.adapters.switches},
        }

    def _bound(self, texts: list[Any], param: str) -> None:
        size = sum(len(t.encode("utf-8", "surrogatepass")) for t in texts if isinstance(t, str))
        ctx = self.model.config.ctx_per_slot
        if size > ctx * self.max_token_bytes:
            raise ContextLengthError(
                f"This model's maximum context length is {ctx} tokens; your prompt is {size} "
                "bytes, more than that many tokens can hold. Shorten the prompt.", param=param)

    def prepare(self, req: dict[str, Any], sink: SocketSink) -> Job:
        """Runs on a worker thread: tokenizing a long prompt never stalls the event loop
        (other requests, health probes)."""
        if req.get("kind") == "chat":
            messages = req.get("messages")
            if not isinstance(messages, list) or not messages:
                raise InvalidRequestError("messages must be a non-empty list", param="messages")
            self._bound([m.get("content") for m in messages if isinstance(m, dict)], "messages")
            prompt = self.prompts.chat(messages, _toolset(req.get("tools")))
        else:
            prompt_text = req.get("prompt")
            if not isinstance(prompt_text, str):
                raise InvalidRequestError("prompt must be a string", param="prompt")
            self._bound([prompt_text], "prompt")
            prompt = self.prompts.completion(prompt_text)
        if not prompt:
            raise InvalidRequestError("the prompt is empty after tokenization", param="prompt")
        max_tokens = check_length(
            len(prompt), req.get("max_tokens"), self.model.config.ctx_per_slot,
            self.default_max_tokens, "messages" if req.get("kind") == "chat" else "prompt",
        )
        params = SamplingParams.from_dict(req.get("sampling") or {})
        stop = [s for s in (req.get("stop") or []) if isinstance(s, str)]
        sampler = Sampler(self.model, params, self.grammars)
        tenant = req.get("tenant")
        scope = self.scheduler.prefix.scope_of(tenant if isinstance(tenant, str) else None)
        adapter = req.get("adapter")
        if adapter is not None:
            if adapter not in self.scheduler.adapters.loaded:
                sampler.free()
                raise InvalidRequestError(f"this engine has no adapter {adapter!r}",
                                          param="model")
            scope += f"@{adapter}"  # KV computed with one adapter is no use to another
        return Job(prompt, max_tokens, sampler, TextStream(stop), sink, scope, adapter=adapter)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            req = await ipc.read_message(reader)
            if req is None:
                return
            if req.get("op") == "hello":
                await ipc.write_messages(writer, [self.hello()])
                return
            await self._generate(req, reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def _generate(
        self, req: dict[str, Any], reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        sink = SocketSink(writer)
        try:
            job = await asyncio.get_running_loop().run_in_executor(None, self.prepare, req, sink)
        except AutoGLMError as exc:
            await ipc.write_messages(writer, [ipc.error_event(exc)])
            return
        except Exception:  # a bug must not look like an engine crash to the gateway
            log.exception("could not prepare the request")
            err = EngineError("the engine could not prepare this request")
            await ipc.write_messages(writer, [ipc.error_event(err)])
            return
        await ipc.write_messages(writer, [{"ev": "start", "prompt_tokens": len(job.prompt)}])
        sink.start_direct()
        self.scheduler.submit(job)
        hangup = asyncio.ensure_future(reader.read())  # EOF: the gateway cancelled
        try:
            await asyncio.wait({hangup, sink.finished}, return_when=asyncio.FIRST_COMPLETED)
            if sink.finished.done():
                await writer.drain()
            else:
                job.cancelled.set()
        except (ConnectionError, asyncio.CancelledError):
            job.cancelled.set()
            raise
        finally:
            hangup.cancel()
            sink.close()


def _toolset(spec: Any) -> ToolSet | None:
    """The tools the gateway checked (``GenerationRequest.tools``)."""
    if not isinstance(spec, dict):
        return None
    return parse_tools(spec.get("tools"), spec.get("choice"), spec.get("parallel"))
