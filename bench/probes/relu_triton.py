# Probe candidate: an elementwise ReLU in Triton, one BLOCK of elements per program, 64-bit
# offsets. Expected: OK.
import torch
import torch.nn as nn
import triton
import triton.language as tl

# BLOCK and num_warps are module globals injected by the evaluator (the first of each by default).
SEARCH_SPACE = {"BLOCK": [4096, 1024], "num_warps": [8, 4]}


@triton.jit
def relu_kernel(out_ptr, in_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    x = tl.load(in_ptr + offs, mask=mask, other=0.0)
    # x < 0 is False for NaN, so NaN passes through as in torch.relu.
    tl.store(out_ptr + offs, tl.where(x < 0, 0.0, x), mask=mask)


class ModelNew(nn.Module):
    def __init__(self):
        super().__init__()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous()
        out = torch.empty_like(x)
        n = x.numel()
        grid = (triton.cdiv(n, BLOCK),)  # noqa: F821
        relu_kernel[grid](out, x, n, BLOCK=BLOCK, num_warps=num_warps)  # noqa: F821
        return out
