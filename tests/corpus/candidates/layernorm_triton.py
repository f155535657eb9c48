# Control: a correct Triton LayerNorm with affine for tasks/layernorm.py. The parameters stay in an
# nn.LayerNorm named `ln`, as in the task, so the state_dict keys (ln.weight, ln.bias) match and the
# evaluator's re-randomised weights reach the kernel. Expected: OK.
import torch
import torch.nn as nn
import triton
import triton.language as tl


@triton.jit
def layernorm_kernel(out_ptr, in_ptr, w_ptr, b_ptr, n_cols, eps, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    mask = cols < n_cols
    x = tl.load(in_ptr + row * n_cols + cols, mask=mask, other=0.0)
    mean = tl.sum(x, axis=0) / n_cols
    d = tl.where(mask, x - mean, 0.0)  # padded lanes must not add (0 - mean)^2 to the variance
    rstd = tl.rsqrt(tl.sum(d * d, axis=0) / n_cols + eps)
    w = tl.load(w_ptr + cols, mask=mask, other=0.0)
    b = tl.load(b_ptr + cols, mask=mask, other=0.0)
    tl.store(out_ptr + row * n_cols + cols, d * rstd * w + b, mask=mask)


class ModelNew(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.ln = nn.LayerNorm(dim)

    def forward(self, x):
        x = x.contiguous()
        out = torch.empty_like(x)
        n_cols = x.shape[-1]
        layernorm_kernel[(x.numel() // n_cols,)](
            out, x, self.ln.weight, self.ln.bias, n_cols, self.ln.eps,
            BLOCK=triton.next_power_of_2(n_cols),
        )
        return out
