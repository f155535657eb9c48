"""Trusted kernels a worker compiles once so Triton builds its shared modules (see triton_cache).

Run only in the evaluator's own prebuild process, never with candidate code. The kernels
cover the launch signatures the template library uses most: elementwise (two pointers and a
length), row-wise (two pointers, rows, columns, a stride) and three-pointer fused kernels.
"""

from __future__ import annotations

import time

import torch
import triton
import triton.language as tl


@triton.jit
def _elementwise(x_ptr, out_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    tl.store(out_ptr + offs, tl.load(x_ptr + offs, mask=mask) + 1.0, mask=mask)


@triton.jit
def _rows(x_ptr, out_ptr, n_rows, n_cols, stride, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    mask = (cols < n_cols) & (row < n_rows)
    x = tl.load(x_ptr + row * stride + cols, mask=mask, other=0.0)
    tl.store(out_ptr + row * stride + cols, x * 2.0, mask=mask)


@triton.jit
def _fused(x_ptr, y_ptr, out_ptr, n, scale, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    x = tl.load(x_ptr + offs, mask=mask)
    y = tl.load(y_ptr + offs, mask=mask)
    tl.store(out_ptr + offs, x * scale + y, mask=mask)


def run(device: torch.device) -> dict[str, float]:
    """Compile and run every prebuild kernel once on ``device``; returns seconds taken."""
    t0 = time.perf_counter()
    x = torch.ones(4096, device=device)
    out = torch.empty_like(x)
    _elementwise[(4,)](x, out, x.numel(), BLOCK=1024)
    _rows[(4,)](x, out, 4, 1024, 1024, BLOCK=1024)
    _fused[(4,)](x, x, out, x.numel(), 0.5, BLOCK=1024)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return {"prebuild_s": time.perf_counter() - t0}
