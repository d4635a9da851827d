"""tenants: the models a platform admin granted them

Before this, a caller without a project (a tenant admin sending no ``OpenAI-Project``)
could use every model on the platform. Each tenant now has a grant, and projects can only
narrow it. Existing tenants are granted what their projects already list, so nobody
loses a model they had, and nobody gains one.

Revision ID: 0003
Revises: 0002
"""

import json

import sqlalchemy as sa
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("tenants", sa.Column("granted_models", sa.JSON(), nullable=False,
                                       server_default="[]"))
    conn = op.get_bind()
    granted: dict[str, set[str]] = {}
    for tenant_id, models in conn.execute(sa.text(
            "SELECT tenant_id, allowed_models FROM projects")):
        if isinstance(models, str):  # SQLite hands JSON back as text
            models = json.loads(models)
        granted.setdefault(tenant_id, set()).update(m for m in models or [] if isinstance(m, str))
    tenants = sa.table("tenants", sa.column("id", sa.String),
                       sa.column("granted_models", sa.JSON))
    for tenant_id, models in granted.items():
        conn.execute(tenants.update().where(tenants.c.id == tenant_id)
                     .values(granted_models=sorted(models)))


def downgrade() -> None:
    op.drop_column("tenants", "granted_models")
