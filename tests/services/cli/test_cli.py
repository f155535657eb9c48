"""The ``kernelmap`` command as a user runs it: output formats, exit codes, timeouts."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
EX = ROOT / "examples" / "softmax"


def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "services.cli.main", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_json_output_is_exactly_one_object():
    p = run("eval", str(EX / "task.py"), str(EX / "torch_softmax.py"), "--device", "cpu", "--json")
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)  # raises if anything else is on stdout
    assert out["verdict"] == "OK" and out["correct"] is True
    assert out["speedup_vs_eager"] > 0 and out["speedup_vs_compile"] is None
    assert out["timing"]["candidate"]["median_ms"] > 0
    assert out["timing"]["candidate"]["n"] >= 100
    assert isinstance(out["features"], dict) and isinstance(out["messages"], list)


def test_wrong_kernel_reports_first_mismatch_and_exits_zero():
    p = run("eval", str(EX / "task.py"), str(EX / "wrong_softmax.py"), "--device", "cpu", "--json")
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["verdict"] == "INCORRECT" and out["correct"] is False
    assert any("first at" in m for m in out["messages"])


def test_readable_report():
    p = run("eval", str(EX / "task.py"), str(EX / "triton_softmax.py"), "--device", "cpu")
    assert p.returncode == 0, p.stderr
    assert "verdict   OK (correct)" in p.stdout
    assert "interpreter" in p.stdout
    assert "params    num_warps=4" in p.stdout


def test_param_is_injected_and_checked():
    ok = run(
        "eval",
        str(EX / "task.py"),
        str(EX / "triton_softmax.py"),
        "--device",
        "cpu",
        "--param",
        "num_warps=8",
        "--json",
    )
    assert json.loads(ok.stdout)["params"] == {"num_warps": 8}
    bad = run(
        "eval",
        str(EX / "task.py"),
        str(EX / "triton_softmax.py"),
        "--device",
        "cpu",
        "--param",
        "num_warps=3",
    )
    assert bad.returncode == 2
    assert "num_warps=3 is not one of [4, 8]" in bad.stderr


def test_invalid_task_is_one_line_on_stderr_with_exit_2(tmp_path):
    task = tmp_path / "task.py"
    task.write_text(
        "import torch\nclass Model(torch.nn.Module):\n    def forward(self, x):\n"
        "        return x +\n"
    )
    p = run("eval", str(task), str(EX / "torch_softmax.py"), "--json")
    assert p.returncode == 2
    assert p.stdout == ""
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "syntax error" in lines[0] and ":4:" in lines[0]


def test_usage_errors_exit_2():
    for args in (
        ["eval"],
        ["eval", "a.py"],
        ["frobnicate"],
        ["eval", str(EX / "task.py"), str(EX / "torch_softmax.py"), "--timeout", "-1"],
    ):
        p = run(*args)
        assert p.returncode == 2, args
        assert len(p.stderr.strip().splitlines()) == 1, p.stderr


def test_missing_candidate_exit_2():
    p = run("eval", str(EX / "task.py"), "does_not_exist.py")
    assert p.returncode == 2 and "candidate file not found" in p.stderr


def test_timeout_returns_soon_after_the_limit():
    cand = ROOT / "tests" / "corpus" / "candidates" / "infinite_loop.py"
    t0 = time.monotonic()
    p = run(
        "eval",
        str(ROOT / "tests/corpus/tasks/softmax.py"),
        str(cand),
        "--device",
        "cpu",
        "--timeout",
        "3",
        "--json",
    )
    elapsed = time.monotonic() - t0
    assert p.returncode == 0
    assert json.loads(p.stdout)["verdict"] == "TIMEOUT"
    assert elapsed < 3 + 12, elapsed  # interpreter start-up + zygote, then the 3 s limit
