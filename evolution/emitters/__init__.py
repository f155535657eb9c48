"""Emitters: where candidates come from.

- :class:`Emitter` (``base``): the extension point (``ask``, ``tell``, ``exhausted``).
- :class:`SeedEmitter` (``seed``): the user's starting candidates, each once.
- :class:`ParamEmitter` (``params``): searches one family's ``SEARCH_SPACE`` from its elites.
- :class:`GenomeEmitter` (``genome``): the ribs custom emitter behind ``ParamEmitter``
  (Gaussian or iso-line variation of float genomes in a shadow archive).
"""

from evolution.emitters.base import Emitter
from evolution.emitters.cma import CMAParamEmitter as CMAParamEmitter
from evolution.emitters.genome import GenomeEmitter, shadow_archive
from evolution.emitters.params import ParamEmitter
from evolution.emitters.seed import SeedEmitter

__all__ = ["Emitter", "GenomeEmitter", "ParamEmitter", "SeedEmitter", "shadow_archive"]
