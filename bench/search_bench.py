"""Search benchmark: kernelmap's template search against eager and torch.compile, per task.

For each task file, runs ``kernelmap run`` (templates on, embedded SQLite archive, one local
worker on the GPU) with a fixed budget, then prints per task: the eager, torch.compile and
best-found medians (ms, from the best candidate's evaluation, all timed by the same code in
the same evaluation), the speed-of-light floor, evaluations used, GPU minutes, and the winning
template and schedule. The last line gives the geometric means of the speedup over eager, over
torch.compile, and of floor/best.

Targets (issue 4; KernelBench level-1 shapes, fp32, budget 300, no LLM): best >= torch.compile
on every task; geometric-mean speedup over torch.compile >= 1.3; floor/best >= 0.85 on
memory-bound tasks; <= 10 GPU minutes per task.

Run from the repository root on a GPU host::

    python bench/search_bench.py bench/tasks/softmax.py bench/tasks/layernorm.py --budget 300

The search core needs pure-Python packages a bare GPU host lacks (ribs, sqlalchemy, alembic,
pydantic-settings, ...): ``bench/wheels.txt`` lists them with the command that downloads them;
install them with ``pip install --no-index --no-deps --target /tmp/site .whl/*.whl`` and
``export PYTHONPATH=/tmp/site`` first.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _median(stats: dict | None) -> float | None:
    return None if not stats else stats.get("median_ms")


def bench_task(task: Path, budget: int, device: str, workers: int, data_dir: Path) -> dict:
    """Run one search and read back what it found."""
    from archive import repository
    from services.config import Settings
    from services.runs.search import RunOptions, open_database, run_search

    # The task files read their size knobs from the environment: passed to the sandbox.
    settings = Settings(
        data_dir=data_dir,
        device=device,
        pass_env=["KERNELMAP_BENCH_SCALE", "KERNELMAP_BENCH_BATCH_SCALE"],
    )
    t0 = time.monotonic()
    summary = run_search(
        settings, RunOptions(task=task, budget=budget, device=device, workers=workers)
    )
    wall = time.monotonic() - t0
    engine, sessions = open_database(settings)
    row: dict = {
        "task": str(task),
        "run_id": summary["run_id"],
        "evaluations": summary["evaluations"],
        "gpu_min": wall * workers / 60.0,
        "stopped": summary.get("stopped_reason"),
    }
    with sessions() as s:
        best = repository.best_elite(s, summary["run_id"])
        if best is not None:
            cand = repository.get_candidate(s, best.candidate_id)
            ev = repository.latest_evaluation(s, best.candidate_id)
            timing = (ev.timing or {}) if ev else {}
            row.update(
                best_ms=_median(timing.get("candidate")),
                eager_ms=_median(timing.get("eager")),
                compile_ms=_median(timing.get("compile")),
                floor_ms=timing.get("floor_ms"),
                floor_basis=timing.get("floor_basis"),
                winner=cand.label,
                params=cand.params,
                verdict=ev.verdict if ev else None,
            )
    engine.dispose()
    return row


def _fmt(x: float | None, spec: str = ".4g") -> str:
    return "-" if x is None else format(x, spec)


def _geomean(xs: list[float]) -> float | None:
    xs = [x for x in xs if x and x > 0]
    return math.exp(sum(math.log(x) for x in xs) / len(xs)) if xs else None


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("tasks", nargs="+", type=Path)
    p.add_argument("--budget", type=int, default=300)
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--data-dir", type=Path, default=None, help="default: a temporary directory")
    p.add_argument("--json", type=Path, default=None, help="write the rows to this file")
    a = p.parse_args()
    import torch

    if a.device == "cuda" and not torch.cuda.is_available():
        print(
            "search_bench: no CUDA GPU visible (use --device cpu for a smoke run)", file=sys.stderr
        )
        return 2
    data_dir = a.data_dir or Path(tempfile.mkdtemp(prefix="kernelmap-search-bench-"))
    rows = []
    for task in a.tasks:
        print(f"search_bench: {task} (budget {a.budget}) ...", file=sys.stderr, flush=True)
        rows.append(bench_task(task, a.budget, a.device, a.workers, data_dir))
    cols = [
        "task",
        "eager_ms",
        "compile_ms",
        "best_ms",
        "floor_ms",
        "evals",
        "gpu_min",
        "winner",
        "params",
    ]
    print("  ".join(f"{c:>12}" if c not in ("task", "winner", "params") else c for c in cols))
    for r in rows:
        print(
            "  ".join(
                [
                    Path(r["task"]).stem,
                    _fmt(r.get("eager_ms")),
                    _fmt(r.get("compile_ms")),
                    _fmt(r.get("best_ms")),
                    _fmt(r.get("floor_ms")),
                    str(r["evaluations"]),
                    _fmt(r["gpu_min"], ".2f"),
                    str(r.get("winner")),
                    json.dumps(r.get("params")),
                ]
            )
        )
    over_eager = _geomean(
        [r["eager_ms"] / r["best_ms"] for r in rows if r.get("eager_ms") and r.get("best_ms")]
    )
    over_compile = _geomean(
        [r["compile_ms"] / r["best_ms"] for r in rows if r.get("compile_ms") and r.get("best_ms")]
    )
    floor = _geomean(
        [r["floor_ms"] / r["best_ms"] for r in rows if r.get("floor_ms") and r.get("best_ms")]
    )
    print(
        f"geomean speedup vs eager {_fmt(over_eager)}  vs torch.compile {_fmt(over_compile)}"
        f"  floor/best {_fmt(floor)}"
    )
    if a.json:
        a.json.write_text(json.dumps(rows, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
