"""llm: the pure core of LLM-driven search (issue 15): prompts in, replies to sources, choices.

No HTTP, no database, no threads: plain data in and out, deterministic for a seed. The model is
reached by an adapter (``services/llm/``) behind a port; the emitter that joins the two to the
loop asks :mod:`bandit` for an arm, builds its prompt with :mod:`prompts`, turns the reply into
a candidate with :mod:`edits`, and credits the arm and the strategy with the outcome.

Modules
-------
``prompts``
    Chat messages for the operators ``mutate``, ``crossover``, ``repair`` and ``target``
    (:func:`~prompts.build_messages`) from plain views (:class:`~prompts.PromptContext`,
    :class:`~prompts.ParentView`, :class:`~prompts.Evaluation`, :class:`~prompts.Niche`),
    within a character budget that never cuts the diff base.
``contract``
    What a candidate must be, in the prompt's words: the candidate contract and the static
    gate's rules, read from ``evaluator_worker.gate_rules`` (:func:`~contract.gate_rules_text`).
``edits``
    A reply to a source (:func:`~edits.edit_source`): SEARCH/REPLACE blocks or a full rewrite,
    typed failures (``malformed``, ``no_match``, ``ambiguous``, ``empty``, ``too_large``,
    ``no_change``) in an :class:`~edits.EditResult`; :func:`~edits.diff_blocks` writes blocks.
``draws``
    :class:`~draws.Draws`, a :class:`random.Random` on SplitMix64 whose state is one word
    (the emitter's and the bandit's, saved with every request and reply).
``bandit``
    :class:`~bandit.Bandit`, UCB1 over ``(model, operator, strategy)`` arms credited with
    improvement per thousand tokens (:func:`~bandit.improvement`); exact JSON state.
``strategies``
    The prompt strategies (advice fragments): :data:`~strategies.BUILTIN`, scores by the
    children's percentile (:func:`~strategies.strategy_scores`), the rewrite meta-prompt and its
    validation, :class:`~strategies.StrategyPool` with exact JSON state.
``rewrites``
    Meta-prompt evolution's schedule (:class:`~rewrites.Rewrites`): when to rewrite which
    strategy, and taking the rewrite.
``repairs``
    :class:`~repairs.Repairs`, the failed children waiting for a repair, restored on resume.
``cells``
    The map as the emitter sees it: :class:`~cells.Elite`, :func:`~cells.archive_elites`, empty
    cells and the elite nearest one.
``port``
    The port to a model: :class:`~port.LlmPort` (``submit``, ``poll``, ``in_flight``,
    ``spent``), :class:`~port.LlmRequest`, :class:`~port.LlmReply` and :class:`~port.Failure`;
    the adapter (``services/llm/``) implements it, :class:`~evolution.fakes.ScriptedLlm` fakes it;
    :class:`~port.LlmJournal`, where requests, replies and the emitter's state are recorded.
``errors``
    The typed errors: :class:`~errors.EditError`, :class:`~errors.StateError`,
    :class:`~errors.StrategyRejected` (all :class:`~errors.LLMError`, a ``KernelmapError``).
"""

from __future__ import annotations

from evolution.llm.bandit import Arm, ArmStats, Bandit, improvement
from evolution.llm.contract import CANDIDATE_CONTRACT, gate_rules_text
from evolution.llm.edits import FAILURES, EditResult, diff_blocks, edit_source, format_blocks
from evolution.llm.errors import EditError, LLMError, StateError, StrategyRejected
from evolution.llm.port import Failure, LlmPort, LlmReply, LlmRequest
from evolution.llm.prompts import (
    OPERATORS,
    Dim,
    Evaluation,
    Niche,
    ParentView,
    PromptContext,
    build_messages,
)
from evolution.llm.strategies import (
    BUILTIN,
    ChildOutcome,
    Strategy,
    StrategyPool,
    StrategyScore,
    rewrite_messages,
    strategy_scores,
    validate_rewrite,
)

__all__ = [
    "BUILTIN",
    "CANDIDATE_CONTRACT",
    "FAILURES",
    "OPERATORS",
    "Arm",
    "ArmStats",
    "Bandit",
    "ChildOutcome",
    "Dim",
    "EditError",
    "EditResult",
    "Evaluation",
    "Failure",
    "LLMError",
    "LlmPort",
    "LlmReply",
    "LlmRequest",
    "Niche",
    "ParentView",
    "PromptContext",
    "StateError",
    "Strategy",
    "StrategyPool",
    "StrategyRejected",
    "StrategyScore",
    "build_messages",
    "diff_blocks",
    "edit_source",
    "format_blocks",
    "gate_rules_text",
    "improvement",
    "rewrite_messages",
    "strategy_scores",
    "validate_rewrite",
]
