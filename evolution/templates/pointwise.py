"""Fused pointwise chains: any graph of elementwise ops of the reference in one Triton kernel.

The reference's fx graph is lowered node by node, in topological order, to one Triton
expression per node (named temporaries, math in fp32), so a chain that eager PyTorch runs as
one kernel per op reads its inputs once and writes its output once. Ops are recognised in all
their spellings (``torch.*``, ``F.*``, Tensor methods, ``nn`` activation modules and Python
operators), with scalar constants, other inputs, parameters and buffers as operands.

Variants (separate candidates, so the archive keeps both):

- ``flat``: every tensor operand has the output's shape; each program handles ``ITERS``
  blocks of ``BLOCK`` contiguous elements (no index math, vectorisable loads).
- ``broadcast``: operands broadcast to the output. Each operand's element offset comes from
  the output coordinates and its strides (0 on broadcast dims), computed at run time with the
  dims merged wherever every operand allows it, so held-out shapes of other sizes work.

Declined: reductions, matmuls, views in the chain, in-place ops on inputs, random ops,
integer-valued results (bool comparisons are fine), tuple outputs and anything unknown.
"""

from __future__ import annotations

import dataclasses
import math
import operator
import re
import textwrap
from collections.abc import Callable
from typing import Any

import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F

from evolution.templates.analysis import TaskAnalysis, TensorInfo, parameter_skeleton
from evolution.templates.base import Template, TemplateCandidate

RANK = 5  # dims of the broadcast kernel's index decomposition (after merging)
FLOAT_DTYPES = {torch.float32: "tl.float32", torch.float16: "tl.float16",
                torch.bfloat16: "tl.bfloat16"}
SPACES = {
    "flat": {"BLOCK": [1024, 2048, 4096], "ITERS": [1, 4], "num_warps": [4, 8]},
    "broadcast": {"BLOCK": [1024, 512, 2048], "ITERS": [1, 2], "num_warps": [4, 8]},
}
SELU_ALPHA = 1.6732632423543772848170429916717
SELU_SCALE = 1.0507009873554804934193349852946


class _Decline(Exception):
    """The chain cannot be fused; the message is the one-sentence reason."""


# --- what a node computes -------------------------------------------------------------------

_REQ = object()  # marks a required argument
_INPLACE = ("inplace", False)
_UNARY = (("input", _REQ),)
_ACT = (("input", _REQ), _INPLACE)
_BINARY = (("input", _REQ), ("other", _REQ))
_SIGS: dict[str, tuple[tuple[str, Any], ...]] = {
    **dict.fromkeys(["add", "sub", "rsub"], (*_BINARY, ("alpha", 1))),
    **dict.fromkeys(["mul", "maximum", "minimum", "gt", "lt", "ge", "le", "eq", "ne",
                     "logical_and", "logical_or"], _BINARY),
    "div": (*_BINARY, ("rounding_mode", None)),
    "pow": (("input", _REQ), ("exponent", _REQ)),
    **dict.fromkeys(["neg", "square", "reciprocal", "abs", "sqrt", "rsqrt", "exp", "exp2", "log",
                     "log2", "log1p", "expm1", "sin", "cos", "tanh", "sigmoid", "erf", "sign",
                     "logical_not", "softsign", "logsigmoid", "tanhshrink", "identity",
                     "cast"], _UNARY),
    **dict.fromkeys(["relu", "relu6", "selu", "silu", "mish", "hardsigmoid", "hardswish"], _ACT),
    "leaky_relu": (("input", _REQ), ("negative_slope", 0.01), _INPLACE),
    "elu": (("input", _REQ), ("alpha", 1.0), _INPLACE),
    "celu": (("input", _REQ), ("alpha", 1.0), _INPLACE),
    "gelu": (("input", _REQ), ("approximate", "none")),
    "softplus": (("input", _REQ), ("beta", 1.0), ("threshold", 20.0)),
    "hardtanh": (("input", _REQ), ("min_val", -1.0), ("max_val", 1.0), _INPLACE),
    "clamp": (("input", _REQ), ("min", None), ("max", None)),
    "clamp_min": (("input", _REQ), ("min", _REQ)),
    "clamp_max": (("input", _REQ), ("max", _REQ)),
    "threshold": (("input", _REQ), ("threshold", _REQ), ("value", _REQ), _INPLACE),
    "hardshrink": (("input", _REQ), ("lambd", 0.5)),
    "softshrink": (("input", _REQ), ("lambd", 0.5)),
    "where": (("condition", _REQ), ("input", _REQ), ("other", _REQ)),
    "masked_fill": (("input", _REQ), ("mask", _REQ), ("value", _REQ)),
    "dropout": (("input", _REQ), ("p", 0.5), ("training", True), _INPLACE),
}
_METHOD_SIGS = {"where": (("input", _REQ), ("condition", _REQ), ("other", _REQ))}
_ALIASES = {  # other names of canonical ops (torch functions and Tensor methods)
    "subtract": "sub", "multiply": "mul", "divide": "div", "true_divide": "div",
    "negative": "neg", "absolute": "abs", "clip": "clamp", "greater": "gt", "less": "lt",
    "greater_equal": "ge", "less_equal": "le", "not_equal": "ne", "log_sigmoid": "logsigmoid",
    "expit": "sigmoid", "contiguous": "identity", "clone": "identity", "detach": "identity",
    "float": "cast", "half": "cast", "bfloat16": "cast", "double": "cast", "to": "cast",
    "type": "cast", "type_as": "cast", "bool": "cast", "int": "cast", "long": "cast",
}


def _function_table() -> dict[Any, tuple[str, bool]]:
    """``{callable: (canonical op, in place)}`` for torch, F, torch.special and operator."""
    table: dict[Any, tuple[str, bool]] = {}
    names = [*_SIGS, *_ALIASES]
    for module in (torch, F, torch.special):
        for name in names:
            for suffix, inplace in (("", False), ("_", True)):
                fn = getattr(module, name + suffix, None)
                if callable(fn) and fn not in table:
                    table[fn] = (_ALIASES.get(name, name), inplace)
    ops = {"add": "add", "sub": "sub", "mul": "mul", "truediv": "div", "pow": "pow",
           "gt": "gt", "lt": "lt", "ge": "ge", "le": "le", "eq": "eq", "ne": "ne",
           "and_": "logical_and", "or_": "logical_or", "neg": "neg", "abs": "abs",
           "invert": "logical_not", "pos": "identity"}
    for name, op in ops.items():
        table[getattr(operator, name)] = (op, False)
        inplace_fn = getattr(operator, "i" + name.rstrip("_"), None)
        if inplace_fn is not None:
            table[inplace_fn] = (op, True)
    for fn in (torch.max, torch.min):
        table[fn] = ("maximum" if fn is torch.max else "minimum", False)
    return table


_FUNCTIONS = _function_table()
# nn activation modules: canonical op and the attributes that carry its arguments.
_MODULES: dict[type, tuple[str, tuple[str, ...]]] = {
    nn.ReLU: ("relu", ()), nn.ReLU6: ("relu6", ()), nn.SELU: ("selu", ()),
    nn.SiLU: ("silu", ()), nn.Mish: ("mish", ()), nn.Softsign: ("softsign", ()),
    nn.Hardsigmoid: ("hardsigmoid", ()), nn.Hardswish: ("hardswish", ()),
    nn.Sigmoid: ("sigmoid", ()), nn.Tanh: ("tanh", ()), nn.LogSigmoid: ("logsigmoid", ()),
    nn.Tanhshrink: ("tanhshrink", ()), nn.Identity: ("identity", ()),
    nn.LeakyReLU: ("leaky_relu", ("negative_slope",)), nn.ELU: ("elu", ("alpha",)),
    nn.CELU: ("celu", ("alpha",)), nn.GELU: ("gelu", ("approximate",)),
    nn.Softplus: ("softplus", ("beta", "threshold")),
    nn.Hardtanh: ("hardtanh", ("min_val", "max_val")),
    nn.Softshrink: ("softshrink", ("lambd",)), nn.Hardshrink: ("hardshrink", ("lambd",)),
    nn.Threshold: ("threshold", ("threshold", "value")), nn.Dropout: ("dropout", ("p",)),
}
_NOT_POINTWISE = [  # (pattern of an op's name, case-insensitive; why it is declined)
    (r"dropout|rand|bernoulli|multinomial|normal_", "is random"),
    (r"softmax|sum|mean|prod|norm|var|std|amax|amin|argmax|argmin|logsumexp|cumsum|cumprod"
     r"|^all$|^any$|loss|cross_entropy|nll|kl_div|pool", "is a reduction"),
    (r"matmul|mm|linear|conv|einsum|dot|^mv$|attention", "is a matmul or convolution"),
    (r"view|reshape|permute|transpose|flatten|squeeze|expand|repeat|narrow|getitem|^t$|cat"
     r"|stack|split|chunk|flip|roll|gather|scatter|index|pad|slice",
     "moves data (views, reshapes and indexing are not fused)"),
]


def _op_name(node: torch.fx.Node, analysis: TaskAnalysis) -> str:
    """A readable name of what a node calls (for reasons)."""
    if node.op == "call_module":
        return type(analysis.module_of(node)).__name__
    if node.op == "call_method":
        return f".{node.target}()"
    return getattr(node.target, "__name__", str(node.target))


def _unknown(node: torch.fx.Node, analysis: TaskAnalysis) -> _Decline:
    name = _op_name(node, analysis)
    for pattern, why in _NOT_POINTWISE:
        if re.search(pattern, name.strip(".()"), re.IGNORECASE):
            return _Decline(f"'{name}' ({node.name}) {why}: not a pointwise chain")
    return _Decline(f"'{name}' ({node.name}) is not an elementwise op this template knows")


def _bind(op: str, sig: tuple, args: tuple, kwargs: dict, node: torch.fx.Node) -> dict[str, Any]:
    """Positional and keyword arguments by parameter name, defaults filled in."""
    if len(args) > len(sig):
        raise _Decline(f"'{node.name}' passes more arguments than {op} takes")
    bound = {name: value for (name, _), value in zip(sig, args, strict=False)}
    for key, value in kwargs.items():
        if key not in {name for name, _ in sig} or key in bound:
            raise _Decline(f"'{node.name}': argument {key}= of {op} is not supported")
        bound[key] = value
    for name, default in sig:
        if name not in bound:
            if default is _REQ:
                raise _Decline(f"'{node.name}': {op} without its {name} argument")
            bound[name] = default
    return bound


def _resolve(node: torch.fx.Node, analysis: TaskAnalysis) -> tuple[str, dict[str, Any], bool]:
    """``(canonical op, arguments by name, in place)`` of a compute node."""
    if node.op == "call_module":
        mod = analysis.module_of(node)
        entry = _MODULES.get(type(mod))
        if entry is None or len(node.args) != 1 or node.kwargs:
            raise _unknown(node, analysis)
        op, attrs = entry
        bound = _bind(op, _SIGS[op], (node.args[0],), {a: getattr(mod, a) for a in attrs}, node)
        return op, bound, bool(getattr(mod, "inplace", False))
    if node.op == "call_method":
        name = str(node.target)
        inplace = name.endswith("_") and not name.endswith("__")
        op = _ALIASES.get(name.rstrip("_"), name.rstrip("_"))
        if op in ("max", "min"):
            op = "maximum" if op == "max" else "minimum"
        if op not in _SIGS:
            raise _unknown(node, analysis)
        sig = _METHOD_SIGS.get(op, _SIGS[op])
    else:
        if node.target not in _FUNCTIONS:
            raise _unknown(node, analysis)
        op, inplace = _FUNCTIONS[node.target]
        sig = _SIGS[op]
    if op in ("maximum", "minimum") and (
        len(node.args) != 2 or node.kwargs or not _is_tensor(node.args[1])
    ):
        raise _Decline(f"'{node.name}' is a {op[:3]} reduction: not a pointwise chain")
    if op == "cast":  # the target dtype is the node's own; its arguments only name it
        return op, {"input": node.args[0]}, inplace
    return op, _bind(op, sig, node.args, node.kwargs, node), inplace


def _is_tensor(value: Any) -> bool:
    return isinstance(value, torch.fx.Node) and value.meta.get("info") is not None


# --- lowering to Triton expressions ---------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class _Val:
    """A value in the kernel: a temporary's name or a literal; ``kind`` "f" (fp32) or "b" (i1)."""

    expr: str
    kind: str = "f"


def _literal(c: Any) -> str:
    if isinstance(c, bool) or not isinstance(c, (int, float)):
        raise _Decline(f"constant {c!r} is not a number")
    c = float(c)
    if math.isnan(c):
        return 'float("nan")'
    if math.isinf(c):
        return 'float("inf")' if c > 0 else '(-float("inf"))'
    return repr(c) if c >= 0 else f"({c!r})"


class _Emit:
    """Collects the kernel body: one line per temporary, and the helper functions used."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.helpers: set[str] = set()
        self.count = 0

    def f(self, v: Any) -> str:
        """``v`` as an fp32 expression."""
        if isinstance(v, _Val):
            return v.expr if v.kind == "f" else f"{v.expr}.to(tl.float32)"
        return _literal(v)

    def b(self, v: Any) -> str:
        """``v`` as a predicate."""
        if isinstance(v, _Val) and v.kind == "b":
            return v.expr
        return f"({self.f(v)} != 0.0)"

    def tmp(self, expr: str, kind: str = "f") -> _Val:
        """A fresh temporary holding ``expr``."""
        name = f"t{self.count}"
        self.count += 1
        self.lines.append(f"{name} = {expr}")
        return _Val(name, kind)

    def use(self, *helpers: str) -> None:
        self.helpers.update(helpers)


def _clamp(e: _Emit, x: Any, lo: Any, hi: Any) -> str:
    """min(max(x, lo), hi) as torch.clamp computes it, NaN passing through."""
    if lo is not None:
        x = e.tmp(f"tl.where({e.f(x)} < {e.f(lo)}, {e.f(lo)}, {e.f(x)})")
    if hi is None:
        return e.f(x)
    return f"tl.where({e.f(x)} > {e.f(hi)}, {e.f(hi)}, {e.f(x)})"


def _pow(e: _Emit, a: dict[str, Any]) -> str:
    x, p = a["input"], a["exponent"]
    if isinstance(x, _Val) and isinstance(p, _Val):
        raise _Decline("pow with a tensor exponent and a tensor base is not supported")
    if isinstance(p, _Val):  # constant ** tensor
        c = float(x)
        if c <= 0:
            raise _Decline(f"pow with the non-positive constant base {c!r} is not supported")
        return f"tl.exp2({_literal(math.log2(c))} * {e.f(p)})"
    p, xs = float(p), e.f(x)
    small = {0.0: "1.0", 1.0: xs, 2.0: f"{xs} * {xs}", 3.0: f"{xs} * {xs} * {xs}",
             4.0: f"({xs} * {xs}) * ({xs} * {xs})", 0.5: f"tl.sqrt({xs})",
             -0.5: f"tl.rsqrt({xs})", -1.0: f"1.0 / {xs}", -2.0: f"1.0 / ({xs} * {xs})"}
    if p in small:
        return small[p]
    if p.is_integer():  # |x| ** p, negative where x < 0 and p is odd
        mag = e.tmp(f"tl.exp2({_literal(p)} * tl.log2(tl.abs({xs})))")
        return f"tl.where({xs} < 0.0, -{mag.expr}, {mag.expr})" if p % 2 else mag.expr
    return f"tl.exp2({_literal(p)} * tl.log2({xs}))"


def _gelu(e: _Emit, a: dict[str, Any]) -> str:
    x = e.f(a["input"])
    if a["approximate"] == "tanh":  # torch's formula, term by term
        e.use("_tanh")
        inner = e.tmp(f"0.7978845608028654 * ({x} + 0.044715 * {x} * {x} * {x})")
        return f"0.5 * {x} * (1.0 + _tanh({inner.expr}))"
    if a["approximate"] != "none":
        raise _Decline(f"gelu approximate={a['approximate']!r} is unknown")
    return f"{x} * 0.5 * (1.0 + tl.math.erf({x} * 0.7071067811865476))"


def _softplus(e: _Emit, x: str, beta: Any = 1.0, threshold: Any = 20.0) -> str:
    e.use("_log1p")
    if float(beta) == 1.0:
        return f"tl.where({x} > {_literal(threshold)}, {x}, _log1p(tl.exp({x})))"
    bx = e.tmp(f"{x} * {_literal(beta)}").expr
    return (f"tl.where({bx} > {_literal(threshold)}, {x},"
            f" _log1p(tl.exp({bx})) / {_literal(beta)})")


def _mish(e: _Emit, x: str) -> str:
    e.use("_tanh", "_log1p")
    return f"{x} * _tanh({e.tmp(f'_log1p(tl.exp({x}))').expr})"  # torch: no softplus threshold


def _relu6_of_x_plus_3(e: _Emit, a: dict[str, Any]) -> str:
    """min(max(x + 3, 0), 6), the core of torch's hardsigmoid and hardswish."""
    return e.tmp(_clamp(e, e.tmp(f"{e.f(a['input'])} + 3.0"), 0.0, 6.0)).expr


def _dropout(e: _Emit, a: dict[str, Any]) -> str:
    if float(a["p"]) != 0.0 and a["training"] is not False:
        raise _Decline(f"dropout with p={a['p']} is random: not a deterministic pointwise chain")
    return e.f(a["input"])


def _add_like(sign: str, swap: bool) -> Callable[[_Emit, dict[str, Any]], str]:
    def emit(e: _Emit, a: dict[str, Any]) -> str:
        x, y = (a["other"], a["input"]) if swap else (a["input"], a["other"])
        if isinstance(a["alpha"], _Val):
            raise _Decline("add/sub with a tensor alpha is not supported")
        alpha = "" if float(a["alpha"]) == 1.0 else f"{_literal(a['alpha'])} * "
        return f"{e.f(x)} {sign} {alpha}{e.f(y)}"
    return emit


def _div(e: _Emit, a: dict[str, Any]) -> str:
    if a["rounding_mode"] is not None:
        raise _Decline(f"division with rounding_mode={a['rounding_mode']!r} is integer-valued")
    return f"{e.f(a['input'])} / {e.f(a['other'])}"


def _pick(name: str) -> Callable[[_Emit, dict[str, Any]], str]:
    """max/min that propagate NaN like torch.maximum/minimum."""
    cmp = ">" if name == "maximum" else "<"

    def emit(e: _Emit, a: dict[str, Any]) -> str:
        x, y = e.f(a["input"]), e.f(a["other"])
        return f"tl.where(({x} {cmp} {y}) | ({x} != {x}), {x}, {y})"
    return emit


def _u(fmt: str, *helpers: str) -> Callable[[_Emit, dict[str, Any]], str]:
    """An op written as one format string over ``{x}`` (the fp32 input) and its arguments."""
    def emit(e: _Emit, a: dict[str, Any]) -> str:
        e.use(*helpers)
        consts = {k: _literal(v) for k, v in a.items()
                  if k != "input" and isinstance(v, (int, float)) and not isinstance(v, bool)}
        return fmt.format(x=e.f(a["input"]), **consts)
    return emit


_EMITTERS: dict[str, Callable[[_Emit, dict[str, Any]], str]] = {
    "add": _add_like("+", False), "sub": _add_like("-", False), "rsub": _add_like("-", True),
    "mul": lambda e, a: f"{e.f(a['input'])} * {e.f(a['other'])}",
    "div": _div, "pow": _pow, "maximum": _pick("maximum"), "minimum": _pick("minimum"),
    "neg": _u("-{x}"), "square": _u("{x} * {x}"), "reciprocal": _u("1.0 / {x}"),
    "abs": _u("tl.abs({x})"), "sqrt": _u("tl.sqrt({x})"), "rsqrt": _u("tl.rsqrt({x})"),
    "exp": _u("tl.exp({x})"), "exp2": _u("tl.exp2({x})"), "log": _u("tl.log({x})"),
    "log2": _u("tl.log2({x})"), "log1p": _u("_log1p({x})", "_log1p"),
    "expm1": _u("_expm1({x})", "_expm1"), "sin": _u("tl.sin({x})"), "cos": _u("tl.cos({x})"),
    "tanh": _u("_tanh({x})", "_tanh"), "sigmoid": _u("tl.sigmoid({x})"),
    "erf": _u("tl.math.erf({x})"),
    "sign": _u("tl.where({x} > 0.0, 1.0, tl.where({x} < 0.0, -1.0, {x}))"),
    "masked_fill": lambda e, a: f"tl.where({e.b(a['mask'])}, {e.f(a['value'])}, {e.f(a['input'])})",
    "relu": _u("tl.where({x} < 0.0, 0.0, {x})"),
    "relu6": lambda e, a: _clamp(e, a["input"], 0.0, 6.0),
    "hardtanh": lambda e, a: _clamp(e, a["input"], a["min_val"], a["max_val"]),
    "clamp": lambda e, a: _clamp(e, a["input"], a["min"], a["max"]),
    "clamp_min": lambda e, a: _clamp(e, a["input"], a["min"], None),
    "clamp_max": lambda e, a: _clamp(e, a["input"], None, a["max"]),
    "leaky_relu": _u("tl.where({x} > 0.0, {x}, {x} * {negative_slope})"),
    "elu": _u("tl.where({x} > 0.0, {x}, {alpha} * _expm1({x}))", "_expm1"),
    "celu": _u("tl.where({x} > 0.0, {x}, {alpha} * _expm1({x} / {alpha}))", "_expm1"),
    "selu": lambda e, a: f"{SELU_SCALE!r} * " + e.tmp(_EMITTERS["elu"](
        e, {"input": a["input"], "alpha": SELU_ALPHA})).expr,
    "gelu": _gelu,
    "silu": _u("{x} / (1.0 + tl.exp(-{x}))"),
    "mish": lambda e, a: _mish(e, e.f(a["input"])),
    "softplus": lambda e, a: _softplus(e, e.f(a["input"]), a["beta"], a["threshold"]),
    "softsign": _u("{x} / (1.0 + tl.abs({x}))"),
    "hardsigmoid": lambda e, a: f"{_relu6_of_x_plus_3(e, a)} / 6.0",
    "hardswish": lambda e, a: f"{e.f(a['input'])} * {_relu6_of_x_plus_3(e, a)} / 6.0",
    "logsigmoid": _u("tl.where({x} < 0.0, {x}, 0.0) - _log1p(tl.exp(-tl.abs({x})))", "_log1p"),
    "tanhshrink": _u("{x} - _tanh({x})", "_tanh"),
    "hardshrink": _u("tl.where(({x} > {lambd}) | ({x} < -{lambd}), {x}, 0.0)"),
    "softshrink": _u("tl.where({x} > {lambd}, {x} - {lambd},"
                     " tl.where({x} < -{lambd}, {x} + {lambd}, 0.0))"),
    "threshold": _u("tl.where({x} > {threshold}, {x}, {value})"),
    "dropout": _dropout,
}
_COMPARE = {"gt": ">", "lt": "<", "ge": ">=", "le": "<=", "eq": "==", "ne": "!="}
_HELPERS = {
    "_expm1": '''
        @triton.jit
        def _expm1(x):
            # exp(x) - 1 loses all relative precision near 0, where a Taylor series is exact.
            series = x * (1.0 + x * (0.5 + x * (1.0 / 6.0 + x * (1.0 / 24.0 + x * (1.0 / 120.0
                     + x * (1.0 / 720.0 + x * (1.0 / 5040.0)))))))
            return tl.where(tl.abs(x) < 0.1, series, tl.exp(x) - 1.0)
    ''',
    "_log1p": '''
        @triton.jit
        def _log1p(x):
            # log(1 + x) loses all relative precision near 0, where a Taylor series is exact.
            series = x * (1.0 - x * (0.5 - x * (1.0 / 3.0 - x * (0.25 - x * (0.2 - x * (1.0 / 6.0
                     - x * (1.0 / 7.0 - x * 0.125)))))))
            return tl.where(tl.abs(x) < 0.1, series, tl.log(1.0 + x))
    ''',
    "_round_bf16": '''
        @triton.jit
        def _round_bf16(x):
            # fp32 -> bf16 -> fp32, round to nearest even, in integer ops: the same result on
            # every backend (Triton's interpreter truncates bf16 casts).
            bits = x.to(tl.uint32, bitcast=True)
            bits = (bits + (0x7FFF + ((bits >> 16) & 1))) & 0xFFFF0000
            return tl.where(x != x, x, bits.to(tl.float32, bitcast=True))
    ''',
    "_tanh": '''
        @triton.jit
        def _tanh(x):
            # tanh = e / (e + 2) with e = expm1(2x); beyond |x| = 20 tanh is +-1 in fp32, and the
            # clip keeps exp finite (inf / inf would be NaN). NaN passes through the where.
            y = 2.0 * tl.where(x > 20.0, 20.0, x)
            series = y * (1.0 + y * (0.5 + y * (1.0 / 6.0 + y * (1.0 / 24.0 + y * (1.0 / 120.0
                     + y * (1.0 / 720.0 + y * (1.0 / 5040.0)))))))
            e = tl.where(tl.abs(y) < 0.1, series, tl.exp(y) - 1.0)
            return e / (e + 2.0)
    ''',
}


@dataclasses.dataclass
class _Leaf:
    """A tensor operand: a forward input or a parameter/buffer."""

    name: str  # identifier inside the kernel
    expr: str  # how forward reaches it
    info: TensorInfo


@dataclasses.dataclass
class _Chain:
    """A lowered chain: operands, body lines, the result and what it must be stored as."""

    inputs: list[str]
    leaves: list[_Leaf]
    lines: list[str]
    result: _Val
    out: TensorInfo
    helpers: list[str]
    ops: list[str]


def _check_dtype(node: torch.fx.Node, info: TensorInfo) -> None:
    if info.dtype not in FLOAT_DTYPES and info.dtype != torch.bool:
        raise _Decline(f"'{node.name}' is {info.dtype}: only fp32/fp16/bf16 values and bool"
                       " comparisons are computed (no integer or float64 results)")


def _lower(analysis: TaskAnalysis) -> _Chain:
    """The reference's graph as Triton statements, or raise ``_Decline``."""
    nodes = analysis.nodes()
    out_node = next(n for n in nodes if n.op == "output")
    result = out_node.args[0]
    if not isinstance(result, torch.fx.Node) or result.meta.get("info") is None:
        raise _Decline("forward does not return a single tensor (tuple outputs are not fused)")
    e = _Emit()
    vals: dict[torch.fx.Node, _Val] = {}
    leaves: list[_Leaf] = []
    ops: list[str] = []
    for node in nodes:  # all of them: an unused in-place op still changes what others read
        info = node.meta.get("info")
        if node.op in ("placeholder", "get_attr"):
            if info is None:
                raise _Decline(f"input '{node.name}' is not a tensor")
            if node.op == "get_attr" and node.target not in analysis.params:
                raise _Decline(f"tensor attribute '{node.target}' is not in the state_dict")
            if info.dtype not in FLOAT_DTYPES:
                raise _Decline(f"input '{node.name}' is {info.dtype}: only fp32/fp16/bf16 inputs")
            if str(node.target).startswith("*"):
                raise _Decline(f"forward takes {node.target}: only named inputs are supported")
            expr = node.target if node.op == "placeholder" else f"self.{node.target}"
            leaves.append(_Leaf(node.name, str(expr), info))
            vals[node] = _Val(f"v_{node.name}")
            continue
        if node.op == "output":
            continue
        if node.op == "call_function" and node.target is getattr:
            if node.args[1] in ("dtype", "device"):
                continue  # names a cast's target: the cast reads its own dtype
            raise _Decline(f"'{node.name}' reads .{node.args[1]} (shape-dependent values are"
                           " not fused)")
        op, args, inplace = _resolve(node, analysis)
        if info is None:
            raise _Decline(f"'{_op_name(node, analysis)}' ({node.name}) does not make a tensor")
        _check_dtype(node, info)
        first = node.args[0] if node.args else None
        if (inplace or args.get("inplace") is True) and isinstance(first, torch.fx.Node):
            if first.op in ("placeholder", "get_attr"):
                raise _Decline(f"'{node.name}' modifies the input '{first.name}' in place")
            if len(first.users) > 1:
                raise _Decline(f"'{node.name}' modifies '{first.name}' in place while others"
                               " read it")
        for k, v in args.items():
            if isinstance(v, torch.fx.Node):
                if v not in vals:
                    raise _Decline(f"'{node.name}' takes the non-tensor '{v.name}' as {k}")
                args[k] = vals[v]
        ops.append(op if op != "gelu" or args["approximate"] == "none" else "gelu_tanh")
        vals[node] = _Val(f"v_{node.name}", "b" if info.dtype == torch.bool else "f")
        e.lines.append(f"v_{node.name} = {_expression(e, op, args, info)}")
    if result.op in ("placeholder", "get_attr"):
        raise _Decline("forward returns an input unchanged: nothing to compute")
    body = "\n".join(e.lines)
    used = [leaf for leaf in leaves if re.search(rf"\bv_{leaf.name}\b", body)]
    if not used:
        raise _Decline("the output does not depend on any tensor input")
    out = result.meta["info"]
    if tuple(torch.broadcast_shapes(*[leaf.info.shape for leaf in used])) != tuple(out.shape):
        raise _Decline("the output's shape is not the broadcast of its operands' shapes")
    inputs = [str(n.target) for n in nodes if n.op == "placeholder"]
    return _Chain(inputs, used, e.lines, vals[result], out, sorted(e.helpers), ops)


def _expression(e: _Emit, op: str, a: dict[str, Any], info: TensorInfo) -> str:
    """The Triton expression of one node (temporaries it needs go to ``e`` first)."""
    if op in _COMPARE:
        return f"{e.f(a['input'])} {_COMPARE[op]} {e.f(a['other'])}"
    if op in ("logical_and", "logical_or"):
        sign = "&" if op == "logical_and" else "|"
        return f"{e.b(a['input'])} {sign} {e.b(a['other'])}"
    if op == "logical_not":
        return f"{e.b(a['input'])} == 0"
    to = e.b if info.dtype == torch.bool else e.f  # the node's own kind
    if op == "where":
        if not isinstance(a["condition"], _Val):
            raise _Decline("where with a constant condition is not supported")
        return f"tl.where({e.b(a['condition'])}, {to(a['input'])}, {to(a['other'])})"
    if op == "identity" or (op == "cast" and info.dtype in (torch.bool, torch.float32)):
        return to(a["input"])
    if info.dtype == torch.bool:
        raise _Decline(f"{op} of bool values is not supported")
    if op == "cast":  # round through the narrower type, as the reference does
        if info.dtype == torch.bfloat16:
            e.use("_round_bf16")
            return f"_round_bf16({e.f(a['input'])})"
        return f"{e.f(a['input'])}.to(tl.float16).to(tl.float32)"
    return _EMITTERS[op](e, a)


# --- candidate files ------------------------------------------------------------------------

_HEADER = '''\
# Generated by kernelmap template pointwise/{variant}.
"""{what}
"""

import torch
import torch.nn as nn
import triton
import triton.language as tl

# The evaluator injects one choice of each as module globals (BLOCK, ITERS, num_warps).
SEARCH_SPACE = {space!r}
'''
_WHAT = {
    "flat": "each program loads ITERS blocks of BLOCK contiguous elements of every operand"
            " (all have the output's shape), computes in fp32 and stores in the output dtype.",
    "broadcast": "each program handles ITERS blocks of BLOCK output elements; every operand is"
                 " read through its broadcast strides (0 on broadcast dims) over the output's dims,"
                 " merged on the host where every operand allows it.",
}
_LAYOUT = '''

RANK = 5


def _merged_layout(shape, tensors):
    """Output sizes and each tensor's element strides (0 on broadcast dims), RANK dims each.

    Size-1 dims are dropped and neighbouring dims merged wherever every tensor allows it, so
    the kernel decomposes the flat index over as few dims as possible; the rest are padded
    with size-1 dims, which Triton specialises away.
    """
    dims = []  # [size, [stride of each tensor]], outermost first
    for d, size in enumerate(shape):
        if size == 1:
            continue
        st = []
        for t in tensors:
            k = d - (len(shape) - t.dim())
            st.append(t.stride(k) if k >= 0 and t.shape[k] != 1 else 0)
        if dims and all(o == s * size for o, s in zip(dims[-1][1], st, strict=True)):
            dims[-1] = [dims[-1][0] * size, st]
        else:
            dims.append([size, st])
    if len(dims) > RANK:
        raise ValueError(f"broadcast over {len(dims)} unmergeable dims; the kernel has {RANK}")
    dims = [[1, [0] * len(tensors)]] * (RANK - len(dims)) + dims
    sizes = [size for size, _ in dims]
    strides = [st[i] for i in range(len(tensors)) for _, st in dims]
    return sizes, strides
'''
_FLAT_KERNEL = '''

@triton.jit
def pointwise_kernel(out_ptr, {ptrs}, n, BLOCK: tl.constexpr, ITERS: tl.constexpr):
    start = tl.program_id(0).to(tl.int64) * (BLOCK * ITERS)
    for it in tl.static_range(ITERS):
        offs = start + it * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
{body}
        tl.store(out_ptr + offs, {store}, mask=mask)
'''
_BROADCAST_KERNEL = '''

@triton.jit
def pointwise_kernel(
    out_ptr, {ptrs}, n, S1, S2, S3, S4,
    {strides},
    BLOCK: tl.constexpr, ITERS: tl.constexpr, WIDE: tl.constexpr,
):
    # int32 index math (cheaper divisions) unless offsets can reach 2**31.
    if WIDE:
        start = tl.program_id(0).to(tl.int64) * (BLOCK * ITERS)
    else:
        start = tl.program_id(0) * (BLOCK * ITERS)
    for it in tl.static_range(ITERS):
        offs = start + it * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        # Output coordinates over the merged dims (padding dims have size 1 and fold away).
        i4 = offs % S4
        r = offs // S4
        i3 = r % S3
        r = r // S3
        i2 = r % S2
        r = r // S2
        i1 = r % S1
        i0 = r // S1
{body}
        tl.store(out_ptr + offs, {store}, mask=mask)
'''
_MODEL = '''

class ModelNew(nn.Module):
    def __init__(self, *args, **kwargs):
        super().__init__(){skeleton}

    def forward(self, {inputs}):
        ops = [{operands}]
{prologue}
        n = out.numel()
        if n == 0:
            return out
{layout}        grid = (triton.cdiv(n, BLOCK * ITERS),)
        pointwise_kernel[grid](
            {launch}
        )
        return out
'''


def render(chain: _Chain, variant: str, analysis: TaskAnalysis) -> str:
    """The candidate file of ``chain`` for ``variant`` ("flat" or "broadcast")."""
    names = [leaf.name for leaf in chain.leaves]
    out_dtype = str(chain.out.dtype)
    if variant == "flat":
        loads = [f"v_{m} = tl.load(p_{m} + offs, mask=mask).to(tl.float32)" for m in names]
        prologue = (f"        out = torch.empty(ops[0].shape, dtype={out_dtype},"
                    " device=ops[0].device)")
        launch = "out, *ops, n, BLOCK=BLOCK, ITERS=ITERS, num_warps=num_warps"
        layout = ""
    else:
        loads = [line for m in names for line in (
            f"o_{m} = " + " + ".join(f"i{d} * {m}_s{d}" for d in range(RANK)),
            f"v_{m} = tl.load(p_{m} + o_{m}, mask=mask).to(tl.float32)")]
        prologue = textwrap.indent(textwrap.dedent(f"""\
            shape = torch.broadcast_shapes(*[t.shape for t in ops])
            out = torch.empty(shape, dtype={out_dtype}, device=ops[0].device)"""), " " * 8)
        layout = ("        sizes, strides = _merged_layout(shape, ops)\n"
                  "        wide = n + BLOCK * ITERS >= 2**31\n")
        launch = ("out, *ops, n, *sizes[1:], *strides,\n"
                  "            BLOCK=BLOCK, ITERS=ITERS, WIDE=wide, num_warps=num_warps")
    r = chain.result
    store = r.expr
    if r.kind == "f" and chain.out.dtype != torch.float32:
        store = f"{r.expr}.to({FLOAT_DTYPES[chain.out.dtype]})"
    body = textwrap.indent("\n".join(loads + chain.lines), " " * 8)
    ptrs = ", ".join(f"p_{m}" for m in names)
    kernel = (_FLAT_KERNEL if variant == "flat" else _BROADCAST_KERNEL).format(
        ptrs=ptrs, body=body, store=store,
        strides=",\n    ".join(", ".join(f"{m}_s{d}" for d in range(5)) for m in names))
    ops = ", ".join(dict.fromkeys(chain.ops))
    what = textwrap.fill(f"Fused pointwise chain ({ops}) in one Triton kernel: {_WHAT[variant]}",
                         width=96, subsequent_indent="")
    source = _HEADER.format(variant=variant, what=what, space=SPACES[variant])
    skeleton = "\n" + parameter_skeleton(analysis.params) if analysis.params else ""
    source += "".join("\n" + textwrap.dedent(_HELPERS[h]).rstrip() + "\n" for h in chain.helpers)
    if variant == "broadcast":
        source += _LAYOUT
    source += kernel + _MODEL.format(
        skeleton=skeleton, inputs=", ".join(chain.inputs),
        operands=", ".join(f"{leaf.expr}.contiguous()" for leaf in chain.leaves),
        prologue=prologue, layout=layout, launch=launch)
    return source


class PointwiseTemplate(Template):
    """Any graph of elementwise ops of the reference, fused into one Triton kernel."""

    name = "pointwise"

    def instantiate(self, analysis: TaskAnalysis) -> list[TemplateCandidate] | str:
        """``flat`` (operands all of the output's shape) and ``broadcast`` candidates."""
        if analysis.graph is None:
            return f"the reference could not be traced: {analysis.reason}"
        try:
            chain = _lower(analysis)
        except _Decline as d:
            return str(d)
        note = f"fuses {len(chain.ops)} ops over {len(chain.leaves)} operands"
        out: list[TemplateCandidate] = []
        if all(leaf.info.shape == chain.out.shape for leaf in chain.leaves):
            out.append(TemplateCandidate(self.name, "flat", render(chain, "flat", analysis), note))
        if len(chain.out.shape) <= RANK:
            out.append(TemplateCandidate(self.name, "broadcast",
                                         render(chain, "broadcast", analysis), note))
        return out or f"broadcasting over more than {RANK} dims is not supported"


TEMPLATES: list[Template] = [PointwiseTemplate()]
