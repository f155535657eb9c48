"""Comparing a candidate's output with the float64 reference (pure functions).

Pass means all of: the same structure, shape and dtype; NaN/Inf at the same positions as
the reference; every finite element within ``atol + rtol * |y64|``; and the relative L2 error
against float64 within a small multiple of the reference's own error in the task dtype (so
bf16/fp16/TF32 arithmetic on an fp32 task fails even where the elementwise tolerance is loose).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

ERR_FACTOR = 16.0
ERR_EPS_MULTIPLE = 64.0


@dataclasses.dataclass(frozen=True)
class Tolerance:
    """Elementwise tolerance ``|y - y64| <= atol + rtol * |y64|``."""

    atol: float
    rtol: float


def default_tolerance(dtype: torch.dtype) -> Tolerance:
    """architecture.md defaults: fp32 1e-4, fp16/bf16 1e-2 (float64 1e-7)."""
    if dtype in (torch.float16, torch.bfloat16):
        return Tolerance(1e-2, 1e-2)
    if dtype == torch.float64:
        return Tolerance(1e-7, 1e-7)
    return Tolerance(1e-4, 1e-4)


@dataclasses.dataclass
class Comparison:
    """Outcome of a comparison; ``message`` explains the first failure."""

    ok: bool
    message: str = ""
    rel_l2: float = 0.0


def flatten(out: Any) -> list[Any]:
    """A forward's output as a list (a tensor, or a tuple/list of tensors)."""
    items = list(out) if isinstance(out, (tuple, list)) else [out]
    return [y.detach() if isinstance(y, torch.Tensor) else y for y in items]


def _rel_l2(y: torch.Tensor, y64: torch.Tensor, finite: torch.Tensor) -> float:
    ref = torch.where(finite, y64, 0.0)
    diff = torch.where(finite, y.double() - y64, 0.0)
    denom = float(torch.linalg.vector_norm(ref))
    num = float(torch.linalg.vector_norm(diff))
    if denom == 0.0:
        return 0.0 if num == 0.0 else float("inf")
    return num / denom


def _index(flat_i: int, shape: torch.Size) -> tuple[int, ...]:
    idx = []
    for d in reversed(shape):
        idx.append(flat_i % d)
        flat_i //= d
    return tuple(reversed(idx))


def compare_tensor(
    y: torch.Tensor, y64: torch.Tensor, yref: torch.Tensor, tol: Tolerance, what: str = "output"
) -> Comparison:
    """Compare one output tensor ``y`` with the float64 reference ``y64``.

    ``yref`` is the reference computed in the task dtype; its error against ``y64`` sets
    the allowed relative L2 error.
    """
    if tuple(y.shape) != tuple(yref.shape):
        return Comparison(False, f"{what} has shape {tuple(y.shape)}, expected {tuple(yref.shape)}")
    if y.dtype != yref.dtype:
        return Comparison(False, f"{what} has dtype {y.dtype}, expected {yref.dtype}")
    if not y.is_floating_point():
        if torch.equal(y.to(yref.device), yref):
            return Comparison(True)
        bad = int((y.to(yref.device) != yref).sum())
        return Comparison(False, f"{what}: {bad} of {y.numel()} integer elements differ")
    y = y.to(y64.device)
    y64 = y64.double()
    for name, f in (("NaN", torch.isnan), ("+Inf", torch.isposinf), ("-Inf", torch.isneginf)):
        mism = f(y) != f(y64)
        if bool(mism.any()):
            i = int(mism.reshape(-1).nonzero()[0])
            return Comparison(
                False,
                f"{what}: {name} positions differ from the reference ({int(mism.sum())} elements;"
                f" first at {_index(i, y.shape)}: got {float(y.reshape(-1)[i])!r},"
                f" expected {float(y64.reshape(-1)[i])!r})",
            )
    finite = torch.isfinite(y64)
    diff = (y.double() - y64).abs()
    bound = tol.atol + tol.rtol * y64.abs()
    bad = finite & (diff > bound)
    rel = _rel_l2(y, y64, finite)
    if bool(bad.any()):
        nbad = int(bad.sum())
        i = int(bad.reshape(-1).nonzero()[0])
        return Comparison(
            False,
            f"{what}: {nbad} of {y.numel()} elements outside atol={tol.atol:g} rtol={tol.rtol:g};"
            f" first at {_index(i, y.shape)}: got {float(y.reshape(-1)[i]):.6g},"
            f" expected {float(y64.reshape(-1)[i]):.6g}; relative L2 error {rel:.3g}",
            rel,
        )
    ref_err = _rel_l2(yref.to(y64.device), y64, finite)
    eps = torch.finfo(yref.dtype).eps
    allowed = max(ERR_FACTOR * ref_err, ERR_EPS_MULTIPLE * eps)
    if rel > allowed:
        return Comparison(
            False,
            f"{what}: relative L2 error {rel:.3g} against float64 exceeds {allowed:.3g}"
            f" ({ERR_FACTOR:g}x the reference's own {ref_err:.3g} in {yref.dtype}); lower"
            " precision arithmetic (bf16/fp16/TF32) than the task allows?",
            rel,
        )
    return Comparison(True, "", rel)


def compare_outputs(out: list[Any], ref64: list[Any], ref: list[Any], tol: Tolerance) -> Comparison:
    """Compare a whole (flattened) output structure."""
    if len(out) != len(ref):
        return Comparison(False, f"forward returned {len(out)} outputs, expected {len(ref)}")
    worst = 0.0
    for k, (y, y64, yr) in enumerate(zip(out, ref64, ref, strict=True)):
        what = "output" if len(out) == 1 else f"output[{k}]"
        c = compare_tensor(y, y64, yr, tol, what)
        if not c.ok:
            return c
        worst = max(worst, c.rel_l2)
    return Comparison(True, "", worst)


def constant_would_pass(y64: torch.Tensor, tol: Tolerance) -> float | None:
    """The constant (0 or the mean) that would pass the elementwise check, if any.

    A task whose output a constant matches is useless for judging: zeros would pass it.
    """
    finite = torch.isfinite(y64)
    vals = y64[finite].double()
    if vals.numel() == 0:
        return 0.0
    # A one-element output (a loss) always equals its own mean; only zero is a useful probe.
    probes = (0.0, float(vals.mean())) if vals.numel() > 1 else (0.0,)
    for c in probes:
        if bool(((vals - c).abs() <= tol.atol + tol.rtol * vals.abs()).all()):
            return c
    return None
