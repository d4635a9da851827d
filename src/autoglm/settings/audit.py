"""Settings fields: The audit chain, usage alerts, and privacy (the PII guard, kept text)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr


class AuditFields(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    # --- audit (autoglm.audit) ------------------------------------------------------------
    audit_flush_ms: int = Field(
        10, ge=0, le=1000, description="Longest a queued audit record (an inference request's) "
        "waits for its group commit while the gateway is quiet, in milliseconds (under load: "
        "up to audit_flush_max_ms); 0: committed as soon as the writer can.")
    audit_flush_max_ms: int = Field(
        50, ge=0, le=5000, description="Under load the pause between group commits of "
        "queued audit records grows with the last batch (audit_flush_ms per 32 records) up "
        "to this, in milliseconds: fewer, larger commits, less of the machine spent on "
        "them. A record then waits up to about this long for its commit.")
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
    audit_seal_process: bool = Field(
        True, description="Seal and commit queued audit records (inference requests') in a "
        "child process of each gateway process, beside its event loop rather than taking "
        "turns with it for Python's interpreter lock (more requests per second on a "
        "machine with a spare core). Off: in a thread of the gateway process.")
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

