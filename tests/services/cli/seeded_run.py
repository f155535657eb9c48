"""A finished run written straight into a data directory's database (no search, no evaluator),
for the tests of the commands that read runs back."""

from __future__ import annotations

from pathlib import Path

from archive import db, repository
from archive.run_store import RunStore
from evolution.candidate import CandidateSpec
from evolution.ports import JobResult, RunStats

TASK_SOURCE = (Path(__file__).parents[2] / "data" / "softmax_task.py").read_text()
SEED_SOURCE = """\
import torch
import torch.nn as nn

SEARCH_SPACE = {"BLOCK": [128, 256]}


class ModelNew(nn.Module):
    def forward(self, x):
        return torch.softmax(x, dim=-1)
"""
OK_RESULT = {
    "verdict": "OK",
    "correct": True,
    "speedup_vs_eager": 2.0,
    "speedup_vs_compile": None,
    "timing": {"device": "cpu", "candidate": {"median_ms": 1.0}, "eager": {"median_ms": 2.0}},
    "features": {},
    "messages": [],
    "device": "cpu",
    "hardware": {"name": "cpu"},
    "params": {"BLOCK": 256},
}
WRONG_RESULT = {"verdict": "INCORRECT", "correct": False, "messages": ["max abs error 3.0"]}


def seed_run(data_dir: Path, task_name: str = "softmax") -> tuple[int, int, int]:
    """A run in ``data_dir``'s SQLite database with an elite (OK, BLOCK=256) and an INCORRECT
    candidate (BLOCK=128). Returns ``(run_id, ok_id, incorrect_id)``."""
    engine = db.make_engine(db.default_url(data_dir))
    db.ensure_schema(engine)
    sessions = db.session_factory(engine)
    try:
        with sessions() as s:
            task = repository.add_task(s, task_name, TASK_SOURCE, {"dtype": "torch.float32"}, {})
            run = repository.create_run(
                s,
                task.id,
                budget=10,
                seed=1,
                device="cpu",
                objective_label="cpu-time",
                config={"dims": "block_size,num_warps_param"},
            )
            s.commit()
            run_id = run.id
        store = RunStore(sessions, run_id)
        good = store.propose(CandidateSpec(SEED_SOURCE, {"BLOCK": 256}, "params", (), "seed"))
        bad = store.propose(
            CandidateSpec(SEED_SOURCE, {"BLOCK": 128}, "params", (good.candidate_id,))
        )
        store.ingest(JobResult("job-1", good.candidate_id, OK_RESULT))
        store.ingest(JobResult("job-2", bad.candidate_id, WRONG_RESULT))
        store.elite_changed(3, good.candidate_id, 0.69, [8.0, 2.0], None)
        store.record_stats(RunStats(2, 1, 0.05, 1.69, 0.69, good.candidate_id, {"OK": 1}))
    finally:
        engine.dispose()
    return run_id, good.candidate_id, bad.candidate_id
