"""Comparison rules: tolerance, NaN positions, precision, constants."""

from __future__ import annotations

import torch

from evaluator_worker import compare

TOL = compare.Tolerance(1e-4, 1e-4)


def _ref(y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return y.double(), y.float()


def test_exact_result_passes():
    y = torch.randn(64, 100)
    y64, yr = _ref(y)
    assert compare.compare_tensor(y.clone(), y64, yr, TOL).ok


def test_bf16_arithmetic_on_fp32_task_fails_even_within_a_loose_tolerance():
    x = torch.randn(256, 512, dtype=torch.float64)
    y64 = torch.softmax(x, -1)
    yr = torch.softmax(x.float(), -1)
    y_bf16 = torch.softmax(x.bfloat16(), -1).float()
    loose = compare.Tolerance(1e-2, 1e-2)
    c = compare.compare_tensor(y_bf16, y64, yr, loose)
    assert not c.ok and "relative L2 error" in c.message


def test_nan_positions_must_match():
    y64 = torch.tensor([1.0, float("nan"), 3.0], dtype=torch.float64)
    yr = y64.float()
    assert compare.compare_tensor(yr.clone(), y64, yr, TOL).ok
    bad = torch.tensor([1.0, 2.0, 3.0])
    c = compare.compare_tensor(bad, y64, yr, TOL)
    assert not c.ok and "NaN" in c.message


def test_shape_and_dtype_must_match():
    y64, yr = _ref(torch.randn(4, 4))
    assert "shape" in compare.compare_tensor(torch.randn(16), y64, yr, TOL).message
    assert "dtype" in compare.compare_tensor(yr.double(), y64, yr, TOL).message


def test_first_mismatch_is_named():
    y64, yr = _ref(torch.randn(3, 5))
    y = yr.clone()
    y[1, 2] += 1.0
    c = compare.compare_tensor(y, y64, yr, TOL)
    assert not c.ok and "first at (1, 2)" in c.message and "1 of 15" in c.message


def test_constant_would_pass_detects_useless_outputs():
    assert compare.constant_would_pass(torch.zeros(100, dtype=torch.float64), TOL) == 0.0
    tiny = torch.rand(100, dtype=torch.float64) * 1e-6
    assert compare.constant_would_pass(tiny, TOL) is not None
    assert compare.constant_would_pass(torch.randn(100, dtype=torch.float64), TOL) is None
    # A scalar loss equals its own mean; only zero is a useful probe there.
    assert compare.constant_would_pass(torch.tensor([3.0], dtype=torch.float64), TOL) is None
