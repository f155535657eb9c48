"""Speed-of-light floors: ``max(bytes / peak bandwidth, flops / peak throughput)``.

Peaks are datasheet figures (dense, no sparsity), never the measured copy bandwidth: honest
read-heavy kernels beat the copy figure (measured on an H200). A GPU not in the table gets no
floor, and no ``IMPOSSIBLE`` check.
"""

from __future__ import annotations

import dataclasses

import torch


@dataclasses.dataclass(frozen=True)
class Peaks:
    """Datasheet peaks of one GPU: bytes/s and FLOP/s by arithmetic."""

    bandwidth: float
    fp32: float
    tf32: float
    half: float


# name fragment (lower case) -> peaks; the first match wins, so longer names come first.
PEAKS: list[tuple[str, Peaks]] = [
    ("h200", Peaks(4.8e12, 67e12, 495e12, 989e12)),
    ("h100 pcie", Peaks(2.0e12, 51e12, 378e12, 756e12)),
    ("h100", Peaks(3.35e12, 67e12, 495e12, 989e12)),
    ("gh200", Peaks(4.0e12, 67e12, 495e12, 989e12)),
    ("a100-sxm4-80gb", Peaks(2.039e12, 19.5e12, 156e12, 312e12)),
    ("a100", Peaks(1.935e12, 19.5e12, 156e12, 312e12)),
    ("l40s", Peaks(0.864e12, 91.6e12, 183e12, 362e12)),
    ("a10g", Peaks(0.6e12, 31.2e12, 62.5e12, 125e12)),
]


def peaks_for(name: str) -> Peaks | None:
    """The datasheet peaks of a GPU by its name (``torch.cuda.get_device_name``)."""
    low = name.lower()
    for frag, p in PEAKS:
        if frag in low:
            return p
    return None


def floor_ms(
    nbytes: int, flops: int, dtype: torch.dtype, allow_tf32: bool, peaks: Peaks
) -> tuple[float, str]:
    """The floor in ms and a sentence saying what bounds it."""
    if dtype in (torch.float16, torch.bfloat16):
        peak, kind = peaks.half, "fp16/bf16"
    elif allow_tf32:
        peak, kind = peaks.tf32, "tf32"
    else:
        peak, kind = peaks.fp32, "fp32"
    mem = nbytes / peaks.bandwidth * 1e3
    comp = flops / peak * 1e3
    if comp > mem:
        return comp, f"compute: {flops:.3g} FLOP at {peak / 1e12:g} TFLOP/s ({kind}, datasheet)"
    return mem, f"memory: {nbytes:.3g} B at {peaks.bandwidth / 1e12:g} TB/s (datasheet)"


def count_flops(model: torch.nn.Module, xs: list) -> int:
    """FLOPs of one forward by torch's flop counter (matmul/conv class ops; 0 if it fails)."""
    try:
        from torch.utils.flop_counter import FlopCounterMode

        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(*xs)
        return int(counter.get_total_flops())
    except Exception:  # the floor then rests on bytes alone
        return 0
