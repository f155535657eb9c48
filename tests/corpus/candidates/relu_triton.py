# Control: a correct Triton ReLU for tasks/relu.py; BLOCK and num_warps are module globals injected by
# the evaluator from SEARCH_SPACE (default: the first value). Expected: OK.
import torch
import torch.nn as nn
import triton
import triton.language as tl

SEARCH_SPACE = {"BLOCK": [1024, 2048], "num_warps": [4]}


@triton.jit
def relu_kernel(out_ptr, in_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    x = tl.load(in_ptr + offs, mask=mask, other=0.0)
    tl.store(out_ptr + offs, tl.where(x > 0, x, 0.0), mask=mask)


class ModelNew(nn.Module):
    def __init__(self):
        super().__init__()

    def forward(self, x):
        x = x.contiguous()
        out = torch.empty_like(x)
        n = x.numel()
        relu_kernel[(triton.cdiv(n, BLOCK),)](out, x, n, BLOCK=BLOCK, num_warps=num_warps)
        return out
