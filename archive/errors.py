"""Typed errors of the archive that a user can cause (unknown ids, a database from the future)."""

from __future__ import annotations

from kernelmap_errors import KernelmapError


class NotFoundError(KernelmapError, LookupError):
    """A task, run or candidate id that the database does not hold."""

    def __init__(self, kind: str, ident: object, hint: str = "") -> None:
        self.kind = kind
        self.ident = ident
        super().__init__(f"no {kind} with id {ident}" + (f": {hint}" if hint else ""))


class RunNotFound(NotFoundError):
    """No run has this id."""

    def __init__(self, run_id: object) -> None:
        super().__init__("run", run_id, "`kernelmap runs` lists the runs")


class TaskNotFound(NotFoundError):
    """No task has this id."""

    def __init__(self, task_id: object) -> None:
        super().__init__("task", task_id)


class CandidateNotFound(NotFoundError):
    """No candidate has this id."""

    def __init__(self, candidate_id: object) -> None:
        super().__init__(
            "candidate", candidate_id, "`kernelmap candidates RUN_ID` lists a run's candidates"
        )


class SchemaError(KernelmapError):
    """The database's schema cannot be brought to this version of kernelmap."""
