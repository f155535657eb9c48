"""The LLM emitter's repair queue: its failed children waiting for a ``repair`` request.

The newest failures are repaired first and each at most once; at most ``size`` wait (older ones
drop out). On resume the queue is restored from the ids the state saved: the loop re-tells the
stored outcomes first (:meth:`Repairs.failed` collects their views), then :meth:`Repairs.settle`
keeps, in the saved order, those the state said were waiting.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable

from evolution.llm.prompts import ParentView


class Repairs:
    """Failed candidates to repair (see the module notes)."""

    def __init__(self, size: int = 8) -> None:
        self._queue: collections.deque[ParentView] = collections.deque(maxlen=size)
        self._done: set[int] = set()
        self._saved: list[int] | None = None  # ids restored, until settle()
        self._views: dict[int, ParentView] = {}
        self._popped: dict[int, ParentView] = {}

    def __bool__(self) -> bool:
        return bool(self._queue)

    def failed(self, view: ParentView) -> None:
        """A child of the emitter failed (live, or re-told on resume)."""
        if view.candidate_id in self._done:
            return
        if self._saved is None:
            self._queue.append(view)
        else:
            self._views[view.candidate_id] = view

    def pop(self) -> ParentView:
        """The newest failure, marked repaired."""
        view = self._queue.pop()
        self._done.add(view.candidate_id)
        self._popped = {view.candidate_id: view}  # what unpop() can put back
        return view

    def unpop(self, candidate_id: int) -> None:
        """Undo the last :meth:`pop` of ``candidate_id`` (its repair request was not sent)."""
        if candidate_id in self._done and candidate_id in self._popped:
            self._done.discard(candidate_id)
            self._queue.append(self._popped.pop(candidate_id))

    def to_json(self) -> dict[str, list[int]]:
        """The ids waiting (oldest first) and those repaired."""
        waiting = self._saved if self._saved is not None else [v.candidate_id for v in self._queue]
        return {"waiting": list(waiting), "done": sorted(self._done)}

    def restore(self, waiting: Iterable[int], done: Iterable[int]) -> None:
        """Start a resume from :meth:`to_json`'s lists; :meth:`settle` finishes it."""
        self._saved = [int(i) for i in waiting]
        self._done = {int(i) for i in done}
        self._views = {}
        self._queue.clear()

    def settle(self) -> bool:
        """After the stored outcomes were re-told: the queue as it was saved. Returns whether
        a restore was pending (False: nothing to do)."""
        if self._saved is None:
            return False
        ids, self._saved = self._saved, None
        self._queue.extend(self._views[i] for i in ids if i in self._views)
        self._views = {}
        return True
