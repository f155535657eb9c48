"""Emitters: where candidates come from.

A new kind of emitter is one new module with one subclass of :class:`Emitter`; a new
variation operator is one more name in ``variations`` and its code in the emitter that runs it.

Modules
-------
``base``
    :class:`Emitter`, the extension point (``ask``, ``tell``, ``exhausted``, ``owns``,
    ``adopt``): the loop asks whenever capacity frees up and tells every outcome.
``seed``
    :class:`SeedEmitter`: the user's starting candidates, each proposed once.
``params``
    :class:`ParamEmitter`: searches one family's ``SEARCH_SPACE`` from its elites (the
    family's default first, then random points, then offspring), steady state.
``genome``
    :class:`GenomeEmitter`, the ribs custom emitter behind ``ParamEmitter`` (``gaussian`` or
    ``iso_line`` variation of float genomes in ``[0, 1]^d``), and :func:`shadow_archive`, the
    family's own grid of elites with the main map's dimensions.
``cma``
    :class:`CMAParamEmitter`: the ``cma`` variation, CMA-ME generations bridged to the
    steady-state loop by a barrier.
``llm``
    :class:`LlmEmitter`: candidates written by language models through an ``LlmPort``
    (mutate, crossover, repair, target), chosen by a bandit; :class:`Elite` and
    :func:`archive_elites`, the run's elites as it reads them.
``llm_state``
    The LLM emitter's saved state (a mixin: ``state()`` and ``restore()``), its version, and
    :class:`~llm_state.Owed`, the credit a child's arm is owed until its outcome is told.
``variations``
    :data:`VARIATIONS`, the names a run may choose (``gaussian``, ``iso_line``, ``cma``), and
    :data:`STEADY_STATE`, those of ``GenomeEmitter``; the CLI and API list these.

``variations`` is a leaf, so the emitter classes are imported on first use (ribs takes seconds
to import): ``from evolution.emitters import VARIATIONS`` stays cheap for the CLI.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from evolution.emitters.variations import STEADY_STATE, VARIATIONS

if TYPE_CHECKING:
    from evolution.emitters.base import Emitter
    from evolution.emitters.cma import CMAParamEmitter
    from evolution.emitters.genome import GenomeEmitter, shadow_archive
    from evolution.emitters.llm import Elite, LlmEmitter, archive_elites
    from evolution.emitters.params import ParamEmitter
    from evolution.emitters.seed import SeedEmitter

# Public name -> the module that defines it, imported by __getattr__ on first use.
_HOMES = {
    "Emitter": "base",
    "CMAParamEmitter": "cma",
    "GenomeEmitter": "genome",
    "shadow_archive": "genome",
    "Elite": "llm",
    "LlmEmitter": "llm",
    "archive_elites": "llm",
    "ParamEmitter": "params",
    "SeedEmitter": "seed",
}

__all__ = [
    "STEADY_STATE",
    "VARIATIONS",
    "CMAParamEmitter",
    "Elite",
    "Emitter",
    "GenomeEmitter",
    "LlmEmitter",
    "ParamEmitter",
    "SeedEmitter",
    "archive_elites",
    "shadow_archive",
]


def __getattr__(name: str) -> Any:
    """Import an emitter class (or :func:`shadow_archive`) the first time it is asked for."""
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{home}"), name)
    globals()[name] = value
    return value
