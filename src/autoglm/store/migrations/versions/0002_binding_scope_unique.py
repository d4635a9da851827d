"""role bindings: one binding per principal, role and scope, NULL scopes included

A unique constraint over nullable columns lets rows with a NULL tenant or project repeat
(NULL is never equal to NULL), so the same tenant_admin binding could be created any
number of times, and deleting one left the role in force. Duplicates are removed (the
oldest of each is kept) and a unique index over the scope with NULLs made comparable
takes the constraint's place.

Revision ID: 0002
Revises: 0001
"""

from alembic import op
import sqlalchemy as sa


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None

SCOPE = ["principal_id", "role", sa.text("COALESCE(tenant_id, '')"),
         sa.text("COALESCE(project_id, '')")]


def upgrade() -> None:
    op.execute(sa.text(
        "DELETE FROM role_bindings WHERE id IN (SELECT id FROM (SELECT id, ROW_NUMBER() OVER ("
        "PARTITION BY principal_id, role, COALESCE(tenant_id, ''), COALESCE(project_id, '') "
        "ORDER BY created_at, id) AS n FROM role_bindings) AS d WHERE n > 1)"))
    op.create_index("uq_role_binding_scope", "role_bindings", SCOPE, unique=True)


def downgrade() -> None:
    op.drop_index("uq_role_binding_scope", table_name="role_bindings")
