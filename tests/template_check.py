"""Check a candidate against a task at every point of its SEARCH_SPACE (CPU, Triton interpreter).

Usage: ``python -m tests.template_check TASK CANDIDATE [--limit N] [--seed S]``. Prints one JSON
object per parameter point (``params``, ``ok``, ``message``) and exits 1 if any point fails.
Template tests run it in a subprocess, because ``TRITON_INTERPRET`` must be set before triton
is imported. It uses the evaluator's own pieces (input generation, parameter re-randomisation,
float64 comparison), not a second implementation of them.
"""

from __future__ import annotations

import os

os.environ["TRITON_INTERPRET"] = "1"

import argparse  # noqa: E402
import copy  # noqa: E402
import itertools  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from evaluator_worker import compare, inputs, interpreter_fixes, static_gate  # noqa: E402
from evaluator_worker.modules import describe, import_file  # noqa: E402
from evaluator_worker.task import load_task, to_double  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("task")
    p.add_argument("candidate")
    p.add_argument("--limit", type=int, default=0, help="check at most N points (0: all)")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    interpreter_fixes.apply()  # as the evaluator's zygote does on the CPU
    task = load_task(a.task)
    source = Path(a.candidate).read_text()
    gate = static_gate.check_source(source, a.candidate)
    if not gate.ok:
        print(
            json.dumps(
                {"params": None, "ok": False, "message": "static gate: " + "; ".join(gate.reasons)}
            )
        )
        return 1
    space = gate.search_space or {}
    names = list(space)
    points = [dict(zip(names, vals, strict=True)) for vals in itertools.product(*space.values())]
    if a.limit:
        points = points[: a.limit]
    dev = torch.device("cpu")
    _, ref = inputs.build_reference(task.module, 1, 2, dev)
    ref64 = copy.deepcopy(ref).double()
    specs = [inputs.InputSpec(a.seed + 1), inputs.InputSpec(a.seed + 2, "normal")]
    specs += [inputs.InputSpec(a.seed + 3, "task", j) for j in range(task.n_shapes)]
    failed = 0
    for k, params in enumerate(points):
        ok, message = True, ""
        try:
            mod = import_file(a.candidate, f"kernelmap_template_check_{k}", inject=params)
            model = mod.ModelNew(*task.module.get_init_inputs())
            if ref.state_dict():
                model.load_state_dict(ref.state_dict(), strict=True)
            for spec in specs:
                xs = inputs.generate(task.module, spec, dev)
                with torch.no_grad():
                    out = compare.flatten(model(*xs))
                    want = compare.flatten(ref(*xs))
                    want64 = compare.flatten(ref64(*to_double(xs)))
                c = compare.compare_outputs(out, want64, want, task.tolerance)
                if not c.ok:
                    ok, message = False, f"{spec}: {c.message}"
                    break
        except Exception as e:  # a failing point is reported, and the others still run
            ok, message = False, describe(e)
        failed += not ok
        print(json.dumps({"params": params, "ok": ok, "message": message}), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
