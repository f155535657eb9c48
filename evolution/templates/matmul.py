"""Matmul / linear with a fused pointwise epilogue: one tiled Triton GEMM, or a split-K pair.

Matches a reference whose graph is one matrix product (``torch.matmul``, ``@``, ``torch.mm``,
``torch.bmm``, ``torch.addmm``, ``torch.baddbmm``, ``nn.Linear``, ``F.linear``; operands are
inputs or parameters, possibly transposed in their last two dims) followed by pointwise ops on
its result only: the KernelBench level-2 "Gemm + multiply + LeakyReLU", "Matmul + Mish + Mish",
"Matmul + divide + GELU" family. The epilogue is any graph of arithmetic, activations (ReLU,
GELU exact/tanh, sigmoid, tanh, SiLU, Mish, ELU, SELU, softplus, hard* ...), clamps,
minimum/maximum and eval-mode BatchNorm1d, whose other operands are Python scalars,
one-element tensors, per-output-column ``(N,)`` tensors or output-shaped tensors (a residual).

Variants:

- ``tiled``: the classic GEMM tile loop with grouped program ordering (GROUP_M), fp32
  accumulation and the epilogue applied to the accumulator tile before the one store.
- ``split_k`` (offered when K is much larger than M and N): SPLIT_K programs per output tile
  each reduce one K range into an fp32 workspace; a second kernel sums the partials in a fixed
  order (deterministic, no atomics) and applies the epilogue.

The schedule is ``CONFIG``, an index into a tuple of tile configurations baked into the source
(BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, num_warps, num_stages), plus ``SPLIT_K`` for split-K. The
dot product is strict fp32 (``input_precision="ieee"``) unless the task sets ``ALLOW_TF32``;
fp16/bf16 tasks take the native tensor-core path and store in their dtype.

Declined: several matmuls, ops before the matmul (reshapes, scaling of inputs), reductions, a
softmax or masks (triu) after it, epilogue operands of other shapes (per-row vectors, general
broadcasts), a 1-D right operand, broadcast batch dimensions, float64 and integer dtypes.
"""

from __future__ import annotations

import dataclasses
import math
import operator
import textwrap
from typing import Any

import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F

from evolution.templates.analysis import TaskAnalysis, parameter_skeleton
from evolution.templates.base import Template, TemplateCandidate

# Tile configurations (BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, num_warps, num_stages); the first of
# each is the default for large KernelBench shapes on an H100/H200. Strict fp32 dots run on the
# FMA units (no tensor cores), so they want a smaller BLOCK_K than the tensor-core paths.
_TILED_CONFIGS = {
    "ieee": (
        (128, 128, 32, 8, 8, 3), (128, 128, 16, 8, 8, 4), (64, 128, 32, 8, 4, 3),
        (128, 64, 32, 8, 4, 3), (64, 64, 32, 8, 4, 4), (128, 256, 16, 8, 8, 3),
        (128, 16, 64, 8, 4, 3), (32, 64, 32, 8, 2, 4),
    ),
    "tf32": (
        (128, 256, 32, 8, 8, 3), (64, 256, 32, 8, 4, 4), (128, 128, 32, 8, 4, 4),
        (128, 64, 32, 8, 4, 4), (64, 128, 32, 8, 4, 4), (256, 128, 32, 8, 8, 3),
        (128, 16, 64, 8, 4, 3), (32, 64, 32, 8, 2, 5),
    ),
    "half": (
        (128, 256, 64, 8, 8, 3), (64, 256, 32, 8, 4, 4), (128, 128, 32, 8, 4, 4),
        (128, 64, 32, 8, 4, 4), (64, 128, 32, 8, 4, 4), (128, 128, 64, 8, 8, 3),
        (128, 16, 64, 8, 4, 3), (32, 64, 32, 8, 2, 5),
    ),
}
# Split-K tiles are smaller: the point is to have enough programs when M*N is small.
_SPLIT_CONFIGS = {
    "ieee": ((64, 64, 32, 8, 4, 3), (32, 64, 32, 8, 4, 3), (64, 128, 32, 8, 4, 3),
             (128, 128, 32, 8, 8, 3)),
    "tf32": ((64, 64, 32, 8, 4, 3), (32, 64, 64, 8, 4, 3), (64, 128, 32, 8, 4, 3),
             (128, 128, 32, 8, 8, 3)),
    "half": ((64, 64, 64, 8, 4, 3), (32, 64, 64, 8, 4, 4), (64, 128, 64, 8, 4, 3),
             (128, 128, 64, 8, 8, 3)),
}
_SPLIT_K = [16, 4, 8, 32, 64]
# Offer split-K when K dwarfs the output: K >= this factor * max(M, N).
_SPLIT_K_RATIO = 4

_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


class _Decline(Exception):
    """Internal: the reference is outside what this template covers (message: why)."""


# --------------------------------------------------------------------------------------------
# Matching: the matrix product and its operands
# --------------------------------------------------------------------------------------------

_MATMUL_FUNCTIONS = {torch.matmul, operator.matmul, torch.mm, torch.bmm}
_MATMUL_METHODS = {"matmul", "mm", "bmm", "__matmul__"}
# beta * input + alpha * (A @ B)
_ADDMM_FUNCTIONS = {torch.addmm, torch.baddbmm}
# Ops that only look through to their input (no copy semantics matter for a fresh output).
_IDENTITY_METHODS = {"contiguous", "clone", "detach"}


def _arg(node: torch.fx.Node, i: int, name: str, default: Any = None) -> Any:
    """Positional argument ``i`` or keyword ``name`` of a call node."""
    return node.args[i] if len(node.args) > i else node.kwargs.get(name, default)


def _scalar(value: Any) -> float | None:
    """A Python number (or a graph node that evaluated to one), else None."""
    if isinstance(value, torch.fx.Node) and value.meta.get("info") is None:
        value = value.meta.get("value")
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _literal(value: float) -> str:
    if not math.isfinite(value):
        raise _Decline(f"the epilogue uses the non-finite constant {value!r}")
    return repr(float(value))


def _attr_expr(target: str, analysis: TaskAnalysis) -> str:
    """``self.<key>`` for a state_dict entry the candidate will also have."""
    if target not in analysis.params:
        raise _Decline(f"the reference reads attribute {target!r}, which is not in its state_dict")
    if not all(part.isidentifier() for part in target.split(".")):
        raise _Decline(f"parameter key {target!r} is not a Python attribute path")
    return f"self.{target}"


def _int(value: Any) -> int | None:
    """A Python int (or a graph node that evaluated to one), else None."""
    if isinstance(value, torch.fx.Node) and value.meta.get("info") is None:
        value = value.meta.get("value")
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _is_last_two(dims: list[Any], rank: int) -> bool | None:
    """Whether the dims (a transpose's pair, a permutation) swap exactly the last two."""
    ints = [_int(d) for d in dims]
    if rank < 2 or any(d is None for d in ints):
        return None
    return sorted(d % rank for d in ints) == [rank - 2, rank - 1] or None


def _transposes(node: torch.fx.Node) -> bool | None:
    """Whether ``node`` swaps the last two dims of its input (True), is a no-op view (False)."""
    info = node.args[0].meta.get("info") if node.args else None
    rank = len(info.shape) if info is not None else 0
    name = node.target if node.op == "call_method" else getattr(node.target, "__name__", "")
    if node.op == "call_function" and node.target is getattr and len(node.args) == 2:
        name = node.args[1]
        if name == "mT" or (name == "T" and rank == 2):
            return True
        return None
    if node.op not in ("call_method", "call_function"):
        return None
    if node.op == "call_function" and node.target not in (torch.t, torch.transpose,
                                                          torch.permute):
        return None
    if name == "t" and rank == 2:
        return True
    if name == "transpose":
        return _is_last_two([_arg(node, 1, "dim0"), _arg(node, 2, "dim1")], rank)
    if name == "permute":
        dims = list(node.args[1:]) if node.op == "call_method" else list(_arg(node, 1, "dims"))
        if len(dims) == 1 and isinstance(dims[0], list | tuple):
            dims = list(dims[0])
        ints = [_int(d) for d in dims]
        if len(ints) != rank or any(d is None for d in ints):
            return None
        want = list(range(rank - 2)) + [rank - 1, rank - 2]
        return True if [d % rank for d in ints] == want else None
    if node.op == "call_method" and name in _IDENTITY_METHODS:
        return False
    return None


@dataclasses.dataclass
class _Operand:
    """A matmul operand: the host expression of its (possibly transposed) view, and its shape."""

    expr: str
    shape: tuple[int, ...]

    @property
    def rank(self) -> int:
        return len(self.shape)


def _operand(node: Any, analysis: TaskAnalysis, used: set[torch.fx.Node]) -> _Operand:
    """Resolve a matmul operand to an input or parameter, through transposes and no-op views."""
    swaps = 0
    while isinstance(node, torch.fx.Node) and node.op not in ("placeholder", "get_attr"):
        swap = _transposes(node)
        if swap is None:
            raise _Decline(f"the matmul operand {node.name!r} is computed ({_describe(node)});"
                           " only inputs, parameters and their transposes are fused")
        used.add(node)
        swaps += swap
        node = node.args[0]
    if not isinstance(node, torch.fx.Node):
        raise _Decline("a matmul operand is not a tensor")
    info = node.meta.get("info")
    if info is None:
        raise _Decline(f"the matmul operand {node.name!r} has no known shape")
    expr = _input_name(node) if node.op == "placeholder" else _attr_expr(str(node.target), analysis)
    shape = tuple(info.shape)
    if swaps % 2:
        expr += ".transpose(-2, -1)"
        shape = shape[:-2] + shape[-2:][::-1]
    return _Operand(str(expr), shape)


# Names the generated forward uses for itself; inputs named like them get a trailing "_".
_HOST_NAMES = {"self", "lhs", "rhs", "lhs3", "rhs3", "out", "torch", "nn", "triton", "tl",
               "matmul_epilogue", "CONFIGS", "CONFIG", "SPLIT_K", "SEARCH_SPACE"}


def _input_name(node: torch.fx.Node) -> str:
    """The generated forward's name for the input ``node`` (a placeholder)."""
    name = str(node.target)
    return name + "_" if name in _HOST_NAMES else name


def _describe(node: torch.fx.Node) -> str:
    target = node.target
    return str(target) if isinstance(target, str) else getattr(target, "__name__", str(target))


@dataclasses.dataclass
class _Gemm:
    """The recognised product ``alpha * (A @ B) + beta * bias``.

    ``bias`` is an nn.Linear's bias (its host expression, a per-column vector) or an operand
    node of F.linear / addmm (classified like any epilogue operand), or None.
    """

    node: torch.fx.Node
    a: _Operand
    b: _Operand
    bias: str | torch.fx.Node | None
    used: set[torch.fx.Node]
    alpha: float = 1.0
    beta: float = 1.0


def _transposed(w: _Operand, what: str) -> _Operand:
    """B = W^T for the (N, K) weight ``w`` of a linear layer."""
    if w.rank != 2:
        raise _Decline(f"the linear weight {what!r} is not 2-D")
    return _Operand(f"{w.expr}.t()", w.shape[::-1])


def _is_gemm(node: torch.fx.Node, analysis: TaskAnalysis) -> bool:
    """Whether ``node`` is a matrix product in one of the spellings this template knows."""
    if node.op == "call_module":
        return type(analysis.module_of(node)) is nn.Linear
    if node.op == "call_function":
        return node.target in (F.linear, *_MATMUL_FUNCTIONS, *_ADDMM_FUNCTIONS)
    return node.op == "call_method" and node.target in _MATMUL_METHODS


def _gemm(node: torch.fx.Node, analysis: TaskAnalysis) -> _Gemm:
    """The matrix product ``node`` (for which _is_gemm holds) computes."""
    used = {node}
    module = analysis.module_of(node)
    if node.op == "call_module":
        key = f"{node.target}.weight"
        expr = _attr_expr(key, analysis)
        w = _transposed(_Operand(expr, tuple(analysis.params[key].shape)), key)
        bias = _attr_expr(f"{node.target}.bias", analysis) if module.bias is not None else None
        return _Gemm(node, _operand(node.args[0], analysis, used), w, bias, used)
    if node.op == "call_function" and node.target is F.linear:
        w = _transposed(_operand(_arg(node, 1, "weight"), analysis, used), node.name)
        return _Gemm(node, _operand(node.args[0], analysis, used), w, _arg(node, 2, "bias"),
                     used)
    if node.op == "call_function" and node.target in _ADDMM_FUNCTIONS:
        a = _operand(_arg(node, 1, "mat1" if node.target is torch.addmm else "batch1"),
                     analysis, used)
        b = _operand(_arg(node, 2, "mat2" if node.target is torch.addmm else "batch2"),
                     analysis, used)
        alpha, beta = _scalar(node.kwargs.get("alpha", 1)), _scalar(node.kwargs.get("beta", 1))
        if alpha is None or beta is None:
            raise _Decline("addmm with tensor alpha or beta is not covered")
        return _Gemm(node, a, b, node.args[0], used, alpha, beta)
    if len(node.args) < 2:
        raise _Decline(f"{node.name!r} is a matmul without two operands")
    a = _operand(node.args[0], analysis, used)
    b = _operand(node.args[1], analysis, used)
    return _Gemm(node, a, b, None, used)


# --------------------------------------------------------------------------------------------
# Matching: the pointwise epilogue
# --------------------------------------------------------------------------------------------

# A pointwise op as (name, tensor-or-scalar operands, constants); _EXPRESSIONS writes each one.
_Op = tuple[str, list[Any], dict[str, Any]]

_BINARY_FUNCTIONS = {
    operator.add: "add", torch.add: "add", operator.sub: "sub", torch.sub: "sub",
    torch.subtract: "sub", operator.mul: "mul", torch.mul: "mul", torch.multiply: "mul",
    operator.truediv: "div", torch.div: "div", torch.divide: "div", torch.true_divide: "div",
}
_BINARY_METHODS = {"add": "add", "sub": "sub", "subtract": "sub", "mul": "mul",
                   "multiply": "mul", "div": "div", "divide": "div", "true_divide": "div"}
_UNARY_FUNCTIONS = {
    torch.relu: "relu", F.relu: "relu", F.relu6: "relu6", torch.sigmoid: "sigmoid",
    F.sigmoid: "sigmoid", torch.tanh: "tanh", F.tanh: "tanh", F.silu: "silu", F.mish: "mish",
    F.selu: "selu", F.hardsigmoid: "hardsigmoid", F.hardswish: "hardswish",
    F.softsign: "softsign", torch.abs: "abs", torch.exp: "exp", torch.square: "square",
    operator.neg: "neg", torch.neg: "neg", torch.negative: "neg",
}
_UNARY_METHODS = {"relu", "sigmoid", "tanh", "abs", "exp", "square", "neg"}


def _clamp_op(x: Any, lo: Any, hi: Any) -> _Op | None:
    bounds = [None if v is None else _scalar(v) for v in (lo, hi)]
    if any(b is None and v is not None for b, v in zip(bounds, (lo, hi), strict=True)):
        return None  # a tensor bound
    return "clamp", [x], {"lo": bounds[0], "hi": bounds[1]}


def _is_tensor(value: Any) -> bool:
    return isinstance(value, torch.fx.Node) and value.meta.get("info") is not None


def _function_op(node: torch.fx.Node) -> _Op | None:
    t, a = node.target, node.args
    # torch.min/max(x, other) with a tensor ``other`` is elementwise (with an int: a reduction).
    if t in (torch.minimum, torch.maximum) or (
            t in (torch.min, torch.max) and _is_tensor(_arg(node, 1, "other"))):
        name = "minimum" if t in (torch.minimum, torch.min) else "maximum"
        return name, [a[0], _arg(node, 1, "other")], {}
    if t in _BINARY_FUNCTIONS:
        if _arg(node, 2, "rounding_mode") is not None:
            return None
        alpha = node.kwargs.get("alpha", 1)
        return _BINARY_FUNCTIONS[t], [a[0], _arg(node, 1, "other")], {"alpha": alpha}
    if t in _UNARY_FUNCTIONS:
        return _UNARY_FUNCTIONS[t], [a[0]], {}
    if t in (torch.clamp, torch.clip):
        return _clamp_op(a[0], _arg(node, 1, "min"), _arg(node, 2, "max"))
    if t is torch.clamp_min:
        return _clamp_op(a[0], _arg(node, 1, "min"), None)
    if t is torch.clamp_max:
        return _clamp_op(a[0], None, _arg(node, 1, "max"))
    if t is F.hardtanh:
        return _clamp_op(a[0], _arg(node, 1, "min_val", -1.0), _arg(node, 2, "max_val", 1.0))
    if t is F.leaky_relu:
        return "leaky_relu", [a[0]], {"slope": _arg(node, 1, "negative_slope", 0.01)}
    if t is F.gelu:
        return "gelu", [a[0]], {"approximate": node.kwargs.get("approximate", "none")}
    if t is F.elu:
        return "elu", [a[0]], {"alpha": _arg(node, 1, "alpha", 1.0)}
    if t is F.softplus:
        return "softplus", [a[0]], {"beta": _arg(node, 1, "beta", 1.0),
                                    "threshold": _arg(node, 2, "threshold", 20.0)}
    if t in (operator.pow, torch.pow):
        return "pow", [a[0]], {"exponent": _arg(node, 1, "exponent")}
    if t is F.dropout and _scalar(_arg(node, 1, "p", 0.5)) == 0.0:
        return "identity", [a[0]], {}
    return None


def _method_op(node: torch.fx.Node) -> _Op | None:
    name, a = str(node.target), node.args
    if name.endswith("_") and not name.endswith("__"):
        name = name[:-1]  # in-place: the caller checks nothing else reads the old value
    if name in _BINARY_METHODS and node.kwargs.get("rounding_mode") is None:
        other = _arg(node, 1, "other")
        return _BINARY_METHODS[name], [a[0], other], {"alpha": node.kwargs.get("alpha", 1)}
    if name in _UNARY_METHODS:
        return name, [a[0]], {}
    if name in ("minimum", "maximum", "min", "max") and _is_tensor(_arg(node, 1, "other")):
        other = _arg(node, 1, "other")
        return {"min": "minimum", "max": "maximum"}.get(name, name), [a[0], other], {}
    if name in ("clamp", "clip"):
        return _clamp_op(a[0], _arg(node, 1, "min"), _arg(node, 2, "max"))
    if name == "clamp_min":
        return _clamp_op(a[0], _arg(node, 1, "min"), None)
    if name == "clamp_max":
        return _clamp_op(a[0], None, _arg(node, 1, "max"))
    if name == "pow":
        return "pow", [a[0]], {"exponent": _arg(node, 1, "exponent")}
    if name in _IDENTITY_METHODS:
        return "identity", [a[0]], {}
    return None


def _module_op(node: torch.fx.Node, m: nn.Module | None) -> _Op | None:
    x = node.args[0] if node.args else None
    simple = {nn.ReLU: "relu", nn.Sigmoid: "sigmoid", nn.Tanh: "tanh", nn.SiLU: "silu",
              nn.Mish: "mish", nn.SELU: "selu", nn.Hardsigmoid: "hardsigmoid",
              nn.Hardswish: "hardswish", nn.Softsign: "softsign", nn.Identity: "identity",
              nn.Dropout: "identity"}  # the evaluator runs the reference in eval mode
    for cls, name in simple.items():
        if type(m) is cls:
            return name, [x], {}
    if isinstance(m, nn.Hardtanh):  # ReLU6 too
        return _clamp_op(x, m.min_val, m.max_val)
    if isinstance(m, nn.LeakyReLU):
        return "leaky_relu", [x], {"slope": m.negative_slope}
    if isinstance(m, nn.GELU):
        return "gelu", [x], {"approximate": m.approximate}
    if isinstance(m, nn.ELU):
        return "elu", [x], {"alpha": m.alpha}
    if type(m) is nn.BatchNorm1d and m.track_running_stats:
        # The evaluator runs the reference in eval mode: a per-column affine map.
        return "batch_norm", [x], {"module": str(node.target), "eps": m.eps, "affine": m.affine}
    if isinstance(m, nn.Softplus):
        return "softplus", [x], {"beta": m.beta, "threshold": m.threshold}
    return None


def _pointwise(node: torch.fx.Node, analysis: TaskAnalysis) -> _Op | None:
    """The pointwise op ``node`` computes, in canonical form, or None."""
    if node.op == "call_function":
        return _function_op(node)
    if node.op == "call_method":
        return _method_op(node)
    if node.op == "call_module":
        return _module_op(node, analysis.module_of(node))
    return None


def _inplace(node: torch.fx.Node, analysis: TaskAnalysis) -> bool:
    if node.op == "call_method":
        name = str(node.target)
        return name.endswith("_") and not name.endswith("__")
    if node.op == "call_module":
        return bool(getattr(analysis.module_of(node), "inplace", False))
    # F.relu(x, True), F.leaky_relu(x, 0.1, True)...: the only boolean arguments are inplace
    # flags (dropout's training flag errs on the safe side).
    return bool(node.kwargs.get("inplace", False)) or any(a is True for a in node.args[1:])


_ERF = "tl.erf({x} * 0.7071067811865476)"
_GELU_TANH = "_tanh(0.7978845608028654 * ({x} + 0.044715 * {x} * {x} * {x}))"
_SELU = ("1.0507009873554805 * tl.where({x} > 0.0, {x},"
         " 1.6732632423543772 * (tl.exp({x}) - 1.0))")
# The unary ops as Triton expressions of ``{x}`` (an fp32 tile). Comparisons via tl.where keep
# NaN where the reference has it (tl.maximum may drop it on the GPU).
_UNARY_EXPRESSIONS = {
    "identity": "{x}",
    "neg": "-{x}",
    "abs": "tl.abs({x})",
    "exp": "tl.exp({x})",
    "square": "{x} * {x}",
    "relu": "tl.where({x} < 0.0, 0.0, {x})",
    "relu6": "_clamp({x}, 0.0, 6.0)",
    "sigmoid": "tl.sigmoid({x})",
    "silu": "{x} * tl.sigmoid({x})",
    "tanh": "_tanh({x})",
    "mish": "{x} * _tanh(_softplus({x}))",
    "selu": _SELU,
    "hardsigmoid": "_clamp({x} / 6.0 + 0.5, 0.0, 1.0)",
    "hardswish": "{x} * _clamp({x} / 6.0 + 0.5, 0.0, 1.0)",
    "softsign": "{x} / (1.0 + tl.abs({x}))",
}


def _expression(op: _Op, xs: list[str]) -> str:
    """The Triton expression of one canonical op whose operands are the expressions ``xs``."""
    name, _, k = op
    x = xs[0]
    if name in _UNARY_EXPRESSIONS:
        return _UNARY_EXPRESSIONS[name].format(x=x)
    if name in ("minimum", "maximum"):
        return f"tl.{name}({x}, {xs[1]}, propagate_nan=tl.PropagateNan.ALL)"
    if name in ("add", "sub", "mul", "div"):
        alpha = _scalar(k.get("alpha", 1))
        if alpha is None:
            raise _Decline("an add/sub with a tensor alpha is not covered")
        y = xs[1] if alpha == 1.0 else f"({_literal(alpha)} * {xs[1]})"
        sym = {"add": "+", "sub": "-", "mul": "*", "div": "/"}[name]
        return f"{x} {sym} {y}"
    if name == "clamp":
        lo = "None" if k["lo"] is None else _literal(k["lo"])
        hi = "None" if k["hi"] is None else _literal(k["hi"])
        if k["lo"] is None and k["hi"] is None:
            raise _Decline("clamp without bounds")
        if k["lo"] is None:
            return f"tl.where({x} > {hi}, {hi}, {x})"
        if k["hi"] is None:
            return f"tl.where({x} < {lo}, {lo}, {x})"
        return f"_clamp({x}, {lo}, {hi})"
    if name == "leaky_relu":
        return f"tl.where({x} > 0.0, {x}, {x} * {_literal(_num(k['slope']))})"
    if name == "gelu":
        inner = {"none": _ERF, "tanh": _GELU_TANH}.get(k["approximate"])
        if inner is None:
            raise _Decline(f"gelu(approximate={k['approximate']!r}) is not covered")
        return f"0.5 * {x} * (1.0 + {inner.format(x=x)})"
    if name == "elu":
        return f"tl.where({x} > 0.0, {x}, {_literal(_num(k['alpha']))} * (tl.exp({x}) - 1.0))"
    if name == "softplus":
        beta, threshold = _num(k["beta"]), _num(k["threshold"])
        if beta == 1.0:
            return f"tl.where({x} > {_literal(threshold)}, {x}, _softplus({x}))"
        b = _literal(beta)
        return (f"tl.where({x} * {b} > {_literal(threshold)}, {x},"
                f" _softplus({x} * {b}) / {b})")
    if name == "batch_norm":
        mean, var, *affine = k["stats"]
        y = f"({x} - {mean}) / tl.sqrt_rn({var} + {_literal(_num(k['eps']))})"
        return f"{y} * {affine[0]} + {affine[1]}" if affine else y
    if name == "pow":
        e = _scalar(k["exponent"])
        if e not in (1.0, 2.0, 3.0):
            raise _Decline(f"pow with exponent {k['exponent']!r} is not covered (only 1, 2, 3)")
        return " * ".join([x] * int(e))
    raise _Decline(f"no expression for {name}")


def _num(value: Any) -> float:
    v = _scalar(value)
    if v is None:
        raise _Decline(f"the epilogue constant {value!r} is not a number")
    return v


@dataclasses.dataclass
class _Extra:
    """A tensor the epilogue reads: a scalar, a per-column vector or a full output-shaped tile."""

    name: str
    kind: str  # "scalar" | "column" | "full"
    expr: str  # host expression of the tensor


@dataclasses.dataclass
class _Epilogue:
    """The fused epilogue: Triton lines computing ``out`` from ``acc``, and what they read."""

    lines: list[str]
    extras: list[_Extra]
    ops: list[str]


class _EpilogueBuilder:
    """Walks the graph after the matmul and writes one Triton line per pointwise node."""

    def __init__(self, analysis: TaskAnalysis, gemm: _Gemm):
        self.analysis = analysis
        self.gemm = gemm
        info = gemm.node.meta["info"]
        self.shape, self.dtype = info.shape, info.dtype
        self.names: dict[torch.fx.Node, str] = {gemm.node: "acc"}
        self.extras: dict[str, _Extra] = {}
        self.lines: list[str] = []
        self.ops: list[str] = []
        if gemm.alpha != 1.0:
            self.lines.append(f"acc = {_literal(gemm.alpha)} * acc")
        if gemm.bias is not None:
            if isinstance(gemm.bias, str):
                bias = self._extra_for(gemm.bias, "column")
            else:
                bias = self._operand(gemm.bias)
            if gemm.beta != 1.0:
                bias = f"{_literal(gemm.beta)} * {bias}"
            self.lines.append(f"acc = acc + {bias}")
            self.ops.append("bias")

    def _extra_for(self, expr: str, kind: str) -> str:
        if expr not in self.extras:
            # e_ keeps the name clear of the kernel's own variables.
            name = "e_" + expr.removeprefix("self.").replace(".", "_")
            if name in {e.name for e in self.extras.values()}:
                name += f"_{len(self.extras)}"
            self.extras[expr] = _Extra(name, kind, expr)
        e = self.extras[expr]
        return f"{e.name}[None, :]" if kind == "column" else e.name

    def _operand(self, value: Any) -> str:
        """Triton expression of one operand of a pointwise op."""
        if isinstance(value, torch.fx.Node) and value in self.names:
            return self.names[value]
        number = _scalar(value)
        if number is not None:
            return _literal(number)
        if not isinstance(value, torch.fx.Node) or value.op not in ("placeholder", "get_attr"):
            what = value.name if isinstance(value, torch.fx.Node) else repr(value)
            raise _Decline(f"the epilogue reads {what!r}, which is neither the matmul's result,"
                           " an input, a parameter nor a number")
        info = value.meta.get("info")
        if info is None or not info.dtype.is_floating_point:
            raise _Decline(f"the epilogue operand {value.name!r} is not a floating tensor")
        shape, out = tuple(info.shape), tuple(self.shape)
        stripped = shape
        while stripped and stripped[0] == 1:
            stripped = stripped[1:]
        expr = _input_name(value) if value.op == "placeholder" else _attr_expr(
            str(value.target), self.analysis)
        if math.prod(shape) == 1 and len(shape) <= len(out):
            return self._extra_for(expr, "scalar")
        if stripped == out[-1:] and len(shape) <= len(out):
            return self._extra_for(expr, "column")
        if shape == out:
            return self._extra_for(expr, "full")
        raise _Decline(f"the epilogue operand {value.name!r} of shape {shape} is neither a"
                       f" scalar, a per-column ({out[-1]},) vector nor output-shaped {out}")

    def add(self, node: torch.fx.Node) -> None:
        """Fuse ``node`` (which reads the matmul result) or raise _Decline."""
        op = _pointwise(node, self.analysis)
        module = self.analysis.module_of(node)
        what = f"{node.target} ({type(module).__name__})" if module else _describe(node)
        if op is None and "softmax" in what.lower():
            raise _Decline("a softmax after the matmul is a row reduction over N, which this"
                           " template does not fuse (a KernelBench row of N does not fit a tile)")
        if op is None:
            raise _Decline(f"{what} after the matmul is not a pointwise op this template fuses")
        info = node.meta.get("info")
        if info is None or tuple(info.shape) != tuple(self.shape) or info.dtype != self.dtype:
            raise _Decline(f"{_describe(node)} after the matmul changes the shape or dtype")
        if _inplace(node, self.analysis):
            source = node.args[0]
            if isinstance(source, torch.fx.Node) and set(source.users) != {node}:
                raise _Decline(f"in-place {_describe(node)} whose input is read again")
        if op[0] == "batch_norm":
            if len(self.shape) != 2:
                raise _Decline("BatchNorm1d over a matmul output that is not 2-D normalises"
                               " dim 1, not the columns")
            op[2]["stats"] = [self._extra_for(_attr_expr(f"{op[2]['module']}.{key}",
                                                         self.analysis), "column")
                              for key in ("running_mean", "running_var", "weight", "bias")
                              if op[2]["affine"] or key.startswith("running")]
        xs = [self._operand(v) for v in op[1]]
        var = f"t{len(self.names)}"
        self.names[node] = var
        self.lines.append(f"{var} = {_expression(op, xs)}")
        if op[0] != "identity":
            self.ops.append(op[0])

    def result(self, out: torch.fx.Node) -> _Epilogue:
        lines = self.lines + [f"out = {self.names[out]}"]
        return _Epilogue(lines, list(self.extras.values()), self.ops)


@dataclasses.dataclass
class _Plan:
    """Everything a candidate file needs: forward inputs, operands, epilogue, example sizes."""

    inputs: list[str]
    gemm: _Gemm
    epilogue: _Epilogue
    precision: str  # "ieee" | "tf32" | "half"
    mnk: tuple[int, int, int]
    params: dict[str, Any]


def _plan(analysis: TaskAnalysis) -> _Plan:
    """Recognise the task or raise _Decline."""
    if analysis.graph is None:
        raise _Decline(analysis.reason or "the reference could not be traced")
    gemms = [n for n in analysis.compute_nodes() if _is_gemm(n, analysis)]
    if not gemms:
        raise _Decline("the reference computes no matmul or linear layer")
    if len(gemms) > 1:
        raise _Decline("the reference computes more than one matmul; only one is fused")
    gemm = _gemm(gemms[0], analysis)
    info = gemm.node.meta.get("info")
    if info is None or info.dtype not in _DTYPES:
        dtype = None if info is None else info.dtype
        raise _Decline(f"the matmul's dtype {dtype} is not float32, float16 or bfloat16")
    # A 1-D left operand is one row (matmul and linear agree); a 1-D right one is not covered.
    if gemm.a.rank < 1 or gemm.b.rank < 2 or (gemm.a.rank < 2 and gemm.b.rank > 2):
        raise _Decline("matrix-vector products with a 1-D right operand are not covered")
    a_info, b_info = gemm.a.shape, gemm.b.shape
    if gemm.b.rank > 2 and gemm.a.rank > 2 and a_info[:-2] != b_info[:-2]:
        raise _Decline("batched matmuls that broadcast batch dimensions are not covered")

    builder = _EpilogueBuilder(analysis, gemm)
    for node in analysis.compute_nodes():
        if node in gemm.used or node.meta.get("info") is None:
            continue
        reads = [a for a in node.all_input_nodes if a in builder.names]
        if not reads:
            raise _Decline(f"{_describe(node)} computes outside the matmul's epilogue; only"
                           " pointwise ops on the matmul result are fused")
        builder.add(node)
    for node in gemm.used - {gemm.node}:
        if any(u not in gemm.used for u in node.users):
            raise _Decline(f"the view {node.name!r} of a matmul operand is also read elsewhere")
    output = next(n for n in analysis.nodes() if n.op == "output").args[0]
    if not isinstance(output, torch.fx.Node) or output not in builder.names:
        raise _Decline("the reference's output is not the matmul's (epilogue) result alone")
    for node in builder.names:
        if node is not output and any(u not in builder.names for u in node.users):
            raise _Decline(f"the intermediate {node.name!r} is also returned or read elsewhere")

    placeholders = [n for n in analysis.nodes() if n.op == "placeholder"]
    if any(n.meta.get("info") is None for n in placeholders):
        raise _Decline("the reference's forward takes non-tensor inputs")
    if info.dtype == torch.float32:
        precision = "tf32" if analysis.allow_tf32 else "ieee"
    else:
        precision = "half"
    k = a_info[-1]
    m = math.prod(a_info[:-1]) if gemm.b.rank == 2 else a_info[-2]
    return _Plan([_input_name(n) for n in placeholders], gemm, builder.result(output),
                 precision, (m, b_info[-1], k), analysis.params)


# --------------------------------------------------------------------------------------------
# Code generation
# --------------------------------------------------------------------------------------------

_HEADER = '''\
# kernelmap template matmul/{variant}: {summary}.
"""{doc}"""

import torch
import torch.nn as nn
import triton
import triton.language as tl

# CONFIG picks one of CONFIGS: (BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, num_warps, num_stages).
SEARCH_SPACE = {space}
CONFIGS = (
{configs}
)
'''

_HELPERS = {
    "_tanh": '''
@triton.jit
def _tanh(x):
    # From exp (Triton has no portable tanh): odd, saturates exactly, keeps NaN.
    e = tl.exp(-2.0 * tl.abs(x))
    t = (1.0 - e) / (1.0 + e)
    return tl.where(x < 0.0, -t, t)
''',
    "_softplus": '''
@triton.jit
def _softplus(x):
    # log(1 + exp(x)) without overflow for large x.
    return tl.where(x > 0.0, x, 0.0) + tl.log(1.0 + tl.exp(-tl.abs(x)))
''',
    "_clamp": '''
@triton.jit
def _clamp(x, lo, hi):
    # min(max(x, lo), hi) as torch.clamp does, keeping NaN.
    y = tl.where(x < lo, lo, x)
    return tl.where(y > hi, hi, y)
''',
}

_EPILOGUE_FN = '''
@triton.jit
def epilogue(
    acc, cols, mask, c_off, N,{extra_ptrs}
):
    # The fused pointwise tail of the reference, on the fp32 accumulator tile.
{body}
    return out
'''

_TILED_KERNEL = '''
@triton.jit
def matmul_kernel(
    a_ptr, b_ptr, c_ptr,{extra_ptrs}
    M, N, K,
    stride_az, stride_am, stride_ak,
    stride_bz, stride_bk, stride_bn,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    # Axis 0 enumerates (batch, tile): no 65535 limit on the batch.
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    pid_z = tl.program_id(0) // (num_pid_m * num_pid_n)
    pid = tl.program_id(0) % (num_pid_m * num_pid_n)
    # Grouped ordering: GROUP_M row blocks in a row reuse the same B column blocks from L2.
    width = GROUP_M * num_pid_n
    first_m = (pid // width) * GROUP_M
    group_m = tl.minimum(num_pid_m - first_m, GROUP_M)
    pid_m = first_m + (pid % width) % group_m
    pid_n = (pid % width) // group_m
    # Rows and columns past the edge wrap around, so only K needs a load mask; the store is
    # masked. Offsets are 64-bit: a batch or a big matrix can pass 2**31 elements.
    rm = ((pid_m * BLOCK_M + tl.arange(0, BLOCK_M)) % M).to(tl.int64)
    rn = ((pid_n * BLOCK_N + tl.arange(0, BLOCK_N)) % N).to(tl.int64)
    rk = tl.arange(0, BLOCK_K)
    z = pid_z.to(tl.int64)
    a_ptrs = a_ptr + z * stride_az + rm[:, None] * stride_am + rk[None, :] * stride_ak
    b_ptrs = b_ptr + z * stride_bz + rk[:, None] * stride_bk + rn[None, :] * stride_bn
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in range(0, K, BLOCK_K):
        a = tl.load(a_ptrs, mask=rk[None, :] < K - k, other=0.0)
        b = tl.load(b_ptrs, mask=rk[:, None] < K - k, other=0.0)
        acc = {dot}
        a_ptrs += BLOCK_K * stride_ak
        b_ptrs += BLOCK_K * stride_bk
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask = (rows[:, None] < M) & (cols[None, :] < N)
    c_off = z * M * N + rows[:, None].to(tl.int64) * N + cols[None, :]
    out = epilogue(
        acc, cols, mask, c_off, N,{extra_call}
    )
    tl.store(c_ptr + c_off, out.to(c_ptr.dtype.element_ty), mask=mask)
'''

_SPLIT_KERNELS = '''
@triton.jit
def matmul_partial_kernel(
    a_ptr, b_ptr, ws_ptr,
    M, N, K, K_CHUNK, plane,
    stride_az, stride_am, stride_ak,
    stride_bz, stride_bk, stride_bn,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    # One K range [pid_k * K_CHUNK, +K_CHUNK) of one output tile, into an fp32 workspace plane.
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    pid_z = tl.program_id(0) // (num_pid_m * num_pid_n)
    pid = tl.program_id(0) % (num_pid_m * num_pid_n)
    pid_k = tl.program_id(1)
    width = GROUP_M * num_pid_n
    first_m = (pid // width) * GROUP_M
    group_m = tl.minimum(num_pid_m - first_m, GROUP_M)
    pid_m = first_m + (pid % width) % group_m
    pid_n = (pid % width) // group_m
    rm = ((pid_m * BLOCK_M + tl.arange(0, BLOCK_M)) % M).to(tl.int64)
    rn = ((pid_n * BLOCK_N + tl.arange(0, BLOCK_N)) % N).to(tl.int64)
    rk = tl.arange(0, BLOCK_K)
    z = pid_z.to(tl.int64)
    k_lo = pid_k * K_CHUNK
    k_hi = tl.minimum(K, k_lo + K_CHUNK)
    kk = (k_lo + rk).to(tl.int64)
    a_ptrs = a_ptr + z * stride_az + rm[:, None] * stride_am + kk[None, :] * stride_ak
    b_ptrs = b_ptr + z * stride_bz + kk[:, None] * stride_bk + rn[None, :] * stride_bn
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in range(k_lo, k_hi, BLOCK_K):
        a = tl.load(a_ptrs, mask=rk[None, :] < k_hi - k, other=0.0)
        b = tl.load(b_ptrs, mask=rk[:, None] < k_hi - k, other=0.0)
        acc = {dot}
        a_ptrs += BLOCK_K * stride_ak
        b_ptrs += BLOCK_K * stride_bk
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask = (rows[:, None] < M) & (cols[None, :] < N)
    c_off = z * M * N + rows[:, None].to(tl.int64) * N + cols[None, :]
    tl.store(ws_ptr + pid_k.to(tl.int64) * plane + c_off, acc, mask=mask)


@triton.jit
def splitk_reduce_kernel(
    ws_ptr, c_ptr,{extra_ptrs}
    M, N, SPLIT, plane,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    num_pid_n = tl.cdiv(N, BLOCK_N)
    tiles = tl.cdiv(M, BLOCK_M) * num_pid_n
    pid_z = tl.program_id(0) // tiles
    pid = tl.program_id(0) % tiles
    rows = (pid // num_pid_n) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = (pid % num_pid_n) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask = (rows[:, None] < M) & (cols[None, :] < N)
    c_off = pid_z.to(tl.int64) * M * N + rows[:, None].to(tl.int64) * N + cols[None, :]
    # The partials are summed in a fixed order: the result is deterministic (no atomics).
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    ws_ptrs = ws_ptr + c_off
    for s in range(0, SPLIT):
        acc += tl.load(ws_ptrs, mask=mask, other=0.0)
        ws_ptrs += plane
    out = epilogue(
        acc, cols, mask, c_off, N,{extra_call}
    )
    tl.store(c_ptr + c_off, out.to(c_ptr.dtype.element_ty), mask=mask)
'''

_TILED_HOST = '''

def matmul_epilogue(a, b, extras):
    """epilogue(a @ b) for a (Za, M, K) and b (Zb, K, N), Za, Zb in (1, Z): a (Z, M, N) tensor."""
    z, m, k, n = max(a.shape[0], b.shape[0]), a.shape[1], a.shape[2], b.shape[2]
    c = torch.empty((z, m, n), device=a.device, dtype=a.dtype)
    if c.numel() == 0:
        return c
    bm, bn, bk, gm, nw, ns = CONFIGS[CONFIG]
    grid = (triton.cdiv(m, bm) * triton.cdiv(n, bn) * z,)
    matmul_kernel[grid](
        a, b, c, *extras, m, n, k,
        a.stride(0) if a.shape[0] > 1 else 0, a.stride(1), a.stride(2),
        b.stride(0) if b.shape[0] > 1 else 0, b.stride(1), b.stride(2),
        BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=gm, num_warps=nw, num_stages=ns,
    )
    return c
'''

_SPLIT_HOST = '''

def matmul_epilogue(a, b, extras):
    """epilogue(a @ b) for a (Za, M, K) and b (Zb, K, N), Za, Zb in (1, Z): a (Z, M, N) tensor."""
    z, m, k, n = max(a.shape[0], b.shape[0]), a.shape[1], a.shape[2], b.shape[2]
    c = torch.empty((z, m, n), device=a.device, dtype=a.dtype)
    if c.numel() == 0:
        return c
    bm, bn, bk, gm, nw, ns = CONFIGS[CONFIG]
    # SPLIT_K ranges of whole K blocks; fewer when K is short, and never an empty range.
    blocks = max(1, triton.cdiv(k, bk))
    per_split = triton.cdiv(blocks, min(SPLIT_K, blocks))
    split = triton.cdiv(blocks, per_split)
    ws = torch.empty((split, z, m, n), device=a.device, dtype=torch.float32)
    tiles = triton.cdiv(m, bm) * triton.cdiv(n, bn)
    matmul_partial_kernel[(tiles * z, split)](
        a, b, ws, m, n, k, per_split * bk, z * m * n,
        a.stride(0) if a.shape[0] > 1 else 0, a.stride(1), a.stride(2),
        b.stride(0) if b.shape[0] > 1 else 0, b.stride(1), b.stride(2),
        BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=gm, num_warps=nw, num_stages=ns,
    )
    splitk_reduce_kernel[(tiles * z,)](
        ws, c, *extras, m, n, split, z * m * n, BLOCK_M=bm, BLOCK_N=bn, num_warps=nw,
    )
    return c
'''

_MODEL = '''

class ModelNew(nn.Module):
    def __init__(self, *args, **kwargs):
        super().__init__()
{skeleton}

    def forward(self, {inputs}):
        lhs = {a}
        rhs = {b}
{views}
        extras = ({extras})
        out = matmul_epilogue(lhs3, rhs3, extras)
        return out.reshape({out_shape})
'''


def _dot(precision: str) -> str:
    if precision == "half":
        return "tl.dot(a, b, acc)"
    return f'tl.dot(a, b, acc, input_precision="{precision}")'


def _extra_loads(extras: list[_Extra]) -> list[str]:
    lines = []
    for e in extras:
        if e.kind == "scalar":
            lines.append(f"{e.name} = tl.load({e.name}_ptr).to(tl.float32)")
        elif e.kind == "column":
            lines.append(f"{e.name} = tl.load({e.name}_ptr + cols, mask=cols < N,"
                         " other=0.0).to(tl.float32)")
        else:
            lines.append(f"{e.name} = tl.load({e.name}_ptr + c_off, mask=mask,"
                         " other=0.0).to(tl.float32)")
    return lines


def _host_extra(e: _Extra) -> str:
    # Columns and residuals are read with the output's contiguous layout.
    if e.kind == "column":
        return f"{e.expr}.contiguous().reshape(-1)"
    if e.kind == "full":
        return f"{e.expr}.contiguous()"
    return e.expr


def _views(plan: _Plan) -> tuple[str, str]:
    """Host lines making 3-D views lhs3 (Za, M, K), rhs3 (Zb, K, N), and the output shape."""
    g = plan.gemm
    if g.b.rank == 2:  # rows of every leading dim of A form one M
        lines = ["lhs3 = lhs.reshape(1, -1, lhs.shape[-1])", "rhs3 = rhs.unsqueeze(0)"]
        return "\n".join(lines), "*lhs.shape[:-1], rhs.shape[-1]"
    if g.a.rank == 2:  # one A for every batch of B (batch stride 0)
        lhs3 = "lhs.unsqueeze(0)"
    else:
        lhs3 = "lhs.reshape(-1, lhs.shape[-2], lhs.shape[-1])"
    lines = [f"lhs3 = {lhs3}", "rhs3 = rhs.reshape(-1, rhs.shape[-2], rhs.shape[-1])"]
    return "\n".join(lines), "*rhs.shape[:-2], lhs.shape[-2], rhs.shape[-1]"


def _wrapped(names: list[str], indent: str) -> str:
    """``names`` as comma-terminated lines after a line break (nothing when empty)."""
    if not names:
        return ""
    text = textwrap.fill(", ".join(names) + ",", width=96, initial_indent=indent,
                         subsequent_indent=indent, break_on_hyphens=False)
    return "\n" + text


def _source(plan: _Plan, variant: str, space: dict[str, list[int]],
            configs: tuple[tuple[int, ...], ...]) -> str:
    epi = plan.epilogue
    body = "\n".join(_extra_loads(epi.extras) + epi.lines)
    helpers = [h for name, h in _HELPERS.items() if name + "(" in body]
    names = [e.name for e in epi.extras]
    extra_ptrs = _wrapped([f"{n}_ptr" for n in names], "    ")
    extra_call = _wrapped([f"{n}_ptr" for n in names], "        ")
    summary = " -> ".join(["matmul", *epi.ops]) if epi.ops else "matmul"
    doc = {
        "tiled": "Tiled GEMM (grouped ordering, fp32 accumulation) with the epilogue fused"
                 " before the store.",
        "split_k": "Split-K GEMM: SPLIT_K programs per tile reduce K ranges into an fp32"
                   " workspace;\na second kernel sums them in a fixed order and applies the"
                   " epilogue.",
    }[variant]
    parts = [_HEADER.format(variant=variant, summary=summary, doc=doc, space=repr(space),
                            configs="\n".join(f"    {c!r}," for c in configs))]
    parts += helpers
    parts.append(_EPILOGUE_FN.format(extra_ptrs=extra_ptrs,
                                     body=textwrap.indent(body, "    ")))
    fmt = {"dot": _dot(plan.precision), "extra_ptrs": extra_ptrs, "extra_call": extra_call}
    if variant == "tiled":
        parts += [_TILED_KERNEL.format(**fmt), _TILED_HOST]
    else:
        parts += [_SPLIT_KERNELS.format(**fmt), _SPLIT_HOST]
    views, out_shape = _views(plan)
    extras = "".join(f"\n            {_host_extra(e)}," for e in epi.extras)
    extras += "\n        " if extras else ""
    parts.append(_MODEL.format(
        skeleton=parameter_skeleton(plan.params), inputs=", ".join(plan.inputs),
        a=plan.gemm.a.expr, b=plan.gemm.b.expr, views=textwrap.indent(views, "        "),
        extras=extras, out_shape=out_shape))
    # PEP 8 spacing: two blank lines between top-level definitions.
    return "\n\n\n".join(p.strip("\n") for p in parts) + "\n"


class MatmulTemplate(Template):
    """Matmul / linear with a fused pointwise epilogue (variants ``tiled`` and ``split_k``)."""

    name = "matmul"

    def instantiate(self, analysis: TaskAnalysis) -> list[TemplateCandidate] | str:
        """Candidates for a one-matmul reference with a pointwise tail, or why not."""
        try:
            plan = _plan(analysis)
        except _Decline as e:
            return str(e)
        m, n, k = plan.mnk
        what = " -> ".join(["matmul", *plan.epilogue.ops])
        note = f"{what}; M={m} N={n} K={k}; {plan.precision} dot"
        out = [TemplateCandidate(self.name, "tiled", _source(
            plan, "tiled", {"CONFIG": list(range(len(_TILED_CONFIGS[plan.precision])))},
            _TILED_CONFIGS[plan.precision]), note)]
        if k >= _SPLIT_K_RATIO * max(m, n):
            configs = _SPLIT_CONFIGS[plan.precision]
            space = {"CONFIG": list(range(len(configs))), "SPLIT_K": list(_SPLIT_K)}
            out.append(TemplateCandidate(self.name, "split_k",
                                         _source(plan, "split_k", space, configs), note))
        return out


TEMPLATES: list[Template] = [MatmulTemplate()]
