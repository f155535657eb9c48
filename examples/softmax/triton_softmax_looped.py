"""Triton row softmax for rows of any length: an online max/sum pass over column blocks, then a
normalising pass. Its schedule (block width, warps) is a search space: `kernelmap run` explores it.
"""

import torch
import torch.nn as nn
import triton
import triton.language as tl

# The evaluator injects one choice of each as module globals (BLOCK, num_warps).
SEARCH_SPACE = {"BLOCK": [128, 256, 512, 1024, 2048], "num_warps": [1, 2, 4, 8]}


@triton.jit
def softmax_looped_kernel(out_ptr, in_ptr, in_stride, out_stride, n_cols, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    base = in_ptr + row * in_stride
    cols = tl.arange(0, BLOCK)
    # Pass 1: running max and running sum of exp(x - max), rescaled when the max grows.
    m = tl.full([BLOCK], -float("inf"), tl.float32)
    s = tl.zeros([BLOCK], tl.float32)
    for start in range(0, n_cols, BLOCK):
        mask = start + cols < n_cols
        x = tl.load(base + start + cols, mask=mask, other=-float("inf"))
        m_new = tl.maximum(m, x)
        # Lanes that have only seen -inf keep a zero sum (avoid exp(-inf - -inf) = nan).
        scale = tl.where(m_new == -float("inf"), 0.0, tl.exp(m - m_new))
        s = s * scale + tl.where(mask, tl.exp(x - m_new), 0.0)
        m = m_new
    row_max = tl.max(m, axis=0)
    total = tl.sum(tl.where(m == -float("inf"), 0.0, s * tl.exp(m - row_max)), axis=0)
    # Pass 2: normalise.
    for start in range(0, n_cols, BLOCK):
        mask = start + cols < n_cols
        x = tl.load(base + start + cols, mask=mask, other=-float("inf"))
        y = tl.exp(x - row_max) / total
        tl.store(out_ptr + row * out_stride + start + cols, y, mask=mask)


class ModelNew(nn.Module):
    def __init__(self):
        super().__init__()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous()
        n_rows, n_cols = x.shape
        out = torch.empty_like(x)
        softmax_looped_kernel[(n_rows,)](
            out, x, x.stride(0), out.stride(0), n_cols, BLOCK=BLOCK, num_warps=num_warps
        )
        return out
