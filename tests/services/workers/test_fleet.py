"""services.workers.fleet on the real Redis at 127.0.0.1:6379: heartbeats, live workers, queues
(and services.workers.hardware: what a worker reports).

Each test has its own Redis key prefix, so its records and queues are private even when several
test runs share the server; its keys are deleted afterwards. Workers started as
``kernelmap worker`` subprocesses run in their own process group and are killed with it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pydantic
import pytest
import redis

from services.config import Settings
from services.workers import fleet, hardware
from services.workers.celery_app import EVALUATE, create_app

pytestmark = pytest.mark.redis

ROOT = Path(__file__).resolve().parents[3]
REDIS_URL = "redis://127.0.0.1:6379/0"
HARDWARE = {"device": "cpu", "gpu_name": None}


@pytest.fixture
def settings(tmp_path: Path) -> Iterator[Settings]:
    """Settings on the real Redis with a key prefix of this test's own."""
    prefix = f"kernelmap-test-{uuid.uuid4().hex[:12]}:"
    yield Settings(
        redis_url=REDIS_URL, redis_key_prefix=prefix, data_dir=tmp_path / "data", device="cpu"
    )
    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(match=f"{prefix}*"))
    if keys:
        client.delete(*keys)
    client.close()


def _wait(condition, timeout_s: float, step_s: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(step_s)
    return condition()


def _names(settings: Settings) -> list[str]:
    return [w["name"] for w in fleet.live_workers(settings)]


# -- heartbeats ------------------------------------------------------------------------------------


def test_a_heartbeat_is_a_live_worker_until_stopped(settings):
    with fleet.Heartbeat(settings, "w-b@host", "h100", HARDWARE, interval_s=5) as beat:
        (record,) = fleet.live_workers(settings)
        assert record["name"] == "w-b@host" and record["kind"] == "celery"
        assert record["hardware_class"] == "h100" and record["hardware"] == HARDWARE
        assert record["pid"] == os.getpid()
        assert (
            record["last_seen"].endswith("+00:00") and record["started_at"] <= record["last_seen"]
        )
        assert 0 <= record["age_s"] < 1
        client = redis.Redis.from_url(REDIS_URL)
        assert 14_000 < client.pttl(beat.key) <= 15_000  # 3 intervals
        assert beat.key == f"{settings.redis_key_prefix}kernelmap:workers:w-b@host"
        client.close()
        with fleet.Heartbeat(settings, "w-a@host", "cpu", HARDWARE, interval_s=5):
            assert _names(settings) == ["w-a@host", "w-b@host"]
        assert _names(settings) == ["w-b@host"]
    assert fleet.live_workers(settings) == []


def test_a_heartbeat_keeps_beating_and_ages_between_beats(settings):
    with fleet.Heartbeat(settings, "w@host", "cpu", HARDWARE, interval_s=0.4):
        first = fleet.live_workers(settings)[0]["last_seen"]
        time.sleep(0.25)
        aged = fleet.live_workers(settings)[0]
        assert 0.15 < aged["age_s"] < 0.4
        # Past its 1.2 s expiry the record is still there: the thread rewrote it.
        time.sleep(1.5)
        (record,) = fleet.live_workers(settings)
        assert record["last_seen"] > first and record["age_s"] < 1.2


def test_a_worker_that_stops_beating_disappears_once_its_record_expires(settings):
    beat = fleet.Heartbeat(settings, "w@host", "cpu", HARDWARE, interval_s=0.3).start()
    beat._stop.set()  # the worker dies: no more beats, and nobody deletes the key
    beat._thread.join()
    assert _names(settings) == ["w@host"]
    assert _wait(lambda: _names(settings) == [], timeout_s=3)
    beat._client.close()


def test_a_heartbeat_survives_redis_being_unreachable(settings, caplog):
    down = settings.model_copy(update={"redis_url": "redis://127.0.0.1:1/0"})
    beat = fleet.Heartbeat(down, "w@host", "cpu", HARDWARE, interval_s=0.1).start()
    time.sleep(0.35)
    assert beat._thread.is_alive()
    assert beat.beat() is False
    beat.stop()
    failures = [r for r in caplog.records if "heartbeat of w@host" in r.getMessage()]
    assert len(failures) == 1  # said once, not at every beat


def test_without_redis_there_is_no_fleet():
    settings = Settings(redis_url=None)
    assert fleet.live_workers(settings) == [] and fleet.queue_depths(settings) == {}


def test_an_unreachable_redis_is_a_typed_error(settings):
    down = settings.model_copy(update={"redis_url": "redis://:secret@127.0.0.1:1/0"})
    for read in (fleet.live_workers, fleet.queue_depths):
        with pytest.raises(fleet.FleetError, match="127.0.0.1:1") as info:
            read(down)
        assert "secret" not in str(info.value)


def test_records_of_other_prefixes_and_broken_records_are_ignored(settings):
    client = redis.Redis.from_url(REDIS_URL)
    other = settings.model_copy(update={"redis_key_prefix": settings.redis_key_prefix + "x*"})
    client.set(fleet.worker_key(settings, "broken@host"), b"not json", ex=30)
    try:
        with fleet.Heartbeat(other, "other@host", "cpu", HARDWARE, interval_s=5):
            assert fleet.live_workers(settings) == []
            assert _names(other) == ["other@host"]
    finally:
        client.delete(fleet.worker_key(other, "other@host"))
        client.close()


def test_a_bad_heartbeat_interval_says_how_to_fix_it(monkeypatch, settings):
    monkeypatch.setenv("KERNELMAP_HEARTBEAT_S", "soon")
    with pytest.raises(pydantic.ValidationError, match="heartbeat_s"):
        Settings()
    monkeypatch.setenv("KERNELMAP_HEARTBEAT_S", "2.5")
    assert Settings().heartbeat_s == 2.5
    monkeypatch.delenv("KERNELMAP_HEARTBEAT_S")
    assert Settings().heartbeat_s == 10.0
    beat = fleet.Heartbeat(settings.model_copy(update={"heartbeat_s": 2.5}), "w@h", "cpu", {})
    assert beat.interval_s == 2.5 and beat.ttl_s == 7.5
    beat.stop()


# -- queue depths ----------------------------------------------------------------------------------


def test_queue_depths_count_the_messages_celery_queued(settings):
    app = create_app(settings)
    try:
        for _ in range(3):
            app.send_task(EVALUATE, args=[{}], queue="eval.cpu")
        # Priorities put messages on kombu's sub-lists (eval.cpu\x06\x163...): counted too.
        app.send_task(EVALUATE, args=[{}], queue="eval.cpu", priority=5)
        app.send_task(EVALUATE, args=[{}], queue="eval.cpu", priority=9)
        app.send_task(EVALUATE, args=[{}], queue="eval.h100", priority=4)
        app.send_task(EVALUATE, args=[{}], queue="controller.7")  # not an evaluation queue
        assert fleet.queue_depths(settings) == {"eval.cpu": 5, "eval.h100": 1}
        client = redis.Redis.from_url(REDIS_URL)
        sub_lists = list(client.scan_iter(match=f"{settings.redis_key_prefix}eval.cpu\x06\x16*"))
        client.close()
        assert len(sub_lists) == 2

        # Taking jobs off the queue the way a worker does lowers the count, down to an
        # empty queue that is still listed (it is declared).
        with app.connection_for_read() as conn:
            queue = conn.SimpleQueue("eval.h100")
            queue.get(timeout=5).ack()
            assert fleet.queue_depths(settings) == {"eval.cpu": 5, "eval.h100": 0}
            cpu = conn.SimpleQueue("eval.cpu")
            for _ in range(5):
                cpu.get(timeout=5).ack()
            assert fleet.queue_depths(settings) == {"eval.cpu": 0, "eval.h100": 0}
            queue.close()
            cpu.close()
    finally:
        app.close()


def test_queue_depths_of_other_prefixes_are_not_counted(settings):
    other = settings.model_copy(update={"redis_key_prefix": settings.redis_key_prefix + "b:"})
    app = create_app(other)
    try:
        app.send_task(EVALUATE, args=[{}], queue="eval.cpu")
        assert fleet.queue_depths(other) == {"eval.cpu": 1}
        assert fleet.queue_depths(settings) == {}
    finally:
        app.close()


# -- hardware --------------------------------------------------------------------------------------


def test_hardware_info_on_a_cpu_machine():
    from importlib import metadata

    info = hardware.hardware_info("cpu")
    gpu_fields = ("gpu_name", "gpu_memory_mib", "compute_capability", "driver_version", "cuda")
    assert all(info[k] is None for k in gpu_fields)
    assert info["device"] == "cpu" and info["hostname"]
    assert info["torch"] == metadata.version("torch")
    assert info["triton"] == metadata.version("triton")
    assert info["python"] == ".".join(map(str, sys.version_info[:3]))
    assert info["cpu_count"] >= 1
    json.dumps(info)  # it travels as JSON


def test_hardware_info_for_cuda_asks_the_gpu_or_finds_none_without_failing():
    probe = subprocess.run(
        [sys.executable, "-c", "import torch; print(torch.cuda.is_available())"],
        capture_output=True,
        text=True,
    )
    has_gpu = probe.stdout.strip() == "True"
    info = hardware.hardware_info("cuda", timeout_s=120)
    assert info["device"] == "cuda" and info["torch"]
    if has_gpu:
        assert info["gpu_name"] and info["gpu_memory_mib"] > 1024
        assert info["compute_capability"].count(".") == 1 and info["driver_version"]
    else:
        assert info["gpu_name"] is None and info["gpu_memory_mib"] is None


# -- a real worker ---------------------------------------------------------------------------------


def _start_worker(settings: Settings, interval_s: float, log: Path) -> subprocess.Popen:
    env = dict(
        os.environ,
        KERNELMAP_REDIS_URL=settings.redis_url,
        KERNELMAP_REDIS_KEY_PREFIX=settings.redis_key_prefix,
        KERNELMAP_DATA_DIR=str(settings.data_dir),
        KERNELMAP_DEVICE="cpu",
        KERNELMAP_HEARTBEAT_S=str(interval_s),
    )
    env.pop("KERNELMAP_DATABASE_URL", None)
    return subprocess.Popen(
        [sys.executable, "-m", "services.cli.main", "worker", "--queue", "cpu"],
        cwd=ROOT,
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _kill_group(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(timeout=10)


def _wait_listed(settings: Settings, proc: subprocess.Popen, log: Path) -> dict:
    found: list[dict] = []

    def listed() -> bool:
        assert proc.poll() is None, log.read_text(errors="replace")[-3000:]
        found[:] = fleet.live_workers(settings)
        return bool(found)

    assert _wait(listed, timeout_s=60, step_s=0.1), log.read_text(errors="replace")[-3000:]
    return found[0]


@pytest.mark.slow
def test_a_killed_worker_is_listed_then_disappears_once_its_record_expires(settings, tmp_path):
    log = tmp_path / "worker.log"
    proc = _start_worker(settings, 1.0, log)
    try:
        record = _wait_listed(settings, proc, log)
        assert record["name"].startswith(f"kernelmap-cpu-{proc.pid}@")
        assert record["hardware_class"] == "cpu" and record["pid"] == proc.pid
        assert record["hardware"]["device"] == "cpu" and record["hardware"]["torch"]
        assert record["interval_s"] == 1.0
        assert _wait(lambda: "ready." in log.read_text(errors="replace"), timeout_s=60)
        # Still listed several expiries later: the heartbeat runs beside Celery.
        time.sleep(4)
        assert _names(settings) == [record["name"]]
        # The Celery worker consumes as the same name (jobs' results carry it).
        assert f"{record['name']} ready." in log.read_text(errors="replace")
        _kill_group(proc)
        assert _names(settings) == [record["name"]]  # nobody deleted it...
        started = time.monotonic()
        assert _wait(lambda: _names(settings) == [], timeout_s=10)  # ...it expired
        assert time.monotonic() - started < 3.5
    finally:
        _kill_group(proc)


@pytest.mark.slow
def test_a_worker_stopped_with_sigterm_removes_its_record_at_once(settings, tmp_path):
    log = tmp_path / "worker.log"
    proc = _start_worker(settings, 20.0, log)  # the record would live 60 s on its own
    try:
        _wait_listed(settings, proc, log)
        assert _wait(lambda: "ready." in log.read_text(errors="replace"), timeout_s=60)
        proc.send_signal(signal.SIGTERM)  # Celery's warm shutdown
        proc.wait(timeout=30)
        assert fleet.live_workers(settings) == []
    finally:
        _kill_group(proc)
