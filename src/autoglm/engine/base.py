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
    owner: str  # who is asking: fairness key for the queue
    messages: list[dict[str, Any]] | None = None
    prompt: str | None = None

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
        else:
            out["prompt"] = self.prompt
        return out


@dataclass(frozen=True)
class Started:
    prompt_tokens: int


@dataclass(frozen=True)
class Delta:
    text: str


@dataclass(frozen=True)
class Finished:
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int


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

    def generate(self, request: GenerationRequest) -> AsyncIterator[Event]:
        """Yields ``Started`` first (or raises), then ``Delta``s, then one ``Finished``."""
        ...

    async def health(self) -> EngineHealth: ...

    def stats(self) -> dict[str, int]:
        """Right now: up (0/1), slots, busy, queued, restarts."""
        ...

    async def close(self) -> None: ...
