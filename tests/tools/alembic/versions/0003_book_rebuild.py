"""Release 3: longer titles and a price that is never NULL. SQLite cannot alter a column in place, so Alembic's
batch mode rebuilds the table: CREATE TABLE _alembic_tmp_book, copy the rows, DROP TABLE book, rename.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("book", recreate="always") as batch_op:
        batch_op.alter_column("title", existing_type=sa.String(100), type_=sa.String(200), existing_nullable=False)
        batch_op.alter_column("price", existing_type=sa.Numeric(10, 2), nullable=False)


def downgrade() -> None:
    with op.batch_alter_table("book", recreate="always") as batch_op:
        batch_op.alter_column("price", existing_type=sa.Numeric(10, 2), nullable=True)
        batch_op.alter_column("title", existing_type=sa.String(200), type_=sa.String(100), existing_nullable=False)
