"""Settings fields: The control plane, shared state (Redis, limits), the response cache, the
batch API."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from autoglm.settings.specs import LimitSpec


class StateFields(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

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

