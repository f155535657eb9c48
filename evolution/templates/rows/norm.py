"""LayerNorm and RMSNorm: single-pass, looped (Welford), split and strided Triton templates.

Both norms share their row kernels: a ``CENTER`` flag says whether the mean is subtracted
(LayerNorm) or not (RMSNorm). A row is the ``normalized_shape`` flattened (the last k dims);
KernelBench's hand-written RMSNorm over dim 1 of (B, C, H, W) normalises strided "rows" instead.

LayerNorm variants ``single_pass`` / ``welford`` / ``split``, RMSNorm ``row`` / ``row_looped`` /
``row_split`` over the last dims, and ``strided`` / ``strided_looped`` over a middle dim:

- single pass (``single_pass``, ``row``): ``ROWS_PER_PROGRAM`` whole rows in registers, read once
  and written once; the forward sizes the tile to the row at run time. Rows up to 16384.
- looped (``welford``, ``row_looped``): one program per row; pass 1 keeps per-lane Welford
  (count, mean, M2) over ``BLOCK``-wide column blocks and merges the lanes with Chan's formula,
  pass 2 normalises. Any row length.
- split (``split``, ``row_split``): for rows of millions of elements and few rows. Phase 1 has
  ``SPLIT`` programs per row, each writing its chunk's (count, mean, M2); phase 2 merges the row's
  partials (Chan) and normalises its chunk with weight and bias.
- strided: the reduced dim has stride ``inner``; a program takes ``BLOCK`` contiguous inner
  positions and all C values (``strided``: the whole [C, BLOCK] tile in registers, C <= 1024;
  ``strided_looped``: two passes over C in ``R_BLOCK`` steps).
"""

from __future__ import annotations

from string import Template as Text

from evolution.templates.analysis import TaskAnalysis
from evolution.templates.base import Template, TemplateCandidate
from evolution.templates.rows.match import (
    RowOp,
    match_row_op,
    options,
    pow2,
    render_candidate,
    split_space,
    warps_for,
)

_SINGLE_PASS = """
@triton.jit
def norm_rows_kernel(x_ptr, w_ptr, b_ptr, out_ptr, n_rows, n_cols, eps, CENTER: tl.constexpr,
                     HAS_W: tl.constexpr, HAS_B: tl.constexpr, ROWS: tl.constexpr,
                     BLOCK: tl.constexpr):
    # A tile of ROWS whole rows: each element is read once and written once.
    rows = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    cols = tl.arange(0, BLOCK)
    col_ok = cols < n_cols
    mask = (rows < n_rows)[:, None] & col_ok[None, :]
    offs = rows[:, None] * n_cols + cols[None, :]
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if CENTER:  # LayerNorm subtracts the mean, RMSNorm does not
        x = tl.where(mask, x - (tl.sum(x, axis=1) / n_cols)[:, None], 0.0)
    rstd = tl.rsqrt(tl.sum(x * x, axis=1) / n_cols + eps)
    y = x * rstd[:, None]
    if HAS_W:
        y = y * tl.load(w_ptr + cols, mask=col_ok).to(tl.float32)[None, :]
    if HAS_B:
        y = y + tl.load(b_ptr + cols, mask=col_ok).to(tl.float32)[None, :]
    tl.store(out_ptr + offs, y.to(out_ptr.dtype.element_ty), mask=mask)
"""

_SINGLE_PASS_FORWARD = """
n_rows = x.numel() // max(n_cols, 1)
block = triton.next_power_of_2(n_cols)
# Cap the tile at 16K values so a long held-out row does not exhaust registers.
rows = max(1, min(ROWS_PER_PROGRAM, 16384 // block))
grid = (triton.cdiv(n_rows, rows),)
norm_rows_kernel[grid](x, weight, bias, out, n_rows, n_cols, eps,
                       CENTER=$center, $affine,
                       ROWS=rows, BLOCK=block, num_warps=num_warps)
return out
"""

# Statistics of x[row + start : row + start + length] (clipped to the row), shared by the looped
# and split variants: per-lane Welford (count, mean, M2), then the lanes merged (Chan et al.).
# Without CENTER the mean stays 0 and M2 is the sum of squares, which is all RMSNorm needs.
_STATS = """
    count = tl.zeros([BLOCK], tl.float32)
    mean = tl.zeros([BLOCK], tl.float32)
    m2 = tl.zeros([BLOCK], tl.float32)
    for off in range(0, length, BLOCK):
        idx = start + off + cols
        ok = idx < n_cols
        x = tl.load(x_ptr + row + idx, mask=ok, other=0.0).to(tl.float32)
        count += ok.to(tl.float32)
        if CENTER:
            delta = x - mean
            mean += tl.where(ok, delta / tl.maximum(count, 1.0), 0.0)
            m2 += tl.where(ok, delta * (x - mean), 0.0)
        else:
            m2 += x * x
    n = tl.sum(count, axis=0)
    mu = tl.sum(mean * count, axis=0) / tl.maximum(n, 1.0)
    m2 = tl.sum(m2 + count * (mean - mu) * (mean - mu), axis=0)
"""

# Normalise x[row + start : row + start + length] given mu and rstd.
_NORMALISE = """
    for off in range(0, length, BLOCK):
        idx = start + off + cols
        ok = idx < n_cols
        x = tl.load(x_ptr + row + idx, mask=ok, other=0.0).to(tl.float32)
        y = (x - mu) * rstd
        if HAS_W:
            y = y * tl.load(w_ptr + idx, mask=ok).to(tl.float32)
        if HAS_B:
            y = y + tl.load(b_ptr + idx, mask=ok).to(tl.float32)
        tl.store(out_ptr + row + idx, y.to(out_ptr.dtype.element_ty), mask=ok)
"""

_LOOPED = Text("""
@triton.jit
def norm_looped_kernel(x_ptr, w_ptr, b_ptr, out_ptr, n_cols, eps, CENTER: tl.constexpr,
                       HAS_W: tl.constexpr, HAS_B: tl.constexpr, BLOCK: tl.constexpr):
    # One program per row: pass 1 gathers the statistics, pass 2 normalises.
    row = tl.program_id(0).to(tl.int64) * n_cols
    cols = tl.arange(0, BLOCK)
    start, length = 0, n_cols
$stats
    rstd = tl.rsqrt(m2 / n_cols + eps)
$normalise
""")

_LOOPED_FORWARD = """
n_rows = x.numel() // max(n_cols, 1)
norm_looped_kernel[(n_rows,)](x, weight, bias, out, n_cols, eps,
                              CENTER=$center, $affine,
                              BLOCK=BLOCK, num_warps=num_warps)
return out
"""

_SPLIT = Text("""
@triton.jit
def norm_partials_kernel(x_ptr, part_ptr, n_cols, chunk, CENTER: tl.constexpr,
                         SPLIT: tl.constexpr, BLOCK: tl.constexpr):
    # Phase 1: program (row, c) writes (count, mean, M2) of chunk c of its row.
    pid = tl.program_id(0).to(tl.int64)
    row = (pid // SPLIT) * n_cols
    cols = tl.arange(0, BLOCK)
    start, length = (pid % SPLIT) * chunk, chunk
$stats
    tl.store(part_ptr + pid * 3, n)
    tl.store(part_ptr + pid * 3 + 1, mu)
    tl.store(part_ptr + pid * 3 + 2, m2)


@triton.jit
def norm_split_kernel(x_ptr, w_ptr, b_ptr, out_ptr, part_ptr, n_cols, chunk, eps,
                      HAS_W: tl.constexpr, HAS_B: tl.constexpr, SPLIT: tl.constexpr,
                      BLOCK: tl.constexpr):
    # Phase 2: merge the row's SPLIT partials (Chan et al.), then normalise chunk c.
    pid = tl.program_id(0).to(tl.int64)
    parts = ((pid // SPLIT) * SPLIT + tl.arange(0, SPLIT)) * 3
    pn = tl.load(part_ptr + parts)
    pmean = tl.load(part_ptr + parts + 1)
    mu = tl.sum(pn * pmean, axis=0) / n_cols
    m2 = tl.sum(tl.load(part_ptr + parts + 2) + pn * (pmean - mu) * (pmean - mu), axis=0)
    rstd = tl.rsqrt(m2 / n_cols + eps)
    row = (pid // SPLIT) * n_cols
    cols = tl.arange(0, BLOCK)
    start, length = (pid % SPLIT) * chunk, chunk
$normalise
""")

_SPLIT_FORWARD = """
n_rows = x.numel() // max(n_cols, 1)
# No more chunks than BLOCK-wide column blocks; chunks start on BLOCK boundaries.
split = min(SPLIT, triton.next_power_of_2(triton.cdiv(n_cols, BLOCK)))
chunk = triton.cdiv(triton.cdiv(n_cols, split), BLOCK) * BLOCK
parts = torch.empty(n_rows * split * 3, device=x.device, dtype=torch.float32)
grid = (n_rows * split,)
norm_partials_kernel[grid](x, parts, n_cols, chunk, CENTER=$center, SPLIT=split, BLOCK=BLOCK,
                           num_warps=num_warps)
norm_split_kernel[grid](x, weight, bias, out, parts, n_cols, chunk, eps,
                        $affine,
                        SPLIT=split, BLOCK=BLOCK, num_warps=num_warps)
return out
"""

_STRIDED = """
@triton.jit
def rms_strided_kernel(x_ptr, out_ptr, n_red, n_inner, eps, C_BLOCK: tl.constexpr,
                       BLOCK: tl.constexpr):
    # Program (o, j): inner positions j*BLOCK.. of outer index o, all n_red values of the
    # reduced dim (stride n_inner) held as one [C_BLOCK, BLOCK] tile: read once, written once.
    pid = tl.program_id(0).to(tl.int64)
    n_blocks = tl.cdiv(n_inner, BLOCK)
    cols = (pid % n_blocks) * BLOCK + tl.arange(0, BLOCK)
    r = tl.arange(0, C_BLOCK)
    mask = (r < n_red)[:, None] & (cols < n_inner)[None, :]
    offs = (pid // n_blocks) * n_red * n_inner + r[:, None].to(tl.int64) * n_inner + cols[None, :]
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    rstd = tl.rsqrt(tl.sum(x * x, axis=0) / n_red + eps)
    tl.store(out_ptr + offs, (x * rstd[None, :]).to(out_ptr.dtype.element_ty), mask=mask)
"""

_STRIDED_LOOPED = """
@triton.jit
def rms_strided_looped_kernel(x_ptr, out_ptr, n_red, n_inner, eps, R_BLOCK: tl.constexpr,
                              BLOCK: tl.constexpr):
    # Program (o, j): inner positions j*BLOCK.. of outer index o; pass 1 sums squares over the
    # reduced dim (stride n_inner) R_BLOCK values at a time, pass 2 normalises.
    pid = tl.program_id(0).to(tl.int64)
    n_blocks = tl.cdiv(n_inner, BLOCK)
    cols = (pid % n_blocks) * BLOCK + tl.arange(0, BLOCK)
    col_ok = cols < n_inner
    base = (pid // n_blocks) * n_red * n_inner + cols[None, :]
    r = tl.arange(0, R_BLOCK)
    acc = tl.zeros([R_BLOCK, BLOCK], tl.float32)
    for start in range(0, n_red, R_BLOCK):
        rr = start + r
        mask = (rr < n_red)[:, None] & col_ok[None, :]
        x = tl.load(x_ptr + base + rr[:, None].to(tl.int64) * n_inner, mask=mask, other=0.0)
        x = x.to(tl.float32)
        acc += x * x
    rstd = tl.rsqrt(tl.sum(acc, axis=0) / n_red + eps)[None, :]
    for start in range(0, n_red, R_BLOCK):
        rr = start + r
        mask = (rr < n_red)[:, None] & col_ok[None, :]
        offs = base + rr[:, None].to(tl.int64) * n_inner
        x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        tl.store(out_ptr + offs, (x * rstd).to(out_ptr.dtype.element_ty), mask=mask)
"""

_STRIDED_FORWARD = """
n_red = x.shape[$dim]
n_inner = x.shape[$after:].numel()
n_outer = x.shape[:$dim].numel()
grid = (n_outer * triton.cdiv(n_inner, BLOCK),)
$launch
return out
"""

# Rows up to this long are offered the single-pass variant: the row, its weight and its bias
# held in registers (longer rows spill even at 32 warps, by ptxas for sm_90).
MAX_SINGLE_PASS = 16384
# Reduced dims up to this long are offered the strided single-pass tile.
MAX_STRIDED_TILE = 1024

_NAMES = {
    "layer_norm": {"single": "single_pass", "looped": "welford", "split": "split"},
    "rms_norm": {"single": "row", "looped": "row_looped", "split": "row_split"},
}


class NormTemplate(Template):
    """LayerNorm or RMSNorm (``kind``) over its normalized_shape, or RMSNorm over a middle dim."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.name = kind

    def instantiate(self, analysis: TaskAnalysis) -> list[TemplateCandidate] | str:
        """Candidates for a reference that is exactly one such norm, else why not."""
        op = match_row_op(analysis)
        if isinstance(op, str):
            return op
        if op.kind != self.kind:
            return f"the reference computes {op.kind}, not {self.kind}"
        if not op.last:
            return self._strided(op, analysis)
        flags = dict(
            center=str(self.kind == "layer_norm"),
            affine=f"HAS_W={op.weight is not None}, HAS_B={op.bias is not None}",
        )
        names = _NAMES[self.kind]
        n, rows, block = op.n, op.outer, pow2(op.n)
        cands = []
        if n <= MAX_SINGLE_PASS:
            per = max(1, min(16, 4096 // block))
            space = {
                "ROWS_PER_PROGRAM": options(per, 1, 16, 3),
                "num_warps": options(warps_for(block * per), 1, 32, 3),
            }
            cands.append(
                self._candidate(
                    names["single"],
                    op,
                    analysis,
                    space,
                    _SINGLE_PASS,
                    Text(_SINGLE_PASS_FORWARD).substitute(flags),
                )
            )
        blk = min(block, 4096)
        space = {"BLOCK": options(blk, 16, 8192, 3), "num_warps": options(warps_for(blk), 1, 32, 3)}
        kernel = _LOOPED.substitute(stats=_STATS.strip("\n"), normalise=_NORMALISE.strip("\n"))
        cands.append(
            self._candidate(
                names["looped"],
                op,
                analysis,
                space,
                kernel,
                Text(_LOOPED_FORWARD).substitute(flags),
            )
        )
        space = split_space(n, rows)
        if space is not None:
            kernel = _SPLIT.substitute(stats=_STATS.strip("\n"), normalise=_NORMALISE.strip("\n"))
            cands.append(
                self._candidate(
                    names["split"],
                    op,
                    analysis,
                    space,
                    kernel,
                    Text(_SPLIT_FORWARD).substitute(flags),
                )
            )
        return cands

    def _strided(self, op: RowOp, analysis: TaskAnalysis) -> list[TemplateCandidate] | str:
        """RMSNorm over a middle dim: the strided variants."""
        if self.kind != "rms_norm" or op.ndims != 1:
            return f"{op.describe()} is not over the trailing dims"
        inner = pow2(op.inner)
        cands = []
        c_block = pow2(op.n)
        if c_block <= MAX_STRIDED_TILE:
            width = max(16, min(inner, 4096 // c_block, 1024))
            space = {
                "BLOCK": options(width, 16, 1024, 3),
                "num_warps": options(warps_for(width * c_block), 1, 32, 3),
            }
            launch = (
                "rms_strided_kernel[grid](x, out, n_red, n_inner, eps,"
                " C_BLOCK=triton.next_power_of_2(n_red),\n"
                "                         BLOCK=BLOCK, num_warps=num_warps)"
            )
            forward = Text(_STRIDED_FORWARD).substitute(dim=op.dim, after=op.dim + 1, launch=launch)
            cands.append(self._candidate("strided", op, analysis, space, _STRIDED, forward))
        width = max(16, min(inner, 256))
        space = {
            "R_BLOCK": options(8, 1, 64, 3),
            "BLOCK": options(width, 16, 1024, 2),
            "num_warps": options(4, 1, 32, 2),
        }
        launch = (
            "rms_strided_looped_kernel[grid](x, out, n_red, n_inner, eps, R_BLOCK=R_BLOCK,"
            " BLOCK=BLOCK,\n"
            "                                num_warps=num_warps)"
        )
        forward = Text(_STRIDED_FORWARD).substitute(dim=op.dim, after=op.dim + 1, launch=launch)
        cands.append(
            self._candidate("strided_looped", op, analysis, space, _STRIDED_LOOPED, forward)
        )
        return cands

    def _candidate(
        self,
        variant: str,
        op: RowOp,
        analysis: TaskAnalysis,
        space: dict,
        kernels: str,
        forward: str,
    ) -> TemplateCandidate:
        eps = "torch.finfo(x.dtype).eps" if op.eps is None else repr(op.eps)
        head = [
            "x = x.contiguous()",
            "out = torch.empty_like(x)",
            f"eps = {eps}",
        ]
        if op.last:
            head += [
                f"n_cols = x.shape[-{op.ndims}:].numel()",
                f"weight = {op.weight}" if op.weight else "weight = x  # none (HAS_W=False)",
                f"bias = {op.bias}" if op.bias else "bias = x  # none (HAS_B=False)",
            ]
        forward = "\n".join(head) + "\n" + forward.strip("\n")
        source = render_candidate(self.name, variant, op, analysis, space, kernels, forward)
        return TemplateCandidate(self.name, variant, source, note=op.describe())


TEMPLATES: list[Template] = [NormTemplate("layer_norm"), NormTemplate("rms_norm")]
