"""What the settings hold besides plain values: models and their instances, limits."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

EMBEDDED_MODEL_ID = "smollm2-135m-instruct"
MIN_ADMIN_KEY_CHARS = 32


def default_data_dir() -> Path:
    """Per-user default: $XDG_DATA_HOME/autoglm, else ~/.local/share/autoglm."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "autoglm"


class InstanceSpec(BaseModel):
    """One upstream server of a model (vLLM, llama-server, TGI, another gateway)."""

    model_config = ConfigDict(extra="forbid")
    url: str = Field(description="Base URL of its OpenAI API, e.g. http://10.0.0.5:8000/v1.")
    name: str | None = Field(None, description="Name shown in /readyz and metrics.")
    weight: int = Field(1, ge=1, le=1000, description="Share of requests, relative.")
    api_key: SecretStr | None = Field(None, description="Bearer key the upstream expects.")
    upstream_model: str | None = Field(None, description="Model name on the upstream.")

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/")


class ProbeSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    interval_s: float = Field(5.0, gt=0, description="Seconds between active health probes.")
    path: str = Field("/models", description="GET path under the instance URL that must 2xx.")
    timeout_s: float = Field(2.0, gt=0, description="Probe timeout.")


class ModelSpec(BaseModel):
    """A served model: the embedded llama.cpp engine, or a pool of upstream instances."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())
    id: str = Field(min_length=1, description="Model id clients use.")
    engine: Literal["llamacpp", "openai", "vllm"] = Field(description="Engine kind.")
    model_path: Path | None = Field(None, description="llamacpp: GGUF file (unset: bundled).")
    instances: list[InstanceSpec] = Field(default_factory=list, description="openai/vllm.")
    max_fails: int = Field(3, ge=1, description="Failures within fail_timeout_s that eject.")
    fail_timeout_s: float = Field(10.0, gt=0, description="Failure window and ejection time.")
    probe: ProbeSpec | None = Field(None, description="Optional active health probe.")
    max_concurrency: int | None = Field(
        None, ge=1, le=100_000,
        description="openai/vllm: requests in flight to the pool at once; the rest wait in "
                    "the fair queue (unset: upstream_max_connections).")

    @model_validator(mode="after")
    def _check_kind(self) -> ModelSpec:
        if self.engine == "llamacpp" and self.instances:
            raise ValueError(f"model {self.id}: a llamacpp model has no instances")
        if self.engine != "llamacpp" and not self.instances:
            raise ValueError(f"model {self.id}: an {self.engine} model needs instances")
        return self


class LimitSpec(BaseModel):
    """Limits of one key, project or tenant (``rate_limits``); null or 0: unlimited."""

    model_config = ConfigDict(extra="forbid")
    requests_per_minute: int | None = Field(None, ge=0)
    tokens_per_minute: int | None = Field(None, ge=0)
    tokens_per_day: int | None = Field(None, ge=0)
