"""Triton's compile cache, split: what the worker builds once is shared, kernels stay private.

Triton builds its driver utilities (and, before its generic launcher, one C launcher per
kernel signature) with a C compiler the first time a process needs them, into
``TRITON_CACHE_DIR``. Every candidate process has a private, empty cache directory (so one
candidate cannot plant a kernel binary for the next), which made every process pay that C
compile: seconds per candidate.

So the evaluator builds those once per worker, in a trusted process that runs only the
kernels of :mod:`evaluator_worker.triton_prebuild`, into a shared directory it then makes
read-only; candidate processes get :class:`LayeredCacheManager` (through Triton's
``TRITON_CACHE_MANAGER`` setting), which serves single files (the compiled modules) from the
shared directory first and writes only to the private one. Kernel groups (the compiled
kernels and their metadata) are never read from the shared directory: kernel caches stay
private per candidate.

The shared directory is read-only by its permissions; against a candidate running as root,
only the sandbox's own read-only mount of it makes that hold (see the README's sandbox notes).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from triton.runtime.cache import FileCacheManager

SHARED_ENV = "KERNELMAP_TRITON_SHARED_CACHE"
MANAGER = "evaluator_worker.triton_cache:LayeredCacheManager"


class LayeredCacheManager(FileCacheManager):
    """A file cache that reads the worker's shared, read-only layer before the private one."""

    def __init__(self, key: str, override: bool = False, dump: bool = False) -> None:
        super().__init__(key, override=override, dump=dump)
        shared = os.environ.get(SHARED_ENV)
        self.shared_dir = os.path.join(shared, key) if shared and not (override or dump) else None

    def get_file(self, filename: str) -> str | None:
        """The shared copy of a compiled module where there is one, else the private one."""
        if self.shared_dir is not None and not filename.startswith("__grp__"):
            path = os.path.join(self.shared_dir, filename)
            if os.path.isfile(path):
                return path
        return super().get_file(filename)


def seal(directory: str | Path) -> int:
    """Make a directory tree read-only (directories 0555, files 0444); returns the file count."""
    files = 0
    root = Path(directory)
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            os.chmod(os.path.join(dirpath, name), stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
            files += 1
    for dirpath, _dirs, _names in os.walk(root, topdown=False):
        os.chmod(dirpath, 0o555)
    return files
