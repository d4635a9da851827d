"""The engine contract the gateway routes to: a model id, ``generate``, ``health``, ``close``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol


@dataclass(frozen=True)
class GenerationRequest:
    kind: Literal["chat", "completion"]
    max_tokens: int | None
    sampling: dict[str, Any]
    stop: list[str]
    messages: list[dict[str, Any]] | None = None
    prompt: str | None = None
    # {"tools": [OpenAI tools], "choice": "auto"|"required"|"none"|name, "parallel": bool}
    tools: dict[str, Any] | None = None
    # whose request it is: the embedded engine reuses cached prompt prefixes per tenant
    tenant: str | None = None
    # a LoRA adapter loaded on the engine's base (served as the model id BASE:ADAPTER)
    adapter: str | None = None

    def to_wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "op": "generate",
            "kind": self.kind,
            "max_tokens": self.max_tokens,
            "sampling": self.sampling,
            "stop": self.stop,
        }
        if self.kind == "chat":
            out["messages"] = self.messages
            if self.tools is not None:
                out["tools"] = self.tools
        else:
            out["prompt"] = self.prompt
        if self.tenant is not None:
            out["tenant"] = self.tenant
        if self.adapter is not None:
            out["adapter"] = self.adapter
        return out


@dataclass(slots=True)
class Started:
    """The engine accepted the request. ``raw``: an upstream's first chunk (streams) or its
    whole JSON answer, kept so that every field it sent reaches the client."""

    prompt_tokens: int | None = None
    raw: dict[str, Any] | None = None


@dataclass(slots=True)
class Delta:
    """Answer text for choice ``index``. ``finish_reason`` is set on a choice's last delta.

    ``raw``: the upstream's chunk carrying this choice (streams) or the choice object (JSON
    answers), kept as received; re-encoding puts ``text`` back into it, so tool calls,
    logprobs, refusals and unknown fields pass through. Stages may change ``text``.
    """

    text: str
    index: int = 0
    finish_reason: str | None = None
    raw: dict[str, Any] | None = None
    role: str | None = None  # the embedded engine's first chat delta says "assistant"


@dataclass(slots=True)
class Finished:
    """The request is over; token usage as the engine counted it."""

    prompt_tokens: int
    completion_tokens: int
    raw: dict[str, Any] | None = None  # an upstream's usage chunk or usage object
    # prompt tokens served from a cached prefix (the embedded engine); None: not known
    cached_tokens: int | None = None


Event = Started | Delta | Finished


@dataclass
class EngineHealth:
    name: str
    status: Literal["ready", "starting", "down"]
    latency_ms: float | None = None
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelCard:
    id: str
    owned_by: str
    created: int
    context_length: int
    verification: dict[str, Any] | None = None  # what the trust check found at load


class Engine(Protocol):
    model: ModelCard

    async def start(self) -> None: ...

    def prepare(self, request: Any) -> None:
        """Validate the request for this engine (a clean 400 before any queueing)."""
        ...

    def generate(self, request: Any) -> AsyncIterator[Event]:
        """Yields ``Started`` first (or raises), then ``Delta``s, then one ``Finished``."""
        ...

    def capacity(self) -> int:
        """Requests this engine runs at once; the admission stage queues the rest."""
        ...

    async def health(self) -> EngineHealth: ...

    def stats(self) -> dict[str, int]:
        """Right now: up (0/1), slots, busy, queued, restarts."""
        ...

    async def close(self) -> None: ...
