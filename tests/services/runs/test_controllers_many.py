"""Several ``kernelmap controller`` processes on one PostgreSQL database and one Redis, with real
``kernelmap worker`` processes: one owner per run at any time, standby takeover after SIGKILL.

Two and three controllers started at once share two runs: each run is driven by exactly one
controller (its lease's owner, sampled all along, never changes; one controller says it started
it), every candidate is evaluated under one job id (a tie's re-measure excepted), no job is
stored twice, and both runs finish at their budgets. Then the owner of a run is SIGKILLed with
a standby running: the standby takes the run within the lease plus a poll and the run finishes
with no duplicate evaluation.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from archive import db, repository, run_control
from archive.models import Candidate, Evaluation, Job, RunLease
from archive.testing import temporary_database
from services.api.launch import create_queued_run
from tests.fleet_fixtures import kill_group, start_controller

pytestmark = [pytest.mark.redis, pytest.mark.postgres, pytest.mark.slow]

DATA = Path(__file__).parents[2] / "data"
LEASE_S = 3.0


def _runs(sessions, n: int, budget: int) -> list[int]:
    """``n`` queued runs of the softmax task, one per user (limits are per user)."""
    ids = []
    with sessions() as s:
        for i in range(n):
            user = repository.add_user(s, f"user{i}", "user")
            task = repository.add_task(
                s, name="softmax", source=(DATA / "softmax_task.py").read_text(), meta={}
            )
            task.owner_id = user.id
            run = create_queued_run(
                s,
                user,
                task,
                budget=budget,
                hardware="cpu",
                seed_sources=[(DATA / "chunked_softmax.py").read_text()],
                timeout_s=60,
                emitters=["gaussian"],
            )
            s.flush()
            ids.append(run.id)
        s.commit()
    return ids


def _owners(sessions) -> dict[int, str]:
    with sessions() as s:
        return {r.run_id: r.owner for r in s.scalars(sa.select(RunLease))}


def _statuses(sessions, run_ids: list[int]) -> dict[int, str]:
    with sessions() as s:
        return {r: run_control.status_of(s, r) for r in run_ids}


def _logs(logs: dict[str, Path]) -> str:
    return "\n".join(f"--- {n}\n{p.read_text()[-2500:]}" for n, p in logs.items())


def _check_evaluations(sessions, run_ids: list[int], budget: int) -> None:
    with sessions() as s:
        keys = s.execute(sa.select(Candidate.task_id, Candidate.key_sha256)).all()
        assert len(keys) == len(set(keys)), "a candidate was stored twice for one task"
        evaluated = s.scalars(sa.select(Evaluation.job_id).where(Evaluation.job_id.is_not(None)))
        evaluated = evaluated.all()
        assert len(evaluated) == len(set(evaluated)), "a job was stored twice"
        per_candidate = s.execute(
            sa.select(Job.candidate_id, sa.func.count(sa.distinct(Job.id)))
            .join(Evaluation, Evaluation.job_id == Job.id)
            .group_by(Job.candidate_id)
        ).all()
        # One job per candidate; a second only for a tie's deliberate re-measure.
        assert max(n for _, n in per_candidate) <= 2
        twice = sum(1 for _, n in per_candidate if n == 2)
        assert twice <= len(run_ids), f"{twice} candidates were evaluated under two job ids"
        for run_id in run_ids:
            assert repository.latest_run_stat(s, run_id).evaluations == budget


@pytest.mark.parametrize("n_controllers", [2, 3])
def test_controllers_started_at_once_drive_each_run_with_one_owner(
    env, start_worker, tmp_path, n_controllers
):
    budget = 5
    logs = {f"c{i}": tmp_path / f"c{i}.log" for i in range(n_controllers)}
    with temporary_database("postgres", tmp_path / "pg") as url:
        engine = db.make_engine(url)
        db.ensure_schema(engine)
        sessions = db.session_factory(engine)
        run_ids = _runs(sessions, 2, budget)
        env = dict(
            env,
            KERNELMAP_DATABASE_URL=url,
            KERNELMAP_RUN_JOBS_IN_FLIGHT="2",
            KERNELMAP_LEASE_S=str(LEASE_S),
        )
        start_worker(env, "cpu")
        procs = [start_controller(env, log, name) for name, log in logs.items()]
        seen: dict[int, set[str]] = {r: set() for r in run_ids}
        try:
            deadline = time.monotonic() + 240
            while True:
                for run_id, owner in _owners(sessions).items():
                    seen[run_id].add(owner)
                statuses = _statuses(sessions, run_ids)
                if all(st in ("finished", "failed") for st in statuses.values()):
                    break
                assert time.monotonic() < deadline, _logs(logs)
                assert all(p.poll() is None for p in procs), _logs(logs)
                time.sleep(0.2)
        finally:
            for p in procs:
                kill_group(p)
        assert set(statuses.values()) == {"finished"}, _logs(logs)
        text = {name: log.read_text() for name, log in logs.items()}
        for run_id in run_ids:
            assert len(seen[run_id]) == 1, f"run {run_id} changed owner: {seen[run_id]}"
            starters = [n for n, t in text.items() if re.search(rf"run {run_id} started\b", t)]
            assert starters == sorted(seen[run_id]), _logs(logs)
        _check_evaluations(sessions, run_ids, budget)
        engine.dispose()


def test_a_standby_takes_over_a_killed_owners_run(env, start_worker, tmp_path):
    budget = 8
    logs = {"a": tmp_path / "a.log", "b": tmp_path / "b.log"}
    with temporary_database("postgres", tmp_path / "pg") as url:
        engine = db.make_engine(url)
        db.ensure_schema(engine)
        sessions = db.session_factory(engine)
        (run_id,) = _runs(sessions, 1, budget)
        env = dict(
            env,
            KERNELMAP_DATABASE_URL=url,
            KERNELMAP_RUN_JOBS_IN_FLIGHT="2",
            KERNELMAP_LEASE_S=str(LEASE_S),
        )
        start_worker(env, "cpu")
        procs = {n: start_controller(env, log, n) for n, log in logs.items()}
        try:
            deadline = time.monotonic() + 120
            while True:  # mid-run: the owner has results in and jobs in flight
                owner = _owners(sessions).get(run_id)
                with sessions() as s:
                    done = s.scalar(
                        sa.select(sa.func.count()).select_from(Job).where(Job.status == "done")
                    )
                if owner is not None and done >= 2:
                    break
                assert time.monotonic() < deadline, _logs(logs)
                time.sleep(0.2)
            standby = "b" if owner == "a" else "a"
            kill_group(procs[owner])
            killed_at = time.monotonic()
            while _owners(sessions).get(run_id) != standby:
                # Within the lease plus one controller tick and a margin for a loaded machine.
                assert time.monotonic() - killed_at < LEASE_S + 1.0 + 10.0, _logs(logs)
                time.sleep(0.1)
            deadline = time.monotonic() + 240
            while _statuses(sessions, [run_id])[run_id] not in ("finished", "failed"):
                assert time.monotonic() < deadline, _logs(logs)
                assert procs[standby].poll() is None, _logs(logs)
                time.sleep(0.3)
        finally:
            for p in procs.values():
                kill_group(p)
        assert _statuses(sessions, [run_id])[run_id] == "finished", _logs(logs)
        assert re.search(rf"run {run_id} started", logs[standby].read_text()), _logs(logs)
        with sessions() as s:
            assert {j.status for j in s.scalars(sa.select(Job))} == {"done"}
        _check_evaluations(sessions, [run_id], budget)
        engine.dispose()
