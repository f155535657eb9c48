"""API latency under load: p99 < 100 ms at 100 requests/s on the candidate list and the archive.

The API runs as a real server (uvicorn, one process, on loopback) on a database this script
creates and drops: a fresh PostgreSQL database on the server given by ``--db`` (default the
developers' ``postgresql+psycopg://postgres@127.0.0.1:5432/test``), or a temporary SQLite file
with ``--db sqlite``. It holds one finished run shaped like a real one: ``--candidates``
candidates (Triton source, parameters, lineage) each with its evaluation (results as
``EvalResult.to_dict(raw=True)`` makes them: timings with raw samples, features, hardware; a
tenth re-measured, so each has two), ``--elites`` current elites (and as many replaced ones),
and a progress curve.

The load generator (this process, ``httpx`` async) sends requests at a constant arrival rate
(open loop: a request leaves at its scheduled time whether or not earlier ones have come back,
so a slow server cannot slow the offered rate down), cycling through:

- ``GET /api/v1/runs/{id}/candidates`` on a few pages (first, middle, last; 50 per page),
- the same filtered by verdict (``OK``, ``INCORRECT``),
- ``GET /api/v1/runs/{id}/archive`` (every current elite).

Latency is measured from each request's scheduled start to the end of its body. The first
``--warmup`` seconds are not counted. Prints, per endpoint: requests, errors, p50/p90/p99/max
latency and achieved rate; the last line is PASS or FAIL against the target (p99 below
``--p99-ms`` on every endpoint, no errors, the offered rate achieved).

Usage::

    .venv/bin/python bench/api_load_bench.py                  # PostgreSQL at 127.0.0.1:5432
    .venv/bin/python bench/api_load_bench.py --db sqlite      # a temporary SQLite file
    .venv/bin/python bench/api_load_bench.py --rate 200 --duration 60
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import math
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from archive import db  # noqa: E402
from archive import models as m  # noqa: E402
from archive.rows import evaluation_row  # noqa: E402
from archive.testing import temporary_postgres_database  # noqa: E402
from evolution.fakes import fake_result  # noqa: E402
from services import keys  # noqa: E402

DEFAULT_DB = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
API = "/api/v1"
FAMILY = ROOT / "examples" / "softmax" / "triton_softmax_looped.py"
TASK = ROOT / "examples" / "softmax" / "task.py"
#: Share of each verdict among the candidates; the rest are OK.
FAILURES = {
    "INCORRECT": 0.15,
    "COMPILE_ERROR": 0.1,
    "RUNTIME_ERROR": 0.08,
    "STATIC_REJECT": 0.05,
    "TIMEOUT": 0.02,
}
HARDWARE = {
    "name": "NVIDIA H100 80GB HBM3",
    "capability": [9, 0],
    "sms": 132,
    "torch": "2.13.0",
    "triton": "3.6.0",
    "driver": "580.95",
}
EMITTERS = ["seed", "templates", "gaussian", "iso_line"]


# --- the archive ------------------------------------------------------------------------------


def _result(rng: random.Random, params: dict[str, Any], verdict: str) -> dict[str, Any]:
    """An evaluator result as workers send it (raw timing samples included)."""
    ms = 0.3 * math.exp(rng.gauss(0.0, 0.4))
    result = fake_result(params, ms, verdict=verdict, rel_iqr=rng.uniform(0.005, 0.03))
    result["hardware"] = dict(HARDWARE)
    result["worker"] = f"gpu-node-{rng.randrange(4)}/cuda:{rng.randrange(8)}"
    result["stages_s"] = {"compile_s": 1.2, "timing_s": 0.6, "total_s": round(rng.uniform(1, 3), 3)}
    if verdict == "OK":
        for name in ("candidate", "eager", "compile"):
            stats = result["timing"][name]
            stats["n"] = 100
            stats["samples_ms"] = [stats["median_ms"] * rng.uniform(0.98, 1.05) for _ in range(100)]
    else:
        result["messages"] = [f"{verdict}: max abs error 3.2e-1 at [17, 4]", "see the log"]
    return result


def fill(sessions, n_candidates: int, n_elites: int, seed: int = 0) -> tuple[int, str]:
    """Store a user, a task and one finished run with its whole archive; (run id, user key)."""
    rng = random.Random(seed)
    family = FAMILY.read_text()
    with sessions() as s:
        user, key = keys.create_key(s, "user", "bench")
        task = m.Task(
            name="softmax",
            source=TASK.read_text(),
            source_sha256=hashlib.sha256(TASK.read_bytes()).hexdigest(),
            meta={"dtype": "torch.float32"},
            validation={"ok": True},
            owner_id=user.id,
        )
        s.add(task)
        s.flush()
        run = m.Run(
            task_id=task.id,
            config={"dims": "occupancy,n_regs", "emitters": ["templates", "gaussian"]},
            status="finished",
            budget=n_candidates,
            seed=seed,
            device="cuda",
            objective_label="speedup_vs_compile",
            owner_id=user.id,
        )
        s.add(run)
        s.flush()
        cands = []
        for i in range(n_candidates):
            params = {
                "BLOCK": rng.choice([128, 256, 512, 1024, 2048]),
                "num_warps": rng.choice([2, 4, 8, 16]),
                "num_stages": rng.choice([1, 2, 3, 4]),
                "UNROLL": i,  # every candidate distinct
            }
            source = family + f"\n# variant {i}\n"
            digest = hashlib.sha256(f"{source}{params}".encode()).hexdigest()
            parents = [rng.randrange(1, i + 1) for _ in range(rng.randint(0, 2))] if i else []
            cands.append(
                m.Candidate(
                    task_id=task.id,
                    run_id=run.id,
                    source=source,
                    params=params,
                    key_sha256=digest,
                    source_sha256=hashlib.sha256(source.encode()).hexdigest(),
                    emitter=rng.choice(EMITTERS),
                    parent_ids=parents,
                    label=f"{rng.choice(['looped', 'online', 'two-pass'])}-{i}",
                )
            )
        s.add_all(cands)
        s.flush()
        ok, evaluations = [], []
        for c in cands:
            s.add(m.Proposal(run_id=run.id, candidate_id=c.id, emitter=c.emitter, duplicate=False))
            u, verdict = rng.random(), "OK"
            for name, share in FAILURES.items():
                if u < share:
                    verdict = name
                    break
                u -= share
            for attempt in range(2 if rng.random() < 0.1 else 1):  # a tenth re-measured
                job_id = f"job-{c.id}-{attempt}"
                s.add(m.Job(id=job_id, run_id=run.id, candidate_id=c.id, status="done"))
                result = _result(rng, dict(c.params), verdict)
                evaluations.append(evaluation_row(c.id, result, job_id))
            if verdict == "OK":
                ok.append(c)
        s.flush()  # the jobs first: the models declare no relationship to order them by
        s.add_all(evaluations)
        s.flush()
        # Current elites in distinct cells, and as many they replaced.
        for cell, c in enumerate(rng.sample(ok, min(n_elites, len(ok)))):
            measures = [rng.uniform(0, 1), rng.uniform(16, 255)]
            objective = rng.uniform(-0.5, 1.5)
            old = rng.choice(ok)
            s.add(
                m.Elite(
                    run_id=run.id,
                    cell=cell,
                    candidate_id=old.id,
                    objective=objective - 0.2,
                    measures=measures,
                    replaced_at=m.utcnow(),
                )
            )
            s.add(
                m.Elite(
                    run_id=run.id,
                    cell=cell,
                    candidate_id=c.id,
                    objective=objective,
                    measures=measures,
                )
            )
        for i in range(1, 501):
            s.add(
                m.RunStat(
                    run_id=run.id,
                    evaluations=i * n_candidates // 500,
                    elites=min(n_elites, i),
                    coverage=min(1.0, i / 500),
                    qd_score=float(i),
                    best_objective=1.0,
                    verdicts={"OK": len(ok)},
                )
            )
        s.commit()
        return run.id, key


# --- the server -------------------------------------------------------------------------------


def serve(url: str, port: int, gc_freeze: bool = False) -> None:
    """Run the API on ``url`` at 127.0.0.1:``port`` until terminated (the child's job).

    As ``kernelmap serve`` does (one uvicorn process), less the access log. ``gc_freeze``
    tries a fix ``kernelmap serve`` does not have (yet): the app's import graph (torch,
    scipy, pandas via pyribs: ~430,000 objects) is moved out of the garbage collector's
    sight, so that a full collection no longer walks it (~200 ms, every few seconds under load).
    """
    import gc

    import uvicorn

    from services.api import create_app
    from services.config import Settings

    engine = db.make_engine(url)
    app = create_app(db.session_factory(engine), Settings(device="cpu", database_url=url))
    app.openapi()
    if gc_freeze:
        gc.collect()
        gc.freeze()
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) a process has used so far, from ``/proc`` (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def server(url: str, log: Path, gc_freeze: bool = False) -> Iterator[tuple[str, int]]:
    """A server process on ``url``; yields its base URL and pid; stops it."""
    port = _free_port()
    cmd = [sys.executable, __file__, "--serve", url, "--port", str(port)]
    cmd += [] if gc_freeze else ["--no-gc-freeze"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the server exited ({proc.returncode}): {log.read_text()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"the server did not answer within 60 s: {log.read_text()}")
            time.sleep(0.2)
        yield base, proc.pid
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# --- the load ---------------------------------------------------------------------------------


def endpoints(run_id: int, n_candidates: int) -> list[tuple[str, str]]:
    """(endpoint, URL) in the order the requests cycle through."""
    cands = f"{API}/runs/{run_id}/candidates"
    last = max(0, n_candidates - 50)
    archive = ("archive", f"{API}/runs/{run_id}/archive")
    return [
        ("candidates (pages)", f"{cands}?limit=50&offset=0"),
        archive,
        ("candidates (verdict)", f"{cands}?verdict=OK&limit=50&offset=0"),
        ("candidates (pages)", f"{cands}?limit=50&offset={n_candidates // 2}"),
        archive,
        ("candidates (verdict)", f"{cands}?verdict=INCORRECT&limit=50&offset=100"),
        ("candidates (pages)", f"{cands}?limit=50&offset={last}"),
        archive,
    ]


async def load(
    base: str,
    key: str,
    urls: list[tuple[str, str]],
    rate: float,
    duration: float,
    warmup: float,
    connections: int = 64,
) -> tuple[list[tuple[str, float, float, bool]], float]:
    """Send ``rate`` requests/s for ``warmup + duration`` s; (records, the send lag's max).

    A record is (endpoint, scheduled start, latency in s, ok); warm-up requests are left out.
    Each request joins a queue at its scheduled time (open loop) and is sent by the first of
    ``connections`` senders that is free, each with its own kept-alive connection: a request
    that finds them all busy waits, and that wait counts in its latency as a server's queue
    would. (One shared httpx pool scans its waiting requests at every release: under
    overload the generator would spend more CPU than the server.)
    """
    headers = {"Authorization": f"Bearer {key}"}
    records: list[tuple[str, float, float, bool]] = []
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[str, str, float, bool] | None] = asyncio.Queue()

    async def sender(client: httpx.AsyncClient) -> None:
        async with client:
            while (item := await queue.get()) is not None:
                name, url, scheduled, counted = item
                try:
                    r = await client.get(url)
                    ok = r.status_code == 200 and bool(r.content)
                except httpx.HTTPError:
                    ok = False
                if counted:
                    records.append((name, scheduled, loop.time() - scheduled, ok))

    # Made before the clock starts: each client builds an SSL context (~10 ms), even for http.
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    clients = [
        httpx.AsyncClient(base_url=base, headers=headers, limits=limits, timeout=30)
        for _ in range(connections)
    ]
    senders = [asyncio.create_task(sender(client)) for client in clients]
    t0 = loop.time() + 0.2
    lag = 0.0
    for i in range(int((warmup + duration) * rate)):
        scheduled = t0 + i / rate
        delay = scheduled - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        lag = max(lag, loop.time() - scheduled)
        name, url = urls[i % len(urls)]
        queue.put_nowait((name, url, scheduled, i >= warmup * rate))
    for _ in senders:
        queue.put_nowait(None)
    await asyncio.gather(*senders)
    return records, lag


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(q / 100 * len(ordered)) - 1)]


def report(records, lag: float, rate: float, p99_ms: float) -> bool:
    """Print one line per endpoint and the verdict; whether it passed."""
    print(
        f"{'endpoint':22} {'requests':>8} {'errors':>6} {'p50 ms':>7} {'p90 ms':>7}"
        f" {'p99 ms':>7} {'max ms':>7} {'rate/s':>7}"
    )
    passed = True
    names = sorted({r[0] for r in records}) + ["all"]
    for name in names:
        rows = [r for r in records if name in ("all", r[0])]
        lat = [r[2] * 1000 for r in rows]
        errors = sum(1 for r in rows if not r[3])
        span = max(r[1] + r[2] for r in rows) - min(r[1] for r in rows)
        p99 = _pct(lat, 99)
        print(
            f"{name:22} {len(rows):8d} {errors:6d} {_pct(lat, 50):7.1f} {_pct(lat, 90):7.1f}"
            f" {p99:7.1f} {max(lat):7.1f} {len(rows) / span:7.1f}"
        )
        if name != "all" and (p99 >= p99_ms or errors):
            passed = False
    achieved = len(records) / (max(r[1] + r[2] for r in records) - min(r[1] for r in records))
    print(
        f"offered {rate:g} req/s, achieved {achieved:.1f} req/s; sends at most {lag * 1000:.1f}"
        " ms late"
    )
    if achieved < 0.95 * rate:
        passed = False
    return passed


@contextlib.contextmanager
def database(spec: str, tmp: Path) -> Iterator[str]:
    """A fresh database: a SQLite file in ``tmp`` or a new database on a PostgreSQL server."""
    if spec == "sqlite":
        yield db.default_url(tmp)
    else:
        with temporary_postgres_database(spec) as url:
            yield url


def main(argv: list[str] | None = None) -> int:
    """Run the bench; exit 0 on PASS, 1 on FAIL."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--db", default=DEFAULT_DB, help="PostgreSQL server URL, or `sqlite`")
    ap.add_argument("--rate", type=float, default=100.0, help="requests per second")
    ap.add_argument("--duration", type=float, default=30.0, help="seconds measured")
    ap.add_argument("--warmup", type=float, default=3.0, help="seconds not measured, first")
    ap.add_argument("--candidates", type=int, default=5000)
    ap.add_argument("--elites", type=int, default=300)
    ap.add_argument("--p99-ms", type=float, default=100.0, help="the target")
    ap.add_argument(
        "--no-analyze", action="store_true", help="PostgreSQL: no planner statistics (ANALYZE)"
    )
    ap.add_argument(
        "--no-gc-freeze",
        dest="gc_freeze",
        action="store_false",
        help="do not freeze the server's imported objects out of the garbage collector"
        " (kernelmap serve does freeze them; this shows what that buys)",
    )
    ap.add_argument("--serve", metavar="URL", help=argparse.SUPPRESS)  # the server child
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.serve:
        serve(args.serve, args.port, args.gc_freeze)
        return 0
    with tempfile.TemporaryDirectory(prefix="kernelmap-api-bench-") as tmp_dir:
        tmp = Path(tmp_dir)
        with database(args.db, tmp) as url:
            engine = db.make_engine(url)
            try:
                db.ensure_schema(engine)
                t0 = time.perf_counter()
                run_id, key = fill(db.session_factory(engine), args.candidates, args.elites)
                if engine.dialect.name == "postgresql" and not args.no_analyze:
                    # The planner's statistics, as autovacuum makes them within a minute of
                    # the rows arriving (a live run stores them over hours).
                    with engine.connect() as conn:
                        conn.exec_driver_sql("ANALYZE")
                        conn.commit()
                print(
                    f"{engine.dialect.name}: run {run_id} with {args.candidates} candidates,"
                    f" {args.elites} elites, stored in {time.perf_counter() - t0:.1f} s;"
                    f" {os.cpu_count()} CPUs shared by server and load generator",
                    flush=True,
                )
            finally:
                engine.dispose()
            with server(url, tmp / "server.log", args.gc_freeze) as (base, pid):
                urls = endpoints(run_id, args.candidates)
                cpu0, client0 = cpu_seconds(pid), time.process_time()
                records, lag = asyncio.run(
                    load(base, key, urls, args.rate, args.duration, args.warmup)
                )
                cpu, client = cpu_seconds(pid) - cpu0, time.process_time() - client0
    passed = report(records, lag, args.rate, args.p99_ms)
    sent = (args.warmup + args.duration) * args.rate
    print(
        f"CPU per request: server {cpu / sent * 1000:.1f} ms, load generator"
        f" {client / sent * 1000:.1f} ms (machine load average now {os.getloadavg()[0]:.1f})"
    )
    p99 = _pct([r[2] * 1000 for r in records], 99)
    verdict = "PASS" if passed else "FAIL"
    print(
        f"{verdict}: p99 {p99:.1f} ms overall at {args.rate:g} requests/s"
        f" (target: p99 < {args.p99_ms:g} ms on every endpoint, no errors)"
    )
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
