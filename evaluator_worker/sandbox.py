"""Confining a freshly forked candidate process before any candidate code runs.

The child gets: a new session (so a timeout ``killpg``s everything it started), its own
network namespace where the host permits it (loopback then has no address: nothing leaves),
private cache and home directories, resource limits (no core dumps, bounded file sizes and
descriptors, an address-space limit on the CPU; CUDA processes cannot take one because the
driver reserves huge virtual ranges), and stdout/stderr redirected to a capture file the judge
reads, so nothing a candidate prints reaches our own output.
"""

from __future__ import annotations

import ctypes
import os
import resource
from pathlib import Path
from typing import Any

CLONE_NEWNET = 0x40000000


def _unshare_net() -> str | None:
    """Enter a new, empty network namespace; the reason when the host does not permit it."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.unshare(CLONE_NEWNET) != 0:
            return f"unshare(CLONE_NEWNET) failed: {os.strerror(ctypes.get_errno())}"
    except OSError as e:
        return f"unshare unavailable: {e}"
    return None


def _limit(which: int, value: int) -> None:
    """Lower both limits to ``value`` (never raising a hard limit the host already set)."""
    _soft, hard = resource.getrlimit(which)
    if hard != resource.RLIM_INFINITY:
        value = min(value, hard)
    resource.setrlimit(which, (value, value))


def enter(opts: dict[str, Any], capture_fd: int) -> dict[str, Any]:
    """Apply the sandbox in the current (child) process; returns what was applied.

    ``opts``: ``workdir`` (private directory), ``device`` (``cpu``/``cuda``),
    ``memory_limit_mb``, ``isolate_network`` (bool), ``interpret`` (Triton interpreter),
    ``triton_shared_cache`` (the worker's read-only layer of Triton modules) and, for the
    evaluator's prebuild process only, ``triton_cache_dir`` (where that layer is built).
    """
    os.setsid()
    os.dup2(capture_fd, 1)
    os.dup2(capture_fd, 2)
    os.close(capture_fd)
    applied: dict[str, Any] = {"session": True}
    work = Path(opts["workdir"])
    env = {
        "HOME": work / "home",
        "TMPDIR": work / "tmp",
        "TRITON_CACHE_DIR": work / "triton",
        "CUPY_CACHE_DIR": work / "cupy",
        "TORCH_EXTENSIONS_DIR": work / "torch_extensions",
        "TORCHINDUCTOR_CACHE_DIR": Path(opts.get("inductor_cache") or work / "inductor"),
    }
    if opts.get("triton_cache_dir"):  # the evaluator's own prebuild process only
        env["TRITON_CACHE_DIR"] = Path(opts["triton_cache_dir"])
    for key, path in env.items():
        path.mkdir(parents=True, exist_ok=True)
        os.environ[key] = str(path)
    os.environ["TRITON_INTERPRET"] = "1" if opts.get("interpret") else "0"
    if opts.get("triton_shared_cache"):
        # Driver utilities and launchers built once per worker, read-only (triton_cache.py).
        os.environ["TRITON_CACHE_MANAGER"] = "evaluator_worker.triton_cache:LayeredCacheManager"
        os.environ["KERNELMAP_TRITON_SHARED_CACHE"] = str(opts["triton_shared_cache"])
        applied["triton_shared_cache"] = True
    os.environ.pop("KERNELMAP_API_KEY", None)
    os.chdir(work)
    if opts.get("isolate_network", True):
        why = _unshare_net()
        applied["network_isolated"] = why is None
        if why:
            applied["network_note"] = why
    _limit(resource.RLIMIT_CORE, 0)
    _limit(resource.RLIMIT_FSIZE, 1 << 30)
    _limit(resource.RLIMIT_NOFILE, 4096)
    if opts.get("device") == "cpu" and opts.get("memory_limit_mb"):
        _limit(resource.RLIMIT_AS, int(opts["memory_limit_mb"]) << 20)
        applied["memory_limit_mb"] = int(opts["memory_limit_mb"])
    return applied
