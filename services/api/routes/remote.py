"""``/workers``: remote GPU workers that join over HTTPS and pull jobs with leases.

A worker enrols with a ``worker``-role API key (``POST /workers/register``) and from then on
speaks with its own token (``Authorization: Bearer kmw_...``), which can do nothing but claim
jobs, heartbeat and post results; API keys are refused on those routes, and worker tokens on
every other route (:func:`services.api.deps.authenticated` takes only ``km_`` keys; the worker
token is :data:`services.api.deps.CurrentWorker`). The bodies are in
:mod:`services.api.schemas_workers`.

The long-poll claim is an ``async`` route: between two looks at the queue (every
:data:`POLL_INTERVAL_S`) it sleeps on the event loop, holding neither a worker thread nor a
database connection. Each look is one short transaction in the threadpool. So idle workers
waiting on claims cost the API nothing but open sockets, however many there are: they cannot
starve the threadpool or the connection pool the other routes need.

Admins list the remote workers (with the Celery workers Redis knows alive) and revoke them.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import threading
import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool

from archive import leases
from archive.models import User, Worker, utcnow
from services.api.deps import (
    AdminUser,
    ConfigDep,
    CurrentWorker,
    PageDep,
    PathId,
    SessionDep,
    WorkerRef,
    authenticated,
)
from services.api.errors import Conflict, ErrorBody, Forbidden, PayloadTooLarge, Unprocessable
from services.api.schemas import Text
from services.api.schemas_workers import (
    Accepted,
    ClaimOut,
    LeaseOut,
    Registered,
    RegisterIn,
    RemoteWorkerOut,
    ResultIn,
    SeenOut,
    WorkerList,
    check_storable,
)

log = logging.getLogger(__name__)

router = APIRouter(prefix="/workers", tags=["workers"])

#: Seconds a claim leases a job for; heartbeats extend it by as much again.
LEASE_S = 60.0
#: Longest long-poll a worker may ask for (seconds).
MAX_WAIT_S = 30.0
#: Seconds between two looks at the queue during a long-poll.
POLL_INTERVAL_S = 0.25
#: Seconds between two opportunistic reaper passes of this process (claims trigger them).
REAP_EVERY_S = 1.0
#: Largest result body accepted (bytes): a result with raw timing samples is ~100 KiB.
MAX_RESULT_BYTES = 4 * 1024 * 1024
#: Largest registration body accepted (bytes).
MAX_REGISTER_BYTES = 64 * 1024


# -- bodies ------------------------------------------------------------------------------------


def _json_body(model: type[BaseModel], max_bytes: int):
    """A dependency reading a JSON body of at most ``max_bytes`` (413 beyond, even chunked)
    and validating it as ``model`` (422 with per-field errors, like FastAPI's bodies)."""

    async def read(request: Request) -> BaseModel:
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > max_bytes:
            raise PayloadTooLarge(f"the request body is over {max_bytes} bytes", field="body")
        size, chunks = 0, []
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_bytes:
                raise PayloadTooLarge(f"the request body is over {max_bytes} bytes", field="body")
            chunks.append(chunk)
        try:
            return model.model_validate_json(b"".join(chunks))
        except ValidationError as e:
            errors = [
                {**err, "loc": ("body", *err.get("loc", ()))}
                for err in e.errors(include_input=False, include_url=False)
            ]
            raise RequestValidationError(errors) from None

    return read


def _inline(node: Any, defs: dict[str, Any]) -> Any:
    if isinstance(node, dict):
        if set(node) == {"$ref"} and node["$ref"].startswith("#/$defs/"):
            return _inline(defs[node["$ref"].removeprefix("#/$defs/")], defs)
        return {k: _inline(v, defs) for k, v in node.items()}
    if isinstance(node, list):
        return [_inline(v, defs) for v in node]
    return node


def _body_doc(model: type[BaseModel]) -> dict[str, Any]:
    # The body is read by a dependency (to bound its size): document it for OpenAPI by hand,
    # nested models inlined (their $defs would not be in the document's components).
    schema = model.model_json_schema()
    schema = _inline(schema, schema.pop("$defs", {}))
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    why = {
        409: "The job is not leased to you (any longer)",
        413: "The request body is over the size limit",
    }
    return {s: {"model": ErrorBody, "description": why[s]} for s in statuses}


JobId = Annotated[Text, Path(min_length=1, max_length=64)]


# -- the reaper --------------------------------------------------------------------------------

_reap_lock = threading.Lock()
_last_reap = [0.0]


def _reap_now_and_then(session) -> None:
    """Run the reaper at most every :data:`REAP_EVERY_S` in this process."""
    with _reap_lock:
        now = time.monotonic()
        if now - _last_reap[0] < REAP_EVERY_S:
            return
        _last_reap[0] = now
    if leases.reap(session, utcnow()):
        session.commit()


# -- routes ------------------------------------------------------------------------------------


@router.post(
    "/register",
    status_code=201,
    response_model=Registered,
    responses=_errors(413),
    openapi_extra=_body_doc(RegisterIn),
)
def register(
    session: SessionDep,
    user: Annotated[User, Depends(authenticated)],
    body: Annotated[RegisterIn, Depends(_json_body(RegisterIn, MAX_REGISTER_BYTES))],
) -> Registered:
    """Enrol a remote worker with a ``worker`` API key; returns its own token (shown once)."""
    if user.role != "worker":
        raise Forbidden(
            "only a worker key enrols remote workers: make one with"
            " `kernelmap keys create --role worker`"
        )
    worker, token = leases.enrol_worker(
        session, user.id, body.name, body.hardware_class, body.hardware
    )
    session.commit()
    log.info("remote worker %s (%s) enrolled as %d", worker.name, worker.hardware_class, worker.id)
    return Registered(worker_id=worker.id, token=token)


def _claim_once(config, worker: WorkerRef) -> ClaimOut | None:
    with config.session_factory() as session:
        _reap_now_and_then(session)
        # A read first: an idle poll then takes no write lock (SQLite has one for everyone).
        if not leases.has_queued(session, worker.hardware_class):
            session.rollback()
            return None
        job = leases.claim(session, worker.row(), LEASE_S)
        if job is None:
            session.rollback()
            return None
        out = ClaimOut(
            job_id=job.job_id,
            lease_s=LEASE_S,
            lease_expires_at=job.lease_expires_at,
            job=dict(job.payload),
        )
        session.commit()
        return out


@router.post(
    "/claim",
    response_model=ClaimOut,
    responses={204: {"description": "No job came within `wait_s`: claim again"}},
)
async def claim(
    request: Request,
    worker: CurrentWorker,
    config: ConfigDep,
    wait_s: Annotated[float, Query(ge=0, le=MAX_WAIT_S, description="Long-poll (s)")] = 20.0,
) -> Any:
    """Lease the oldest queued job of your hardware class, waiting up to ``wait_s`` for one.

    200 with the job and its lease (heartbeat before ``lease_expires_at``), or 204 when none
    came. The wait holds no thread and no database connection.
    """
    deadline = time.monotonic() + wait_s
    while True:
        # A client that went away would be leased a job it never hears of.
        if await request.is_disconnected():
            return Response(status_code=status.HTTP_204_NO_CONTENT)
        found = await run_in_threadpool(_claim_once, config, worker)
        if found is not None:
            log.info("job %s leased to remote worker %s", found.job_id, worker.name)
            return found
        left = deadline - time.monotonic()
        if left <= 0:
            return Response(status_code=status.HTTP_204_NO_CONTENT)
        await asyncio.sleep(min(POLL_INTERVAL_S, left))


@router.post("/jobs/{job_id}/heartbeat", response_model=LeaseOut, responses=_errors(409))
def heartbeat_job(
    worker: CurrentWorker,
    session: SessionDep,
    job_id: JobId,
) -> LeaseOut:
    """Extend your lease on a job by :data:`LEASE_S` seconds; 409 when it is not yours (any
    longer): stop and claim another job (a finished result may still be posted)."""
    now = utcnow()
    if not leases.extend(session, worker.row(), job_id, LEASE_S, now=now):
        session.rollback()
        raise Conflict(
            f"job {job_id} is not leased to you (any longer): its lease expired or it is done"
        )
    session.commit()
    return LeaseOut(job_id=job_id, lease_expires_at=now + dt.timedelta(seconds=LEASE_S))


@router.post(
    "/jobs/{job_id}/result",
    response_model=Accepted,
    responses=_errors(409, 413),
    openapi_extra=_body_doc(ResultIn),
)
def post_result(
    worker: CurrentWorker,
    session: SessionDep,
    job_id: JobId,
    body: Annotated[ResultIn, Depends(_json_body(ResultIn, MAX_RESULT_BYTES))],
) -> Accepted:
    """Post a job's result; idempotent: the first result is kept, later posts change nothing
    (``accepted: false``). The server marks it ``unverified`` and names the worker."""
    # Only what the worker sent (validated), not the defaults of the fields it left out.
    result = body.result.model_dump(mode="json", exclude_unset=True)
    try:
        check_storable(result)
    except ValueError as e:
        raise Unprocessable(str(e), field="result") from None
    try:
        stored = leases.complete(session, worker.row(), job_id, result)
    except leases.NotLeaseHolder as e:
        session.rollback()
        raise Conflict(str(e)) from None
    session.commit()
    if stored:
        log.info("job %s: result from remote worker %s", job_id, worker.name)
    return Accepted(accepted=stored)


@router.post("/heartbeat", response_model=SeenOut)
def heartbeat(worker: CurrentWorker, session: SessionDep) -> SeenOut:
    """Say that you are alive while idle (every request does too)."""
    seen = leases.get_worker(session, worker.id).last_seen_at
    return SeenOut(worker_id=worker.id, last_seen_at=seen)


def _out(w: Worker) -> RemoteWorkerOut:
    return RemoteWorkerOut(
        id=w.id,
        name=w.name,
        hardware_class=w.hardware_class,
        hardware=dict(w.hardware),
        token_prefix=w.token_prefix,
        created_at=w.created_at,
        last_seen_at=w.last_seen_at,
        revoked=w.revoked_at is not None,
        revoked_at=w.revoked_at,
    )


def _celery_workers(config) -> tuple[list[dict[str, Any]], str | None]:
    settings = config.settings
    if settings.redis_url is None:
        return [], None
    try:
        from services.workers import fleet

        return fleet.live_workers(settings), None
    except Exception as e:  # Redis away or misconfigured: the remote list is still useful
        log.warning("could not list the Celery workers: %s", e)
        return [], f"the Celery workers could not be listed: {e}"


@router.get("", response_model=WorkerList)
def list_workers(
    session: SessionDep, config: ConfigDep, _admin: AdminUser, page: PageDep
) -> WorkerList:
    """Remote workers (oldest first, paginated) and the Celery workers alive now."""
    rows = leases.list_workers(session, limit=page.limit, offset=page.offset)
    total = leases.count_workers(session)
    session.rollback()  # release the connection before talking to Redis
    celery, error = _celery_workers(config)
    return WorkerList(
        items=[_out(w) for w in rows],
        total=total,
        limit=page.limit,
        offset=page.offset,
        celery=celery,
        celery_error=error,
    )


@router.delete("/{worker_id}", response_model=RemoteWorkerOut)
def revoke_worker(worker_id: PathId, session: SessionDep, _admin: AdminUser) -> RemoteWorkerOut:
    """Revoke a remote worker: its token stops working, its leased jobs go back to the queue."""
    worker = leases.revoke_worker(session, worker_id)
    session.commit()
    return _out(worker)
