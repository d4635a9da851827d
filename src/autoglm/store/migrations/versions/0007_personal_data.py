"""personal data: audit records' personal fields sealed per data subject, and their keys

``audit_log.personal`` holds a record's personal fields (client address, purpose, stored
text) encrypted under its data subject's key; ``subject_keys`` holds each key's salt
(the key is derived from it and the master key file; see ``autoglm.privacy.vault``).
Erasing a subject sets its salts to NULL. Records written before this revision keep
their fields in clear (and ``personal`` NULL): their canonical form is unchanged.

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("audit_log", sa.Column("personal", sa.Text(), nullable=True))
    op.create_table(
        "subject_keys",
        sa.Column("kid", sa.String(length=32), nullable=False),
        sa.Column("subject", sa.String(length=80), nullable=False),
        sa.Column("salt", sa.String(length=32), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("erased_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("kid"),
    )
    op.create_index("ix_subject_keys_subject", "subject_keys", ["subject"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_subject_keys_subject", table_name="subject_keys")
    op.drop_table("subject_keys")
    with op.batch_alter_table("audit_log") as batch:
        batch.drop_column("personal")
