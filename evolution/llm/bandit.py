"""Which model, operator and prompt strategy to ask next: a UCB1 bandit over their triples.

Arms
----
An arm is ``(model, operator, strategy_id)``. The arms on offer are the product of the models
(name and weight, from configuration), the operators and the strategies currently set; a model
or strategy removed keeps its statistics (reports still show them, and one set again resumes
where it stood) but is not chosen.

Reward
------
``reward = improvement / cost`` with ``cost = tokens / 1000 + gpu_second_cost * gpu_seconds``
(at least :data:`MIN_COST`): improvement per thousand tokens, and per GPU second of evaluation
when ``gpu_second_cost`` (thousands of tokens one GPU second is worth) is set. The improvement is
:func:`improvement`: how much the child beat what it set out to beat, in objective units
(log speedup), plus a bonus for a cell filled for the first time; 0 for a failed child.

Choice
------
UCB1 (Auer et al. 2002): the arm maximising ``mean + c * sqrt(2 ln N / n)``, with rewards
scaled by the best mean reward of any arm so far (UCB1 wants rewards near ``[0, 1]``; a single
lucky reward would flatten every mean if it set the scale; the scale changes as rewards come
in, the same way on every replay). Chosen over Thompson sampling because the
choice depends only on counts and sums: a resumed run continues identically from a small state,
rewards need no distributional model (they are mostly 0 with a heavy tail), and exploration is
guaranteed for arms that were unlucky early. Configuration weights are priors: each arm starts
with ``prior_pulls`` pseudo-pulls of scaled reward ``prior_reward * weight / max weight``, so a
heavier model is tried first and more often until evidence says otherwise (weight 0: only
chosen when its evidence earns it). Exact ties are broken by the seeded RNG.

State
-----
:meth:`Bandit.to_json` gives a JSON-ready dict (counts, sums, the RNG state);
:meth:`Bandit.from_json` restores it exactly, so choices after a resume are those the
uninterrupted run would have made.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from evolution.llm.draws import Draws
from evolution.llm.errors import StateError

Arm = tuple[str, str, str]
"""``(model, operator, strategy_id)``."""

NEW_CELL_BONUS = 0.1
"""Improvement credited for filling a cell that was empty (a tenth of ``e``-fold speedup)."""
MIN_COST = 1e-3
STATE_VERSION = 2
READABLE_VERSIONS = (1, 2)
"""Version 1 kept a Mersenne Twister's state (still read: see
:meth:`evolution.llm.draws.Draws.restore`)."""


def improvement(
    child: float | None,
    baseline: float | None,
    *,
    new_cell: bool = False,
    bonus: float = NEW_CELL_BONUS,
) -> float:
    """What a child earns its arm, in objective units (log speedup).

    Parameters
    ----------
    child:
        The child's objective; None when it failed or was not accepted (then 0).
    baseline:
        What it set out to beat: the parent's objective for ``mutate``, the better parent's
        for ``crossover``, the cell's previous elite for ``repair`` and ``target`` (None: an
        empty cell, nothing to beat).
    new_cell:
        The child filled a cell that was empty; adds ``bonus``.

    Returns
    -------
    float
        ``max(0, child - baseline)`` (0 without a baseline) plus the bonus; 0 for a failure.
    """
    if child is None or not math.isfinite(child):
        return 0.0
    gain = max(0.0, child - baseline) if baseline is not None else 0.0
    return gain + (bonus if new_cell else 0.0)


@dataclasses.dataclass
class ArmStats:
    """What one arm did: pulls, summed reward, tokens, GPU seconds and improvement."""

    pulls: int = 0
    reward: float = 0.0
    tokens: int = 0
    gpu_seconds: float = 0.0
    improvement: float = 0.0


class Bandit:
    """UCB1 over ``(model, operator, strategy)`` arms (the rules are in the module docstring).

    Parameters
    ----------
    models:
        ``{model name: weight}`` (weights >= 0, from configuration).
    operators:
        The operator names (:data:`evolution.llm.prompts.OPERATORS`).
    strategies:
        Prompt strategy ids.
    seed:
        Seeds the tie-breaking RNG.
    c:
        Exploration coefficient.
    prior_pulls, prior_reward:
        The weight prior: pseudo-pulls per arm and the scaled reward of the heaviest model's.
    gpu_second_cost:
        Thousands of tokens one GPU second of evaluation costs in the reward (0: tokens only).
    """

    def __init__(
        self,
        models: Mapping[str, float],
        operators: Iterable[str],
        strategies: Iterable[str],
        *,
        seed: int = 0,
        c: float = 1.0,
        prior_pulls: float = 1.0,
        prior_reward: float = 0.5,
        gpu_second_cost: float = 0.0,
    ) -> None:
        self.c, self.prior_pulls, self.prior_reward = c, prior_pulls, prior_reward
        self.gpu_second_cost = gpu_second_cost
        self._rng = Draws(seed)
        self._models: dict[str, float] = {}
        self._operators: list[str] = []
        self._strategies: list[str] = []
        self._stats: dict[Arm, ArmStats] = {}
        self.set_models(models)
        self.set_operators(operators)
        self.set_strategies(strategies)

    # -- arms ----------------------------------------------------------------------------------

    def set_models(self, models: Mapping[str, float]) -> None:
        """Offer these models (``{name: weight}``) from now on; others are no longer chosen."""
        for name, weight in models.items():
            if not (isinstance(weight, int | float) and math.isfinite(weight) and weight >= 0):
                raise ValueError(f"weight of model {name!r} must be a number >= 0, got {weight!r}")
        self._models = {str(k): float(v) for k, v in models.items()}

    def set_operators(self, operators: Iterable[str]) -> None:
        """Offer these operators from now on."""
        self._operators = list(dict.fromkeys(operators))

    def set_strategies(self, strategies: Iterable[str]) -> None:
        """Offer these strategy ids from now on (a rewritten strategy is a new id)."""
        self._strategies = list(dict.fromkeys(strategies))

    @property
    def arms(self) -> list[Arm]:
        """The arms on offer, in model, operator, strategy order."""
        return [(m, o, s) for m in self._models for o in self._operators for s in self._strategies]

    def stats(self, arm: Arm) -> ArmStats:
        """The statistics of ``arm`` (zeros for one never pulled)."""
        return dataclasses.replace(self._stats.get(arm, ArmStats()))

    # -- choosing and crediting ----------------------------------------------------------------

    def _prior(self, model: str) -> float:
        top = max(self._models.values(), default=0.0)
        return self.prior_reward * (self._models.get(model, 0.0) / top if top > 0 else 1.0)

    def _total(self) -> float:
        return sum(self.prior_pulls + self._stats.get(a, ArmStats()).pulls for a in self.arms)

    def _scale(self) -> float:
        """The reward scale: the best mean reward of any arm (1 before any reward)."""
        means = [s.reward / s.pulls for s in self._stats.values() if s.pulls]
        best = max(means, default=0.0)
        return best if best > 0 else 1.0

    def score(self, arm: Arm, total: float | None = None, scale: float | None = None) -> float:
        """The UCB1 index of ``arm`` now (``total``: the pulls of the arms on offer, priors
        included, and ``scale``, :meth:`_scale`; computed when not given)."""
        s = self._stats.get(arm, ArmStats())
        n = self.prior_pulls + s.pulls
        if n <= 0:
            return math.inf
        scale = self._scale() if scale is None else scale
        mean = (self.prior_pulls * self._prior(arm[0]) + s.reward / scale) / n
        total = self._total() if total is None else total
        return mean + self.c * math.sqrt(2 * math.log(max(total, 1.0)) / n)

    def choose(self, eligible: Callable[[Arm], bool] | None = None) -> Arm | None:
        """The arm to pull next among those on offer (and ``eligible``, e.g. ``repair`` only
        when a failed candidate waits); None when none is. Uses the RNG only to break ties."""
        arms = [a for a in self.arms if eligible is None or eligible(a)]
        if not arms:
            return None
        total, scale = self._total(), self._scale()
        scores = [self.score(a, total, scale) for a in arms]
        best = max(scores)
        tied = [a for a, s in zip(arms, scores, strict=True) if s == best]
        return tied[0] if len(tied) == 1 else tied[self._rng.randrange(len(tied))]

    def credit(self, arm: Arm, improvement: float, tokens: int, gpu_seconds: float = 0.0) -> float:
        """Record one pull of ``arm`` (a request and its child's evaluation); returns the reward.

        A failed request is credited with improvement 0 and the tokens it spent.
        """
        if improvement < 0 or tokens < 0 or gpu_seconds < 0:
            raise ValueError("improvement, tokens and gpu_seconds must be >= 0")
        cost = max(tokens / 1000 + self.gpu_second_cost * gpu_seconds, MIN_COST)
        reward = improvement / cost
        s = self._stats.setdefault(arm, ArmStats())
        s.pulls += 1
        s.reward += reward
        s.tokens += int(tokens)
        s.gpu_seconds += gpu_seconds
        s.improvement += improvement
        return reward

    # -- state ---------------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        """The whole state as a JSON-ready dict (see :meth:`from_json`)."""
        return {
            "version": STATE_VERSION,
            "params": {
                "c": self.c,
                "prior_pulls": self.prior_pulls,
                "prior_reward": self.prior_reward,
                "gpu_second_cost": self.gpu_second_cost,
            },
            "models": dict(self._models),
            "operators": list(self._operators),
            "strategies": list(self._strategies),
            # Field by field: dataclasses.astuple deep-copies, and this runs with every event.
            "stats": [
                [*arm, s.pulls, s.reward, s.tokens, s.gpu_seconds, s.improvement]
                for arm, s in self._stats.items()
            ],
            "rng": self._rng.to_json(),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Bandit:
        """The bandit :meth:`to_json` described; raises StateError for another version or shape."""
        if not isinstance(data, Mapping) or data.get("version") not in READABLE_VERSIONS:
            got = data.get("version") if isinstance(data, Mapping) else type(data).__name__
            raise StateError(f"bandit state version {got!r} is not {STATE_VERSION}")
        try:
            bandit = cls(data["models"], data["operators"], data["strategies"], **data["params"])
            for m, o, s, pulls, reward, tokens, gpu, gain in data["stats"]:
                bandit._stats[(m, o, s)] = ArmStats(int(pulls), reward, int(tokens), gpu, gain)
            bandit._rng.restore(data["rng"])
        except (KeyError, TypeError, ValueError) as exc:
            raise StateError(f"bandit state cannot be restored: {exc}") from exc
        return bandit
