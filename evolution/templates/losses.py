"""Norms and losses: reductions that divide their input by a norm or collapse it to a scalar loss.

Three templates, each recognising one reference whose whole forward is the computation:

- ``lp_norm``: ``x / ||x||`` with the L1 norm (sum or mean of ``|x|``), the L2 norm or the
  Frobenius norm, over a contiguous range of dims or over the whole tensor (``torch.norm``,
  ``Tensor.norm``, ``torch.linalg.norm``/``vector_norm``, ``F.normalize``,
  ``x.abs().sum(dim, keepdim=True)``, ``sqrt((x * x).sum(...))``, with an optional ``+ eps`` or
  ``clamp(min=eps)`` on the norm). Variants: ``row`` (one program per row, looped),
  ``single_pass`` (a row held in registers), ``split`` (partials across programs, a combine,
  then a scaling pass; the only variant for a norm of the whole tensor) and ``strided`` (the
  reduced dims are followed by others, e.g. dim 1 of an NCHW tensor).
- ``cross_entropy``: ``F.cross_entropy`` / ``nn.CrossEntropyLoss`` / ``nll_loss(log_softmax)`` on
  (N, C) logits and int class targets: per-row logsumexp minus the target logit, then a
  deterministic second kernel for the mean. Variants ``row`` (online logsumexp over column
  blocks) and ``single_pass`` (rows that fit one block, several rows per program).
- ``pointwise_loss``: the mean or sum over all elements of a pointwise expression of the inputs:
  MSE, L1, smooth L1, Huber, KL-div, hinge, written as loss functions or modules or by hand
  (``torch.mean(torch.clamp(1 - p * t, min=0))``), with targets broadcast along leading or
  trailing dims. Variant ``split``: each program reduces ``BLOCK * ITERS`` elements to an fp32
  partial, one program sums the partials in a fixed order.

Every reduction accumulates in fp32 lanes and finishes with ``tl.sum`` trees, so long sums stay
accurate and results are deterministic (no atomics).
"""

from __future__ import annotations

import dataclasses
import json
import math
import operator
import string
import textwrap
from typing import Any

import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F

from evolution.templates.analysis import TaskAnalysis, parameter_skeleton
from evolution.templates.base import Template, TemplateCandidate

_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# Rows up to this long get the variants that hold a whole row in registers.
_SINGLE_PASS_MAX = 16384

# ---------------------------------------------------------------------------------------------
# Reading the graph: every spelling of an op becomes (name, args, kwargs) with the input first.
# ---------------------------------------------------------------------------------------------

_FUNCTIONS: dict[Any, str] = {
    operator.add: "add", torch.add: "add",
    operator.sub: "sub", torch.sub: "sub", torch.subtract: "sub",
    operator.mul: "mul", torch.mul: "mul", torch.multiply: "mul",
    operator.truediv: "div", torch.div: "div", torch.divide: "div", torch.true_divide: "div",
    operator.pow: "pow", torch.pow: "pow",
    operator.neg: "neg", torch.neg: "neg",
    operator.lt: "lt", torch.lt: "lt", operator.le: "le", torch.le: "le",
    operator.gt: "gt", torch.gt: "gt", operator.ge: "ge", torch.ge: "ge",
    torch.abs: "abs", torch.square: "square", torch.sqrt: "sqrt", torch.exp: "exp",
    torch.log: "log", torch.sigmoid: "sigmoid", F.sigmoid: "sigmoid", torch.relu: "relu",
    F.relu: "relu", torch.clamp: "clamp", torch.clip: "clamp", torch.clamp_min: "clamp_min",
    torch.clamp_max: "clamp_max", torch.where: "where",
    torch.sum: "sum", torch.mean: "mean",
    torch.norm: "norm", torch.linalg.norm: "linalg_norm", torch.linalg.vector_norm: "vector_norm",
    F.normalize: "normalize",
    F.cross_entropy: "cross_entropy", F.nll_loss: "nll_loss",
    F.log_softmax: "log_softmax", torch.log_softmax: "log_softmax",
    F.mse_loss: "mse_loss", F.l1_loss: "l1_loss", F.smooth_l1_loss: "smooth_l1_loss",
    F.huber_loss: "huber_loss", F.kl_div: "kl_div",
}  # fmt: skip
_METHODS = {
    **{m: m for m in "add sub mul div pow neg abs square sqrt exp log sigmoid relu clamp "
       "clamp_min clamp_max lt le gt ge sum mean norm log_softmax".split()},
    "subtract": "sub", "multiply": "mul", "divide": "div", "true_divide": "div", "clip": "clamp",
}  # fmt: skip


def _module_call(module: nn.Module | None) -> tuple[str, dict[str, Any]] | None:
    """The functional name and keyword arguments a loss/activation module call stands for."""
    kinds: dict[type, tuple[str, tuple[str, ...]]] = {
        nn.CrossEntropyLoss: ("cross_entropy", ("weight", "ignore_index", "reduction",
                                                "label_smoothing")),
        nn.NLLLoss: ("nll_loss", ("weight", "ignore_index", "reduction")),
        nn.MSELoss: ("mse_loss", ("reduction",)),
        nn.L1Loss: ("l1_loss", ("reduction",)),
        nn.SmoothL1Loss: ("smooth_l1_loss", ("reduction", "beta")),
        nn.HuberLoss: ("huber_loss", ("reduction", "delta")),
        nn.KLDivLoss: ("kl_div", ("reduction", "log_target")),
        nn.LogSoftmax: ("log_softmax", ("dim",)),
        nn.ReLU: ("relu", ()),
        nn.Sigmoid: ("sigmoid", ()),
    }
    found = kinds.get(type(module))
    if found is None:
        return None
    name, attrs = found
    return name, {a: getattr(module, a) for a in attrs}


@dataclasses.dataclass(frozen=True)
class _Op:
    """A compute node read as a functional call: ``name(*args, **kwargs)``, input first."""

    name: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]

    def arg(self, pos: int, key: str, default: Any = None) -> Any:
        """Argument ``key``, given positionally at ``pos`` or by keyword."""
        return self.args[pos] if pos < len(self.args) else self.kwargs.get(key, default)


def _op(analysis: TaskAnalysis, node: Any) -> _Op | None:
    """``node`` as an :class:`_Op`, or None for placeholders, constants and unknown calls."""
    if not isinstance(node, torch.fx.Node):
        return None
    if node.op == "call_function":
        name = _FUNCTIONS.get(node.target)
    elif node.op == "call_method":
        name = _METHODS.get(str(node.target))
    elif node.op == "call_module":
        found = _module_call(analysis.module_of(node))
        if found is None:
            return None
        return _Op(found[0], tuple(node.args), {**found[1], **node.kwargs})
    else:
        return None
    return _Op(name, tuple(node.args), dict(node.kwargs)) if name else None


class _Decline(Exception):
    """Raised inside a matcher with the sentence ``instantiate`` returns."""


def _output(analysis: TaskAnalysis) -> torch.fx.Node:
    """The node whose value ``forward`` returns (one tensor), or decline."""
    if analysis.graph is None:
        raise _Decline(analysis.reason or "the reference could not be traced")
    out = analysis.nodes()[-1].args[0]
    if not isinstance(out, torch.fx.Node) or out.meta.get("info") is None:
        raise _Decline("the reference does not return a single tensor")
    return out


def _input(node: Any, what: str) -> torch.fx.Node:
    """``node`` if it is a floating forward input, or decline."""
    if not isinstance(node, torch.fx.Node) or node.op != "placeholder":
        raise _Decline(f"the {what} is computed, not a forward input (extra ops are not fused)")
    info = node.meta.get("info")
    if info is None or info.dtype not in _FLOAT_DTYPES:
        raise _Decline(f"the {what} is not a float32/float16/bfloat16 tensor")
    return node


def _only_nodes(analysis: TaskAnalysis, used: set[torch.fx.Node]) -> None:
    """Decline when the reference computes anything beyond the matched nodes."""
    extra = [n.name for n in analysis.compute_nodes() if n not in used]
    if extra:
        raise _Decline(f"the reference computes more than this template fuses ({', '.join(extra)})")


def _literal(value: Any) -> str:
    """A Python number as fp32-ready source text, or decline."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _Decline(f"the constant {value!r} is not a plain number")
    f = float(value)
    if math.isnan(f):
        raise _Decline("a NaN constant is not supported")
    if math.isinf(f):
        return 'float("inf")' if f > 0 else '-float("inf")'
    return repr(f) if f >= 0 else f"({f!r})"


def _reduced_dims(dim: Any, rank: int) -> tuple[int, int]:
    """The reduced dims ``(first, last)`` of ``dim`` (None: all), which must be contiguous."""
    if dim is None or isinstance(dim, (list, tuple)) and len(dim) == 0:
        return 0, rank - 1
    dims = dim if isinstance(dim, (list, tuple)) else [dim]
    if not all(isinstance(d, int) and not isinstance(d, bool) and -rank <= d < max(rank, 1)
               for d in dims):
        raise _Decline(f"the reduced dims {dim!r} are not constant dims of a rank-{rank} input")
    norm = sorted({d % max(rank, 1) for d in dims})
    if norm != list(range(norm[0], norm[-1] + 1)):
        raise _Decline(f"the reduced dims {tuple(norm)} are not contiguous")
    return norm[0], norm[-1]


def _space(space: dict[str, list[int]]) -> str:
    return json.dumps(space)


def _render(frame: str, **fields: str) -> str:
    """``frame`` (a ``$name`` template) dedented and filled in."""
    return string.Template(textwrap.dedent(frame).lstrip()).substitute(fields)


def _indent(code: str, spaces: int) -> str:
    return textwrap.indent(textwrap.dedent(code).strip("\n"), " " * spaces)


# ---------------------------------------------------------------------------------------------
# lp_norm: x / ||x||
# ---------------------------------------------------------------------------------------------


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
        dims = "all dims" if self.first == 0 and self.last == len(self.shape) - 1 else (
            f"dims {self.first}..{self.last}" if self.last > self.first else f"dim {self.first}")
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
            expr = f"({expr}) + {_literal(self.eps)}"
        elif self.eps_mode == "clamp":
            # where() rather than maximum(): a NaN norm stays NaN, as torch.clamp keeps it.
            eps = _literal(self.eps)
            return f"tl.where(({expr}) < {eps}, {eps}, {expr})"
        return expr


def _norm_of(analysis: TaskAnalysis, node: Any, used: set) -> tuple[Any, int, bool, Any, bool]:
    """Read a norm node as ``(x, power, mean, dim, keepdim)``, or decline."""
    op = _op(analysis, node)
    if op is None:
        raise _Decline("the divisor is not a norm of the input")
    used.add(node)
    if op.name in ("norm", "vector_norm", "linalg_norm"):
        default_p = {"norm": "fro", "vector_norm": 2, "linalg_norm": None}[op.name]
        p = op.arg(1, "ord" if op.name != "norm" else "p", default_p)
        dim, keepdim = op.arg(2, "dim"), op.arg(3, "keepdim", False)
        if op.kwargs.get("dtype") is not None or op.kwargs.get("out") is not None:
            raise _Decline("a norm with a dtype or out argument is not supported")
        if op.name == "linalg_norm" and p is not None and not isinstance(dim, int):
            raise _Decline("torch.linalg.norm with an ord over several dims is a matrix norm")
        if p in ("fro", None, 2, 2.0):
            return op.args[0], 2, False, dim, keepdim
        if p in (1, 1.0):
            return op.args[0], 1, False, dim, keepdim
        raise _Decline(f"the {p!r}-norm is not covered (L1, L2 and Frobenius are)")
    if op.name in ("sum", "mean"):
        if op.kwargs.get("dtype") is not None:
            raise _Decline("a sum with a dtype argument is not supported")
        inner = _op(analysis, op.args[0])
        if inner is None or inner.name != "abs":
            raise _Decline("the divisor sums something other than |x|")
        used.add(op.args[0])
        return inner.args[0], 1, op.name == "mean", op.arg(1, "dim"), op.arg(2, "keepdim", False)
    if op.name == "sqrt" or op.name == "pow" and op.arg(1, "exponent") == 0.5:
        total = _op(analysis, op.args[0])
        if total is None or total.name != "sum" or total.kwargs.get("dtype") is not None:
            raise _Decline("the square root is not of a sum of squares (mean of squares: RMS)")
        used.add(op.args[0])
        x = _square_of(analysis, total.args[0], used)
        return x, 2, False, total.arg(1, "dim"), total.arg(2, "keepdim", False)
    raise _Decline(f"the divisor ({op.name}) is not a norm of the input")


def _square_of(analysis: TaskAnalysis, node: Any, used: set) -> Any:
    """``x`` for a node computing ``x * x``, ``x ** 2``, ``square(x)``, or decline."""
    op = _op(analysis, node)
    if op is None:
        raise _Decline("the sum is not of squares of the input")
    squared = (op.name == "square" or op.name == "pow" and op.arg(1, "exponent") in (2, 2.0)
               or op.name == "mul" and len(op.args) == 2 and op.args[0] is op.args[1])
    if squared:
        used.add(node)
        return op.args[0]
    raise _Decline("the sum is not of squares of the input")


def _match_norm(analysis: TaskAnalysis) -> _Norm:
    out = _output(analysis)
    op = _op(analysis, out)
    used: set[torch.fx.Node] = {out}
    eps, eps_mode = None, ""
    if op is not None and op.name == "normalize":
        x = op.args[0]
        p, dim, eps = op.arg(1, "p", 2.0), op.arg(2, "dim", 1), op.arg(3, "eps", 1e-12)
        if p not in (1, 2, 1.0, 2.0) or op.kwargs.get("out") is not None:
            raise _Decline(f"F.normalize with p={p!r} is not covered (p=1 and p=2 are)")
        power, mean, keepdim, eps_mode = int(p), False, True, "clamp"
        _literal(eps)
    elif op is not None and op.name == "div" and len(op.args) == 2:
        if op.kwargs.get("rounding_mode") is not None:
            raise _Decline("a division with a rounding mode is not a normalisation")
        x, divisor = op.args
        post = _op(analysis, divisor)
        if post is not None and post.name == "add" and len(post.args) == 2 and any(
                isinstance(a, (int, float)) for a in post.args):
            eps, divisor = sorted(post.args, key=lambda a: isinstance(a, torch.fx.Node))
            eps_mode = "add"
            used.add(op.args[1])
        elif post is not None and post.name in ("clamp", "clamp_min"):
            lo = post.arg(1, "min")
            if post.arg(2, "max") is not None or not isinstance(lo, (int, float)):
                raise _Decline("the norm is clamped by something other than a constant minimum")
            eps, eps_mode, divisor = lo, "clamp", post.args[0]
            used.add(op.args[1])
        if eps is not None:
            _literal(eps)
        y, power, mean, dim, keepdim = _norm_of(analysis, divisor, used)
        if y is not x:
            raise _Decline("the norm is not of the tensor it divides")
    else:
        raise _Decline("the reference does not divide its input by a norm")
    x = _input(x, "normalised tensor")
    _only_nodes(analysis, used)
    shape = x.meta["info"].shape
    if not shape:
        raise _Decline("the input is a 0-dim tensor")
    first, last = _reduced_dims(dim, len(shape))
    if not keepdim and (first, last) != (0, len(shape) - 1):
        raise _Decline("the norm drops its reduced dims (keepdim=False), so the division "
                       "broadcasts it along other dims")
    args = tuple(n.target for n in analysis.nodes() if n.op == "placeholder")
    return _Norm(x.target, args, shape, x.meta["info"].dtype, power, mean, first, last,
                 None if eps is None else float(eps), eps_mode)


_NORM_FRAME = '''
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
'''

_NORM_ROW = '''
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
'''

_NORM_SINGLE = '''
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
'''

_NORM_SPLIT = '''
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
'''

_NORM_STRIDED = '''
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
'''

# Per variant: its SEARCH_SPACE (first values: defaults for KernelBench-sized rows on an H100/H200),
# its kernels and the launch code in forward.
_NORM_LAUNCH: dict[str, tuple[dict[str, list[int]], str, str]] = {
    "row": ({"BLOCK": [2048, 1024, 4096, 8192], "num_warps": [8, 4, 16]}, _NORM_ROW, """
        norm_row_kernel[(outer,)](out, x, n, BLOCK=BLOCK, num_warps=num_warps)
    """),
    "single_pass": ({"ROWS": [1, 2, 4], "num_warps": [8, 4, 16]}, _NORM_SINGLE, """
        norm_single_pass_kernel[(triton.cdiv(outer, ROWS),)](
            out, x, outer, n, ROWS=ROWS, BLOCK=triton.next_power_of_2(n), num_warps=num_warps
        )
    """),
    "split": ({"BLOCK": [1024, 2048, 4096], "ITERS": [4, 16], "num_warps": [4, 8]},
              _NORM_SPLIT, """
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
    """),
    "strided": ({"BLOCK_R": [8, 32], "BLOCK_I": [128, 32, 512], "num_warps": [4, 8]},
                _NORM_STRIDED, """
        inner = math.prod(x.shape[$stop:])
        n_iblocks = triton.cdiv(inner, BLOCK_I)
        norm_strided_kernel[(outer * n_iblocks,)](
            out, x, n, inner, n_iblocks, BLOCK_R=BLOCK_R, BLOCK_I=BLOCK_I, num_warps=num_warps
        )
    """),
}


def _norm_source(analysis: TaskAnalysis, spec: _Norm, variant: str) -> str:
    space, kernel, launch = _NORM_LAUNCH[variant]
    kernels = _render(kernel, contrib=spec.contrib("x"), finish=spec.finish("total", "n"))
    return _render(
        _NORM_FRAME, variant=variant, what=spec.describe(), names=", ".join(space),
        space=_space(space), kernels=kernels, params=parameter_skeleton(analysis.params),
        args=", ".join(spec.args), x=spec.x, first=str(spec.first), stop=str(spec.last + 1),
        launch=_indent(string.Template(launch).substitute(stop=spec.last + 1), 8),
    )


class LpNorm(Template):
    """``x / ||x||`` for L1, L2 and Frobenius norms (see the module docstring)."""

    name = "lp_norm"

    def instantiate(self, analysis: TaskAnalysis) -> list[TemplateCandidate] | str:
        try:
            spec = _match_norm(analysis)
        except _Decline as e:
            return str(e)
        # Chosen by which dims are reduced, not by the example's sizes, so that held-out
        # shapes with other sizes keep the same (rows, n) or (outer, n, inner) view.
        if spec.last < len(spec.shape) - 1:
            variants = ["strided"]
        elif spec.first == 0:
            variants = ["split"]  # one row (the whole tensor): only a split spreads it out
        else:
            variants = ["row", "split"] + (["single_pass"] if spec.n <= _SINGLE_PASS_MAX else [])
        return [TemplateCandidate(self.name, v, _norm_source(analysis, spec, v), spec.describe())
                for v in variants]


# ---------------------------------------------------------------------------------------------
# cross_entropy: mean over rows of logsumexp(x) - x[target]
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _CrossEntropy:
    """A recognised cross-entropy on (N, C) logits with int64 class targets."""

    logits: str
    target: str
    args: tuple[str, ...]
    shape: tuple[int, ...]
    dtype: torch.dtype
    ignore_index: int
    reduction: str

    def describe(self) -> str:
        return (f"cross-entropy ({self.reduction}, ignore_index {self.ignore_index}) of "
                f"{self.shape} {str(self.dtype)[6:]} logits")


def _match_cross_entropy(analysis: TaskAnalysis) -> _CrossEntropy:
    out = _output(analysis)
    op = _op(analysis, out)
    if op is None or op.name not in ("cross_entropy", "nll_loss"):
        raise _Decline("the reference is not a cross-entropy")
    used = {out}
    x, target = op.arg(0, "input"), op.arg(1, "target")
    if len(op.args) > 2:
        raise _Decline("options passed positionally to the loss are not read; use keywords")
    if op.kwargs.get("weight") is not None:
        raise _Decline("class weights are not supported")
    if op.kwargs.get("size_average") is not None or op.kwargs.get("reduce") is not None:
        raise _Decline("the legacy size_average/reduce arguments are not supported")
    if op.kwargs.get("label_smoothing", 0.0) != 0.0:
        raise _Decline("label smoothing is not supported")
    reduction, ignore = op.kwargs.get("reduction", "mean"), op.kwargs.get("ignore_index", -100)
    if reduction not in ("mean", "sum", "none") or not isinstance(ignore, int):
        raise _Decline(f"reduction {reduction!r} / ignore_index {ignore!r} is not supported")
    if op.name == "nll_loss":
        inner = _op(analysis, x)
        rank = len(x.meta["info"].shape) if isinstance(x, torch.fx.Node) else 0
        dim = inner.arg(1, "dim") if inner is not None else None
        if (inner is None or inner.name != "log_softmax" or not isinstance(dim, int)
                or dim % max(rank, 1) != 1 or inner.kwargs.get("dtype") is not None):
            raise _Decline("nll_loss is not applied to a log_softmax over the class dim")
        used.add(x)
        x = inner.args[0]
    x = _input(x, "logits tensor")
    if not isinstance(target, torch.fx.Node) or target.op != "placeholder":
        raise _Decline("the targets are computed, not a forward input")
    shape, tinfo = x.meta["info"].shape, target.meta.get("info")
    if len(shape) != 2:
        raise _Decline(f"logits of rank {len(shape)} are not covered (only (N, C) logits)")
    if tinfo is None or tinfo.dtype != torch.int64 or tinfo.shape != shape[:1]:
        raise _Decline("the targets are not (N,) int64 class indices (probabilities: declined)")
    _only_nodes(analysis, used)
    args = tuple(n.target for n in analysis.nodes() if n.op == "placeholder")
    return _CrossEntropy(x.target, target.target, args, shape, x.meta["info"].dtype, ignore,
                         reduction)


_CE_FRAME = '''
# kernelmap template cross_entropy/$variant:
# $what.
import torch
import torch.nn as nn
import triton
import triton.language as tl

# The evaluator injects one value of each as a module global ($names).
SEARCH_SPACE = $space


$kernel

@triton.jit
def ce_reduce_kernel(out_ptr, loss_ptr, t_ptr, n_rows, FBLOCK: tl.constexpr):
    # One program sums the per-row losses in a fixed order (deterministic, no atomics) and
    # counts the rows whose target is not ignored (the mean's denominator).
    offs = tl.arange(0, FBLOCK)
    acc = tl.zeros([FBLOCK], tl.float32)
    cnt = tl.zeros([FBLOCK], tl.float32)
    for start in range(0, n_rows, FBLOCK):
        mask = start + offs < n_rows
        acc += tl.load(loss_ptr + start + offs, mask=mask, other=0.0)
        target = tl.load(t_ptr + start + offs, mask=mask, other=$ignore)
        cnt += tl.where(target != $ignore, 1.0, 0.0)
    tl.store(out_ptr, $result)


class ModelNew(nn.Module):
    def __init__(self, *args, **kwargs):
        super().__init__()
$params

    def forward(self, $args):
        x, t = $logits.contiguous(), $target.contiguous()
        n_rows, n_cols = x.shape
        losses = torch.empty(n_rows, dtype=$loss_dtype, device=x.device)
$launch
$finish
'''

_CE_ROW = '''
@triton.jit
def ce_row_kernel(loss_ptr, x_ptr, t_ptr, n_cols, BLOCK: tl.constexpr):
    # One program per row: online max/sum of exp over column blocks (rescaled when the max
    # grows), then loss = logsumexp - x[target].
    row = tl.program_id(0).to(tl.int64)
    base = x_ptr + row * n_cols
    cols = tl.arange(0, BLOCK)
    m = tl.full([BLOCK], -float("inf"), tl.float32)
    s = tl.zeros([BLOCK], tl.float32)
    for start in range(0, n_cols, BLOCK):
        mask = start + cols < n_cols
        x = tl.load(base + start + cols, mask=mask, other=-float("inf")).to(tl.float32)
        m_new = tl.maximum(m, x)
        # Lanes that have only seen -inf keep a zero sum (avoid exp(-inf - -inf) = nan).
        scale = tl.where(m_new == -float("inf"), 0.0, tl.exp(m - m_new))
        s = s * scale + tl.where(mask, tl.exp(x - m_new), 0.0)
        m = m_new
    row_max = tl.max(m, axis=0)
    total = tl.sum(tl.where(m == -float("inf"), 0.0, s * tl.exp(m - row_max)), axis=0)
    target = tl.load(t_ptr + row)
    valid = target != $ignore
    # The mask keeps an out-of-range target from reading outside the row.
    picked = tl.load(base + target, mask=valid & (target >= 0) & (target < n_cols), other=0.0)
    loss = tl.where(valid, row_max + tl.log(total) - picked.to(tl.float32), 0.0)
    tl.store(loss_ptr + row, loss)
'''

_CE_SINGLE = '''
@triton.jit
def ce_single_pass_kernel(loss_ptr, x_ptr, t_ptr, n_rows, n_cols, ROWS: tl.constexpr,
                          BLOCK: tl.constexpr):
    # ROWS whole rows per program, held in registers: the logits are read once.
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    rmask = rows < n_rows
    cols = tl.arange(0, BLOCK)
    mask = rmask[:, None] & (cols < n_cols)[None, :]
    offs = rows.to(tl.int64)[:, None] * n_cols + cols[None, :]
    x = tl.load(x_ptr + offs, mask=mask, other=-float("inf")).to(tl.float32)
    row_max = tl.max(x, axis=1)
    e = tl.where(mask, tl.exp(x - row_max[:, None]), 0.0)
    lse = row_max + tl.log(tl.sum(e, axis=1))
    target = tl.load(t_ptr + rows, mask=rmask, other=$ignore)
    picked = tl.sum(tl.where(cols[None, :] == target[:, None], x, 0.0), axis=1)
    loss = tl.where(rmask & (target != $ignore), lse - picked, 0.0)
    tl.store(loss_ptr + rows, loss, mask=rmask)
'''

_CE_VARIANTS: dict[str, tuple[dict[str, list[int]], str, str]] = {
    "row": ({"BLOCK": [2048, 1024, 4096, 512], "num_warps": [8, 4]}, _CE_ROW, """
        ce_row_kernel[(n_rows,)](losses, x, t, n_cols, BLOCK=BLOCK, num_warps=num_warps)
    """),
    "single_pass": ({"ROWS": [1, 2, 4], "num_warps": [8, 4, 16]}, _CE_SINGLE, """
        ce_single_pass_kernel[(triton.cdiv(n_rows, ROWS),)](
            losses, x, t, n_rows, n_cols, ROWS=ROWS, BLOCK=triton.next_power_of_2(n_cols),
            num_warps=num_warps,
        )
    """),
}


def _ce_source(analysis: TaskAnalysis, spec: _CrossEntropy, variant: str) -> str:
    space, kernel, launch = _CE_VARIANTS[variant]
    ignore = str(spec.ignore_index)
    if spec.reduction == "none":
        finish, loss_dtype = "        return losses", str(spec.dtype)
    else:
        finish, loss_dtype = _indent("""
            out = torch.empty((), dtype=$dtype, device=x.device)
            fblock = min(4096, max(128, triton.next_power_of_2(n_rows)))
            ce_reduce_kernel[(1,)](out, losses, t, n_rows, FBLOCK=fblock, num_warps=8)
            return out
        """, 8).replace("$dtype", str(spec.dtype)), "torch.float32"
    result = ("tl.sum(acc, axis=0) / tl.sum(cnt, axis=0)" if spec.reduction == "mean"
              else "tl.sum(acc, axis=0)")
    return _render(
        _CE_FRAME, variant=variant, what=spec.describe(), names=", ".join(space),
        space=_space(space), kernel=_render(kernel, ignore=ignore).rstrip() + "\n",
        ignore=ignore, result=result, params=parameter_skeleton(analysis.params),
        args=", ".join(spec.args), logits=spec.logits, target=spec.target,
        loss_dtype=loss_dtype, launch=_indent(launch, 8), finish=finish,
    )


class CrossEntropy(Template):
    """Cross-entropy on (N, C) logits and int64 targets (see the module docstring)."""

    name = "cross_entropy"

    def instantiate(self, analysis: TaskAnalysis) -> list[TemplateCandidate] | str:
        try:
            spec = _match_cross_entropy(analysis)
        except _Decline as e:
            return str(e)
        variants = ["row"] + (["single_pass"] if spec.shape[1] <= _SINGLE_PASS_MAX else [])
        return [TemplateCandidate(self.name, v, _ce_source(analysis, spec, v), spec.describe())
                for v in variants]


# ---------------------------------------------------------------------------------------------
# pointwise_loss: mean / sum over all elements of a pointwise expression of the inputs
# ---------------------------------------------------------------------------------------------

_COMPARE = {"lt": "<", "le": "<=", "gt": ">", "ge": ">="}
_ARITH = {"add": "+", "sub": "-", "mul": "*", "div": "/"}
_UNARY = {
    "neg": "-{}", "abs": "tl.abs({})", "square": "{0} * {0}", "sqrt": "tl.sqrt_rn({})",
    "exp": "tl.exp({})", "log": "tl.log({})", "sigmoid": "1.0 / (1.0 + tl.exp(-{}))",
    # where() rather than maximum(): NaN stays NaN, as in torch.relu/torch.clamp.
    "relu": "tl.where({0} < 0.0, 0.0, {0})",
}
_POWERS = {1: "{}", 2: "{0} * {0}", 3: "{0} * {0} * {0}", 0.5: "tl.sqrt_rn({})", -1: "1.0 / {}"}


class _Pointwise:
    """Translates a pointwise fx subgraph into Triton statements on fp32 values.

    Each node becomes one ``vK = ...`` line (so shared subexpressions are computed once);
    forward inputs become ``inK`` (loaded by the kernel), constants become literals.
    """

    def __init__(self, analysis: TaskAnalysis) -> None:
        self.analysis = analysis
        self.lines: list[str] = []
        self.names: dict[torch.fx.Node, str] = {}
        self.inputs: list[torch.fx.Node] = []
        self.used: set[torch.fx.Node] = set()

    def emit(self, expr: str) -> str:
        """Append ``vK = expr`` and return ``vK``."""
        name = f"v{len(self.lines)}"
        self.lines.append(f"{name} = {expr}")
        return name

    def value(self, a: Any) -> str:
        """The name or literal holding ``a`` (a node or a Python number)."""
        if not isinstance(a, torch.fx.Node):
            return _literal(a)
        if a not in self.names:
            if a.op == "placeholder":
                _input(a, f"loss operand {a.name!r}")
                self.names[a] = f"in{len(self.inputs)}"
                self.inputs.append(a)
            else:
                self.names[a] = self.emit(self._translate(a))
                self.used.add(a)
        return self.names[a]

    def _translate(self, node: torch.fx.Node) -> str:
        op = _op(self.analysis, node)
        if op is None or op.name not in (*_COMPARE, *_ARITH, *_UNARY, "pow", "clamp",
                                         "clamp_min", "clamp_max", "where"):
            raise _Decline(f"{node.name} is not a pointwise op this template fuses")
        if op.kwargs.get("alpha", 1) != 1 or op.kwargs.get("rounding_mode") is not None:
            raise _Decline(f"{node.name} has an alpha or rounding mode")
        v = self.value
        if op.name in _ARITH or op.name in _COMPARE:
            symbol = _ARITH.get(op.name) or _COMPARE[op.name]
            return f"{v(op.args[0])} {symbol} {v(op.arg(1, 'other'))}"
        if op.name in _UNARY:
            return _UNARY[op.name].format(v(op.args[0]))
        if op.name == "pow":
            e = op.arg(1, "exponent")
            if isinstance(e, bool) or e not in _POWERS:
                raise _Decline(f"{node.name} raises to {e!r} (only 2, 3, 1, 0.5 and -1 are fused)")
            return _POWERS[e].format(v(op.args[0]))
        if op.name == "where":
            if len(op.args) + len(op.kwargs) != 3:
                raise _Decline("torch.where with one argument is not pointwise")
            return f"tl.where({v(op.args[0])}, {v(op.arg(1, 'input'))}, {v(op.arg(2, 'other'))})"
        lo = op.arg(1, "min") if op.name in ("clamp", "clamp_min") else None
        hi = {"clamp": op.arg(2, "max"), "clamp_max": op.arg(1, "max")}.get(op.name)
        if isinstance(lo, torch.fx.Node) or isinstance(hi, torch.fx.Node):
            raise _Decline(f"{node.name} clamps to tensors, not constants")
        x = v(op.args[0])
        # Lower bound first, then upper, as torch.clamp does (min > max gives max).
        if lo is not None:
            low = f"tl.where({x} < {_literal(lo)}, {_literal(lo)}, {x})"
            if hi is None:
                return low
            x = self.emit(low)
        return f"tl.where({x} > {_literal(hi)}, {_literal(hi)}, {x})" if hi is not None else x


@dataclasses.dataclass(frozen=True)
class _Loss:
    """A recognised global loss: per-element statements, operands and how it is reduced."""

    what: str
    lines: tuple[str, ...]
    term: str  # the name holding one element's contribution
    inputs: tuple[str, ...]  # forward argument of each inK
    patterns: tuple[str, ...]  # per inK: "full", "inner", "outer" or "scalar"
    split: int  # the (rows, cols) view of the broadcast shape splits it after this many dims
    reduction: str  # "mean", "sum" or "batchmean"
    args: tuple[str, ...]
    shape: tuple[int, ...]
    out_dtype: torch.dtype

    def describe(self) -> str:
        bcast = [f"{a} {p}" for a, p in zip(self.inputs, self.patterns, strict=True) if p != "full"]
        extra = f", broadcast: {', '.join(bcast)}" if bcast else ""
        return f"{self.what} ({self.reduction}) over {self.shape}{extra}"


def _loss_body(expr: _Pointwise, op: _Op, what: str) -> str:
    """One element of a torch loss function, as statements on ``expr``; returns its name."""
    a, b = expr.value(op.args[0]), expr.value(op.args[1])
    if what == "kl_div":
        if op.kwargs.get("log_target", False):
            return expr.emit(f"tl.exp({b}) * ({b} - {a})")
        # torch's definition, xlogy(t, t) - t * input: a zero target's xlogy term is 0 (not
        # 0 * log 0 = NaN); t * input stays as it is, NaN for input -inf as in torch.
        return expr.emit(f"tl.where({b} == 0.0, 0.0, {b} * tl.log({b})) - {b} * {a}")
    d = expr.emit(f"{a} - {b}")
    if what == "mse_loss":
        return expr.emit(f"{d} * {d}")
    z = expr.emit(f"tl.abs({d})")
    if what == "l1_loss" or what == "smooth_l1_loss" and op.kwargs.get("beta", 1.0) == 0:
        return z
    if what == "smooth_l1_loss":
        beta = _literal(op.kwargs.get("beta", 1.0))
        return expr.emit(f"tl.where({z} < {beta}, 0.5 * {z} * {z} / {beta}, {z} - 0.5 * {beta})")
    delta = _literal(op.kwargs.get("delta", 1.0))
    return expr.emit(f"tl.where({z} < {delta}, 0.5 * {z} * {z}, {delta} * ({z} - 0.5 * {delta}))")


_LOSS_FUNCTIONS = ("mse_loss", "l1_loss", "smooth_l1_loss", "huber_loss", "kl_div")


def _broadcast(shape: tuple[int, ...], operands: list[tuple[int, ...]]) -> tuple[int, list[str]]:
    """View the broadcast ``shape`` as (rows, cols) split after ``k`` dims so that every operand
    is the whole tensor, a function of the column (``inner``), of the row (``outer``) or one
    value (``scalar``); returns ``(k, patterns)`` or declines."""
    r = len(shape)
    ks, patterns = set(range(r + 1)), []
    for t in operands:
        t = (1,) * (r - len(t)) + tuple(t)
        if t == tuple(shape) or math.prod(t) == 1:
            patterns.append("full" if t == tuple(shape) else "scalar")
            continue
        inner = {k for k in ks if set(t[:k]) <= {1} and t[k:] == shape[k:]}
        outer = {k for k in ks if t[:k] == shape[:k] and set(t[k:]) <= {1}}
        if not inner and not outer:
            raise _Decline(f"an operand of shape {t} broadcasts against {shape} in a way that is "
                           "not rows x columns")
        patterns.append("inner" if inner else "outer")
        ks = inner or outer
    return (min(ks) if any(p in ("inner", "outer") for p in patterns) else 0), patterns


def _match_loss(analysis: TaskAnalysis) -> _Loss:
    out = _output(analysis)
    op = _op(analysis, out)
    expr = _Pointwise(analysis)
    if op is not None and op.name in ("mean", "sum"):
        info = op.args[0].meta.get("info") if isinstance(op.args[0], torch.fx.Node) else None
        if info is None or op.kwargs.get("dtype") is not None:
            raise _Decline("the mean/sum is not of a tensor, or has a dtype argument")
        dim, shape = op.arg(1, "dim"), info.shape
        if op.arg(2, "keepdim", False) or dim is not None and _reduced_dims(dim, len(shape)) != (
                0, len(shape) - 1):
            raise _Decline("the reduction keeps dims (a row reduction, not a global loss)")
        term, reduction, what = expr.value(op.args[0]), op.name, "pointwise expression"
    elif op is not None and op.name in _LOSS_FUNCTIONS:
        if len(op.args) > 2:
            raise _Decline("options passed positionally to the loss are not read; use keywords")
        if op.kwargs.get("size_average") is not None or op.kwargs.get("reduce") is not None:
            raise _Decline("the legacy size_average/reduce arguments are not supported")
        if op.kwargs.get("weight") is not None:
            raise _Decline("a weighted loss is not supported")
        reduction, what = op.kwargs.get("reduction", "mean"), op.name
        if reduction not in ("mean", "sum", "batchmean") or (
                reduction == "batchmean" and what != "kl_div"):
            raise _Decline(f"reduction {reduction!r} is not a global reduction (use the "
                           "pointwise template for 'none')")
        infos = [a.meta.get("info") if isinstance(a, torch.fx.Node) else None for a in op.args]
        if any(i is None for i in infos):
            raise _Decline("the loss operands are not both tensors")
        shape = tuple(torch.broadcast_shapes(*(i.shape for i in infos)))
        if reduction == "batchmean" and (not shape or infos[0].shape != shape):
            raise _Decline("batchmean over an input that is broadcast is not supported")
        term = _loss_body(expr, op, what)
    else:
        raise _Decline("the reference is not a mean or sum of a pointwise loss")
    _only_nodes(analysis, expr.used | {out})
    split, patterns = _broadcast(shape, [n.meta["info"].shape for n in expr.inputs])
    args = tuple(n.target for n in analysis.nodes() if n.op == "placeholder")
    return _Loss(what, tuple(expr.lines), term, tuple(n.target for n in expr.inputs),
                 tuple(patterns), split, reduction, args, shape, out.meta["info"].dtype)


_LOSS_FRAME = '''
# kernelmap template pointwise_loss/split:
# $what.
import math

import torch
import torch.nn as nn
import triton
import triton.language as tl

# The evaluator injects one value of each as a module global (BLOCK, ITERS, num_warps).
SEARCH_SPACE = $space


@triton.jit
def loss_partial_kernel(partial_ptr, $ptrs, n_cols, n_chunks, BLOCK: tl.constexpr,
                        ITERS: tl.constexpr):
    # Phase 1: each program reduces BLOCK * ITERS elements of one row of the (rows, cols)
    # view to an fp32 partial: per-lane sums, then a tree (tl.sum).
    pid = tl.program_id(0)
$start
    cols = tl.arange(0, BLOCK)
    acc = tl.zeros([BLOCK], tl.float32)
    # Stop at the row's end: a short row's last chunk skips its empty iterations.
    for i in range(0, tl.minimum(ITERS, tl.cdiv(n_cols - start, BLOCK))):
        c = start + i * BLOCK + cols
        mask = c < n_cols
$body
        acc += tl.where(mask, $term, 0.0)
    tl.store(partial_ptr + pid, tl.sum(acc, axis=0))


@triton.jit
def loss_finish_kernel(out_ptr, partial_ptr, n_partials, denom, FBLOCK: tl.constexpr):
    # Phase 2: one program sums the partials in a fixed order (deterministic, no atomics).
    offs = tl.arange(0, FBLOCK)
    acc = tl.zeros([FBLOCK], tl.float32)
    for start in range(0, n_partials, FBLOCK):
        mask = start + offs < n_partials
        acc += tl.load(partial_ptr + start + offs, mask=mask, other=0.0)
    tl.store(out_ptr, tl.sum(acc, axis=0) / denom)


class ModelNew(nn.Module):
    def __init__(self, *args, **kwargs):
        super().__init__()
$params

    def forward(self, $args):
$contiguous
        shape = torch.broadcast_shapes($shapes)
        n_rows = math.prod(shape[:$split])
        n_cols = math.prod(shape[$split:])
        n_chunks = max(1, triton.cdiv(n_cols, BLOCK * ITERS))
        partials = torch.empty(n_rows * n_chunks, dtype=torch.float32, device=in0.device)
        loss_partial_kernel[(n_rows * n_chunks,)](
            partials, $names, n_cols, n_chunks, BLOCK=BLOCK, ITERS=ITERS, num_warps=num_warps
        )
        out = torch.empty((), dtype=$dtype, device=in0.device)
        denom = $denom
        fblock = min(4096, max(128, triton.next_power_of_2(n_rows * n_chunks)))
        loss_finish_kernel[(1,)](out, partials, n_rows * n_chunks, denom, FBLOCK=fblock,
                                 num_warps=8)
        return out
'''

_LOSS_SPACE = {"BLOCK": [2048, 1024, 4096], "ITERS": [8, 32], "num_warps": [8, 4]}


def _loss_source(analysis: TaskAnalysis, spec: _Loss) -> str:
    names = [f"in{k}" for k in range(len(spec.inputs))]
    if spec.split:
        start = """
            row = (pid // n_chunks).to(tl.int64)
            start = (pid % n_chunks).to(tl.int64) * (BLOCK * ITERS)
        """
    else:
        start = "start = pid.to(tl.int64) * (BLOCK * ITERS)"
    start_lines, body = [_indent(start, 4)], []
    index = {"full": "row * n_cols + c" if spec.split else "c", "inner": "c"}
    for name, pattern in zip(names, spec.patterns, strict=True):
        if pattern in index:
            body.append(f"{name} = tl.load({name}_ptr + {index[pattern]}, mask=mask, other=0.0)"
                        ".to(tl.float32)")
        else:  # one value per row or per tensor: loaded once, outside the loop
            at = " + row" if pattern == "outer" else ""
            start_lines.append(f"    {name} = tl.load({name}_ptr{at}).to(tl.float32)")
    denom = {"mean": "float(n_rows * n_cols)", "sum": "1.0", "batchmean": "float(shape[0])"}
    return _render(
        _LOSS_FRAME, what=spec.describe(), space=_space(_LOSS_SPACE),
        ptrs=", ".join(f"{n}_ptr" for n in names), start="\n".join(start_lines),
        body=_indent("\n".join(body + list(spec.lines)), 8), term=spec.term,
        params=parameter_skeleton(analysis.params), args=", ".join(spec.args),
        # One tuple assignment: a forward argument may itself be called in0, in1...
        contiguous=f"        {', '.join(names)} = "
                   + ", ".join(f"{a}.contiguous()" for a in spec.inputs),
        shapes=", ".join(f"{n}.shape" for n in names), split=str(spec.split),
        names=", ".join(names), dtype=str(spec.out_dtype), denom=denom[spec.reduction],
    )


class PointwiseLoss(Template):
    """Mean/sum over all elements of a pointwise loss (see the module docstring)."""

    name = "pointwise_loss"

    def instantiate(self, analysis: TaskAnalysis) -> list[TemplateCandidate] | str:
        try:
            spec = _match_loss(analysis)
        except _Decline as e:
            return str(e)
        return [TemplateCandidate(self.name, "split", _loss_source(analysis, spec),
                                  spec.describe())]


TEMPLATES: list[Template] = [LpNorm(), CrossEntropy(), PointwiseLoss()]
