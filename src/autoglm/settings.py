"""The one settings object.

Precedence, highest first: command-line flags (passed as init kwargs), ``AUTOGLM_*``
environment variables, the YAML file given with ``--config`` (or ``AUTOGLM_CONFIG``),
then the defaults below. Every field carries its documentation in ``description``;
``autoglm config show`` prints the effective values with secrets masked.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from autoglm.errors import ConfigError
from autoglm.security.keys import well_formed

EMBEDDED_MODEL_ID = "smollm2-135m-instruct"
MIN_ADMIN_KEY_CHARS = 32


def default_data_dir() -> Path:
    """Per-user default: $XDG_DATA_HOME/autoglm, else ~/.local/share/autoglm."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "autoglm"


class _YamlSource(PydanticBaseSettingsSource):
    """Reads the optional YAML settings file; unknown keys are an error, not a silent typo."""

    def __init__(self, settings_cls: type[BaseSettings], path: Path | None) -> None:
        super().__init__(settings_cls)
        self._data: dict[str, Any] = {}
        if path is None:
            return
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise ConfigError(f"settings file not found: {path}") from exc
        except yaml.YAMLError as exc:
            raise ConfigError(f"settings file {path} is not valid YAML: {exc}") from exc
        if loaded is None:
            return
        if not isinstance(loaded, dict):
            raise ConfigError(f"settings file {path} must hold a mapping at the top level")
        unknown = sorted(set(loaded) - set(settings_cls.model_fields))
        if unknown:
            raise ConfigError(f"settings file {path}: unknown setting(s) {', '.join(unknown)}")
        self._data = loaded

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return self._data.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(self._data)


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


class Settings(BaseSettings):
    """Effective configuration of one Open-AutoGLM server."""

    model_config = SettingsConfigDict(
        env_prefix="AUTOGLM_", extra="forbid", validate_default=True, protected_namespaces=()
    )

    # --- where things live -------------------------------------------------------------
    data_dir: Path = Field(
        default_factory=default_data_dir,
        description="Directory holding everything the platform writes (keys, state, models).",
    )

    # --- HTTP ----------------------------------------------------------------------------
    host: str = Field("127.0.0.1", description="Address the HTTP server binds to.")
    port: int = Field(8080, ge=0, le=65535, description="TCP port of the HTTP server.")
    grpc_port: int | None = Field(
        None, ge=0, le=65535,
        description="TCP port of the gRPC server (autoglm.v1.Inference, health, reflection), "
        "on the same host with the same keys and TLS. Unset: no gRPC. 0: any free port.",
    )
    header_timeout_s: float = Field(
        10.0, gt=0, le=600, description="Longest a client may take to send a request's "
        "headers (from its first byte); then the connection is closed (slow-loris).")
    body_timeout_s: float = Field(
        60.0, gt=0, le=3600, description="Longest a client may take to send a request body.")
    max_connections: int = Field(
        4096, ge=16, le=1_000_000, description="Connections one gateway process keeps open at "
        "once; beyond it a new connection gets 503 and is closed.")
    workers: int = Field(
        1, ge=1, le=64,
        description="Gateway processes sharing the port (and one set of engine processes).")
    max_body_bytes: int = Field(
        1_048_576, ge=1024, description="Largest accepted request body in bytes; more is a 413."
    )
    forwarded_allow_ips: list[str] = Field(
        default_factory=list, description="Proxies (addresses or networks, e.g. nginx's "
        "127.0.0.1) whose X-Forwarded-For and X-Forwarded-Proto are believed: the client "
        "address of audit records and of the failed-key limit is then the one they name. "
        "Empty: those headers are ignored, whoever sends them.")
    ssl_certfile: Path | None = Field(None, description="PEM certificate; enables TLS with the key.")
    ssl_keyfile: Path | None = Field(None, description="PEM private key for --ssl-certfile.")
    tls_allow_1_2: bool = Field(
        False, description="Accept TLS 1.2 clients. Off: TLS 1.3 is the minimum."
    )
    cors_allow_origins: list[str] = Field(
        default_factory=list,
        description="Origins allowed by CORS (exact matches; '*' is refused). Empty: no CORS.",
    )

    # --- authentication ------------------------------------------------------------------
    admin_key: SecretStr | None = Field(
        None,
        description="Admin API key for automation. Unset: one is generated at first start, "
        "printed once, and only its hash is kept.",
    )
    key_pepper: SecretStr | None = Field(
        None, description="Secret the API-key hashes are keyed with. Replicas sharing a "
        "database must share it. Unset: generated into data_dir/secrets/pepper.",
    )
    auth_failure_limit: int = Field(
        20, ge=1, le=100_000,
        description="Failed authentications one client address may make per "
                    "auth_failure_window_s; beyond them it gets 429 until the window ends.")
    auth_failure_window_s: float = Field(
        10.0, gt=0, le=3600, description="Window of auth_failure_limit, in seconds.")
    console_idle_hours: float = Field(
        8.0, gt=0, le=24 * 30, description="Web console (/console): a session unused this "
        "long ends; the next page asks to sign in again.")
    console_max_hours: float = Field(
        12.0, gt=0, le=24 * 90, description="Web console (/console): a session ends this long "
        "after sign-in, however much it is used.")
    ops_public: bool = Field(
        False, description="Show /readyz details (models, engines, pids, instances) and "
        "/metrics without a key. Off: they need a key that may read engines.")
    dangerously_disable_auth: bool = Field(
        False, description="Serve without any API key check. Never use outside a sandbox."
    )

    # --- control plane ---------------------------------------------------------------------
    database_url: SecretStr | None = Field(
        None, description="Control-plane database, e.g. postgresql+psycopg://u@host/db. "
        "Unset: SQLite (WAL) at data_dir/autoglm.db.",
    )

    # --- shared state (autoglm.state) -------------------------------------------------------
    redis_url: SecretStr | None = Field(
        None, description="Redis for state shared by every gateway process and replica "
        "(limits, response cache, batch queue, locks), e.g. redis://127.0.0.1:6379/0. Unset: "
        "each has its embedded form (in-process limits, a queue in the database).")
    rate_limits: dict[Literal["key", "project", "tenant"], LimitSpec] = Field(
        default_factory=dict,
        description="Default limits of every key, project and tenant: requests_per_minute, "
        "tokens_per_minute, and for tenants tokens_per_day. Unset: unlimited. One key, "
        "project or tenant is set apart through PUT /admin/v1/limits/{scope}/{id}.")
    rate_limit_window_s: float = Field(
        60.0, gt=0, le=3600, description="The 'minute' of the per-minute limits, in seconds "
        "(shorter only for tests).")
    rate_limit_batch_share: float = Field(
        0.8, gt=0, le=1, description="The share of each limit batch lines may use; the rest "
        "is kept for live requests (a refused line is retried later, not failed).")
    rate_limit_lease_fraction: float = Field(
        0.02, gt=0, le=1, description="With redis_url: the share of a limit a process leases "
        "from Redis at a time and then spends without a round trip (at most this much per "
        "process goes unused when a window ends).")
    redis_prefix: str = Field(
        "autoglm:", min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$",
        description="Prefix of every Redis key this deployment writes.")

    # --- response cache (autoglm.cache) -----------------------------------------------------
    response_cache_tenants: list[str] = Field(
        default_factory=list, description="Tenant ids whose deterministic requests "
        "(temperature 0, or a seed) are answered from the response cache when the same "
        "request was answered before (never across tenants). Any request opts in with the "
        "header X-AutoGLM-Cache: use, and out with X-AutoGLM-Cache: skip. Empty: only "
        "requests that ask.")
    response_cache_ttl_s: float = Field(
        3600.0, gt=0, le=30 * 86_400, description="How long a cached answer is kept, in "
        "seconds.")
    response_cache_max_entries: int = Field(
        10_000, ge=1, le=10_000_000, description="Without redis_url: answers this process "
        "keeps at most (the least recently used go first). With redis_url the cache is in "
        "Redis, shared, bounded by Redis's maxmemory.")
    response_cache_wait_s: float = Field(
        30.0, ge=0, le=600, description="Identical cacheable requests that miss while one of "
        "them runs the model wait for its answer (single-flight; with redis_url across "
        "processes too) at most this long, then run the model themselves; 0: each runs.")
    response_cache_max_bytes: int = Field(
        64 * 1024 * 1024, ge=4096, le=1 << 40, description="Without redis_url: bytes of "
        "cached answers this process keeps at most; an answer over a sixteenth of it is not "
        "kept.")

    # --- audit (autoglm.audit) ------------------------------------------------------------
    audit_flush_ms: int = Field(
        10, ge=0, le=1000, description="Longest a queued audit record (an inference request's) "
        "waits for its group commit, in milliseconds; 0: committed as soon as the writer can.")
    audit_strict: bool = Field(
        False, description="Every response waits until its audit record is committed, so a "
        "crash can lose none (slower). Off: inference records are group-committed within "
        "audit_flush_ms; admin acts and refusals are always committed before the response.")
    audit_queue_max: int = Field(
        100_000, ge=100, le=10_000_000, description="Audit records waiting for their commit "
        "at most; beyond it a request waits for room (audit_submit_timeout_s), never dropping "
        "a record.")
    audit_submit_timeout_s: float = Field(
        10.0, gt=0, le=600, description="Longest a request waits for room in a full audit "
        "queue (or, with audit_strict, for its commit) before it fails with an error.")
    audit_checkpoint_every: int = Field(
        10_000, ge=1, description="Audit records between two signed checkpoints of the "
        "chain's head (data_dir/audit/checkpoints.jsonl); they catch a cut-off tail.")
    audit_checkpoint_s: float = Field(
        60.0, gt=0, description="Seconds between two signed checkpoints when fewer than "
        "audit_checkpoint_every records came (none while the chain does not move).")
    audit_syslog: bool = Field(
        False, description="Also send every audit checkpoint to syslog (/dev/log), so a copy "
        "is kept off the host where syslog forwards it.")
    audit_fold_s: float = Field(
        1.0, gt=0, le=3600, description="Identical refusals (same actor, key, client, action "
        "and status) within this many seconds are folded into one audit record with a count.")

    # --- usage alerts (autoglm.alerts) -----------------------------------------------------
    alerts_enabled: bool = Field(
        True, description="Watch every key and tenant for usage anomalies (bursts, error and "
        "refusal spikes, a key used from a new address) and tenants nearing their daily "
        "token quota; alerts are audit records (alert.raised), metrics, and webhook POSTs "
        "when alerts_webhook_url is set.")
    alerts_bucket_s: float = Field(
        60.0, gt=0, le=3600, description="Length of the buckets counts are judged in, in "
        "seconds (shorter only for tests).")
    alerts_window_s: float = Field(
        3600.0, gt=0, le=86_400, description="Recent history each subject's baseline is "
        "taken from (median and MAD of its buckets), in seconds.")
    alerts_warmup_s: float = Field(
        86_400.0, ge=0, le=30 * 86_400, description="No alert for a key or tenant until this "
        "long after its first request (seconds): a day, so its daily pattern is known.")
    alerts_cooldown_s: float = Field(
        3600.0, gt=0, le=30 * 86_400, description="At most one alert per key or tenant and "
        "signal in this many seconds.")
    alerts_sensitivity: float = Field(
        6.0, gt=0, le=100, description="k of the rule value >= max(level + k*spread, "
        "ratio*peak, floor): spreads (1.4826 MAD) above the median a count must be.")
    alerts_ratio: float = Field(
        2.5, ge=1, le=1000, description="ratio of the rule: how many times its usual peak "
        "(90th percentile of the window, or the busiest bucket of this hour on past days) a "
        "count must be.")
    alerts_min_count: int = Field(
        20, ge=1, description="Floor of the rule for requests, errors, refusals and requests "
        "from new addresses, per bucket.")
    alerts_min_tokens: int = Field(
        100_000, ge=1, description="Floor of the rule for tokens, per bucket.")
    alerts_quota_thresholds: list[float] = Field(
        default_factory=lambda: [0.8, 0.95], description="Shares of a tenant's "
        "tokens_per_day whose passing alerts, once per day each. Empty: no quota alerts.")
    alerts_webhook_url: SecretStr | None = Field(
        None, description="URL every alert is POSTed to as signed JSON (see README, Usage "
        "alerts); a secret, as some receivers put their token in it. Unset: no webhook.")
    alerts_webhook_secret_file: Path | None = Field(
        None, description="File holding the webhook's HMAC-SHA256 secret (at least 16 "
        "bytes); required with alerts_webhook_url.")
    alerts_webhook_retries: int = Field(
        5, ge=0, le=20, description="Tries after the first when the webhook fails "
        "(connection, timeout, 408, 429, 5xx), with doubling backoff.")
    alerts_webhook_backoff_s: float = Field(
        1.0, gt=0, le=60, description="The webhook's first retry delay; it doubles (at most "
        "60 s).")
    alerts_webhook_timeout_s: float = Field(
        5.0, gt=0, le=60, description="Timeout of one webhook POST.")

    # --- batch API (autoglm.batch) -----------------------------------------------------------
    batch_file_max_bytes: int = Field(
        100 * 1024 * 1024, ge=1024, le=1 << 34, description="Largest batch input file "
        "(POST /v1/files) in bytes; the upload is also bounded by max_body_bytes.")
    batch_max_lines: int = Field(
        50_000, ge=1, le=1_000_000, description="Most requests in one batch input file.")
    batch_concurrency: int = Field(
        2, ge=0, le=256, description="Batch lines this process runs at once, each only when "
        "its model has a free slot and no live request waiting; 0: this process runs none.")
    batch_lease_s: float = Field(
        60.0, ge=1, le=3600, description="How long a claimed batch line stays with its worker "
        "without a heartbeat; the line of a worker that died runs again after it.")
    batch_poll_s: float = Field(
        1.0, gt=0, le=60, description="How often an idle batch worker looks for lines, and "
        "about how soon a cancel reaches the lines in flight.")
    batch_file_sweep_s: float = Field(
        300.0, gt=0, le=86_400, description="How often each process deletes expired files "
        "(expires_after, output_expires_after), bytes under data_dir/files that no file "
        "names (an hour old: a crash between writing and recording them) and half-written "
        "files.")

    policy_file: Path | None = Field(
        None, description="Authorization policy (YAML, role x action x scope); reloaded when it "
        "changes. Unset: the built-in default policy.",
    )

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
    # --- edge node (autoglm.edge) --------------------------------------------------------
    centre_url: str | None = Field(
        None, pattern=r"^https?://[^\s/]+(/[^\s]*)?$", description="Makes this an edge "
        "node of the centre at this URL: it serves from a copy of the centre's tenants, keys "
        "and limits, synced every edge_sync_s, and forwards its audit records there. "
        "Tenants, projects, principals, keys and limits are then managed at the centre.")
    centre_key: SecretStr | None = Field(
        None, description="The edge's key at the centre (a platform key narrowed to "
        "edge.sync, and model.pull for the mirror); required with centre_url.")
    centre_ca_file: Path | None = Field(
        None, description="PEM bundle of the CAs the centre's TLS certificate is checked "
        "against. Unset: the system's.")
    edge_node: str = Field(
        default_factory=lambda: socket.gethostname()[:64] or "edge",
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$", description="This edge node's name "
        "at the centre (its forwarded audit chain is kept under it). Unset: the host name.")
    edge_sync_s: float = Field(
        10.0, gt=0, le=3600, description="How often an edge node syncs with its centre and "
        "forwards its audit records, in seconds.")
    edge_max_staleness_s: float = Field(
        86_400.0, gt=0, le=30 * 86_400, description="How long after its last sync with the "
        "centre an edge node still serves tenant keys from its copy (a revocation made at "
        "the centre meanwhile is not known); then 503 edge_stale until the centre answers.")
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

    # --- logs ------------------------------------------------------------------------------
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="Least severe log level written."
    )
    log_prompts: bool = Field(
        False, description="Log prompt and answer text. Off by default: they may hold PII."
    )

    # --- privacy (autoglm.privacy) ----------------------------------------------------------
    pii_actions: dict[str, Literal["allow", "mask", "block"]] = Field(
        default_factory=lambda: {"default": "mask"},
        description="What the PII guard does with each category of personal data in prompts "
        "and answers: allow, mask (138****5678) or block (a 400 naming the category). Keys: "
        "cn_id, cn_mobile, bank_card, cn_uscc, email, ipv4, ipv6, passport, and 'default' "
        "for the rest.")
    pii_tenant_actions: dict[str, dict[str, Literal["allow", "mask", "block"]]] = Field(
        default_factory=dict,
        description="Per tenant id, actions that replace pii_actions' for that tenant's callers.")
    audit_text_tenants: list[str] = Field(
        default_factory=list,
        description="Tenant ids whose prompt and answer text is kept in their audit records "
        "(as the PII guard left it, sealed under each caller's personal data key, so "
        "`autoglm privacy erase` makes it unreadable). Empty by default: no text is kept.")

    # --- where the settings came from (not itself a setting) -----------------------------
    config_file: Path | None = Field(
        None, description="YAML file these settings were read from, if any.", exclude=True
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        init_kwargs = getattr(init_settings, "init_kwargs", {})
        path = init_kwargs.get("config_file") or os.environ.get("AUTOGLM_CONFIG")
        yaml_source = _YamlSource(settings_cls, Path(path) if path else None)
        return (init_settings, env_settings, yaml_source)

    @field_validator("admin_key")
    @classmethod
    def _strong_admin_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return value
        secret = value.get_secret_value()
        if not well_formed(secret) and len(secret) < MIN_ADMIN_KEY_CHARS:
            raise ValueError(
                f"admin_key is too weak: use a key made by `autoglm keys` (agk_...) or a "
                f"random secret of at least {MIN_ADMIN_KEY_CHARS} characters")
        return value

    @model_validator(mode="after")
    def _check_edge(self) -> Settings:
        if self.centre_url is not None and self.centre_key is None:
            raise ValueError("centre_url needs centre_key: the edge's key at the centre")
        if self.centre_url is not None and self.centre_url.startswith("http://") and \
                not is_loopback(urlsplit(self.centre_url).hostname or ""):
            raise ValueError("centre_url must be https:// (http:// only on loopback): the "
                             "snapshot holds key hashes and the records personal data")
        return self

    @field_validator("forwarded_allow_ips")
    @classmethod
    def _check_proxies(cls, v: list[str]) -> list[str]:
        for item in v:
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ValueError(f"forwarded_allow_ips: {item!r} is not an address or "
                                 "network (a host name or '*' is not accepted)") from None
        return v

    @field_validator("cors_allow_origins")
    @classmethod
    def _no_wildcard_origin(cls, value: list[str]) -> list[str]:
        if "*" in value:
            raise ValueError("'*' is not allowed: list the origins that may call the API")
        return value

    @field_validator("models")
    @classmethod
    def _unique_ids(cls, value: list[ModelSpec]) -> list[ModelSpec]:
        ids = [m.id for m in value]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"model ids must be unique: {', '.join(dupes)}")
        if sum(1 for m in value if m.engine == "llamacpp") > 1:
            raise ValueError("at most one embedded llamacpp model per server")
        return value

    @model_validator(mode="after")
    def _check_tls_pair(self) -> Settings:
        if (self.ssl_certfile is None) != (self.ssl_keyfile is None):
            raise ValueError("ssl_certfile and ssl_keyfile must be given together")
        if self.engine_restart_backoff_max_s < self.engine_restart_backoff_min_s:
            raise ValueError("engine_restart_backoff_max_s is below engine_restart_backoff_min_s")
        if self.grpc_port and self.grpc_port == self.port:
            raise ValueError("grpc_port must differ from port")
        return self

    @field_validator("alerts_quota_thresholds")
    @classmethod
    def _shares(cls, value: list[float]) -> list[float]:
        if any(not 0 < v <= 1 for v in value):
            raise ValueError("each threshold is a share of the quota, above 0 and at most 1")
        return sorted(set(value))

    @field_validator("alerts_webhook_url")
    @classmethod
    def _webhook_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().startswith(("http://",
                                                                          "https://")):
            raise ValueError("must start with http:// or https://")
        return value

    @model_validator(mode="after")
    def _check_alerts(self) -> Settings:
        if self.alerts_webhook_url and self.alerts_webhook_secret_file is None:
            raise ValueError("alerts_webhook_url needs alerts_webhook_secret_file: every "
                             "alert is signed")
        if self.alerts_window_s < 2 * self.alerts_bucket_s:
            raise ValueError("alerts_window_s must hold at least two alerts_bucket_s")
        return self

    @model_validator(mode="after")
    def _no_open_door(self) -> Settings:
        if self.dangerously_disable_auth and not is_loopback(self.host):
            raise ValueError(
                f"dangerously_disable_auth serves without keys, so it only binds to a loopback "
                f"address (127.0.0.1, ::1, localhost), not {self.host}")
        return self

    @property
    def tls_enabled(self) -> bool:
        return self.ssl_certfile is not None

    def masked(self) -> dict[str, Any]:
        """Effective settings as plain data, every secret replaced by a mask."""
        out: dict[str, Any] = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if isinstance(value, SecretStr):
                out[name] = "********"
            elif isinstance(value, Path):
                out[name] = str(value)
            elif name == "models":
                out[name] = [m.model_dump(mode="json") for m in value]  # SecretStr -> "**********"
            else:
                out[name] = value
        return out


def is_loopback(host: str) -> bool:
    """``localhost`` or a loopback address."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def revealed(model: BaseModel) -> dict[str, Any]:
    """Every field as JSON-ready data with secrets in clear: only for handing settings to
    a process of our own over a pipe (gateway workers), never for logs or files."""

    def plain(value: Any) -> Any:
        if isinstance(value, SecretStr):
            return value.get_secret_value()
        if isinstance(value, Path):
            return str(value)
        if isinstance(value, BaseModel):
            return {k: plain(getattr(value, k)) for k in type(value).model_fields}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    return {k: plain(getattr(model, k)) for k in type(model).model_fields
            if not type(model).model_fields[k].exclude}


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Build settings from flags (``overrides``, None values dropped), env and YAML."""
    kwargs = {k: v for k, v in overrides.items() if v is not None}
    if config_file is not None:
        kwargs["config_file"] = config_file
    try:
        return Settings(**kwargs)
    except ConfigError:
        raise
    except ValidationError as exc:
        problems = []
        for err in exc.errors(include_url=False):
            loc = ".".join(str(p) for p in err["loc"])
            msg = str(err["msg"]).removeprefix("Value error, ")
            problems.append(f"{loc}: {msg}" if loc else msg)
        raise ConfigError(f"invalid settings: {'; '.join(problems)}") from None
    except ValueError as exc:
        raise ConfigError(f"invalid settings: {exc}") from exc
