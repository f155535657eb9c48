"""When the torch.compile baseline is not timed, the message names the setting as a user sets
it (``KERNELMAP_COMPILE_BASELINE=...``), with a value that setting accepts."""

from __future__ import annotations

import re

import pytest

from evaluator_worker.config import EvalConfig
from evaluator_worker.judge import evaluate
from services.config import Settings

TASK = """
import torch
import torch.nn as nn

class Model(nn.Module):
    def forward(self, x):
        return torch.relu(x)

def get_inputs():
    return [torch.randn(64, 64)]

def get_init_inputs():
    return []
"""


@pytest.mark.parametrize("mode", ["auto", "never"])
def test_the_untimed_compile_baseline_names_the_real_setting(tmp_path, monkeypatch, mode):
    (tmp_path / "task.py").write_text(TASK)
    (tmp_path / "cand.py").write_text(TASK.replace("class Model(", "class ModelNew("))
    cfg = EvalConfig(device="cpu", timeout_s=30, compile_baseline=mode)
    res = evaluate(str(tmp_path / "task.py"), str(tmp_path / "cand.py"), cfg)
    said = [m for m in res.messages if "torch.compile baseline not timed" in m]
    assert len(said) == 1, res.messages
    assert "compile_baseline=" not in said[0]  # the evaluator's field, not the user's setting
    settings = re.findall(r"\b(KERNELMAP_([A-Z_]+))=(\w+)", said[0])
    assert settings, said[0]
    for var, name, value in settings:
        assert name.lower() in Settings.model_fields, var
        monkeypatch.setenv(var, value)
        assert Settings().compile_baseline == value  # a value the setting accepts
    assert ("KERNELMAP_COMPILE_BASELINE", "COMPILE_BASELINE", "always") in settings
