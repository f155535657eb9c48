"""How much controller time the search loop spends per evaluation.

Feeds :class:`evolution.loop.SearchLoop` instant fake results (a dispatcher that completes every
job at once) so that all the time measured is the controller's: emitters, archive, store and
loop bookkeeping. The fake evaluator's own time is measured and subtracted.

Runs with the in-memory store and, with ``--sqlite`` (when ``archive`` is importable), with the
real SQLite :class:`archive.run_store.RunStore` in a temporary file.

Reports evaluations per second, controller milliseconds per evaluation (split into store and
the rest) and the overhead as a percentage of a nominal evaluation time (``--nominal-eval-s``,
1.0 s by default: a GPU evaluation). Target: < 5%.

Usage::

    .venv/bin/python bench/search_overhead_bench.py --evals 2000 --sqlite
"""

from __future__ import annotations

import argparse
import collections
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from evolution.candidate import CandidateSpec  # noqa: E402
from evolution.descriptors import parse_dims  # noqa: E402
from evolution.emitters import ParamEmitter, SeedEmitter  # noqa: E402
from evolution.fakes import FakeDispatcher, MemoryStore, bowl_ms, fake_result  # noqa: E402
from evolution.grid import MapArchive  # noqa: E402
from evolution.loop import SearchLoop  # noqa: E402

SOURCE = "import triton\n\nclass ModelNew:\n    pass\n"


class TimedStore:
    """Forwards every Store call and adds up the time spent in each method (seconds)."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.seconds: collections.Counter[str] = collections.Counter()
        self.calls: collections.Counter[str] = collections.Counter()

    def __getattr__(self, name: str) -> Any:
        target = getattr(self._inner, name)
        if not callable(target):
            return target

        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return target(*args, **kwargs)
            finally:
                self.seconds[name] += time.perf_counter() - t0
                self.calls[name] += 1

        return timed


def space_for(evals: int) -> dict[str, list[int]]:
    """A search space with at least ``4 * evals`` points, so the emitter is never exhausted."""
    space = {
        "BLOCK": [2**k for k in range(5, 14)],
        "num_warps": [1, 2, 4, 8, 16, 32],
        "num_stages": [1, 2, 3, 4, 5],
    }
    while math.prod(len(v) for v in space.values()) < 4 * evals:
        space[f"UNROLL_{len(space)}"] = list(range(8))
    return space


def run_once(
    store: Any, evals: int, capacity: int, stats_every: int, stats_interval_s: float = 0.5
) -> dict[str, float]:
    """One benchmark run; returns timings in seconds and counts."""
    archive = MapArchive(parse_dims("occupancy,kernel_count"))
    seeds = SeedEmitter([CandidateSpec(f"MS = {ms}\n", label=f"seed{ms}") for ms in (0.5, 0.7)])
    family = ParamEmitter(SOURCE, space_for(evals), archive.dims, "family", seed=0)
    eval_s = 0.0

    def evaluate(job: Any) -> dict[str, Any]:
        nonlocal eval_s
        t0 = time.perf_counter()
        result = fake_result(job.params, bowl_ms(job.params))
        eval_s += time.perf_counter() - t0
        return result

    timed = TimedStore(store)
    dispatcher = FakeDispatcher(evaluate, capacity)
    loop = SearchLoop(
        archive,
        [seeds, family],
        dispatcher,
        timed,
        evals,
        stats_every=stats_every,
        stats_interval_s=stats_interval_s,
    )
    t0 = time.perf_counter()
    summary = loop.run()
    wall = time.perf_counter() - t0
    return {
        "evaluations": summary.evaluations,
        "wall_s": wall,
        "eval_s": eval_s,
        "store_s": sum(timed.seconds.values()),
        "elites": summary.elites,
        "store_breakdown": dict(timed.seconds),
    }


def sqlite_store(directory: Path, budget: int) -> Any:
    """A RunStore on a fresh SQLite file; raises ImportError without ``archive``."""
    from archive import db, repository
    from archive.run_store import RunStore

    engine = db.make_engine(f"sqlite:///{directory / 'bench.db'}")
    db.ensure_schema(engine)
    factory = db.session_factory(engine)
    with factory() as session:
        task = repository.add_task(session, "bench", "# bench task\n", {}, {})
        run = repository.create_run(
            session, task.id, budget=budget, seed=0, device="cuda", objective_label="gpu-speedup"
        )
        session.commit()
        run_id = run.id
    return RunStore(factory, run_id)


def report(name: str, r: dict[str, Any], nominal_s: float) -> None:
    """Print one result block."""
    n = max(r["evaluations"], 1)
    controller = r["wall_s"] - r["eval_s"]
    per_eval = controller / n
    print(f"[{name}] {r['evaluations']} evaluations, {r['elites']} elites")
    print(f"  throughput          {n / r['wall_s']:10.1f} evaluations/s (fake evaluator included)")
    print(f"  controller/eval     {1e3 * per_eval:10.3f} ms")
    print(f"    of which store    {1e3 * r['store_s'] / n:10.3f} ms")
    print(f"    loop+archive+emit {1e3 * (controller - r['store_s']) / n:10.3f} ms")
    print(
        f"  overhead            {100 * per_eval / nominal_s:10.3f} % of a {nominal_s:g} s"
        f" evaluation (target < 5%)"
    )
    print(
        f"  controller saturates at {nominal_s / per_eval:,.0f} workers finishing one"
        f" {nominal_s:g} s evaluation each"
    )
    by_call = sorted(r["store_breakdown"].items(), key=lambda kv: -kv[1])
    parts = ", ".join(f"{k} {1e3 * v / n:.3f}" for k, v in by_call)
    print(f"  store ms/eval by call: {parts}")


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--evals", type=int, default=2000, help="evaluations per run (default 2000)")
    p.add_argument("--capacity", type=int, default=8, help="jobs in flight (default 8)")
    p.add_argument("--stats-every", type=int, default=1, help="progress point period (default 1)")
    p.add_argument(
        "--stats-interval-s",
        type=float,
        default=0.5,
        help="at most one progress point per this many seconds (default 0.5, the loop's)",
    )
    p.add_argument("--nominal-eval-s", type=float, default=1.0, help="nominal evaluation time")
    p.add_argument("--sqlite", action="store_true", help="also run with the SQLite RunStore")
    args = p.parse_args(argv)

    r = run_once(MemoryStore(), args.evals, args.capacity, args.stats_every, args.stats_interval_s)
    report("memory store", r, args.nominal_eval_s)
    if args.sqlite:
        with tempfile.TemporaryDirectory() as tmp:
            try:
                store = sqlite_store(Path(tmp), args.evals)
            except ImportError as e:
                print(f"[sqlite store] skipped: archive is not importable ({e})")
                return 0
            r = run_once(store, args.evals, args.capacity, args.stats_every, args.stats_interval_s)
            report("sqlite RunStore", r, args.nominal_eval_s)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
