"""Honest Triton candidates for the evaluator bench's own tasks (``bench/tasks/``).

Each is the source of a candidate file, written by the bench to its temporary directory: a
correct Triton kernel with a ``SEARCH_SPACE`` whose first values the evaluator injects as module
globals. :data:`TRITON_SOURCES` maps each bench task name to its candidate.
"""

SOFTMAX_TRITON = """\
# Honest control: a row softmax in Triton for long rows. Two passes over column blocks: the first
# keeps a running max and a running sum rescaled whenever the max grows (online softmax), the
# second writes exp(x - max) / sum. fp32 math throughout. Expected: OK.
import torch
import torch.nn as nn
import triton
import triton.language as tl

# BLOCK and num_warps are module globals injected by the evaluator (the first of each by default).
SEARCH_SPACE = {"BLOCK": [4096, 8192, 2048], "num_warps": [8, 16, 4]}


@triton.jit
def softmax_kernel(out_ptr, in_ptr, in_stride, out_stride, n_cols, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    src = in_ptr + row * in_stride
    dst = out_ptr + row * out_stride
    cols = tl.arange(0, BLOCK)
    # Pass 1: running max m and running sum s of exp(x - m).
    m = tl.max(tl.full([BLOCK], -float("inf"), tl.float32), axis=0)
    s = tl.sum(tl.zeros([BLOCK], tl.float32), axis=0)
    for start in range(0, n_cols, BLOCK):
        offs = start + cols
        x = tl.load(src + offs, mask=offs < n_cols, other=-float("inf")).to(tl.float32)
        m_new = tl.maximum(m, tl.max(x, axis=0))
        # Padded lanes hold -inf: exp(-inf - m_new) = 0. m_new is finite (each block has a column).
        s = s * tl.exp(m - m_new) + tl.sum(tl.exp(x - m_new), axis=0)
        m = m_new
    inv = 1.0 / s
    # Pass 2: normalise.
    for start in range(0, n_cols, BLOCK):
        offs = start + cols
        mask = offs < n_cols
        x = tl.load(src + offs, mask=mask, other=-float("inf")).to(tl.float32)
        tl.store(dst + offs, tl.exp(x - m) * inv, mask=mask)


class ModelNew(nn.Module):
    def __init__(self):
        super().__init__()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous()
        n_rows, n_cols = x.shape
        out = torch.empty_like(x)
        softmax_kernel[(n_rows,)](
            out, x, x.stride(0), out.stride(0), n_cols, BLOCK=BLOCK, num_warps=num_warps
        )
        return out
"""

RELU_TRITON = """\
# Honest control: an elementwise ReLU in Triton, one BLOCK of elements per program, 64-bit
# offsets (the KernelBench input has 1.6e9 elements). Expected: OK.
import torch
import torch.nn as nn
import triton
import triton.language as tl

# BLOCK and num_warps are module globals injected by the evaluator (the first of each by default).
SEARCH_SPACE = {"BLOCK": [4096, 1024, 2048, 8192], "num_warps": [8, 4, 16]}


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
        relu_kernel[(triton.cdiv(n, BLOCK),)](out, x, n, BLOCK=BLOCK, num_warps=num_warps)
        return out
"""

LAYERNORM_TRITON = """\
# Honest control: LayerNorm over the flattened normalised dims (a 4M-element row on the
# KernelBench shape) in Triton, two passes split over CHUNK-sized pieces of each row so that
# every SM has work. Pass 1: per chunk, the mean and the sum of squared deviations (shifted by the
# chunk's first element against cancellation). Pass 2: every program combines its row's chunk
# statistics (Chan et al.) and normalises its chunk with the affine weight and bias. The layer
# stays an nn.LayerNorm named `ln` as in the task, so the state_dict keys (ln.weight, ln.bias)
# match and the evaluator's re-randomised parameters reach the kernel. Expected: OK.
import torch
import torch.nn as nn
import triton
import triton.language as tl

# Module globals injected by the evaluator (the first of each by default).
SEARCH_SPACE = {"BLOCK": [2048, 1024, 4096], "CHUNK": [32768, 16384, 65536], "num_warps": [8, 4]}


@triton.jit
def ln_stats_kernel(x_ptr, mean_ptr, m2_ptr, N, CHUNK, n_chunks, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    chunk = tl.program_id(1)
    start = chunk * CHUNK
    n_here = tl.minimum(CHUNK, N - start)
    base = x_ptr + row * N + start
    shift = tl.load(base).to(tl.float32)
    cols = tl.arange(0, BLOCK)
    s1 = tl.zeros([BLOCK], tl.float32)
    s2 = tl.zeros([BLOCK], tl.float32)
    for off in range(0, n_here, BLOCK):
        offs = off + cols
        mask = offs < n_here
        x = tl.load(base + offs, mask=mask, other=0.0).to(tl.float32)
        d = tl.where(mask, x - shift, 0.0)
        s1 += d
        s2 += d * d
    n_f = n_here.to(tl.float32)
    t1 = tl.sum(s1, axis=0)
    t2 = tl.sum(s2, axis=0)
    idx = row * n_chunks + chunk
    tl.store(mean_ptr + idx, shift + t1 / n_f)
    tl.store(m2_ptr + idx, tl.maximum(t2 - t1 * t1 / n_f, 0.0))


@triton.jit
def ln_norm_kernel(
    x_ptr, out_ptr, w_ptr, b_ptr, mean_ptr, m2_ptr, N, CHUNK, n_chunks, eps,
    BLOCK: tl.constexpr, NCH: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    chunk = tl.program_id(1)
    # Row statistics from the chunks' (count, mean, M2).
    ks = tl.arange(0, NCH)
    kmask = ks < n_chunks
    means = tl.load(mean_ptr + row * n_chunks + ks, mask=kmask, other=0.0)
    m2s = tl.load(m2_ptr + row * n_chunks + ks, mask=kmask, other=0.0)
    counts = tl.where(kmask, tl.minimum(CHUNK, N - ks * CHUNK), 0).to(tl.float32)
    n_f = N * 1.0  # also right if Triton specialised N == 1 to a constant
    mean = tl.sum(counts * means, axis=0) / n_f
    dm = tl.where(kmask, means - mean, 0.0)
    var = tl.sum(m2s + counts * dm * dm, axis=0) / n_f
    rstd = 1.0 / tl.sqrt(var + eps)
    # Normalise this program's chunk.
    start = chunk * CHUNK
    n_here = tl.minimum(CHUNK, N - start)
    src = x_ptr + row * N + start
    dst = out_ptr + row * N + start
    cols = tl.arange(0, BLOCK)
    for off in range(0, n_here, BLOCK):
        offs = off + cols
        mask = offs < n_here
        x = tl.load(src + offs, mask=mask, other=0.0).to(tl.float32)
        w = tl.load(w_ptr + start + offs, mask=mask, other=0.0).to(tl.float32)
        b = tl.load(b_ptr + start + offs, mask=mask, other=0.0).to(tl.float32)
        tl.store(dst + offs, (x - mean) * rstd * w + b, mask=mask)


class ModelNew(nn.Module):
    def __init__(self, normalized_shape):
        super().__init__()
        self.ln = nn.LayerNorm(normalized_shape=normalized_shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous()
        n = self.ln.weight.numel()
        rows = x.numel() // n
        out = torch.empty_like(x)
        n_chunks = triton.cdiv(n, CHUNK)
        means = torch.empty((rows, n_chunks), dtype=torch.float32, device=x.device)
        m2s = torch.empty((rows, n_chunks), dtype=torch.float32, device=x.device)
        grid = (rows, n_chunks)
        ln_stats_kernel[grid](x, means, m2s, n, CHUNK, n_chunks, BLOCK=BLOCK, num_warps=num_warps)
        ln_norm_kernel[grid](
            x, out, self.ln.weight, self.ln.bias, means, m2s, n, CHUNK, n_chunks, self.ln.eps,
            BLOCK=BLOCK, NCH=triton.next_power_of_2(n_chunks), num_warps=num_warps,
        )
        return out
"""

TRITON_SOURCES = {
    "softmax_small": SOFTMAX_TRITON,
    "softmax": SOFTMAX_TRITON,
    "relu": RELU_TRITON,
    "layernorm": LAYERNORM_TRITON,
}
