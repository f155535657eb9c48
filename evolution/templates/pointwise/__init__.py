"""The pointwise family: any graph of elementwise ops fused into one kernel (``flat``,
``broadcast``).

- :mod:`~evolution.templates.pointwise.template`: ``PointwiseTemplate``, the variants' search
  spaces (``SPACES``) and the candidate files.
- :mod:`~evolution.templates.pointwise.match`: what each node of the reference computes, lowered
  into a ``Chain`` (or ``Decline`` with the reason).
- :mod:`~evolution.templates.pointwise.ops`: how each op is written in Triton.

:data:`TEMPLATES` is what :mod:`evolution.templates` gathers.
"""

from __future__ import annotations

from evolution.templates.pointwise.template import SPACES, TEMPLATES

__all__ = ["SPACES", "TEMPLATES"]
