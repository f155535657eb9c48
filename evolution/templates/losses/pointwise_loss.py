"""The ``pointwise_loss`` template: the mean or sum over all elements of a pointwise expression.

Recognises MSE, L1, smooth L1, Huber, KL-div, hinge, written as loss functions or modules or by
hand (``torch.mean(torch.clamp(1 - p * t, min=0))``), with targets broadcast along leading or
trailing dims. Variant ``split``: each program reduces ``BLOCK * ITERS`` elements to an fp32
partial, one program sums the partials in a fixed order.

The norm and cross-entropy templates live in :mod:`~evolution.templates.losses.lp_norm` and
:mod:`~evolution.templates.losses.cross_entropy`; the graph reading all three share in
:mod:`~evolution.templates.losses.match`.

Every reduction accumulates in fp32 lanes and finishes with ``tl.sum`` trees, so long sums stay
accurate and results are deterministic (no atomics).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
import torch.fx

from evolution.templates.analysis import TaskAnalysis, parameter_skeleton
from evolution.templates.base import Template, TemplateCandidate
from evolution.templates.losses.match import (
    Decline,
    Op,
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

_COMPARE = {"lt": "<", "le": "<=", "gt": ">", "ge": ">="}
_ARITH = {"add": "+", "sub": "-", "mul": "*", "div": "/"}
_UNARY = {
    "neg": "-{}",
    "abs": "tl.abs({})",
    "square": "{0} * {0}",
    "sqrt": "tl.sqrt_rn({})",
    "exp": "tl.exp({})",
    "log": "tl.log({})",
    "sigmoid": "1.0 / (1.0 + tl.exp(-{}))",
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
            return literal(a)
        if a not in self.names:
            if a.op == "placeholder":
                forward_input(a, f"loss operand {a.name!r}")
                self.names[a] = f"in{len(self.inputs)}"
                self.inputs.append(a)
            else:
                self.names[a] = self.emit(self._translate(a))
                self.used.add(a)
        return self.names[a]

    def _translate(self, node: torch.fx.Node) -> str:
        op = read_op(self.analysis, node)
        if op is None or op.name not in (
            *_COMPARE,
            *_ARITH,
            *_UNARY,
            "pow",
            "clamp",
            "clamp_min",
            "clamp_max",
            "where",
        ):
            raise Decline(f"{node.name} is not a pointwise op this template fuses")
        if op.kwargs.get("alpha", 1) != 1 or op.kwargs.get("rounding_mode") is not None:
            raise Decline(f"{node.name} has an alpha or rounding mode")
        v = self.value
        if op.name in _ARITH or op.name in _COMPARE:
            symbol = _ARITH.get(op.name) or _COMPARE[op.name]
            return f"{v(op.args[0])} {symbol} {v(op.arg(1, 'other'))}"
        if op.name in _UNARY:
            return _UNARY[op.name].format(v(op.args[0]))
        if op.name == "pow":
            e = op.arg(1, "exponent")
            if isinstance(e, bool) or e not in _POWERS:
                raise Decline(f"{node.name} raises to {e!r} (only 2, 3, 1, 0.5 and -1 are fused)")
            return _POWERS[e].format(v(op.args[0]))
        if op.name == "where":
            if len(op.args) + len(op.kwargs) != 3:
                raise Decline("torch.where with one argument is not pointwise")
            return f"tl.where({v(op.args[0])}, {v(op.arg(1, 'input'))}, {v(op.arg(2, 'other'))})"
        lo = op.arg(1, "min") if op.name in ("clamp", "clamp_min") else None
        hi = {"clamp": op.arg(2, "max"), "clamp_max": op.arg(1, "max")}.get(op.name)
        if isinstance(lo, torch.fx.Node) or isinstance(hi, torch.fx.Node):
            raise Decline(f"{node.name} clamps to tensors, not constants")
        x = v(op.args[0])
        # Lower bound first, then upper, as torch.clamp does (min > max gives max).
        if lo is not None:
            low = f"tl.where({x} < {literal(lo)}, {literal(lo)}, {x})"
            if hi is None:
                return low
            x = self.emit(low)
        return f"tl.where({x} > {literal(hi)}, {literal(hi)}, {x})" if hi is not None else x


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


def _loss_body(expr: _Pointwise, op: Op, what: str) -> str:
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
        beta = literal(op.kwargs.get("beta", 1.0))
        return expr.emit(f"tl.where({z} < {beta}, 0.5 * {z} * {z} / {beta}, {z} - 0.5 * {beta})")
    delta = literal(op.kwargs.get("delta", 1.0))
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
            raise Decline(
                f"an operand of shape {t} broadcasts against {shape} in a way that is "
                "not rows x columns"
            )
        patterns.append("inner" if inner else "outer")
        ks = inner or outer
    return (min(ks) if any(p in ("inner", "outer") for p in patterns) else 0), patterns


def _match_loss(analysis: TaskAnalysis) -> _Loss:
    out = output_node(analysis)
    op = read_op(analysis, out)
    expr = _Pointwise(analysis)
    if op is not None and op.name in ("mean", "sum"):
        info = op.args[0].meta.get("info") if isinstance(op.args[0], torch.fx.Node) else None
        if info is None or op.kwargs.get("dtype") is not None:
            raise Decline("the mean/sum is not of a tensor, or has a dtype argument")
        dim, shape = op.arg(1, "dim"), info.shape
        if (
            op.arg(2, "keepdim", False)
            or dim is not None
            and reduced_dims(dim, len(shape)) != (0, len(shape) - 1)
        ):
            raise Decline("the reduction keeps dims (a row reduction, not a global loss)")
        term, reduction, what = expr.value(op.args[0]), op.name, "pointwise expression"
    elif op is not None and op.name in _LOSS_FUNCTIONS:
        if len(op.args) > 2:
            raise Decline("options passed positionally to the loss are not read; use keywords")
        if op.kwargs.get("size_average") is not None or op.kwargs.get("reduce") is not None:
            raise Decline("the legacy size_average/reduce arguments are not supported")
        if op.kwargs.get("weight") is not None:
            raise Decline("a weighted loss is not supported")
        reduction, what = op.kwargs.get("reduction", "mean"), op.name
        if reduction not in ("mean", "sum", "batchmean") or (
            reduction == "batchmean" and what != "kl_div"
        ):
            raise Decline(
                f"reduction {reduction!r} is not a global reduction (use the "
                "pointwise template for 'none')"
            )
        infos = [a.meta.get("info") if isinstance(a, torch.fx.Node) else None for a in op.args]
        if any(i is None for i in infos):
            raise Decline("the loss operands are not both tensors")
        shape = tuple(torch.broadcast_shapes(*(i.shape for i in infos)))
        if reduction == "batchmean" and (not shape or infos[0].shape != shape):
            raise Decline("batchmean over an input that is broadcast is not supported")
        term = _loss_body(expr, op, what)
    else:
        raise Decline("the reference is not a mean or sum of a pointwise loss")
    only_nodes(analysis, expr.used | {out})
    split, patterns = _broadcast(shape, [n.meta["info"].shape for n in expr.inputs])
    args = forward_args(analysis)
    return _Loss(
        what,
        tuple(expr.lines),
        term,
        tuple(n.target for n in expr.inputs),
        tuple(patterns),
        split,
        reduction,
        args,
        shape,
        out.meta["info"].dtype,
    )


_LOSS_FRAME = """
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
"""

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
    start_lines, body = [indent(start, 4)], []
    index = {"full": "row * n_cols + c" if spec.split else "c", "inner": "c"}
    for name, pattern in zip(names, spec.patterns, strict=True):
        if pattern in index:
            body.append(
                f"{name} = tl.load({name}_ptr + {index[pattern]}, mask=mask, other=0.0)"
                ".to(tl.float32)"
            )
        else:  # one value per row or per tensor: loaded once, outside the loop
            at = " + row" if pattern == "outer" else ""
            start_lines.append(f"    {name} = tl.load({name}_ptr{at}).to(tl.float32)")
    denom = {"mean": "float(n_rows * n_cols)", "sum": "1.0", "batchmean": "float(shape[0])"}
    return render(
        _LOSS_FRAME,
        what=spec.describe(),
        space=space_json(_LOSS_SPACE),
        ptrs=", ".join(f"{n}_ptr" for n in names),
        start="\n".join(start_lines),
        body=indent("\n".join(body + list(spec.lines)), 8),
        term=spec.term,
        params=parameter_skeleton(analysis.params),
        args=", ".join(spec.args),
        # One tuple assignment: a forward argument may itself be called in0, in1...
        contiguous=f"        {', '.join(names)} = "
        + ", ".join(f"{a}.contiguous()" for a in spec.inputs),
        shapes=", ".join(f"{n}.shape" for n in names),
        split=str(spec.split),
        names=", ".join(names),
        dtype=str(spec.out_dtype),
        denom=denom[spec.reduction],
    )


class PointwiseLoss(Template):
    """Mean/sum over all elements of a pointwise loss (see the module docstring)."""

    name = "pointwise_loss"

    def instantiate(self, analysis: TaskAnalysis) -> list[TemplateCandidate] | str:
        try:
            spec = _match_loss(analysis)
        except Decline as e:
            return str(e)
        return [
            TemplateCandidate(self.name, "split", _loss_source(analysis, spec), spec.describe())
        ]


TEMPLATES: list[Template] = [PointwiseLoss()]
