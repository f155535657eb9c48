"""Memory discipline: what a task needs, whether the device has it, and what a process used.

KernelBench level-1 inputs reach 6.4 GB, and the judge, the candidate and the baseline
process share one GPU, so an evaluation must know its need before it starts (a task that
cannot fit is refused once, with the figures, instead of every candidate dying of
``OutOfMemoryError``) and every process gives cached blocks back when a stage ends.

Units below: ``I`` is the bytes of one input set, ``O`` the bytes of one output set. The
processes live at the same time, in two phases:

- correctness: the judge makes the float64 reference, ``3I + 2O`` at its peak (the task's own
  float64 forward: inputs in both dtypes, the float64 output), while the candidate holds
  its guarded inputs and the two outputs of the first trial, ``I + 3O`` (one more ``O`` of
  NaN poison, freed before the call);
- timing: the candidate and the baseline process each hold a pool of ``P`` input sets and
  their last outputs (``PI + 2O`` each), plus the L2 flush buffer; the judge then
  re-computes one float64 reference for the re-check (``3I + 2O``) after the baseline
  process has gone.

Each CUDA process also holds its context (:data:`CUDA_CONTEXT_BYTES`, measured as a few
hundred MB on H100/H200-class GPUs).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch

CUDA_CONTEXT_BYTES = 600 << 20
FLUSH_BYTES = 256 << 20
HEADROOM = 1.10  # fragmentation of the caching allocator, the task's own temporaries

_START: dict[str, Any] = {}


@dataclasses.dataclass(frozen=True)
class Need:
    """The device memory one evaluation of a task needs at its peak (bytes)."""

    input_bytes: int
    output_bytes: int
    pool_sets: int

    @property
    def correctness_bytes(self) -> int:
        """Reference child (float64 forward), judge (its copies) and candidate, in the trials."""
        i, o = self.input_bytes, self.output_bytes
        return (3 * i + 2 * o) + (i + 2 * o) + (i + 3 * o) + 3 * CUDA_CONTEXT_BYTES

    @property
    def timing_bytes(self) -> int:
        """Candidate and baseline processes during timing (the judge holds no tensors)."""
        i, o = self.input_bytes, self.output_bytes
        per_process = self.pool_sets * i + 2 * o + FLUSH_BYTES + CUDA_CONTEXT_BYTES
        return 2 * per_process + 2 * CUDA_CONTEXT_BYTES  # judge and the idle reference child

    @property
    def recheck_bytes(self) -> int:
        """The float64 reference of the re-check and the judge's copy, the candidate's pool."""
        i, o = self.input_bytes, self.output_bytes
        cand = self.pool_sets * i + 2 * o + FLUSH_BYTES
        return (3 * i + 2 * o) + 2 * o + cand + 3 * CUDA_CONTEXT_BYTES

    @property
    def peak_bytes(self) -> int:
        """The largest phase, with headroom for fragmentation."""
        peak = max(self.correctness_bytes, self.timing_bytes, self.recheck_bytes)
        return int(peak * HEADROOM)

    def describe(self) -> str:
        """One line with the figures in GiB."""
        g = 1 << 30
        return (
            f"{self.peak_bytes / g:.1f} GiB at its peak (inputs {self.input_bytes / g:.2f} GiB,"
            f" outputs {self.output_bytes / g:.2f} GiB, a timing pool of {self.pool_sets}"
            f" input sets; judge, reference, candidate and baseline processes together)"
        )


def pool_sets(input_bytes: int, pool_bytes: int, per_round: int) -> int:
    """Input sets in a timing pool: at least 2, at most one per call of a round."""
    return int(min(per_round, max(2, pool_bytes // max(1, input_bytes))))


def free_bytes(device: torch.device) -> int | None:
    """Free memory of a CUDA device as the driver reports it (None on the CPU)."""
    if device.type != "cuda":
        return None
    free, _total = torch.cuda.mem_get_info(device)
    return int(free)


def release_cached(device: torch.device | None) -> None:
    """Give the caching allocator's free blocks back to the device (others share the GPU)."""
    if device is not None and device.type == "cuda" and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def _status_bytes(field: str) -> int | None:
    """A ``VmXXX`` line of ``/proc/self/status`` in bytes (None where there is none)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def reset_peak_rss() -> bool:
    """Reset this process's peak RSS (``VmHWM``) to its current RSS; False where unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def mark_start() -> None:
    """Record the RSS now (after the imports) and reset the peak: what follows is the work."""
    _START.update(reset=reset_peak_rss(), rss=_status_bytes("VmRSS"))


def stats(device: torch.device | None) -> dict[str, Any]:
    """Peak and current RSS, the RSS at :func:`mark_start`, and CUDA peaks (bytes)."""
    out: dict[str, Any] = {
        "rss_peak_bytes": _status_bytes("VmHWM"),
        "rss_bytes": _status_bytes("VmRSS"),
        "rss_start_bytes": _START.get("rss"),
        "peak_reset": _START.get("reset"),
    }
    if device is not None and device.type == "cuda" and torch.cuda.is_initialized():
        out["cuda_peak_allocated_bytes"] = int(torch.cuda.max_memory_allocated(device))
        out["cuda_peak_reserved_bytes"] = int(torch.cuda.max_memory_reserved(device))
    return out


def evaluation_need(
    input_bytes: int | None, output_bytes: int | None, samples: int, rounds: int, pool_bytes: int
) -> Need | None:
    """The :class:`Need` of one evaluation (None where the task's input size is unknown)."""
    if input_bytes is None:
        return None
    per_round = math.ceil(samples / rounds)
    return Need(
        input_bytes,
        output_bytes if output_bytes is not None else input_bytes,
        pool_sets(input_bytes, pool_bytes, per_round),
    )


def does_not_fit(need: Need | None, device: Any, facts: dict[str, Any]) -> str | None:
    """Why an evaluation with ``need`` cannot fit in ``device``'s free memory (None if it can)."""
    free = free_bytes(device)
    if need is None or free is None or need.peak_bytes <= free:
        return None
    name = facts.get("name", getattr(device, "type", "the device"))
    return (
        f"the task does not fit on this GPU: an evaluation needs about {need.describe()},"
        f" but {name} has {free / 2**30:.1f} GiB free. Use smaller inputs in get_inputs(),"
        " or a GPU with more memory (a hardware class whose workers have it)"
    )
