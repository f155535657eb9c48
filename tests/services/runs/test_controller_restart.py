"""A ``kernelmap controller`` killed mid-run with SIGKILL and started again, on the real
PostgreSQL and Redis with a real ``kernelmap worker``: the run continues to its budget, with no
duplicate candidate and no job evaluated twice."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from archive import db, repository, run_control
from archive.models import Candidate, Evaluation, Job
from archive.testing import temporary_database
from services.api.launch import create_queued_run
from tests.fleet_fixtures import kill_group, start_controller

pytestmark = [pytest.mark.redis, pytest.mark.postgres, pytest.mark.slow]

DATA = Path(__file__).parents[2] / "data"


def _evaluations(sessions, run_id: int) -> int:
    with sessions() as s:
        stmt = (
            sa.select(sa.func.count())
            .select_from(Evaluation)
            .join(Job, Job.id == Evaluation.job_id)
            .where(Job.run_id == run_id)
        )
        return int(s.scalar(stmt))


def test_a_killed_controller_is_restarted_and_the_run_completes(env, start_worker, tmp_path):
    log = tmp_path / "controller.log"
    with temporary_database("postgres", tmp_path / "pg") as url:
        engine = db.make_engine(url)
        db.ensure_schema(engine)
        sessions = db.session_factory(engine)
        with sessions() as s:
            alice = repository.add_user(s, "alice", "user")
            task = repository.add_task(
                s, name="softmax", source=(DATA / "softmax_task.py").read_text(), meta={}
            )
            task.owner_id = alice.id
            run = create_queued_run(
                s,
                alice,
                task,
                budget=10,
                hardware="cpu",
                seed_sources=[(DATA / "chunked_softmax.py").read_text()],
                timeout_s=60,
                emitters=["gaussian"],
            )
            s.commit()
            run_id = run.id
        env = dict(env, KERNELMAP_DATABASE_URL=url, KERNELMAP_RUN_JOBS_IN_FLIGHT="2")
        start_worker(env, "cpu")
        first = start_controller(env, log)
        try:
            deadline = time.monotonic() + 120
            while _evaluations(sessions, run_id) < 3:
                assert time.monotonic() < deadline, log.read_text()[-3000:]
                assert first.poll() is None, log.read_text()[-3000:]
                time.sleep(0.2)
        finally:
            kill_group(first)  # mid-run, jobs in flight
        with sessions() as s:
            assert run_control.status_of(s, run_id) == "running"
            in_flight = {j.id for j in s.scalars(sa.select(Job).where(Job.status == "dispatched"))}
        second = start_controller(env, log)
        try:
            deadline = time.monotonic() + 240
            while True:
                with sessions() as s:
                    status = run_control.status_of(s, run_id)
                if status in ("finished", "failed"):
                    break
                assert time.monotonic() < deadline, log.read_text()[-3000:]
                time.sleep(0.5)
        finally:
            kill_group(second)
        assert status == "finished", log.read_text()[-3000:]
        with sessions() as s:
            keys = s.scalars(sa.select(Candidate.key_sha256)).all()
            assert len(keys) == len(set(keys)), "a candidate was stored twice"
            jobs = {j.id: j for j in s.scalars(sa.select(Job).where(Job.run_id == run_id))}
            evaluated = s.scalars(sa.select(Evaluation.job_id)).all()
            assert len(evaluated) == len(set(evaluated))
            # The jobs in flight at the kill were sent again under their own ids and each
            # was stored once; no job is left behind.
            assert in_flight <= set(evaluated)
            assert {j.status for j in jobs.values()} == {"done"}
            per_candidate = s.execute(
                sa.select(Evaluation.candidate_id, sa.func.count()).group_by(
                    Evaluation.candidate_id
                )
            ).all()
            assert max(n for _, n in per_candidate) <= 2  # at most a tie's one re-measure
            summary = repository.latest_run_stat(s, run_id)
            assert summary.evaluations == 10
        engine.dispose()
