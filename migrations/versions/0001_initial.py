"""Initial schema: tasks, runs, candidates, proposals, jobs, evaluations, elites, run stats.

Revision ID: 0001
Revises:
Create Date: 2026-11-27
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copies of the model types (a migration must not change when the models do).
JSON_DOC = sa.JSON(none_as_null=True).with_variant(
    postgresql.JSONB(none_as_null=True, astext_type=sa.Text()), "postgresql"
)
TIMESTAMP = sa.DateTime(timezone=True)


def _id() -> sa.Column:
    return sa.Column("id", sa.Integer(), nullable=False)


def _created_at() -> sa.Column:
    return sa.Column("created_at", TIMESTAMP, nullable=False)


def _fk(table: str, column: str, target: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        [column], [f"{target}.id"], name=op.f(f"fk_{table}_{column}_{target}")
    )


def _index(table: str, *columns: str) -> None:
    op.create_index(op.f(f"ix_{table}_{'_'.join(columns)}"), table, list(columns))


def upgrade() -> None:
    """Create every table."""
    op.create_table(
        "tasks",
        _id(),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("source_sha256", sa.String(length=64), nullable=False),
        sa.Column("meta", JSON_DOC, nullable=False),
        sa.Column("validation", JSON_DOC, nullable=False),
        _created_at(),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tasks")),
    )
    _index("tasks", "source_sha256")

    op.create_table(
        "runs",
        _id(),
        sa.Column("task_id", sa.Integer(), nullable=False),
        sa.Column("config", JSON_DOC, nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("budget", sa.Integer(), nullable=False),
        sa.Column("seed", sa.BigInteger(), nullable=False),
        sa.Column("device", sa.String(length=64), nullable=False),
        sa.Column("objective_label", sa.String(length=32), nullable=False),
        _created_at(),
        sa.Column("started_at", TIMESTAMP, nullable=True),
        sa.Column("finished_at", TIMESTAMP, nullable=True),
        sa.Column("archive_state", JSON_DOC, nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        _fk("runs", "task_id", "tasks"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_runs")),
    )
    _index("runs", "status")
    _index("runs", "task_id")

    op.create_table(
        "candidates",
        _id(),
        sa.Column("task_id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("params", JSON_DOC, nullable=False),
        sa.Column("key_sha256", sa.String(length=64), nullable=False),
        sa.Column("source_sha256", sa.String(length=64), nullable=False),
        sa.Column("emitter", sa.String(length=64), nullable=False),
        sa.Column("parent_ids", JSON_DOC, nullable=False),
        sa.Column("label", sa.Text(), nullable=False),
        sa.Column("genome", JSON_DOC, nullable=True),
        _created_at(),
        _fk("candidates", "run_id", "runs"),
        _fk("candidates", "task_id", "tasks"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_candidates")),
        sa.UniqueConstraint("task_id", "key_sha256", name=op.f("uq_candidates_task_id_key_sha256")),
    )
    _index("candidates", "run_id")
    _index("candidates", "source_sha256")

    op.create_table(
        "proposals",
        _id(),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("candidate_id", sa.Integer(), nullable=False),
        sa.Column("emitter", sa.String(length=64), nullable=False),
        sa.Column("duplicate", sa.Boolean(), nullable=False),
        _created_at(),
        _fk("proposals", "candidate_id", "candidates"),
        _fk("proposals", "run_id", "runs"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_proposals")),
    )
    _index("proposals", "candidate_id")
    _index("proposals", "run_id")

    op.create_table(
        "jobs",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("candidate_id", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("worker", sa.Text(), nullable=True),
        _created_at(),
        sa.Column("finished_at", TIMESTAMP, nullable=True),
        _fk("jobs", "candidate_id", "candidates"),
        _fk("jobs", "run_id", "runs"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_jobs")),
    )
    _index("jobs", "candidate_id")
    _index("jobs", "run_id")

    op.create_table(
        "evaluations",
        _id(),
        sa.Column("candidate_id", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.String(length=64), nullable=True),
        sa.Column("verdict", sa.String(length=32), nullable=False),
        sa.Column("correct", sa.Boolean(), nullable=False),
        sa.Column("objective", sa.Double(), nullable=True),
        sa.Column("objective_label", sa.String(length=32), nullable=True),
        sa.Column("speedup_vs_eager", sa.Double(), nullable=True),
        sa.Column("speedup_vs_compile", sa.Double(), nullable=True),
        sa.Column("messages", JSON_DOC, nullable=False),
        sa.Column("timing", JSON_DOC, nullable=True),
        sa.Column("features", JSON_DOC, nullable=False),
        sa.Column("hardware", JSON_DOC, nullable=False),
        sa.Column("params", JSON_DOC, nullable=False),
        sa.Column("worker", sa.Text(), nullable=True),
        sa.Column("duration_s", sa.Double(), nullable=True),
        sa.Column("result", JSON_DOC, nullable=False),
        _created_at(),
        _fk("evaluations", "candidate_id", "candidates"),
        _fk("evaluations", "job_id", "jobs"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_evaluations")),
        sa.UniqueConstraint("job_id", name=op.f("uq_evaluations_job_id")),
    )
    _index("evaluations", "candidate_id")
    _index("evaluations", "verdict")

    op.create_table(
        "elites",
        _id(),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("cell", sa.Integer(), nullable=False),
        sa.Column("candidate_id", sa.Integer(), nullable=False),
        sa.Column("objective", sa.Double(), nullable=False),
        sa.Column("measures", JSON_DOC, nullable=False),
        _created_at(),
        sa.Column("replaced_at", TIMESTAMP, nullable=True),
        _fk("elites", "candidate_id", "candidates"),
        _fk("elites", "run_id", "runs"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_elites")),
    )
    _index("elites", "candidate_id")
    _index("elites", "run_id")
    # At most one current elite per cell of a run.
    current = sa.text("replaced_at IS NULL")
    op.create_index(
        "ix_elites_current_cell",
        "elites",
        ["run_id", "cell"],
        unique=True,
        sqlite_where=current,
        postgresql_where=current,
    )

    op.create_table(
        "run_stats",
        _id(),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("evaluations", sa.Integer(), nullable=False),
        sa.Column("elites", sa.Integer(), nullable=False),
        sa.Column("coverage", sa.Double(), nullable=False),
        sa.Column("qd_score", sa.Double(), nullable=False),
        sa.Column("best_objective", sa.Double(), nullable=True),
        sa.Column("best_candidate_id", sa.Integer(), nullable=True),
        sa.Column("verdicts", JSON_DOC, nullable=False),
        _created_at(),
        _fk("run_stats", "best_candidate_id", "candidates"),
        _fk("run_stats", "run_id", "runs"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_run_stats")),
    )
    _index("run_stats", "run_id")


def downgrade() -> None:
    """Drop every table (their indexes go with them)."""
    for table in (
        "run_stats",
        "elites",
        "evaluations",
        "jobs",
        "proposals",
        "candidates",
        "runs",
        "tasks",
    ):
        op.drop_table(table)
