"""The broker's one error type, in a leaf module that every broker module may import."""

from __future__ import annotations

from kernelmap_errors import KernelmapError


class EmbeddedRedisError(KernelmapError):
    """The private Redis server of embedded mode cannot be found, started or stopped."""
