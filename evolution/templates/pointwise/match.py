"""Recognising a pointwise chain: what each node of the reference's fx graph computes.

:func:`lower` walks the graph in topological order, resolves every compute node to a canonical
op and its arguments by name (``torch.*``, ``F.*``, ``torch.special``, Tensor methods, ``nn``
activation modules and Python operators, aliases and in-place forms included), checks dtypes,
in-place writes and shapes, and writes each node as a Triton statement through
:mod:`~evolution.templates.pointwise.ops`. The result is a :class:`Chain`, or :class:`Decline`
with the one-sentence reason the reference is not a pointwise chain.
"""

from __future__ import annotations

import dataclasses
import operator
import re
from typing import Any

import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F

from evolution.templates.analysis import TaskAnalysis, TensorInfo
from evolution.templates.pointwise.ops import FLOAT_DTYPES, Decline, Emit, Val, expression

# --- what a node computes -------------------------------------------------------------------

_REQ = object()  # marks a required argument
_INPLACE = ("inplace", False)
_UNARY = (("input", _REQ),)
_ACT = (("input", _REQ), _INPLACE)
_BINARY = (("input", _REQ), ("other", _REQ))
_SIGS: dict[str, tuple[tuple[str, Any], ...]] = {
    **dict.fromkeys(["add", "sub", "rsub"], (*_BINARY, ("alpha", 1))),
    **dict.fromkeys(
        [
            "mul",
            "maximum",
            "minimum",
            "gt",
            "lt",
            "ge",
            "le",
            "eq",
            "ne",
            "logical_and",
            "logical_or",
        ],
        _BINARY,
    ),
    "div": (*_BINARY, ("rounding_mode", None)),
    "pow": (("input", _REQ), ("exponent", _REQ)),
    **dict.fromkeys(
        [
            "neg",
            "square",
            "reciprocal",
            "abs",
            "sqrt",
            "rsqrt",
            "exp",
            "exp2",
            "log",
            "log2",
            "log1p",
            "expm1",
            "sin",
            "cos",
            "tanh",
            "sigmoid",
            "erf",
            "sign",
            "logical_not",
            "softsign",
            "logsigmoid",
            "tanhshrink",
            "identity",
            "cast",
        ],
        _UNARY,
    ),
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
    "subtract": "sub",
    "multiply": "mul",
    "divide": "div",
    "true_divide": "div",
    "negative": "neg",
    "absolute": "abs",
    "clip": "clamp",
    "greater": "gt",
    "less": "lt",
    "greater_equal": "ge",
    "less_equal": "le",
    "not_equal": "ne",
    "log_sigmoid": "logsigmoid",
    "expit": "sigmoid",
    "contiguous": "identity",
    "clone": "identity",
    "detach": "identity",
    "float": "cast",
    "half": "cast",
    "bfloat16": "cast",
    "double": "cast",
    "to": "cast",
    "type": "cast",
    "type_as": "cast",
    "bool": "cast",
    "int": "cast",
    "long": "cast",
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
    ops = {
        "add": "add",
        "sub": "sub",
        "mul": "mul",
        "truediv": "div",
        "pow": "pow",
        "gt": "gt",
        "lt": "lt",
        "ge": "ge",
        "le": "le",
        "eq": "eq",
        "ne": "ne",
        "and_": "logical_and",
        "or_": "logical_or",
        "neg": "neg",
        "abs": "abs",
        "invert": "logical_not",
        "pos": "identity",
    }
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
    nn.ReLU: ("relu", ()),
    nn.ReLU6: ("relu6", ()),
    nn.SELU: ("selu", ()),
    nn.SiLU: ("silu", ()),
    nn.Mish: ("mish", ()),
    nn.Softsign: ("softsign", ()),
    nn.Hardsigmoid: ("hardsigmoid", ()),
    nn.Hardswish: ("hardswish", ()),
    nn.Sigmoid: ("sigmoid", ()),
    nn.Tanh: ("tanh", ()),
    nn.LogSigmoid: ("logsigmoid", ()),
    nn.Tanhshrink: ("tanhshrink", ()),
    nn.Identity: ("identity", ()),
    nn.LeakyReLU: ("leaky_relu", ("negative_slope",)),
    nn.ELU: ("elu", ("alpha",)),
    nn.CELU: ("celu", ("alpha",)),
    nn.GELU: ("gelu", ("approximate",)),
    nn.Softplus: ("softplus", ("beta", "threshold")),
    nn.Hardtanh: ("hardtanh", ("min_val", "max_val")),
    nn.Softshrink: ("softshrink", ("lambd",)),
    nn.Hardshrink: ("hardshrink", ("lambd",)),
    nn.Threshold: ("threshold", ("threshold", "value")),
    nn.Dropout: ("dropout", ("p",)),
}
_NOT_POINTWISE = [  # (pattern of an op's name, case-insensitive; why it is declined)
    (r"dropout|rand|bernoulli|multinomial|normal_", "is random"),
    (
        r"softmax|sum|mean|prod|norm|var|std|amax|amin|argmax|argmin|logsumexp|cumsum|cumprod"
        r"|^all$|^any$|loss|cross_entropy|nll|kl_div|pool",
        "is a reduction",
    ),
    (r"matmul|mm|linear|conv|einsum|dot|^mv$|attention", "is a matmul or convolution"),
    (
        r"view|reshape|permute|transpose|flatten|squeeze|expand|repeat|narrow|getitem|^t$|cat"
        r"|stack|split|chunk|flip|roll|gather|scatter|index|pad|slice",
        "moves data (views, reshapes and indexing are not fused)",
    ),
]


def _op_name(node: torch.fx.Node, analysis: TaskAnalysis) -> str:
    """A readable name of what a node calls (for reasons)."""
    if node.op == "call_module":
        return type(analysis.module_of(node)).__name__
    if node.op == "call_method":
        return f".{node.target}()"
    return getattr(node.target, "__name__", str(node.target))


def _unknown(node: torch.fx.Node, analysis: TaskAnalysis) -> Decline:
    name = _op_name(node, analysis)
    for pattern, why in _NOT_POINTWISE:
        if re.search(pattern, name.strip(".()"), re.IGNORECASE):
            return Decline(f"'{name}' ({node.name}) {why}: not a pointwise chain")
    return Decline(f"'{name}' ({node.name}) is not an elementwise op this template knows")


def _bind(op: str, sig: tuple, args: tuple, kwargs: dict, node: torch.fx.Node) -> dict[str, Any]:
    """Positional and keyword arguments by parameter name, defaults filled in."""
    if len(args) > len(sig):
        raise Decline(f"'{node.name}' passes more arguments than {op} takes")
    bound = {name: value for (name, _), value in zip(sig, args, strict=False)}
    for key, value in kwargs.items():
        if key not in {name for name, _ in sig} or key in bound:
            raise Decline(f"'{node.name}': argument {key}= of {op} is not supported")
        bound[key] = value
    for name, default in sig:
        if name not in bound:
            if default is _REQ:
                raise Decline(f"'{node.name}': {op} without its {name} argument")
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
        raise Decline(f"'{node.name}' is a {op[:3]} reduction: not a pointwise chain")
    if op == "cast":  # the target dtype is the node's own; its arguments only name it
        return op, {"input": node.args[0]}, inplace
    return op, _bind(op, sig, node.args, node.kwargs, node), inplace


def _is_tensor(value: Any) -> bool:
    return isinstance(value, torch.fx.Node) and value.meta.get("info") is not None


@dataclasses.dataclass
class _Leaf:
    """A tensor operand: a forward input or a parameter/buffer."""

    name: str  # identifier inside the kernel
    expr: str  # how forward reaches it
    info: TensorInfo


@dataclasses.dataclass
class Chain:
    """A lowered chain: operands, body lines, the result and what it must be stored as."""

    inputs: list[str]
    leaves: list[_Leaf]
    lines: list[str]
    result: Val
    out: TensorInfo
    helpers: list[str]
    ops: list[str]


def _check_dtype(node: torch.fx.Node, info: TensorInfo) -> None:
    if info.dtype not in FLOAT_DTYPES and info.dtype != torch.bool:
        raise Decline(
            f"'{node.name}' is {info.dtype}: only fp32/fp16/bf16 values and bool"
            " comparisons are computed (no integer or float64 results)"
        )


def lower(analysis: TaskAnalysis) -> Chain:
    """The reference's graph as Triton statements, or raise ``Decline``."""
    nodes = analysis.nodes()
    out_node = next(n for n in nodes if n.op == "output")
    result = out_node.args[0]
    if not isinstance(result, torch.fx.Node) or result.meta.get("info") is None:
        raise Decline("forward does not return a single tensor (tuple outputs are not fused)")
    e = Emit()
    vals: dict[torch.fx.Node, Val] = {}
    leaves: list[_Leaf] = []
    ops: list[str] = []
    for node in nodes:  # all of them: an unused in-place op still changes what others read
        info = node.meta.get("info")
        if node.op in ("placeholder", "get_attr"):
            if info is None:
                raise Decline(f"input '{node.name}' is not a tensor")
            if node.op == "get_attr" and node.target not in analysis.params:
                raise Decline(f"tensor attribute '{node.target}' is not in the state_dict")
            if info.dtype not in FLOAT_DTYPES:
                raise Decline(f"input '{node.name}' is {info.dtype}: only fp32/fp16/bf16 inputs")
            if str(node.target).startswith("*"):
                raise Decline(f"forward takes {node.target}: only named inputs are supported")
            expr = node.target if node.op == "placeholder" else f"self.{node.target}"
            leaves.append(_Leaf(node.name, str(expr), info))
            vals[node] = Val(f"v_{node.name}")
            continue
        if node.op == "output":
            continue
        if node.op == "call_function" and node.target is getattr:
            if node.args[1] in ("dtype", "device"):
                continue  # names a cast's target: the cast reads its own dtype
            raise Decline(
                f"'{node.name}' reads .{node.args[1]} (shape-dependent values are not fused)"
            )
        op, args, inplace = _resolve(node, analysis)
        if info is None:
            raise Decline(f"'{_op_name(node, analysis)}' ({node.name}) does not make a tensor")
        _check_dtype(node, info)
        first = node.args[0] if node.args else None
        if (inplace or args.get("inplace") is True) and isinstance(first, torch.fx.Node):
            if first.op in ("placeholder", "get_attr"):
                raise Decline(f"'{node.name}' modifies the input '{first.name}' in place")
            if len(first.users) > 1:
                raise Decline(
                    f"'{node.name}' modifies '{first.name}' in place while others read it"
                )
        for k, v in args.items():
            if isinstance(v, torch.fx.Node):
                if v not in vals:
                    raise Decline(f"'{node.name}' takes the non-tensor '{v.name}' as {k}")
                args[k] = vals[v]
        ops.append(op if op != "gelu" or args["approximate"] == "none" else "gelu_tanh")
        vals[node] = Val(f"v_{node.name}", "b" if info.dtype == torch.bool else "f")
        e.lines.append(f"v_{node.name} = {expression(e, op, args, info)}")
    if result.op in ("placeholder", "get_attr"):
        raise Decline("forward returns an input unchanged: nothing to compute")
    body = "\n".join(e.lines)
    used = [leaf for leaf in leaves if re.search(rf"\bv_{leaf.name}\b", body)]
    if not used:
        raise Decline("the output does not depend on any tensor input")
    out = result.meta["info"]
    if tuple(torch.broadcast_shapes(*[leaf.info.shape for leaf in used])) != tuple(out.shape):
        raise Decline("the output's shape is not the broadcast of its operands' shapes")
    inputs = [str(n.target) for n in nodes if n.op == "placeholder"]
    return Chain(inputs, used, e.lines, vals[result], out, sorted(e.helpers), ops)
