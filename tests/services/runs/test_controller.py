"""The controller (services.runs.controller) on SQLite and PostgreSQL, with instant fake workers.

Runs are made the API's way (:func:`services.api.launch.create_queued_run`); the controller
starts them, honours pause, resume and cancel, the per-user limit, and resumes the runs a
stopped controller left ``running`` without duplicating candidates or evaluations.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from archive import repository, run_control
from archive.models import Candidate, Evaluation, Job, Proposal
from evolution.fakes import FakeDispatcher, bowl_ms, fake_result
from evolution.ports import Job as JobSpec
from services.api.launch import create_queued_run
from services.config import Settings
from services.runs import views
from services.runs.controller import Controller
from services.runs.seeds import check_seed

DATA = Path(__file__).parents[2] / "data"
TASK_SOURCE = (DATA / "softmax_task.py").read_text()
TEMPLATE = """\
import torch
import torch.nn as nn

SEARCH_SPACE = {"BLOCK": [64, 128, 256, 512, 1024, 2048, 4096], "num_warps": [1, 2, 4, 8, 16]}


class ModelNew(nn.Module):
    def forward(self, x):
        return torch.softmax(x, dim=-1)
"""


class SlowDispatcher(FakeDispatcher):
    """Instant fake results, but at most one per poll and a short wait: runs take a while."""

    def __init__(self, delay_s: float = 0.02, **kw) -> None:
        super().__init__(self._evaluate, **kw)
        self.delay_s = delay_s

    @staticmethod
    def _evaluate(job: JobSpec) -> dict:
        return fake_result(job.params, bowl_ms(job.params))

    def poll(self, timeout_s: float):
        time.sleep(self.delay_s)
        if not self._pending:
            return []
        head, self._pending = self._pending[:1], self._pending[1:]
        keep, self._pending = self._pending, []
        try:
            self._pending = head
            return super().poll(timeout_s)
        finally:
            self._pending = keep


class Harness:
    """A controller over ``sessions`` whose runs use fake dispatchers; counts template probes."""

    def __init__(self, sessions: sessionmaker[Session], tmp_path: Path, **settings) -> None:
        self.sessions = sessions
        self.settings = Settings(data_dir=tmp_path, run_jobs_in_flight=2, **settings)
        self.probes = 0
        self.delay_s = 0.02
        self.stop = threading.Event()
        self.controller = self._controller()
        self.thread: threading.Thread | None = None

    def _controller(self) -> Controller:
        return Controller(
            self.settings,
            self.sessions,
            make_dispatcher=lambda **kw: SlowDispatcher(self.delay_s, capacity=kw["workers"]),
            probe_templates=self._probe,
        )

    def _probe(self, source: str, device: str):
        self.probes += 1
        return [check_seed("template:fake", TEMPLATE)], ["fake: only one template"]

    def start(self) -> None:
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.controller.serve_forever, args=(self.stop,))
        self.thread.start()

    def restart(self) -> None:
        """Stop this controller (runs stay running) and start a fresh one on the database."""
        self.stop.set()
        self.thread.join(30)
        self.controller = self._controller()
        self.start()

    def close(self) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join(30)

    def new_run(
        self, owner_name: str = "alice", budget: int = 12, hardware: str = "cuda", **kw
    ) -> int:
        with self.sessions() as s:
            user = next((u for u in _users(s) if u.name == owner_name), None)
            if user is None:
                user = repository.add_user(s, owner_name, "user")
            task = repository.add_task(
                s, name="softmax", source=TASK_SOURCE, meta={}, validation={"ok": True}
            )
            task.owner_id = user.id
            run = create_queued_run(
                s, user, task, budget=budget, hardware=hardware, seed_sources=[], timeout_s=30, **kw
            )
            s.commit()
            return run.id

    def status(self, run_id: int) -> str:
        with self.sessions() as s:
            return run_control.status_of(s, run_id)

    def wait_status(self, run_id: int, *statuses: str, timeout_s: float = 60) -> str:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            status = self.status(run_id)
            if status in statuses:
                return status
            time.sleep(0.05)
        raise AssertionError(f"run {run_id} is {self.status(run_id)}, expected {statuses}")

    def evaluations(self, run_id: int) -> int:
        with self.sessions() as s:
            return int(
                s.scalar(
                    sa.select(sa.func.count())
                    .select_from(Evaluation)
                    .join(Job, Job.id == Evaluation.job_id)
                    .where(Job.run_id == run_id)
                )
            )

    def act(self, run_id: int, action: str) -> str:
        with self.sessions() as s:
            run = run_control.apply_action(s, run_id, action)
            s.commit()
            status = run.status
        self.controller.wake()
        return status


def _users(s: Session):
    from archive.models import User

    return list(s.scalars(sa.select(User)))


@pytest.fixture
def harness(sessions: sessionmaker[Session], tmp_path: Path):
    h = Harness(sessions, tmp_path)
    yield h
    h.close()


def _no_duplicates(sessions: sessionmaker[Session], run_id: int) -> None:
    with sessions() as s:
        keys = s.scalars(sa.select(Candidate.key_sha256).where(Candidate.run_id == run_id)).all()
        assert len(keys) == len(set(keys))
        per_job = s.execute(
            sa.select(Evaluation.job_id, sa.func.count())
            .where(Evaluation.job_id.is_not(None))
            .group_by(Evaluation.job_id)
            .having(sa.func.count() > 1)
        ).all()
        assert per_job == []
        per_candidate = s.execute(
            sa.select(Evaluation.candidate_id, sa.func.count())
            .join(Candidate, Candidate.id == Evaluation.candidate_id)
            .where(Candidate.run_id == run_id)
            .group_by(Evaluation.candidate_id)
            .having(sa.func.count() > 2)  # a tie is re-measured once; never more
        ).all()
        assert per_candidate == []


def test_queued_run_is_searched_to_its_budget(harness: Harness) -> None:
    run_id = harness.new_run(budget=12)
    harness.start()
    assert harness.wait_status(run_id, "finished", "failed") == "finished"
    assert harness.evaluations(run_id) == 12
    assert harness.probes == 1
    with harness.sessions() as s:
        config = repository.get_run(s, run_id).config
        assert config["templates_added"] is True
        assert [d["label"] for d in config["seeds"]] == ["reference", "template:fake"]
        assert config["template_notes"] == ["fake: only one template"]
        assert repository.current_elites(s, run_id)
    _no_duplicates(harness.sessions, run_id)


def test_a_cpu_run_is_labelled_as_the_cli_labels_it_and_says_why_it_stopped(
    harness: Harness,
) -> None:
    triton = "import triton\n" + TEMPLATE
    harness._probe = lambda source, device: ([check_seed("template:fake", triton)], ["a note"])
    harness.controller = harness._controller()
    run_id = harness.new_run(budget=4, hardware="cpu")
    with harness.sessions() as s:
        assert repository.get_run(s, run_id).objective_label == "cpu-time"  # no template yet
    harness.start()
    assert harness.wait_status(run_id, "finished", "failed") == "finished"
    with harness.sessions() as s:
        summary = views.run_summary(s, run_id)
    # A Triton template on the CPU: what `kernelmap run` says of the same set-up.
    assert summary["objective_label"] == "cpu-interpreter"
    assert summary["stop_reason"] == "budget"
    assert summary["templates"] == {
        "wanted": True,
        "matched": ["template:fake"],
        "notes": ["a note"],
    }
    assert summary["evaluations"] == summary["counts"]["evaluations"] == 4


def test_templates_can_be_left_out(harness: Harness) -> None:
    run_id = harness.new_run(budget=3, emitters=["cma"])
    harness.start()
    harness.wait_status(run_id, "finished", "failed")
    assert harness.probes == 0
    with harness.sessions() as s:
        config = repository.get_run(s, run_id).config
    assert config["variation"] == "cma" and [d["label"] for d in config["seeds"]] == ["reference"]


def test_per_user_limit_keeps_extra_runs_queued(sessions, tmp_path: Path) -> None:
    h = Harness(sessions, tmp_path, max_runs_per_user=1)
    h.delay_s = 0.05
    try:
        first = h.new_run("alice", budget=10)
        second = h.new_run("alice", budget=4)
        other = h.new_run("bob", budget=4)
        h.start()
        h.wait_status(first, "running")
        h.wait_status(other, "running", "finished")
        assert h.status(second) == "queued"  # alice has one run going already
        assert h.wait_status(first, "finished") == "finished"
        assert h.wait_status(second, "finished", timeout_s=60) == "finished"
    finally:
        h.close()


def test_pause_resume_cancel(harness: Harness) -> None:
    harness.delay_s = 0.05
    run_id = harness.new_run(budget=20)
    harness.start()
    harness.wait_status(run_id, "running")
    while harness.evaluations(run_id) < 3:
        time.sleep(0.05)
    assert harness.act(run_id, "pause") == "paused"
    time.sleep(1.0)  # the search stops within a poll; its jobs in flight are dropped
    done = harness.evaluations(run_id)
    time.sleep(0.5)
    assert harness.evaluations(run_id) == done and harness.status(run_id) == "paused"
    assert harness.act(run_id, "resume") == "queued"
    assert harness.wait_status(run_id, "finished") == "finished"
    assert harness.evaluations(run_id) >= 20
    _no_duplicates(harness.sessions, run_id)
    with pytest.raises(run_control.TransitionError, match="cannot pause a run that is finished"):
        harness.act(run_id, "pause")

    doomed = harness.new_run(budget=40)
    harness.wait_status(doomed, "running")
    assert harness.act(doomed, "cancel") == "cancelled"
    time.sleep(1.0)
    assert harness.status(doomed) == "cancelled" and doomed not in harness.controller.active_runs
    with harness.sessions() as s:
        assert repository.get_run(s, doomed).finished_at is not None


def test_restarted_controller_resumes_its_runs(harness: Harness) -> None:
    harness.delay_s = 0.05
    run_id = harness.new_run(budget=16)
    harness.start()
    while harness.evaluations(run_id) < 4:
        time.sleep(0.05)
    harness.restart()
    assert harness.status(run_id) in ("running", "finished")
    assert harness.wait_status(run_id, "finished") == "finished"
    assert harness.evaluations(run_id) >= 16
    assert harness.probes == 1  # templates were matched once and kept in the run
    _no_duplicates(harness.sessions, run_id)


def test_cli_runs_are_left_alone(harness: Harness) -> None:
    run_id = harness.new_run(budget=3)
    with harness.sessions() as s:
        repository.get_run(s, run_id).owner_id = None  # as `kernelmap run` makes them
        s.commit()
    harness.start()
    time.sleep(1.5)
    assert harness.status(run_id) == "queued" and harness.controller.active_runs == []


def test_a_resumed_search_does_not_repropose_what_the_first_owner_proposed(
    harness: Harness,
) -> None:
    """The emitters' seed advances with what the run has stored, so the second owner of a run
    explores on from the first instead of replaying its proposals."""
    harness.delay_s = 0.05
    run_id = harness.new_run(budget=24)
    harness.start()
    while harness.evaluations(run_id) < 3:
        time.sleep(0.02)
    harness.stop.set()
    harness.thread.join(30)
    with harness.sessions() as s:
        before = s.execute(
            sa.select(Proposal.id, Proposal.candidate_id).where(Proposal.run_id == run_id)
        ).all()
    boundary = max(pid for pid, _ in before)
    first = {cid for _, cid in before}
    harness.controller = harness._controller()
    harness.start()
    assert harness.wait_status(run_id, "finished") == "finished"
    with harness.sessions() as s:
        after = s.scalars(
            sa.select(Proposal.candidate_id).where(
                Proposal.run_id == run_id, Proposal.id > boundary
            )
        ).all()
    assert after, "the second owner proposed nothing"
    replayed = [cid for cid in after if cid in first]
    assert replayed == [], f"{len(replayed)} of {len(after)} proposals replayed the first owner's"


def test_the_emitters_seed_advances_with_what_the_run_stored() -> None:
    from services.runs.wiring import emitter_seed

    assert emitter_seed(1234, 0) == 1234  # a fresh run draws from its own seed
    resumed = {emitter_seed(1234, n) for n in (1, 7, 40)}
    assert 1234 not in resumed and len(resumed) == 3  # each stored state: a stream of its own
    assert emitter_seed(1234, 7) == emitter_seed(1234, 7)  # deterministic
    assert all(0 <= s < 2**31 for s in resumed)


def test_a_bad_controller_name_is_refused(sessions, tmp_path: Path) -> None:
    from services.runs.controller import ControllerError

    with pytest.raises(ControllerError, match="controller name 'bad name'"):
        Controller(Settings(data_dir=tmp_path), sessions, name="bad name")
    assert Controller(Settings(data_dir=tmp_path), sessions, name="ctl-1.eu:a@b").name
