"""What routes declare they need: a session, the caller, the caller's own task or run.

``CurrentUser`` is an admin or a user (a worker key gets 403 on every route that declares
it); ``AdminUser`` an admin; ``BriefUser`` the same as ``CurrentUser`` for routes that run long
and must hold no connection meanwhile. ``OwnedTask``/``OwnedRun`` resolve the path's id to a
row the caller may see: another user's id is 404, exactly like an unknown one, so ids leak
nothing. ``SessionDep`` waits for one of a few :class:`SessionSlots` (see why there).

``CurrentWorker`` is a remote worker, from its own token (``Authorization: Bearer kmw_...``,
given by ``POST /workers/register``); API keys are refused there, as worker tokens are
everywhere else.
"""

from __future__ import annotations

import asyncio
import dataclasses
import weakref
from collections.abc import AsyncIterator, Callable
from typing import Annotated

from fastapi import Depends, HTTPException, Path, Query, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session, defer, sessionmaker
from sqlalchemy.pool import QueuePool

from archive import leases
from archive.models import Run, Task, User, Worker
from services import keys
from services.api.errors import Forbidden, NotFound
from services.api.schemas import MAX_ID
from services.config import Settings

#: Largest task file accepted (bytes).
MAX_TASK_BYTES = 1024 * 1024
#: Bound on validating an uploaded task (seconds; torch's import included).
VALIDATE_TIMEOUT_S = 120.0


#: Requests holding a database session at once (fewer if the engine's pool is smaller). The
#: routes are Python, which runs one thread at a time: more concurrent requests only add GIL
#: handoffs. Measured with bench/api_load_bench.py (100 requests/s, 2 CPUs, PostgreSQL on the
#: same machine): 4 kept up with p50 14-23 ms; 8 gave p50 113 ms; 15 (the default pool's
#: size) saturated at 89 requests/s.
SESSION_SLOTS = 4


class SessionSlots:
    """At most ``n`` requests hold a database session at once; the others wait their turn on
    the event loop, holding no worker thread.

    Without it a burst deadlocks: every worker thread blocks in the connection pool, waiting
    for a connection held by a request that needs a worker thread for its next step (the
    route, the response) before it can give its connection back, until the pool's timeout
    (30 s) fails them all with a 500 (seen at 100 requests/s). Fewer requests at once are
    also faster (see :data:`SESSION_SLOTS`). One semaphore per event loop (a server has one;
    test clients may make several).
    """

    def __init__(self, n: int) -> None:
        self.n = n
        self._by_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore]
        self._by_loop = weakref.WeakKeyDictionary()

    def semaphore(self) -> asyncio.Semaphore:
        """The running event loop's semaphore."""
        loop = asyncio.get_running_loop()
        sem = self._by_loop.get(loop)
        if sem is None:
            sem = self._by_loop[loop] = asyncio.Semaphore(self.n)
        return sem

    @classmethod
    def for_sessions(cls, session_factory: sessionmaker[Session]) -> SessionSlots:
        """:data:`SESSION_SLOTS`, or as many as the engine's pool has connections if fewer."""
        pool = getattr(session_factory.kw.get("bind"), "pool", None)
        n = SESSION_SLOTS
        if isinstance(pool, QueuePool):
            overflow = pool._max_overflow  # no public accessor; negative means unlimited
            if overflow >= 0:
                n = min(n, pool.size() + overflow)
        return cls(max(1, n))


@dataclasses.dataclass(frozen=True)
class ApiConfig:
    """What the app was built with (kept on ``app.state.api``)."""

    session_factory: sessionmaker[Session]
    settings: Settings
    start_run: Callable[[int], None] | None = None
    max_task_bytes: int = MAX_TASK_BYTES
    validate_timeout_s: float = VALIDATE_TIMEOUT_S
    session_slots: SessionSlots = dataclasses.field(init=False, repr=False)

    def __post_init__(self) -> None:
        slots = SessionSlots.for_sessions(self.session_factory)
        object.__setattr__(self, "session_slots", slots)

    @property
    def default_hardware(self) -> str:
        """The hardware class of a run that names none: the server's device, else ``cuda``."""
        return "cpu" if self.settings.device == "cpu" else "cuda"


# Dependencies that only compute are ``async``: they run on the event loop. A ``def`` one costs
# a hop to a worker thread and back, and a list request went through seven such hops.
async def get_config(request: Request) -> ApiConfig:
    """The app's :class:`ApiConfig`."""
    return request.app.state.api


ConfigDep = Annotated[ApiConfig, Depends(get_config)]


async def get_session(config: ConfigDep) -> AsyncIterator[Session]:
    """A session for the request, once one of the :class:`SessionSlots` is free; routes that
    write commit it themselves.

    ``async`` so that waiting for a slot and giving the connection back take no worker
    thread; the session itself is used by the ``def`` routes and dependencies, one at a time.
    """
    async with config.session_slots.semaphore():
        session = config.session_factory()
        try:
            yield session
        finally:
            session.close()  # back to the pool: a rollback, no waiting


SessionDep = Annotated[Session, Depends(get_session)]

_bearer = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer km_...`")


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(
        status.HTTP_401_UNAUTHORIZED, detail, headers={"WWW-Authenticate": "Bearer"}
    )


def _caller(session: Session, credentials: HTTPAuthorizationCredentials | None) -> User:
    if credentials is None:
        raise _unauthorized("missing API key: send `Authorization: Bearer KEY`")
    user = keys.authenticate(session, credentials.credentials)
    if user is None:
        raise _unauthorized("invalid or revoked API key")
    return user


def authenticated(
    session: SessionDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> User:
    """The caller, from ``Authorization: Bearer KEY``; 401 when missing, unknown or revoked."""
    return _caller(session, credentials)


def _human(user: User) -> User:
    if user.role not in ("admin", "user"):
        raise Forbidden(
            "a worker key only enrols workers (POST /api/v1/workers/register); use a user key"
        )
    return user


async def human_user(user: Annotated[User, Depends(authenticated)]) -> User:
    """The caller if an admin or a user; a worker key gets 403."""
    return _human(user)


CurrentUser = Annotated[User, Depends(human_user)]


def human_user_briefly(
    config: ConfigDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> User:
    """:data:`CurrentUser` for a route that runs long (an upload being validated): the key is
    checked in a session of its own, closed at once, so the route holds no connection and no
    :class:`SessionSlots` slot meanwhile. The user comes back detached, its fields loaded."""
    with config.session_factory() as session:
        return _human(_caller(session, credentials))


BriefUser = Annotated[User, Depends(human_user_briefly)]


async def admin_user(user: CurrentUser) -> User:
    """The caller if an admin; 403 otherwise."""
    if user.role != "admin":
        raise Forbidden("only an admin key can do this")
    return user


AdminUser = Annotated[User, Depends(admin_user)]

_worker_bearer = HTTPBearer(
    auto_error=False,
    scheme_name="WorkerToken",
    description="A remote worker's token (`Authorization: Bearer kmw_...`), from register",
)


@dataclasses.dataclass(frozen=True)
class WorkerRef:
    """The calling worker, detached from any session (the long-poll holds none)."""

    id: int
    name: str
    hardware_class: str

    def row(self) -> Worker:
        """A transient :class:`Worker` carrying what :mod:`archive.leases` reads."""
        return Worker(id=self.id, name=self.name, hardware_class=self.hardware_class)


def current_worker(
    config: ConfigDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_worker_bearer)],
) -> WorkerRef:
    """The worker whose token authenticates the request; records that it was seen.

    401 for a missing, unknown or revoked token, and for an API key (enrolment keys only
    register). Its own short session: nothing stays open for the rest of the request.
    """
    if credentials is None:
        raise _unauthorized("missing worker token: send `Authorization: Bearer kmw_...`")
    token = credentials.credentials
    if token.startswith(keys.KEY_PREFIX):
        raise _unauthorized(
            "API keys cannot claim jobs: register with the enrolment key"
            " (POST /api/v1/workers/register) and use the worker token it returns"
        )
    with config.session_factory() as session:
        worker = leases.worker_by_token(session, token)
        if worker is None:
            raise _unauthorized(
                "invalid or revoked worker token: enrol again with a worker key"
                " (`kernelmap keys create --role worker`)"
            )
        leases.touch(session, worker)
        session.commit()
        return WorkerRef(worker.id, worker.name, worker.hardware_class)


CurrentWorker = Annotated[WorkerRef, Depends(current_worker)]


def owner_filter(user: User) -> int | None:
    """The owner id to filter lists by: None (everything) for an admin."""
    return None if user.role == "admin" else user.id


def may_see(user: User, owner_id: int | None) -> bool:
    """Whether ``user`` may see a row owned by ``owner_id`` (admins see everything)."""
    return user.role == "admin" or (owner_id is not None and owner_id == user.id)


def find_task(session: Session, user: User, task_id: int) -> Task:
    """Task ``task_id`` if the caller may see it; else :class:`NotFound`."""
    task = session.get(Task, task_id)
    if task is None or not may_see(user, task.owner_id):
        raise NotFound(f"no task with id {task_id}: GET /api/v1/tasks lists yours")
    return task


def find_run(session: Session, user: User, run_id: int) -> Run:
    """Run ``run_id`` if the caller may see it; else :class:`NotFound`."""
    # archive_state (CVT centroids...) is the controller's: loaded only if something reads it.
    run = session.get(Run, run_id, options=[defer(Run.archive_state)])
    if run is None or not may_see(user, run.owner_id):
        raise NotFound(f"no run with id {run_id}: GET /api/v1/runs lists yours")
    return run


PathId = Annotated[int, Path(ge=1, le=MAX_ID)]


def owned_task(task_id: PathId, session: SessionDep, user: CurrentUser) -> Task:
    """The path's task, if the caller may see it."""
    return find_task(session, user, task_id)


def owned_run(run_id: PathId, session: SessionDep, user: CurrentUser) -> Run:
    """The path's run, if the caller may see it."""
    return find_run(session, user, run_id)


OwnedTask = Annotated[Task, Depends(owned_task)]
OwnedRun = Annotated[Run, Depends(owned_run)]


@dataclasses.dataclass(frozen=True)
class Paging:
    """``limit`` and ``offset`` of a list request."""

    limit: int
    offset: int


async def paging(
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=10**9)] = 0,
) -> Paging:
    """The page asked for (50 items by default, at most 500)."""
    return Paging(limit, offset)


PageDep = Annotated[Paging, Depends(paging)]
