"""Many controllers ingesting at once: ``controller_ingest_bench.py --controllers N --runs M``.

``N`` controller processes start together on one database holding ``M`` runs. Each takes runs
the way a real controller does, by their leases (:class:`services.runs.ownership.RunOwnership`,
up to ``ceil(M / N)`` runs each), and drives every run it holds in a thread of its own: the
real :class:`~evolution.loop.SearchLoop` over the real, fenced
:class:`~archive.run_store.RunStore`, with the instant simulated fleet of
``controller_ingest_bench.py`` (so the time measured is the controllers').

The figure is every result of every run divided by the wall clock from the common start to the
last run's end. Where the CPU time went is reported beside it: each controller process's CPU
(all its threads: the search, the store's client side, the simulated workers) and, when the
database server runs on this host, the CPU of its ``postgres`` processes (from ``/proc``), to
compare with the CPUs the machine has.

After the clock stops the database is checked: each run was driven by one owner (epoch 1, never
taken over), every run reached its budget with one evaluation per job and its progress curve
ends there, and no job was evaluated twice.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import os
import threading
import time
from typing import Any

import sqlalchemy as sa

from archive import db, repository
from archive import models as m
from archive.run_store import RunStore
from evolution.loop import SearchLoop
from services.heap import tune_collector
from services.runs.ownership import RunOwnership

#: A lease long enough that no bench run is taken over by accident.
LEASE_S = 30.0


def _drive(args: tuple[str, str, list[int], int, int, int, Any, Any]) -> dict[str, Any]:
    """One controller process: take runs by lease (up to ``limit``), drive them in threads."""
    from controller_ingest_bench import InstantFleet, build  # the bench's own fleet and emitters

    url, name, run_ids, limit, results, capacity, go, out = args
    engine = db.make_engine(url)
    sessions = db.session_factory(engine)
    with sessions() as s:  # connected before the clock starts
        s.execute(sa.select(1))
    tune_collector()  # as `kernelmap controller` does once it is set up
    out.put({"ready": name})
    go.wait()
    t0, cpu0 = time.perf_counter(), time.process_time()
    held: list[RunOwnership] = []
    for run_id in run_ids:
        if len(held) >= limit:
            break
        ownership = RunOwnership(sessions, run_id, name, LEASE_S)
        if ownership.acquire():
            held.append(ownership)
    done: dict[int, int] = {}
    # Building parses the family's source (the static gate), and CPython 3.11 can fail
    # ("AST constructor recursion depth mismatch") when threads parse at the same time.
    building = threading.Lock()

    def drive(ownership: RunOwnership) -> None:
        stop = threading.Event()
        ownership.keep(stop)
        try:
            with building:
                archive, emitters = build(results, ownership.run_id)
            store = RunStore(sessions, ownership.run_id, fence=ownership.fence)
            fleet = InstantFleet(capacity, ownership.run_id)
            loop = SearchLoop(archive, emitters, fleet, store, results)
            done[ownership.run_id] = loop.run(stop).evaluations
        finally:
            ownership.release()

    threads = [threading.Thread(target=drive, args=(o,)) for o in held]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    engine.dispose()
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    out.put({"name": name, "runs": done, "wall_s": wall, "cpu_s": cpu})
    return {}


def run_many(url: str, controllers: int, runs: int, results: int, capacity: int) -> dict:
    """``runs`` runs of ``results`` results each driven by ``controllers`` processes."""
    from controller_ingest_bench import new_run

    engine = db.make_engine(url)
    db.ensure_schema(engine)
    sessions = db.session_factory(engine)
    run_ids = [new_run(sessions, results) for _ in range(runs)]
    limit = math.ceil(runs / controllers)
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    go = ctx.Event()
    procs = [
        ctx.Process(
            target=_drive,
            args=((url, f"bench-{i}", run_ids, limit, results, capacity, go, out),),
        )
        for i in range(controllers)
    ]
    for p in procs:
        p.start()
    for _ in procs:  # every process imported and connected before the clock starts
        out.get(timeout=600)
    start, server0 = time.perf_counter(), server_cpu_s()
    go.set()
    reports = [out.get(timeout=3600) for _ in procs]
    wall = time.perf_counter() - start
    server = None if server0 is None else server_cpu_s() - server0
    for p in procs:
        p.join()
    checks = _check(sessions, run_ids, results, reports)
    engine.dispose()
    total = sum(n for r in reports for n in r["runs"].values())
    return {
        "results": total,
        "wall_s": wall,
        "reports": reports,
        "checks": checks,
        "server_cpu_s": server,
    }


def server_cpu_s() -> float | None:
    """CPU seconds used so far by this host's ``postgres`` processes (None without ``/proc``).

    Exited backends count too (in the postmaster's reaped children's time). It is the server's
    work for every client: another program using the server meanwhile is counted as well.
    """
    if not os.path.isdir("/proc"):
        return None
    ticks = 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read()
        except OSError:
            continue  # exited meanwhile
        name, rest = stat[stat.index("(") + 1 :].rsplit(")", 1)
        if name.startswith("postgres"):
            fields = rest.split()
            ticks += sum(int(x) for x in fields[11:15])  # utime, stime, cutime, cstime
    return ticks / os.sysconf("SC_CLK_TCK")


def _check(sessions, run_ids: list[int], results: int, reports: list[dict]) -> list[str]:
    failures = []
    owners: dict[int, list[str]] = {}
    for r in reports:
        for run_id in r["runs"]:
            owners.setdefault(run_id, []).append(r["name"])
    for run_id in run_ids:
        if len(owners.get(run_id, [])) != 1:
            failures.append(f"run {run_id} was driven by {owners.get(run_id, [])}")
    with sessions() as s:
        epochs = dict(s.execute(sa.select(m.RunLease.run_id, m.RunLease.epoch)).all())
        if any(epochs.get(r) != 1 for r in run_ids):
            failures.append(f"a run changed owner: epochs {epochs}")
        per_run = dict(
            s.execute(
                sa.select(m.Job.run_id, sa.func.count())
                .join(m.Evaluation, m.Evaluation.job_id == m.Job.id)
                .group_by(m.Job.run_id)
            ).all()
        )
        short = {r: per_run.get(r, 0) for r in run_ids if per_run.get(r, 0) != results}
        if short:
            failures.append(f"runs without {results} evaluations: {short}")
        twice = s.scalar(
            sa.select(sa.func.count()).select_from(
                sa.select(m.Evaluation.job_id)
                .where(m.Evaluation.job_id.is_not(None))
                .group_by(m.Evaluation.job_id)
                .having(sa.func.count() > 1)
                .subquery()
            )
        )
        if twice:
            failures.append(f"{twice} jobs were evaluated twice")
        for run_id in run_ids:
            last = repository.latest_run_stat(s, run_id)
            if last is None or last.evaluations != results:
                failures.append(f"run {run_id}'s progress does not end at its budget")
    return failures
