"""A realistically WRONG Triton softmax: the row is processed in fixed BLOCK=256 chunks, but the
normaliser (and the max) come from the first chunk only, so every row longer than 256 columns is
mis-scaled. It passes a quick test on 256-wide inputs and fails on the task. Expected: INCORRECT."""

import torch
import torch.nn as nn
import triton
import triton.language as tl

BLOCK = 256


@triton.jit
def softmax_kernel(out_ptr, in_ptr, stride, n_cols, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    first = tl.load(in_ptr + row * stride + cols, mask=cols < n_cols, other=-float("inf"))
    m = tl.max(first, axis=0)
    denom = tl.sum(tl.exp(first - m), axis=0)  # bug: sum over the first chunk only
    for start in range(0, n_cols, BLOCK):
        c = start + cols
        x = tl.load(in_ptr + row * stride + c, mask=c < n_cols, other=-float("inf"))
        tl.store(out_ptr + row * stride + c, tl.exp(x - m) / denom, mask=c < n_cols)


class ModelNew(nn.Module):
    def __init__(self):
        super().__init__()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous()
        out = torch.empty_like(x)
        softmax_kernel[(x.shape[0],)](out, x, x.stride(0), x.shape[1], BLOCK=BLOCK)
        return out
