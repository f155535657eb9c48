"""Candidate keys over the canonical form of the source (``evolution.canonical``).

The duplicate key of a candidate was the sha256 of ``ast.unparse`` of its tree; it is now the
sha256 of the tree written out as tokens (:func:`evolution.canonical.canonical_form`, about a
quarter of the cost). Every stored key is recomputed from the stored source and parameters:
``candidates.key_sha256`` and ``source_sha256``, and where they name a candidate,
``llm_requests.candidate_key`` and the credits owed in ``runs.llm_state`` (without that a
resumed LLM run would neither find its children nor credit them). The new form tells apart
at least what the old one did, so no two candidates of a task come to share a key.

It reads every candidate once (a few milliseconds each: about two minutes per 100,000 on one
core). Stop every controller before upgrading: one still running the old code would key new
candidates the old way.

The upgrade imports the form from ``evolution.canonical``: a later change of that form needs a
migration of its own (tests/evolution/test_canonical.py pins a key for that reason). The
downgrade writes the old form, a frozen copy of it below.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-04
"""

import ast
import hashlib
import json
import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

LOG = logging.getLogger("alembic.runtime.migration")
BATCH = 1000
JSON_DOC = sa.JSON(none_as_null=True).with_variant(
    postgresql.JSONB(none_as_null=True, astext_type=sa.Text()), "postgresql"
)
CANDIDATES = sa.table(
    "candidates",
    sa.column("id", sa.Integer),
    sa.column("source", sa.Text),
    sa.column("params", JSON_DOC),
    sa.column("key_sha256", sa.String),
    sa.column("source_sha256", sa.String),
)
REQUESTS = sa.table(
    "llm_requests", sa.column("id", sa.Integer), sa.column("candidate_key", sa.String)
)
RUNS = sa.table("runs", sa.column("id", sa.Integer), sa.column("llm_state", JSON_DOC))


def _unparsed_form(source: str) -> str:
    """The form of revisions 0001-0006: ``ast.unparse`` of the tree, the text if none."""
    try:
        return ast.unparse(ast.parse(source))
    except (SyntaxError, ValueError, RecursionError):
        return source


def _canonical_form(source: str) -> str:
    from evolution.canonical import canonical_form

    return canonical_form(source)


def _keys(form: Callable[[str], str], source: str, params: Any) -> tuple[str, str]:
    """``(key_sha256, source_sha256)`` as ``evolution.candidate.candidate_key`` makes them."""
    digest = hashlib.sha256(form(source).encode())
    key = digest.copy()
    key.update(b"\0" + json.dumps(params or {}, sort_keys=True, default=str).encode())
    return key.hexdigest(), digest.hexdigest()


def _batches(conn: sa.Connection) -> Iterator[list[Any]]:
    last = 0
    while True:
        rows = conn.execute(
            sa.select(
                CANDIDATES.c.id, CANDIDATES.c.source, CANDIDATES.c.params, CANDIDATES.c.key_sha256
            )
            .where(CANDIDATES.c.id > last)
            .order_by(CANDIDATES.c.id)
            .limit(BATCH)
        ).all()
        if not rows:
            return
        yield rows
        last = rows[-1].id


def _rekey(form: Callable[[str], str]) -> None:
    conn = op.get_bind()
    states = {
        row.id: row.llm_state
        for row in conn.execute(sa.select(RUNS.c.id, RUNS.c.llm_state)).all()
        if isinstance(row.llm_state, dict) and row.llm_state.get("owed")
    }
    named = set(
        conn.scalars(
            sa.select(REQUESTS.c.candidate_key).where(REQUESTS.c.candidate_key.is_not(None))
        ).all()
    )
    for state in states.values():
        named.update(str(entry[0]) for entry in state["owed"])
    renamed: dict[str, str] = {}
    done = 0
    for rows in _batches(conn):
        updates = []
        for row in rows:
            key, source_sha = _keys(form, row.source, row.params)
            updates.append({"row_id": row.id, "key": key, "source_sha": source_sha})
            if row.key_sha256 in named:
                renamed[row.key_sha256] = key
        conn.execute(
            CANDIDATES.update()
            .where(CANDIDATES.c.id == sa.bindparam("row_id"))
            .values(key_sha256=sa.bindparam("key"), source_sha256=sa.bindparam("source_sha")),
            updates,
        )
        done += len(rows)
        if done % (10 * BATCH) == 0:
            LOG.info("0007: %d candidates rekeyed", done)
    requests = [
        {"row_id": row.id, "key": renamed[row.candidate_key]}
        for row in conn.execute(
            sa.select(REQUESTS.c.id, REQUESTS.c.candidate_key).where(
                REQUESTS.c.candidate_key.is_not(None)
            )
        ).all()
        if row.candidate_key in renamed
    ]
    if requests:
        conn.execute(
            REQUESTS.update()
            .where(REQUESTS.c.id == sa.bindparam("row_id"))
            .values(candidate_key=sa.bindparam("key")),
            requests,
        )
    for run_id, state in states.items():
        owed = [[renamed.get(str(e[0]), e[0]), *e[1:]] for e in state["owed"]]
        conn.execute(
            RUNS.update().where(RUNS.c.id == run_id).values(llm_state={**state, "owed": owed})
        )
    LOG.info(
        "0007: %d candidates rekeyed, %d LLM requests and %d runs' LLM states renamed",
        done,
        len(requests),
        len(states),
    )


def upgrade() -> None:
    """Recompute every stored key over the canonical form (see the module notes)."""
    _rekey(_canonical_form)


def downgrade() -> None:
    """Recompute every stored key over the old form (``ast.unparse``)."""
    _rekey(_unparsed_form)
