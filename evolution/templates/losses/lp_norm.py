"""The ``lp_norm`` template: ``x / ||x||``, the input divided by one of its norms.

Recognises a reference whose whole forward is ``x / ||x||`` with the L1 norm (sum or mean of
``|x|``), the L2 norm or the Frobenius norm, over a contiguous range of dims or over the whole
tensor (``torch.norm``, ``Tensor.norm``, ``torch.linalg.norm``/``vector_norm``, ``F.normalize``,
``x.abs().sum(dim, keepdim=True)``, ``sqrt((x * x).sum(...))``, with an optional ``+ eps`` or
``clamp(min=eps)`` on the norm). Variants: ``row`` (one program per row, looped),
``single_pass`` (a row held in registers), ``split`` (partials across programs, a combine,
then a scaling pass; the only variant for a norm of the whole tensor) and ``strided`` (the
reduced dims are followed by others, e.g. dim 1 of an NCHW tensor).

Every reduction accumulates in fp32 lanes and finishes with ``tl.sum`` trees, so long sums stay
accurate and results are deterministic (no atomics).
"""

from __future__ import annotations

import dataclasses
import math
import string
from typing import Any

import torch
import torch.fx

from evolution.templates.analysis import TaskAnalysis, parameter_skeleton
from evolution.templates.base import Template, TemplateCandidate
from evolution.templates.losses.match import (
    SINGLE_PASS_MAX,
    Decline,
    forward_args,
    forward_input,
    indent,
    literal,
    only_nodes,
    output_node,
    read_op,
    reduced_dims,
    render,
    space_json,
)


@dataclasses.dataclass(frozen=True)
class _Norm:
    """A recognised ``x / ||x||``: which norm, over which dims, and the eps applied to it."""

    x: str
    args: tuple[str, ...]
    shape: tuple[int, ...]
    dtype: torch.dtype
    power: int  # 1: sum of |x|; 2: sqrt of the sum of squares
    mean: bool  # L1 as a mean of |x| (KernelBench #38)
    first: int
    last: int
    eps: float | None = None
    eps_mode: str = ""  # "clamp" (F.normalize, clamp(min=eps)) or "add" (norm + eps)

    @property
    def n(self) -> int:
        """The example's reduced extent (elements per norm)."""
        return math.prod(self.shape[self.first : self.last + 1])

    def describe(self) -> str:
        kind = {1: "L1 (mean of |x|)" if self.mean else "L1", 2: "L2"}[self.power]
        dims = (
            "all dims"
            if self.first == 0 and self.last == len(self.shape) - 1
            else (
                f"dims {self.first}..{self.last}" if self.last > self.first else f"dim {self.first}"
            )
        )
        eps = f", eps {self.eps:g} ({self.eps_mode})" if self.eps is not None else ""
        return f"x / {kind} norm over {dims} of {self.shape} {str(self.dtype)[6:]}{eps}"

    def contrib(self, v: str) -> str:
        """What one element adds to the accumulator."""
        return f"tl.abs({v})" if self.power == 1 else f"{v} * {v}"

    def finish(self, total: str, count: str) -> str:
        """The norm from the accumulated total over ``count`` elements."""
        norm = {1: f"{total} / {count}" if self.mean else total, 2: f"tl.sqrt_rn({total})"}
        expr = norm[self.power]
        if self.eps_mode == "add":
            expr = f"({expr}) + {literal(self.eps)}"
        elif self.eps_mode == "clamp":
            # where() rather than maximum(): a NaN norm stays NaN, as torch.clamp keeps it.
            eps = literal(self.eps)
            return f"tl.where(({expr}) < {eps}, {eps}, {expr})"
        return expr


def _norm_of(analysis: TaskAnalysis, node: Any, used: set) -> tuple[Any, int, bool, Any, bool]:
    """Read a norm node as ``(x, power, mean, dim, keepdim)``, or decline."""
    op = read_op(analysis, node)
    if op is None:
        raise Decline("the divisor is not a norm of the input")
    used.add(node)
    if op.name in ("norm", "vector_norm", "linalg_norm"):
        default_p = {"norm": "fro", "vector_norm": 2, "linalg_norm": None}[op.name]
        p = op.arg(1, "ord" if op.name != "norm" else "p", default_p)
        dim, keepdim = op.arg(2, "dim"), op.arg(3, "keepdim", False)
        if op.kwargs.get("dtype") is not None or op.kwargs.get("out") is not None:
            raise Decline("a norm with a dtype or out argument is not supported")
        if op.name == "linalg_norm" and p is not None and not isinstance(dim, int):
            raise Decline("torch.linalg.norm with an ord over several dims is a matrix norm")
        if p in ("fro", None, 2, 2.0):
            return op.args[0], 2, False, dim, keepdim
        if p in (1, 1.0):
            return op.args[0], 1, False, dim, keepdim
        raise Decline(f"the {p!r}-norm is not covered (L1, L2 and Frobenius are)")
    if op.name in ("sum", "mean"):
        if op.kwargs.get("dtype") is not None:
            raise Decline("a sum with a dtype argument is not supported")
        inner = read_op(analysis, op.args[0])
        if inner is None or inner.name != "abs":
            raise Decline("the divisor sums something other than |x|")
        used.add(op.args[0])
        return inner.args[0], 1, op.name == "mean", op.arg(1, "dim"), op.arg(2, "keepdim", False)
    if op.name == "sqrt" or op.name == "pow" and op.arg(1, "exponent") == 0.5:
        total = read_op(analysis, op.args[0])
        if total is None or total.name != "sum" or total.kwargs.get("dtype") is not None:
            raise Decline("the square root is not of a sum of squares (mean of squares: RMS)")
        used.add(op.args[0])
        x = _square_of(analysis, total.args[0], used)
        return x, 2, False, total.arg(1, "dim"), total.arg(2, "keepdim", False)
    raise Decline(f"the divisor ({op.name}) is not a norm of the input")


def _square_of(analysis: TaskAnalysis, node: Any, used: set) -> Any:
    """``x`` for a node computing ``x * x``, ``x ** 2``, ``square(x)``, or decline."""
    op = read_op(analysis, node)
    if op is None:
        raise Decline("the sum is not of squares of the input")
    squared = (
        op.name == "square"
        or (op.name == "pow" and op.arg(1, "exponent") in (2, 2.0))
        or (op.name == "mul" and len(op.args) == 2 and op.args[0] is op.args[1])
    )
    if squared:
        used.add(node)
        return op.args[0]
    raise Decline("the sum is not of squares of the input")


def _match_norm(analysis: TaskAnalysis) -> _Norm:
    out = output_node(analysis)
    op = read_op(analysis, out)
    used: set[torch.fx.Node] = {out}
    eps, eps_mode = None, ""
    if op is not None and op.name == "normalize":
        x = op.args[0]
        p, dim, eps = op.arg(1, "p", 2.0), op.arg(2, "dim", 1), op.arg(3, "eps", 1e-12)
        if p not in (1, 2, 1.0, 2.0) or op.kwargs.get("out") is not None:
            raise Decline(f"F.normalize with p={p!r} is not covered (p=1 and p=2 are)")
        power, mean, keepdim, eps_mode = int(p), False, True, "clamp"
        literal(eps)
    elif op is not None and op.name == "div" and len(op.args) == 2:
        if op.kwargs.get("rounding_mode") is not None:
            raise Decline("a division with a rounding mode is not a normalisation")
        x, divisor = op.args
        post = read_op(analysis, divisor)
        if (
            post is not None
            and post.name == "add"
            and len(post.args) == 2
            and any(isinstance(a, (int, float)) for a in post.args)
        ):
            eps, divisor = sorted(post.args, key=lambda a: isinstance(a, torch.fx.Node))
            eps_mode = "add"
            used.add(op.args[1])
        elif post is not None and post.name in ("clamp", "clamp_min"):
            lo = post.arg(1, "min")
            if post.arg(2, "max") is not None or not isinstance(lo, (int, float)):
                raise Decline("the norm is clamped by something other than a constant minimum")
            eps, eps_mode, divisor = lo, "clamp", post.args[0]
            used.add(op.args[1])
        if eps is not None:
            literal(eps)
        y, power, mean, dim, keepdim = _norm_of(analysis, divisor, used)
        if y is not x:
            raise Decline("the norm is not of the tensor it divides")
    else:
        raise Decline("the reference does not divide its input by a norm")
    x = forward_input(x, "normalised tensor")
    only_nodes(analysis, used)
    shape = x.meta["info"].shape
    if not shape:
        raise Decline("the input is a 0-dim tensor")
    first, last = reduced_dims(dim, len(shape))
    if not keepdim and (first, last) != (0, len(shape) - 1):
        raise Decline(
            "the norm drops its reduced dims (keepdim=False), so the division "
            "broadcasts it along other dims"
        )
    args = forward_args(analysis)
    return _Norm(
        x.target,
        args,
        shape,
        x.meta["info"].dtype,
        power,
        mean,
        first,
        last,
        None if eps is None else float(eps),
        eps_mode,
    )


_NORM_FRAME = """
# kernelmap template lp_norm/$variant:
# $what.
import math

import torch
import torch.nn as nn
import triton
import triton.language as tl

# The evaluator injects one value of each as a module global ($names).
SEARCH_SPACE = $space


$kernels

class ModelNew(nn.Module):
    def __init__(self, *args, **kwargs):
        super().__init__()
$params

    def forward(self, $args):
        x = $x.contiguous()
        out = torch.empty_like(x)
        # (outer, n, inner) view: the norm is over the middle extent.
        outer = math.prod(x.shape[:$first])
        n = math.prod(x.shape[$first:$stop])
$launch
        return out
"""

_NORM_ROW = """
@triton.jit
def norm_row_kernel(out_ptr, x_ptr, n, BLOCK: tl.constexpr):
    # One program per row: accumulate over column blocks, then a second pass divides.
    base = tl.program_id(0).to(tl.int64) * n
    cols = tl.arange(0, BLOCK)
    acc = tl.zeros([BLOCK], tl.float32)
    for start in range(0, n, BLOCK):
        mask = start + cols < n
        x = tl.load(x_ptr + base + start + cols, mask=mask, other=0.0).to(tl.float32)
        acc += $contrib
    total = tl.sum(acc, axis=0)
    norm = $finish
    for start in range(0, n, BLOCK):
        mask = start + cols < n
        x = tl.load(x_ptr + base + start + cols, mask=mask, other=0.0).to(tl.float32)
        tl.store(out_ptr + base + start + cols, x / norm, mask=mask)
"""

_NORM_SINGLE = """
@triton.jit
def norm_single_pass_kernel(out_ptr, x_ptr, n_rows, n, ROWS: tl.constexpr, BLOCK: tl.constexpr):
    # ROWS whole rows per program, held in registers: x is read once.
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    cols = tl.arange(0, BLOCK)
    mask = (rows < n_rows)[:, None] & (cols < n)[None, :]
    offs = rows.to(tl.int64)[:, None] * n + cols[None, :]
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    total = tl.sum($contrib, axis=1)
    norm = $finish
    tl.store(out_ptr + offs, x / norm[:, None], mask=mask)
"""

_NORM_SPLIT = """
@triton.jit
def norm_partial_kernel(partial_ptr, x_ptr, n, n_chunks, BLOCK: tl.constexpr,
                        ITERS: tl.constexpr):
    # Phase 1: each program reduces one chunk of BLOCK * ITERS elements of a row.
    pid = tl.program_id(0)
    row = (pid // n_chunks).to(tl.int64)
    start = (pid % n_chunks).to(tl.int64) * (BLOCK * ITERS)
    cols = tl.arange(0, BLOCK)
    acc = tl.zeros([BLOCK], tl.float32)
    # Stop at the row's end: a short row's last chunk skips its empty iterations.
    for i in range(0, tl.minimum(ITERS, tl.cdiv(n - start, BLOCK))):
        c = start + i * BLOCK + cols
        mask = c < n
        x = tl.load(x_ptr + row * n + c, mask=mask, other=0.0).to(tl.float32)
        acc += $contrib
    tl.store(partial_ptr + pid, tl.sum(acc, axis=0))


@triton.jit
def norm_combine_kernel(norm_ptr, partial_ptr, n, n_chunks, CBLOCK: tl.constexpr):
    # Phase 2: one program per row sums its partials in a fixed order (deterministic).
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, CBLOCK)
    acc = tl.zeros([CBLOCK], tl.float32)
    for start in range(0, n_chunks, CBLOCK):
        mask = start + offs < n_chunks
        acc += tl.load(partial_ptr + row * n_chunks + start + offs, mask=mask, other=0.0)
    total = tl.sum(acc, axis=0)
    tl.store(norm_ptr + row, $finish)


@triton.jit
def norm_scale_kernel(out_ptr, x_ptr, norm_ptr, n, n_chunks, BLOCK: tl.constexpr,
                      ITERS: tl.constexpr):
    # Phase 3: divide each chunk by its row's norm.
    pid = tl.program_id(0)
    row = (pid // n_chunks).to(tl.int64)
    start = (pid % n_chunks).to(tl.int64) * (BLOCK * ITERS)
    norm = tl.load(norm_ptr + row)
    cols = tl.arange(0, BLOCK)
    # Stop at the row's end: a short row's last chunk skips its empty iterations.
    for i in range(0, tl.minimum(ITERS, tl.cdiv(n - start, BLOCK))):
        c = start + i * BLOCK + cols
        mask = c < n
        x = tl.load(x_ptr + row * n + c, mask=mask, other=0.0).to(tl.float32)
        tl.store(out_ptr + row * n + c, x / norm, mask=mask)
"""

_NORM_STRIDED = """
@triton.jit
def norm_strided_kernel(out_ptr, x_ptr, n, inner, n_iblocks, BLOCK_R: tl.constexpr,
                        BLOCK_I: tl.constexpr):
    # (outer, n, inner) view: a program owns BLOCK_I contiguous inner positions of one outer
    # index and walks the reduced extent in BLOCK_R steps, so loads stay coalesced.
    pid = tl.program_id(0)
    base = (pid // n_iblocks).to(tl.int64) * n * inner
    icols = (pid % n_iblocks) * BLOCK_I + tl.arange(0, BLOCK_I)
    imask = icols < inner
    rr = tl.arange(0, BLOCK_R)
    acc = tl.zeros([BLOCK_R, BLOCK_I], tl.float32)
    for r0 in range(0, n, BLOCK_R):
        rows = r0 + rr
        mask = (rows < n)[:, None] & imask[None, :]
        offs = base + rows.to(tl.int64)[:, None] * inner + icols[None, :]
        x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        acc += $contrib
    total = tl.sum(acc, axis=0)
    norm = $finish
    for r0 in range(0, n, BLOCK_R):
        rows = r0 + rr
        mask = (rows < n)[:, None] & imask[None, :]
        offs = base + rows.to(tl.int64)[:, None] * inner + icols[None, :]
        x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        tl.store(out_ptr + offs, x / norm[None, :], mask=mask)
"""

# Per variant: its SEARCH_SPACE (first values: defaults for KernelBench-sized rows on an H100/H200),
# its kernels and the launch code in forward.
_NORM_LAUNCH: dict[str, tuple[dict[str, list[int]], str, str]] = {
    "row": (
        {"BLOCK": [2048, 1024, 4096, 8192], "num_warps": [8, 4, 16]},
        _NORM_ROW,
        """
        norm_row_kernel[(outer,)](out, x, n, BLOCK=BLOCK, num_warps=num_warps)
    """,
    ),
    "single_pass": (
        {"ROWS": [1, 2, 4], "num_warps": [8, 4, 16]},
        _NORM_SINGLE,
        """
        norm_single_pass_kernel[(triton.cdiv(outer, ROWS),)](
            out, x, outer, n, ROWS=ROWS, BLOCK=triton.next_power_of_2(n), num_warps=num_warps
        )
    """,
    ),
    "split": (
        {"BLOCK": [1024, 2048, 4096], "ITERS": [4, 16], "num_warps": [4, 8]},
        _NORM_SPLIT,
        """
        n_chunks = max(1, triton.cdiv(n, BLOCK * ITERS))
        partials = torch.empty(outer * n_chunks, dtype=torch.float32, device=x.device)
        norms = torch.empty(outer, dtype=torch.float32, device=x.device)
        grid = (outer * n_chunks,)
        norm_partial_kernel[grid](partials, x, n, n_chunks, BLOCK=BLOCK, ITERS=ITERS,
                                  num_warps=num_warps)
        # A whole-tensor norm has ~1e5 partials: a wide block keeps the combine loop short.
        cblock = min(4096, triton.next_power_of_2(n_chunks))
        norm_combine_kernel[(outer,)](norms, partials, n, n_chunks, CBLOCK=cblock, num_warps=8)
        norm_scale_kernel[grid](out, x, norms, n, n_chunks, BLOCK=BLOCK, ITERS=ITERS,
                                num_warps=num_warps)
    """,
    ),
    "strided": (
        {"BLOCK_R": [8, 32], "BLOCK_I": [128, 32, 512], "num_warps": [4, 8]},
        _NORM_STRIDED,
        """
        inner = math.prod(x.shape[$stop:])
        n_iblocks = triton.cdiv(inner, BLOCK_I)
        norm_strided_kernel[(outer * n_iblocks,)](
            out, x, n, inner, n_iblocks, BLOCK_R=BLOCK_R, BLOCK_I=BLOCK_I, num_warps=num_warps
        )
    """,
    ),
}


def _norm_source(analysis: TaskAnalysis, spec: _Norm, variant: str) -> str:
    space, kernel, launch = _NORM_LAUNCH[variant]
    kernels = render(kernel, contrib=spec.contrib("x"), finish=spec.finish("total", "n"))
    return render(
        _NORM_FRAME,
        variant=variant,
        what=spec.describe(),
        names=", ".join(space),
        space=space_json(space),
        kernels=kernels,
        params=parameter_skeleton(analysis.params),
        args=", ".join(spec.args),
        x=spec.x,
        first=str(spec.first),
        stop=str(spec.last + 1),
        launch=indent(string.Template(launch).substitute(stop=spec.last + 1), 8),
    )


class LpNorm(Template):
    """``x / ||x||`` for L1, L2 and Frobenius norms (see the module docstring)."""

    name = "lp_norm"

    def instantiate(self, analysis: TaskAnalysis) -> list[TemplateCandidate] | str:
        try:
            spec = _match_norm(analysis)
        except Decline as e:
            return str(e)
        # Chosen by which dims are reduced, not by the example's sizes, so that held-out
        # shapes with other sizes keep the same (rows, n) or (outer, n, inner) view.
        if spec.last < len(spec.shape) - 1:
            variants = ["strided"]
        elif spec.first == 0:
            variants = ["split"]  # one row (the whole tensor): only a split spreads it out
        else:
            variants = ["row", "split"] + (["single_pass"] if spec.n <= SINGLE_PASS_MAX else [])
        return [
            TemplateCandidate(self.name, v, _norm_source(analysis, spec, v), spec.describe())
            for v in variants
        ]


TEMPLATES: list[Template] = [LpNorm()]
