"""``kernelmap serve`` in embedded mode, as a user starts it: one command, nothing installed.

The server runs as a real process with its private redis-server (unix socket in the data
directory), its local CPU worker and its controller; the test talks to it over HTTP only.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.redis]

DATA = Path(__file__).parents[2] / "data"
ROOT = Path(__file__).resolve().parents[3]
CLI = "import sys; from services.cli.main import main; sys.exit(main(sys.argv[1:]))"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KERNELMAP_")}
    env["KERNELMAP_DEVICE"] = "cpu"
    env["KERNELMAP_TIMEOUT_S"] = "60"
    env["PYTHONPATH"] = str(ROOT)
    return env


def _serve_cmd(data_dir: Path, port: int) -> list[str]:
    return [sys.executable, "-c", CLI, "serve", "--port", str(port), "--data-dir", str(data_dir)]


def _serve(data_dir: Path, port: int) -> subprocess.Popen:
    return subprocess.Popen(
        _serve_cmd(data_dir, port),
        env=_serve_env(),
        stdout=subprocess.PIPE,
        stderr=open(data_dir / "serve.err", "wb"),  # noqa: SIM115 - closed with the process
        text=True,
        start_new_session=True,
    )


def _wait_healthy(base: str, proc: subprocess.Popen, data_dir: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError((data_dir / "serve.err").read_text()[-3000:])
        try:
            if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    raise AssertionError("serve did not become healthy: " + (data_dir / "serve.err").read_text())


def _stop(proc: subprocess.Popen) -> int:
    os.kill(proc.pid, signal.SIGTERM)
    try:
        return proc.wait(60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def _children_of(pid: int) -> list[str]:
    out = subprocess.run(["ps", "-eo", "pid,ppid,pgid,args"], capture_output=True, text=True)
    return [ln for ln in out.stdout.splitlines()[1:] if ln.split()[2] == str(pid)]


def test_serve_runs_a_search_end_to_end(tmp_path: Path) -> None:
    broker_pid = 0
    data_dir = tmp_path / "km"
    data_dir.mkdir()
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    proc = _serve(data_dir, port)
    try:
        _wait_healthy(base, proc, data_dir)
        key = proc.stdout.readline().strip()
        broker_pid = int((data_dir / "redis" / "redis.pid").read_text())
        assert key.startswith("km_"), "the first serve prints a one-time admin key on stdout"
        auth = {"Authorization": f"Bearer {key}"}
        assert httpx.get(f"{base}/api/v1/tasks").status_code == 401

        with open(DATA / "softmax_task.py", "rb") as f:
            r = httpx.post(f"{base}/api/v1/tasks", headers=auth, files={"file": f}, timeout=120)
        assert r.status_code == 201, r.text
        task_id = r.json()["id"]
        body = {"task_id": task_id, "budget": 2, "emitters": []}
        r = httpx.post(f"{base}/api/v1/runs", headers=auth, json=body)
        assert r.status_code == 201, r.text
        run_id = r.json()["id"]

        deadline = time.monotonic() + 240
        summary: dict = {}
        while time.monotonic() < deadline:
            summary = httpx.get(f"{base}/api/v1/runs/{run_id}", headers=auth).json()
            if summary["status"] in ("finished", "failed"):
                break
            time.sleep(1)
        assert summary["status"] == "finished", summary
        assert summary["evaluations"] >= 1 and summary["verdicts"].get("OK", 0) >= 1
        best = httpx.get(f"{base}/api/v1/runs/{run_id}/best.py", headers=auth)
        assert best.status_code == 200 and "class ModelNew" in best.text
        # The dashboard is served by the same process: the admin key signs in and sees the run.
        with httpx.Client(base_url=base) as browser:
            form = browser.get("/login")
            token = re.search(r'name="login_token" value="([^"]+)"', form.text).group(1)
            r = browser.post("/login", data={"api_key": key, "login_token": token})
            assert r.status_code == 303 and r.headers["location"] == "/runs"
            page = browser.get(f"/runs/{run_id}")
            assert page.status_code == 200 and "finished" in page.text

        # A second serve on the same data directory while this one runs would drive the same
        # SQLite database and broker: it is refused, with a message that says why.
        second = subprocess.run(
            _serve_cmd(data_dir, _free_port()),
            env=_serve_env(),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert second.returncode != 0
        assert f"another kernelmap process (pid {proc.pid}" in second.stderr, second.stderr
        assert httpx.get(f"{base}/healthz").status_code == 200  # the first one is untouched
    finally:
        code = _stop(proc)
    assert code == 0, (data_dir / "serve.err").read_text()[-3000:]
    assert _children_of(proc.pid) == [], "serve left its worker running"
    assert not Path(f"/proc/{broker_pid}").exists(), "serve left its broker running"

    # A second start on the same data directory: same database, no new admin key.
    proc = _serve(data_dir, port)
    try:
        _wait_healthy(base, proc, data_dir)
        r = httpx.get(f"{base}/api/v1/runs/{run_id}", headers=auth)
        assert r.status_code == 200 and r.json()["status"] == "finished"
    finally:
        _stop(proc)
    assert proc.stdout.read().strip() == ""
