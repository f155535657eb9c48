"""The timing protocol (candidate-process side) and the statistics of samples (pure).

CUDA, per sample: device sync, L2 flush (write at least 256 MB or 4x the L2), start event,
call, end event, device sync; a fresh input set from the pool for every call; a wall clock
around each sample as a cross-check (wall >= event time). Every other iteration adds a paired
sample with a device-wide sync before the end event, which also sees work left running on
other streams (``ASYNC_WORK`` when it is much slower). CPU: ``perf_counter`` around the call.

Timer functions are bound at import, before any candidate code is imported, so a candidate
that patches ``time.perf_counter`` or ``torch.cuda.Event.elapsed_time`` does not reach them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from time import perf_counter as _perf_counter
from typing import Any

import torch

from evaluator_worker.result import Stats

_elapsed_time = torch.cuda.Event.elapsed_time
_synchronize = torch.cuda.synchronize
FLUSH_MIN_BYTES = 256 << 20


class Flusher:
    """Evicts the L2 cache by writing a buffer of at least 4x its size."""

    def __init__(self, device: torch.device) -> None:
        l2 = getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 0) or 0
        n = max(FLUSH_MIN_BYTES, 4 * int(l2)) // 4
        self.buf = torch.empty(n, dtype=torch.int32, device=device)
        self.k = 0

    def __call__(self) -> None:
        self.k += 1
        self.buf.fill_(self.k)


def time_cuda(
    call: Callable[[list[Any]], Any],
    pool: list[list[Any]],
    n: int,
    flush: Flusher,
    start_index: int,
    paired: bool = True,
) -> dict[str, Any]:
    """Take ``n`` samples of ``call``; returns event, wall and synced samples (ms)."""
    events, walls, synced = [], [], []
    out = None
    idx = start_index
    for i in range(n):
        x = pool[idx % len(pool)]
        out = None  # the previous output is freed before the call, not held beside the next
        _synchronize()
        flush()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        t0 = _perf_counter()
        start.record()
        out = call(x)
        end.record()
        _synchronize()
        walls.append((_perf_counter() - t0) * 1e3)
        events.append(_elapsed_time(start, end))
        idx += 1
        if paired and i % 2 == 1:
            x = pool[idx % len(pool)]
            out = None
            _synchronize()
            flush()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            out = call(x)
            _synchronize()
            end.record()
            _synchronize()
            synced.append(_elapsed_time(start, end))
            idx += 1
    return {
        "samples_ms": events,
        "wall_ms": walls,
        "synced_ms": synced,
        "out": out,
        "last_index": (idx - 1) % len(pool),
    }


def sync_overhead(flush: Flusher, device: torch.device, n: int = 31) -> float:
    """What the paired synced sample adds on this host, in ms (median over ``n``).

    The synced sample's end event is recorded only after the CPU wakes from a device-wide
    sync; around a trivial kernel that wake-up (and the event launch) is all there is, so
    ``synced - event`` of a trivial kernel is the overhead to subtract from candidates'.
    """
    marker = torch.zeros(1, device=device)
    diffs = []
    for _ in range(n):
        per = []
        for synced in (False, True):
            _synchronize()
            flush()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            marker.add_(1)
            if synced:
                _synchronize()
            end.record()
            _synchronize()
            per.append(_elapsed_time(start, end))
        diffs.append(per[1] - per[0])
    diffs.sort()
    return max(0.0, diffs[len(diffs) // 2])


def time_cpu(
    call: Callable[[list[Any]], Any], pool: list[list[Any]], n: int, start_index: int
) -> dict[str, Any]:
    """Take ``n`` wall-clock samples of ``call`` on the CPU (ms)."""
    samples = []
    out = None
    idx = start_index
    for _ in range(n):
        x = pool[idx % len(pool)]
        out = None  # the previous output is freed before the call, not held beside the next
        t0 = _perf_counter()
        out = call(x)
        samples.append((_perf_counter() - t0) * 1e3)
        idx += 1
    return {
        "samples_ms": samples,
        "wall_ms": list(samples),
        "synced_ms": [],
        "out": out,
        "last_index": (idx - 1) % len(pool),
    }


def warm_up(
    call: Callable[[list[Any]], Any], pool: list[list[Any]], calls: int, seconds: float, cuda: bool
) -> int:
    """Call at least ``calls`` times and for at least ``seconds``; returns the count."""
    k = 0
    t0 = _perf_counter()
    while k < calls or _perf_counter() - t0 < seconds:
        call(pool[k % len(pool)])
        if cuda:
            _synchronize()
        k += 1
        if k > 100000:
            break
    return k


def stats(samples_ms: list[float]) -> Stats:
    """Median, IQR, a distribution-free 95% CI of the median, mean and min."""
    xs = sorted(float(s) for s in samples_ms)
    n = len(xs)
    if n == 0:
        raise ValueError("no samples")

    def q(p: float) -> float:
        pos = p * (n - 1)
        lo = math.floor(pos)
        hi = min(lo + 1, n - 1)
        return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)

    half = 1.96 * math.sqrt(n) / 2
    lo_i = max(0, int(math.floor(n / 2 - half)))
    hi_i = min(n - 1, int(math.ceil(n / 2 + half)))
    return Stats(
        median_ms=q(0.5),
        iqr_ms=q(0.75) - q(0.25),
        ci95_ms=(xs[lo_i], xs[hi_i]),
        mean_ms=sum(xs) / n,
        min_ms=xs[0],
        n=n,
        samples_ms=[float(s) for s in samples_ms],
    )
