"""Release 2: a book's ISBN, a plain ADD COLUMN.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("book", sa.Column("isbn", sa.String(20), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("book") as batch_op:
        batch_op.drop_column("isbn")
