"""What the pipeline knows about one request, typed: who asks, for what, and how it went."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Literal

from autoglm.errors import AutoGLMError

Transport = Literal["http", "grpc", "batch"]
Outcome = Literal["pending", "ok", "error", "cancelled"]


@dataclass(slots=True, eq=False)
class RequestContext:
    request_id: str
    transport: Transport
    credentials: str | None = None  # the Authorization value as received; authenticate reads it
    project: str | None = None  # the project the caller names (OpenAI-Project header)
    client: str | None = None  # the caller's network address (limits on failed keys)
    client_request_id: str | None = None  # the id the client gave its request, if any
    purpose: str | None = None  # processing purpose the client declared (GDPR Art. 30)
    consent_id: str | None = None
    cache: str | None = None  # X-AutoGLM-Cache as the client sent it (use, skip), if at all
    identity: Any = None  # security.keystore.Identity once authenticated
    model: str = ""  # the model id, once resolved
    engine: Any = None  # the model's engine, once resolved
    started: float = field(default_factory=time.perf_counter)
    first_token_at: float | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    outcome: Outcome = "pending"
    error: AutoGLMError | None = None
    state: dict[str, Any] = field(default_factory=dict)  # stage-private state, by stage name
    # headers a stage adds to the response, errors included (x-ratelimit-*)
    response_headers: list[tuple[bytes, bytes]] = field(default_factory=list)

    @property
    def owner(self) -> str:
        """Who is asking: the fairness key of the admission queue."""
        identity = self.identity
        return identity.id if identity is not None else "anonymous"
