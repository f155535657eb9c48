"""Typed errors a user can cause; each message says what was wrong and how to fix it."""

from __future__ import annotations

from kernelmap_errors import KernelmapError

__all__ = ["CandidateFileError", "KernelmapError", "SandboxError", "TaskError"]


class TaskError(KernelmapError):
    """The task file is not a valid kernel task.

    Parameters
    ----------
    message:
        What is wrong and how to fix it.
    path:
        The task file.
    line:
        The 1-based line the problem is on, when there is one.
    """

    def __init__(self, message: str, path: str | None = None, line: int | None = None) -> None:
        self.path = path
        self.line = line
        self.reason = message
        where = ""
        if path:
            where = f"{path}:{line}: " if line else f"{path}: "
        super().__init__(f"invalid task: {where}{message}")


class CandidateFileError(KernelmapError):
    """The candidate file cannot be read at all (missing, not UTF-8, not a .py file)."""


class SandboxError(KernelmapError):
    """The sandbox cannot be set up here (strict mode): no untrusted code was run."""
