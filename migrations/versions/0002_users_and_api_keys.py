"""Users and API keys; tasks and runs get an owner.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TIMESTAMP = sa.DateTime(timezone=True)
OWNED = ("tasks", "runs")


def _add_owner(table: str) -> None:
    fk = f"fk_{table}_owner_id_users"
    if op.get_bind().dialect.name == "sqlite":
        # SQLite cannot add a foreign key to an existing table except inline in ADD COLUMN;
        # batch mode would copy and drop the table instead, which foreign_keys=ON refuses
        # while other tables (runs -> tasks) reference its rows.
        op.execute(
            f"ALTER TABLE {table} ADD COLUMN owner_id INTEGER CONSTRAINT {fk} REFERENCES users (id)"
        )
    else:
        op.add_column(table, sa.Column("owner_id", sa.Integer(), nullable=True))
        op.create_foreign_key(fk, table, "users", ["owner_id"], ["id"])
    op.create_index(f"ix_{table}_owner_id", table, ["owner_id"])


def upgrade() -> None:
    """Create ``users`` and ``api_keys``; add the nullable ``owner_id`` to tasks and runs."""
    op.create_table(
        "users",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.CheckConstraint("role IN ('admin', 'user', 'worker')", name="ck_users_role"),
        sa.PrimaryKeyConstraint("id", name="pk_users"),
    )
    op.create_table(
        "api_keys",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("prefix", sa.String(length=8), nullable=False),
        sa.Column("key_hash", sa.String(length=64), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("revoked_at", TIMESTAMP, nullable=True),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name="fk_api_keys_user_id_users"),
        sa.PrimaryKeyConstraint("id", name="pk_api_keys"),
        sa.UniqueConstraint("key_hash", name="uq_api_keys_key_hash"),
    )
    op.create_index("ix_api_keys_prefix", "api_keys", ["prefix"])
    op.create_index("ix_api_keys_user_id", "api_keys", ["user_id"])
    for table in OWNED:
        _add_owner(table)


def downgrade() -> None:
    """Drop the owners, then the keys and users (PostgreSQL only).

    SQLite cannot drop a column that is in a foreign key, and the table copy that would do it
    is refused while foreign keys are enforced and other tables reference the copied rows.
    """
    if op.get_bind().dialect.name == "sqlite":
        raise NotImplementedError(
            "an SQLite database cannot be downgraded below revision 0002 (owner_id is in a"
            " foreign key): keep the newer kernelmap, or export the runs and start afresh"
        )
    for table in OWNED:
        op.drop_index(f"ix_{table}_owner_id", table_name=table)
        op.drop_constraint(f"fk_{table}_owner_id_users", table, type_="foreignkey")
        op.drop_column(table, "owner_id")
    op.drop_index("ix_api_keys_user_id", table_name="api_keys")
    op.drop_index("ix_api_keys_prefix", table_name="api_keys")
    op.drop_table("api_keys")
    op.drop_table("users")
