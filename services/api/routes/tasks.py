"""``/tasks``: upload a task file (validated in a sandboxed child process), list and read yours."""

from __future__ import annotations

from pathlib import PurePath
from typing import Annotated, BinaryIO

from fastapi import APIRouter, File, Form, UploadFile

from archive import repository
from archive.models import User
from services.api.deps import (
    ApiConfig,
    BriefUser,
    ConfigDep,
    CurrentUser,
    OwnedTask,
    PageDep,
    SessionDep,
    owner_filter,
)
from services.api.errors import ErrorBody, Unprocessable, task_file_too_large
from services.api.schemas import Page, TaskDetail, TaskOut, storable
from services.api.validation import validate_task_source

router = APIRouter(prefix="/tasks", tags=["tasks"])


def _task_name(name: str | None, filename: str | None) -> str:
    if (name or "").strip():
        try:
            return storable(name.strip())[:200]
        except ValueError as e:
            raise Unprocessable(f"name {e}", field="name") from None
    try:
        return storable(PurePath(filename or "").stem)[:200] or "task"
    except ValueError as e:
        # With no `name` field the file's name names the task.
        msg = f"the file's name {e}: rename the file or send a `name` field"
        raise Unprocessable(msg, field="file") from None


_SANDBOX = {
    503: {
        "model": ErrorBody,
        "description": "The server cannot validate tasks safely (its sandbox is unavailable)",
    }
}


def store_upload(
    config: ApiConfig, user: User, file: BinaryIO, filename: str | None, name: str | None
) -> TaskOut:
    """Read, validate and store an uploaded task file for ``user``: what ``POST /tasks`` and the
    dashboard's upload form both do.

    At most ``config.max_task_bytes`` are read (413 beyond); the text must be UTF-8 the
    database can hold (422); ``name`` (else the file's name) names the task; the source is
    validated in a sandboxed child process (422 with the loader's message, 503 without a
    sandbox) before it is stored in a session of its own (validating holds none).
    """
    data = file.read(config.max_task_bytes + 1)
    if len(data) > config.max_task_bytes:
        raise task_file_too_large(config.max_task_bytes)
    try:
        source = storable(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        msg = f"the task file must be UTF-8 Python source ({e})"
        raise Unprocessable(msg, field="file") from None
    task_name = _task_name(name, filename)
    meta = validate_task_source(
        source,
        device="cpu",
        timeout_s=config.validate_timeout_s,
        memory_mb=config.settings.memory_limit_mb,
        sandbox=config.settings.sandbox,
    )
    # Its own short session: validating took up to validate_timeout_s, holding none.
    with config.session_factory() as session:
        task = repository.add_task(
            session, task_name, source, meta, {"ok": True, "device": "cpu"}, owner_id=user.id
        )
        session.commit()
        return TaskOut.model_validate(task, from_attributes=True)


@router.post("", status_code=201, response_model=TaskOut, responses=_SANDBOX)
def create_task(
    user: BriefUser,
    config: ConfigDep,
    file: Annotated[UploadFile, File(description="The task file (KernelBench format)")],
    name: Annotated[str | None, Form(max_length=200)] = None,
) -> TaskOut:
    """Upload a task file; it is validated (loads, runs, output not near-constant) first."""
    return store_upload(config, user, file.file, file.filename, name)


@router.get("", response_model=Page[TaskOut])
def list_tasks(session: SessionDep, user: CurrentUser, page: PageDep) -> Page[TaskOut]:
    """Your tasks, newest first (an admin sees every task)."""
    owner = owner_filter(user)
    rows = repository.list_tasks(session, owner, limit=page.limit, offset=page.offset)
    return Page[TaskOut](
        items=[TaskOut.model_validate(t, from_attributes=True) for t in rows],
        total=repository.count_tasks(session, owner),
        limit=page.limit,
        offset=page.offset,
    )


@router.get("/{task_id}", response_model=TaskDetail)
def get_task(task: OwnedTask) -> TaskDetail:
    """One of your tasks, with its source and validation report."""
    return TaskDetail.model_validate(task, from_attributes=True)
