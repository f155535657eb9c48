"""Memory bench: peak memory of every evaluator process, per byte of the task's input.

What it measures
----------------
One evaluation of an honest candidate (the reference submitted as a candidate) against a
task of one elementwise op (ReLU) whose single fp32 input takes ``--size-mib`` MiB
(default 1024). The judge runs in a fresh process of its own, so its figures are this
evaluation's alone. Per process (judge, candidate, baseline, and the reference child that
makes the float64 expected outputs the judge used to make itself):

* CPU: peak RSS above the process's RSS once its imports were done (``VmHWM`` after a reset
  through ``/proc/self/clear_refs``, minus ``VmRSS`` then); the children report theirs over
  the evaluator's own channel (``features["memory"]``). The total peak RSS is shown too.
* CUDA: peak bytes allocated by PyTorch's caching allocator in that process.

Each figure is divided by the input bytes. Targets (issue 9): judge <= 6x, every other
process <= 5x; the evaluation itself must end ``OK``.

Run from the repository root::

    python bench/memory_bench.py                       # CPU, 1 GiB of input
    python bench/memory_bench.py --device cuda --json memory.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
JUDGE_TARGET, CHILD_TARGET = 6.0, 5.0

TASK = """
import torch
import torch.nn as nn


class Model(nn.Module):
    def __init__(self):
        super().__init__()

    def forward(self, x):
        return torch.relu(x)


ROWS, COLS = {rows}, {cols}


def get_inputs():
    return [torch.randn(ROWS, COLS)]


def get_init_inputs():
    return []
"""


def write_case(directory: Path, size_mib: int) -> tuple[Path, Path, int]:
    """The task and its reference-as-candidate; returns their paths and the input bytes."""
    cols = 4096
    rows = max(1, size_mib * (1 << 20) // (4 * cols))
    task = directory / "relu_task.py"
    task.write_text(textwrap.dedent(TASK.format(rows=rows, cols=cols)))
    cand = directory / "relu_reference.py"
    cand.write_text(task.read_text().replace("class Model(", "class ModelNew("))
    return task, cand, rows * cols * 4


def judge_main(task: str, cand: str, device: str, timeout_s: float) -> None:
    """The judge process: one evaluation, then its own figures and the children's as JSON."""
    sys.path.insert(0, str(ROOT))
    import torch

    from evaluator_worker import memory
    from evaluator_worker.config import EvalConfig
    from evaluator_worker.judge import Evaluator

    memory.mark_start()
    mode = "relaxed" if os.environ.get("KERNELMAP_SANDBOX") == "relaxed" else "strict"
    with Evaluator(EvalConfig(device=device, timeout_s=timeout_s, sandbox=mode)) as ev:
        res = ev.evaluate(task, cand)
    own = memory.stats(torch.device(device))
    print(
        json.dumps(
            {
                "verdict": res.verdict.value,
                "messages": res.messages,
                "judge": {**own, **res.features.get("memory", {}).get("judge", {})},
                "children": {
                    k: v for k, v in res.features.get("memory", {}).items() if k != "judge"
                },
                "stages_s": res.stages_s,
            }
        )
    )


def _factor(mem: dict, key: str, input_bytes: int) -> float | None:
    if key == "rss_above_start":
        peak, start = mem.get("rss_peak_bytes"), mem.get("rss_start_bytes")
        if peak is None or start is None:
            return None
        return (peak - start) / input_bytes
    v = mem.get(key)
    return None if v is None else v / input_bytes


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--size-mib", type=int, default=1024, help="input MiB (default 1024)")
    p.add_argument("--json", metavar="OUT", help="write the figures to OUT")
    p.add_argument(
        "--timeout", type=float, default=900.0, help="per-stage limit, s (CPU calls are slow)"
    )
    p.add_argument("--judge", nargs=2, metavar=("TASK", "CAND"), help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.judge:
        judge_main(*a.judge, a.device, a.timeout)
        return 0
    with tempfile.TemporaryDirectory(prefix="kernelmap-membench-") as tmp:
        task, cand, input_bytes = write_case(Path(tmp), a.size_mib)
        cmd = [sys.executable, __file__, "--device", a.device, "--timeout", str(a.timeout)]
        cmd += ["--judge", str(task), str(cand)]
        proc = subprocess.run(
            cmd, capture_output=True, text=True, env=dict(os.environ), cwd=ROOT, check=False
        )
    if proc.returncode != 0:
        print(proc.stdout[-2000:], proc.stderr[-4000:], sep="\n", file=sys.stderr)
        return 1
    run = json.loads(proc.stdout.strip().splitlines()[-1])
    key = "cuda_peak_allocated_bytes" if a.device == "cuda" else "rss_above_start"
    rows = []
    procs = {"judge": run["judge"], **run["children"]}
    for name, mem in procs.items():
        factor = _factor(mem, key, input_bytes)
        target = JUDGE_TARGET if name == "judge" else CHILD_TARGET
        rows.append(
            {
                "process": name,
                "factor": factor,
                "target": target,
                "ok": factor is not None and factor <= target,
                "rss_peak_gib": (mem.get("rss_peak_bytes") or 0) / 2**30,
                "cuda_peak_gib": (mem.get("cuda_peak_allocated_bytes") or 0) / 2**30,
            }
        )
    ok = run["verdict"] == "OK" and all(r["ok"] for r in rows) and len(rows) >= 3
    print(
        f"memory bench: ReLU of {input_bytes / 2**30:.2f} GiB fp32 on {a.device};"
        f" verdict {run['verdict']}; figure: "
        + ("peak CUDA allocated" if a.device == "cuda" else "peak RSS above the imports")
    )
    print(f"{'process':<10} {'x input':>8} {'target':>7} {'peak RSS GiB':>13} {'CUDA GiB':>9}")
    for r in rows:
        f = "n/a" if r["factor"] is None else f"{r['factor']:.2f}"
        print(
            f"{r['process']:<10} {f:>8} {r['target']:>7.1f} {r['rss_peak_gib']:>13.2f}"
            f" {r['cuda_peak_gib']:>9.2f}" + ("" if r["ok"] else "   OVER")
        )
    print("targets met" if ok else "TARGETS NOT MET")
    if a.json:
        Path(a.json).write_text(
            json.dumps(
                {
                    "device": a.device,
                    "input_bytes": input_bytes,
                    "verdict": run["verdict"],
                    "messages": run["messages"],
                    "rows": rows,
                    "stages_s": run["stages_s"],
                    "ok": ok,
                },
                indent=1,
            )
        )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
