"""audit log: indexes for reading it (``GET /admin/v1/audit``, ``autoglm audit export``)

Each filter of the audit read gets an index that yields its records in seq order:
``(tenant_id, seq)``, ``(actor, seq)``, ``(action, seq)``, ``(decision, seq)``; the time
index becomes ``(ts, seq)``, so the seq range of a time window is one index-only range
scan (see ``autoglm.audit.query``). It replaces ``ix_audit_log_ts``, which it covers.

Revision ID: 0006
Revises: 0005
"""

from alembic import op

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None

INDEXES = (
    ("ix_audit_log_ts_seq", ["ts", "seq"]),
    ("ix_audit_log_tenant_seq", ["tenant_id", "seq"]),
    ("ix_audit_log_actor_seq", ["actor", "seq"]),
    ("ix_audit_log_action_seq", ["action", "seq"]),
    ("ix_audit_log_decision_seq", ["decision", "seq"]),
)


def upgrade() -> None:
    for name, columns in INDEXES:
        op.create_index(name, "audit_log", columns, unique=False)
    op.drop_index("ix_audit_log_ts", table_name="audit_log")


def downgrade() -> None:
    op.create_index("ix_audit_log_ts", "audit_log", ["ts"], unique=False)
    for name, _ in reversed(INDEXES):
        op.drop_index(name, table_name="audit_log")
