"""The controller: the one process that searches the API's runs.

It owns every active run made through the API (runs with an owner): it starts ``queued`` runs
(in order, at most ``max_runs_per_user`` at once per owner and ``max_active_runs`` in all),
searches each in a thread of its own with :func:`services.runs.search.search_stored_run` (one
pyribs archive per run, owned by that thread), notices when an owner pauses or cancels a run,
and when it starts it resumes the runs a previous controller left ``running``: their archives
are rebuilt from the database and the jobs that were in flight are dispatched again under
their own job ids (ingestion keeps one result per job id, see :mod:`archive.run_store`).

A stopped controller leaves its runs ``running`` so the next one resumes them. Runs made by
the local CLI (no owner) are never touched: the process that made them owns them. Run one
controller per database.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from archive import repository, run_control
from archive.status import RunStatus
from services.config import Settings
from services.runs import wiring
from services.runs.seeds import Seed

log = logging.getLogger(__name__)

#: How often the controller looks for new, paused and cancelled runs when nobody wakes it.
TICK_S = 1.0


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
    """

    def __init__(
        self,
        settings: Settings,
        session_factory: sessionmaker[Session],
        *,
        make_dispatcher: Callable[..., Any] | None = None,
        probe_templates: Callable[[str, str], tuple[list[Seed], list[str]]] | None = None,
    ) -> None:
        self.settings = settings
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

    def tick(self) -> None:
        """One pass: stop runs that were paused or cancelled, start what the limits allow."""
        with self._lock:
            for run_id, a in list(self._active.items()):
                if not a.thread.is_alive():
                    del self._active[run_id]
            with self.sessions() as s:
                for run_id, a in self._active.items():
                    if run_control.status_of(s, run_id) not in run_control.ACTIVE:
                        a.stop.set()  # paused or cancelled by its owner
                candidates = run_control.managed_runs(s)
                todo = [(r.id, r.owner_id) for r in candidates if r.id not in self._active]
            for run_id, owner_id in todo:
                if len(self._active) >= self.settings.max_active_runs:
                    break
                owned = sum(1 for a in self._active.values() if a.owner_id == owner_id)
                if owned >= self.settings.max_runs_per_user:
                    continue  # stays queued until one of its owner's runs ends
                self._start(run_id, owner_id)

    def serve_forever(self, stop: threading.Event) -> None:
        """Tick until ``stop`` is set, then stop every run (they stay ``running``)."""
        log.info("controller started")
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
        log.info("controller stopped")

    # --- internals ----------------------------------------------------------------------------

    def _start(self, run_id: int, owner_id: int | None) -> None:
        stop = threading.Event()
        thread = threading.Thread(
            target=self._search, args=(run_id, stop), name=f"run-{run_id}", daemon=True
        )
        self._active[run_id] = _Active(run_id, owner_id, stop, thread)
        thread.start()
        log.info("run %s started", run_id)

    def _search(self, run_id: int, stop: threading.Event) -> None:
        from services.runs.search import search_stored_run

        try:
            summary = search_stored_run(
                self.settings,
                self.sessions,
                run_id,
                stop=stop,
                make_dispatcher=self.make_dispatcher,
                probe_templates=self.probe_templates,
                status_on_stop=None,
            )
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
                if run_control.status_of(s, run_id) in run_control.ACTIVE:
                    error = f"{type(e).__name__}: {e}"
                    repository.set_run_status(s, run_id, RunStatus.FAILED, error=error)
                    s.commit()
        finally:
            self._wake.set()  # a slot is free: start a queued run
