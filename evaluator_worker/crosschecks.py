"""Verdicts from timings and traces (pure functions, testable without a GPU).

- :func:`score`: speedups over the baselines; ``ASYNC_WORK`` when a device-wide sync before
  the end event makes the call much slower (work left running), scored at the synced time;
  ``QUARANTINE`` over 10x faster than eager.
- :func:`check_profile`: ``ASYNC_WORK`` for kernels on another stream; ``BASELINE_WRAP`` when a
  candidate that defines custom kernels spends most GPU time in library kernels.
- :func:`check_floor`: ``IMPOSSIBLE`` below the speed-of-light floor.
- :func:`derive_features`: the archive's features from the compiled kernels and the trace.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from evaluator_worker.result import EvalResult, Stats, Timing
from evaluator_worker.verdict import Verdict

ASYNC_RATIO = 2.0
ASYNC_MIN_MS = 0.02
LIBRARY_SHARE = 0.5


def ratio(base: Stats | None, cand: Stats) -> float | None:
    """``base / cand`` medians (a speedup), or None."""
    if base is None or cand.median_ms <= 0:
        return None
    return base.median_ms / cand.median_ms


def shifted(s: Stats, by_ms: float) -> Stats:
    """``s`` with every sample lowered by ``by_ms`` (never below zero)."""
    lo = lambda x: max(0.0, x - by_ms)  # noqa: E731
    return dataclasses.replace(
        s,
        median_ms=lo(s.median_ms),
        ci95_ms=(lo(s.ci95_ms[0]), lo(s.ci95_ms[1])),
        mean_ms=lo(s.mean_ms),
        min_ms=lo(s.min_ms),
        samples_ms=[lo(x) for x in s.samples_ms],
    )


def score(res: EvalResult, t: Timing, quarantine_factor: float) -> Stats:
    """Set the speedups and the timing verdicts; returns the stats the candidate is scored at.

    The synced sample's end event waits for the CPU to wake from a device-wide sync, which
    costs tens of microseconds on some hosts: ``t.sync_overhead_ms`` (measured on the same
    host around a trivial kernel) is subtracted before the synced time is compared or scored,
    so honest microsecond kernels are not taken for work left running.
    """
    cand = t.candidate
    synced = t.candidate_synced
    if synced is not None and t.sync_overhead_ms:
        synced = shifted(synced, t.sync_overhead_ms)
    if (
        synced is not None
        and synced.median_ms > ASYNC_RATIO * cand.median_ms
        and synced.median_ms - cand.median_ms > ASYNC_MIN_MS
    ):
        res.verdict = Verdict.ASYNC_WORK
        overhead = (
            f" after subtracting this host's sync overhead of {t.sync_overhead_ms:.4g} ms"
            if t.sync_overhead_ms
            else ""
        )
        res.messages.append(
            "with a device-wide sync before the end event the call takes"
            f" {synced.median_ms:.4g} ms{overhead}, {synced.median_ms / cand.median_ms:.1f}x"
            " the event time: work is left running after the call returns; scored at the"
            " synced time"
        )
        cand = synced
    res.speedup_vs_eager = ratio(t.eager, cand)
    res.speedup_vs_compile = ratio(t.compile, cand)
    if (
        res.speedup_vs_eager is not None
        and res.speedup_vs_eager > quarantine_factor
        and res.verdict == Verdict.OK
    ):
        res.verdict = Verdict.QUARANTINE
        res.messages.append(
            f"{res.speedup_vs_eager:.1f}x faster than eager (over {quarantine_factor:g}x):"
            " quarantined until re-measured by an independent method"
        )
    return cand


def check_profile(res: EvalResult, prof: dict[str, Any], custom_kernels: list[str]) -> None:
    """Verdicts from a profiler trace of one call (see :func:`features.profile_call`)."""
    side = prof.get("side_stream_kernels") or 0
    if side and res.verdict in (Verdict.OK, Verdict.QUARANTINE):
        res.verdict = Verdict.ASYNC_WORK
        res.messages.append(f"{side} kernels ran on another CUDA stream than the call's")
    own, lib = prof.get("own_us") or 0.0, prof.get("library_us") or 0.0
    total = own + lib
    if (
        custom_kernels
        and total > 0
        and lib > LIBRARY_SHARE * total
        and res.verdict in (Verdict.OK, Verdict.QUARANTINE)
    ):
        res.verdict = Verdict.BASELINE_WRAP
        res.messages.append(
            f"the candidate defines custom kernels {custom_kernels}, but"
            f" {100 * lib / total:.0f}% of the GPU time is in library kernels"
        )


def check_floor(res: EvalResult, scored: Stats, floor_ms: float, basis: str, margin: float) -> None:
    """``IMPOSSIBLE`` when the scored median is below ``floor_ms * margin``."""
    measured = scored.median_ms
    res.features["floor_fraction"] = floor_ms / measured if measured > 0 else None
    if measured < floor_ms * margin:
        res.verdict = Verdict.IMPOSSIBLE
        res.messages.append(
            f"median {measured:.4g} ms is below the speed-of-light floor {floor_ms:.4g} ms"
            f" ({basis}) with a {100 * (1 - margin):.0f}% margin"
        )


def derive_features(feats: dict[str, Any], prof: dict[str, Any]) -> dict[str, Any]:
    """Archive features from Triton/CuPy kernel data and the profiler trace."""
    tri = [k for k in feats.get("triton", []) if "error" not in k]
    out: dict[str, Any] = {
        "triton_kernels": feats.get("triton", []),
        "cupy_kernels": feats.get("cupy", []),
    }
    if tri:
        out.update(
            n_regs=max(k["n_regs"] for k in tri),
            n_spills=max(k["n_spills"] for k in tri),
            shared_bytes=max(k["shared"] for k in tri),
            num_warps=max(k["num_warps"] for k in tri),
            num_stages=max(k["num_stages"] for k in tri),
            tensor_cores=any(k["tensor_cores"] for k in tri),
            vector_load_v4=any(k["vector_load_v4"] for k in tri),
        )
    if prof:
        out.update(
            kernel_count=prof.get("kernel_count"),
            kernels=prof.get("kernels", [])[:32],
            library_us=prof.get("library_us"),
            own_us=prof.get("own_us"),
        )
    return out
