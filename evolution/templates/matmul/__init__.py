"""The matmul family: one matmul / linear with a fused pointwise epilogue (``tiled``, ``split_k``).

- :mod:`~evolution.templates.matmul.template`: ``MatmulTemplate`` and the tile configurations
  its ``CONFIG`` parameter indexes (``tiled``; ``split_k`` when K dwarfs M and N).
- :mod:`~evolution.templates.matmul.product`: recognises the one matrix product and its operands
  (inputs or parameters, possibly transposed); ``Decline`` carries why a task is not one.
- :mod:`~evolution.templates.matmul.epilogue_ops`: the epilogue's pointwise ops, each written in
  Triton.
- :mod:`~evolution.templates.matmul.match`: the whole task as a ``Plan`` (product plus epilogue
  graph).
- :mod:`~evolution.templates.matmul.source`: writes a ``Plan`` as a candidate file.

:data:`TEMPLATES` is what :mod:`evolution.templates` gathers.
"""

from __future__ import annotations

from evolution.templates.matmul.template import TEMPLATES, MatmulTemplate

__all__ = ["TEMPLATES", "MatmulTemplate"]
