"""The controller: searches the API's runs, sharing them with any other controllers.

Controllers share the API's active runs (runs with an owner) through the database: a
controller drives a run only while it holds that run's lease (:mod:`archive.run_leases`,
held by :class:`services.runs.ownership.RunOwnership`), so one run has one owner at any time
however many controllers run. Each tick a controller heartbeats its row, stops runs that were
paused or cancelled, and takes runs nobody holds (``queued`` ones in order, and ``running``
ones whose owner died: its lease expired, or its process is gone from this host), at most
``max_active_runs`` for itself and ``max_runs_per_user`` per user across all controllers.

Each run is searched in a thread of its own with :func:`services.runs.search.search_stored_run`
(one pyribs archive per run, owned by that thread). Taking over a run is a restart: its archive
is rebuilt from the database and the jobs that were in flight are dispatched again under their
own job ids (ingestion keeps one result per job id, see :mod:`archive.run_store`). A
controller that loses a lease (it stalled longer than the lease and another took the run)
stops that run's search at once and says so; its writes are fenced out.

A stopped controller leaves its runs ``running`` and releases their leases, so a standby takes
them at once. Runs made by the local CLI (no owner) are never touched: the process that made
them holds their leases.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import re
import threading
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from archive import repository, run_control, run_leases
from archive.run_leases import LeaseLost
from archive.status import RunStatus
from kernelmap_errors import KernelmapError
from services.config import Settings
from services.runs import wiring
from services.runs.ownership import RunOwnership, default_owner
from services.runs.seeds import Seed

log = logging.getLogger(__name__)

#: What a controller's name may be (as ``Settings.controller_id``).
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}")

#: How often the controller looks for new, paused and cancelled runs when nobody wakes it.
TICK_S = 1.0


class ControllerError(KernelmapError):
    """This controller cannot start (another live controller has its name)."""


@dataclasses.dataclass
class _Active:
    run_id: int
    owner_id: int | None
    stop: threading.Event
    thread: threading.Thread


class Controller:
    """Starts, stops and resumes the API's runs (see the module notes).

    Parameters
    ----------
    settings:
        The service's settings (broker, limits, evaluator defaults).
    session_factory:
        Sessions on an up-to-date database.
    make_dispatcher:
        ``make_dispatcher(run_id=, device=, task_file=, eval_config=, workers=)`` -> the
        run's :class:`evolution.ports.Dispatcher` (``device`` is the hardware class); default:
        :func:`services.runs.wiring.make_dispatcher`'s ``fleet`` route (the Celery fleet on
        ``settings.redis_url`` and remote workers).
    probe_templates:
        ``probe_templates(task_source, device)`` -> (seeds, notes); default: the sandboxed
        template matcher of :mod:`services.runs.template_probe`.
    name:
        This controller's name among those sharing the database; default:
        ``settings.controller_id``, else ``<host>:<pid>``.
    """

    def __init__(
        self,
        settings: Settings,
        session_factory: sessionmaker[Session],
        *,
        make_dispatcher: Callable[..., Any] | None = None,
        probe_templates: Callable[[str, str], tuple[list[Seed], list[str]]] | None = None,
        name: str | None = None,
    ) -> None:
        self.settings = settings
        self.name = name or settings.controller_id or default_owner()
        if not NAME_RE.fullmatch(self.name):
            raise ControllerError(
                f"controller name {self.name!r}: use 1 to 128 letters, digits and . _ : @ -,"
                " starting with a letter or digit"
            )
        self.sessions = session_factory
        self.make_dispatcher = make_dispatcher or functools.partial(
            wiring.make_dispatcher, settings, route="fleet", session_factory=session_factory
        )
        self.probe_templates = probe_templates
        self._active: dict[int, _Active] = {}
        self._wake = threading.Event()
        self._lock = threading.Lock()

    # --- public -------------------------------------------------------------------------------

    def wake(self, run_id: int | None = None) -> None:
        """Look at the runs now rather than at the next tick (the API calls this on changes)."""
        self._wake.set()

    @property
    def active_runs(self) -> list[int]:
        """Ids of the runs being searched now."""
        with self._lock:
            return sorted(self._active)

    def check_name(self) -> None:
        """Raise :class:`ControllerError` if a live controller elsewhere has this name."""
        with self.sessions() as s:
            for row in run_leases.list_controllers(s, alive_s=2 * self.settings.lease_s):
                same = (row["host"], row["pid"]) == (run_leases.this_host(), os.getpid())
                if row["name"] == self.name and row["alive"] and not same:
                    raise ControllerError(
                        f"a controller named {self.name!r} is alive on {row['host']} (pid"
                        f" {row['pid']}, seen {row['seen_s']:.0f} s ago): give this one another"
                        " --id (or KERNELMAP_CONTROLLER_ID)"
                    )

    def tick(self) -> None:
        """One pass: heartbeat, stop runs that were paused or cancelled, take free runs."""
        with self._lock:
            for run_id, a in list(self._active.items()):
                if not a.thread.is_alive():
                    del self._active[run_id]
            with self.sessions() as s:
                run_leases.heartbeat(s, self.name, max_runs=self.settings.max_active_runs)
                s.commit()
                for run_id, a in self._active.items():
                    if run_control.status_of(s, run_id) not in run_control.ACTIVE:
                        a.stop.set()  # paused or cancelled by its owner
                held = {
                    lease.run_id
                    for lease in run_leases.live_leases(s)
                    if not run_leases.dead_locally(lease)  # its process is gone: take it
                }
                candidates = run_control.managed_runs(s)
                todo = [
                    (r.id, r.owner_id)
                    for r in candidates
                    if r.id not in self._active and r.id not in held
                ]
            for run_id, owner_id in todo:
                if len(self._active) >= self.settings.max_active_runs:
                    break
                owned = sum(1 for a in self._active.values() if a.owner_id == owner_id)
                if owned >= self.settings.max_runs_per_user:
                    continue  # stays queued until one of its owner's runs ends
                self._start(run_id, owner_id)

    def serve_forever(self, stop: threading.Event) -> None:
        """Tick until ``stop`` is set, then stop every run (they stay ``running``)."""
        self.check_name()
        log.info(
            "controller %s started (leases of %g s, up to %d runs)",
            self.name,
            self.settings.lease_s,
            self.settings.max_active_runs,
        )
        try:
            while not stop.is_set():
                try:
                    self.tick()
                except Exception:  # a database hiccup must not end the controller
                    log.exception("controller tick failed; retrying")
                self._wake.wait(TICK_S)
                self._wake.clear()
        finally:
            self.shutdown()

    def shutdown(self, timeout_s: float = 30.0) -> None:
        """Stop every run's search and wait for their threads (runs stay ``running``)."""
        with self._lock:
            active = list(self._active.values())
        for a in active:
            a.stop.set()
        deadline = time.monotonic() + timeout_s
        for a in active:
            a.thread.join(max(0.0, deadline - time.monotonic()))
        with self._lock:
            self._active = {k: v for k, v in self._active.items() if v.thread.is_alive()}
        try:
            with self.sessions() as s:
                run_leases.heartbeat(
                    s, self.name, max_runs=self.settings.max_active_runs, stopping=True
                )
                s.commit()
        except Exception:  # the database is away: the row simply ages out
            log.debug("could not record the controller's stop", exc_info=True)
        log.info("controller %s stopped", self.name)

    # --- internals ----------------------------------------------------------------------------

    def _start(self, run_id: int, owner_id: int | None) -> None:
        stop = threading.Event()
        thread = threading.Thread(
            target=self._search, args=(run_id, stop), name=f"run-{run_id}", daemon=True
        )
        self._active[run_id] = _Active(run_id, owner_id, stop, thread)
        thread.start()

    def _search(self, run_id: int, stop: threading.Event) -> None:
        from services.runs.search import LOST, search_stored_run

        ownership = RunOwnership(self.sessions, run_id, self.name, self.settings.lease_s)
        try:
            if not ownership.acquire(per_user_limit=self.settings.max_runs_per_user):
                # Another controller took it first, or its user has runs enough elsewhere.
                log.debug("run %s: not taken (held by %s)", run_id, ownership.holder())
                return
            ownership.keep(stop)
            log.info(
                "run %s started by controller %s (lease epoch %s)",
                run_id,
                self.name,
                ownership.lease.epoch,
            )
            summary = search_stored_run(
                self.settings,
                self.sessions,
                run_id,
                stop=stop,
                ownership=ownership,
                make_dispatcher=self.make_dispatcher,
                probe_templates=self.probe_templates,
                status_on_stop=None,
            )
            if summary.get("status") == LOST:
                log.warning(
                    "run %s: controller %s lost its lease to %s and stopped dispatching and"
                    " ingesting for it",
                    run_id,
                    self.name,
                    summary.get("owner") or "another controller",
                )
                return
            log.info(
                "run %s %s after %s evaluations",
                run_id,
                summary.get("status"),
                summary.get("evaluations"),
            )
        except Exception as e:
            # search_stored_run marked the run failed with this error; the controller goes on.
            log.exception("run %s failed", run_id)
            with self.sessions() as s:
                try:
                    ownership.fence(s)  # only the run's owner may say it failed
                except LeaseLost:
                    return
                if run_control.status_of(s, run_id) in run_control.ACTIVE:
                    error = f"{type(e).__name__}: {e}"
                    repository.set_run_status(s, run_id, RunStatus.FAILED, error=error)
                    s.commit()
        finally:
            if ownership.lease is not None:
                ownership.release()
            self._wake.set()  # a slot is free: start a queued run
