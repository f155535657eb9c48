"""Recognising a matmul task: the one product, and the pointwise epilogue graph that reads it.

:func:`match_plan` finds the reference's single matrix product
(:mod:`~evolution.templates.matmul.product`), walks every node after it as the fused epilogue
(one Triton line per node, ops from :mod:`~evolution.templates.matmul.epilogue_ops`; operands
classified as scalars, per-column vectors or output-shaped tiles) and checks nothing else reads
the intermediates. The result is a :class:`Plan`, everything a candidate file needs, or
:class:`~evolution.templates.matmul.product.Decline` with the reason.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
import torch.fx

from evolution.templates.analysis import TaskAnalysis
from evolution.templates.matmul.epilogue_ops import expression, is_inplace, pointwise_op
from evolution.templates.matmul.product import (
    Decline,
    Gemm,
    attr_expr,
    describe,
    input_name,
    is_gemm,
    literal,
    match_gemm,
    scalar,
)

_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@dataclasses.dataclass
class Extra:
    """A tensor the epilogue reads: a scalar, a per-column vector or a full output-shaped tile."""

    name: str
    kind: str  # "scalar" | "column" | "full"
    expr: str  # host expression of the tensor


@dataclasses.dataclass
class _Epilogue:
    """The fused epilogue: Triton lines computing ``out`` from ``acc``, and what they read."""

    lines: list[str]
    extras: list[Extra]
    ops: list[str]


class _EpilogueBuilder:
    """Walks the graph after the matmul and writes one Triton line per pointwise node."""

    def __init__(self, analysis: TaskAnalysis, gemm: Gemm):
        self.analysis = analysis
        self.gemm = gemm
        info = gemm.node.meta["info"]
        self.shape, self.dtype = info.shape, info.dtype
        self.names: dict[torch.fx.Node, str] = {gemm.node: "acc"}
        self.extras: dict[str, Extra] = {}
        self.lines: list[str] = []
        self.ops: list[str] = []
        if gemm.alpha != 1.0:
            self.lines.append(f"acc = {literal(gemm.alpha)} * acc")
        if gemm.bias is not None:
            if isinstance(gemm.bias, str):
                bias = self._extra_for(gemm.bias, "column")
            else:
                bias = self._operand(gemm.bias)
            if gemm.beta != 1.0:
                bias = f"{literal(gemm.beta)} * {bias}"
            self.lines.append(f"acc = acc + {bias}")
            self.ops.append("bias")

    def _extra_for(self, expr: str, kind: str) -> str:
        if expr not in self.extras:
            # e_ keeps the name clear of the kernel's own variables.
            name = "e_" + expr.removeprefix("self.").replace(".", "_")
            if name in {e.name for e in self.extras.values()}:
                name += f"_{len(self.extras)}"
            self.extras[expr] = Extra(name, kind, expr)
        e = self.extras[expr]
        return f"{e.name}[None, :]" if kind == "column" else e.name

    def _operand(self, value: Any) -> str:
        """Triton expression of one operand of a pointwise op."""
        if isinstance(value, torch.fx.Node) and value in self.names:
            return self.names[value]
        number = scalar(value)
        if number is not None:
            return literal(number)
        if not isinstance(value, torch.fx.Node) or value.op not in ("placeholder", "get_attr"):
            what = value.name if isinstance(value, torch.fx.Node) else repr(value)
            raise Decline(
                f"the epilogue reads {what!r}, which is neither the matmul's result,"
                " an input, a parameter nor a number"
            )
        info = value.meta.get("info")
        if info is None or not info.dtype.is_floating_point:
            raise Decline(f"the epilogue operand {value.name!r} is not a floating tensor")
        shape, out = tuple(info.shape), tuple(self.shape)
        stripped = shape
        while stripped and stripped[0] == 1:
            stripped = stripped[1:]
        expr = (
            input_name(value)
            if value.op == "placeholder"
            else attr_expr(str(value.target), self.analysis)
        )
        if math.prod(shape) == 1 and len(shape) <= len(out):
            return self._extra_for(expr, "scalar")
        if stripped == out[-1:] and len(shape) <= len(out):
            return self._extra_for(expr, "column")
        if shape == out:
            return self._extra_for(expr, "full")
        raise Decline(
            f"the epilogue operand {value.name!r} of shape {shape} is neither a"
            f" scalar, a per-column ({out[-1]},) vector nor output-shaped {out}"
        )

    def add(self, node: torch.fx.Node) -> None:
        """Fuse ``node`` (which reads the matmul result) or raise Decline."""
        op = pointwise_op(node, self.analysis)
        module = self.analysis.module_of(node)
        what = f"{node.target} ({type(module).__name__})" if module else describe(node)
        if op is None and "softmax" in what.lower():
            raise Decline(
                "a softmax after the matmul is a row reduction over N, which this"
                " template does not fuse (a KernelBench row of N does not fit a tile)"
            )
        if op is None:
            raise Decline(f"{what} after the matmul is not a pointwise op this template fuses")
        info = node.meta.get("info")
        if info is None or tuple(info.shape) != tuple(self.shape) or info.dtype != self.dtype:
            raise Decline(f"{describe(node)} after the matmul changes the shape or dtype")
        if is_inplace(node, self.analysis):
            source = node.args[0]
            if isinstance(source, torch.fx.Node) and set(source.users) != {node}:
                raise Decline(f"in-place {describe(node)} whose input is read again")
        if op[0] == "batch_norm":
            if len(self.shape) != 2:
                raise Decline(
                    "BatchNorm1d over a matmul output that is not 2-D normalises"
                    " dim 1, not the columns"
                )
            op[2]["stats"] = [
                self._extra_for(attr_expr(f"{op[2]['module']}.{key}", self.analysis), "column")
                for key in ("running_mean", "running_var", "weight", "bias")
                if op[2]["affine"] or key.startswith("running")
            ]
        xs = [self._operand(v) for v in op[1]]
        var = f"t{len(self.names)}"
        self.names[node] = var
        self.lines.append(f"{var} = {expression(op, xs)}")
        if op[0] != "identity":
            self.ops.append(op[0])

    def result(self, out: torch.fx.Node) -> _Epilogue:
        lines = self.lines + [f"out = {self.names[out]}"]
        return _Epilogue(lines, list(self.extras.values()), self.ops)


@dataclasses.dataclass
class Plan:
    """Everything a candidate file needs: forward inputs, operands, epilogue, example sizes."""

    inputs: list[str]
    gemm: Gemm
    epilogue: _Epilogue
    precision: str  # "ieee" | "tf32" | "half"
    mnk: tuple[int, int, int]
    params: dict[str, Any]


def match_plan(analysis: TaskAnalysis) -> Plan:
    """Recognise the task or raise Decline."""
    if analysis.graph is None:
        raise Decline(analysis.reason or "the reference could not be traced")
    gemms = [n for n in analysis.compute_nodes() if is_gemm(n, analysis)]
    if not gemms:
        raise Decline("the reference computes no matmul or linear layer")
    if len(gemms) > 1:
        raise Decline("the reference computes more than one matmul; only one is fused")
    gemm = match_gemm(gemms[0], analysis)
    info = gemm.node.meta.get("info")
    if info is None or info.dtype not in _DTYPES:
        dtype = None if info is None else info.dtype
        raise Decline(f"the matmul's dtype {dtype} is not float32, float16 or bfloat16")
    # A 1-D left operand is one row (matmul and linear agree); a 1-D right one is not covered.
    if gemm.a.rank < 1 or gemm.b.rank < 2 or (gemm.a.rank < 2 and gemm.b.rank > 2):
        raise Decline("matrix-vector products with a 1-D right operand are not covered")
    a_info, b_info = gemm.a.shape, gemm.b.shape
    if gemm.b.rank > 2 and gemm.a.rank > 2 and a_info[:-2] != b_info[:-2]:
        raise Decline("batched matmuls that broadcast batch dimensions are not covered")

    builder = _EpilogueBuilder(analysis, gemm)
    for node in analysis.compute_nodes():
        if node in gemm.used or node.meta.get("info") is None:
            continue
        reads = [a for a in node.all_input_nodes if a in builder.names]
        if not reads:
            raise Decline(
                f"{describe(node)} computes outside the matmul's epilogue; only"
                " pointwise ops on the matmul result are fused"
            )
        builder.add(node)
    for node in gemm.used - {gemm.node}:
        if any(u not in gemm.used for u in node.users):
            raise Decline(f"the view {node.name!r} of a matmul operand is also read elsewhere")
    output = next(n for n in analysis.nodes() if n.op == "output").args[0]
    if not isinstance(output, torch.fx.Node) or output not in builder.names:
        raise Decline("the reference's output is not the matmul's (epilogue) result alone")
    for node in builder.names:
        if node is not output and any(u not in builder.names for u in node.users):
            raise Decline(f"the intermediate {node.name!r} is also returned or read elsewhere")

    placeholders = [n for n in analysis.nodes() if n.op == "placeholder"]
    if any(n.meta.get("info") is None for n in placeholders):
        raise Decline("the reference's forward takes non-tensor inputs")
    if info.dtype == torch.float32:
        precision = "tf32" if analysis.allow_tf32 else "ieee"
    else:
        precision = "half"
    k = a_info[-1]
    m = math.prod(a_info[:-1]) if gemm.b.rank == 2 else a_info[-2]
    return Plan(
        [input_name(n) for n in placeholders],
        gemm,
        builder.result(output),
        precision,
        (m, b_info[-1], k),
        analysis.params,
    )
