"""What the loop counts and how it labels its figures: verdicts agree with evaluations across a
resume, and the best elite's figure carries the label of its own evaluation."""

from __future__ import annotations

from evolution.emitters import SeedEmitter
from evolution.fakes import MemoryStore, fake_result
from evolution.ports import OTHER_RUN, JobResult
from tests.evolution.test_loop import Evaluator, make_loop, seed


def test_a_resumed_run_counts_neither_evaluation_nor_verdict_for_another_runs_result():
    class Shared(MemoryStore):
        def evaluated(self):
            rows = super().evaluated()
            return [(c, s, {**r, OTHER_RUN: True}) if c == 1 else (c, s, r) for c, s, r in rows]

    store = Shared()
    for i, spec in enumerate([seed(0.2, tag="theirs"), seed(0.4, tag="ours")], 1):
        cid = store.propose(spec).candidate_id
        store.ingest(JobResult(f"job-{i}", cid, fake_result({}, 0.2 * i, device="cpu")))
    loop, *_ = make_loop([SeedEmitter([])], budget=5, store=store)
    assert loop.resume() == 1
    summary = loop.run()
    assert summary.evaluations == 1
    assert summary.verdicts == {"OK": 1}  # the other run's evaluation is its own, not ours


class Interpreted(Evaluator):
    """CPU results; a source with ``INTERP`` is timed by the Triton interpreter."""

    def __call__(self, job) -> dict:
        result = super().__call__(job)
        if "INTERP" in job.source and result.get("timing"):
            result["timing"]["method"] = "cpu-interpreter"
        return result


def test_the_best_carries_the_label_of_its_own_evaluation():
    fast = seed(0.5, tag="plain")
    slow = seed(5.0, tag="INTERP")  # timed later, by the interpreter, and much slower
    loop, _, dispatcher, _ = make_loop([SeedEmitter([fast, slow])], budget=2, capacity=1)
    dispatcher.evaluate = Interpreted("cpu")
    seen = []
    loop.on_progress = seen.append
    summary = loop.run()
    assert summary.evaluations == 2
    assert summary.best.label == "cpu-time" and summary.objective_label == "cpu-time"
    labels = [p.objective_label for p in seen]
    assert labels and set(labels) == {"cpu-time"}  # never flips to the latest result's label
