"""The CLI's own error: a command line that is wrong (one line on stderr, exit status 2)."""

from __future__ import annotations

from kernelmap_errors import KernelmapError


class UsageError(KernelmapError):
    """The command line itself is wrong."""
