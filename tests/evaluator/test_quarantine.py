"""Speedups over 10x: confirmed by the judge's own clock, or held in quarantine."""

from __future__ import annotations

from pathlib import Path

from evaluator_worker.config import EvalConfig
from evaluator_worker.judge import evaluate
from evaluator_worker.verdict import Verdict

SLOW_TASK = '''
import torch
import torch.nn as nn

class Model(nn.Module):
    """Softmax one row at a time: a deliberately slow reference."""
    def forward(self, x):
        return torch.stack([torch.softmax(row, dim=0) for row in x])

def get_inputs():
    return [torch.randn(512, 64)]

def get_init_inputs():
    return []
'''

FAST = """
import torch
import torch.nn as nn

class ModelNew(nn.Module):
    def forward(self, x):
        return torch.softmax(x, dim=-1)
"""

# Reaches into the evaluator's own timing module and stops its clock: only possible with the
# static gate off, it stands for a low-level forgery of the candidate's own timings.
FORGED = (
    FAST
    + """
import sys
_t = [0.0]
def _fake():
    _t[0] += 1e-9
    return _t[0]
sys.modules["evaluator_worker.timing"]._perf_counter = _fake
"""
)


def _write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_honest_large_speedup_is_confirmed(tmp_path):
    task = _write(tmp_path, "task.py", SLOW_TASK)
    cand = _write(tmp_path, "fast.py", FAST)
    res = evaluate(str(task), str(cand), EvalConfig(device="cpu", timeout_s=60))
    assert res.verdict == Verdict.OK, res.messages
    assert res.speedup_vs_eager > 10
    assert res.features["independent_speedup_vs_eager"] > 5
    assert any("confirmed by an independent re-measure" in m for m in res.messages)


def test_forged_timings_stay_quarantined(tmp_path):
    task = _write(tmp_path, "task.py", SLOW_TASK)
    cand = _write(tmp_path, "forged.py", FORGED)
    res = evaluate(str(task), str(cand), EvalConfig(device="cpu", timeout_s=60, static_gate=False))
    assert res.verdict == Verdict.QUARANTINE, res.messages
    claimed = res.speedup_vs_eager
    assert claimed > 1000
    assert res.features["independent_speedup_vs_eager"] < 0.5 * claimed
    assert any("not trusted" in m for m in res.messages)
