"""Meta-prompt evolution's schedule: when to rewrite which prompt strategy, and taking the reply.

Every ``every`` evaluated children (of the LLM emitter), the strategy due for a rewrite
(:func:`~evolution.llm.strategies.pick_for_rewrite`: the worst-scored active one with at least
``min_children`` children, never rewritten before) is asked of the heaviest model with the
rewrite meta-prompt (:func:`~evolution.llm.strategies.rewrite_messages`); one rewrite is in
flight at a time. A valid reply joins the pool as a new strategy
(:meth:`~evolution.llm.strategies.StrategyPool.add_rewrite`); a refused one raises
:class:`~evolution.llm.errors.StrategyRejected`. Rewrite requests go through the same port and
caps as the kernel requests.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from evolution.llm.strategies import (
    ChildOutcome,
    Strategy,
    StrategyPool,
    pick_for_rewrite,
    rewrite_messages,
    strategy_scores,
)


class Rewrites:
    """The rewrite schedule of one emitter: ``pending`` maps a request id to the strategy it
    rewrites; ``next_at`` is the number of children at which the next rewrite is considered."""

    def __init__(self, every: int = 8, min_children: int = 3) -> None:
        self.every = int(every)
        self.min_children = int(min_children)
        self.pending: dict[str, str] = {}
        self.next_at = self.every

    def plan(
        self,
        pool: StrategyPool,
        children: Sequence[ChildOutcome],
        objectives: Sequence[float],
        models: Mapping[str, float],
        seen: int | None = None,
    ) -> tuple[str, str, list[dict[str, str]]] | None:
        """``(strategy id, model, messages)`` of the rewrite due now, or None (not due, one in
        flight, nothing to rewrite, or ``every`` is 0). ``objectives`` are the run's accepted
        objectives (what the strategies are ranked against); ``seen`` counts the children
        evaluated so far when ``children`` keeps only the newest (default ``len(children)``)."""
        count = len(children) if seen is None else int(seen)
        if self.every <= 0 or self.pending or not models or count < self.next_at:
            return None
        self.next_at = count + self.every
        due = pick_for_rewrite(pool, children, objectives, self.min_children)
        if due is None:
            return None
        strategy, scores = due
        mine = [c for c in children if c.strategy_id == strategy.id]
        others = [(s, scores.get(s.id)) for s in pool.active if s.id != strategy.id]
        model = max(models, key=lambda m: models[m])
        return strategy.id, model, rewrite_messages(strategy, scores.get(strategy.id), mine, others)

    @staticmethod
    def apply(
        pool: StrategyPool,
        parent_id: str,
        text: str,
        children: Sequence[ChildOutcome],
        objectives: Sequence[float],
    ) -> Strategy:
        """Add the rewrite of ``parent_id`` that ``text`` holds; raises StrategyRejected."""
        return pool.add_rewrite(parent_id, text, strategy_scores(children, objectives))
