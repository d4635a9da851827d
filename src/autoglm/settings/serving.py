"""Settings fields: Where things live, HTTP, authentication and logs."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from autoglm.settings.specs import default_data_dir


class ServingFields(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

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

    # --- logs ------------------------------------------------------------------------------
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="Least severe log level written."
    )
    log_prompts: bool = Field(
        False, description="Log prompt and answer text. Off by default: they may hold PII."
    )

