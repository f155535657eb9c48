"""Row-wise normalisations and reductions: the row template family, gathered in one list.

The family is split by op, one module each, over a shared matcher:

- :mod:`~evolution.templates.rows_match`: recognises the one row op a reference computes
  (``RowOp``) or says why it is not one, and writes the frame of a candidate file.
- :mod:`~evolution.templates.rows_softmax`: softmax / log-softmax over the last dim
  (``single_pass``, ``online``, ``split``).
- :mod:`~evolution.templates.rows_norm`: LayerNorm (``single_pass``, ``welford``, ``split``) and
  RMSNorm (``row``, ``row_looped``, ``row_split``; ``strided``, ``strided_looped`` over a middle
  dim, KernelBench's hand-written RMSNorm).
- :mod:`~evolution.templates.rows_reduce`: sum / mean / max / min / argmax / argmin over one dim
  (``row`` for the last dim, ``strided`` for a middle one).
"""

from __future__ import annotations

from evolution.templates import rows_norm, rows_reduce, rows_softmax
from evolution.templates.base import Template

TEMPLATES: list[Template] = [*rows_softmax.TEMPLATES, *rows_norm.TEMPLATES, *rows_reduce.TEMPLATES]
