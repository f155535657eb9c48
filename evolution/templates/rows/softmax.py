"""Softmax and log-softmax over the last dim: single-pass, online and split Triton templates.

Variants (each its own candidate, so the archive keeps them in different niches):

- ``single_pass``: a tile of ``ROWS_PER_PROGRAM`` whole rows held in registers, read once and
  written once. The forward sizes the tile to the row at run time, so a held-out shape with a
  longer row stays correct (only slower). Offered when the example row fits (<= 32768).
- ``online``: one program per row, an online max/sum pass over ``BLOCK``-wide column blocks, then
  a normalising pass. Any row length.
- ``split``: for long rows and few rows. Phase 1 has ``SPLIT`` programs per row, each writing its
  chunk's (max, sum of exp) partial; phase 2 combines a row's partials and normalises its chunk.
"""

from __future__ import annotations

from string import Template as Text

from evolution.templates.analysis import TaskAnalysis
from evolution.templates.base import Template, TemplateCandidate
from evolution.templates.rows.match import (
    SOFTMAX_KINDS,
    RowOp,
    match_row_op,
    options,
    pow2,
    render_candidate,
    split_space,
    warps_for,
)

# How the normalised value is written, from x, the row max m (finite) and the sum s of exp(x - m).
_OUTPUT = {
    "softmax": "tl.exp(x - m) * (1.0 / s)",
    "log_softmax": "(x - m) - tl.log(s)",
}

_SINGLE_PASS = Text("""
@triton.jit
def row_softmax_kernel(x_ptr, out_ptr, n_rows, n_cols, ROWS: tl.constexpr, BLOCK: tl.constexpr):
    # A tile of ROWS whole rows: each element is read once and written once.
    rows = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    cols = tl.arange(0, BLOCK)
    mask = (rows < n_rows)[:, None] & (cols < n_cols)[None, :]
    offs = rows[:, None] * n_cols + cols[None, :]
    x = tl.load(x_ptr + offs, mask=mask, other=-float("inf")).to(tl.float32)
    m = tl.max(x, axis=1)
    # Rows past the end (and rows of -inf) would give -inf - -inf = nan in the max shift.
    m = tl.where(m == -float("inf"), 0.0, m)[:, None]
    s = tl.sum(tl.exp(x - m), axis=1)[:, None]
    y = $output
    tl.store(out_ptr + offs, y.to(out_ptr.dtype.element_ty), mask=mask)
""")

_SINGLE_PASS_FORWARD = """
x = x.contiguous()
out = torch.empty_like(x)
n_cols = x.shape[-1]
n_rows = x.numel() // max(n_cols, 1)
block = triton.next_power_of_2(n_cols)
# Cap the tile at 16K values so a long held-out row does not exhaust registers.
rows = max(1, min(ROWS_PER_PROGRAM, 16384 // block))
grid = (triton.cdiv(n_rows, rows),)
row_softmax_kernel[grid](x, out, n_rows, n_cols, ROWS=rows, BLOCK=block, num_warps=num_warps)
return out
"""

# Online max/sum over x[row + start : row + start + length] (clipped to the row), shared by the
# online and split variants: per-lane running max m and sum s of exp(x - m), rescaled when the
# max grows (lanes that saw only -inf keep s = 0), then the lanes merged.
_ONLINE_LOOP = """
    m = tl.full([BLOCK], -float("inf"), tl.float32)
    s = tl.zeros([BLOCK], tl.float32)
    for off in range(0, length, BLOCK):
        idx = start + off + cols
        x = tl.load(x_ptr + row + idx, mask=idx < n_cols, other=-float("inf")).to(tl.float32)
        m_new = tl.maximum(m, x)
        alive = m_new != -float("inf")
        s = tl.where(alive, s * tl.exp(m - m_new) + tl.exp(x - m_new), 0.0)
        m = m_new
    m_all = tl.max(m, axis=0)
    s_all = tl.sum(tl.where(m == -float("inf"), 0.0, s * tl.exp(m - m_all)), axis=0)
"""

_ONLINE = Text("""
@triton.jit
def online_softmax_kernel(x_ptr, out_ptr, n_cols, BLOCK: tl.constexpr):
    # One program per row: pass 1 finds the row max and sum online, pass 2 normalises.
    row = tl.program_id(0).to(tl.int64) * n_cols
    cols = tl.arange(0, BLOCK)
    start, length = 0, n_cols
$loop
    # A row of -inf keeps a finite shift (torch gives nan there too, from 0 / 0).
    m = tl.where(m_all == -float("inf"), 0.0, m_all)
    s = s_all
    for off in range(0, n_cols, BLOCK):
        idx = off + cols
        mask = idx < n_cols
        x = tl.load(x_ptr + row + idx, mask=mask, other=-float("inf")).to(tl.float32)
        y = $output
        tl.store(out_ptr + row + idx, y.to(out_ptr.dtype.element_ty), mask=mask)
""")

_ONLINE_FORWARD = """
x = x.contiguous()
out = torch.empty_like(x)
n_cols = x.shape[-1]
n_rows = x.numel() // max(n_cols, 1)
online_softmax_kernel[(n_rows,)](x, out, n_cols, BLOCK=BLOCK, num_warps=num_warps)
return out
"""

_SPLIT = Text("""
@triton.jit
def softmax_partials_kernel(x_ptr, part_m_ptr, part_s_ptr, n_cols, chunk,
                            SPLIT: tl.constexpr, BLOCK: tl.constexpr):
    # Phase 1: program (row, c) writes the max and sum of exp of chunk c of its row.
    pid = tl.program_id(0).to(tl.int64)
    row = (pid // SPLIT) * n_cols
    cols = tl.arange(0, BLOCK)
    start, length = (pid % SPLIT) * chunk, chunk
$loop
    tl.store(part_m_ptr + pid, m_all)
    tl.store(part_s_ptr + pid, s_all)


@triton.jit
def softmax_normalise_kernel(x_ptr, out_ptr, part_m_ptr, part_s_ptr, n_cols, chunk,
                             SPLIT: tl.constexpr, BLOCK: tl.constexpr):
    # Phase 2: combine the row's SPLIT partials, then normalise chunk c.
    pid = tl.program_id(0).to(tl.int64)
    parts = (pid // SPLIT) * SPLIT + tl.arange(0, SPLIT)
    pm = tl.load(part_m_ptr + parts)
    ps = tl.load(part_s_ptr + parts)
    m = tl.max(pm, axis=0)
    m = tl.where(m == -float("inf"), 0.0, m)
    s = tl.sum(tl.where(pm == -float("inf"), 0.0, ps * tl.exp(pm - m)), axis=0)
    row = (pid // SPLIT) * n_cols
    cols = tl.arange(0, BLOCK)
    start = (pid % SPLIT) * chunk
    for off in range(0, chunk, BLOCK):
        idx = start + off + cols
        mask = idx < n_cols
        x = tl.load(x_ptr + row + idx, mask=mask, other=-float("inf")).to(tl.float32)
        y = $output
        tl.store(out_ptr + row + idx, y.to(out_ptr.dtype.element_ty), mask=mask)
""")

_SPLIT_FORWARD = """
x = x.contiguous()
out = torch.empty_like(x)
n_cols = x.shape[-1]
n_rows = x.numel() // max(n_cols, 1)
# No more chunks than BLOCK-wide column blocks; chunks start on BLOCK boundaries.
split = min(SPLIT, triton.next_power_of_2(triton.cdiv(n_cols, BLOCK)))
chunk = triton.cdiv(triton.cdiv(n_cols, split), BLOCK) * BLOCK
part_m = torch.empty(n_rows * split, device=x.device, dtype=torch.float32)
part_s = torch.empty(n_rows * split, device=x.device, dtype=torch.float32)
grid = (n_rows * split,)
softmax_partials_kernel[grid](x, part_m, part_s, n_cols, chunk, SPLIT=split, BLOCK=BLOCK,
                              num_warps=num_warps)
softmax_normalise_kernel[grid](x, out, part_m, part_s, n_cols, chunk, SPLIT=split,
                               BLOCK=BLOCK, num_warps=num_warps)
return out
"""

# Rows up to this long are offered the single-pass (row in registers) variant.
MAX_SINGLE_PASS = 32768


class SoftmaxTemplate(Template):
    """Softmax / log-softmax over the last dim, in three structural variants."""

    name = "softmax"

    def instantiate(self, analysis: TaskAnalysis) -> list[TemplateCandidate] | str:
        """Candidates for a reference that is exactly one softmax/log-softmax, else why not."""
        op = match_row_op(analysis)
        if isinstance(op, str):
            return op
        if op.kind not in SOFTMAX_KINDS:
            return f"the reference computes {op.kind}, not softmax or log-softmax"
        if not op.last:
            return (
                f"{op.describe()} is not over the last dim: its rows are strided, and the"
                " softmax templates need contiguous rows"
            )
        output = _OUTPUT[op.kind]
        loop = _ONLINE_LOOP.strip("\n")
        n, rows = op.n, op.outer
        block = pow2(n)
        cands = []
        if n <= MAX_SINGLE_PASS:
            per = max(1, min(16, 4096 // block))
            space = {
                "ROWS_PER_PROGRAM": options(per, 1, 16, 3),
                "num_warps": options(warps_for(block * per), 1, 32, 3),
            }
            cands.append(
                self._candidate(
                    "single_pass",
                    op,
                    analysis,
                    space,
                    _SINGLE_PASS.substitute(output=output),
                    _SINGLE_PASS_FORWARD,
                )
            )
        blk = min(block, 4096)
        space = {"BLOCK": options(blk, 16, 8192, 3), "num_warps": options(warps_for(blk), 1, 32, 3)}
        cands.append(
            self._candidate(
                "online",
                op,
                analysis,
                space,
                _ONLINE.substitute(output=output, loop=loop),
                _ONLINE_FORWARD,
            )
        )
        space = split_space(n, rows)
        if space is not None:
            cands.append(
                self._candidate(
                    "split",
                    op,
                    analysis,
                    space,
                    _SPLIT.substitute(output=output, loop=loop),
                    _SPLIT_FORWARD,
                )
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
        source = render_candidate(self.name, variant, op, analysis, space, kernels, forward)
        return TemplateCandidate(self.name, variant, source, note=op.describe())


TEMPLATES: list[Template] = [SoftmaxTemplate()]
