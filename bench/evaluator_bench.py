"""Evaluator benchmark: what one evaluation costs, whether its timing is fair and whether its
verdicts hold, on KernelBench-sized tasks, on a GPU host.

What it measures
----------------
Every case is one candidate file evaluated against one task by :class:`Evaluator`; the report
prints one row per case and a summary.

* Bench tasks (``bench/tasks/``, KernelBench format): softmax over dim 1 of (4096, 393216)
  fp32 (level 1 #23), ReLU of (4096, 393216) (#19), LayerNorm over the last 3 dims of
  (16, 64, 256, 256) (#40), and a quick softmax of (64, 1000). Each gets two candidates,
  written to a temporary directory: the reference submitted as a candidate (the task source
  with ``Model`` renamed ``ModelNew``) and a correct Triton kernel (a two-pass online row
  softmax looped over column blocks, an elementwise ReLU, a LayerNorm split into per-chunk
  statistics and a normalise pass), each with a ``SEARCH_SPACE`` whose first values are used.
* The adversarial corpus of the repository (``tests/corpus/manifest.py``): every case with a
  candidate file or built from the reference, GPU cases included; cases with a ``template``
  (the network hack needs a listening socket) are left out. Gate-off cases run in their own
  :class:`Evaluator` with the static gate off. Cases that need more than one evaluation
  (infinite loop, illegal address) are followed by an honest candidate on the same evaluator
  (row ``<case>+next``), which must still be ``OK``.
* Per case: the verdict against the expected set; speedup against eager PyTorch and against
  torch.compile; candidate and eager median ms and the speed-of-light floor; and the wall-clock
  split reported by the evaluator: ``spawn_s`` (fork of a sandboxed child from the zygote),
  ``load_s`` (CUDA init, the task and candidate imports, parameter loading), ``correctness_s``
  (the trials, including the first call, so the Triton compile), ``measure_s`` (timing against
  the baselines, including the baseline child and torch.compile) and ``total_s``.
* Per-candidate process overhead = ``spawn_s + load_s + zygote share``, where the zygote share
  is the zygote's start time divided by the candidates its evaluator ran. The import of the
  candidate itself is part of ``load_s`` and not separated.
* The judge's own loading of each task (import, ``get_inputs()`` on the CPU, validation against
  float64) is timed once per task and printed apart; it is not part of any case's ``total_s``.

Targets
-------
* Median per-candidate overhead <= 1.5 s.
* Every reference-as-candidate control has ``speedup_vs_eager`` in [0.97, 1.03] (on the CPU
  this is informational: CPU timings are noisy).
* Every adversarial case gets one of its expected verdicts (and a timer patch never a fast OK).
* No honest control (reference-as-candidate, correct Triton or torch candidates) is rejected.

Running it
----------
On a GPU host (H100/H200) that has torch, triton and numpy (cupy optional), from the repository
root (the script puts the repository on ``sys.path`` itself)::

    python bench/evaluator_bench.py --small          # quick first run: big shapes / 16
    python bench/evaluator_bench.py                  # the full KernelBench shapes
    python bench/evaluator_bench.py --only 'softmax/*,corpus/zeros' --json bench.json
    python bench/evaluator_bench.py --list           # the case names

Without a CUDA GPU it exits with status 2, unless ``--device cpu`` is given: then everything
runs on the CPU (Triton kernels in Triton's interpreter, which the evaluator selects itself),
GPU-only corpus cases are skipped and the big tasks run only when scaled (``--small``), with
their batch also divided by 64 so that the interpreter finishes. That mode smoke-tests this
script; its timings mean nothing. The exit status is 0 whenever the report was printed, even
when cases failed: it is a report, not a test.

Options
-------
``--device {cuda,cpu}``
    Where candidates run (default cuda).
``--small``
    Divide the longest dim of the big tasks by 16 (``KERNELMAP_BENCH_SCALE=16``).
``--scale N``
    Divide it by N instead.
``--only NAME[,NAME...]``
    Run only these cases; each NAME is a case name or a shell pattern (``'corpus/*'``).
``--timeout S``
    Per-stage timeout of each evaluation in seconds (default 120); corpus cases that bring
    their own (the infinite loop: 5 s) keep it.
``--json OUT``
    Also write every result (``EvalResult.to_dict(raw=False)``), the setup and the summary.
``--list``
    Print the case names and exit.

The task files read ``KERNELMAP_BENCH_SCALE`` (divisor of the longest dim) and
``KERNELMAP_BENCH_BATCH_SCALE`` (divisor of the batch); the bench sets both before the first
evaluation, and the evaluator's zygote and children inherit them.
"""

from __future__ import annotations

import argparse
import dataclasses
import fnmatch
import gc
import importlib.util
import json
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from evaluator_worker.config import EvalConfig  # noqa: E402
from evaluator_worker.judge import Evaluator  # noqa: E402
from evaluator_worker.result import EvalResult  # noqa: E402

TASKS_DIR = ROOT / "bench" / "tasks"
MANIFEST = ROOT / "tests" / "corpus" / "manifest.py"
SCALE_ENV = "KERNELMAP_BENCH_SCALE"
BATCH_SCALE_ENV = "KERNELMAP_BENCH_BATCH_SCALE"
SMALL_SCALE = 16
CPU_BATCH_SCALE = 64  # the Triton interpreter runs one program at a time
DEFAULT_TIMEOUT_S = 120.0
REFERENCE_BAND = (0.97, 1.03)
OVERHEAD_TARGET_S = 1.5
OK = frozenset({"OK"})
BIG_TASKS = ("softmax", "relu", "layernorm")
FOLLOW_UP = "softmax_triton"  # the corpus control run after a case that kills its process

# -- honest Triton candidates ------------------------------------------------------------------

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


# -- cases -------------------------------------------------------------------------------------


@dataclasses.dataclass
class Case:
    """One candidate against one task, and the verdicts that count as the evaluator holding.

    ``kind`` is ``"reference"`` (the task's reference as a candidate), ``"control"`` (another
    honest candidate) or ``"adversarial"``. The candidate is ``candidate`` (an existing file)
    or ``source`` (text the bench writes to its temporary directory).
    """

    name: str
    task: Path
    expected: frozenset[str]
    kind: str
    candidate: Path | None = None
    source: str | None = None
    gate: bool = True
    timeout_s: float | None = None
    gpu_only: bool = False
    big: bool = False
    max_speedup: float | None = None


def reference_source(task: Path) -> str:
    """The task's source turned into a candidate: ``Model`` renamed ``ModelNew``."""
    return re.sub(r"\bModel\b", "ModelNew", task.read_text(encoding="utf-8"))


def load_manifest() -> Any:
    """``tests/corpus/manifest.py``, imported by path (``tests/corpus`` is not a package)."""
    spec = importlib.util.spec_from_file_location("kernelmap_bench_corpus_manifest", MANIFEST)
    if spec is None or spec.loader is None:
        raise RuntimeError(f"cannot import {MANIFEST}")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses resolves annotations through sys.modules
    spec.loader.exec_module(mod)
    return mod


def bench_cases(names: tuple[str, ...]) -> list[Case]:
    """Reference-as-candidate and Triton candidates for the bench tasks ``names``."""
    out = []
    for name in names:
        task = TASKS_DIR / f"{name}.py"
        big = name in BIG_TASKS
        out.append(
            Case(f"{name}/reference", task, OK, "reference", source=reference_source(task), big=big)
        )
        out.append(
            Case(f"{name}/triton", task, OK, "control", source=TRITON_SOURCES[name], big=big)
        )
    return out


def corpus_cases() -> list[Case]:
    """Every corpus case with a candidate file or built from the reference (no templates).

    A case the manifest marks ``dedicated`` (it kills its process: an infinite loop, an illegal
    address) is followed by ``<name>+next``: the corpus's Triton softmax control on the same
    evaluator, which must still be OK.
    """
    manifest = load_manifest()
    good = manifest.BY_NAME[FOLLOW_UP]
    out = []
    for c in manifest.CASES:
        if c.template is not None:
            continue
        if c.candidate_path is None and not c.from_reference:
            continue
        kind = "reference" if c.from_reference else "control" if c.expected == OK else "adversarial"
        case = Case(
            f"corpus/{c.name}",
            c.task_path,
            frozenset(c.expected),
            kind,
            candidate=c.candidate_path,
            source=reference_source(c.task_path) if c.from_reference else None,
            gate=c.gate,
            timeout_s=c.timeout_s,
            gpu_only=c.gpu,
            max_speedup=c.max_speedup,
        )
        out.append(case)
        if c.dedicated:
            out.append(
                dataclasses.replace(
                    case,
                    name=f"{case.name}+next",
                    task=good.task_path,
                    expected=OK,
                    kind="control",
                    candidate=good.candidate_path,
                    source=None,
                    max_speedup=None,
                )
            )
    return out


def all_cases() -> list[Case]:
    """Every case, in run order: the quick softmax, the corpus, then the big tasks."""
    return bench_cases(("softmax_small",)) + corpus_cases() + bench_cases(BIG_TASKS)


def select(cases: list[Case], only: str | None) -> list[Case]:
    """The cases named by ``--only`` (names or shell patterns, comma-separated)."""
    if not only:
        return cases
    patterns = [p.strip() for p in only.split(",") if p.strip()]
    unknown = [p for p in patterns if not any(fnmatch.fnmatchcase(c.name, p) for c in cases)]
    if unknown:
        raise ValueError(f"--only: no case matches {unknown}; see --list")
    return [c for c in cases if any(fnmatch.fnmatchcase(c.name, p) for p in patterns)]


# -- running -----------------------------------------------------------------------------------


@dataclasses.dataclass
class Row:
    """One case's outcome."""

    case: Case
    evaluator: str
    result: EvalResult | None
    error: str | None
    wall_s: float
    zygote_share_s: float | None = None

    @property
    def verdict(self) -> str:
        return self.result.verdict.value if self.result is not None else "ERROR"

    @property
    def ok(self) -> bool:
        """An expected verdict, and no fast OK where the case bounds the speedup."""
        if self.result is None or self.verdict not in self.case.expected:
            return False
        s = self.result.speedup_vs_eager
        cap = self.case.max_speedup
        return not (self.verdict == "OK" and cap is not None and s is not None and s >= cap)

    @property
    def stages(self) -> dict[str, float]:
        return self.result.stages_s if self.result is not None else {}

    @property
    def spawned(self) -> bool:
        """Whether a candidate process was started (a static reject never starts one)."""
        return "spawn_s" in self.stages

    @property
    def overhead_s(self) -> float | None:
        """spawn_s + load_s + this case's share of its evaluator's zygote start."""
        if not self.spawned:
            return None
        st = self.stages
        return st["spawn_s"] + st.get("load_s", 0.0) + (self.zygote_share_s or 0.0)


def progress(text: str) -> None:
    """A progress line on stderr."""
    print(text, file=sys.stderr, flush=True)


class Runner:
    """Runs cases through one evaluator per (static gate, timeout) configuration."""

    def __init__(self, device: str, timeout_s: float, workdir: Path) -> None:
        self.device = device
        self.timeout_s = timeout_s
        self.workdir = workdir
        self.evaluators: dict[str, Evaluator] = {}
        self.task_load_s: dict[str, float] = {}
        self._loaded: set[tuple[str, str]] = set()

    def key(self, case: Case) -> str:
        timeout = case.timeout_s or self.timeout_s
        return f"gate={'on' if case.gate else 'off'},timeout={timeout:g}s"

    def evaluator(self, case: Case) -> Evaluator:
        key = self.key(case)
        if key not in self.evaluators:
            cfg = EvalConfig(
                device=self.device,
                static_gate=case.gate,
                timeout_s=case.timeout_s or self.timeout_s,
            )
            self.evaluators[key] = Evaluator(cfg)
        return self.evaluators[key]

    def candidate_file(self, case: Case) -> Path:
        if case.source is None:
            assert case.candidate is not None, case.name
            return case.candidate
        path = self.workdir / (re.sub(r"[^A-Za-z0-9_]+", "__", case.name) + ".py")
        path.write_text(case.source, encoding="utf-8")
        return path

    def load_task(self, ev: Evaluator, key: str, task: Path) -> None:
        """Load (and time) the task in the judge before the case, so total_s leaves it out."""
        if (key, str(task)) in self._loaded:
            return
        t0 = time.monotonic()
        ev.task(task)
        dt = time.monotonic() - t0
        self._loaded.add((key, str(task)))
        name = str(task.relative_to(ROOT)) if task.is_relative_to(ROOT) else str(task)
        self.task_load_s[name] = max(self.task_load_s.get(name, 0.0), dt)
        if dt > 1.0:
            progress(f"      (judge loaded {name} in {dt:.1f} s)")

    def run(self, case: Case) -> Row:
        key = self.key(case)
        t0 = time.monotonic()
        result, error = None, None
        try:
            ev = self.evaluator(case)
            self.load_task(ev, key, case.task)
            result = ev.evaluate(case.task, self.candidate_file(case))
        except Exception as e:  # the bench reports; one broken case must not end the run
            error = f"{type(e).__name__}: {' '.join(str(e).split())[:500]}"
        finally:
            if self.device == "cuda":
                # The judge's reference tensors live in this process: give the memory back.
                gc.collect()
                torch.cuda.empty_cache()
        return Row(case, key, result, error, time.monotonic() - t0)

    def close(self) -> None:
        for ev in self.evaluators.values():
            ev.close()


def share_zygote(rows: list[Row]) -> dict[str, tuple[float, int]]:
    """Spread each evaluator's zygote start time over the candidates it spawned."""
    per: dict[str, tuple[float, int]] = {}
    for r in rows:
        z, n = per.get(r.evaluator, (0.0, 0))
        per[r.evaluator] = (z + r.stages.get("zygote_start_s", 0.0), n + int(r.spawned))
    for r in rows:
        z, n = per[r.evaluator]
        r.zygote_share_s = z / n if n else None
    return per


# -- report ------------------------------------------------------------------------------------

COLUMNS = (
    ("case", 36, "<"),
    ("expected", 24, "<"),
    ("verdict", 16, "<"),
    ("ok", 2, "<"),
    ("x_eager", 7, ">"),
    ("x_comp", 7, ">"),
    ("cand_ms", 9, ">"),
    ("eager_ms", 9, ">"),
    ("floor_ms", 9, ">"),
    ("spawn_s", 7, ">"),
    ("load_s", 7, ">"),
    ("corr_s", 7, ">"),
    ("meas_s", 7, ">"),
    ("total_s", 7, ">"),
    ("ovh_s", 6, ">"),
)


def _num(x: float | None, fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


def _cells(r: Row) -> list[str]:
    res, st = r.result, r.stages
    t = res.timing if res is not None else None
    return [
        r.case.name,
        "|".join(sorted(r.case.expected)),
        r.verdict,
        "✓" if r.ok else "✗",
        _num(res.speedup_vs_eager if res else None, ".3f"),
        _num(res.speedup_vs_compile if res else None, ".3f"),
        _num(t.candidate.median_ms if t else None, ".4g"),
        _num(t.eager.median_ms if t and t.eager else None, ".4g"),
        _num(t.floor_ms if t else None, ".4g"),
        _num(st.get("spawn_s"), ".2f"),
        _num(st.get("load_s"), ".2f"),
        _num(st.get("correctness_s"), ".2f"),
        _num(st.get("measure_s"), ".2f"),
        _num(st.get("total_s", r.wall_s), ".2f"),
        _num(r.overhead_s, ".2f"),
    ]


def _line(cells: list[str]) -> str:
    parts = []
    for text, (_, width, align) in zip(cells, COLUMNS, strict=True):
        text = text if len(text) <= width else text[: width - 1] + "~"
        parts.append(format(text, f"{align}{width}"))
    return " ".join(parts).rstrip()


def table(rows: list[Row]) -> str:
    """The fixed-width table of all rows."""
    head = _line([name for name, _, _ in COLUMNS])
    lines = [head, "-" * len(head)]
    lines += [_line(_cells(r)) for r in rows]
    return "\n".join(lines)


def summarise(rows: list[Row], device: str, zygotes: dict[str, tuple[float, int]]) -> dict:
    """The figures the targets are about."""
    adversarial = [r for r in rows if r.case.kind == "adversarial"]
    honest = [r for r in rows if r.case.kind != "adversarial"]
    references = []
    for r in rows:
        if r.case.kind != "reference":
            continue
        s = r.result.speedup_vs_eager if r.result is not None else None
        within = s is not None and REFERENCE_BAND[0] <= s <= REFERENCE_BAND[1]
        references.append({"case": r.case.name, "speedup_vs_eager": s, "within_band": within})
    overheads = [r.overhead_s for r in rows if r.overhead_s is not None]
    median_ovh = statistics.median(overheads) if overheads else None
    return {
        "device": device,
        "adversarial_expected": sum(r.ok for r in adversarial),
        "adversarial_total": len(adversarial),
        "adversarial_failed": [r.case.name for r in adversarial if not r.ok],
        "honest_total": len(honest),
        "honest_all_ok": all(r.ok for r in honest),
        "honest_failed": [r.case.name for r in honest if not r.ok],
        "reference_band": list(REFERENCE_BAND),
        "references": references,
        "overhead_median_s": median_ovh,
        "overhead_min_s": min(overheads) if overheads else None,
        "overhead_max_s": max(overheads) if overheads else None,
        "overhead_n": len(overheads),
        "overhead_target_s": OVERHEAD_TARGET_S,
        "overhead_within_target": median_ovh is not None and median_ovh <= OVERHEAD_TARGET_S,
        "zygote_start_s": {k: z for k, (z, _) in zygotes.items()},
    }


def _mark(flag: bool) -> str:
    return "✓" if flag else "✗"


def summary_text(s: dict, rows: list[Row], task_load_s: dict[str, float]) -> str:
    """The summary lines under the table."""
    out = []
    for r in rows:
        if r.ok:
            continue
        msgs = [r.error] if r.error else (r.result.messages if r.result is not None else [])
        why = " | ".join(m for m in msgs[:2] if m) or "(no message)"
        out.append(f"  {r.case.name}: {r.verdict}: {why[:400]}")
    if out:
        out.insert(0, "Unexpected results:")
        out.append("")
    out.append("Summary")
    n_adv, tot = s["adversarial_expected"], s["adversarial_total"]
    out.append(f"  adversarial cases with an expected verdict: {n_adv}/{tot} {_mark(n_adv == tot)}")
    if s["adversarial_failed"]:
        out.append(f"    not as expected: {', '.join(s['adversarial_failed'])}")
    out.append(
        f"  honest controls all OK: {'yes' if s['honest_all_ok'] else 'no'}"
        f" ({s['honest_total'] - len(s['honest_failed'])}/{s['honest_total']})"
        f" {_mark(s['honest_all_ok'])}"
    )
    if s["honest_failed"]:
        out.append(f"    rejected: {', '.join(s['honest_failed'])}")
    lo, hi = REFERENCE_BAND
    note = " (informational on the CPU)" if s["device"] == "cpu" else ""
    out.append(f"  reference-as-candidate speedup_vs_eager within [{lo}, {hi}]{note}:")
    for ref in s["references"]:
        sp = ref["speedup_vs_eager"]
        out.append(f"    {ref['case']:<36} {_num(sp, '.3f'):>7} {_mark(ref['within_band'])}")
    if s["overhead_median_s"] is None:
        out.append("  per-candidate overhead: no candidate process was started")
    else:
        out.append(
            f"  per-candidate overhead (spawn_s + load_s + zygote share), median over"
            f" {s['overhead_n']} candidates: {s['overhead_median_s']:.2f} s"
            f" (min {s['overhead_min_s']:.2f}, max {s['overhead_max_s']:.2f});"
            f" target <= {OVERHEAD_TARGET_S} s {_mark(s['overhead_within_target'])}"
        )
    for key, z in s["zygote_start_s"].items():
        out.append(f"  zygote start [{key}]: {z:.2f} s")
    for name, dt in task_load_s.items():
        out.append(f"  judge task load (import, get_inputs, validation) {name}: {dt:.2f} s")
    return "\n".join(out)


def _setup_info(args: argparse.Namespace, scale: int, batch_scale: int) -> dict[str, Any]:
    info: dict[str, Any] = {
        "device": args.device,
        "scale": scale,
        "batch_scale": batch_scale,
        "timeout_s": args.timeout,
        "torch": torch.__version__,
        "python": sys.version.split()[0],
    }
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    if args.device == "cuda":
        props = torch.cuda.get_device_properties(torch.cuda.current_device())
        info.update(gpu=props.name, sms=props.multi_processor_count, cuda=torch.version.cuda)
    return info


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Benchmark the evaluator on KernelBench-sized tasks and the adversarial"
        " corpus (see the module docstring).",
    )
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    size = p.add_mutually_exclusive_group()
    size.add_argument(
        "--small",
        action="store_true",
        help=f"divide the longest dim of the big tasks by {SMALL_SCALE} (a quick first run)",
    )
    size.add_argument("--scale", type=int, help="divide the longest dim of the big tasks by N")
    p.add_argument("--only", help="comma-separated case names or shell patterns ('corpus/*')")
    p.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT_S,
        help=f"per-stage timeout of each evaluation, s (default {DEFAULT_TIMEOUT_S:g})",
    )
    p.add_argument("--json", metavar="OUT", help="write all results and the summary to OUT")
    p.add_argument("--list", action="store_true", help="print the case names and exit")
    args = p.parse_args(argv)
    if args.scale is not None and args.scale < 1:
        p.error("--scale must be at least 1")
    if args.timeout <= 0:
        p.error("--timeout must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(errors="replace")  # ✓/✗ on a terminal that cannot show them
    cases = all_cases()
    if args.list:
        for c in cases:
            flags = [c.kind, *(["gpu"] if c.gpu_only else []), *(["big"] if c.big else [])]
            flags += [] if c.gate else ["gate off"]
            print(f"{c.name:<40} {'|'.join(sorted(c.expected)):<26} {', '.join(flags)}")
        return 0
    try:
        cases = select(cases, args.only)
    except ValueError as e:
        print(f"evaluator_bench: {e}", file=sys.stderr)
        return 2
    if args.device == "cuda" and not torch.cuda.is_available():
        print(
            "evaluator_bench: no CUDA GPU is visible (torch.cuda.is_available() is False);"
            " run it on a GPU host, or pass --device cpu for a CPU smoke run",
            file=sys.stderr,
        )
        return 2
    scale = args.scale or (SMALL_SCALE if args.small else 1)
    batch_scale = CPU_BATCH_SCALE if args.device == "cpu" else 1
    run: list[Case] = []
    for c in cases:
        if args.device == "cpu" and c.gpu_only:
            progress(f"skip {c.name}: GPU only")
        elif args.device == "cpu" and c.big and scale == 1:
            progress(f"skip {c.name}: big tasks run on the CPU only scaled (--small)")
        else:
            run.append(c)
    # Read by the task files, in this process and (inherited) in the evaluator's children.
    os.environ[SCALE_ENV] = str(scale)
    os.environ[BATCH_SCALE_ENV] = str(batch_scale)
    setup = _setup_info(args, scale, batch_scale)
    progress(
        f"evaluator bench: {len(run)} cases on {setup.get('gpu', args.device)};"
        f" {SCALE_ENV}={scale} {BATCH_SCALE_ENV}={batch_scale}"
    )
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="kernelmap-bench-") as tmp:
        runner = Runner(args.device, args.timeout, Path(tmp))
        try:
            for i, case in enumerate(run, 1):
                progress(f"[{i}/{len(run)}] {case.name} ({runner.key(case)}) ...")
                row = runner.run(case)
                rows.append(row)
                progress(
                    f"      -> {row.verdict} {'ok' if row.ok else 'UNEXPECTED'}"
                    f" in {row.wall_s:.1f} s" + (f": {row.error}" if row.error else "")
                )
        except KeyboardInterrupt:
            progress("interrupted: reporting the cases that finished")
        finally:
            runner.close()
    zygotes = share_zygote(rows)
    summary = summarise(rows, args.device, zygotes)
    print(
        f"Evaluator bench on {setup.get('gpu', args.device)} (torch {setup['torch']},"
        f" triton {setup['triton']}); {SCALE_ENV}={scale}, {BATCH_SCALE_ENV}={batch_scale},"
        f" timeout {args.timeout:g} s"
    )
    print(table(rows))
    print()
    print(summary_text(summary, rows, runner.task_load_s))
    if args.json:
        doc = {
            "setup": setup,
            "task_load_s": runner.task_load_s,
            "summary": summary,
            "cases": [
                {
                    "name": r.case.name,
                    "task": str(r.case.task),
                    "candidate": str(r.case.candidate) if r.case.candidate else None,
                    "kind": r.case.kind,
                    "expected": sorted(r.case.expected),
                    "gate": r.case.gate,
                    "evaluator": r.evaluator,
                    "ok": r.ok,
                    "overhead_s": r.overhead_s,
                    "wall_s": r.wall_s,
                    "error": r.error,
                    "result": r.result.to_dict(raw=False) if r.result is not None else None,
                }
                for r in rows
            ],
        }
        Path(args.json).write_text(json.dumps(doc, indent=2, default=str) + "\n")
        progress(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
