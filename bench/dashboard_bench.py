"""Dashboard pages' server time: a run page of a run with 10,000 candidates and 1,000 elites
renders in under 300 ms, with a number of SQL statements that does not grow with the run.

The run is the one :func:`bench.api_load_bench.fill` stores (Triton sources, parameters,
lineage, raw timing samples, a tenth re-measured, as many replaced elites as current ones, a
500-point progress curve) in a temporary SQLite file (``--db sqlite``, the default) or a fresh
database on a PostgreSQL server (``--db postgresql+psycopg://...``). The app is the real one
(:func:`services.api.create_app`, the dashboard included), called in this process through
Starlette's test client after signing in through ``/login`` like a browser: the time measured
is the server's (routing, queries, templates) without a network.

For each page it prints the median and p90 of ``--repeat`` requests (after one warm-up), the
bytes sent and the SQL statements one request executes; the last line is PASS or FAIL against
the target (the run page's median under ``--target-ms``, its size under 300 KB, and the same
number of statements as on a run a tenth the size: no per-elite or per-candidate query).

Usage::

    .venv/bin/python bench/dashboard_bench.py
    .venv/bin/python bench/dashboard_bench.py --db postgresql+psycopg://postgres@127.0.0.1:5432/test
"""

from __future__ import annotations

import argparse
import contextlib
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import sqlalchemy as sa  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

from archive import db  # noqa: E402
from bench.api_load_bench import database, fill  # noqa: E402
from services.api import create_app  # noqa: E402
from services.config import Settings  # noqa: E402

LOGIN_TOKEN = re.compile(r'name="login_token" value="([^"]+)"')
MAX_PAGE_BYTES = 300 * 1024


class StatementCounter:
    """Counts the SQL statements an engine executes while :attr:`on` is set."""

    def __init__(self, engine: sa.Engine) -> None:
        self.on = False
        self.n = 0
        sa.event.listen(engine, "before_cursor_execute", self._count)

    def _count(self, *_args) -> None:
        if self.on:
            self.n += 1

    @contextlib.contextmanager
    def counting(self):
        self.n, self.on = 0, True
        try:
            yield self
        finally:
            self.on = False


def _signed_in(app, key: str) -> TestClient:
    client = TestClient(app)
    token = LOGIN_TOKEN.search(client.get("/login").text).group(1)
    r = client.post("/login", data={"api_key": key, "login_token": token}, follow_redirects=False)
    if r.status_code != 303:
        raise SystemExit(f"cannot sign in: {r.status_code} {r.text[:200]}")
    return client


def measure(client: TestClient, counter: StatementCounter, path: str, repeat: int) -> dict:
    """Median/p90 milliseconds, bytes and SQL statements of ``GET path``."""
    first = client.get(path)
    if first.status_code != 200:
        raise SystemExit(f"GET {path}: {first.status_code} {first.text[:300]}")
    with counter.counting():
        client.get(path)
    statements = counter.n
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        r = client.get(path)
        times.append((time.perf_counter() - t0) * 1000)
        assert r.status_code == 200
    times.sort()
    return {
        "path": path,
        "median_ms": statistics.median(times),
        "p90_ms": times[min(len(times) - 1, int(0.9 * len(times)))],
        "bytes": len(first.content),
        "statements": statements,
    }


def site(url: str, tmp: Path, candidates: int, elites: int):
    """The app over a database holding one run of that size: (app, engine, run id, key)."""
    engine = db.make_engine(url)
    db.ensure_schema(engine)
    sessions = db.session_factory(engine)
    run_id, key = fill(sessions, candidates, elites)
    app = create_app(sessions, Settings(data_dir=tmp / "data", device="cpu"))
    return app, engine, run_id, key


def pages(run_id: int, best: int) -> list[str]:
    """The pages measured (the run page first)."""
    return [
        f"/runs/{run_id}",
        "/runs",
        f"/candidates/{best}",
        f"/runs/{run_id}/lineage",
    ]


def _best(engine: sa.Engine, run_id: int) -> int:
    with engine.connect() as c:
        return c.execute(
            sa.text(
                "select candidate_id from elites where run_id = :r and replaced_at is null"
                " order by objective desc limit 1"
            ),
            {"r": run_id},
        ).scalar_one()


def main(argv: list[str] | None = None) -> int:
    """Run the bench; exit 0 on PASS, 1 on FAIL."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--db", default="sqlite", help="`sqlite` or a PostgreSQL server URL")
    ap.add_argument("--candidates", type=int, default=10_000)
    ap.add_argument("--elites", type=int, default=1_000)
    ap.add_argument("--repeat", type=int, default=15)
    ap.add_argument("--target-ms", type=float, default=300.0)
    args = ap.parse_args(argv)
    rows, statements_small = [], None
    with tempfile.TemporaryDirectory() as tmp:
        for size, n_cand, n_elite in (
            ("small", max(10, args.candidates // 10), max(5, args.elites // 10)),
            ("full", args.candidates, args.elites),
        ):
            t0 = time.perf_counter()
            with database(args.db, Path(tmp) / size) as url:
                app, engine, run_id, key = site(url, Path(tmp) / size, n_cand, n_elite)
                filled_s = time.perf_counter() - t0
                client = _signed_in(app, key)
                counter = StatementCounter(engine)
                best = _best(engine, run_id)
                if size == "small":
                    statements_small = measure(client, counter, f"/runs/{run_id}", 1)["statements"]
                else:
                    print(
                        f"a run of {n_cand} candidates, {n_elite} elites on {args.db}"
                        f" (stored in {filled_s:.1f} s)"
                    )
                    rows = [measure(client, counter, p, args.repeat) for p in pages(run_id, best)]
                client.close()
                engine.dispose()
    print(f"{'page':<28}{'median ms':>10}{'p90 ms':>9}{'KB':>8}{'SQL':>6}")
    for r in rows:
        print(
            f"{r['path']:<28}{r['median_ms']:>10.1f}{r['p90_ms']:>9.1f}"
            f"{r['bytes'] / 1024:>8.1f}{r['statements']:>6}"
        )
    run_page = rows[0]
    ok = (
        run_page["median_ms"] < args.target_ms
        and run_page["bytes"] < MAX_PAGE_BYTES
        and run_page["statements"] == statements_small
    )
    print(
        f"{'PASS' if ok else 'FAIL'}: run page median {run_page['median_ms']:.1f} ms"
        f" (target {args.target_ms:g}), {run_page['bytes'] / 1024:.0f} KB (max 300),"
        f" {run_page['statements']} SQL statements ({statements_small} on a run a tenth the size)"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
