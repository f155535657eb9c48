"""The template library: parametric kernels kernelmap instantiates for a task without an LLM.

Shared modules:

- :mod:`~evolution.templates.analysis`: the reference traced with torch.fx, shapes annotated.
- :mod:`~evolution.templates.base`: ``Template`` and ``TemplateCandidate``.
- :mod:`~evolution.templates.compile`: torch.compile of the reference (library candidates).
- :mod:`~evolution.templates.probe`: ``python -m evolution.templates.probe``, the matching run
  in a sandboxed child process.

Template families, one subpackage each (its ``__init__`` is the map of its modules and exports
its ``TEMPLATES``):

- :mod:`~evolution.templates.rows`: softmax / log-softmax, LayerNorm, RMSNorm and one-dim
  reductions (sum, mean, max, min, argmax, argmin) over rows.
- :mod:`~evolution.templates.matmul`: ``matmul``, one matmul / linear with a fused pointwise
  epilogue (``tiled``, ``split_k``).
- :mod:`~evolution.templates.pointwise`: ``pointwise``, any graph of elementwise ops fused into
  one kernel (``flat``, ``broadcast``).
- :mod:`~evolution.templates.losses`: whole-forward reductions read by one matcher:
  ``lp_norm`` (``x / ||x||``), ``cross_entropy`` and ``pointwise_loss`` (MSE, L1, Huber...).

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
