"""Whole-forward reductions read by one shared matcher: norms and losses.

Each template here recognises a reference whose whole forward is the computation, read with
the same op reader (every spelling of an op as one ``Op``), and reduces in fp32 lanes with
``tl.sum`` trees (deterministic, no atomics):

- :mod:`~evolution.templates.losses.lp_norm`: ``lp_norm``, ``x / ||x||`` for the L1, L2 and
  Frobenius norms (``row``, ``single_pass``, ``split``, ``strided``).
- :mod:`~evolution.templates.losses.cross_entropy`: ``cross_entropy`` on (N, C) logits with int
  targets (``row``, ``single_pass``).
- :mod:`~evolution.templates.losses.pointwise_loss`: ``pointwise_loss``, the mean or sum of a
  pointwise loss (MSE, L1, smooth L1, Huber, KL-div, hinge; ``split``).
- :mod:`~evolution.templates.losses.match`: the graph reading the three share (``read_op``,
  ``Decline``) and the frame of their candidate files (``render``, ``indent``).

``lp_norm`` is a normalisation, not a loss, but it lives here because it is read by this
family's matcher; the row normalisations (LayerNorm, RMSNorm) are :mod:`evolution.templates.rows`.
:data:`TEMPLATES` (in the order ``lp_norm``, ``cross_entropy``, ``pointwise_loss``) is what
:mod:`evolution.templates` gathers.
"""

from __future__ import annotations

from evolution.templates.base import Template
from evolution.templates.losses import cross_entropy, lp_norm, pointwise_loss

TEMPLATES: list[Template] = [
    *lp_norm.TEMPLATES,
    *cross_entropy.TEMPLATES,
    *pointwise_loss.TEMPLATES,
]

__all__ = ["TEMPLATES"]
