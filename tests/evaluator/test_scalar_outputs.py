"""Tasks whose output is a 0-dim tensor (losses) are judged like any other."""

from __future__ import annotations

from evaluator_worker.config import EvalConfig
from evaluator_worker.judge import evaluate
from evaluator_worker.verdict import Verdict

TASK = """
import torch
import torch.nn as nn

class Model(nn.Module):
    def forward(self, predictions, targets):
        return torch.mean((predictions - targets) ** 2)

def get_inputs():
    return [torch.randn(64, 100), torch.randn(64, 100)]

def get_init_inputs():
    return []
"""

HONEST = TASK.replace("class Model(", "class ModelNew(")
ZERO = HONEST.replace(
    "return torch.mean((predictions - targets) ** 2)",
    "return torch.zeros((), dtype=predictions.dtype)",
)
SHAPE = HONEST.replace(
    "return torch.mean((predictions - targets) ** 2)",
    "return torch.mean((predictions - targets) ** 2).reshape(1)",
)


def _eval(tmp_path, source):
    (tmp_path / "task.py").write_text(TASK)
    (tmp_path / "cand.py").write_text(source)
    return evaluate(
        str(tmp_path / "task.py"), str(tmp_path / "cand.py"), EvalConfig(device="cpu", timeout_s=30)
    )


def test_an_honest_loss_is_ok(tmp_path):
    res = _eval(tmp_path, HONEST)
    assert res.verdict == Verdict.OK, res.messages
    assert res.speedup_vs_eager > 0


def test_a_zero_loss_is_incorrect(tmp_path):
    res = _eval(tmp_path, ZERO)
    assert res.verdict == Verdict.INCORRECT and "expected" in res.messages[-1]


def test_a_loss_of_the_wrong_shape_is_incorrect(tmp_path):
    res = _eval(tmp_path, SHAPE)
    assert res.verdict == Verdict.INCORRECT and "shape" in res.messages[-1]
