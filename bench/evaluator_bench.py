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

Modules
-------
This file is the command line. The rest lives beside it in ``bench/`` (imported from there:
``bench/`` is on ``sys.path`` when the script runs):

* ``bench_cases.py``: the case list, built from the bench tasks and ``tests/corpus/manifest.py``,
  and the ``--only`` selection.
* ``bench_candidates.py``: the Triton candidate sources written for the bench tasks.
* ``bench_runner.py``: running the cases through the evaluators, one row per case.
* ``bench_report.py``: the table and the summary.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

# Run as a script, Python has put bench/ (this file's folder) on sys.path, where the bench modules
# import each other from; make sure of it however this file is loaded. The repository root is for
# evaluator_worker.
BENCH_DIR = str(Path(__file__).resolve().parent)
if BENCH_DIR not in sys.path:
    sys.path.insert(0, BENCH_DIR)

from bench_cases import ROOT, Case, all_cases, select  # noqa: E402

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from bench_report import summarise, summary_text, table  # noqa: E402
from bench_runner import Row, Runner, progress, share_zygote  # noqa: E402

SCALE_ENV = "KERNELMAP_BENCH_SCALE"
BATCH_SCALE_ENV = "KERNELMAP_BENCH_BATCH_SCALE"
SMALL_SCALE = 16
CPU_BATCH_SCALE = 64  # the Triton interpreter runs one program at a time
DEFAULT_TIMEOUT_S = 120.0


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
