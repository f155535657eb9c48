"""Reading a traced reference for the norm and loss templates, and writing their candidate files.

The ``lp_norm`` (:mod:`~evolution.templates.losses.lp_norm`), ``cross_entropy``
(:mod:`~evolution.templates.losses.cross_entropy`) and ``pointwise_loss``
(:mod:`~evolution.templates.losses.pointwise_loss`) templates each recognise one reference
whose whole forward is the computation. This module holds what their matchers share:
:func:`read_op` reads every spelling of an op (``torch.*``, ``F.*``, tensor methods, loss and
activation modules) as one :class:`Op` with the input first; a matcher raises :class:`Decline`
with the sentence its template returns; :func:`render` and :func:`indent` fill in a candidate
file's frame.
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

from evolution.templates.analysis import TaskAnalysis

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# Rows up to this long get the variants that hold a whole row in registers.
SINGLE_PASS_MAX = 16384

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
        nn.CrossEntropyLoss: (
            "cross_entropy",
            ("weight", "ignore_index", "reduction", "label_smoothing"),
        ),
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
class Op:
    """A compute node read as a functional call: ``name(*args, **kwargs)``, input first."""

    name: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]

    def arg(self, pos: int, key: str, default: Any = None) -> Any:
        """Argument ``key``, given positionally at ``pos`` or by keyword."""
        return self.args[pos] if pos < len(self.args) else self.kwargs.get(key, default)


def read_op(analysis: TaskAnalysis, node: Any) -> Op | None:
    """``node`` as an :class:`Op`, or None for placeholders, constants and unknown calls."""
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
        return Op(found[0], tuple(node.args), {**found[1], **node.kwargs})
    else:
        return None
    return Op(name, tuple(node.args), dict(node.kwargs)) if name else None


class Decline(Exception):
    """Raised inside a matcher with the sentence ``instantiate`` returns."""


def output_node(analysis: TaskAnalysis) -> torch.fx.Node:
    """The node whose value ``forward`` returns (one tensor), or decline."""
    if analysis.graph is None:
        raise Decline(analysis.reason or "the reference could not be traced")
    out = analysis.nodes()[-1].args[0]
    if not isinstance(out, torch.fx.Node) or out.meta.get("info") is None:
        raise Decline("the reference does not return a single tensor")
    return out


def forward_input(node: Any, what: str) -> torch.fx.Node:
    """``node`` if it is a floating forward input, or decline."""
    if not isinstance(node, torch.fx.Node) or node.op != "placeholder":
        raise Decline(f"the {what} is computed, not a forward input (extra ops are not fused)")
    info = node.meta.get("info")
    if info is None or info.dtype not in FLOAT_DTYPES:
        raise Decline(f"the {what} is not a float32/float16/bfloat16 tensor")
    return node


def only_nodes(analysis: TaskAnalysis, used: set[torch.fx.Node]) -> None:
    """Decline when the reference computes anything beyond the matched nodes."""
    extra = [n.name for n in analysis.compute_nodes() if n not in used]
    if extra:
        raise Decline(f"the reference computes more than this template fuses ({', '.join(extra)})")


def forward_args(analysis: TaskAnalysis) -> tuple[str, ...]:
    """The names of ``forward``'s arguments, in order."""
    return tuple(n.target for n in analysis.nodes() if n.op == "placeholder")


def literal(value: Any) -> str:
    """A Python number as fp32-ready source text, or decline."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise Decline(f"the constant {value!r} is not a plain number")
    f = float(value)
    if math.isnan(f):
        raise Decline("a NaN constant is not supported")
    if math.isinf(f):
        return 'float("inf")' if f > 0 else '-float("inf")'
    return repr(f) if f >= 0 else f"({f!r})"


def reduced_dims(dim: Any, rank: int) -> tuple[int, int]:
    """The reduced dims ``(first, last)`` of ``dim`` (None: all), which must be contiguous."""
    if dim is None or isinstance(dim, (list, tuple)) and len(dim) == 0:
        return 0, rank - 1
    dims = dim if isinstance(dim, (list, tuple)) else [dim]
    if not all(
        isinstance(d, int) and not isinstance(d, bool) and -rank <= d < max(rank, 1) for d in dims
    ):
        raise Decline(f"the reduced dims {dim!r} are not constant dims of a rank-{rank} input")
    norm = sorted({d % max(rank, 1) for d in dims})
    if norm != list(range(norm[0], norm[-1] + 1)):
        raise Decline(f"the reduced dims {tuple(norm)} are not contiguous")
    return norm[0], norm[-1]


def space_json(space: dict[str, list[int]]) -> str:
    """A ``SEARCH_SPACE`` as the literal a candidate file carries."""
    return json.dumps(space)


def render(frame: str, **fields: str) -> str:
    """``frame`` (a ``$name`` template) dedented and filled in."""
    return string.Template(textwrap.dedent(frame).lstrip()).substitute(fields)


def indent(code: str, spaces: int) -> str:
    """``code`` dedented, stripped of blank edge lines and indented by ``spaces``."""
    return textwrap.indent(textwrap.dedent(code).strip("\n"), " " * spaces)
