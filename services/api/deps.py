"""What routes declare they need: a session, the caller, the caller's own task or run.

``CurrentUser`` is an admin or a user (a worker key gets 403 on every route that declares
it); ``AdminUser`` an admin. ``OwnedTask``/``OwnedRun`` resolve the path's id to a row the
caller may see: another user's id is 404, exactly like an unknown one, so ids leak nothing.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import Annotated

from fastapi import Depends, HTTPException, Path, Query, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session, sessionmaker

from archive.models import Run, Task, User
from services import keys
from services.api.errors import Forbidden, NotFound
from services.api.schemas import MAX_ID
from services.config import Settings

#: Largest task file accepted (bytes).
MAX_TASK_BYTES = 1024 * 1024
#: Bound on validating an uploaded task (seconds; torch's import included).
VALIDATE_TIMEOUT_S = 120.0


@dataclasses.dataclass(frozen=True)
class ApiConfig:
    """What the app was built with (kept on ``app.state.api``)."""

    session_factory: sessionmaker[Session]
    settings: Settings
    start_run: Callable[[int], None] | None = None
    max_task_bytes: int = MAX_TASK_BYTES
    validate_timeout_s: float = VALIDATE_TIMEOUT_S

    @property
    def default_hardware(self) -> str:
        """The hardware class of a run that names none: the server's device, else ``cuda``."""
        return "cpu" if self.settings.device == "cpu" else "cuda"


def get_config(request: Request) -> ApiConfig:
    """The app's :class:`ApiConfig`."""
    return request.app.state.api


ConfigDep = Annotated[ApiConfig, Depends(get_config)]


def get_session(config: ConfigDep) -> Iterator[Session]:
    """A session for the request; routes that write commit it themselves."""
    with config.session_factory() as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]

_bearer = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer km_...`")


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(
        status.HTTP_401_UNAUTHORIZED, detail, headers={"WWW-Authenticate": "Bearer"}
    )


def authenticated(
    session: SessionDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> User:
    """The caller, from ``Authorization: Bearer KEY``; 401 when missing, unknown or revoked."""
    if credentials is None:
        raise _unauthorized("missing API key: send `Authorization: Bearer KEY`")
    user = keys.authenticate(session, credentials.credentials)
    if user is None:
        raise _unauthorized("invalid or revoked API key")
    return user


def human_user(user: Annotated[User, Depends(authenticated)]) -> User:
    """The caller if an admin or a user; a worker key gets 403."""
    if user.role not in ("admin", "user"):
        raise Forbidden("worker keys can only claim jobs and post results; use a user key")
    return user


CurrentUser = Annotated[User, Depends(human_user)]


def admin_user(user: CurrentUser) -> User:
    """The caller if an admin; 403 otherwise."""
    if user.role != "admin":
        raise Forbidden("only an admin key can do this")
    return user


AdminUser = Annotated[User, Depends(admin_user)]


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
    run = session.get(Run, run_id)
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


def paging(
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=10**9)] = 0,
) -> Paging:
    """The page asked for (50 items by default, at most 500)."""
    return Paging(limit, offset)


PageDep = Annotated[Paging, Depends(paging)]
