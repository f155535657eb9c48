"""Holding a run's lease while searching it (the database side: :mod:`archive.run_leases`).

:class:`RunOwnership` takes the lease before a search touches the run, renews it from a thread
of its own every third of the lease time, and gives the run's store its fence
(:meth:`RunOwnership.fence`). When a renewal finds the lease gone (another controller took the
run after this process stalled longer than the lease, or a clock jumped), it sets the search's
stop event and says so; every write the search still attempts raises
:class:`archive.run_leases.LeaseLost` at the fence, so nothing of the old owner lands after
the takeover. The search then leaves the run's status alone: it is the new owner's.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import threading
from collections.abc import Callable

from sqlalchemy.orm import Session, sessionmaker

from archive import run_leases
from archive.models import utcnow
from archive.run_leases import Lease, LeaseLost

log = logging.getLogger(__name__)


def default_owner() -> str:
    """A name for an unnamed owner: ``<host>:<pid>``."""
    return f"{run_leases.this_host()}:{os.getpid()}"


class RunOwnership:
    """The lease of run ``run_id`` held by ``owner`` for ``lease_s`` seconds at a time.

    Parameters
    ----------
    sessions:
        Sessions on the run's database.
    run_id, owner:
        The run and who holds it (a controller's name, or ``<host>:<pid>``).
    lease_s:
        The lease time; renewed every ``lease_s / 3``.
    clock:
        The current time (UTC); tests pass a simulated one.
    notify:
        Where the loss of the lease is said (default: the log, as a warning).
    """

    def __init__(
        self,
        sessions: sessionmaker[Session],
        run_id: int,
        owner: str,
        lease_s: float,
        *,
        clock: Callable[[], dt.datetime] = utcnow,
        notify: Callable[[str], None] | None = None,
    ) -> None:
        self.sessions = sessions
        self.run_id = run_id
        self.owner = owner
        self.lease_s = lease_s
        self.clock = clock
        self.notify = notify or log.warning
        self.lease: Lease | None = None
        self.lost = threading.Event()
        self.renewals = 0
        self._done = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self, per_user_limit: int | None = None) -> bool:
        """Take the lease now; False when another owner holds it (or the user's limit is met)."""
        with self.sessions() as s:
            lease = run_leases.acquire(
                s,
                self.run_id,
                self.owner,
                self.lease_s,
                now=self.clock(),
                per_user_limit=per_user_limit,
            )
            s.commit()
        self.lease = lease
        return lease is not None

    def holder(self) -> str | None:
        """Who holds the run's lease now (None: nobody)."""
        with self.sessions() as s:
            row = run_leases.holder(s, self.run_id, now=self.clock())
            return None if row is None else row.owner

    def keep(self, stop: threading.Event) -> None:
        """Renew the lease from a thread until :meth:`release`; on loss, set ``stop``."""
        if self.lease is None:
            raise RuntimeError("keep() before a successful acquire()")
        self._thread = threading.Thread(
            target=self._keep, args=(stop,), name=f"lease-{self.run_id}", daemon=True
        )
        self._thread.start()

    def renew(self) -> bool:
        """Renew once; False (and :attr:`lost` set) when the lease is no longer ours."""
        if self.lease is None or self.lost.is_set():
            return False
        with self.sessions() as s:
            lease = run_leases.renew(s, self.lease, self.lease_s, now=self.clock())
            s.commit()
        if lease is None:
            self._lose(self.holder())
            return False
        self.lease = lease
        self.renewals += 1
        return True

    def fence(self, session: Session) -> None:
        """The store's fence: raises :class:`LeaseLost` once the lease is not ours."""
        if self.lease is None:
            raise LeaseLost(self.run_id, self.owner, None)
        try:
            run_leases.check(session, self.lease)
        except LeaseLost as e:
            self._lose(e.holder)
            raise

    def release(self) -> None:
        """Stop renewing; expire the lease now if it is still ours (a standby may take it)."""
        self._done.set()
        if self._thread is not None:
            self._thread.join(10)
        if self.lease is not None and not self.lost.is_set():
            with self.sessions() as s:
                run_leases.release(s, self.lease, now=self.clock())
                s.commit()

    # --- internals ----------------------------------------------------------------------------

    def _lose(self, holder: str | None) -> None:
        if not self.lost.is_set():
            self.lost.set()
            self.notify(str(LeaseLost(self.run_id, self.owner, holder)))

    def _keep(self, stop: threading.Event) -> None:
        every = self.lease_s / 3
        while not self._done.wait(every):
            try:
                if not self.renew():
                    stop.set()
                    return
            except Exception:  # a database hiccup: try again; the lease covers two misses
                log.warning("run %s: renewing its lease failed; retrying", self.run_id)
                log.debug("lease renewal error", exc_info=True)
