"""The rows family: row-wise normalisations and reductions, gathered in one list.

The family is split by op, one module each, over a shared matcher:

- :mod:`~evolution.templates.rows.match`: recognises the one row op a reference computes
  (``RowOp``) or says why it is not one, and writes the frame of a candidate file.
- :mod:`~evolution.templates.rows.softmax`: softmax / log-softmax over the last dim
  (``single_pass``, ``online``, ``split``).
- :mod:`~evolution.templates.rows.norm`: LayerNorm (``single_pass``, ``welford``, ``split``) and
  RMSNorm (``row``, ``row_looped``, ``row_split``; ``strided``, ``strided_looped`` over a middle
  dim, KernelBench's hand-written RMSNorm).
- :mod:`~evolution.templates.rows.reduce`: sum / mean / max / min / argmax / argmin over one dim
  (``row`` for the last dim, ``strided`` for a middle one).

:data:`TEMPLATES` is what :mod:`evolution.templates` gathers.
"""

from __future__ import annotations

from evolution.templates.base import Template
from evolution.templates.rows import norm, reduce, softmax

TEMPLATES: list[Template] = [*softmax.TEMPLATES, *norm.TEMPLATES, *reduce.TEMPLATES]

__all__ = ["TEMPLATES"]
