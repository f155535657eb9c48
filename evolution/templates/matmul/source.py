"""Writing a matmul candidate file: the Triton kernels, host launchers and ``ModelNew``.

:func:`render` turns a :class:`~evolution.templates.matmul.match.Plan` into the source of one
variant: ``tiled`` (one GEMM kernel with the epilogue fused before the store) or ``split_k`` (a
partial-product kernel into an fp32 workspace and a reduce kernel that applies the epilogue),
with the tile configurations it is given baked in as ``CONFIGS``.
"""

from __future__ import annotations

import textwrap

from evolution.templates.analysis import parameter_skeleton
from evolution.templates.matmul.match import Extra, Plan

_HEADER = '''\
# kernelmap template matmul/{variant}: {summary}.
"""{doc}"""

import torch
import torch.nn as nn
import triton
import triton.language as tl

# CONFIG picks one of CONFIGS: (BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, num_warps, num_stages).
SEARCH_SPACE = {space}
CONFIGS = (
{configs}
)
'''

_HELPERS = {
    "_tanh": """
@triton.jit
def _tanh(x):
    # From exp (Triton has no portable tanh): odd, saturates exactly, keeps NaN.
    e = tl.exp(-2.0 * tl.abs(x))
    t = (1.0 - e) / (1.0 + e)
    return tl.where(x < 0.0, -t, t)
""",
    "_softplus": """
@triton.jit
def _softplus(x):
    # log(1 + exp(x)) without overflow for large x.
    return tl.where(x > 0.0, x, 0.0) + tl.log(1.0 + tl.exp(-tl.abs(x)))
""",
    "_clamp": """
@triton.jit
def _clamp(x, lo, hi):
    # min(max(x, lo), hi) as torch.clamp does, keeping NaN.
    y = tl.where(x < lo, lo, x)
    return tl.where(y > hi, hi, y)
""",
}

_EPILOGUE_FN = """
@triton.jit
def epilogue(
    acc, cols, mask, c_off, N,{extra_ptrs}
):
    # The fused pointwise tail of the reference, on the fp32 accumulator tile.
{body}
    return out
"""

_TILED_KERNEL = """
@triton.jit
def matmul_kernel(
    a_ptr, b_ptr, c_ptr,{extra_ptrs}
    M, N, K,
    stride_az, stride_am, stride_ak,
    stride_bz, stride_bk, stride_bn,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    # Axis 0 enumerates (batch, tile): no 65535 limit on the batch.
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    pid_z = tl.program_id(0) // (num_pid_m * num_pid_n)
    pid = tl.program_id(0) % (num_pid_m * num_pid_n)
    # Grouped ordering: GROUP_M row blocks in a row reuse the same B column blocks from L2.
    width = GROUP_M * num_pid_n
    first_m = (pid // width) * GROUP_M
    group_m = tl.minimum(num_pid_m - first_m, GROUP_M)
    pid_m = first_m + (pid % width) % group_m
    pid_n = (pid % width) // group_m
    # Rows and columns past the edge wrap around, so only K needs a load mask; the store is
    # masked. Offsets are 64-bit: a batch or a big matrix can pass 2**31 elements.
    rm = ((pid_m * BLOCK_M + tl.arange(0, BLOCK_M)) % M).to(tl.int64)
    rn = ((pid_n * BLOCK_N + tl.arange(0, BLOCK_N)) % N).to(tl.int64)
    rk = tl.arange(0, BLOCK_K)
    z = pid_z.to(tl.int64)
    a_ptrs = a_ptr + z * stride_az + rm[:, None] * stride_am + rk[None, :] * stride_ak
    b_ptrs = b_ptr + z * stride_bz + rk[:, None] * stride_bk + rn[None, :] * stride_bn
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in range(0, K, BLOCK_K):
        a = tl.load(a_ptrs, mask=rk[None, :] < K - k, other=0.0)
        b = tl.load(b_ptrs, mask=rk[:, None] < K - k, other=0.0)
        acc = {dot}
        a_ptrs += BLOCK_K * stride_ak
        b_ptrs += BLOCK_K * stride_bk
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask = (rows[:, None] < M) & (cols[None, :] < N)
    c_off = z * M * N + rows[:, None].to(tl.int64) * N + cols[None, :]
    out = epilogue(
        acc, cols, mask, c_off, N,{extra_call}
    )
    tl.store(c_ptr + c_off, out.to(c_ptr.dtype.element_ty), mask=mask)
"""

_SPLIT_KERNELS = """
@triton.jit
def matmul_partial_kernel(
    a_ptr, b_ptr, ws_ptr,
    M, N, K, K_CHUNK, plane,
    stride_az, stride_am, stride_ak,
    stride_bz, stride_bk, stride_bn,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    # One K range [pid_k * K_CHUNK, +K_CHUNK) of one output tile, into an fp32 workspace plane.
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    pid_z = tl.program_id(0) // (num_pid_m * num_pid_n)
    pid = tl.program_id(0) % (num_pid_m * num_pid_n)
    pid_k = tl.program_id(1)
    width = GROUP_M * num_pid_n
    first_m = (pid // width) * GROUP_M
    group_m = tl.minimum(num_pid_m - first_m, GROUP_M)
    pid_m = first_m + (pid % width) % group_m
    pid_n = (pid % width) // group_m
    rm = ((pid_m * BLOCK_M + tl.arange(0, BLOCK_M)) % M).to(tl.int64)
    rn = ((pid_n * BLOCK_N + tl.arange(0, BLOCK_N)) % N).to(tl.int64)
    rk = tl.arange(0, BLOCK_K)
    z = pid_z.to(tl.int64)
    k_lo = pid_k * K_CHUNK
    k_hi = tl.minimum(K, k_lo + K_CHUNK)
    kk = (k_lo + rk).to(tl.int64)
    a_ptrs = a_ptr + z * stride_az + rm[:, None] * stride_am + kk[None, :] * stride_ak
    b_ptrs = b_ptr + z * stride_bz + kk[:, None] * stride_bk + rn[None, :] * stride_bn
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in range(k_lo, k_hi, BLOCK_K):
        a = tl.load(a_ptrs, mask=rk[None, :] < k_hi - k, other=0.0)
        b = tl.load(b_ptrs, mask=rk[:, None] < k_hi - k, other=0.0)
        acc = {dot}
        a_ptrs += BLOCK_K * stride_ak
        b_ptrs += BLOCK_K * stride_bk
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask = (rows[:, None] < M) & (cols[None, :] < N)
    c_off = z * M * N + rows[:, None].to(tl.int64) * N + cols[None, :]
    tl.store(ws_ptr + pid_k.to(tl.int64) * plane + c_off, acc, mask=mask)


@triton.jit
def splitk_reduce_kernel(
    ws_ptr, c_ptr,{extra_ptrs}
    M, N, SPLIT, plane,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    num_pid_n = tl.cdiv(N, BLOCK_N)
    tiles = tl.cdiv(M, BLOCK_M) * num_pid_n
    pid_z = tl.program_id(0) // tiles
    pid = tl.program_id(0) % tiles
    rows = (pid // num_pid_n) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = (pid % num_pid_n) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask = (rows[:, None] < M) & (cols[None, :] < N)
    c_off = pid_z.to(tl.int64) * M * N + rows[:, None].to(tl.int64) * N + cols[None, :]
    # The partials are summed in a fixed order: the result is deterministic (no atomics).
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    ws_ptrs = ws_ptr + c_off
    for s in range(0, SPLIT):
        acc += tl.load(ws_ptrs, mask=mask, other=0.0)
        ws_ptrs += plane
    out = epilogue(
        acc, cols, mask, c_off, N,{extra_call}
    )
    tl.store(c_ptr + c_off, out.to(c_ptr.dtype.element_ty), mask=mask)
"""

_TILED_HOST = '''

def matmul_epilogue(a, b, extras):
    """epilogue(a @ b) for a (Za, M, K) and b (Zb, K, N), Za, Zb in (1, Z): a (Z, M, N) tensor."""
    z, m, k, n = max(a.shape[0], b.shape[0]), a.shape[1], a.shape[2], b.shape[2]
    c = torch.empty((z, m, n), device=a.device, dtype=a.dtype)
    if c.numel() == 0:
        return c
    bm, bn, bk, gm, nw, ns = CONFIGS[CONFIG]
    grid = (triton.cdiv(m, bm) * triton.cdiv(n, bn) * z,)
    matmul_kernel[grid](
        a, b, c, *extras, m, n, k,
        a.stride(0) if a.shape[0] > 1 else 0, a.stride(1), a.stride(2),
        b.stride(0) if b.shape[0] > 1 else 0, b.stride(1), b.stride(2),
        BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=gm, num_warps=nw, num_stages=ns,
    )
    return c
'''

_SPLIT_HOST = '''

def matmul_epilogue(a, b, extras):
    """epilogue(a @ b) for a (Za, M, K) and b (Zb, K, N), Za, Zb in (1, Z): a (Z, M, N) tensor."""
    z, m, k, n = max(a.shape[0], b.shape[0]), a.shape[1], a.shape[2], b.shape[2]
    c = torch.empty((z, m, n), device=a.device, dtype=a.dtype)
    if c.numel() == 0:
        return c
    bm, bn, bk, gm, nw, ns = CONFIGS[CONFIG]
    # SPLIT_K ranges of whole K blocks; fewer when K is short, and never an empty range.
    blocks = max(1, triton.cdiv(k, bk))
    per_split = triton.cdiv(blocks, min(SPLIT_K, blocks))
    split = triton.cdiv(blocks, per_split)
    ws = torch.empty((split, z, m, n), device=a.device, dtype=torch.float32)
    tiles = triton.cdiv(m, bm) * triton.cdiv(n, bn)
    matmul_partial_kernel[(tiles * z, split)](
        a, b, ws, m, n, k, per_split * bk, z * m * n,
        a.stride(0) if a.shape[0] > 1 else 0, a.stride(1), a.stride(2),
        b.stride(0) if b.shape[0] > 1 else 0, b.stride(1), b.stride(2),
        BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=gm, num_warps=nw, num_stages=ns,
    )
    splitk_reduce_kernel[(tiles * z,)](
        ws, c, *extras, m, n, split, z * m * n, BLOCK_M=bm, BLOCK_N=bn, num_warps=nw,
    )
    return c
'''

_MODEL = """

class ModelNew(nn.Module):
    def __init__(self, *args, **kwargs):
        super().__init__()
{skeleton}

    def forward(self, {inputs}):
        lhs = {a}
        rhs = {b}
{views}
        extras = ({extras})
        out = matmul_epilogue(lhs3, rhs3, extras)
        return out.reshape({out_shape})
"""


def _dot(precision: str) -> str:
    if precision == "half":
        return "tl.dot(a, b, acc)"
    return f'tl.dot(a, b, acc, input_precision="{precision}")'


def _extra_loads(extras: list[Extra]) -> list[str]:
    lines = []
    for e in extras:
        if e.kind == "scalar":
            lines.append(f"{e.name} = tl.load({e.name}_ptr).to(tl.float32)")
        elif e.kind == "column":
            lines.append(
                f"{e.name} = tl.load({e.name}_ptr + cols, mask=cols < N, other=0.0).to(tl.float32)"
            )
        else:
            lines.append(
                f"{e.name} = tl.load({e.name}_ptr + c_off, mask=mask, other=0.0).to(tl.float32)"
            )
    return lines


def _host_extra(e: Extra) -> str:
    # Columns and residuals are read with the output's contiguous layout.
    if e.kind == "column":
        return f"{e.expr}.contiguous().reshape(-1)"
    if e.kind == "full":
        return f"{e.expr}.contiguous()"
    return e.expr


def _views(plan: Plan) -> tuple[str, str]:
    """Host lines making 3-D views lhs3 (Za, M, K), rhs3 (Zb, K, N), and the output shape."""
    g = plan.gemm
    if g.b.rank == 2:  # rows of every leading dim of A form one M
        lines = ["lhs3 = lhs.reshape(1, -1, lhs.shape[-1])", "rhs3 = rhs.unsqueeze(0)"]
        return "\n".join(lines), "*lhs.shape[:-1], rhs.shape[-1]"
    if g.a.rank == 2:  # one A for every batch of B (batch stride 0)
        lhs3 = "lhs.unsqueeze(0)"
    else:
        lhs3 = "lhs.reshape(-1, lhs.shape[-2], lhs.shape[-1])"
    lines = [f"lhs3 = {lhs3}", "rhs3 = rhs.reshape(-1, rhs.shape[-2], rhs.shape[-1])"]
    return "\n".join(lines), "*rhs.shape[:-2], lhs.shape[-2], rhs.shape[-1]"


def _wrapped(names: list[str], indent: str) -> str:
    """``names`` as comma-terminated lines after a line break (nothing when empty)."""
    if not names:
        return ""
    text = textwrap.fill(
        ", ".join(names) + ",",
        width=96,
        initial_indent=indent,
        subsequent_indent=indent,
        break_on_hyphens=False,
    )
    return "\n" + text


def render(
    plan: Plan, variant: str, space: dict[str, list[int]], configs: tuple[tuple[int, ...], ...]
) -> str:
    """The candidate file of ``plan`` for ``variant`` ("tiled" or "split_k"), with the tile
    configurations ``configs`` as ``CONFIGS`` and ``space`` as its ``SEARCH_SPACE``."""
    epi = plan.epilogue
    body = "\n".join(_extra_loads(epi.extras) + epi.lines)
    helpers = [h for name, h in _HELPERS.items() if name + "(" in body]
    names = [e.name for e in epi.extras]
    extra_ptrs = _wrapped([f"{n}_ptr" for n in names], "    ")
    extra_call = _wrapped([f"{n}_ptr" for n in names], "        ")
    summary = " -> ".join(["matmul", *epi.ops]) if epi.ops else "matmul"
    doc = {
        "tiled": "Tiled GEMM (grouped ordering, fp32 accumulation) with the epilogue fused"
        " before the store.",
        "split_k": "Split-K GEMM: SPLIT_K programs per tile reduce K ranges into an fp32"
        " workspace;\na second kernel sums them in a fixed order and applies the"
        " epilogue.",
    }[variant]
    parts = [
        _HEADER.format(
            variant=variant,
            summary=summary,
            doc=doc,
            space=repr(space),
            configs="\n".join(f"    {c!r}," for c in configs),
        )
    ]
    parts += helpers
    parts.append(_EPILOGUE_FN.format(extra_ptrs=extra_ptrs, body=textwrap.indent(body, "    ")))
    fmt = {"dot": _dot(plan.precision), "extra_ptrs": extra_ptrs, "extra_call": extra_call}
    if variant == "tiled":
        parts += [_TILED_KERNEL.format(**fmt), _TILED_HOST]
    else:
        parts += [_SPLIT_KERNELS.format(**fmt), _SPLIT_HOST]
    views, out_shape = _views(plan)
    extras = "".join(f"\n            {_host_extra(e)}," for e in epi.extras)
    extras += "\n        " if extras else ""
    parts.append(
        _MODEL.format(
            skeleton=parameter_skeleton(plan.params),
            inputs=", ".join(plan.inputs),
            a=plan.gemm.a.expr,
            b=plan.gemm.b.expr,
            views=textwrap.indent(views, "        "),
            extras=extras,
            out_shape=out_shape,
        )
    )
    # PEP 8 spacing: two blank lines between top-level definitions.
    return "\n\n\n".join(p.strip("\n") for p in parts) + "\n"
