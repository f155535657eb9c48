"""The one base class of every error a user can cause, shared by every package.

A leaf module (it imports nothing of kernelmap), so the evaluator, the search core, the archive
and the service may all derive their typed errors from it without importing one another. The
CLI and the API turn any :class:`KernelmapError` into a clear message (exit status 2) or a JSON
error response; anything else is a bug. See docs/architecture.md, "Errors".
"""

from __future__ import annotations


class KernelmapError(Exception):
    """Base class of every error a user can cause (bad file, bad request, bad option)."""
