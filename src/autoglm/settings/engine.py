"""Settings fields: Models and engines: the embedded one, managed vLLM, upstream pools."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from autoglm.settings.specs import ModelSpec


class EngineFields(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    # --- model and engine ------------------------------------------------------------------
    model_path: Path | None = Field(
        None, description="GGUF file to serve. Unset: the bundled SmolLM2-135M-Instruct Q4_1."
    )
    model: str | None = Field(
        None, description="A registered model to serve, by name (see `autoglm model list`)."
    )
    model_trust: Literal["signed", "verified", "any"] = Field(
        "verified", description="What a model must prove before it is loaded: 'verified' "
        "(registered, files match the manifest), 'signed' (and signed by a trusted key), "
        "'any' (nothing; loudly logged).",
    )
    trusted_keys: list[Path] = Field(
        default_factory=list, description="Public keys (PEM) whose model signatures are "
        "trusted when model_trust is 'signed'.",
    )
    model_key_file: Path | None = Field(
        None, description="X25519 private key (PEM) that decrypts encrypted model packages "
        "(`autoglm model encrypt`); read by the engine process only.",
    )
    model_key: SecretStr | None = Field(
        None, description="The same key in the environment (AUTOGLM_MODEL_KEY: the PEM, or "
        "its 32 raw bytes in base64), when model_key_file is unset.",
    )
    model_id: str | None = Field(
        None, description="Model id clients use. Unset: derived from the model file name."
    )
    adapters: list[str] = Field(
        default_factory=list, description="Registered LoRA adapters (`autoglm finetune`) "
        "served on the model, each under the id BASE:ADAPTER. The base's weights are loaded "
        "once; an adapter trained on another base (SHA-256) is refused at start. Each passes "
        "model_trust as a model does.",
    )
    pull_retries: int = Field(
        6, ge=0, le=100, description="`model pull`: tries again this many times after a "
        "transient error (429, 5xx, connection reset), with exponential backoff.",
    )
    pull_backoff_s: float = Field(
        1.0, ge=0, description="`model pull`: the first backoff delay; it doubles (with "
        "jitter, at most 60 s), and a hub's Retry-After is honoured.",
    )
    pull_timeout_s: float = Field(
        60.0, gt=0, description="`model pull`: connect and read timeout of each request.",
    )
    mirror: bool = Field(
        False, description="Internal mirror: publish the registry's verified models, with "
        "their manifests and signatures, over the Hugging Face HTTP API (`model pull "
        "--endpoint`, huggingface_hub), to keys allowed `model.pull`.",
    )
    slots: int = Field(4, ge=1, le=64, description="Sequences the engine decodes together.")
    ctx_per_slot: int = Field(
        2048, ge=64, description="Context length (prompt + answer tokens) of each slot."
    )
    n_threads: int = Field(
        0, ge=0, description="CPU threads for llama.cpp decode; 0 means one per core."
    )
    n_batch: int = Field(512, ge=32, description="Most tokens fed to llama.cpp in one decode.")
    prefix_cache: bool = Field(
        True, description="Embedded engine: a request reuses the KV cache of the longest "
        "cached prefix of its prompt (its slot's, another slot's, or the host store's) and "
        "prefills only the rest.",
    )
    prefix_cache_mib: int = Field(
        512, ge=0, description="Embedded engine: host memory (MiB) for saved sequence "
        "states, least recently used out first; a slot's cached prefix is saved there when "
        "the slot goes to another prompt. 0: only what the slots hold.",
    )
    prefix_cache_scope: Literal["tenant", "platform"] = Field(
        "tenant", description="Embedded engine: who may reuse a cached prefix: requests of "
        "the same tenant (the tenant is part of the cache key), or everyone (platform: for "
        "public system prompts; one tenant could then time another's prompts).",
    )
    prefix_cache_reuse_answers: bool = Field(
        False, description="Embedded engine: also reuse the KV cache of generated answer "
        "tokens (a conversation's next turn skips the previous answer too, as llama.cpp's "
        "server does). Faster follow-up turns, but an answer may then differ from the one "
        "a full prefill gives at temperature 0 (llama.cpp rounds tokens decoded one at a "
        "time differently); off: only prompt tokens are reused and answers are identical.",
    )
    prefill_budget_tokens: int = Field(
        0, ge=0, description="Embedded engine: prompt tokens of long prompts per decode "
        "step while answers are streaming; 0: sized from measured step times so that a "
        "step takes at most prefill_stall_factor times a step without them.",
    )
    prefill_stall_factor: float = Field(
        1.5, ge=1.0, description="Embedded engine (prefill_budget_tokens 0): how much "
        "longer than a decode-only step a step with prompt tokens may take (1.5 keeps a "
        "running stream's p95 gap between tokens within 2x its quiet value, noise "
        "included; at least one prompt token goes in each step).",
    )
    prefill_short_tokens: int = Field(
        64, ge=0, description="Embedded engine: a prompt with at most this many tokens to "
        "prefill goes in one step, whatever the budget (requests arriving together get "
        "their first tokens together).",
    )
    max_queue: int = Field(
        64, ge=0, description="Requests allowed to wait for a slot; beyond it, 503."
    )
    queue_timeout_s: float = Field(
        60.0, gt=0, description="Longest wait for a free slot before a 503."
    )
    max_queue_share: float = Field(
        0.5, gt=0, le=1.0,
        description="Largest share of a model's waiting places one caller (key owner) may "
                    "hold; beyond it that caller gets 503 while others are still queued.",
    )
    default_max_tokens: int = Field(
        512, ge=1, description="Answer length when the request gives no max_tokens."
    )
    engine_start_timeout_s: float = Field(
        120.0, gt=0, description="Longest wait for an engine process to load its model."
    )
    engine_restart_backoff_min_s: float = Field(
        0.5, gt=0, description="First delay before restarting a crashed engine."
    )
    engine_restart_backoff_max_s: float = Field(
        30.0, gt=0, description="Largest delay between engine restarts (doubles each crash)."
    )

    # --- managed vLLM (autoglm serve --engine vllm) -------------------------------------------
    engine: Literal["llamacpp", "vllm"] = Field(
        "llamacpp", description="Engine for --model-path: embedded llama.cpp, or managed vLLM."
    )
    vllm_executable: str = Field(
        "vllm", description="The vllm command (name on PATH or a path)."
    )
    vllm_tensor_parallel: int = Field(
        1, ge=1, description="GPUs per vLLM instance (tensor parallelism); 1: one per GPU."
    )
    vllm_instances: int | None = Field(
        None, ge=1, description="Most vLLM instances to start. Unset: as many as the GPUs allow."
    )
    vllm_extra_args: list[str] = Field(
        default_factory=list, description="More arguments for every `vllm serve`."
    )
    vllm_start_timeout_s: float = Field(
        900.0, gt=0, description="Longest wait for a vLLM instance to load its model."
    )
    vllm_fallback: bool = Field(
        True, description="With no GPU or no vLLM, serve a GGUF model on llama.cpp instead."
    )

    # --- engine pool ----------------------------------------------------------------------
    models: list[ModelSpec] = Field(
        default_factory=list,
        description="Served models (YAML). Empty: one embedded llama.cpp model from model_path.",
    )
    upstream_connect_timeout_s: float = Field(
        5.0, gt=0, description="Longest wait to connect to an upstream instance."
    )
    upstream_first_byte_timeout_s: float = Field(
        120.0, gt=0, description="Longest wait for an upstream's answer, and between stream chunks."
    )
    upstream_total_timeout_s: float = Field(
        900.0, gt=0, description="Longest an upstream request may take in all."
    )
    upstream_max_connections: int = Field(
        256, ge=1, description="Pooled keep-alive connections per upstream model."
    )

