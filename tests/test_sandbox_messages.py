"""What comes back from a candidate is bounded and kept as its own text (issue 10, item 7)."""

from __future__ import annotations

from pathlib import Path

from evaluator_worker.config import EvalConfig
from evaluator_worker.judge import evaluate
from evaluator_worker.process import MAX_MESSAGE
from evaluator_worker.result import OUTPUT_CHARS
from services.report import render

ROOT = Path(__file__).resolve().parents[1]
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
