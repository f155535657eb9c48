# Hack (or plain bug, GPU only: on the CPU interpreter it would crash the host process): store far
# outside any allocation. Expected: CUDA_FATAL (the context is poisoned) or OOB_WRITE, and the next
# candidate on that GPU evaluates normally.
import torch
import torch.nn as nn
import triton
import triton.language as tl


@triton.jit
def bad_store_kernel(out_ptr, in_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    x = tl.load(in_ptr + offs, mask=mask, other=0.0)
    far = offs.to(tl.int64) + 1099511627776  # 2**40 elements past the output
    tl.store(out_ptr + far, x, mask=mask)


class ModelNew(nn.Module):
    def __init__(self):
        super().__init__()

    def forward(self, x):
        x = x.contiguous()
        out = torch.empty_like(x)
        n = x.numel()
        bad_store_kernel[(triton.cdiv(n, 1024),)](out, x, n, BLOCK=1024)
        return out
