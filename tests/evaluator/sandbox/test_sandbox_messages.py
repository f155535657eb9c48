"""What comes back from a candidate is bounded and kept as its own text (issue 10, item 7)."""

from __future__ import annotations

from pathlib import Path

from evaluator_worker.config import EvalConfig
from evaluator_worker.judge import evaluate
from evaluator_worker.process import MAX_MESSAGE
from evaluator_worker.result import OUTPUT_CHARS
from services.cli.report import render

ROOT = Path(__file__).resolve().parents[3]
TASK = ROOT / "examples/softmax/task.py"
BODY = """
import torch


class ModelNew(torch.nn.Module):
    def forward(self, x):
        return torch.softmax(x, dim=1)
"""


def _eval(tmp_path, head: str):
    cand = tmp_path / "cand.py"
    cand.write_text(head + BODY)
    return evaluate(str(TASK), str(cand), EvalConfig(device="cpu", timeout_s=60))


def test_a_huge_exception_message_is_cut(tmp_path):
    res = _eval(tmp_path, "raise RuntimeError('A' * 1_000_000)\n")
    assert res.verdict.value == "LOAD_ERROR"
    assert max(len(m) for m in res.messages) <= MAX_MESSAGE + 200
    assert any("AAAA" in m for m in res.messages)  # shown, but bounded


def test_printed_output_is_bounded_kept_apart_and_escaped(tmp_path):
    head = "print('\\x1b[2J' + 'B' * 100_000)\nprint('last line of the candidate')\n"
    res = _eval(tmp_path, head)
    assert res.verdict.value == "OK", res.messages
    assert res.output is not None and len(res.output) <= OUTPUT_CHARS
    assert res.output.endswith("last line of the candidate")
    assert not any("BBBB" in m for m in res.messages)  # not mixed into the judge's reasons
    text = render(res, "cand")
    assert "\x1b" not in text and "last line of the candidate" in text
    assert res.to_dict()["output"] == res.output


FORGER = """
import os, socket
from evaluator_worker import protocol

for fd in range(3, 64):
    try:
        s = socket.socket(fileno=os.dup(fd))
    except OSError:
        continue
    if s.family == socket.AF_UNIX:
        protocol.send(s, {"error": {"kind": "__KIND__", "message": "forged"}})
        protocol.send(s, {"sandbox": {"level": "strict", "missing": []}})
        break
"""


def test_a_forged_reply_can_only_fail_the_candidate(tmp_path):
    for kind in ("SANDBOX_UNAVAILABLE", "TASK_ERROR", "OK", "QUARANTINE"):
        cand = tmp_path / f"forge_{kind}.py"
        cand.write_text(FORGER.replace("__KIND__", kind) + BODY)
        cfg = EvalConfig(device="cpu", timeout_s=60, static_gate=False)
        res = evaluate(str(TASK), str(cand), cfg)  # no SandboxError, no TaskError raised
        assert not res.correct and res.verdict.value != "OK", (kind, res.verdict, res.messages)


def test_the_sandbox_report_comes_from_before_untrusted_code(tmp_path):
    from evaluator_worker.judge import Evaluator

    with Evaluator(EvalConfig(device="cpu", cuda_memory_fraction=0.5)) as ev:
        proc = ev._spawn(False, files={"task.py": TASK.read_text()}, role="task")
        try:
            proc.request(
                {
                    "op": "setup",
                    "role": "task",
                    "task_path": proc.files["task.py"],
                    "device": "cpu",
                },
                60,
                "loading the task",
            )
            assert proc.applied["level"] == "strict" and proc.applied["missing"] == []
            assert proc.applied["cuda_memory_fraction"] == 0.5  # what child.py applies on CUDA
        finally:
            proc.close()
