"""Reading back a run's LLM-driven search: what its requests cost and what they came to.

:func:`llm_summary` is the run's account (requests, failures by reason, tokens, cost, the
candidates the replies gave and how many were correct or won a cell, per model and operator,
and the prompt strategies with their use), in a few aggregate queries whatever the number of
requests; :func:`llm_requests` lists the requests, newest first, without their prompts and
replies; :func:`llm_request` is one request whole.

A request's candidate is the task's candidate with the key its reply gave
(``candidates.key_sha256 = llm_requests.candidate_key``): a child that duplicated a candidate
of an earlier run of the task is that candidate, with its evaluations. "Correct" means one of
its evaluations has the verdict ``OK``; an "improvement" (``elites``) that it held a cell of
this run at some time.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from archive import models as m
from archive.llm_log import LlmStatus
from evolution.llm.port import REWRITE

_ROWS = m.LlmRequestRow

#: The columns of a listed request (no prompt, no reply text).
_LISTED = (
    "id",
    "request_id",
    "model",
    "operator",
    "strategy",
    "status",
    "reason",
    "message",
    "prompt_tokens",
    "completion_tokens",
    "latency_s",
    "cost",
    "candidate_key",
)
#: The columns of a request shown whole (besides the listed ones and the times).
_WHOLE = (
    "parent_ids",
    "messages",
    "max_tokens",
    "reserved_tokens",
    "response",
    "attempts",
    "strategy_id",
)


def _candidate_join(stmt: sa.Select[Any]) -> sa.Select[Any]:
    """``stmt`` on ``llm_requests`` with the run and each request's candidate (if any) joined."""
    return stmt.join(m.Run, m.Run.id == _ROWS.run_id).outerjoin(
        m.Candidate,
        sa.and_(
            m.Candidate.task_id == m.Run.task_id, m.Candidate.key_sha256 == _ROWS.candidate_key
        ),
    )


def _flag(condition: sa.ColumnElement[bool]) -> sa.ColumnElement[int]:
    """1 where ``condition`` holds, else 0 (for SUM)."""
    return sa.case((condition, 1), else_=0)


def _by_arm(session: Session, run_id: int) -> list[dict[str, Any]]:
    correct = sa.exists().where(
        m.Evaluation.candidate_id == m.Candidate.id, m.Evaluation.verdict == "OK"
    )
    held = sa.exists().where(m.Elite.run_id == run_id, m.Elite.candidate_id == m.Candidate.id)
    stmt = _candidate_join(
        sa.select(
            _ROWS.model,
            _ROWS.operator,
            sa.func.count(),
            sa.func.count(_ROWS.candidate_key),
            sa.func.coalesce(sa.func.sum(_flag(sa.and_(m.Candidate.id.is_not(None), correct))), 0),
            sa.func.coalesce(sa.func.sum(_flag(sa.and_(m.Candidate.id.is_not(None), held))), 0),
            sa.func.coalesce(sa.func.sum(_ROWS.prompt_tokens), 0),
            sa.func.coalesce(sa.func.sum(_ROWS.completion_tokens), 0),
        )
    )
    stmt = (
        stmt.where(_ROWS.run_id == run_id, _ROWS.status != LlmStatus.REFUSED)
        .group_by(_ROWS.model, _ROWS.operator)
        .order_by(_ROWS.model, _ROWS.operator)
    )
    keys = (
        "requests",
        "candidates",
        "correct",
        "improvements",
        "prompt_tokens",
        "completion_tokens",
    )
    return [
        {"model": model, "operator": operator, **dict(zip(keys, map(int, counts), strict=True))}
        for model, operator, *counts in session.execute(stmt)
    ]


def _strategies(session: Session, run_id: int, state: dict[str, Any] | None) -> list[dict]:
    pool = (state or {}).get("strategies")
    if not isinstance(pool, dict):
        return []
    stmt = (
        sa.select(_ROWS.strategy, sa.func.count())
        .where(
            _ROWS.run_id == run_id,
            _ROWS.operator != REWRITE,
            _ROWS.status != LlmStatus.REFUSED,
        )
        .group_by(_ROWS.strategy)
    )
    uses = {strategy: int(n) for strategy, n in session.execute(stmt)}
    active = set(pool.get("active") or ())
    return [
        {
            "id": s["id"],
            "text": s.get("text", ""),
            "parent_id": s.get("parent_id"),
            "generation": s.get("generation", 0),
            "active": s["id"] in active,
            "requests": uses.get(s["id"], 0),
        }
        for s in pool.get("strategies") or ()
    ]


def llm_summary(session: Session, run_id: int) -> dict[str, Any] | None:
    """The account of run ``run_id``'s LLM requests (see the module notes).

    Returns
    -------
    dict or None
        ``requests`` (sent, refused ones excluded), ``refused``, ``in_flight`` (no reply
        yet), ``lost``, ``failures`` (reason -> requests failed or lost), ``prompt_tokens``,
        ``completion_tokens``, ``cost`` (None without prices), ``candidates`` (replies that
        gave one), ``correct``, ``elites``, ``by_arm`` (the same per model and operator,
        ``improvements`` for ``elites``, sorted) and ``strategies`` (the emitter's prompt
        strategies with ``active`` and the requests that used them). None when the run has
        no LLM request and no LLM state.
    """
    state = session.scalar(sa.select(m.Run.llm_state).where(m.Run.id == run_id))
    stmt = (
        sa.select(
            _ROWS.status,
            _ROWS.reason,
            sa.func.count(),
            sa.func.coalesce(sa.func.sum(_ROWS.prompt_tokens), 0),
            sa.func.coalesce(sa.func.sum(_ROWS.completion_tokens), 0),
            sa.func.sum(_ROWS.cost),
        )
        .where(_ROWS.run_id == run_id)
        .group_by(_ROWS.status, _ROWS.reason)
    )
    groups = session.execute(stmt).all()
    if not groups and state is None:
        return None
    statuses: Counter[str] = Counter()
    failures: Counter[str] = Counter()
    prompt = completion = 0
    cost: float | None = None
    for status, reason, n, p_tokens, c_tokens, c in groups:
        statuses[status] += n
        if status in (LlmStatus.FAILED, LlmStatus.LOST):
            failures[reason or "unknown"] += n
        if status != LlmStatus.REFUSED:
            prompt, completion = prompt + p_tokens, completion + c_tokens
            if c is not None:
                cost = (cost or 0.0) + float(c)
    arms = _by_arm(session, run_id)
    return {
        "requests": sum(n for s, n in statuses.items() if s != LlmStatus.REFUSED),
        "refused": statuses[LlmStatus.REFUSED],
        "in_flight": statuses[LlmStatus.SENT],
        "lost": statuses[LlmStatus.LOST],
        "failures": dict(sorted(failures.items())),
        "prompt_tokens": int(prompt),
        "completion_tokens": int(completion),
        "cost": cost,
        "candidates": sum(a["candidates"] for a in arms),
        "correct": sum(a["correct"] for a in arms),
        "elites": sum(a["improvements"] for a in arms),
        "by_arm": arms,
        "strategies": _strategies(session, run_id, state),
    }


def _iso(value: Any) -> str | None:
    return value.isoformat() if value is not None else None


def llm_requests(
    session: Session, run_id: int, *, limit: int = 50, offset: int = 0
) -> list[dict[str, Any]]:
    """Run ``run_id``'s LLM requests, newest first, without prompts and replies.

    Each is a dict of the row's ``id``, ``request_id``, ``model``, ``operator``, ``strategy``,
    ``status``, ``reason``, ``message``, ``prompt_tokens``, ``completion_tokens``,
    ``latency_s``, ``cost`` and ``candidate_key``, with ``candidate_id`` (the candidate its
    reply gave, None if none) and ``created_at`` (ISO 8601).
    """
    columns = [getattr(_ROWS, name) for name in _LISTED]
    stmt = _candidate_join(
        sa.select(*columns, m.Candidate.id.label("candidate_id"), _ROWS.created_at)
    )
    stmt = stmt.where(_ROWS.run_id == run_id).order_by(_ROWS.id.desc()).limit(limit).offset(offset)
    out = []
    for row in session.execute(stmt).mappings():
        item = {name: row[name] for name in (*_LISTED, "candidate_id")}
        item["created_at"] = _iso(row["created_at"])
        out.append(item)
    return out


def llm_request(session: Session, run_id: int, request_id: str) -> dict[str, Any] | None:
    """One request of run ``run_id`` whole: prompt (``messages``), reply text (``response``),
    every column, ``candidate_id``, ``created_at`` and ``replied_at`` (ISO 8601); None if the
    run has no request ``request_id``."""
    stmt = _candidate_join(sa.select(_ROWS, m.Candidate.id)).where(
        _ROWS.run_id == run_id, _ROWS.request_id == request_id
    )
    found = session.execute(stmt).one_or_none()
    if found is None:
        return None
    row, candidate_id = found
    item = {name: getattr(row, name) for name in (*_LISTED, *_WHOLE)}
    item["candidate_id"] = candidate_id
    item["created_at"] = _iso(row.created_at)
    item["replied_at"] = _iso(row.replied_at)
    return item


def count_llm_requests(session: Session, run_id: int) -> int:
    """How many LLM requests run ``run_id`` recorded (every status)."""
    stmt = sa.select(sa.func.count()).select_from(_ROWS).where(_ROWS.run_id == run_id)
    return int(session.scalar(stmt) or 0)
