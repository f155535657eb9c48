"""`kernelmap run`, `runs`, `show`, `export` as a user runs them (CPU, a small task)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parents[3]
DATA = ROOT / "tests" / "data"
TASK = DATA / "softmax_task.py"
SEED = DATA / "chunked_softmax.py"


def kernelmap(env: dict, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "services.cli.main", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def env(tmp_path):
    e = dict(os.environ, KERNELMAP_DATA_DIR=str(tmp_path / "data"), KERNELMAP_DEVICE="cpu")
    e.pop("KERNELMAP_DATABASE_URL", None)
    return e


def _db(tmp_path: Path) -> sa.Engine:
    return sa.create_engine(f"sqlite:///{tmp_path / 'data' / 'kernelmap.db'}")


def _start_run(env: dict, budget: str, output=subprocess.DEVNULL) -> subprocess.Popen:
    """A `kernelmap run` of the chunked seed in its own process group (as a shell starts it)."""
    args = [
        sys.executable,
        "-m",
        "services.cli.main",
        "run",
        str(TASK),
        "--seed-candidate",
        str(SEED),
        "--budget",
        budget,
        "--dims",
        "block_size:8,num_warps_param:4",
        "--no-templates",
    ]
    return subprocess.Popen(
        args, cwd=ROOT, env=env, stdout=output, stderr=output, text=True, start_new_session=True
    )


def _wait_for_evaluations(proc: subprocess.Popen, tmp_path: Path, n: int) -> int:
    """Poll the run's database until it holds ``n`` evaluations; returns how many it saw."""
    db_file = tmp_path / "data" / "kernelmap.db"
    deadline = time.monotonic() + 300
    done = 0
    while time.monotonic() < deadline and proc.poll() is None and done < n:
        time.sleep(0.5)
        if db_file.exists():
            try:
                with _db(tmp_path).connect() as c:
                    done = c.execute(sa.text("select count(*) from evaluations")).scalar()
            except sa.exc.OperationalError:
                continue
    return done


def test_run_fills_the_archive_and_exports_the_best(env, tmp_path):
    p = kernelmap(
        env,
        "run",
        str(TASK),
        "--seed-candidate",
        str(SEED),
        "--budget",
        "8",
        "--dims",
        "block_size:8,num_warps_param:4",
        "--no-templates",
        "--json",
    )
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["evaluations"] == 8
    assert out["elites"] >= 3
    assert 0 < out["coverage"] <= 1 and out["qd_score"] > 0
    assert out["best"]["verdict"] == "OK" and out["best"]["candidate_id"] > 0
    assert out["objective_label"] == "cpu-time"  # plain PyTorch: real CPU time
    assert Path(out["report"]).read_text().count("<svg") >= 2
    assert "[8/8]" in p.stderr and "coverage" in p.stderr  # progress on stderr
    # Every count agrees: the progress line's, the summary's and the database's.
    counts = out["counts"]
    assert counts["evaluations"] == out["evaluations"] == 8
    assert sum(out["verdicts"].values()) == 8 + counts["static_rejects"]
    last = [ln for ln in p.stderr.splitlines() if ln.startswith("[8/8]")][-1]
    shown = dict(tok.split(":") for tok in last.split() if ":" in tok and tok[0].isupper())
    assert {k: int(v) for k, v in shown.items()} == out["verdicts"]
    with _db(tmp_path).connect() as c:
        stored = c.execute(
            sa.text("select count(*), count(distinct candidate_id) from evaluations")
        ).one()
    assert counts["candidates_evaluated"] + counts["remeasures"] == stored[0]
    assert counts["candidates_evaluated"] == stored[1]
    assert out["stop_reason"] == "budget" and out["stop_reason_text"] == "the budget is spent"
    assert out["templates"] == {"wanted": False, "matched": [], "notes": []}

    best = tmp_path / "best.py"
    e = kernelmap(env, "export", str(out["run_id"]), "--best", "-o", str(best))
    assert e.returncode == 0, e.stderr
    ev = kernelmap(env, "eval", str(TASK), str(best), "--json")
    assert json.loads(ev.stdout)["verdict"] == "OK"

    runs = kernelmap(env, "runs")
    assert runs.returncode == 0 and "finished" in runs.stdout
    show = kernelmap(env, "show", str(out["run_id"]))
    assert show.returncode == 0 and "candidate_id" in show.stdout


def test_a_bad_seed_is_refused_before_anything_starts(env, tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import socket\nclass ModelNew:\n    pass\n")
    p = kernelmap(env, "run", str(TASK), "--seed-candidate", str(bad), "--budget", "3")
    assert p.returncode == 2
    assert "static gate" in p.stderr and "socket" in p.stderr
    runs = kernelmap(env, "runs", "--json")
    assert json.loads(runs.stdout) == []


def test_unknown_run_and_bad_dims(env):
    p = kernelmap(env, "show", "999")
    assert p.returncode == 2 and "no run with id 999" in p.stderr
    p = kernelmap(env, "run", str(TASK), "--dims", "frobs:3")
    assert p.returncode == 2 and "frobs" in p.stderr


def test_sigkill_then_resume_loses_nothing_and_duplicates_nothing(env, tmp_path):
    proc = _start_run(env, "10")
    _wait_for_evaluations(proc, tmp_path, 3)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    engine = _db(tmp_path)
    with engine.connect() as c:
        run_id, status = c.execute(sa.text("select id, status from runs")).one()
    assert status == "running"  # killed: nobody could record anything else

    p = kernelmap(env, "run", "--resume", str(run_id), "--json")
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["status"] == "finished" and out["evaluations"] == 10
    with engine.connect() as c:
        per_candidate = c.execute(
            sa.text("select candidate_id, count(*) from evaluations group by candidate_id")
        ).all()
        keys = c.execute(
            sa.text("select count(*), count(distinct key_sha256) from candidates")
        ).one()
    # A candidate is evaluated once, plus at most one re-measure when it ties an elite within
    # the noise; no candidate (same source and parameters) exists twice.
    assert per_candidate and all(n <= 2 for _, n in per_candidate), per_candidate
    assert keys[0] == keys[1]
    assert sum(n for _, n in per_candidate) >= 10


def test_triton_on_the_cpu_is_labelled_cpu_interpreter(env, tmp_path):
    seed = ROOT / "examples" / "softmax" / "triton_softmax_looped.py"
    p = kernelmap(env, "run", str(TASK), "--seed-candidate", str(seed), "--budget", "3", "--json")
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["objective_label"] == "cpu-interpreter"  # the run's set-up
    assert "cpu-interpreter" in Path(out["report"]).read_text()
    # The best's figure carries its own evaluation's label, and the notes say why it won.
    best = out["best"]
    with _db(tmp_path).connect() as c:
        own = c.execute(
            sa.text(
                "select objective_label from evaluations where candidate_id = :c"
                " order by id desc limit 1"
            ),
            {"c": best["candidate_id"]},
        ).scalar()
    assert best["objective_label"] == own
    assert any("Triton runs in its interpreter" in n for n in out["notes"])
    if best["is_reference"]:
        assert own == "cpu-time" and best["label"] == "reference"
        assert any("the best is the reference itself" in n for n in out["notes"])
        lo, hi = best["ratio_ci95"]
        assert 0 < lo < hi
    assert any("QD-score" in n for n in out["notes"]) and out["qd_score_offset"] == -5.0
    assert out["templates"]["wanted"] and out["templates"]["matched"]  # softmax has templates
    last = [ln for ln in p.stderr.splitlines() if ln.startswith("[3/3]")][-1]
    assert f"[{own}]" in last  # the progress line labels the best as its evaluation did
    with _db(tmp_path).connect() as c:
        rows = c.execute(
            sa.text(
                "select objective_label, speedup_vs_eager from evaluations where verdict = 'OK'"
            )
        ).all()
    interpreted = [r for r in rows if r[0] == "cpu-interpreter"]
    assert interpreted  # the Triton candidates ...
    assert all(speedup is None for _, speedup in interpreted)  # ... are never called speedups


@pytest.mark.postgres
def test_run_against_postgresql(env, tmp_path):
    from archive.testing import temporary_postgres_database

    with temporary_postgres_database() as url:
        p = kernelmap(
            env,
            "run",
            str(TASK),
            "--seed-candidate",
            str(SEED),
            "--budget",
            "3",
            "--db",
            url,
            "--no-templates",
            "--json",
        )
        assert p.returncode == 0, p.stderr
        out = json.loads(p.stdout)
        assert out["evaluations"] == 3 and out["best"]["verdict"] == "OK"
        runs = kernelmap(env, "runs", "--db", url, "--json")
        assert [r["run_id"] for r in json.loads(runs.stdout)] == [out["run_id"]]


def test_cvt_archive_keeps_its_centroids(env, tmp_path):
    p = kernelmap(
        env,
        "run",
        str(TASK),
        "--seed-candidate",
        str(SEED),
        "--budget",
        "4",
        "--archive",
        "cvt",
        "--cells",
        "8",
        "--no-templates",
        "--json",
    )
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["elites"] >= 1
    with _db(tmp_path).connect() as c:
        state = c.execute(sa.text("select archive_state from runs")).scalar()
    centroids = json.loads(state)["centroids"] if isinstance(state, str) else state["centroids"]
    assert len(centroids) == 8 and len(centroids[0]) == 2
    bad = kernelmap(env, "run", str(TASK), "--archive", "cvt")
    assert bad.returncode == 2 and "--cells" in bad.stderr


def test_templates_seed_the_run_and_their_families_are_searched(env, tmp_path):
    # Interpreted Triton on a loaded 2-core machine can pass the default 60 s stage bound: what
    # is checked here is that every template is correct, not how fast the interpreter runs (so
    # the fewest interpreted samples: the split schedule's 20 took 50 s of its 60).
    env = dict(env, KERNELMAP_TIMEOUT_S="240", KERNELMAP_INTERPRETER_SAMPLES="5")
    p = kernelmap(env, "run", str(TASK), "--budget", "6", "--workers", "2", "--json")
    assert p.returncode == 0, p.stderr
    assert "templates: template:softmax/" in p.stderr  # what was matched is said
    with _db(tmp_path).connect() as c:
        rows = c.execute(
            sa.text(
                "select c.label, c.emitter, e.verdict from candidates c"
                " join evaluations e on e.candidate_id = c.id"
            )
        ).all()
    templated = [r for r in rows if r[0].startswith("template:softmax/")]
    assert templated and all(v == "OK" for _, _, v in templated), rows
    assert {e for _, e, _ in templated} == {"params"}  # schedules searched by the emitter


def test_ctrl_c_keeps_what_is_done_and_says_how_to_resume(env, tmp_path):
    proc = _start_run(env, "40", output=subprocess.PIPE)
    done = _wait_for_evaluations(proc, tmp_path, 2)
    assert proc.poll() is None, "the run finished before Ctrl-C"
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal sends to the foreground group
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "interrupted" in out and "--resume" in err
    with _db(tmp_path).connect() as c:
        status = c.execute(sa.text("select status from runs")).scalar()
        kept = c.execute(sa.text("select count(*) from evaluations")).scalar()
    assert status == "interrupted" and kept >= done
