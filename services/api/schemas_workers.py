"""Request and response bodies of ``/workers``: remote workers enrolling, claiming jobs with
leases and posting results, and the admins' list of the fleet.

The API's other bodies, and the helpers these build on (:func:`storable`, :class:`Page`), are in
:mod:`services.api.schemas`.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from archive.leases import HARDWARE_CLASS_RE
from evaluator_worker.verdict import Verdict
from services.api.schemas import Page, storable

#: Largest ``hardware`` object accepted, as compact JSON (bytes).
MAX_HARDWARE_BYTES = 16 * 1024


def check_storable(value: Any, where: str = "result") -> None:
    """Raise ValueError for text the database cannot hold, anywhere in a JSON value.

    ``where`` names the value in the message (``result.messages[0]: must not contain NUL``).
    """
    if isinstance(value, str):
        try:
            storable(value)
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from None
    elif isinstance(value, dict):
        for k, v in value.items():
            check_storable(k, where)
            check_storable(v, f"{where}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            check_storable(v, f"{where}[{i}]")


class RegisterIn(BaseModel):
    """A remote worker introducing itself."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200, description="What to call this worker")
    hardware_class: str = Field(
        pattern=f"^{HARDWARE_CLASS_RE.pattern}$",
        max_length=64,
        description="The queue it serves (runs dispatch to a hardware class, e.g. cuda, h100)",
    )
    hardware: dict[str, Any] = Field(
        default_factory=dict, description="GPU, memory, driver, torch and triton versions"
    )

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        v = storable(v).strip()
        if not v:
            raise ValueError("must not be blank")
        return v

    @field_validator("hardware")
    @classmethod
    def _hardware(cls, v: dict[str, Any]) -> dict[str, Any]:
        if len(json.dumps(v, separators=(",", ":"))) > MAX_HARDWARE_BYTES:
            raise ValueError(f"must be at most {MAX_HARDWARE_BYTES} bytes of JSON")
        check_storable(v, "hardware")
        return v


class Registered(BaseModel):
    """A newly enrolled worker: keep ``token``, it is shown only here."""

    worker_id: int
    token: str


class StatsIn(BaseModel):
    """Timed samples of one variant, as far as the controller reads them."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)

    median_ms: float | None = Field(default=None, gt=0)
    iqr_ms: float = Field(default=0.0, ge=0)


class TimingIn(BaseModel):
    """A result's timing block, as far as the controller reads it."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)

    method: str | None = None
    candidate: StatsIn | None = None
    eager: StatsIn | None = None
    compile: StatsIn | None = None


class ResultDoc(BaseModel):
    """An evaluation result (``EvalResult.to_dict()``): the fields the controller relies on are
    checked, the rest is kept as sent."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)

    verdict: Verdict
    correct: bool = False
    speedup_vs_eager: float | None = None
    speedup_vs_compile: float | None = None
    timing: TimingIn | None = None
    messages: list[str] = Field(default_factory=list)
    features: dict[str, Any] = Field(default_factory=dict)
    hardware: dict[str, Any] = Field(default_factory=dict)
    params: dict[str, Any] = Field(default_factory=dict)
    stages_s: dict[str, Any] = Field(default_factory=dict)
    device: str | None = None


class ResultIn(BaseModel):
    """A worker's result for a job it claimed."""

    model_config = ConfigDict(extra="forbid")

    result: ResultDoc


class Accepted(BaseModel):
    """Whether this post's result was stored (False: the job already had one; nothing done)."""

    accepted: bool


class ClaimOut(BaseModel):
    """A job leased to the calling worker until ``lease_expires_at``."""

    job_id: str
    lease_s: float
    lease_expires_at: dt.datetime
    job: dict[str, Any] = Field(description="The job message (services.workers.tasks.job_message)")


class LeaseOut(BaseModel):
    """A lease after a heartbeat."""

    job_id: str
    lease_expires_at: dt.datetime


class SeenOut(BaseModel):
    """A worker after an idle heartbeat."""

    worker_id: int
    last_seen_at: dt.datetime | None


class RemoteWorkerOut(BaseModel):
    """An enrolled remote worker (its token is never shown again)."""

    id: int
    kind: str = "remote"
    name: str
    hardware_class: str
    hardware: dict[str, Any]
    token_prefix: str
    created_at: dt.datetime | None
    last_seen_at: dt.datetime | None
    revoked: bool
    revoked_at: dt.datetime | None


class WorkerList(Page[RemoteWorkerOut]):
    """A page of remote workers, plus every Celery worker alive now (not paginated)."""

    celery: list[dict[str, Any]] = Field(
        default_factory=list, description="Live Celery workers (workers.fleet.live_workers)"
    )
    celery_error: str | None = Field(
        default=None, description="Why the Celery workers could not be listed"
    )
