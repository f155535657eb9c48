"""The matmul epilogue's op table: each pointwise op after the product, recognised and written.

:func:`pointwise_op` reads a node in its PyTorch spellings (``torch.*``, ``F.*``, Tensor methods,
``nn`` modules, Python operators) as a canonical op ``(name, operands, constants)``;
:func:`expression` writes one canonical op as a Triton expression on fp32 accumulator tiles,
calling the ``_tanh`` / ``_softplus`` / ``_clamp`` helpers the candidate file defines.
"""

from __future__ import annotations

import operator
from typing import Any

import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F

from evolution.templates.analysis import TaskAnalysis
from evolution.templates.matmul.product import IDENTITY_METHODS, Decline, arg, literal, scalar

# A pointwise op as (name, tensor-or-scalar operands, constants); expression writes each one.
_Op = tuple[str, list[Any], dict[str, Any]]

_BINARY_FUNCTIONS = {
    operator.add: "add",
    torch.add: "add",
    operator.sub: "sub",
    torch.sub: "sub",
    torch.subtract: "sub",
    operator.mul: "mul",
    torch.mul: "mul",
    torch.multiply: "mul",
    operator.truediv: "div",
    torch.div: "div",
    torch.divide: "div",
    torch.true_divide: "div",
}
_BINARY_METHODS = {
    "add": "add",
    "sub": "sub",
    "subtract": "sub",
    "mul": "mul",
    "multiply": "mul",
    "div": "div",
    "divide": "div",
    "true_divide": "div",
}
_UNARY_FUNCTIONS = {
    torch.relu: "relu",
    F.relu: "relu",
    F.relu6: "relu6",
    torch.sigmoid: "sigmoid",
    F.sigmoid: "sigmoid",
    torch.tanh: "tanh",
    F.tanh: "tanh",
    F.silu: "silu",
    F.mish: "mish",
    F.selu: "selu",
    F.hardsigmoid: "hardsigmoid",
    F.hardswish: "hardswish",
    F.softsign: "softsign",
    torch.abs: "abs",
    torch.exp: "exp",
    torch.square: "square",
    operator.neg: "neg",
    torch.neg: "neg",
    torch.negative: "neg",
}
_UNARY_METHODS = {"relu", "sigmoid", "tanh", "abs", "exp", "square", "neg"}


def _clamp_op(x: Any, lo: Any, hi: Any) -> _Op | None:
    bounds = [None if v is None else scalar(v) for v in (lo, hi)]
    if any(b is None and v is not None for b, v in zip(bounds, (lo, hi), strict=True)):
        return None  # a tensor bound
    return "clamp", [x], {"lo": bounds[0], "hi": bounds[1]}


def _is_tensor(value: Any) -> bool:
    return isinstance(value, torch.fx.Node) and value.meta.get("info") is not None


def _function_op(node: torch.fx.Node) -> _Op | None:
    t, a = node.target, node.args
    # torch.min/max(x, other) with a tensor ``other`` is elementwise (with an int: a reduction).
    if t in (torch.minimum, torch.maximum) or (
        t in (torch.min, torch.max) and _is_tensor(arg(node, 1, "other"))
    ):
        name = "minimum" if t in (torch.minimum, torch.min) else "maximum"
        return name, [a[0], arg(node, 1, "other")], {}
    if t in _BINARY_FUNCTIONS:
        if arg(node, 2, "rounding_mode") is not None:
            return None
        alpha = node.kwargs.get("alpha", 1)
        return _BINARY_FUNCTIONS[t], [a[0], arg(node, 1, "other")], {"alpha": alpha}
    if t in _UNARY_FUNCTIONS:
        return _UNARY_FUNCTIONS[t], [a[0]], {}
    if t in (torch.clamp, torch.clip):
        return _clamp_op(a[0], arg(node, 1, "min"), arg(node, 2, "max"))
    if t is torch.clamp_min:
        return _clamp_op(a[0], arg(node, 1, "min"), None)
    if t is torch.clamp_max:
        return _clamp_op(a[0], None, arg(node, 1, "max"))
    if t is F.hardtanh:
        return _clamp_op(a[0], arg(node, 1, "min_val", -1.0), arg(node, 2, "max_val", 1.0))
    if t is F.leaky_relu:
        return "leaky_relu", [a[0]], {"slope": arg(node, 1, "negative_slope", 0.01)}
    if t is F.gelu:
        return "gelu", [a[0]], {"approximate": node.kwargs.get("approximate", "none")}
    if t is F.elu:
        return "elu", [a[0]], {"alpha": arg(node, 1, "alpha", 1.0)}
    if t is F.softplus:
        return (
            "softplus",
            [a[0]],
            {"beta": arg(node, 1, "beta", 1.0), "threshold": arg(node, 2, "threshold", 20.0)},
        )
    if t in (operator.pow, torch.pow):
        return "pow", [a[0]], {"exponent": arg(node, 1, "exponent")}
    if t is F.dropout and scalar(arg(node, 1, "p", 0.5)) == 0.0:
        return "identity", [a[0]], {}
    return None


def _method_op(node: torch.fx.Node) -> _Op | None:
    name, a = str(node.target), node.args
    if name.endswith("_") and not name.endswith("__"):
        name = name[:-1]  # in-place: the caller checks nothing else reads the old value
    if name in _BINARY_METHODS and node.kwargs.get("rounding_mode") is None:
        other = arg(node, 1, "other")
        return _BINARY_METHODS[name], [a[0], other], {"alpha": node.kwargs.get("alpha", 1)}
    if name in _UNARY_METHODS:
        return name, [a[0]], {}
    if name in ("minimum", "maximum", "min", "max") and _is_tensor(arg(node, 1, "other")):
        other = arg(node, 1, "other")
        return {"min": "minimum", "max": "maximum"}.get(name, name), [a[0], other], {}
    if name in ("clamp", "clip"):
        return _clamp_op(a[0], arg(node, 1, "min"), arg(node, 2, "max"))
    if name == "clamp_min":
        return _clamp_op(a[0], arg(node, 1, "min"), None)
    if name == "clamp_max":
        return _clamp_op(a[0], None, arg(node, 1, "max"))
    if name == "pow":
        return "pow", [a[0]], {"exponent": arg(node, 1, "exponent")}
    if name in IDENTITY_METHODS:
        return "identity", [a[0]], {}
    return None


def _module_op(node: torch.fx.Node, m: nn.Module | None) -> _Op | None:
    x = node.args[0] if node.args else None
    simple = {
        nn.ReLU: "relu",
        nn.Sigmoid: "sigmoid",
        nn.Tanh: "tanh",
        nn.SiLU: "silu",
        nn.Mish: "mish",
        nn.SELU: "selu",
        nn.Hardsigmoid: "hardsigmoid",
        nn.Hardswish: "hardswish",
        nn.Softsign: "softsign",
        nn.Identity: "identity",
        nn.Dropout: "identity",
    }  # the evaluator runs the reference in eval mode
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


def pointwise_op(node: torch.fx.Node, analysis: TaskAnalysis) -> _Op | None:
    """The pointwise op ``node`` computes, in canonical form, or None."""
    if node.op == "call_function":
        return _function_op(node)
    if node.op == "call_method":
        return _method_op(node)
    if node.op == "call_module":
        return _module_op(node, analysis.module_of(node))
    return None


def is_inplace(node: torch.fx.Node, analysis: TaskAnalysis) -> bool:
    """Whether ``node`` overwrites its first operand (a ``*_`` method, ``inplace=True``)."""
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
_SELU = "1.0507009873554805 * tl.where({x} > 0.0, {x}, 1.6732632423543772 * (tl.exp({x}) - 1.0))"
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


def expression(op: _Op, xs: list[str]) -> str:
    """The Triton expression of one canonical op whose operands are the expressions ``xs``."""
    name, _, k = op
    x = xs[0]
    if name in _UNARY_EXPRESSIONS:
        return _UNARY_EXPRESSIONS[name].format(x=x)
    if name in ("minimum", "maximum"):
        return f"tl.{name}({x}, {xs[1]}, propagate_nan=tl.PropagateNan.ALL)"
    if name in ("add", "sub", "mul", "div"):
        alpha = scalar(k.get("alpha", 1))
        if alpha is None:
            raise Decline("an add/sub with a tensor alpha is not covered")
        y = xs[1] if alpha == 1.0 else f"({literal(alpha)} * {xs[1]})"
        sym = {"add": "+", "sub": "-", "mul": "*", "div": "/"}[name]
        return f"{x} {sym} {y}"
    if name == "clamp":
        lo = "None" if k["lo"] is None else literal(k["lo"])
        hi = "None" if k["hi"] is None else literal(k["hi"])
        if k["lo"] is None and k["hi"] is None:
            raise Decline("clamp without bounds")
        if k["lo"] is None:
            return f"tl.where({x} > {hi}, {hi}, {x})"
        if k["hi"] is None:
            return f"tl.where({x} < {lo}, {lo}, {x})"
        return f"_clamp({x}, {lo}, {hi})"
    if name == "leaky_relu":
        return f"tl.where({x} > 0.0, {x}, {x} * {literal(_num(k['slope']))})"
    if name == "gelu":
        inner = {"none": _ERF, "tanh": _GELU_TANH}.get(k["approximate"])
        if inner is None:
            raise Decline(f"gelu(approximate={k['approximate']!r}) is not covered")
        return f"0.5 * {x} * (1.0 + {inner.format(x=x)})"
    if name == "elu":
        return f"tl.where({x} > 0.0, {x}, {literal(_num(k['alpha']))} * (tl.exp({x}) - 1.0))"
    if name == "softplus":
        beta, threshold = _num(k["beta"]), _num(k["threshold"])
        if beta == 1.0:
            return f"tl.where({x} > {literal(threshold)}, {x}, _softplus({x}))"
        b = literal(beta)
        return f"tl.where({x} * {b} > {literal(threshold)}, {x}, _softplus({x} * {b}) / {b})"
    if name == "batch_norm":
        mean, var, *affine = k["stats"]
        y = f"({x} - {mean}) / tl.sqrt_rn({var} + {literal(_num(k['eps']))})"
        return f"{y} * {affine[0]} + {affine[1]}" if affine else y
    if name == "pow":
        e = scalar(k["exponent"])
        if e not in (1.0, 2.0, 3.0):
            raise Decline(f"pow with exponent {k['exponent']!r} is not covered (only 1, 2, 3)")
        return " * ".join([x] * int(e))
    raise Decline(f"no expression for {name}")


def _num(value: Any) -> float:
    v = scalar(value)
    if v is None:
        raise Decline(f"the epilogue constant {value!r} is not a number")
    return v
