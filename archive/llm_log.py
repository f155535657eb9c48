"""The LLM emitter's journal in the database: every request and reply of a run, and its state.

:class:`LlmLog` is the :class:`evolution.llm.port.LlmJournal` of one run. Each call is one
short transaction that writes its rows of ``llm_requests`` (see
:class:`archive.models.LlmRequestRow`: a request's, with the replies it takes along, or a
reply's) and the emitter's state (``runs.llm_state``) together,
so a controller killed at any moment leaves the state of its last recorded request or reply
beside the rows it describes: the resumed emitter never sends a request id twice. The
requests that were in flight at the kill are marked ``lost`` when the run resumes
(:meth:`LlmLog.close_lost`); their usage is unknown, so :meth:`LlmLog.spent` counts them at
the tokens the caps had reserved for them.

Every write passes the ``fence`` first, as :class:`archive.run_store.RunStore`'s do: a
controller that lost the run's lease writes nothing.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from archive import models as m
from archive import repository
from evolution.llm.port import Failure, LlmReply, LlmRequest, ReplyUse, RequestMeta

#: The longest ``message`` kept (a failure's explanation, not a log).
MESSAGE_CHARS = 2000

#: What a lost request's row says.
LOST_MESSAGE = "in flight when the controller stopped"


class LlmStatus(enum.StrEnum):
    """Where a request of ``llm_requests`` stands (stored as it reads)."""

    SENT = "sent"  # recorded and submitted; no reply yet
    REPLIED = "replied"  # its reply gave a candidate or a rewritten strategy
    FAILED = "failed"  # its reply gave nothing (``reason`` says why)
    REFUSED = "refused"  # a cap refused it: never sent
    LOST = "lost"  # in flight when the controller stopped


@dataclasses.dataclass(frozen=True)
class LlmSpent:
    """What a run's requests spent, refused ones excluded.

    ``prompt_tokens`` and ``completion_tokens`` are as the endpoint reported them;
    ``lost_tokens`` the reservations (prompt estimate plus ``max_tokens``) of the requests
    lost in flight, whose usage is unknown; ``cost`` the sum of the charged costs, None when
    no request had a price.
    """

    requests: int
    prompt_tokens: int
    completion_tokens: int
    cost: float | None
    lost_tokens: int

    @property
    def tokens(self) -> int:
        """Every token counted against the run: reported ones plus lost reservations."""
        return self.prompt_tokens + self.completion_tokens + self.lost_tokens


_ROWS = m.LlmRequestRow
_TABLE: sa.Table = m.LlmRequestRow.__table__  # type: ignore[assignment]
_RUNS: sa.Table = m.Run.__table__  # type: ignore[assignment]

#: Columns a request writes (``sent``) and a reply writes (``replied``).
_REQUEST_COLUMNS = (
    "model",
    "operator",
    "strategy",
    "parent_ids",
    "messages",
    "max_tokens",
    "reserved_tokens",
    "status",
    "reason",
    "message",
    "created_at",
)
_REPLY_COLUMNS = (
    "status",
    "reason",
    "message",
    "response",
    "prompt_tokens",
    "completion_tokens",
    "attempts",
    "latency_s",
    "cost",
    "candidate_key",
    "strategy_id",
    "replied_at",
)


def _set(columns: Sequence[str]) -> dict[str, sa.BindParameter]:
    """``SET column = :v_column`` for each column, typed as the column."""
    return {c: sa.bindparam(f"v_{c}", type_=_TABLE.c[c].type) for c in columns}


def _params(values: Mapping[str, Any]) -> dict[str, Any]:
    return {f"v_{c}": v for c, v in values.items()}


# Fixed statements, compiled once per engine (the values go as parameters): building a
# statement per write, with its values inline, was most of a write's CPU.
_THE_ROW = sa.and_(
    _TABLE.c.run_id == sa.bindparam("w_run"), _TABLE.c.request_id == sa.bindparam("w_id")
)
_STATUS = sa.select(_TABLE.c.status).where(_THE_ROW)
_INSERT = sa.insert(_TABLE).values(
    run_id=sa.bindparam("w_run"),
    request_id=sa.bindparam("w_id"),
    **_set(dict.fromkeys((*_REQUEST_COLUMNS, *_REPLY_COLUMNS))),
)
_RESEND = sa.update(_TABLE).where(_THE_ROW).values(**_set(_REQUEST_COLUMNS))
_REPLY = sa.update(_TABLE).where(_THE_ROW).values(**_set(_REPLY_COLUMNS))
_REFUSE = sa.update(_TABLE).where(_THE_ROW).values(**_set(("status", "reason")))
_STATE = (
    sa.update(_RUNS)
    .where(_RUNS.c.id == sa.bindparam("w_run"))
    .values(llm_state=sa.bindparam("v_state", type_=_RUNS.c.llm_state.type))
)
#: A reply's row when its request was never recorded: what the request would have said.
_NO_REQUEST = {
    "operator": "",
    "strategy": "",
    "parent_ids": [],
    "messages": [],
    "max_tokens": 0,
    "reserved_tokens": 0,
}
_NO_REPLY = dict.fromkeys(_REPLY_COLUMNS) | {
    "prompt_tokens": 0,
    "completion_tokens": 0,
    "attempts": 0,
}


class LlmLog:
    """:class:`evolution.llm.port.LlmJournal` of run ``run_id`` (see the module notes).

    Parameters
    ----------
    session_factory:
        Makes sessions (see :func:`archive.db.session_factory`); the schema must be current.
    run_id:
        The run; raises :class:`~archive.errors.RunNotFound` if there is none.
    fence:
        Called in every write transaction with its session, before it commits; it raises
        (:class:`archive.run_leases.LeaseLost`) to refuse the write.
    """

    def __init__(
        self,
        session_factory: Callable[[], Session],
        run_id: int,
        fence: Callable[[Session], None] | None = None,
    ) -> None:
        self._sessions = session_factory
        self.run_id = run_id
        self._fence = fence
        with self._sessions() as session:
            repository.get_run(session, run_id)

    # --- the journal --------------------------------------------------------------------------

    def sent(
        self,
        request: LlmRequest,
        meta: RequestMeta,
        state: Mapping[str, Any],
        replies: Sequence[tuple[LlmReply, ReplyUse]] = (),
    ) -> None:
        """Record ``replies`` (see :meth:`replied`), then ``request`` as ``sent`` (prompt
        included) and the emitter's ``state``, in one transaction.

        A request id already recorded keeps its row, unless a cap had refused it: then the
        row is the new request's.
        """
        values = {
            "model": request.model,
            "operator": meta.operator,
            "strategy": meta.strategy,
            "parent_ids": [int(i) for i in meta.parent_ids],
            "messages": [dict(msg) for msg in request.messages],
            "max_tokens": request.max_tokens,
            "reserved_tokens": meta.reserved_tokens or request.reserved_tokens,
            "status": LlmStatus.SENT,
            "reason": None,
            "message": "",
            "created_at": m.utcnow(),
        }
        with self._sessions() as session:
            for reply, use in replies:
                self._write_reply(session, reply, use)
            row = {"w_run": self.run_id, "w_id": request.request_id}
            status = session.execute(_STATUS, row).scalar()
            if status is None:
                session.execute(_INSERT, row | _params(_NO_REPLY | values))
            elif status == LlmStatus.REFUSED:
                session.execute(_RESEND, row | _params(values))
            self._save_state(session, state)
            self._commit(session)

    def unsent(self, request_id: str, state: Mapping[str, Any]) -> None:
        """Mark ``request_id`` ``refused`` (reason ``budget``: a cap) and save ``state``."""
        with self._sessions() as session:
            session.execute(
                _REFUSE,
                {
                    "w_run": self.run_id,
                    "w_id": request_id,
                    **_params({"status": LlmStatus.REFUSED, "reason": Failure.BUDGET.value}),
                },
            )
            self._save_state(session, state)
            self._commit(session)

    def replied(self, reply: LlmReply, use: ReplyUse, state: Mapping[str, Any]) -> None:
        """Record ``reply`` and its ``use`` on its request's row, and save ``state``.

        The row is ``replied`` when the reply gave a candidate or a strategy, else ``failed``
        with the reply's failure (or the use's reason) as ``reason``. A reply to a request id
        never recorded gets a row of its own: nothing it spent goes unrecorded.
        """
        with self._sessions() as session:
            self._write_reply(session, reply, use)
            self._save_state(session, state)
            self._commit(session)

    def _write_reply(self, session: Session, reply: LlmReply, use: ReplyUse) -> None:
        values = {
            "status": LlmStatus.REPLIED
            if use.candidate_key or use.strategy_id
            else LlmStatus.FAILED,
            "reason": reply.failure.value if reply.failure is not None else use.reason,
            "message": (reply.message or use.message)[:MESSAGE_CHARS],
            "response": reply.text,
            "prompt_tokens": int(reply.prompt_tokens),
            "completion_tokens": int(reply.completion_tokens),
            "attempts": int(reply.attempts),
            "latency_s": float(reply.latency_s),
            "cost": None if reply.cost is None else float(reply.cost),
            "candidate_key": use.candidate_key,
            "strategy_id": use.strategy_id,
            "replied_at": m.utcnow(),
        }
        row = {"w_run": self.run_id, "w_id": reply.request_id}
        if session.execute(_REPLY, row | _params(values)).rowcount == 0:
            created = {"model": reply.model, "created_at": m.utcnow()}
            session.execute(_INSERT, row | _params(_NO_REQUEST | created | values))

    # --- resume and reports -------------------------------------------------------------------

    def load_state(self) -> dict[str, Any] | None:
        """The emitter's state as last saved; None when nothing was recorded yet."""
        with self._sessions() as session:
            return session.scalar(sa.select(m.Run.llm_state).where(m.Run.id == self.run_id))

    def close_lost(self, reason: str = "lost", message: str = LOST_MESSAGE) -> int:
        """Mark the run's requests still ``sent`` as ``lost`` (with ``reason``, ``message``);
        returns how many.

        Called when the run resumes (their replies died with the previous controller), and when
        a search ends with requests in flight (``reason`` ``abandoned``: not awaited).
        """
        with self._sessions() as session:
            done = session.execute(
                sa.update(_ROWS)
                .where(_ROWS.run_id == self.run_id, _ROWS.status == LlmStatus.SENT)
                .values(status=LlmStatus.LOST, reason=reason, message=message)
                .execution_options(synchronize_session=False)
            )
            self._commit(session)
            return int(done.rowcount)

    def spent(self) -> LlmSpent:
        """What the run's requests spent so far (see :class:`LlmSpent`)."""
        lost = sa.case((_ROWS.status == LlmStatus.LOST, _ROWS.reserved_tokens), else_=0)
        stmt = sa.select(
            sa.func.count(),
            sa.func.coalesce(sa.func.sum(_ROWS.prompt_tokens), 0),
            sa.func.coalesce(sa.func.sum(_ROWS.completion_tokens), 0),
            sa.func.sum(_ROWS.cost),
            sa.func.coalesce(sa.func.sum(lost), 0),
        ).where(_ROWS.run_id == self.run_id, _ROWS.status != LlmStatus.REFUSED)
        with self._sessions() as session:
            requests, prompt, completion, cost, lost_tokens = session.execute(stmt).one()
        return LlmSpent(
            requests=int(requests),
            prompt_tokens=int(prompt),
            completion_tokens=int(completion),
            cost=None if cost is None else float(cost),
            lost_tokens=int(lost_tokens),
        )

    # --- helpers ------------------------------------------------------------------------------

    def _save_state(self, session: Session, state: Mapping[str, Any]) -> None:
        session.execute(_STATE, {"w_run": self.run_id, "v_state": dict(state)})

    def _commit(self, session: Session) -> None:
        # The writes are flushed first: the fence then holds the lease row (FOR SHARE) only
        # from its check to the commit, and a takeover in between refuses the whole write.
        session.flush()
        if self._fence is not None:
            self._fence(session)
        session.commit()
