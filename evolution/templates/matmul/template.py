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

The family is split by concept: :mod:`~evolution.templates.matmul.product` recognises the
product and its operands, :mod:`~evolution.templates.matmul.epilogue_ops` the epilogue's ops
(and writes each in Triton), :mod:`~evolution.templates.matmul.match` the whole task as a
``Plan`` (product plus epilogue graph), :mod:`~evolution.templates.matmul.source` writes the
candidate files; this module holds the tile configurations and the template.
"""

from __future__ import annotations

from evolution.templates.analysis import TaskAnalysis
from evolution.templates.base import Template, TemplateCandidate
from evolution.templates.matmul.match import match_plan
from evolution.templates.matmul.product import Decline
from evolution.templates.matmul.source import render

# Tile configurations (BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, num_warps, num_stages); the first of
# each is the default for large KernelBench shapes on an H100/H200. Strict fp32 dots run on the
# FMA units (no tensor cores), so they want a smaller BLOCK_K than the tensor-core paths.
_TILED_CONFIGS = {
    "ieee": (
        (128, 128, 32, 8, 8, 3),
        (128, 128, 16, 8, 8, 4),
        (64, 128, 32, 8, 4, 3),
        (128, 64, 32, 8, 4, 3),
        (64, 64, 32, 8, 4, 4),
        (128, 256, 16, 8, 8, 3),
        (128, 16, 64, 8, 4, 3),
        (32, 64, 32, 8, 2, 4),
    ),
    "tf32": (
        (128, 256, 32, 8, 8, 3),
        (64, 256, 32, 8, 4, 4),
        (128, 128, 32, 8, 4, 4),
        (128, 64, 32, 8, 4, 4),
        (64, 128, 32, 8, 4, 4),
        (256, 128, 32, 8, 8, 3),
        (128, 16, 64, 8, 4, 3),
        (32, 64, 32, 8, 2, 5),
    ),
    "half": (
        (128, 256, 64, 8, 8, 3),
        (64, 256, 32, 8, 4, 4),
        (128, 128, 32, 8, 4, 4),
        (128, 64, 32, 8, 4, 4),
        (64, 128, 32, 8, 4, 4),
        (128, 128, 64, 8, 8, 3),
        (128, 16, 64, 8, 4, 3),
        (32, 64, 32, 8, 2, 5),
    ),
}
# Split-K tiles are smaller: the point is to have enough programs when M*N is small.
_SPLIT_CONFIGS = {
    "ieee": (
        (64, 64, 32, 8, 4, 3),
        (32, 64, 32, 8, 4, 3),
        (64, 128, 32, 8, 4, 3),
        (128, 128, 32, 8, 8, 3),
    ),
    "tf32": (
        (64, 64, 32, 8, 4, 3),
        (32, 64, 64, 8, 4, 3),
        (64, 128, 32, 8, 4, 3),
        (128, 128, 32, 8, 8, 3),
    ),
    "half": (
        (64, 64, 64, 8, 4, 3),
        (32, 64, 64, 8, 4, 4),
        (64, 128, 64, 8, 4, 3),
        (128, 128, 64, 8, 8, 3),
    ),
}
_SPLIT_K = [16, 4, 8, 32, 64]
# Offer split-K when K dwarfs the output: K >= this factor * max(M, N).
_SPLIT_K_RATIO = 4


class MatmulTemplate(Template):
    """Matmul / linear with a fused pointwise epilogue (variants ``tiled`` and ``split_k``)."""

    name = "matmul"

    def instantiate(self, analysis: TaskAnalysis) -> list[TemplateCandidate] | str:
        """Candidates for a one-matmul reference with a pointwise tail, or why not."""
        try:
            plan = match_plan(analysis)
        except Decline as e:
            return str(e)
        m, n, k = plan.mnk
        what = " -> ".join(["matmul", *plan.epilogue.ops])
        note = f"{what}; M={m} N={n} K={k}; {plan.precision} dot"
        out = [
            TemplateCandidate(
                self.name,
                "tiled",
                render(
                    plan,
                    "tiled",
                    {"CONFIG": list(range(len(_TILED_CONFIGS[plan.precision])))},
                    _TILED_CONFIGS[plan.precision],
                ),
                note,
            )
        ]
        if k >= _SPLIT_K_RATIO * max(m, n):
            configs = _SPLIT_CONFIGS[plan.precision]
            space = {"CONFIG": list(range(len(configs))), "SPLIT_K": list(_SPLIT_K)}
            out.append(
                TemplateCandidate(
                    self.name, "split_k", render(plan, "split_k", space, configs), note
                )
            )
        return out


TEMPLATES: list[Template] = [MatmulTemplate()]
