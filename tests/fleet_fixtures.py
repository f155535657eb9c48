"""Fixtures of the fleet tests: a private Redis key prefix per test, and real workers.

Each test has its own Redis key prefix (kombu's ``global_keyprefix``), so its queues, bindings
and unacknowledged-message index are private even when several test runs share the server;
the keys are deleted afterwards. Workers are ``kernelmap worker`` subprocesses in their own
process group, killed with the whole group whatever the outcome.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from services.config import Settings
from services.dispatch.celery_queue import CeleryDispatcher
from services.workers.celery_app import create_app

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data"
TASK = DATA / "softmax_task.py"
SEED = DATA / "chunked_softmax.py"
REDIS_URL = "redis://127.0.0.1:6379/0"


def fleet_settings(env: dict[str, str]) -> Settings:
    """The settings a test's processes read from ``env`` (its broker, prefix, data dir)."""
    visibility = env.get("KERNELMAP_VISIBILITY_TIMEOUT_S")
    return Settings(
        redis_url=env["KERNELMAP_REDIS_URL"],
        redis_key_prefix=env["KERNELMAP_REDIS_KEY_PREFIX"],
        data_dir=Path(env["KERNELMAP_DATA_DIR"]),
        device="cpu",
        visibility_timeout_s=float(visibility) if visibility else None,
    )


def start_controller(env: dict[str, str], log: Path, name: str | None = None) -> subprocess.Popen:
    """A ``kernelmap controller`` process (named ``name``) in its own process group, logging
    to ``log``; stop it with :func:`kill_group`."""
    cmd = [sys.executable, "-m", "services.cli.main", "controller"]
    return subprocess.Popen(
        [*cmd, "--id", name] if name else cmd,
        cwd=ROOT,
        env=env,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL ``proc``'s whole process group (if it still runs) and reap it."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(10)


def new_queue() -> str:
    """A hardware class (queue ``eval.<class>``) no other test uses."""
    return f"test{uuid.uuid4().hex[:8]}"


def celery_dispatcher(env: dict[str, str], queue: str, run_id: str, capacity: int = 1, **kw):
    """A :class:`CeleryDispatcher` on the test's broker for the softmax task."""
    return CeleryDispatcher(
        create_app(fleet_settings(env)),
        hardware_class=queue,
        run_id=run_id,
        capacity=capacity,
        task_source=TASK.read_text(),
        **kw,
    )


@pytest.fixture
def env(tmp_path: Path) -> Iterator[dict[str, str]]:
    """The environment of a test's processes: a private key prefix and data directory."""
    prefix = f"kernelmap-test-{uuid.uuid4().hex[:12]}:"
    e = dict(
        os.environ,
        KERNELMAP_REDIS_URL=REDIS_URL,
        KERNELMAP_REDIS_KEY_PREFIX=prefix,
        KERNELMAP_DATA_DIR=str(tmp_path / "data"),
        KERNELMAP_DEVICE="cpu",
    )
    e.pop("KERNELMAP_DATABASE_URL", None)
    yield e
    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(match=f"{prefix}*"))
    if keys:
        client.delete(*keys)
    client.close()


class Worker:
    """A ``kernelmap worker`` subprocess, its own process group, its log in a file."""

    def __init__(self, env: dict[str, str], queue: str, log: Path) -> None:
        self.log = log
        self._out = log.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "services.cli.main", "worker", "--queue", queue],
            cwd=ROOT,
            env=env,
            stdout=self._out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, pattern: str, timeout_s: float = 30.0) -> re.Match:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            found = re.search(pattern, self.text())
            if found:
                return found
            assert self.proc.poll() is None, f"worker exited:\n{self.text()[-3000:]}"
            time.sleep(0.05)
        raise AssertionError(f"no {pattern!r} in the worker's log:\n{self.text()[-3000:]}")

    def kill(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait(timeout=10)
        self._out.close()


@pytest.fixture
def start_worker(tmp_path: Path) -> Iterator[Callable[..., Worker]]:
    """Starts workers (waiting until they consume); kills every one of them afterwards."""
    workers: list[Worker] = []

    def start(env: dict[str, str], queue: str) -> Worker:
        w = Worker(env, queue, tmp_path / f"worker{len(workers)}.log")
        workers.append(w)
        w.wait_for(r"ready\.")
        return w

    yield start
    for w in workers:
        w.kill()
