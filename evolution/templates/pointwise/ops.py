"""The pointwise op table: how each elementwise op of a fused chain is written in Triton.

:func:`expression` turns one canonical op (a name from :mod:`~evolution.templates.pointwise.match`)
and its bound arguments into a Triton expression over fp32 values, emitting the temporaries it
needs into an :class:`Emit` and naming the ``@triton.jit`` helpers (``HELPERS``) it calls.
Values are :class:`Val`: a temporary's name and its kind, ``"f"`` (fp32) or ``"b"`` (a predicate).
Ops are written as torch computes them: NaN propagation, clamps, ``expm1``/``log1p`` near 0, the
bf16 rounding of casts.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import torch

from evolution.templates.analysis import TensorInfo

FLOAT_DTYPES = {
    torch.float32: "tl.float32",
    torch.float16: "tl.float16",
    torch.bfloat16: "tl.bfloat16",
}
SELU_ALPHA = 1.6732632423543772848170429916717
SELU_SCALE = 1.0507009873554804934193349852946


class Decline(Exception):
    """The chain cannot be fused; the message is the one-sentence reason."""


@dataclasses.dataclass(frozen=True)
class Val:
    """A value in the kernel: a temporary's name or a literal; ``kind`` "f" (fp32) or "b" (i1)."""

    expr: str
    kind: str = "f"


def _literal(c: Any) -> str:
    if isinstance(c, bool) or not isinstance(c, (int, float)):
        raise Decline(f"constant {c!r} is not a number")
    c = float(c)
    if math.isnan(c):
        return 'float("nan")'
    if math.isinf(c):
        return 'float("inf")' if c > 0 else '(-float("inf"))'
    return repr(c) if c >= 0 else f"({c!r})"


class Emit:
    """Collects the kernel body: one line per temporary, and the helper functions used."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.helpers: set[str] = set()
        self.count = 0

    def f(self, v: Any) -> str:
        """``v`` as an fp32 expression."""
        if isinstance(v, Val):
            return v.expr if v.kind == "f" else f"{v.expr}.to(tl.float32)"
        return _literal(v)

    def b(self, v: Any) -> str:
        """``v`` as a predicate."""
        if isinstance(v, Val) and v.kind == "b":
            return v.expr
        return f"({self.f(v)} != 0.0)"

    def tmp(self, expr: str, kind: str = "f") -> Val:
        """A fresh temporary holding ``expr``."""
        name = f"t{self.count}"
        self.count += 1
        self.lines.append(f"{name} = {expr}")
        return Val(name, kind)

    def use(self, *helpers: str) -> None:
        self.helpers.update(helpers)


def _clamp(e: Emit, x: Any, lo: Any, hi: Any) -> str:
    """min(max(x, lo), hi) as torch.clamp computes it, NaN passing through."""
    if lo is not None:
        x = e.tmp(f"tl.where({e.f(x)} < {e.f(lo)}, {e.f(lo)}, {e.f(x)})")
    if hi is None:
        return e.f(x)
    return f"tl.where({e.f(x)} > {e.f(hi)}, {e.f(hi)}, {e.f(x)})"


def _pow(e: Emit, a: dict[str, Any]) -> str:
    x, p = a["input"], a["exponent"]
    if isinstance(x, Val) and isinstance(p, Val):
        raise Decline("pow with a tensor exponent and a tensor base is not supported")
    if isinstance(p, Val):  # constant ** tensor
        c = float(x)
        if c <= 0:
            raise Decline(f"pow with the non-positive constant base {c!r} is not supported")
        return f"tl.exp2({_literal(math.log2(c))} * {e.f(p)})"
    p, xs = float(p), e.f(x)
    small = {
        0.0: "1.0",
        1.0: xs,
        2.0: f"{xs} * {xs}",
        3.0: f"{xs} * {xs} * {xs}",
        4.0: f"({xs} * {xs}) * ({xs} * {xs})",
        0.5: f"tl.sqrt({xs})",
        -0.5: f"tl.rsqrt({xs})",
        -1.0: f"1.0 / {xs}",
        -2.0: f"1.0 / ({xs} * {xs})",
    }
    if p in small:
        return small[p]
    if p.is_integer():  # |x| ** p, negative where x < 0 and p is odd
        mag = e.tmp(f"tl.exp2({_literal(p)} * tl.log2(tl.abs({xs})))")
        return f"tl.where({xs} < 0.0, -{mag.expr}, {mag.expr})" if p % 2 else mag.expr
    return f"tl.exp2({_literal(p)} * tl.log2({xs}))"


def _gelu(e: Emit, a: dict[str, Any]) -> str:
    x = e.f(a["input"])
    if a["approximate"] == "tanh":  # torch's formula, term by term
        e.use("_tanh")
        inner = e.tmp(f"0.7978845608028654 * ({x} + 0.044715 * {x} * {x} * {x})")
        return f"0.5 * {x} * (1.0 + _tanh({inner.expr}))"
    if a["approximate"] != "none":
        raise Decline(f"gelu approximate={a['approximate']!r} is unknown")
    return f"{x} * 0.5 * (1.0 + tl.math.erf({x} * 0.7071067811865476))"


def _softplus(e: Emit, x: str, beta: Any = 1.0, threshold: Any = 20.0) -> str:
    e.use("_log1p")
    if float(beta) == 1.0:
        return f"tl.where({x} > {_literal(threshold)}, {x}, _log1p(tl.exp({x})))"
    bx = e.tmp(f"{x} * {_literal(beta)}").expr
    return f"tl.where({bx} > {_literal(threshold)}, {x}, _log1p(tl.exp({bx})) / {_literal(beta)})"


def _mish(e: Emit, x: str) -> str:
    e.use("_tanh", "_log1p")
    return f"{x} * _tanh({e.tmp(f'_log1p(tl.exp({x}))').expr})"  # torch: no softplus threshold


def _relu6_of_x_plus_3(e: Emit, a: dict[str, Any]) -> str:
    """min(max(x + 3, 0), 6), the core of torch's hardsigmoid and hardswish."""
    return e.tmp(_clamp(e, e.tmp(f"{e.f(a['input'])} + 3.0"), 0.0, 6.0)).expr


def _dropout(e: Emit, a: dict[str, Any]) -> str:
    if float(a["p"]) != 0.0 and a["training"] is not False:
        raise Decline(f"dropout with p={a['p']} is random: not a deterministic pointwise chain")
    return e.f(a["input"])


def _add_like(sign: str, swap: bool) -> Callable[[Emit, dict[str, Any]], str]:
    def emit(e: Emit, a: dict[str, Any]) -> str:
        x, y = (a["other"], a["input"]) if swap else (a["input"], a["other"])
        if isinstance(a["alpha"], Val):
            raise Decline("add/sub with a tensor alpha is not supported")
        alpha = "" if float(a["alpha"]) == 1.0 else f"{_literal(a['alpha'])} * "
        return f"{e.f(x)} {sign} {alpha}{e.f(y)}"

    return emit


def _div(e: Emit, a: dict[str, Any]) -> str:
    if a["rounding_mode"] is not None:
        raise Decline(f"division with rounding_mode={a['rounding_mode']!r} is integer-valued")
    return f"{e.f(a['input'])} / {e.f(a['other'])}"


def _pick(name: str) -> Callable[[Emit, dict[str, Any]], str]:
    """max/min that propagate NaN like torch.maximum/minimum."""
    cmp = ">" if name == "maximum" else "<"

    def emit(e: Emit, a: dict[str, Any]) -> str:
        x, y = e.f(a["input"]), e.f(a["other"])
        return f"tl.where(({x} {cmp} {y}) | ({x} != {x}), {x}, {y})"

    return emit


def _u(fmt: str, *helpers: str) -> Callable[[Emit, dict[str, Any]], str]:
    """An op written as one format string over ``{x}`` (the fp32 input) and its arguments."""

    def emit(e: Emit, a: dict[str, Any]) -> str:
        e.use(*helpers)
        consts = {
            k: _literal(v)
            for k, v in a.items()
            if k != "input" and isinstance(v, (int, float)) and not isinstance(v, bool)
        }
        return fmt.format(x=e.f(a["input"]), **consts)

    return emit


_EMITTERS: dict[str, Callable[[Emit, dict[str, Any]], str]] = {
    "add": _add_like("+", False),
    "sub": _add_like("-", False),
    "rsub": _add_like("-", True),
    "mul": lambda e, a: f"{e.f(a['input'])} * {e.f(a['other'])}",
    "div": _div,
    "pow": _pow,
    "maximum": _pick("maximum"),
    "minimum": _pick("minimum"),
    "neg": _u("-{x}"),
    "square": _u("{x} * {x}"),
    "reciprocal": _u("1.0 / {x}"),
    "abs": _u("tl.abs({x})"),
    "sqrt": _u("tl.sqrt({x})"),
    "rsqrt": _u("tl.rsqrt({x})"),
    "exp": _u("tl.exp({x})"),
    "exp2": _u("tl.exp2({x})"),
    "log": _u("tl.log({x})"),
    "log2": _u("tl.log2({x})"),
    "log1p": _u("_log1p({x})", "_log1p"),
    "expm1": _u("_expm1({x})", "_expm1"),
    "sin": _u("tl.sin({x})"),
    "cos": _u("tl.cos({x})"),
    "tanh": _u("_tanh({x})", "_tanh"),
    "sigmoid": _u("tl.sigmoid({x})"),
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
    "selu": lambda e, a: (
        f"{SELU_SCALE!r} * "
        + e.tmp(_EMITTERS["elu"](e, {"input": a["input"], "alpha": SELU_ALPHA})).expr
    ),
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
    "softshrink": _u(
        "tl.where({x} > {lambd}, {x} - {lambd}, tl.where({x} < -{lambd}, {x} + {lambd}, 0.0))"
    ),
    "threshold": _u("tl.where({x} > {threshold}, {x}, {value})"),
    "dropout": _dropout,
}
_COMPARE = {"gt": ">", "lt": "<", "ge": ">=", "le": "<=", "eq": "==", "ne": "!="}
HELPERS = {
    "_expm1": """
        @triton.jit
        def _expm1(x):
            # exp(x) - 1 loses all relative precision near 0, where a Taylor series is exact.
            series = x * (1.0 + x * (0.5 + x * (1.0 / 6.0 + x * (1.0 / 24.0 + x * (1.0 / 120.0
                     + x * (1.0 / 720.0 + x * (1.0 / 5040.0)))))))
            return tl.where(tl.abs(x) < 0.1, series, tl.exp(x) - 1.0)
    """,
    "_log1p": """
        @triton.jit
        def _log1p(x):
            # log(1 + x) loses all relative precision near 0, where a Taylor series is exact.
            series = x * (1.0 - x * (0.5 - x * (1.0 / 3.0 - x * (0.25 - x * (0.2 - x * (1.0 / 6.0
                     - x * (1.0 / 7.0 - x * 0.125)))))))
            return tl.where(tl.abs(x) < 0.1, series, tl.log(1.0 + x))
    """,
    "_round_bf16": """
        @triton.jit
        def _round_bf16(x):
            # fp32 -> bf16 -> fp32, round to nearest even, in integer ops: the same result on
            # every backend (Triton's interpreter truncates bf16 casts).
            bits = x.to(tl.uint32, bitcast=True)
            bits = (bits + (0x7FFF + ((bits >> 16) & 1))) & 0xFFFF0000
            return tl.where(x != x, x, bits.to(tl.float32, bitcast=True))
    """,
    "_tanh": """
        @triton.jit
        def _tanh(x):
            # tanh = e / (e + 2) with e = expm1(2x); beyond |x| = 20 tanh is +-1 in fp32, and the
            # clip keeps exp finite (inf / inf would be NaN). NaN passes through the where.
            y = 2.0 * tl.where(x > 20.0, 20.0, x)
            series = y * (1.0 + y * (0.5 + y * (1.0 / 6.0 + y * (1.0 / 24.0 + y * (1.0 / 120.0
                     + y * (1.0 / 720.0 + y * (1.0 / 5040.0)))))))
            e = tl.where(tl.abs(y) < 0.1, series, tl.exp(y) - 1.0)
            return e / (e + 2.0)
    """,
}


def expression(e: Emit, op: str, a: dict[str, Any], info: TensorInfo) -> str:
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
        if not isinstance(a["condition"], Val):
            raise Decline("where with a constant condition is not supported")
        return f"tl.where({e.b(a['condition'])}, {to(a['input'])}, {to(a['other'])})"
    if op == "identity" or (op == "cast" and info.dtype in (torch.bool, torch.float32)):
        return to(a["input"])
    if info.dtype == torch.bool:
        raise Decline(f"{op} of bool values is not supported")
    if op == "cast":  # round through the narrower type, as the reference does
        if info.dtype == torch.bfloat16:
            e.use("_round_bf16")
            return f"_round_bf16({e.f(a['input'])})"
        return f"{e.f(a['input'])}.to(tl.float16).to(tl.float32)"
    return _EMITTERS[op](e, a)
