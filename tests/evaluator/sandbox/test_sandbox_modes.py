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

ROOT = Path(__file__).resolve().parents[3]
TASK = ROOT / "examples/softmax/task.py"
CAND = ROOT / "examples/softmax/torch_softmax.py"
REFUSING = (
    "import sys; from evaluator_worker import seccomp; seccomp.install(denied=('unshare',));"
    " from services.cli.main import main; sys.exit(main(sys.argv[1:]))"
)


def _kernelmap(*args: str, refusing: bool, **env: str) -> subprocess.CompletedProcess:
    cmd = (
        [sys.executable, "-c", REFUSING, *args]
        if refusing
        else [sys.executable, "-m", "services.cli.main", *args]
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


def test_a_job_cannot_loosen_the_workers_sandbox_or_limits():
    from evaluator_worker.config import EvalConfig, job_config

    worker = EvalConfig(device="cpu", memory_limit_mb=4096, pool_bytes=1 << 30)
    asked = {
        "sandbox": "relaxed",
        "static_gate": False,
        "device": "cuda",
        "max_processes": 10**6,
        "pass_env": ["KERNELMAP_DATABASE_URL"],
        "sandbox_read_only": ["/"],
        "memory_limit_mb": 10**7,
        "pool_bytes": 1 << 40,
        "trials": 7,
    }
    got = job_config(worker, asked)
    assert (got.sandbox, got.static_gate, got.device) == ("strict", True, "cpu")
    assert got.max_processes == worker.max_processes and got.pass_env == ()
    assert got.sandbox_read_only == () and got.memory_limit_mb == 4096
    assert got.pool_bytes == 1 << 30 and got.trials == 7  # what a job may choose, it gets
    assert job_config(worker, {"memory_limit_mb": 1024}).memory_limit_mb == 1024


def test_the_validators_metadata_is_checked_field_by_field():
    from evaluator_worker.errors import TaskError
    from services.runs.task_validation import checked_meta

    good = {
        "dtype": "torch.float32",
        "atol": 1e-5,
        "rtol": 0,
        "allow_tf32": False,
        "n_shapes": 2,
        "input_bytes": 256,
        "output_bytes": None,
        "values_checked": True,
    }
    assert checked_meta(dict(good, extra="dropped")) == good
    for bad in (
        {"dtype": "torch.evil"},
        {"atol": float("nan")},
        {"rtol": 5},
        {"n_shapes": 10**15},
        {"input_bytes": -1},
        {"allow_tf32": "yes"},
    ):
        with pytest.raises(TaskError):
            checked_meta(dict(good, **bad))
