"""batch API: files, batches, their lines and results, and the embedded queue

``files`` holds the metadata of uploaded batch input files and of batch output/error
files (their bytes are in ``data_dir/files/<id>``); ``batches`` one row per batch with its
status, counts and timestamps; ``batch_lines`` each request of a batch and, once it ran,
its output line, written once; ``batch_queue`` the lines still to deliver, with the lease
of the worker that claimed them (``autoglm.batch.queue.DatabaseQueue``).

Revision ID: 0009
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = '0009'
down_revision = '0007'
branch_labels = None
depends_on = None


def _when(name: str, nullable: bool = True) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "files",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("tenant_id", sa.String(length=32), nullable=True),
        sa.Column("project_id", sa.String(length=32), nullable=True),
        sa.Column("principal_id", sa.String(length=32), nullable=False),
        sa.Column("purpose", sa.String(length=16), nullable=False),
        sa.Column("filename", sa.String(length=256), nullable=False),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
        sa.Column("lines", sa.Integer(), nullable=False),
        sa.Column("endpoint", sa.String(length=32), nullable=True),
        sa.Column("model", sa.String(length=128), nullable=True),
        _when("created_at", nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_files_tenant_id", "files", ["tenant_id", "id"], unique=False)
    op.create_table(
        "batches",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("tenant_id", sa.String(length=32), nullable=True),
        sa.Column("project_id", sa.String(length=32), nullable=True),
        sa.Column("principal_id", sa.String(length=32), nullable=False),
        sa.Column("key_id", sa.String(length=32), nullable=False),
        sa.Column("endpoint", sa.String(length=32), nullable=False),
        sa.Column("input_file_id", sa.String(length=32), nullable=False),
        sa.Column("completion_window", sa.String(length=8), nullable=False),
        sa.Column("model", sa.String(length=128), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("metadata", sa.JSON(), nullable=True),
        sa.Column("errors", sa.JSON(), nullable=True),
        sa.Column("total", sa.Integer(), nullable=False),
        sa.Column("completed", sa.Integer(), nullable=False),
        sa.Column("failed", sa.Integer(), nullable=False),
        sa.Column("input_tokens", sa.BigInteger(), nullable=False),
        sa.Column("output_tokens", sa.BigInteger(), nullable=False),
        sa.Column("output_file_id", sa.String(length=32), nullable=True),
        sa.Column("error_file_id", sa.String(length=32), nullable=True),
        sa.Column("finalize_until", sa.Float(), nullable=True),
        _when("created_at", nullable=False),
        _when("expires_at", nullable=False),
        _when("in_progress_at"),
        _when("finalizing_at"),
        _when("completed_at"),
        _when("failed_at"),
        _when("expired_at"),
        _when("cancelling_at"),
        _when("cancelled_at"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_batches_tenant_id", "batches", ["tenant_id", "id"], unique=False)
    op.create_index("ix_batches_status", "batches", ["status"], unique=False)
    op.create_table(
        "batch_lines",
        sa.Column("batch_id", sa.String(length=32), nullable=False),
        sa.Column("idx", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("custom_id", sa.Text(), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("result", sa.Text(), nullable=True),
        sa.Column("ok", sa.Boolean(), nullable=True),
        sa.ForeignKeyConstraint(["batch_id"], ["batches.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("batch_id", "idx"),
    )
    op.create_table(
        "batch_queue",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
                  autoincrement=True, nullable=False),
        sa.Column("batch_id", sa.String(length=32), nullable=False),
        sa.Column("idx", sa.Integer(), nullable=False),
        sa.Column("run_after", sa.Float(), nullable=False),
        sa.Column("claimed_by", sa.String(length=64), nullable=True),
        sa.Column("deliveries", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("batch_id", "idx", name="uq_batch_queue_line"),
    )
    op.create_index("ix_batch_queue_run_after", "batch_queue", ["run_after", "id"],
                    unique=False)


def downgrade() -> None:
    op.drop_index("ix_batch_queue_run_after", table_name="batch_queue")
    op.drop_table("batch_queue")
    op.drop_table("batch_lines")
    op.drop_index("ix_batches_status", table_name="batches")
    op.drop_index("ix_batches_tenant_id", table_name="batches")
    op.drop_table("batches")
    op.drop_index("ix_files_tenant_id", table_name="files")
    op.drop_table("files")
