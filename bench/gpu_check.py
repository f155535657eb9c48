# Device command (one line, from the repository root, .whl carried: see bench/wheels.txt):
# python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site && python3 bench/gpu_check.py "$OUT/gpu-check"  # noqa: E501
"""GPU check: everything a GPU host must do right, in at most 8 minutes, one table.

Steps
-----
Each step is its own subprocess under its own time limit, so a slow step cannot eat the others:
its limit is its budget plus what the steps before it left unused (never the budgets of the
steps after it). At its limit the step's process group gets SIGINT (the evaluator bench then
reports the cases it finished), and SIGKILL a few seconds later; the step is recorded as
``timeout`` and the check goes on. The check stops within 475 s on a GPU (700 s on the dry run).
Budgets, in seconds, on a GPU (dry run in brackets; they sum to 470 [690]):

==================  =========  ===========================================================
step                budget     what
==================  =========  ===========================================================
env                 25 [60]    Python, kernel, GPU, driver, CUDA, versions, gcc/nvcc/Python
                               headers, and whether the search path imports (the wheels)
fork_cuda           20 [30]    fork after the zygote's imports keeps CUDA uninitialised
ipc                 35 [60]    CUDA IPC across the sandbox, a CuPy-owned output included
compile             40 [90]    cold and warm first compile (Triton), fresh evaluator
timing              60 [90]    tiny and 1 GiB ReLU against the copy bandwidth
memory              45 [60]    ``bench/memory_bench.py``: peak memory per input byte, 1 GiB
                               [8 MiB, targets not held]; skipped if the file is missing
evaluator_bench     110 [120]  ``bench/evaluator_bench.py --small``, 20 cases (dry run: 3)
search:<task>       3 x 45     template search, budget 5 [3], on softmax, the GELU chain
                    [3 x 60]   and cross-entropy, shapes / 16 [/ 512, batch / 1024]
==================  =========  ===========================================================

The preflight probes (fork_cuda .. memory) are ``bench/gpu_preflight.py``; the search runs
``bench/search_bench.py`` once per task.

Output
------
At most 8 JSON files in the directory given on the command line: ``env.json``,
``preflight.json`` (the five probes), ``evaluator_bench.json``, ``search.json`` (the three
searches) and ``summary.json`` (the table's rows and the sandbox mode). Each step's record holds
its command, limit, seconds, exit code, status and the tail of its output. The table (one row per
step: status ``ok``/``fail``/``timeout``/``skipped``, key figures, seconds) is printed at the end,
followed by the sandbox mode the evaluations ran in: what the sandbox applied
(``features['network_isolated']`` and the ``sandbox:`` messages of every evaluation seen).

Exit status: 0 when every step is ``ok`` or ``skipped``, 1 when one failed or timed out, 2 for a
usage error or, without ``--dry-run``, when no CUDA GPU is visible.

``--dry-run`` runs the same steps on the CPU with small sizes (Triton in its interpreter); it is a
CI test (``tests/bench/test_gpu_check.py``), so the check cannot rot.

Needs only torch, triton, numpy, cupy (optional) and httpx, plus the wheels of
``bench/wheels.txt`` for the search (ribs, sqlalchemy, alembic, pydantic-settings and the small
packages they need that the GPU image lacks).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
TOTAL_S = {"gpu": 475.0, "dry": 700.0}  # the import of torch and the writes fit in 480 s
SEARCH_TASKS = ("softmax", "gelu_chain", "cross_entropy")
SEARCH_BUDGET = {"gpu": 5, "dry": 3}
# Divisors of the longest dim / of the batch of the search tasks (the task files read them).
SEARCH_SCALE = {"gpu": ("16", "1"), "dry": ("512", "1024")}
DRY_BENCH_CASES = "softmax_small/*,corpus/zeros,corpus/try_fallback"
# On the GPU: the controls of every bench task, the GPU-only hacks and a few CPU-side ones; the
# whole corpus (54 cases) does not fit the step's share of the 8 minutes.
GPU_BENCH_CASES = (
    "softmax_small/*,softmax/*,relu/*,layernorm/*,corpus/softmax_triton_gpu,"
    "corpus/reference_softmax_gpu,corpus/after_ten_calls_gpu,corpus/stale_empty_gpu,"
    "corpus/side_stream,corpus/patch_event_timer_nogate,corpus/illegal_address,"
    "corpus/illegal_address+next,corpus/memo_id,corpus/bf16_compute"
)
PROBES = ("fork_cuda", "ipc", "compile", "timing", "memory")


@dataclasses.dataclass
class Step:
    """One subprocess of the check: its command, limit and (after :meth:`run`) outcome."""

    name: str
    argv: list[str]
    budget_s: float
    json_path: Path | None = None
    env: dict[str, str] = dataclasses.field(default_factory=dict)
    status: str = "skipped"
    seconds: float = 0.0
    rc: int | None = None
    output_tail: str = ""
    report: Any = None
    why: str = ""

    def run(self, limit_s: float, workdir: Path) -> None:
        """Run under ``limit_s``: SIGINT to the group at the limit minus a grace, then SIGKILL."""
        log = workdir / f"{self.name.replace(':', '_')}.log"
        grace = min(10.0, 0.15 * limit_s)
        t0 = time.monotonic()
        with open(log, "w+b") as out:
            proc = subprocess.Popen(
                self.argv,
                cwd=ROOT,
                env={**os.environ, **self.env},
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, so a timeout kills all of it
            )
            timed_out = False
            try:
                self.rc = proc.wait(max(1.0, limit_s - grace))
            except subprocess.TimeoutExpired:
                timed_out = True
                _signal_group(proc.pid, signal.SIGINT)
                try:
                    self.rc = proc.wait(grace)
                except subprocess.TimeoutExpired:
                    _signal_group(proc.pid, signal.SIGKILL)
                    self.rc = proc.wait()
            _signal_group(proc.pid, signal.SIGKILL)  # whatever it left behind in its group
            out.seek(0)
            self.output_tail = out.read()[-4000:].decode(errors="replace")
        self.seconds = time.monotonic() - t0
        if self.json_path is not None and self.json_path.is_file():
            try:
                self.report = json.loads(self.json_path.read_text())
            except ValueError as e:
                self.why = f"unreadable JSON: {e}"
        if timed_out:
            self.status, self.why = "timeout", f"killed at its {limit_s:.0f} s limit"
        else:
            self.status = _status(self, self.report)

    def record(self) -> dict[str, Any]:
        """The step as stored in its JSON file."""
        return {
            "step": self.name,
            "status": self.status,
            "why": self.why,
            "argv": self.argv[1:],
            "env": self.env,
            "budget_s": self.budget_s,
            "seconds": round(self.seconds, 2),
            "rc": self.rc,
            "report": self.report,
            "output_tail": self.output_tail,
        }


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _status(step: Step, report: Any) -> str:
    """ok/fail from the step's exit code and its own report."""
    if step.rc != 0:
        step.why = step.why or f"exit code {step.rc}"
        return "fail"
    if report is None:
        step.why = step.why or "wrote no JSON"
        return "fail"
    if step.name.startswith("search:"):
        rows = report if isinstance(report, list) else []
        bad = [r for r in rows if not r.get("evaluations") or r.get("verdict") != "OK"]
        if not rows or bad:
            step.why = "no evaluation, or the best candidate is not OK"
            return "fail"
        return "ok"
    if step.name == "evaluator_bench":
        s = report.get("summary", {})
        if not (
            s.get("honest_all_ok") and s.get("adversarial_expected") == s.get("adversarial_total")
        ):
            step.why = "unexpected verdicts: " + ", ".join(
                s.get("honest_failed", []) + s.get("adversarial_failed", [])
            )
            return "fail"
        return "ok"
    step.why = "; ".join(report.get("problems", []))[:300]
    return str(report.get("status", "fail"))


# -- the steps --------------------------------------------------------------------------------
def build_steps(dry: bool, tmp: Path) -> list[Step]:
    """The check's steps, in order, with their budgets (see the module docstring)."""
    py = sys.executable
    mode = "dry" if dry else "gpu"
    flag = ["--dry-run"] if dry else []
    budgets = {
        "env": (25, 60),
        "fork_cuda": (20, 30),
        "ipc": (35, 60),
        "compile": (40, 90),
        "timing": (60, 90),
        "memory": (45, 60),
        "evaluator_bench": (110, 120),
        "search": (45, 60),
    }
    pick = lambda name: float(budgets[name][1 if dry else 0])  # noqa: E731
    steps = []
    for probe in ("env", *PROBES):
        out = tmp / f"{probe}.json"
        argv = [py, str(BENCH / "gpu_preflight.py"), probe, "--json", str(out), *flag]
        steps.append(Step(probe, argv, pick(probe), out))
    out = tmp / "evaluator_bench.json"
    bench = [py, str(BENCH / "evaluator_bench.py"), "--small", "--json", str(out)]
    if dry:
        bench += ["--device", "cpu", "--only", DRY_BENCH_CASES]
    else:
        bench += ["--only", GPU_BENCH_CASES]
    steps.append(Step("evaluator_bench", bench, pick("evaluator_bench"), out))
    scale, batch = SEARCH_SCALE[mode]
    for task in SEARCH_TASKS:
        out = tmp / f"search_{task}.json"
        argv = [
            py,
            str(BENCH / "search_bench.py"),
            str(BENCH / "tasks" / f"{task}.py"),
            "--budget",
            str(SEARCH_BUDGET[mode]),
            "--device",
            "cpu" if dry else "cuda",
            "--data-dir",
            str(tmp / f"search-data-{task}"),
            "--json",
            str(out),
        ]
        env = {"KERNELMAP_BENCH_SCALE": scale, "KERNELMAP_BENCH_BATCH_SCALE": batch}
        steps.append(Step(f"search:{task}", argv, pick("search"), out, env))
    return steps


# -- the table ----------------------------------------------------------------------------------
def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)


def figures(step: Step) -> str:
    """The key figures of a step, one short string."""
    r = step.report
    if r is None:
        return step.why
    if step.name in ("env", *PROBES):
        text = " ".join(f"{k}={_fmt(v)}" for k, v in r.get("figures", {}).items())
    elif step.name == "evaluator_bench":
        s = r.get("summary", {})
        text = (
            f"cases={len(r.get('cases', []))}"
            f" adversarial={s.get('adversarial_expected')}/{s.get('adversarial_total')}"
            f" honest_ok={s.get('honest_all_ok')} overhead_med_s={_fmt(s.get('overhead_median_s'))}"
        )
    else:
        rows = r if isinstance(r, list) else []
        text = " ".join(
            f"evals={x.get('evaluations')} best={x.get('verdict')}:{x.get('winner')}"
            f" best_ms={_fmt(x.get('best_ms'))} eager_ms={_fmt(x.get('eager_ms'))}"
            f" compile_ms={_fmt(x.get('compile_ms'))}"
            for x in rows
        )
    if step.status != "ok" and step.why:
        text += f" [{step.why}]"
    return text


def table(steps: list[Step]) -> str:
    """One row per step: name, status, key figures, seconds."""
    lines = [f"{'step':<22} {'status':<8} {'seconds':>8}  figures", "-" * 100]
    for s in steps:
        fig = figures(s)
        fig = fig if len(fig) <= 400 else fig[:399] + "~"
        lines.append(f"{s.name:<22} {s.status:<8} {s.seconds:>8.1f}  {fig}")
    return "\n".join(lines)


def host_sandbox(device: str) -> dict[str, Any]:
    """Whether this host allows the strict sandbox; where not, the steps run relaxed.

    The figure is the point (does the GPU host, a VM sandbox itself, permit namespaces,
    seccomp and an unprivileged uid?), so the check goes on either way and says which.
    """
    from evaluator_worker.sandbox import report

    found = report(device, "strict")
    if found["level"] != "strict":
        os.environ["KERNELMAP_SANDBOX"] = "relaxed"  # inherited by every step
        print(
            "gpu_check: the strict sandbox is refused here (missing "
            + "; ".join(found["missing"])
            + "): the steps run with KERNELMAP_SANDBOX=relaxed",
            file=sys.stderr,
            flush=True,
        )
    return found


def sandbox_mode(steps: list[Step]) -> dict[str, Any]:
    """What the sandbox applied in every evaluation the steps report."""
    seen: list[tuple[Any, list[str]]] = []
    for s in steps:
        r = s.report
        if s.name in PROBES and isinstance(r, dict):
            seen += [(e.get("network_isolated"), e.get("sandbox", [])) for e in r["evaluations"]]
        elif s.name == "evaluator_bench" and isinstance(r, dict):
            for c in r.get("cases", []):
                res = c.get("result") or {}
                if "network_isolated" in res.get("features", {}):
                    notes = [m for m in res.get("messages", []) if m.startswith("sandbox:")]
                    seen.append((res["features"]["network_isolated"], notes))
    seen = [x for x in seen if x[0] is not None]
    notes = sorted({n for _, ns in seen for n in ns})
    isolated = sum(1 for flag, _ in seen if flag)
    if not seen:
        mode = "unknown (no evaluation reported it)"
    elif isolated == len(seen):
        mode = "isolated"
    else:
        mode = "relaxed"
    return {"mode": mode, "evaluations": len(seen), "network_isolated": isolated, "notes": notes}


def write_outputs(out: Path, steps: list[Step], summary: dict[str, Any]) -> list[Path]:
    """env.json, preflight.json, evaluator_bench.json, search.json, summary.json."""
    by = {s.name: s for s in steps}
    docs = {
        "env.json": by["env"].record(),
        "preflight.json": {p: by[p].record() for p in PROBES},
        "evaluator_bench.json": by["evaluator_bench"].record(),
        "search.json": {s.name.split(":", 1)[1]: s.record() for s in steps if ":" in s.name},
        "summary.json": summary,
    }
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, doc in docs.items():
        path = out / name
        path.write_text(json.dumps(doc, indent=1, default=str) + "\n")
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Check a GPU host in at most 8 minutes.")
    p.add_argument("out", type=Path, help="directory for the JSON files (created)")
    p.add_argument("--dry-run", action="store_true", help="the same steps on the CPU, small")
    p.add_argument(
        "--only", help="comma-separated step names to run (the others are skipped); for debugging"
    )
    a = p.parse_args(argv)
    mode = "dry" if a.dry_run else "gpu"
    t_start = time.monotonic()
    if not a.dry_run:
        import torch

        if not torch.cuda.is_available():
            print(
                "gpu_check: no CUDA GPU is visible (torch.cuda.is_available() is False): run it on"
                " a GPU host, or pass --dry-run for the CPU run",
                file=sys.stderr,
            )
            return 2
    only = set(a.only.split(",")) if a.only else None
    deadline = t_start + TOTAL_S[mode]
    strict = host_sandbox("cpu" if a.dry_run else "cuda")
    with tempfile.TemporaryDirectory(prefix="kernelmap-gpu-check-") as tmp:
        steps = build_steps(a.dry_run, Path(tmp))
        if only is not None:
            for step in steps:
                if step.name not in only and step.name.split(":")[0] not in only:
                    step.status, step.why = "skipped", "not selected (--only)"
        todo = [s for s in steps if not s.why]
        for i, step in enumerate(todo):
            # Its budget plus the time earlier steps left unused; later steps keep theirs.
            limit = deadline - time.monotonic() - sum(s.budget_s for s in todo[i + 1 :])
            if limit < 5.0:
                step.why = f"the check's {TOTAL_S[mode]:.0f} s budget ran out"
                continue
            print(f"gpu_check: {step.name} (limit {limit:.0f} s) ...", file=sys.stderr, flush=True)
            step.run(limit, Path(tmp))
            print(
                f"gpu_check:   -> {step.status} in {step.seconds:.1f} s",
                file=sys.stderr,
                flush=True,
            )
    total = time.monotonic() - t_start
    sandbox = {**sandbox_mode(steps), "strict_probe": strict}
    summary = {
        "mode": "dry-run (CPU)" if a.dry_run else "gpu",
        "total_s": round(total, 1),
        "budget_s": TOTAL_S[mode],
        "sandbox": sandbox,
        "rows": [
            {
                "step": s.name,
                "status": s.status,
                "seconds": round(s.seconds, 2),
                "figures": figures(s),
                "why": s.why,
            }
            for s in steps
        ],
    }
    paths = write_outputs(a.out, steps, summary)
    print()
    print(f"GPU check ({summary['mode']}), {total:.0f} s of {TOTAL_S[mode]:.0f} s")
    print(table(steps))
    notes = f": {'; '.join(sandbox['notes'])}" if sandbox["notes"] else ""
    print(
        f"sandbox: {sandbox['mode']} (network isolated in {sandbox['network_isolated']} of"
        f" {sandbox['evaluations']} evaluations){notes}"
    )
    probe = sandbox["strict_probe"]
    print(
        "strict sandbox on this host: "
        + ("every layer set up" if probe["level"] == "strict" else "refused, missing ")
        + "; ".join(probe["missing"])
    )
    print(f"wrote {len(paths)} files to {a.out}")
    return 1 if any(s.status in ("fail", "timeout") for s in steps) else 0


if __name__ == "__main__":
    sys.exit(main())
