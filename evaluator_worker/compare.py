"""Comparing a candidate's output with the float64 reference (pure functions).

Pass means all of: the same structure, shape and dtype; NaN/Inf at the same positions as
the reference; every finite element within ``atol + rtol * |y64|``; and the relative L2 error
against float64 within a small multiple of the reference's own error in the task dtype (so
bf16/fp16/TF32 arithmetic on an fp32 task fails even where the elementwise tolerance is loose).

Memory: every pass walks the tensors in chunks of :data:`CHUNK` elements and upcasts one
chunk at a time, so a comparison adds a few chunk-sized temporaries, never a float64 copy of
a whole output (KernelBench outputs reach 6 GB). :class:`Expected` keeps what a comparison
needs of the task-dtype reference (shape, dtype, its own error against float64) so the judge
can drop the reference output itself before the candidate's outputs arrive.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from typing import Any

import torch

ERR_FACTOR = 16.0
ERR_EPS_MULTIPLE = 64.0
CHUNK = 1 << 20  # elements per pass (8 MiB as float64)


@dataclasses.dataclass(frozen=True)
class Tolerance:
    """Elementwise tolerance ``|y - y64| <= atol + rtol * |y64|``."""

    atol: float
    rtol: float


def default_tolerance(dtype: torch.dtype) -> Tolerance:
    """docs/architecture.md defaults: fp32 1e-4, fp16/bf16 1e-2 (float64 1e-7)."""
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


@dataclasses.dataclass
class Expected:
    """One reference output as a comparison needs it.

    Attributes
    ----------
    value:
        The float64 reference (floating outputs; any floating dtype is upcast chunk by chunk)
        or the exact reference (integer outputs).
    shape, dtype:
        Shape and dtype the candidate's output must have (the task-dtype reference's).
    ref_err:
        Relative L2 error of the task-dtype reference against ``value``; sets the allowed
        relative L2 error of the candidate.
    """

    value: torch.Tensor
    shape: tuple[int, ...]
    dtype: torch.dtype
    ref_err: float = 0.0

    @property
    def nbytes(self) -> int:
        """Bytes of an output of this shape and dtype (what the candidate's output takes)."""
        return math.prod(self.shape) * self.dtype.itemsize


def flatten(out: Any) -> list[Any]:
    """A forward's output as a list (a tensor, or a tuple/list of tensors)."""
    items = list(out) if isinstance(out, (tuple, list)) else [out]
    return [y.detach() if isinstance(y, torch.Tensor) else y for y in items]


def _chunks(n: int) -> Iterator[slice]:
    for start in range(0, n, CHUNK):
        yield slice(start, min(n, start + CHUNK))


def _flat(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1)


class _First:
    """Count of flagged elements and the flat index of the first one, over chunks."""

    def __init__(self) -> None:
        self.count = 0
        self.index: int | None = None

    def add(self, mask: torch.Tensor, offset: int) -> None:
        k = int(mask.sum())
        if k:
            if self.index is None:
                self.index = offset + int(mask.nonzero()[0])
            self.count += k


def rel_l2(y: torch.Tensor, y64: torch.Tensor) -> float:
    """Relative L2 error of ``y`` against ``y64`` over the positions where ``y64`` is finite."""
    num = den = 0.0
    yf, rf = _flat(y), _flat(y64)
    for sl in _chunks(rf.numel()):
        r = rf[sl].to(torch.float64)
        finite = torch.isfinite(r)
        d = torch.where(finite, yf[sl].to(r.device, torch.float64) - r, 0.0)
        num += float(torch.linalg.vector_norm(d)) ** 2
        den += float(torch.linalg.vector_norm(torch.where(finite, r, 0.0))) ** 2
    if den == 0.0:
        return 0.0 if num == 0.0 else float("inf")
    return math.sqrt(num) / math.sqrt(den)


def expect(y64: torch.Tensor, yref: torch.Tensor) -> Expected:
    """The :class:`Expected` of one output from its float64 and task-dtype references."""
    err = rel_l2(yref, y64) if yref.is_floating_point() else 0.0
    value = y64 if yref.is_floating_point() else yref
    return Expected(value, tuple(yref.shape), yref.dtype, err)


def _index(flat_i: int, shape: torch.Size | tuple[int, ...]) -> tuple[int, ...]:
    idx = []
    for d in reversed(shape):
        idx.append(flat_i % d)
        flat_i //= d
    return tuple(reversed(idx))


def compare_expected(
    y: torch.Tensor, exp: Expected, tol: Tolerance, what: str = "output"
) -> Comparison:
    """Compare one output tensor ``y`` with its :class:`Expected` reference."""
    if tuple(y.shape) != exp.shape:
        return Comparison(False, f"{what} has shape {tuple(y.shape)}, expected {exp.shape}")
    if y.dtype != exp.dtype:
        return Comparison(False, f"{what} has dtype {y.dtype}, expected {exp.dtype}")
    ref = exp.value
    yf, rf = _flat(y), _flat(ref)
    if not y.is_floating_point():
        differ = _First()
        for sl in _chunks(rf.numel()):
            differ.add(yf[sl].to(ref.device) != rf[sl], sl.start)
        if not differ.count:
            return Comparison(True)
        return Comparison(False, f"{what}: {differ.count} of {y.numel()} integer elements differ")
    checks = (("NaN", torch.isnan), ("+Inf", torch.isposinf), ("-Inf", torch.isneginf))
    special = {name: _First() for name, _ in checks}
    bad = _First()
    num = den = 0.0
    for sl in _chunks(rf.numel()):
        r = rf[sl].to(torch.float64)
        c = yf[sl].to(r.device, torch.float64)
        finite = torch.isfinite(r)
        all_finite = bool(finite.all()) and bool(torch.isfinite(c).all())
        if not all_finite:  # the common case needs none of these passes
            for name, f in checks:
                special[name].add(f(c) != f(r), sl.start)
        # r and c may be views of the caller's tensors (float64 already): never written.
        diff = c - r if all_finite else torch.where(finite, c - r, 0.0)
        num += float(torch.linalg.vector_norm(diff)) ** 2
        ref = r if all_finite else torch.where(finite, r, 0.0)
        den += float(torch.linalg.vector_norm(ref)) ** 2
        bound = r.abs().mul_(tol.rtol).add_(tol.atol)
        bad.add(diff.abs_() > bound, sl.start)
        del r, c, finite, diff, bound
    rel = 0.0 if num == 0.0 else (float("inf") if den == 0.0 else math.sqrt(num / den))

    def at(i: int) -> tuple[tuple[int, ...], float, float]:
        return _index(i, exp.shape), float(yf[i]), float(rf[i])

    for name, _ in checks:
        s = special[name]
        if s.count:
            where, got, want = at(s.index)
            return Comparison(
                False,
                f"{what}: {name} positions differ from the reference ({s.count} elements;"
                f" first at {where}: got {got!r}, expected {want!r})",
            )
    if bad.count:
        where, got, want = at(bad.index)
        return Comparison(
            False,
            f"{what}: {bad.count} of {y.numel()} elements outside atol={tol.atol:g}"
            f" rtol={tol.rtol:g}; first at {where}: got {got:.6g}, expected {want:.6g};"
            f" relative L2 error {rel:.3g}",
            rel,
        )
    eps = torch.finfo(exp.dtype).eps
    allowed = max(ERR_FACTOR * exp.ref_err, ERR_EPS_MULTIPLE * eps)
    if rel > allowed:
        return Comparison(
            False,
            f"{what}: relative L2 error {rel:.3g} against float64 exceeds {allowed:.3g}"
            f" ({ERR_FACTOR:g}x the reference's own {exp.ref_err:.3g} in {exp.dtype}); lower"
            " precision arithmetic (bf16/fp16/TF32) than the task allows?",
            rel,
        )
    return Comparison(True, "", rel)


def compare_tensor(
    y: torch.Tensor, y64: torch.Tensor, yref: torch.Tensor, tol: Tolerance, what: str = "output"
) -> Comparison:
    """Compare one output tensor ``y`` with the float64 reference ``y64``.

    ``yref`` is the reference computed in the task dtype; its error against ``y64`` sets
    the allowed relative L2 error.
    """
    if tuple(y.shape) != tuple(yref.shape) or y.dtype != yref.dtype:
        return compare_expected(y, Expected(y64, tuple(yref.shape), yref.dtype), tol, what)
    return compare_expected(y, expect(y64, yref), tol, what)


def compare_expected_outputs(
    out: list[Any], expected: list[Expected], tol: Tolerance
) -> Comparison:
    """Compare a whole (flattened) output structure with its :class:`Expected` references."""
    if len(out) != len(expected):
        return Comparison(False, f"forward returned {len(out)} outputs, expected {len(expected)}")
    worst = 0.0
    for k, (y, exp) in enumerate(zip(out, expected, strict=True)):
        what = "output" if len(out) == 1 else f"output[{k}]"
        c = compare_expected(y, exp, tol, what)
        if not c.ok:
            return c
        worst = max(worst, c.rel_l2)
    return Comparison(True, "", worst)


def compare_outputs(out: list[Any], ref64: list[Any], ref: list[Any], tol: Tolerance) -> Comparison:
    """Compare a whole (flattened) output structure with float64 and task-dtype references."""
    if len(out) != len(ref):
        return Comparison(False, f"forward returned {len(out)} outputs, expected {len(ref)}")
    expected = [expect(y64, yr) for y64, yr in zip(ref64, ref, strict=True)]
    return compare_expected_outputs(out, expected, tol)


def constant_would_pass(y64: torch.Tensor, tol: Tolerance) -> float | None:
    """The constant (0 or the mean) that would pass the elementwise check, if any.

    A task whose output a constant matches is useless for judging: zeros would pass it.
    """
    flat = _flat(y64)
    total, count = 0.0, 0
    for sl in _chunks(flat.numel()):
        v = flat[sl].to(torch.float64)
        finite = torch.isfinite(v)
        count += int(finite.sum())
        total += float(torch.where(finite, v, 0.0).sum())
    if count == 0:
        return 0.0
    # A one-element output (a loss) always equals its own mean; only zero is a useful probe.
    probes = (0.0, total / count) if count > 1 else (0.0,)
    for c in probes:
        fits = True
        for sl in _chunks(flat.numel()):
            v = flat[sl].to(torch.float64)
            near = (v - c).abs() <= tol.atol + tol.rtol * v.abs()
            if not bool((near | ~torch.isfinite(v)).all()):
                fits = False
                break
        if fits:
            return c
    return None


def finite_fraction(y: torch.Tensor) -> float:
    """Fraction of the elements of ``y`` that are finite (1.0 for an empty tensor)."""
    flat = _flat(y)
    if flat.numel() == 0:
        return 1.0
    k = sum(int(torch.isfinite(flat[sl]).sum()) for sl in _chunks(flat.numel()))
    return k / flat.numel()


def same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bitwise-equal values (NaN equal to NaN), chunk by chunk."""
    if a.shape != b.shape:
        return False
    af, bf = _flat(a), _flat(b.to(a.device))
    for sl in _chunks(af.numel()):
        x, y = af[sl], bf[sl]
        eq = x == y
        if a.is_floating_point():
            eq = eq | (torch.isnan(x) & torch.isnan(y))
        if not bool(eq.all()):
            return False
    return True
