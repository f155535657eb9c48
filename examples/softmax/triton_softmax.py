"""Triton row softmax: one program per row, the whole row in one block, numerically stable."""

import torch
import torch.nn as nn
import triton
import triton.language as tl

# Only num_warps is searched: BLOCK must cover a whole row, so forward derives it from n_cols.
SEARCH_SPACE = {"num_warps": [4, 8]}


@triton.jit
def softmax_kernel(out_ptr, in_ptr, in_stride, out_stride, n_cols, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    mask = cols < n_cols
    # Padded lanes read -inf so they neither win the max nor add to the sum (exp(-inf) = 0).
    x = tl.load(in_ptr + row * in_stride + cols, mask=mask, other=-float("inf"))
    x = x - tl.max(x, axis=0)
    num = tl.exp(x)
    y = num / tl.sum(num, axis=0)
    tl.store(out_ptr + row * out_stride + cols, y, mask=mask)


class ModelNew(nn.Module):
    def __init__(self):
        super().__init__()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous()
        n_rows, n_cols = x.shape
        out = torch.empty_like(x)
        block = triton.next_power_of_2(n_cols)
        # num_warps is a module global injected by the evaluator from SEARCH_SPACE.
        softmax_kernel[(n_rows,)](
            out, x, x.stride(0), out.stride(0), n_cols, BLOCK=block, num_warps=num_warps
        )
        return out
