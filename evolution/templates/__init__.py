"""The template library: parametric kernels kernelmap instantiates for a task without an LLM.

- :mod:`~evolution.templates.analysis`: the reference traced with torch.fx, shapes annotated.
- :mod:`~evolution.templates.base`: ``Template`` and ``TemplateCandidate``.
- :mod:`~evolution.templates.matmul`: ``matmul``, one matmul / linear with a fused pointwise
  epilogue (``tiled``, ``split_k``); its parts: ``matmul_product`` (the product and its
  operands), ``matmul_epilogue_ops`` (the epilogue's ops, written in Triton), ``matmul_match``
  (the task as a plan: product plus epilogue graph), ``matmul_source`` (the candidate files).
- :mod:`~evolution.templates.pointwise`: ``pointwise``, any graph of elementwise ops fused into
  one kernel (``flat``, ``broadcast``); its parts: ``pointwise_match`` (what each node computes,
  lowered into a chain) and ``pointwise_ops`` (how each op is written in Triton).
- :mod:`~evolution.templates.norms`: ``lp_norm``, ``x / ||x||`` for L1, L2 and Frobenius norms.
- :mod:`~evolution.templates.cross_entropy`: ``cross_entropy`` on (N, C) logits, int64 targets.
- :mod:`~evolution.templates.losses`: ``pointwise_loss``, the mean/sum of a pointwise loss
  (MSE, L1, smooth L1, Huber, KL-div, hinge).
- :mod:`~evolution.templates.loss_match`: the graph reading those three templates share.
- :mod:`~evolution.templates.compile`: torch.compile of the reference (library candidates).

:func:`instantiate_all` asks every template; what none covers is reported, never an error.
"""

from __future__ import annotations

import importlib

from evolution.templates.analysis import TaskAnalysis, analyse
from evolution.templates.base import Template, TemplateCandidate

# Modules exporting TEMPLATES; compile is a GPU-only family (inductor's CPU build is too slow).
KERNEL_MODULES: list[str] = [
    "evolution.templates.rows",
    "evolution.templates.matmul",
    "evolution.templates.pointwise",
    "evolution.templates.norms",
    "evolution.templates.cross_entropy",
    "evolution.templates.losses",
    "evolution.templates.compile",
]
GPU_ONLY = {"evolution.templates.compile"}


def templates(device: str) -> list[Template]:
    """Every template that applies on ``device`` (``cuda`` or ``cpu``)."""
    out: list[Template] = []
    for name in KERNEL_MODULES:
        if device != "cuda" and name in GPU_ONLY:
            continue
        out.extend(importlib.import_module(name).TEMPLATES)
    return out


def instantiate_all(
    analysis: TaskAnalysis, device: str
) -> tuple[list[TemplateCandidate], list[str]]:
    """All candidates the templates offer for a task, and why the others declined."""
    found: list[TemplateCandidate] = []
    declined: list[str] = [analysis.reason] if analysis.graph is None else []
    for t in templates(device):
        if analysis.graph is None and t.needs_graph:
            continue
        got = t.instantiate(analysis)
        if isinstance(got, str):
            declined.append(f"{t.name}: {got}")
        else:
            found.extend(got)
    return found, declined


__all__ = [
    "Template",
    "TemplateCandidate",
    "TaskAnalysis",
    "analyse",
    "instantiate_all",
    "templates",
]
