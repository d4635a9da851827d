"""usage rollup: requests, tokens, errors and latency per hour and day

``usage_rollup`` holds one row per (bucket, period start, tenant, project, key id, model),
kept by the audit writer from the inference records it commits, in the same
transaction (see ``autoglm.audit.rollup``). Absent ids are ``''`` so the natural key is
unique; ``latency_hist`` is a JSON array of counts over fixed log-spaced bounds.
Records committed before this revision are not counted.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "usage_rollup",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
                  autoincrement=True, nullable=False),
        sa.Column("bucket", sa.String(length=4), nullable=False),
        sa.Column("period_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("tenant_id", sa.String(length=32), nullable=False),
        sa.Column("project_id", sa.String(length=32), nullable=False),
        sa.Column("key_id", sa.String(length=32), nullable=False),
        sa.Column("model", sa.String(length=128), nullable=False),
        sa.Column("requests", sa.BigInteger(), nullable=False),
        sa.Column("errors", sa.BigInteger(), nullable=False),
        sa.Column("denials", sa.BigInteger(), nullable=False),
        sa.Column("prompt_tokens", sa.BigInteger(), nullable=False),
        sa.Column("completion_tokens", sa.BigInteger(), nullable=False),
        sa.Column("latency_sum_ms", sa.Float(), nullable=False),
        sa.Column("latency_max_ms", sa.Float(), nullable=False),
        sa.Column("latency_hist", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("bucket", "period_start", "tenant_id", "project_id", "key_id",
                            "model", name="uq_usage_rollup_key"),
    )
    op.create_index("ix_usage_rollup_scope", "usage_rollup",
                    ["tenant_id", "project_id", "bucket", "period_start"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_usage_rollup_scope", table_name="usage_rollup")
    op.drop_table("usage_rollup")
