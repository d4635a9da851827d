"""file expiry: ``files.expires_at`` and a batch's ``output_expires_s``

``files.expires_at`` is set from ``expires_after`` at upload, or from the batch's
``output_expires_after`` on its output and error files; null: kept until deleted. An
expired file is neither shown nor served, and the sweeper (``autoglm.batch.sweep``)
deletes its row and bytes. ``batches.output_expires_s`` keeps the seconds asked for until
the batch's files are written.

Revision ID: 0011
Revises: 0010
"""

import sqlalchemy as sa
from alembic import op

revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("files") as t:
        t.add_column(sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True))
    op.create_index("ix_files_expires_at", "files", ["expires_at"], unique=False)
    with op.batch_alter_table("batches") as t:
        t.add_column(sa.Column("output_expires_s", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("batches") as t:
        t.drop_column("output_expires_s")
    op.drop_index("ix_files_expires_at", table_name="files")
    with op.batch_alter_table("files") as t:
        t.drop_column("expires_at")
