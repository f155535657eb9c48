"""``/controllers`` (admin): the controllers sharing this database and the runs each owns.

Each controller heartbeats its row and holds a lease per run it drives
(:mod:`archive.run_leases`); ``kernelmap run`` processes driving their own runs hold leases
too and are listed after the controllers, with no heartbeat of their own.
"""

from __future__ import annotations

import datetime as dt

from fastapi import APIRouter
from pydantic import BaseModel, Field

from archive import run_leases
from services.api.deps import AdminUser, ConfigDep, SessionDep

router = APIRouter(prefix="/controllers", tags=["controllers"])

#: A controller not seen for this many leases is listed as not alive.
ALIVE_LEASES = 2.0


class LeaseOut(BaseModel):
    """A run's lease held by a controller."""

    run_id: int
    epoch: int = Field(description="Grows with each change of owner (the fencing token)")
    expires_in_s: float = Field(description="Seconds until the lease expires unless renewed")
    renewals: int = Field(description="Renewals by this owner since it took the run")


class ControllerOut(BaseModel):
    """One controller (or ``kernelmap run`` process) and the runs it owns now."""

    name: str
    host: str | None
    pid: int | None
    max_runs: int | None = Field(description="Runs it searches at once at most")
    started_at: dt.datetime | None
    seen_s: float | None = Field(description="Seconds since its last heartbeat")
    alive: bool
    runs: list[LeaseOut]


class ControllerList(BaseModel):
    """Every controller known to the database, by name."""

    items: list[ControllerOut]
    lease_s: float = Field(description="The lease time this API's settings give controllers")


@router.get("", response_model=ControllerList)
def list_controllers(session: SessionDep, config: ConfigDep, _admin: AdminUser) -> ControllerList:
    """The controllers, whether each is alive, and the runs each owns (with their leases)."""
    rows = run_leases.list_controllers(session, alive_s=ALIVE_LEASES * config.settings.lease_s)
    return ControllerList(items=[ControllerOut(**r) for r in rows], lease_s=config.settings.lease_s)
