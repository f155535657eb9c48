"""LLM-driven search: every request and reply (``llm_requests``) and the emitter's state.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copies of the model types (a migration must not change when the models do).
JSON_DOC = sa.JSON(none_as_null=True).with_variant(
    postgresql.JSONB(none_as_null=True, astext_type=sa.Text()), "postgresql"
)
TIMESTAMP = sa.DateTime(timezone=True)


def upgrade() -> None:
    """Add ``runs.llm_state`` (NULL for runs without an LLM emitter); create ``llm_requests``."""
    op.add_column("runs", sa.Column("llm_state", JSON_DOC, nullable=True))
    op.create_table(
        "llm_requests",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("request_id", sa.String(length=32), nullable=False),
        sa.Column("model", sa.Text(), nullable=False),
        sa.Column("operator", sa.String(length=16), nullable=False),
        sa.Column("strategy", sa.String(length=64), nullable=False),
        sa.Column("parent_ids", JSON_DOC, nullable=False),
        sa.Column("messages", JSON_DOC, nullable=False),
        sa.Column("max_tokens", sa.Integer(), nullable=False),
        sa.Column("reserved_tokens", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.String(length=32), nullable=True),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("response", sa.Text(), nullable=True),
        sa.Column("prompt_tokens", sa.Integer(), nullable=False),
        sa.Column("completion_tokens", sa.Integer(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("latency_s", sa.Double(), nullable=True),
        sa.Column("cost", sa.Double(), nullable=True),
        sa.Column("candidate_key", sa.String(length=64), nullable=True),
        sa.Column("strategy_id", sa.String(length=64), nullable=True),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("replied_at", TIMESTAMP, nullable=True),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], name="fk_llm_requests_run_id_runs"),
        sa.PrimaryKeyConstraint("id", name="pk_llm_requests"),
        sa.UniqueConstraint("run_id", "request_id", name="uq_llm_requests_run_id_request_id"),
    )
    op.create_index("ix_llm_requests_run_id", "llm_requests", ["run_id"])


def downgrade() -> None:
    """Drop ``llm_requests`` and ``runs.llm_state``."""
    op.drop_index("ix_llm_requests_run_id", table_name="llm_requests")
    op.drop_table("llm_requests")
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("llm_state")
