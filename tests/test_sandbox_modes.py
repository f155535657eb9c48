"""Strict and relaxed sandbox modes, on this host and on a simulated host that refuses namespaces.

The refusing host is simulated for real: the command runs under a seccomp filter that denies
``unshare`` (evaluator_worker.seccomp), so every namespace the sandbox asks for is refused by
the kernel exactly as in a container without user namespaces.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from evaluator_worker import sandbox

ROOT = Path(__file__).resolve().parents[1]
TASK = ROOT / "examples/softmax/task.py"
CAND = ROOT / "examples/softmax/torch_softmax.py"
REFUSING = (
    "import sys; from evaluator_worker import seccomp; seccomp.install(denied=('unshare',));"
    " from services.cli import main; sys.exit(main(sys.argv[1:]))"
)


def _kernelmap(*args: str, refusing: bool, **env: str) -> subprocess.CompletedProcess:
    cmd = (
        [sys.executable, "-c", REFUSING, *args]
        if refusing
        else [sys.executable, "-m", "services.cli", *args]
    )
    full = {**os.environ, "PYTHONPATH": str(ROOT), "KERNELMAP_DEVICE": "cpu", **env}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=full, cwd=ROOT)


def test_this_host_sets_up_every_layer():
    report = sandbox.report("cpu", "strict")
    assert report == {"mode": "strict", "level": "strict", "missing": []}
    assert sandbox.refusal(report) is None


def test_strict_eval_refuses_on_a_host_without_namespaces_with_one_line():
    out = _kernelmap("eval", str(TASK), str(CAND), "--json", refusing=True)
    assert out.returncode == 2, out.stdout + out.stderr
    lines = [ln for ln in out.stderr.splitlines() if ln.startswith("kernelmap: error:")]
    assert len(lines) == 1, out.stderr
    assert "the sandbox cannot be set up" in lines[0] and "namespaces" in lines[0]
    assert "KERNELMAP_SANDBOX=relaxed" in lines[0] and "docs/cluster.md" in lines[0]
    assert out.stdout.strip() == ""  # no result: nothing was evaluated


def test_relaxed_eval_runs_and_every_result_says_what_was_missing():
    out = _kernelmap(
        "eval", str(TASK), str(CAND), "--json", refusing=True, KERNELMAP_SANDBOX="relaxed"
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["verdict"] == "OK", result["messages"]
    box = result["features"]["sandbox"]
    assert box["level"] == "relaxed"
    assert any("namespaces" in m for m in box["missing"]), box
    assert any(m.startswith("sandbox: relaxed, missing namespaces") for m in result["messages"])


def test_strict_eval_on_this_host_reports_a_strict_sandbox():
    out = _kernelmap("eval", str(TASK), str(CAND), "--json", refusing=False)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    box = result["features"]["sandbox"]
    assert box["level"] == "strict" and box["missing"] == []
    assert result["features"]["network_isolated"] is True


@pytest.mark.parametrize("mode,level", [("strict", "refusing"), ("relaxed", "relaxed")])
def test_a_refusing_host_is_reported_with_its_level(mode, level):
    code = (
        "import json; from evaluator_worker import seccomp, sandbox;"
        " seccomp.install(denied=('unshare',));"
        f" print(json.dumps(sandbox.report('cpu', {mode!r})))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    report = json.loads(out.stdout)
    assert report["level"] == level and report["mode"] == mode
    line = sandbox.refusal(report)
    if level == "refusing":
        assert line and "refuses untrusted jobs" in line and "namespaces" in line
    else:
        assert line is None


def test_a_strict_worker_refuses_to_start_on_a_refusing_host(tmp_path):
    out = _kernelmap(
        "worker",
        refusing=True,
        KERNELMAP_REDIS_URL="redis://127.0.0.1:6379/15",
        KERNELMAP_DATA_DIR=str(tmp_path),
    )
    assert out.returncode == 2, out.stderr[-2000:]
    assert "refuses untrusted jobs" in out.stderr and "namespaces" in out.stderr


def test_the_environment_comes_from_an_allow_list():
    env = {
        "PATH": "/usr/bin",
        "LANG": "C.UTF-8",
        "LC_ALL": "C",
        "CUDA_VISIBLE_DEVICES": "0",
        "KERNELMAP_DATABASE_URL": "postgresql://u:secret@h/db",
        "KERNELMAP_API_KEY": "km_secret",
        "AWS_SECRET_ACCESS_KEY": "x",
        "HOME": "/root",
    }
    assert sandbox.environment(env) == {
        "PATH": "/usr/bin",
        "LANG": "C.UTF-8",
        "LC_ALL": "C",
        "CUDA_VISIBLE_DEVICES": "0",
    }
