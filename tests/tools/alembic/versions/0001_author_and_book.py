"""Release 1: authors and their books.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "author",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(100), nullable=False),
    )
    op.create_table(
        "book",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("title", sa.String(100), nullable=False),
        sa.Column("author_id", sa.Integer, sa.ForeignKey("author.id", name="fk_book_author"), nullable=False),
        sa.Column("price", sa.Numeric(10, 2), nullable=True),
        sa.UniqueConstraint("title", name="uq_book_title"),
    )


def downgrade() -> None:
    op.drop_table("book")
    op.drop_table("author")
