"""Remote workers enrolled over HTTPS and the jobs they claim with leases.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TIMESTAMP = sa.DateTime(timezone=True)
JSON = sa.JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql")


def upgrade() -> None:
    """Create ``workers`` and ``remote_jobs``."""
    op.create_table(
        "workers",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("hardware_class", sa.String(length=64), nullable=False),
        sa.Column("hardware", JSON, nullable=False),
        sa.Column("token_prefix", sa.String(length=8), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("enrolled_by", sa.Integer(), nullable=True),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("last_seen_at", TIMESTAMP, nullable=True),
        sa.Column("revoked_at", TIMESTAMP, nullable=True),
        sa.ForeignKeyConstraint(["enrolled_by"], ["users.id"], name="fk_workers_enrolled_by_users"),
        sa.PrimaryKeyConstraint("id", name="pk_workers"),
        sa.UniqueConstraint("token_hash", name="uq_workers_token_hash"),
    )
    op.create_index("ix_workers_hardware_class", "workers", ["hardware_class"])
    op.create_index("ix_workers_enrolled_by", "workers", ["enrolled_by"])
    op.create_table(
        "remote_jobs",
        sa.Column("job_id", sa.String(length=64), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("hardware_class", sa.String(length=64), nullable=False),
        sa.Column("payload", JSON, nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("worker_id", sa.Integer(), nullable=True),
        sa.Column("lease_expires_at", TIMESTAMP, nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("result", JSON, nullable=True),
        sa.Column("delivered", sa.Boolean(), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("finished_at", TIMESTAMP, nullable=True),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name="fk_remote_jobs_job_id_jobs"),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], name="fk_remote_jobs_run_id_runs"),
        sa.ForeignKeyConstraint(
            ["worker_id"], ["workers.id"], name="fk_remote_jobs_worker_id_workers"
        ),
        sa.PrimaryKeyConstraint("job_id", name="pk_remote_jobs"),
    )
    op.create_index("ix_remote_jobs_run_id", "remote_jobs", ["run_id"])
    op.create_index("ix_remote_jobs_worker_id", "remote_jobs", ["worker_id"])
    op.create_index("ix_remote_jobs_claim", "remote_jobs", ["hardware_class", "status"])


def downgrade() -> None:
    """Drop ``remote_jobs`` and ``workers``."""
    op.drop_table("remote_jobs")
    op.drop_table("workers")
