"""Control-plane tables: who is who, what they may do, their keys, and what admins did.

tenant -> projects -> principals (people and service accounts); role bindings give a
principal a role at platform, tenant or project scope; API keys belong to one principal
and may only narrow its rights. Ids are prefixed random strings (``ten_``, ``prj_``, ...),
so an id never reveals how many objects exist.
"""

from __future__ import annotations

import re
import secrets
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

ROLES = ("platform_admin", "tenant_admin", "member", "guest")


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(8)}"


ID_MAX = 32  # the id columns' length
_ID = re.compile(r"^[a-z]{2,4}_[a-z0-9_]{1,27}$")


def valid_id(value: object) -> bool:
    """Shaped like an id this store makes (``prj_0a1b...``, ``prn_platform_admin``): anything
    else names nothing, and is answered without asking the database."""
    return isinstance(value, str) and len(value) <= ID_MAX and _ID.match(value) is not None


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[str]: JSON}


class Tenant(Base):
    __tablename__ = "tenants"
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=lambda: new_id("ten"))
    name: Mapped[str] = mapped_column(String(128), unique=True)
    # the models a platform admin granted: the tenant's projects and callers use no others
    granted_models: Mapped[list[str]] = mapped_column(JSON, default=list)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Project(Base):
    __tablename__ = "projects"
    __table_args__ = (UniqueConstraint("tenant_id", "name"),)
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=lambda: new_id("prj"))
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"),
                                           index=True)
    name: Mapped[str] = mapped_column(String(128))
    allowed_models: Mapped[list[str]] = mapped_column(JSON, default=list)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Principal(Base):
    __tablename__ = "principals"
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=lambda: new_id("prn"))
    tenant_id: Mapped[str | None] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), index=True, nullable=True)
    name: Mapped[str] = mapped_column(String(128))
    kind: Mapped[str] = mapped_column(String(16), default="user")  # user | service
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class RoleBinding(Base):
    __tablename__ = "role_bindings"
    __table_args__ = (UniqueConstraint("principal_id", "role", "tenant_id", "project_id"),)
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=lambda: new_id("rb"))
    principal_id: Mapped[str] = mapped_column(ForeignKey("principals.id", ondelete="CASCADE"),
                                              index=True)
    role: Mapped[str] = mapped_column(String(32))
    tenant_id: Mapped[str | None] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), nullable=True)
    project_id: Mapped[str | None] = mapped_column(
        ForeignKey("projects.id", ondelete="CASCADE"), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ApiKey(Base):
    __tablename__ = "api_keys"
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=lambda: new_id("key"))
    principal_id: Mapped[str] = mapped_column(ForeignKey("principals.id", ondelete="CASCADE"),
                                              index=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)  # HMAC-SHA256 hex
    display: Mapped[str] = mapped_column(String(16))  # "agk_AbCd…" for humans
    name: Mapped[str] = mapped_column(String(128), default="")
    projects: Mapped[list[str] | None] = mapped_column(JSON, nullable=True)  # narrowing
    models: Mapped[list[str] | None] = mapped_column(JSON, nullable=True)
    actions: Mapped[list[str] | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    rotated_to: Mapped[str | None] = mapped_column(String(32), nullable=True)


class AuditEvent(Base):
    """Durable record of every admin act (the audit issue makes the chain tamper-evident)."""

    __tablename__ = "audit_events"
    __table_args__ = (Index("ix_audit_events_ts", "ts"),)
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    ts: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    actor: Mapped[str] = mapped_column(String(32))
    tenant_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    action: Mapped[str] = mapped_column(String(64))
    resource: Mapped[str] = mapped_column(String(128))
    decision: Mapped[str] = mapped_column(String(16))  # allow | deny
    status: Mapped[int] = mapped_column(Integer)
    request_id: Mapped[str | None] = mapped_column(String(160), nullable=True)
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class AuditRecord(Base):
    """One record of the tamper-evident audit chain (``autoglm.audit``).

    Written only by ``autoglm.audit.AuditLog``, never updated: ``hash`` is the HMAC over
    the record before's hash and this record's canonical form, so any edit shows.
    """

    __tablename__ = "audit_log"
    # what the reads filter on, each in seq order (migration 0006, ``audit.query``)
    __table_args__ = (Index("ix_audit_log_ts_seq", "ts", "seq"),
                      Index("ix_audit_log_tenant_seq", "tenant_id", "seq"),
                      Index("ix_audit_log_actor_seq", "actor", "seq"),
                      Index("ix_audit_log_action_seq", "action", "seq"),
                      Index("ix_audit_log_decision_seq", "decision", "seq"))
    # INTEGER PRIMARY KEY on SQLite is the rowid itself: no second index to keep up
    seq: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"),
                                     primary_key=True, autoincrement=False)
    ts: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    actor: Mapped[str | None] = mapped_column(String(64), nullable=True)
    key_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    tenant_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    project_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    action: Mapped[str] = mapped_column(String(64))
    resource: Mapped[str] = mapped_column(String(256))
    decision: Mapped[str] = mapped_column(String(8))  # allow | deny | error
    status: Mapped[int | None] = mapped_column(Integer, nullable=True)
    client_addr: Mapped[str | None] = mapped_column(String(64), nullable=True)
    request_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    client_request_id: Mapped[str | None] = mapped_column(String(160), nullable=True)
    model: Mapped[str | None] = mapped_column(String(128), nullable=True)
    prompt_tokens: Mapped[int | None] = mapped_column(Integer, nullable=True)
    completion_tokens: Mapped[int | None] = mapped_column(Integer, nullable=True)
    latency_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    purpose: Mapped[str | None] = mapped_column(String(256), nullable=True)
    consent_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    count: Mapped[int] = mapped_column(Integer)
    detail: Mapped[dict[str, Any]] = mapped_column(JSON)
    # personal fields, sealed under the data subject's key (``privacy.vault``; 0007)
    personal: Mapped[str | None] = mapped_column(Text, nullable=True)
    hash: Mapped[str] = mapped_column(String(64))


class RateLimit(Base):
    """Limits an admin set for one key, project or tenant (``autoglm.limits``): each
    non-null field replaces the scope's default from the settings; 0 is unlimited."""

    __tablename__ = "rate_limits"
    scope: Mapped[str] = mapped_column(String(8), primary_key=True)  # key | project | tenant
    scope_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    requests_per_minute: Mapped[int | None] = mapped_column(Integer, nullable=True)
    tokens_per_minute: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    tokens_per_day: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class SubjectKey(Base):
    """The salt of one data subject's key for the personal fields of audit records
    (``autoglm.privacy.vault``): the key is derived from it and the master key file.
    Erasure sets ``salt`` to NULL; the row stays to say when."""

    __tablename__ = "subject_keys"
    kid: Mapped[str] = mapped_column(String(32), primary_key=True)
    subject: Mapped[str] = mapped_column(String(80), index=True)
    salt: Mapped[str | None] = mapped_column(String(32), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    erased_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class AuditHead(Base):
    """The audit chain's head: one row (id 1), locked by every append so that appends from
    all processes form one chain (``SELECT ... FOR UPDATE``; ``BEGIN IMMEDIATE`` on SQLite)."""

    __tablename__ = "audit_head"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    seq: Mapped[int] = mapped_column(BigInteger)
    hash: Mapped[str] = mapped_column(String(64))


class UsageRollup(Base):
    """Usage per hour and per day, per tenant, project, key and model (``autoglm.audit.rollup``).

    Kept by the audit writer from the inference records it commits, in the same
    transaction, so it always agrees with the chain. Absent ids (a refusal before the key
    was known) are ``''``, so the natural key stays unique. ``latency_hist`` counts
    latencies over fixed log-spaced bounds (``rollup.BOUNDS_MS``): rows merge by adding
    them, and percentiles come from the merged counts.
    """

    __tablename__ = "usage_rollup"
    __table_args__ = (
        UniqueConstraint("bucket", "period_start", "tenant_id", "project_id", "key_id", "model",
                         name="uq_usage_rollup_key"),
        Index("ix_usage_rollup_scope", "tenant_id", "project_id", "bucket", "period_start"),
    )
    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"),
                                    primary_key=True, autoincrement=True)
    bucket: Mapped[str] = mapped_column(String(4))  # hour | day
    period_start: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    tenant_id: Mapped[str] = mapped_column(String(32))
    project_id: Mapped[str] = mapped_column(String(32))
    key_id: Mapped[str] = mapped_column(String(32))
    model: Mapped[str] = mapped_column(String(128))
    requests: Mapped[int] = mapped_column(BigInteger)
    errors: Mapped[int] = mapped_column(BigInteger)  # status >= 500 or decision error
    denials: Mapped[int] = mapped_column(BigInteger)  # refused with a 4xx (not 499)
    prompt_tokens: Mapped[int] = mapped_column(BigInteger)
    completion_tokens: Mapped[int] = mapped_column(BigInteger)
    latency_sum_ms: Mapped[float] = mapped_column(Float)
    latency_max_ms: Mapped[float] = mapped_column(Float)
    latency_hist: Mapped[list[int]] = mapped_column(JSON)


# --- the Files and Batch API (``autoglm.batch``; migration 0009) ------------------------------
class StoredFile(Base):
    """An uploaded batch input file or a batch's output/error file. The bytes are in
    ``data_dir/files/<id>`` (0600); the row is what the API shows and whose it is."""

    __tablename__ = "files"
    __table_args__ = (Index("ix_files_tenant_id", "tenant_id", "id"),)
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    tenant_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    project_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    principal_id: Mapped[str] = mapped_column(String(32))  # who uploaded it (or ran the batch)
    purpose: Mapped[str] = mapped_column(String(16))  # batch | batch_output
    filename: Mapped[str] = mapped_column(String(256))
    bytes: Mapped[int] = mapped_column(BigInteger)
    lines: Mapped[int] = mapped_column(Integer)  # requests in it (batch input files)
    endpoint: Mapped[str | None] = mapped_column(String(32), nullable=True)  # its lines' url
    model: Mapped[str | None] = mapped_column(String(128), nullable=True)  # when all agree
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # null: kept until deleted; past: gone (not shown, not served, swept: ``batch.sweep``)
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True,
                                                        index=True)


class Batch(Base):
    """A batch: what it runs, whose it is, where it stands. ``key_id`` is the key that
    created it, whose (current) identity every line runs under (``batch.owner``)."""

    __tablename__ = "batches"
    __table_args__ = (Index("ix_batches_tenant_id", "tenant_id", "id"),
                      Index("ix_batches_status", "status"))
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    tenant_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    project_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    principal_id: Mapped[str] = mapped_column(String(32))
    key_id: Mapped[str] = mapped_column(String(32))
    endpoint: Mapped[str] = mapped_column(String(32))
    input_file_id: Mapped[str] = mapped_column(String(32))
    completion_window: Mapped[str] = mapped_column(String(8))
    model: Mapped[str | None] = mapped_column(String(128), nullable=True)
    status: Mapped[str] = mapped_column(String(16))
    meta: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSON, nullable=True)
    errors: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    total: Mapped[int] = mapped_column(Integer)
    completed: Mapped[int] = mapped_column(Integer, default=0)
    failed: Mapped[int] = mapped_column(Integer, default=0)
    input_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    output_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    output_file_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    error_file_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    # the lease (epoch seconds) of whoever works on it: its intake while validating
    # (``batch.intake``), its finalizer once finalizing; the value is also the holder's token
    finalize_until: Mapped[float | None] = mapped_column(Float, nullable=True)
    output_expires_s: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    in_progress_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True),
                                                            nullable=True)
    finalizing_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True),
                                                           nullable=True)
    completed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    failed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    expired_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    cancelling_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True),
                                                           nullable=True)
    cancelled_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class BatchLine(Base):
    """One request of a batch and, once it ran, its output line (written once)."""

    __tablename__ = "batch_lines"
    batch_id: Mapped[str] = mapped_column(ForeignKey("batches.id", ondelete="CASCADE"),
                                          primary_key=True)
    idx: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    custom_id: Mapped[str] = mapped_column(Text)
    body: Mapped[str] = mapped_column(Text)  # the request body, JSON
    result: Mapped[str | None] = mapped_column(Text, nullable=True)  # the output line, JSON
    ok: Mapped[bool | None] = mapped_column(Boolean, nullable=True)  # output or error file


class QueuedLine(Base):
    """The embedded batch queue (``batch.queue.DatabaseQueue``): one row per line still to
    deliver. ``run_after`` (epoch seconds) is when it may be claimed: its creation, or the
    end of its claim's lease, so a line whose worker died is claimed again after it."""

    __tablename__ = "batch_queue"
    __table_args__ = (UniqueConstraint("batch_id", "idx", name="uq_batch_queue_line"),
                      Index("ix_batch_queue_run_after", "run_after", "id"))
    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"),
                                    primary_key=True, autoincrement=True)
    batch_id: Mapped[str] = mapped_column(String(32))
    idx: Mapped[int] = mapped_column(Integer)
    run_after: Mapped[float] = mapped_column(Float)
    claimed_by: Mapped[str | None] = mapped_column(String(64), nullable=True)
    deliveries: Mapped[int] = mapped_column(Integer, default=0)


class EdgeNode(Base):
    """At a centre: one edge node whose audit records it keeps (``autoglm.edge.inbox``),
    and the end of that node's chain as far as it was forwarded."""

    __tablename__ = "edge_nodes"
    node: Mapped[str] = mapped_column(String(64), primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger)
    hash: Mapped[str] = mapped_column(String(64))
    first_seen: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    last_seen: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class EdgeRecord(Base):
    """At a centre: an edge node's audit records, as the node sealed them (its ``seq`` and
    ``hash``, the columns of ``audit_log``), each stored once."""

    __tablename__ = "edge_audit"
    node: Mapped[str] = mapped_column(String(64), primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    ts: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    actor: Mapped[str | None] = mapped_column(String(64), nullable=True)
    key_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    tenant_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    project_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    action: Mapped[str] = mapped_column(String(64))
    resource: Mapped[str] = mapped_column(String(256))
    decision: Mapped[str] = mapped_column(String(8))
    status: Mapped[int | None] = mapped_column(Integer, nullable=True)
    client_addr: Mapped[str | None] = mapped_column(String(64), nullable=True)
    request_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    client_request_id: Mapped[str | None] = mapped_column(String(160), nullable=True)
    model: Mapped[str | None] = mapped_column(String(128), nullable=True)
    prompt_tokens: Mapped[int | None] = mapped_column(Integer, nullable=True)
    completion_tokens: Mapped[int | None] = mapped_column(Integer, nullable=True)
    latency_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    purpose: Mapped[str | None] = mapped_column(String(256), nullable=True)
    consent_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    count: Mapped[int] = mapped_column(Integer)
    detail: Mapped[dict[str, Any]] = mapped_column(JSON)
    personal: Mapped[str | None] = mapped_column(Text, nullable=True)
    hash: Mapped[str] = mapped_column(String(64))


class ConsoleSession(Base):
    """A signed-in session of the web console (``autoglm.console.sessions``): only the
    SHA-256 of its random token is stored, with the key it was opened with (the session
    ends when that key stops working) and its idle and absolute ends."""

    __tablename__ = "console_sessions"
    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    key_id: Mapped[str] = mapped_column(String(32), index=True)
    principal_id: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    last_seen: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
