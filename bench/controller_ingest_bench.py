"""How many results per second the controller ingests: real SearchLoop, real RunStore.

The search loop (:class:`evolution.loop.SearchLoop`) runs against the database store
(:class:`archive.run_store.RunStore`) on PostgreSQL (or SQLite) with a simulated fleet whose
workers finish every job the moment it is submitted, so all the time measured is the
controller's: proposing, recording jobs, ingesting results, the archive, the emitters.

What is simulated is shaped like production:

- Emitters: a :class:`~evolution.emitters.ParamEmitter` over a real candidate file
  (``examples/softmax/triton_softmax_looped.py``) whose ``SEARCH_SPACE`` is widened with extra
  parameters so that it is never exhausted, plus a seed emitter with the plain seed files.
- Results: dicts shaped like ``EvalResult.to_dict()`` (raw timing samples included, as
  workers send them: 3 x 100 per timed result): mostly ``OK`` with timings that vary with the
  parameters plus noise (so the archive keeps improving and some ties are re-measured), and a
  mix of ``INCORRECT``, ``RUNTIME_ERROR``, ``COMPILE_ERROR`` and ``TIMEOUT``. Making them is
  the workers' work: it is timed apart ("simulated workers") and kept small (the sample noise
  is drawn up front), but it is inside the wall clock the results/s figure uses.
- Delivery: every finished job comes back at the next poll, in random order, and a few are
  delivered twice (Celery delivers at least once).

Each repeat uses a fresh database (created on the server given by ``--db`` and dropped
afterwards) and is checked after the clock stops: one evaluation per job, every job done,
the stored progress curve ends at the budget, and ``SearchLoop.resume`` on a new loop rebuilds
the same archive from the database.

Prints results/s per repeat, the per-result controller time split (store, archive, emitters,
loop, simulated workers), this process's CPU time against time spent waiting (on the database
server, or on a CPU held by other processes: the load average is printed to tell), the median
of the repeats and a PASS/FAIL line against the target (issue 5: >= 500 results/s on
PostgreSQL). A failed database check fails the run whatever its speed.

With ``--controllers N --runs M`` (issue 12: 4 and 16, target >= 2,000 results/s in total),
``N`` controller processes share ``M`` runs by their leases instead (``ingest_controllers.py``);
``--results`` is then per run.

Measured (2026-12-03, 2 CPUs shared with other work, load average 4 to 9; PostgreSQL 15 on the
same host; repeats of the original and the current store interleaved, medians of 3):
``--controllers 4 --runs 16 --results 1000`` 529.9 -> 910.3 results/s in total, CPU per result
(median repeat) controllers 2.01 -> 1.15 ms and postgres 0.88 -> 0.40 ms; ``--controllers 1``
447.5 -> 591.3 results/s, store 1.75 -> 1.12 ms per result. The 4-controller figure is bound by
CPU: a result costs about 1.55 ms of CPU in all (the search and the simulated workers about
0.45 ms, the store's client side and four threads sharing each process's GIL about 0.7 ms, the
server 0.4 to 0.6 ms), so 2 CPUs give at most about 1,300/s, and 2,000/s needs a little over
3 CPUs for the bench alone at this cost.

Usage::

    .venv/bin/python bench/controller_ingest_bench.py                # PostgreSQL, 127.0.0.1
    .venv/bin/python bench/controller_ingest_bench.py --controllers 4 --runs 16 --results 1000
    .venv/bin/python bench/controller_ingest_bench.py --db sqlite    # a temporary SQLite file
    .venv/bin/python bench/controller_ingest_bench.py --db postgresql+psycopg://USER@HOST/DB
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import math
import os
import random
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import sqlalchemy as sa  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402

from archive import db, repository  # noqa: E402
from archive import models as m  # noqa: E402
from archive.run_store import RunStore  # noqa: E402
from archive.testing import temporary_postgres_database  # noqa: E402
from evolution.candidate import CandidateSpec  # noqa: E402
from evolution.descriptors import parse_dims  # noqa: E402
from evolution.emitters import ParamEmitter, SeedEmitter  # noqa: E402
from evolution.fakes import bowl_ms, fake_result  # noqa: E402
from evolution.grid import MapArchive  # noqa: E402
from evolution.loop import SearchLoop  # noqa: E402
from evolution.ports import Job, JobResult  # noqa: E402
from services.runs.seeds import check_seed  # noqa: E402

DEFAULT_DB = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
TARGET = 500.0
DIMS = "occupancy,n_regs"
FAMILY = ROOT / "examples" / "softmax" / "triton_softmax_looped.py"
PLAIN_SEEDS = [ROOT / "examples" / "softmax" / n for n in ("torch_softmax.py", "triton_softmax.py")]
# Share of each verdict among the simulated results; the rest are OK.
FAILURES = {"INCORRECT": 0.08, "RUNTIME_ERROR": 0.04, "COMPILE_ERROR": 0.02, "TIMEOUT": 0.01}
HARDWARE = {
    "name": "NVIDIA H100 80GB HBM3",
    "capability": [9, 0],
    "sms": 132,
    "torch": "2.13.0",
    "triton": "3.6.0",
    "driver": "580.95",
}


# --- simulated fleet ----------------------------------------------------------------------------


class InstantFleet:
    """A :class:`~evolution.ports.Dispatcher` whose workers finish each job when it is submitted.

    ``poll`` returns every finished job in random order; with probability ``redeliver`` per
    result, that result is delivered once more at a later poll (at-least-once delivery).
    ``worker_s`` is the time spent making results (the simulated workers' time, not the
    controller's).
    """

    def __init__(self, capacity: int, seed: int, redeliver: float = 0.01) -> None:
        self._capacity = capacity
        self._rng = random.Random(seed)
        self.redeliver = redeliver
        self._done: list[JobResult] = []
        self._again: list[JobResult] = []
        self.submitted = 0
        self.redelivered = 0
        self.worker_s = 0.0
        # Relative sample noise, drawn up front: making results is the workers' job, not the
        # controller's, and should cost the measured process as little as possible.
        self._noise = [[1 + self._rng.gauss(0, 0.01) for _ in range(100)] for _ in range(64)]

    @property
    def capacity(self) -> int:
        """Jobs in flight at once."""
        return self._capacity

    def submit(self, job: Job) -> None:
        """Evaluate ``job`` at once."""
        t0 = time.perf_counter()
        self._done.append(JobResult(job.job_id, job.candidate_id, self._evaluate(job)))
        self.submitted += 1
        self.worker_s += time.perf_counter() - t0

    def poll(self, timeout_s: float) -> list[JobResult]:
        """Every finished job (and a few earlier ones again), in random order."""
        out = self._done + self._again
        self._done, self._again = [], []
        self._rng.shuffle(out)
        for r in out:
            if self._rng.random() < self.redeliver:
                self._again.append(r)
                self.redelivered += 1
        return out

    def close(self) -> None:
        """Nothing to stop."""

    def _evaluate(self, job: Job) -> dict[str, Any]:
        rng = self._rng
        u = rng.random()
        verdict = "OK"
        for name, share in FAILURES.items():
            if u < share:
                verdict = name
                break
            u -= share
        # The parameters set the time (one optimum); the noise makes ties and improvements.
        ms = bowl_ms(job.params) * math.exp(rng.gauss(0.0, 0.05))
        params = dict(job.params)
        if "BLOCK" not in params:  # a plain seed: its own fixed schedule
            params = {"BLOCK": 1024, "num_warps": 4}
        result = fake_result(params, ms, verdict=verdict, rel_iqr=rng.uniform(0.005, 0.03))
        result["params"] = dict(job.params)
        result["hardware"] = dict(HARDWARE)
        result["worker"] = f"gpu-node-{rng.randrange(4)}/cuda:{rng.randrange(8)}"
        result["stages_s"] = {
            "static_s": 0.002,
            "compile_s": round(rng.uniform(0.1, 2.0), 3),
            "correctness_s": round(rng.uniform(0.05, 0.3), 3),
            "timing_s": round(rng.uniform(0.2, 1.0), 3),
            "total_s": round(rng.uniform(0.4, 3.3), 3),
        }
        if verdict == "OK":
            # Workers send the raw samples too (``EvalResult.to_dict(raw=True)``).
            for name in ("candidate", "eager", "compile"):
                s = result["timing"][name]
                s["n"] = 100
                median = s["median_ms"]
                s["samples_ms"] = [median * x for x in rng.choice(self._noise)]
            # Registers and shared memory grow with the schedule: the map gets many cells.
            block, stages = int(params["BLOCK"]), int(params.get("num_stages", 2))
            unroll = sum(int(v) for k, v in params.items() if k.startswith("UNROLL"))
            f = result["features"]
            f["n_regs"] = min(255, 16 + block // 32 + 12 * stages + 5 * unroll)
            f["shared_bytes"] = block * 4 * stages
            f["num_stages"] = stages
        else:
            result["messages"] = [f"simulated {verdict}: max abs error 3.2e-1 at [17, 4]"]
        return result


# --- timing of the controller's parts -----------------------------------------------------------


class Clock:
    """Seconds spent per part (``store``, ``archive``, ``emitters``) and calls per method."""

    def __init__(self) -> None:
        self.seconds: collections.Counter[str] = collections.Counter()
        self.calls: collections.Counter[str] = collections.Counter()
        self.by_method: collections.Counter[str] = collections.Counter()

    def wrap(self, part: str, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        """``fn`` with its time added to ``part``."""

        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                dt = time.perf_counter() - t0
                self.seconds[part] += dt
                self.by_method[f"{part}.{name}"] += dt
                self.calls[f"{part}.{name}"] += 1

        return timed


class TimedStore:
    """Forwards every Store call to ``inner``, timed under ``store``."""

    def __init__(self, inner: Any, clock: Clock) -> None:
        self._inner = inner
        self._clock = clock

    def __getattr__(self, name: str) -> Any:
        target = getattr(self._inner, name)
        return self._clock.wrap("store", name, target) if callable(target) else target


def time_methods(obj: Any, part: str, names: list[str], clock: Clock) -> None:
    """Time the methods ``names`` of ``obj`` (instance attributes shadow the class's)."""
    for name in names:
        if hasattr(obj, name):
            setattr(obj, name, clock.wrap(part, name, getattr(obj, name)))


# --- one run ------------------------------------------------------------------------------------


def family_space(results: int) -> dict[str, list[Any]]:
    """The family's ``SEARCH_SPACE``, widened to at least ``4 * results`` points."""
    space = dict(check_seed(FAMILY.name, FAMILY.read_text()).space or {})
    space.setdefault("num_stages", [1, 2, 3, 4])
    while math.prod(len(v) for v in space.values()) < 4 * results:
        space[f"UNROLL_{len(space)}"] = list(range(6))
    return space


def build(results: int, seed: int) -> tuple[MapArchive, list[Any]]:
    """A fresh archive and the emitters (plain seeds, then the parameter family)."""
    archive = MapArchive(parse_dims(DIMS), seed=seed)
    plain = [CandidateSpec(p.read_text(), {}, "seed", (), p.name) for p in PLAIN_SEEDS]
    family = ParamEmitter(
        FAMILY.read_text(), family_space(results), archive.dims, FAMILY.name, seed=seed
    )
    return archive, [SeedEmitter(plain), family]


def new_run(sessions: Any, budget: int) -> int:
    """A task and a run on it; returns the run id."""
    with sessions() as s:
        task = repository.add_task(s, "softmax", "# bench task\n", {}, {})
        run = repository.create_run(
            s, task.id, budget=budget, seed=0, device="cuda", objective_label="gpu-speedup"
        )
        repository.set_run_status(s, run.id, "running")
        s.commit()
        return run.id


def run_once(url: str, results: int, capacity: int, seed: int, **loop_kw: Any) -> dict[str, Any]:
    """One run on the empty database ``url``; returns timings and the checks' outcome."""
    engine = db.make_engine(url)
    try:
        db.ensure_schema(engine)
        sessions = db.session_factory(engine)
        run_id = new_run(sessions, results)
        clock = Clock()
        archive, emitters = build(results, seed)
        time_methods(archive, "archive", ["consider", "commit", "resolve_tie", "stats"], clock)
        for e in emitters:
            time_methods(e, "emitters", ["ask", "tell"], clock)
        fleet = InstantFleet(capacity, seed)
        store = TimedStore(RunStore(sessions, run_id), clock)
        loop = SearchLoop(archive, emitters, fleet, store, results, **loop_kw)
        load = os.getloadavg()[0]
        cpu0, t0 = time.process_time(), time.perf_counter()
        summary = loop.run()
        wall = time.perf_counter() - t0
        cpu = time.process_time() - cpu0
        checks = verify(sessions, run_id, summary, archive, fleet, results, seed)
        return {
            "evaluations": summary.evaluations,
            "elites": summary.elites,
            "wall_s": wall,
            "cpu_s": cpu,
            "load": (load, os.getloadavg()[0]),
            "worker_s": fleet.worker_s,
            "seconds": dict(clock.seconds),
            "by_method": dict(clock.by_method),
            "calls": dict(clock.calls),
            "verdicts": summary.verdicts,
            "redelivered": fleet.redelivered,
            "checks": checks,
        }
    finally:
        engine.dispose()


def verify(
    sessions: Any,
    run_id: int,
    summary: Any,
    archive: MapArchive,
    fleet: InstantFleet,
    results: int,
    seed: int,
) -> list[str]:
    """What the database holds after the run, against what the loop did; returns failures."""
    failures = []

    def count(model: type, *where: Any) -> int:
        with sessions() as s:
            q = sa.select(sa.func.count()).select_from(model).where(*where)
            return int(s.scalar(q) or 0)

    jobs = count(m.Job, m.Job.run_id == run_id)
    done = count(m.Job, m.Job.run_id == run_id, m.Job.status == "done")
    evaluations = count(m.Evaluation, m.Evaluation.job_id.is_not(None))
    if summary.evaluations != results:
        failures.append(f"the loop did {summary.evaluations} evaluations, budget {results}")
    if not (jobs == done == evaluations == fleet.submitted == results):
        failures.append(
            f"jobs {jobs}, done {done}, evaluations {evaluations}, submitted {fleet.submitted}:"
            f" expected {results} of each"
        )
    with sessions() as s:
        last = repository.latest_run_stat(s, run_id)
        current = repository.current_elites(s, run_id)
    if last is None or last.evaluations != results or last.elites != summary.elites:
        failures.append("the last progress point is not the run's end")
    stored = sorted((e.cell, e.candidate_id) for e in current)
    live = sorted((cell, cid) for cell, cid, _, _ in archive.elites())
    if stored != live:
        failures.append("the elites table differs from the live archive")
    fresh, emitters = build(results, seed)
    restart = SearchLoop(fresh, emitters, InstantFleet(1, 0), RunStore(sessions, run_id), results)
    if restart.resume() != results:
        failures.append("resume did not restore every evaluation")
    if fresh.elites() != archive.elites():
        failures.append("resume rebuilt a different archive")
    return failures


# --- databases ----------------------------------------------------------------------------------


@contextlib.contextmanager
def fresh_database(target: str, directory: Path) -> Iterator[str]:
    """An empty database for one repeat: a new PostgreSQL database on ``target``'s server
    (dropped afterwards), or a new SQLite file (``target`` is ``sqlite`` or a SQLite URL whose
    file must not exist yet; deleted afterwards)."""
    if target == "sqlite":
        with tempfile.TemporaryDirectory(dir=directory) as tmp:
            yield f"sqlite:///{Path(tmp) / 'bench.db'}"
        return
    url = make_url(target)
    if url.get_backend_name() == "sqlite":
        path = Path(url.database or "")
        if not url.database or path.exists():
            raise SystemExit(f"--db {target}: give a SQLite file that does not exist yet")
        try:
            yield target
        finally:
            for suffix in ("", "-wal", "-shm"):
                Path(f"{path}{suffix}").unlink(missing_ok=True)
        return
    with temporary_postgres_database(target) as fresh:
        yield fresh


# --- report -------------------------------------------------------------------------------------


def describe(i: int, r: dict[str, Any]) -> str:
    """One repeat as a line."""
    n = max(r["evaluations"], 1)
    sec = r["seconds"]
    controller = r["wall_s"] - r["worker_s"]
    parts = {k: sec.get(k, 0.0) for k in ("store", "archive", "emitters")}
    loop = controller - sum(parts.values())
    split = ", ".join(f"{k} {1e3 * v / n:.3f}" for k, v in parts.items())
    return (
        f"  repeat {i}: {r['evaluations']} results in {r['wall_s']:.2f} s ="
        f" {n / r['wall_s']:7.1f} results/s; ms per result: {split}, loop {1e3 * loop / n:.3f},"
        f" simulated workers {1e3 * r['worker_s'] / n:.3f}; {r['elites']} elites\n"
        # CPU of this process vs waiting (on the database server, or for a CPU that other
        # processes hold: the load average says which).
        f"    this process's CPU {1e3 * r['cpu_s'] / n:.3f} ms per result, waiting"
        f" {1e3 * (r['wall_s'] - r['cpu_s']) / n:.3f}; load average {r['load'][0]:.2f}"
        f" -> {r['load'][1]:.2f} ({os.cpu_count()} CPUs)"
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point; exit status 0 on PASS, 1 on FAIL."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--db", default=DEFAULT_DB, help=f"server URL or 'sqlite' (default {DEFAULT_DB})"
    )
    p.add_argument("--results", type=int, default=5000, help="results per repeat (default 5000)")
    p.add_argument("--capacity", type=int, default=32, help="jobs in flight (default 32)")
    p.add_argument("--repeats", type=int, default=3, help="repeats; the median counts (default 3)")
    p.add_argument("--target", type=float, default=TARGET, help="results/s to pass (default 500)")
    p.add_argument("--seed", type=int, default=0, help="random seed of emitters and fleet")
    p.add_argument("--tmpdir", type=Path, default=None, help="where a SQLite file goes")
    p.add_argument(
        "--controllers", type=int, default=1, help="controller processes sharing the runs (1)"
    )
    p.add_argument("--runs", type=int, default=16, help="runs, with --controllers > 1 (16)")
    args = p.parse_args(argv)
    # Killed with SIGTERM: unwind, so that the bench's database is dropped all the same.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.controllers > 1:
        return main_many(args)

    backend = "sqlite" if args.db == "sqlite" else make_url(args.db).get_backend_name()
    print(
        f"[{backend}] {args.results} results per repeat, {args.capacity} in flight, "
        f"instant simulated workers, dims {DIMS}"
    )
    rows = []
    for i in range(1, args.repeats + 1):
        with fresh_database(args.db, args.tmpdir or Path(tempfile.gettempdir())) as url:
            r = run_once(url, args.results, args.capacity, args.seed + i)
        rows.append(r)
        print(describe(i, r), flush=True)
        for failure in r["checks"]:
            print(f"    CHECK FAILED: {failure}")
    rates = [r["evaluations"] / r["wall_s"] for r in rows]
    median = statistics.median(rates)
    mid = rows[rates.index(sorted(rates)[len(rates) // 2])]
    n = max(mid["evaluations"], 1)
    calls = ", ".join(
        f"{k.split('.', 1)[1]} {1e3 * v / n:.3f} ms ({mid['calls'][k]} calls)"
        for k, v in sorted(mid["by_method"].items(), key=lambda kv: -kv[1])
        if k.startswith("store.")
    )
    print(f"  store time per result by call (median repeat): {calls}")
    verdicts = " ".join(f"{k}:{v}" for k, v in sorted(mid["verdicts"].items()))
    print(f"  verdicts: {verdicts}; redelivered {mid['redelivered']}")
    checks_ok = all(not r["checks"] for r in rows)
    ok = median >= args.target and checks_ok
    print(
        f"{'PASS' if ok else 'FAIL'}: median {median:.1f} results/s on {backend}"
        f" (target >= {args.target:g}){'' if checks_ok else '; database checks failed'}"
    )
    return 0 if ok else 1


def main_many(args: argparse.Namespace) -> int:
    """``--controllers N``: N controller processes share ``--runs`` runs by their leases."""
    from ingest_controllers import run_many

    target = args.target if args.target != TARGET else 2000.0
    backend = "sqlite" if args.db == "sqlite" else make_url(args.db).get_backend_name()
    print(
        f"[{backend}] {args.controllers} controllers, {args.runs} runs of {args.results}"
        f" results, {args.capacity} in flight per run, instant simulated workers;"
        f" load average {os.getloadavg()[0]:.2f} ({os.cpu_count()} CPUs)"
    )
    rates = []
    ok = True
    for i in range(1, args.repeats + 1):
        with fresh_database(args.db, args.tmpdir or Path(tempfile.gettempdir())) as url:
            r = run_many(url, args.controllers, args.runs, args.results, args.capacity)
        rate = r["results"] / r["wall_s"]
        rates.append(rate)
        per = ", ".join(
            f"{c['name']}: {len(c['runs'])} runs in {c['wall_s']:.1f} s" for c in r["reports"]
        )
        print(f"  repeat {i}: {r['results']} results in {r['wall_s']:.2f} s = {rate:.1f}/s ({per})")
        # Where the CPU went: the controllers (search, store client, simulated workers) and the
        # database server, against what the machine has over the wall clock.
        n = max(r["results"], 1)
        ctl = sum(c["cpu_s"] for c in r["reports"])
        server = r["server_cpu_s"]
        cpus = os.cpu_count() or 1
        print(
            f"    CPU per result: controllers {1e3 * ctl / n:.3f} ms,"
            + (f" postgres {1e3 * server / n:.3f} ms," if server is not None else "")
            + f" {cpus} CPUs x wall {1e3 * cpus * r['wall_s'] / n:.3f} ms;"
            f" load average {os.getloadavg()[0]:.2f}"
        )
        for failure in r["checks"]:
            print(f"    CHECK FAILED: {failure}")
            ok = False
    median = statistics.median(rates)
    ok = ok and median >= target
    print(
        f"{'PASS' if ok else 'FAIL'}: median {median:.1f} results/s in total on {backend}"
        f" (target >= {target:g})"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
