"""The names of the parameter emitters' variation operators (a leaf: no ribs, no numpy).

The CLI's ``--variation`` choices, the API's ``emitters`` schema and the run configuration all
take their names from here, so a new operator is named once, next to the code that implements
it:

- ``gaussian``: ``parent + N(0, sigma)``, and ``iso_line``: ``parent1 + N(0, sigma) +
  N(0, line_sigma) * (parent2 - parent1)``; steady-state mutation of a family's elites by
  :class:`~evolution.emitters.genome.GenomeEmitter`, behind
  :class:`~evolution.emitters.params.ParamEmitter`.
- ``cma``: CMA-ME generations with a barrier, :class:`~evolution.emitters.cma.CMAParamEmitter`.
"""

from __future__ import annotations

#: The operators of :class:`~evolution.emitters.genome.GenomeEmitter` (steady state).
STEADY_STATE = ("gaussian", "iso_line")

#: Every variation a run may choose, in the order the CLI and the API list them.
VARIATIONS = (*STEADY_STATE, "cma")
