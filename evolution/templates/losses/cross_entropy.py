"""The ``cross_entropy`` template: the mean over rows of ``logsumexp(x) - x[target]``.

Recognises ``F.cross_entropy`` / ``nn.CrossEntropyLoss`` / ``nll_loss(log_softmax)`` on (N, C)
logits and int class targets: per-row logsumexp minus the target logit, then a deterministic
second kernel for the mean. Variants ``row`` (online logsumexp over column blocks) and
``single_pass`` (rows that fit one block, several rows per program).

Every reduction accumulates in fp32 lanes and finishes with ``tl.sum`` trees, so long sums stay
accurate and results are deterministic (no atomics).
"""

from __future__ import annotations

import dataclasses

import torch
import torch.fx

from evolution.templates.analysis import TaskAnalysis, parameter_skeleton
from evolution.templates.base import Template, TemplateCandidate
from evolution.templates.losses.match import (
    SINGLE_PASS_MAX,
    Decline,
    forward_args,
    forward_input,
    indent,
    only_nodes,
    output_node,
    read_op,
    render,
    space_json,
)


@dataclasses.dataclass(frozen=True)
class _CrossEntropy:
    """A recognised cross-entropy on (N, C) logits with int64 class targets."""

    logits: str
    target: str
    args: tuple[str, ...]
    shape: tuple[int, ...]
    dtype: torch.dtype
    ignore_index: int
    reduction: str

    def describe(self) -> str:
        return (
            f"cross-entropy ({self.reduction}, ignore_index {self.ignore_index}) of "
            f"{self.shape} {str(self.dtype)[6:]} logits"
        )


def _match_cross_entropy(analysis: TaskAnalysis) -> _CrossEntropy:
    out = output_node(analysis)
    op = read_op(analysis, out)
    if op is None or op.name not in ("cross_entropy", "nll_loss"):
        raise Decline("the reference is not a cross-entropy")
    used = {out}
    x, target = op.arg(0, "input"), op.arg(1, "target")
    if len(op.args) > 2:
        raise Decline("options passed positionally to the loss are not read; use keywords")
    if op.kwargs.get("weight") is not None:
        raise Decline("class weights are not supported")
    if op.kwargs.get("size_average") is not None or op.kwargs.get("reduce") is not None:
        raise Decline("the legacy size_average/reduce arguments are not supported")
    if op.kwargs.get("label_smoothing", 0.0) != 0.0:
        raise Decline("label smoothing is not supported")
    reduction, ignore = op.kwargs.get("reduction", "mean"), op.kwargs.get("ignore_index", -100)
    if reduction not in ("mean", "sum", "none") or not isinstance(ignore, int):
        raise Decline(f"reduction {reduction!r} / ignore_index {ignore!r} is not supported")
    if op.name == "nll_loss":
        inner = read_op(analysis, x)
        rank = len(x.meta["info"].shape) if isinstance(x, torch.fx.Node) else 0
        dim = inner.arg(1, "dim") if inner is not None else None
        if (
            inner is None
            or inner.name != "log_softmax"
            or not isinstance(dim, int)
            or dim % max(rank, 1) != 1
            or inner.kwargs.get("dtype") is not None
        ):
            raise Decline("nll_loss is not applied to a log_softmax over the class dim")
        used.add(x)
        x = inner.args[0]
    x = forward_input(x, "logits tensor")
    if not isinstance(target, torch.fx.Node) or target.op != "placeholder":
        raise Decline("the targets are computed, not a forward input")
    shape, tinfo = x.meta["info"].shape, target.meta.get("info")
    if len(shape) != 2:
        raise Decline(f"logits of rank {len(shape)} are not covered (only (N, C) logits)")
    if tinfo is None or tinfo.dtype != torch.int64 or tinfo.shape != shape[:1]:
        raise Decline("the targets are not (N,) int64 class indices (probabilities: declined)")
    only_nodes(analysis, used)
    args = forward_args(analysis)
    return _CrossEntropy(
        x.target, target.target, args, shape, x.meta["info"].dtype, ignore, reduction
    )


_CE_FRAME = """
# kernelmap template cross_entropy/$variant:
# $what.
import torch
import torch.nn as nn
import triton
import triton.language as tl

# The evaluator injects one value of each as a module global ($names).
SEARCH_SPACE = $space


$kernel

@triton.jit
def ce_reduce_kernel(out_ptr, loss_ptr, t_ptr, n_rows, FBLOCK: tl.constexpr):
    # One program sums the per-row losses in a fixed order (deterministic, no atomics) and
    # counts the rows whose target is not ignored (the mean's denominator).
    offs = tl.arange(0, FBLOCK)
    acc = tl.zeros([FBLOCK], tl.float32)
    cnt = tl.zeros([FBLOCK], tl.float32)
    for start in range(0, n_rows, FBLOCK):
        mask = start + offs < n_rows
        acc += tl.load(loss_ptr + start + offs, mask=mask, other=0.0)
        target = tl.load(t_ptr + start + offs, mask=mask, other=$ignore)
        cnt += tl.where(target != $ignore, 1.0, 0.0)
    tl.store(out_ptr, $result)


class ModelNew(nn.Module):
    def __init__(self, *args, **kwargs):
        super().__init__()
$params

    def forward(self, $args):
        x, t = $logits.contiguous(), $target.contiguous()
        n_rows, n_cols = x.shape
        losses = torch.empty(n_rows, dtype=$loss_dtype, device=x.device)
$launch
$finish
"""

_CE_ROW = """
@triton.jit
def ce_row_kernel(loss_ptr, x_ptr, t_ptr, n_cols, BLOCK: tl.constexpr):
    # One program per row: online max/sum of exp over column blocks (rescaled when the max
    # grows), then loss = logsumexp - x[target].
    row = tl.program_id(0).to(tl.int64)
    base = x_ptr + row * n_cols
    cols = tl.arange(0, BLOCK)
    m = tl.full([BLOCK], -float("inf"), tl.float32)
    s = tl.zeros([BLOCK], tl.float32)
    for start in range(0, n_cols, BLOCK):
        mask = start + cols < n_cols
        x = tl.load(base + start + cols, mask=mask, other=-float("inf")).to(tl.float32)
        m_new = tl.maximum(m, x)
        # Lanes that have only seen -inf keep a zero sum (avoid exp(-inf - -inf) = nan).
        scale = tl.where(m_new == -float("inf"), 0.0, tl.exp(m - m_new))
        s = s * scale + tl.where(mask, tl.exp(x - m_new), 0.0)
        m = m_new
    row_max = tl.max(m, axis=0)
    total = tl.sum(tl.where(m == -float("inf"), 0.0, s * tl.exp(m - row_max)), axis=0)
    target = tl.load(t_ptr + row)
    valid = target != $ignore
    # The mask keeps an out-of-range target from reading outside the row.
    picked = tl.load(base + target, mask=valid & (target >= 0) & (target < n_cols), other=0.0)
    loss = tl.where(valid, row_max + tl.log(total) - picked.to(tl.float32), 0.0)
    tl.store(loss_ptr + row, loss)
"""

_CE_SINGLE = """
@triton.jit
def ce_single_pass_kernel(loss_ptr, x_ptr, t_ptr, n_rows, n_cols, ROWS: tl.constexpr,
                          BLOCK: tl.constexpr):
    # ROWS whole rows per program, held in registers: the logits are read once.
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    rmask = rows < n_rows
    cols = tl.arange(0, BLOCK)
    mask = rmask[:, None] & (cols < n_cols)[None, :]
    offs = rows.to(tl.int64)[:, None] * n_cols + cols[None, :]
    x = tl.load(x_ptr + offs, mask=mask, other=-float("inf")).to(tl.float32)
    row_max = tl.max(x, axis=1)
    e = tl.where(mask, tl.exp(x - row_max[:, None]), 0.0)
    lse = row_max + tl.log(tl.sum(e, axis=1))
    target = tl.load(t_ptr + rows, mask=rmask, other=$ignore)
    picked = tl.sum(tl.where(cols[None, :] == target[:, None], x, 0.0), axis=1)
    loss = tl.where(rmask & (target != $ignore), lse - picked, 0.0)
    tl.store(loss_ptr + rows, loss, mask=rmask)
"""

_CE_VARIANTS: dict[str, tuple[dict[str, list[int]], str, str]] = {
    "row": (
        {"BLOCK": [2048, 1024, 4096, 512], "num_warps": [8, 4]},
        _CE_ROW,
        """
        ce_row_kernel[(n_rows,)](losses, x, t, n_cols, BLOCK=BLOCK, num_warps=num_warps)
    """,
    ),
    "single_pass": (
        {"ROWS": [1, 2, 4], "num_warps": [8, 4, 16]},
        _CE_SINGLE,
        """
        ce_single_pass_kernel[(triton.cdiv(n_rows, ROWS),)](
            losses, x, t, n_rows, n_cols, ROWS=ROWS, BLOCK=triton.next_power_of_2(n_cols),
            num_warps=num_warps,
        )
    """,
    ),
}


def _ce_source(analysis: TaskAnalysis, spec: _CrossEntropy, variant: str) -> str:
    space, kernel, launch = _CE_VARIANTS[variant]
    ignore = str(spec.ignore_index)
    if spec.reduction == "none":
        finish, loss_dtype = "        return losses", str(spec.dtype)
    else:
        finish, loss_dtype = (
            indent(
                """
            out = torch.empty((), dtype=$dtype, device=x.device)
            fblock = min(4096, max(128, triton.next_power_of_2(n_rows)))
            ce_reduce_kernel[(1,)](out, losses, t, n_rows, FBLOCK=fblock, num_warps=8)
            return out
        """,
                8,
            ).replace("$dtype", str(spec.dtype)),
            "torch.float32",
        )
    result = (
        "tl.sum(acc, axis=0) / tl.sum(cnt, axis=0)"
        if spec.reduction == "mean"
        else "tl.sum(acc, axis=0)"
    )
    return render(
        _CE_FRAME,
        variant=variant,
        what=spec.describe(),
        names=", ".join(space),
        space=space_json(space),
        kernel=render(kernel, ignore=ignore).rstrip() + "\n",
        ignore=ignore,
        result=result,
        params=parameter_skeleton(analysis.params),
        args=", ".join(spec.args),
        logits=spec.logits,
        target=spec.target,
        loss_dtype=loss_dtype,
        launch=indent(launch, 8),
        finish=finish,
    )


class CrossEntropy(Template):
    """Cross-entropy on (N, C) logits and int64 targets (see the module docstring)."""

    name = "cross_entropy"

    def instantiate(self, analysis: TaskAnalysis) -> list[TemplateCandidate] | str:
        try:
            spec = _match_cross_entropy(analysis)
        except Decline as e:
            return str(e)
        variants = ["row"] + (["single_pass"] if spec.shape[1] <= SINGLE_PASS_MAX else [])
        return [
            TemplateCandidate(self.name, v, _ce_source(analysis, spec, v), spec.describe())
            for v in variants
        ]


TEMPLATES: list[Template] = [CrossEntropy()]
