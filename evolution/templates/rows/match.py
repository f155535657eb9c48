"""Recognising one row-wise normalisation or reduction in a traced reference, for the row templates.

The row templates (``rows.softmax``, ``rows.norm``, ``rows.reduce``) cover references whose whole
forward is one op of this family applied to one input: softmax, log-softmax, LayerNorm, RMSNorm,
or a sum/mean/max/min/argmax/argmin over one dim. :func:`match_row_op` reads the fx graph in the
common spellings of each (modules, ``torch.*``, ``F.*``, tensor methods, keyword or positional
arguments, negative dims, KernelBench's hand-written RMSNorm) and returns a :class:`RowOp`, or a
sentence saying why the reference is not such an op. :func:`render_candidate` writes the frame
every row candidate file shares (imports, ``SEARCH_SPACE``, ``ModelNew``).
"""

from __future__ import annotations

import dataclasses
import math
import textwrap
from typing import Any

import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F

from evolution.templates.analysis import TaskAnalysis, parameter_skeleton

# Kinds, by family (the templates filter on these).
SOFTMAX_KINDS = ("softmax", "log_softmax")
NORM_KINDS = ("layer_norm", "rms_norm")
REDUCE_KINDS = ("sum", "mean", "max", "min", "argmax", "argmin")

_FUNCTIONS: dict[Any, str] = {
    torch.softmax: "softmax",
    F.softmax: "softmax",
    torch.log_softmax: "log_softmax",
    F.log_softmax: "log_softmax",
    F.layer_norm: "layer_norm",
    F.rms_norm: "rms_norm",
    torch.sum: "sum",
    torch.mean: "mean",
    torch.amax: "amax",
    torch.amin: "amin",
    torch.max: "max_with_indices",
    torch.min: "min_with_indices",
    torch.argmax: "argmax",
    torch.argmin: "argmin",
}
_METHODS = {
    "softmax": "softmax",
    "log_softmax": "log_softmax",
    "sum": "sum",
    "mean": "mean",
    "amax": "amax",
    "amin": "amin",
    "max": "max_with_indices",
    "min": "min_with_indices",
    "argmax": "argmax",
    "argmin": "argmin",
}
_MODULES: list[tuple[type, str]] = [
    (nn.Softmax, "softmax"),
    (nn.LogSoftmax, "log_softmax"),
    (nn.LayerNorm, "layer_norm"),
    (nn.RMSNorm, "rms_norm"),
]
_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@dataclasses.dataclass(frozen=True)
class RowOp:
    """One recognised row op: what it computes and where its operands live in ``ModelNew``.

    Attributes
    ----------
    kind:
        One of ``SOFTMAX_KINDS``, ``NORM_KINDS`` or ``REDUCE_KINDS`` (``amax`` is ``max``).
    shape, dtype:
        The example input's shape and dtype.
    dim, ndims:
        The reduced dims are ``dim .. dim + ndims - 1`` (non-negative); ``ndims > 1`` only for a
        LayerNorm/RMSNorm ``normalized_shape`` covering the last ``ndims`` dims.
    keepdim:
        Reductions: whether the reduced dim stays (as size 1).
    eps:
        Norms: the epsilon; None means ``torch.finfo(x.dtype).eps`` (``nn.RMSNorm``'s default).
    weight, bias:
        Norms: the ``ModelNew`` expressions of the affine parameters (``"self.ln.weight"``) or None.
    args, x:
        ``forward``'s parameter names, and the one the op reads.
    """

    kind: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    dim: int
    ndims: int = 1
    keepdim: bool = False
    eps: float | None = None
    weight: str | None = None
    bias: str | None = None
    args: tuple[str, ...] = ("x",)
    x: str = "x"

    @property
    def last(self) -> bool:
        """Whether the reduced dims are the trailing ones (rows are contiguous)."""
        return self.dim + self.ndims == len(self.shape)

    @property
    def n(self) -> int:
        """Length of one row (the reduced extent) in the example."""
        return math.prod(self.shape[self.dim : self.dim + self.ndims])

    @property
    def outer(self) -> int:
        """Product of the dims before the reduced ones."""
        return math.prod(self.shape[: self.dim])

    @property
    def inner(self) -> int:
        """Product of the dims after the reduced ones (1 when they are trailing)."""
        return math.prod(self.shape[self.dim + self.ndims :])

    def describe(self) -> str:
        """A short phrase for comments and notes: ``softmax over dim 1 of (5, 37) float32``."""
        last = self.dim + self.ndims - 1
        dims = f"dims {self.dim}..{last}" if self.ndims > 1 else f"dim {self.dim}"
        dtype = str(self.dtype).replace("torch.", "")
        return f"{self.kind} over {dims} of {tuple(self.shape)} {dtype}"


def _arg(node: torch.fx.Node, pos: int, name: str, default: Any = None) -> Any:
    """Argument ``name`` of a call, given positionally at ``pos`` or by keyword."""
    if len(node.args) > pos:
        return node.args[pos]
    return node.kwargs.get(name, default)


def _kind(analysis: TaskAnalysis, node: torch.fx.Node) -> str | None:
    if node.op == "call_function":
        return _FUNCTIONS.get(node.target)
    if node.op == "call_method":
        return _METHODS.get(str(node.target))
    if node.op == "call_module":
        module = analysis.module_of(node)
        return next((k for cls, k in _MODULES if type(module) is cls), None)
    return None


def _op_name(node: torch.fx.Node) -> str:
    target = node.target
    return target if isinstance(target, str) else getattr(target, "__name__", str(target))


def _attr_expr(analysis: TaskAnalysis, key: str) -> str | None:
    """``self.<key>`` for a state_dict key that is a valid attribute path, else None."""
    if key not in analysis.params or not all(p.isidentifier() for p in key.split(".")):
        return None
    return f"self.{key}"


def _single_dim(dim: Any, rank: int) -> int | str:
    """A non-negative dim from an int or a one-element list/tuple, else why not."""
    if isinstance(dim, (list, tuple)):
        if len(dim) != 1:
            return f"it reduces over several dims {tuple(dim)}; the row templates reduce over one"
        dim = dim[0]
    if dim is None:
        return "it reduces over all dims (no dim given); the row templates reduce over one dim"
    if not isinstance(dim, int) or not -rank <= dim < rank:
        return f"its dim {dim!r} is not a constant dim of a rank-{rank} input"
    return dim % rank


def _trailing(shape_arg: Any, shape: tuple[int, ...]) -> int | str:
    """How many trailing dims a ``normalized_shape`` covers, or why it does not fit ``shape``."""
    dims = (shape_arg,) if isinstance(shape_arg, int) else shape_arg
    if not isinstance(dims, (list, tuple)) or not all(isinstance(d, int) for d in dims):
        return f"its normalized_shape {shape_arg!r} is not a constant"
    dims = tuple(dims)
    if not dims or tuple(shape[len(shape) - len(dims) :]) != dims:
        return f"its normalized_shape {dims} is not the trailing dims of the input {shape}"
    return len(dims)


def _eps_of(value: Any) -> float | None | str:
    if value is None or isinstance(value, (int, float)) and not isinstance(value, bool):
        return None if value is None else float(value)
    return f"its eps {value!r} is not a constant"


def _match_norm(
    analysis: TaskAnalysis, node: torch.fx.Node, kind: str, shape: tuple[int, ...]
) -> dict[str, Any] | str:
    """Fields of a LayerNorm/RMSNorm call (module or functional), or why it is not covered."""
    names = ("weight", "bias") if kind == "layer_norm" else ("weight",)
    exprs: dict[str, str | None] = dict.fromkeys(names)
    if node.op == "call_module":
        module = analysis.module_of(node)
        ndims = _trailing(module.normalized_shape, shape)
        for name in names:
            if getattr(module, name, None) is not None:
                exprs[name] = _attr_expr(analysis, f"{node.target}.{name}")
                if exprs[name] is None:
                    return f"its module path {node.target!r} is not a plain attribute path"
        eps = module.eps
    else:
        ndims = _trailing(_arg(node, 1, "normalized_shape"), shape)
        for pos, name in enumerate(names, start=2):
            value = _arg(node, pos, name)
            if isinstance(value, torch.fx.Node) and value.op == "get_attr":
                exprs[name] = _attr_expr(analysis, str(value.target))
            if value is not None and exprs[name] is None:
                return f"its {name} is not a parameter of the model"
        default = 1e-5 if kind == "layer_norm" else None
        eps = _arg(node, len(names) + 2, "eps", default)
    if isinstance(ndims, str):
        return ndims
    eps = _eps_of(eps)
    if isinstance(eps, str):
        return eps
    return dict(
        dim=len(shape) - ndims, ndims=ndims, eps=eps, weight=exprs["weight"], bias=exprs.get("bias")
    )


def _is_call(node: Any, *names: str) -> bool:
    """Whether ``node`` calls one of ``names`` (torch function, tensor method or operator)."""
    if not isinstance(node, torch.fx.Node) or node.op not in ("call_function", "call_method"):
        return False
    return _op_name(node) in names


def _match_rms_pattern(res: torch.fx.Node):
    """KernelBench's RMSNorm: ``x / sqrt(mean(x ** 2, dim, keepdim=True) + eps)``.

    Also ``x * rsqrt(...)``, with ``x * x``, ``x.pow(2)`` or ``torch.square(x)`` for the square.
    Returns ``(x, dim, eps, nodes)`` or None.
    """
    if _is_call(res, "truediv", "div") and _is_call(res.args[1], "sqrt"):
        x, root = res.args
    elif _is_call(res, "mul") and _is_call(res.args[1], "rsqrt"):
        x, root = res.args
    else:
        return None
    add = root.args[0]
    if not _is_call(add, "add") or len(add.args) != 2 or add.kwargs:
        return None
    mean, eps = add.args if isinstance(add.args[0], torch.fx.Node) else add.args[::-1]
    if (
        not _is_call(mean, "mean")
        or not isinstance(eps, (int, float))
        or not _arg(mean, 2, "keepdim", False)
        or mean.kwargs.get("dtype") is not None
    ):
        return None
    sq = mean.args[0]
    squares = (_is_call(sq, "pow") and sq.args[1] == 2) or (_is_call(sq, "mul") and sq.args[1] is x)
    if not (squares or _is_call(sq, "square")) or sq.args[0] is not x:
        return None
    return x, _arg(mean, 1, "dim"), float(eps), {res, root, add, mean, sq}


def match_row_op(analysis: TaskAnalysis) -> RowOp | str:
    """The single row op the reference computes, or one sentence saying why it is not one."""
    if analysis.graph is None:
        return analysis.reason or "the reference could not be traced"
    nodes = analysis.nodes()
    args = tuple(str(n.target) for n in nodes if n.op == "placeholder")
    res = next(n for n in nodes if n.op == "output").args[0]
    if not isinstance(res, torch.fx.Node):
        return "the reference returns a tuple or a constant, not one tensor"
    used = {res}
    fields: dict[str, Any] = {}
    rms = _match_rms_pattern(res)
    if rms is not None:
        x, dim, eps, used = rms
        kind, fields = "rms_norm", {"eps": eps}
    else:
        node = res
        kind = _kind(analysis, res)
        if kind is None and _is_call(res, "getitem", "getattr") and res.args[1] in (0, "values"):
            node = res.args[0]
            kind = {"max_with_indices": "max", "min_with_indices": "min"}.get(
                str(_kind(analysis, node))
            )
            used.add(node)
        if kind is None:
            inside = [n for n in analysis.compute_nodes() if _kind(analysis, n) is not None]
            if inside:
                return (
                    f"the reference applies {_op_name(res)!r} to the result of"
                    f" {_op_name(inside[0])!r}: ops around a row op belong to a fused epilogue,"
                    " which the row templates do not cover"
                )
            return f"the reference's result comes from {_op_name(res)!r}, not a row op"
        if kind.endswith("_with_indices"):
            if isinstance(_arg(node, 1, "other"), torch.fx.Node):
                return f"torch.{kind[:3]} of two tensors is elementwise, not a row op"
            return f"torch.{kind[:3]} returns (values, indices); only its values are covered"
        x = node.args[0] if node.args else None
        dim = None
    if not isinstance(x, torch.fx.Node) or x.op != "placeholder":
        return f"the {kind} reads a computed tensor, not a forward input: extra ops around it"
    info = x.meta.get("info")
    if info is None:
        return "the input's shape is unknown"
    shape, rank = info.shape, len(info.shape)
    if info.dtype not in _FLOAT_DTYPES:
        return f"its input is {info.dtype}: the row templates cover float32, float16 and bfloat16"
    if rms is not None:
        pass
    elif kind in NORM_KINDS:
        norm = _match_norm(analysis, node, kind, shape)
        if isinstance(norm, str):
            return norm
        fields = norm
    elif node.op == "call_module":
        dim = analysis.module_of(node).dim
    else:
        cast = node.kwargs.get("dtype")
        if kind in SOFTMAX_KINDS:
            cast = _arg(node, 3 if node.target in (F.softmax, F.log_softmax) else 2, "dtype")
        if cast is not None:
            return f"its {kind} casts to {cast}; the row templates keep the input dtype"
        dim = _arg(node, 1, "dim")
        if kind in ("max", "min") and (dim is None or isinstance(dim, torch.fx.Node)):
            return f"its {kind} is not over one dim (whole-tensor or elementwise)"
        if kind not in SOFTMAX_KINDS:
            fields["keepdim"] = bool(_arg(node, 2, "keepdim", False))
        kind = {"amax": "max", "amin": "min"}.get(kind, kind)
    if "dim" not in fields:
        if kind in SOFTMAX_KINDS and dim is None:
            return f"its {kind} has no explicit dim (the legacy implicit dim is not covered)"
        d = _single_dim(dim, rank)
        if isinstance(d, str):
            return d
        fields["dim"] = d
    extra = [n for n in analysis.compute_nodes() if n not in used]
    if extra:
        names = ", ".join(_op_name(n) for n in extra[:4])
        return (
            f"the reference computes more than the {kind} (also {names}): ops around a row op"
            " belong to a fused epilogue, which the row templates do not cover"
        )
    return RowOp(
        kind=kind, shape=tuple(shape), dtype=info.dtype, args=args, x=str(x.target), **fields
    )


def options(first: int, lo: int, hi: int, count: int) -> list[int]:
    """Up to ``count`` powers of two near ``first`` within ``[lo, hi]``, ``first`` (clamped) first.

    The order is ``first, first/2, first*2, first/4, first*4, ...``: the default, then its
    neighbours, so a short list still brackets the default on both sides.
    """
    first = min(max(first, lo), hi)
    out = [first]
    for k in range(1, 12):
        for v in (first >> k, first << k):
            if lo <= v <= hi and v not in out and len(out) < count:
                out.append(v)
    return out


def pow2(n: int) -> int:
    """The smallest power of two >= n (``triton.next_power_of_2`` without importing triton)."""
    return 1 << max(0, int(n) - 1).bit_length()


def warps_for(elements: int) -> int:
    """A default ``num_warps`` for a program holding ``elements`` values: about 16 per thread.

    More per thread spills registers once a norm's weight and bias tiles join the row (checked
    with ptxas for sm_90); fewer leaves too little work per thread to hide memory latency.
    """
    return min(32, max(1, pow2(elements) // 512))


# Fewer rows than this leave SMs idle with one program per row (132 SMs x 4 on an H200).
FEW_ROWS = 528


def split_space(n: int, rows: int) -> dict[str, list[int]] | None:
    """``SEARCH_SPACE`` of a two-phase split over rows of length ``n``, or None if it is no use.

    A split pays off when one program per row leaves the GPU idle (few rows) or a row is long
    enough that its chunks still stream well. The default ``SPLIT`` aims at about 2 x
    ``FEW_ROWS`` programs in all; ``BLOCK`` is small enough that a row has several chunks.
    """
    if rows >= FEW_ROWS and n < 65536:
        return None
    block = max(16, min(2048, pow2(n) // 4))
    most = pow2(-(-n // block))
    if most < 2:
        return None
    split = min(most, pow2(-(-2 * FEW_ROWS // max(rows, 1))))
    return {
        "SPLIT": options(split, 1, most, 3),
        "BLOCK": options(block, 16, 4096, 2),
        "num_warps": options(warps_for(block), 1, 32, 2),
    }


def render_candidate(
    template: str,
    variant: str,
    op: RowOp,
    analysis: TaskAnalysis,
    search_space: dict[str, list],
    kernels: str,
    forward: str,
) -> str:
    """A complete candidate file: header comment, imports, ``SEARCH_SPACE``, kernels, ``ModelNew``.

    ``kernels`` is module-level code (dedented); ``forward`` is the body of ``forward`` (dedented,
    reading the input by its reference name and the schedule as bare globals).
    """
    space = ", ".join(f'"{k}": {list(v)!r}' for k, v in search_space.items())
    forward = textwrap.dedent(forward).strip("\n")
    if op.x != "x":  # the templates read the input as ``x``
        forward = f"x = {op.x}\n{forward}"
    body = textwrap.indent(forward, " " * 8)
    return (
        f"# kernelmap template {template}/{variant}: {op.describe()}.\n"
        "# The evaluator injects one value of each SEARCH_SPACE list as a module global.\n"
        "import torch\n"
        "import torch.nn as nn\n"
        "import triton\n"
        "import triton.language as tl\n\n"
        f"SEARCH_SPACE = {{{space}}}\n\n\n"
        f"{textwrap.dedent(kernels).strip()}\n\n\n"
        "class ModelNew(nn.Module):\n"
        "    def __init__(self, *args, **kwargs):\n"
        "        super().__init__()\n"
        f"{parameter_skeleton(analysis.params)}\n\n"
        f"    def forward(self, {', '.join(op.args)}):\n"
        f"{body}\n"
    )
