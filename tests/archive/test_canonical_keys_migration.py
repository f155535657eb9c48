"""Migration 0007: every stored key recomputed over the canonical form, and back.

A database written at revision 0006 (keys over ``ast.unparse``) is upgraded on SQLite and
PostgreSQL: its candidates, the LLM requests that name them and the credits a run's LLM state
owes them carry the new keys, the store finds the old candidates again (no second row, no second
evaluation), and the downgrade gives back the old keys exactly.
"""

from __future__ import annotations

import ast
import hashlib
import json
from pathlib import Path

import sqlalchemy as sa
from alembic import command

from archive import db, repository
from archive import models as m
from archive.run_store import RunStore
from evolution.candidate import CandidateSpec
from evolution.canonical import canonical_form

ROOT = Path(__file__).resolve().parents[2]
KERNEL = (ROOT / "examples" / "softmax" / "triton_softmax.py").read_text()
SPECS = [
    CandidateSpec(KERNEL, {"BLOCK": 256, "num_warps": 4}, "seed", (), "seed"),
    CandidateSpec(KERNEL.replace("BLOCK", "BLK") + "# tuned\n", {"BLK": 512}, "llm:m/mutate", (1,)),
    CandidateSpec("def broken(:\n", {}, "llm:m/repair", (2,)),
]
NOBODY = "f" * 64  # a key that names no stored candidate: left as it is


def _old_keys(spec: CandidateSpec) -> tuple[str, str]:
    """``(key_sha256, source_sha256)`` as revisions 0001-0006 wrote them."""
    try:
        form = ast.unparse(ast.parse(spec.source))
    except SyntaxError:
        form = spec.source
    digest = hashlib.sha256(form.encode())
    key = digest.copy()
    key.update(b"\0" + json.dumps(spec.params, sort_keys=True, default=str).encode())
    return key.hexdigest(), digest.hexdigest()


def _owed(key: str) -> list:
    return [key, ["m", "mutate", "s0"], 1.5, 120]


def _write_at_0006(engine: sa.Engine) -> tuple[int, list[int]]:
    sessions = db.session_factory(engine)
    with sessions() as s:
        task = repository.add_task(s, "softmax", "x = 1\n", {}, {})
        run = repository.create_run(
            s, task.id, budget=10, seed=0, device="cpu", objective_label="cpu-time"
        )
        rows = []
        for spec in SPECS:
            key, source_sha = _old_keys(spec)
            rows.append(
                m.Candidate(
                    task_id=task.id,
                    run_id=run.id,
                    source=spec.source,
                    params=spec.params,
                    key_sha256=key,
                    source_sha256=source_sha,
                    emitter=spec.emitter,
                    parent_ids=list(spec.parent_ids),
                )
            )
        s.add_all(rows)
        for i, key in enumerate([_old_keys(SPECS[1])[0], NOBODY, None]):
            s.add(
                m.LlmRequestRow(
                    run_id=run.id,
                    request_id=f"llm-{i}",
                    model="m",
                    operator="mutate",
                    strategy="s0",
                    max_tokens=100,
                    reserved_tokens=100,
                    status="replied" if key else "failed",
                    candidate_key=key,
                )
            )
        run.llm_state = {
            "version": 3,
            "owed": [_owed(_old_keys(SPECS[1])[0]), _owed(NOBODY)],
            "ids": 3,
        }
        repository.set_run_status(s, run.id, "running")
        s.commit()
        return run.id, [r.id for r in rows]


def _stored(engine: sa.Engine, run_id: int) -> tuple[list, list, dict]:
    with db.session_factory(engine)() as s:
        candidates = [
            (c.key_sha256, c.source_sha256)
            for c in s.scalars(sa.select(m.Candidate).order_by(m.Candidate.id))
        ]
        requests = list(
            s.scalars(sa.select(m.LlmRequestRow.candidate_key).order_by(m.LlmRequestRow.id))
        )
        state = s.get(m.Run, run_id).llm_state
    return candidates, requests, state


def test_upgrade_rekeys_what_names_a_candidate_and_the_downgrade_restores_it(db_url) -> None:
    engine = db.make_engine(db_url)
    try:
        db.upgrade(engine, "0006")
        run_id, ids = _write_at_0006(engine)
        before = _stored(engine, run_id)

        db.upgrade(engine)
        candidates, requests, state = _stored(engine, run_id)
        assert candidates == [
            (spec.key, hashlib.sha256(canonical_form(spec.source).encode()).hexdigest())
            for spec in SPECS
        ]
        assert all(new != old for new, old in zip(candidates, before[0], strict=True))
        assert requests == [SPECS[1].key, NOBODY, None]
        assert state == {"version": 3, "owed": [_owed(SPECS[1].key), _owed(NOBODY)], "ids": 3}

        # The store finds every old candidate again under its new key: no second row.
        store = RunStore(db.session_factory(engine), run_id)
        found = [store.propose(spec) for spec in SPECS]
        assert [(p.candidate_id, p.duplicate) for p in found] == [(i, True) for i in ids]
        with db.session_factory(engine)() as s:
            assert s.scalar(sa.select(sa.func.count()).select_from(m.Candidate)) == len(SPECS)

        command.downgrade(db.alembic_config(engine), "0006")
        assert _stored(engine, run_id) == before
    finally:
        engine.dispose()
