"""Recognising the matrix product of a matmul reference and its operands.

:func:`match_gemm` reads one product node in any spelling the matmul template knows
(``torch.matmul``, ``@``, ``torch.mm``, ``torch.bmm``, ``torch.addmm``, ``torch.baddbmm``,
``nn.Linear``, ``F.linear``) as a :class:`Gemm`: ``alpha * (A @ B) + beta * bias``, its operands
resolved to inputs or parameters through transposes of their last two dims and no-op views. The
small graph helpers the rest of the matmul family shares (arguments, constants, host names of
inputs and parameters) and :class:`Decline`, the family's "not covered, and why", live here too.
"""

from __future__ import annotations

import dataclasses
import math
import operator
from typing import Any

import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F

from evolution.templates.analysis import TaskAnalysis


class Decline(Exception):
    """Internal: the reference is outside what this template covers (message: why)."""


_MATMUL_FUNCTIONS = {torch.matmul, operator.matmul, torch.mm, torch.bmm}
_MATMUL_METHODS = {"matmul", "mm", "bmm", "__matmul__"}
# beta * input + alpha * (A @ B)
_ADDMM_FUNCTIONS = {torch.addmm, torch.baddbmm}
# Ops that only look through to their input (no copy semantics matter for a fresh output).
IDENTITY_METHODS = {"contiguous", "clone", "detach"}


def arg(node: torch.fx.Node, i: int, name: str, default: Any = None) -> Any:
    """Positional argument ``i`` or keyword ``name`` of a call node."""
    return node.args[i] if len(node.args) > i else node.kwargs.get(name, default)


def scalar(value: Any) -> float | None:
    """A Python number (or a graph node that evaluated to one), else None."""
    if isinstance(value, torch.fx.Node) and value.meta.get("info") is None:
        value = value.meta.get("value")
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def literal(value: float) -> str:
    """``value`` as a Triton source constant (finite only)."""
    if not math.isfinite(value):
        raise Decline(f"the epilogue uses the non-finite constant {value!r}")
    return repr(float(value))


def attr_expr(target: str, analysis: TaskAnalysis) -> str:
    """``self.<key>`` for a state_dict entry the candidate will also have."""
    if target not in analysis.params:
        raise Decline(f"the reference reads attribute {target!r}, which is not in its state_dict")
    if not all(part.isidentifier() for part in target.split(".")):
        raise Decline(f"parameter key {target!r} is not a Python attribute path")
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
    if node.op == "call_function" and node.target not in (torch.t, torch.transpose, torch.permute):
        return None
    if name == "t" and rank == 2:
        return True
    if name == "transpose":
        return _is_last_two([arg(node, 1, "dim0"), arg(node, 2, "dim1")], rank)
    if name == "permute":
        dims = list(node.args[1:]) if node.op == "call_method" else list(arg(node, 1, "dims"))
        if len(dims) == 1 and isinstance(dims[0], list | tuple):
            dims = list(dims[0])
        ints = [_int(d) for d in dims]
        if len(ints) != rank or any(d is None for d in ints):
            return None
        want = list(range(rank - 2)) + [rank - 1, rank - 2]
        return True if [d % rank for d in ints] == want else None
    if node.op == "call_method" and name in IDENTITY_METHODS:
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
            raise Decline(
                f"the matmul operand {node.name!r} is computed ({describe(node)});"
                " only inputs, parameters and their transposes are fused"
            )
        used.add(node)
        swaps += swap
        node = node.args[0]
    if not isinstance(node, torch.fx.Node):
        raise Decline("a matmul operand is not a tensor")
    info = node.meta.get("info")
    if info is None:
        raise Decline(f"the matmul operand {node.name!r} has no known shape")
    expr = input_name(node) if node.op == "placeholder" else attr_expr(str(node.target), analysis)
    shape = tuple(info.shape)
    if swaps % 2:
        expr += ".transpose(-2, -1)"
        shape = shape[:-2] + shape[-2:][::-1]
    return _Operand(str(expr), shape)


# Names the generated forward uses for itself; inputs named like them get a trailing "_".
_HOST_NAMES = {
    "self",
    "lhs",
    "rhs",
    "lhs3",
    "rhs3",
    "out",
    "torch",
    "nn",
    "triton",
    "tl",
    "matmul_epilogue",
    "CONFIGS",
    "CONFIG",
    "SPLIT_K",
    "SEARCH_SPACE",
}


def input_name(node: torch.fx.Node) -> str:
    """The generated forward's name for the input ``node`` (a placeholder)."""
    name = str(node.target)
    return name + "_" if name in _HOST_NAMES else name


def describe(node: torch.fx.Node) -> str:
    """A readable name of what ``node`` calls (for reasons)."""
    target = node.target
    return str(target) if isinstance(target, str) else getattr(target, "__name__", str(target))


@dataclasses.dataclass
class Gemm:
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
        raise Decline(f"the linear weight {what!r} is not 2-D")
    return _Operand(f"{w.expr}.t()", w.shape[::-1])


def is_gemm(node: torch.fx.Node, analysis: TaskAnalysis) -> bool:
    """Whether ``node`` is a matrix product in one of the spellings this template knows."""
    if node.op == "call_module":
        return type(analysis.module_of(node)) is nn.Linear
    if node.op == "call_function":
        return node.target in (F.linear, *_MATMUL_FUNCTIONS, *_ADDMM_FUNCTIONS)
    return node.op == "call_method" and node.target in _MATMUL_METHODS


def match_gemm(node: torch.fx.Node, analysis: TaskAnalysis) -> Gemm:
    """The matrix product ``node`` (for which is_gemm holds) computes."""
    used = {node}
    module = analysis.module_of(node)
    if node.op == "call_module":
        key = f"{node.target}.weight"
        expr = attr_expr(key, analysis)
        w = _transposed(_Operand(expr, tuple(analysis.params[key].shape)), key)
        bias = attr_expr(f"{node.target}.bias", analysis) if module.bias is not None else None
        return Gemm(node, _operand(node.args[0], analysis, used), w, bias, used)
    if node.op == "call_function" and node.target is F.linear:
        w = _transposed(_operand(arg(node, 1, "weight"), analysis, used), node.name)
        return Gemm(node, _operand(node.args[0], analysis, used), w, arg(node, 2, "bias"), used)
    if node.op == "call_function" and node.target in _ADDMM_FUNCTIONS:
        a = _operand(
            arg(node, 1, "mat1" if node.target is torch.addmm else "batch1"), analysis, used
        )
        b = _operand(
            arg(node, 2, "mat2" if node.target is torch.addmm else "batch2"), analysis, used
        )
        alpha, beta = scalar(node.kwargs.get("alpha", 1)), scalar(node.kwargs.get("beta", 1))
        if alpha is None or beta is None:
            raise Decline("addmm with tensor alpha or beta is not covered")
        return Gemm(node, a, b, node.args[0], used, alpha, beta)
    if len(node.args) < 2:
        raise Decline(f"{node.name!r} is a matmul without two operands")
    a = _operand(node.args[0], analysis, used)
    b = _operand(node.args[1], analysis, used)
    return Gemm(node, a, b, None, used)
