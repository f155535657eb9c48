"""Interpreted timing (CPU searches): how many warm-up calls and samples each variant gets."""

from __future__ import annotations

import types

import pytest
import torch

from evaluator_worker import measure
from evaluator_worker.config import EvalConfig
from services.config import Settings


class FakeProcess:
    """A candidate or baseline process that answers ``time`` requests with constant samples."""

    def __init__(self, log: list[dict]) -> None:
        self.log, self.alive = log, True

    def stage(self, name: str, timeout_s: float) -> None:
        pass

    def request(self, req: dict, timeout_s: float, what: str) -> dict:
        self.log.append(req)
        n = req["n"]
        return {"samples_ms": [1.0] * n, "synced_ms": [], "wall_ms": [1.0] * n}


def _requests(interpret: bool, n_samples: int, **cfg) -> list[dict]:
    log: list[dict] = []
    run = types.SimpleNamespace(
        cfg=EvalConfig(device="cpu", **cfg),
        result=types.SimpleNamespace(messages=[]),
        device=torch.device("cpu"),
        interpret=interpret,
        pool_size=lambda n: 2,
        new_pool=lambda n: [{"seed": i} for i in range(n)],
        _setup=lambda role, interpret, **kw: (FakeProcess(log), {}),
    )
    timing, _ = measure.measure(run, FakeProcess(log), n_samples)
    assert timing.candidate.median_ms == 1.0
    return log


def test_interpreted_timing_warms_each_variant_with_two_calls_not_ten():
    reqs = _requests(True, 20, time_interpreted=True)
    assert {r["warmup_calls"] for r in reqs} == {2}
    assert sum(r["n"] for r in reqs if r["variant"] == "candidate") == 20


def test_compiled_timing_keeps_its_ten_warmup_calls():
    reqs = _requests(False, 100)
    assert {r["warmup_calls"] for r in reqs} == {10}
    assert sum(r["n"] for r in reqs if r["variant"] == "candidate") == 100


def test_interpreter_samples_come_from_the_settings_and_have_a_floor(monkeypatch):
    monkeypatch.setenv("KERNELMAP_INTERPRETER_SAMPLES", "5")
    assert Settings().eval_config().interpreter_samples == 5
    monkeypatch.setenv("KERNELMAP_INTERPRETER_SAMPLES", "4")
    with pytest.raises(ValueError, match="interpreter_samples"):
        Settings()
    with pytest.raises(ValueError, match="interpreter_samples must be at least 5, got 3"):
        EvalConfig(interpreter_samples=3)
    with pytest.raises(ValueError, match="interpreter_warmup_calls must be at least 1"):
        EvalConfig(interpreter_warmup_calls=0)
