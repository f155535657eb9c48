"""Why a run's search stopped (``runs.stop_reason``).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Add ``runs.stop_reason`` (NULL until a search of the run has stopped)."""
    op.add_column("runs", sa.Column("stop_reason", sa.String(length=32), nullable=True))


def downgrade() -> None:
    """Drop ``runs.stop_reason``."""
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("stop_reason")
