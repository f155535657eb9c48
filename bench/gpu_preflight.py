"""Preflight probes of a GPU host: one probe per call, so that each runs under its own limit.

``bench/gpu_check.py`` runs every probe as its own subprocess; a probe can also be run alone::

    python bench/gpu_preflight.py PROBE --json OUT [--dry-run]

Probes
------
``env``
    Facts about the host: Python, kernel, GPU, driver, CUDA, the versions of torch, triton,
    cupy, numpy and httpx, whether gcc, nvcc and the Python headers are there (Triton builds its
    launchers with gcc), and whether the search path (``services.runs.search``: ribs, sqlalchemy,
    alembic, pydantic-settings) imports, i.e. whether the carried wheels are installed.
``fork_cuda``
    Imports what the zygote imports (torch, triton, cupy when present, ``evaluator_worker.child``),
    checks that CUDA is still uninitialised, forks, and in the child initialises CUDA and runs a
    tiny op (and a CuPy one). Times each part.
``ipc``
    Evaluates through :class:`~evaluator_worker.judge.Evaluator` a normal candidate and one whose
    output tensor's memory is owned by CuPy (``bench/probes/ipc_cupy.py``), so the judge cannot
    open it with torch's CUDA IPC handle. On the CPU a NumPy-owned output stands in for it and the
    CuPy part is skipped, with the reason.
``compile``
    Cold and warm first compile: one Evaluator evaluates two different Triton candidates one after
    the other, then a fresh Evaluator evaluates the first again; reports ``load_s`` and
    ``correctness_s`` (the first call, so the compile) of each.
``timing``
    A tiny (4096 elements) and a 1 GiB (256M fp32) ReLU, each with the reference as candidate and
    a Triton kernel; the big kernel's implied bandwidth (bytes read + written / median) against a
    device-to-device copy measured here with torch. A tiny kernel judged ``ASYNC_WORK`` or
    ``QUARANTINE`` is flagged.
``memory``
    Runs ``bench/memory_bench.py --device cuda --json OUT`` (peak memory of each evaluator
    process per byte of a 1 GiB input, against its targets) when that file exists; skipped
    otherwise. The dry run gives it 8 MiB on the CPU and only requires that it ran.

Every probe writes one JSON object: ``probe``, ``status`` (``ok``, ``fail`` or ``skipped``),
``figures`` (the key numbers, for the table), ``details``, ``evaluations`` (the evaluator results
it saw, with what the sandbox applied) and ``seconds``. The exit status is 0 for ``ok`` and
``skipped``, 1 for ``fail``, 2 for a usage error or a missing GPU.

``--dry-run`` runs the same probes on the CPU with small sizes (Triton in its interpreter): a
test that the probes still work, not a measurement.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import sysconfig
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PROBES_DIR = ROOT / "bench" / "probes"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

BIG_ROWS_DRY = 8  # 8 x 65536 fp32 = 2 MiB instead of 1 GiB
ROWS_ENV = "KERNELMAP_PROBE_ROWS"
MEMORY_MIB_DRY = 8
REQUIRED_DISTS = ("torch", "triton", "numpy", "httpx", "cupy-cuda13x", "cupy-cuda12x", "cupy")
# What bench/wheels.txt carries (the search path's packages the GPU image lacks).
SEARCH_DISTS = (
    "ribs",
    "array-api-compat",
    "numpy-groupies",
    "sqlalchemy",
    "alembic",
    "mako",
    "pydantic",
    "pydantic-core",
    "pydantic-settings",
    "annotated-types",
    "typing-inspection",
    "python-dotenv",
    "typing-extensions",
)
# The 1 GiB ReLU moves as many bytes as a copy: it should run near the copy bandwidth.
BANDWIDTH_BAND = (0.5, 1.25)


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _vtuple(v: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", v)[:4])


def unmet_requirements(dists: tuple[str, ...]) -> list[str]:
    """Plain ``name>=version`` requirements of installed ``dists`` that are missing or too old.

    Catches a carried wheel that needs a newer pure-Python dependency than the image has (pydantic
    needs a recent typing-extensions); requirements with markers or extras are left out.
    """
    unmet = []
    for dist in dists:
        if _version(dist) is None:
            continue
        for req in importlib.metadata.requires(dist) or []:
            m = re.fullmatch(r"\s*([A-Za-z0-9_.-]+)\s*(?:>=\s*([0-9][^,\s]*))?\s*(,.*)?", req)
            if m is None:  # markers, extras, brackets: not checked
                continue
            have = _version(m.group(1))
            if have is None:
                unmet.append(f"{dist} needs {req}: not installed")
            elif m.group(2) and _vtuple(have) < _vtuple(m.group(2)):
                unmet.append(f"{dist} needs {req}: {have} installed")
    return unmet


def _first_line(cmd: list[str], last: bool = False) -> str | None:
    """The first (or last) output line of a tool, or None when it is not on PATH."""
    if shutil.which(cmd[0]) is None:
        return None
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"error: {e}"
    lines = [x for x in (out.stdout or out.stderr).splitlines() if x.strip()]
    return (lines[-1] if last else lines[0]).strip() if lines else ""


def _cupy() -> tuple[Any, str | None]:
    """(the cupy module or None, why not)."""
    try:
        import cupy
    except Exception as e:  # ImportError, or a CUDA library cupy cannot find
        return None, f"cupy does not import: {type(e).__name__}: {e}"[:300]
    return cupy, None


# -- env ------------------------------------------------------------------------------------
def probe_env(dry: bool) -> dict[str, Any]:
    """Host facts; fails when something the check needs is missing."""
    import torch

    include = Path(sysconfig.get_paths()["include"]) / "Python.h"
    facts: dict[str, Any] = {
        "python": platform.python_version(),
        "executable": sys.executable,
        "kernel": platform.release(),
        "machine": platform.machine(),
        "versions": {d: _version(d) for d in REQUIRED_DISTS if _version(d)},
        "torch_cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "gcc": _first_line(["gcc", "--version"]),
        "nvcc": _first_line(["nvcc", "--version"], last=True),
        "python_headers": include.is_file(),
        "nvidia_smi": _first_line(
            [
                "nvidia-smi",
                "--query-gpu=name,driver_version,memory.total",
                "--format=csv,noheader",
            ]
        ),
        "search_versions": {d: _version(d) for d in SEARCH_DISTS},
        "search_unmet": unmet_requirements(SEARCH_DISTS),
        "pythonpath": os.environ.get("PYTHONPATH", ""),
    }
    if facts["cuda_available"]:
        props = torch.cuda.get_device_properties(0)
        facts.update(
            gpu=props.name,
            sms=props.multi_processor_count,
            memory_gib=round(props.total_memory / 2**30, 1),
            capability=f"{props.major}.{props.minor}",
            device_count=torch.cuda.device_count(),
        )
    t0 = time.monotonic()
    try:
        import services.runs.search  # noqa: F401  (ribs, sqlalchemy, alembic, pydantic-settings)

        facts["search_imports"] = True
    except Exception as e:
        facts["search_imports"] = False
        facts["search_import_error"] = f"{type(e).__name__}: {e}"[:400]
    facts["search_import_s"] = time.monotonic() - t0
    problems = []
    if not dry and not facts["cuda_available"]:
        problems.append("no CUDA GPU")
    if facts["gcc"] is None:
        problems.append("no gcc (Triton builds its launchers with it)")
    if not facts["python_headers"]:
        problems.append(f"no Python headers ({include})")
    if not facts["search_imports"]:
        problems.append(
            "the search path does not import (install the wheels of bench/wheels.txt):"
            f" {facts['search_import_error']}"
        )
    if facts["search_unmet"]:
        problems.append("carried wheels need: " + "; ".join(facts["search_unmet"]))
    figures = {
        "gpu": facts.get("gpu", "cpu (dry run)" if dry else None),
        "driver": facts["nvidia_smi"],
        "torch": facts["versions"].get("torch"),
        "triton": facts["versions"].get("triton"),
        "cupy": next((v for k, v in facts["versions"].items() if k.startswith("cupy")), None),
        "cuda": facts["torch_cuda"],
        "gcc": bool(facts["gcc"]),
        "nvcc": bool(facts["nvcc"]),
        "search_imports": facts["search_imports"],
    }
    return _result("fail" if problems else "ok", figures, facts, problems=problems)


# -- fork_cuda ------------------------------------------------------------------------------
def probe_fork_cuda(dry: bool) -> dict[str, Any]:
    """Fork after the zygote's imports; CUDA must be uninitialised before and work after."""
    os.environ["TRITON_INTERPRET"] = "1" if dry else "0"  # as the Evaluator sets it for the zygote
    t0 = time.monotonic()
    import torch

    import_torch_s = time.monotonic() - t0
    import triton  # noqa: F401

    if dry:
        from evaluator_worker import interpreter_fixes

        interpreter_fixes.apply()
    cupy, cupy_why = _cupy()
    import evaluator_worker.child  # noqa: F401

    imports_s = time.monotonic() - t0
    before = torch.cuda.is_initialized()
    read, write = os.pipe()
    t1 = time.monotonic()
    pid = os.fork()
    if pid == 0:  # the child: report through the pipe, never return into the caller
        os.close(read)
        out: dict[str, Any] = {"fork_to_child_s": time.monotonic() - t1}
        code = 0
        try:
            device = "cpu" if dry else "cuda"
            t = time.monotonic()
            x = torch.zeros(1024, device=device)
            if not dry:
                torch.cuda.synchronize()
            out["cuda_init_s"] = None if dry else time.monotonic() - t
            t = time.monotonic()
            out["op_value"] = float((x * 2 + 1).sum().item())
            out["op_s"] = time.monotonic() - t
            out["cuda_initialized_in_child"] = torch.cuda.is_initialized()
            if cupy is not None and not dry:
                t = time.monotonic()
                out["cupy_value"] = float(cupy.arange(1024, dtype=cupy.float32).sum().item())
                out["cupy_op_s"] = time.monotonic() - t
        except BaseException as e:
            out["error"] = f"{type(e).__name__}: {e}"[:400]
            code = 1
        os.write(write, json.dumps(out).encode())
        os._exit(code)
    os.close(write)
    chunks = []
    while chunk := os.read(read, 65536):
        chunks.append(chunk)
    os.close(read)
    _, status = os.waitpid(pid, 0)
    child = json.loads(b"".join(chunks) or b"{}")
    details = {
        "import_torch_s": import_torch_s,
        "imports_s": imports_s,
        "cuda_initialized_before_fork": before,
        "cuda_initialized_in_parent_after": torch.cuda.is_initialized(),
        "child_exit": os.waitstatus_to_exitcode(status),
        "child": child,
        "cupy": "imported" if cupy is not None else f"skipped: {cupy_why}",
    }
    problems = []
    if before:
        problems.append("CUDA was initialised by the zygote's imports: forked children break")
    if details["child_exit"] != 0 or "error" in child:
        problems.append(f"the forked child failed: {child.get('error')}")
    elif child.get("op_value") != 1024.0:  # sum(0 * 2 + 1) over 1024 elements
        problems.append(f"the forked child's torch op returned {child.get('op_value')}")
    elif cupy is not None and not dry and child.get("cupy_value") != 1023 * 1024 / 2:
        problems.append(f"the forked child's CuPy op returned {child.get('cupy_value')}")
    figures = {
        "cuda_before_fork": before,
        "imports_s": imports_s,
        "cuda_init_s": child.get("cuda_init_s"),
        "op_s": child.get("op_s"),
        "cupy_op_s": child.get("cupy_op_s"),
    }
    return _result("fail" if problems else "ok", figures, details, problems=problems)


# -- evaluations ------------------------------------------------------------------------------
def _evaluator(dry: bool, **overrides: Any):
    from evaluator_worker.config import EvalConfig
    from evaluator_worker.judge import Evaluator

    # The probes are about the evaluator's process and timing paths, not inductor: no
    # torch.compile baseline (it would cost tens of seconds per probe).
    cfg = EvalConfig(
        device="cpu" if dry else "cuda",
        timeout_s=60.0,
        compile_baseline="never",
        pass_env=(ROWS_ENV,),  # relu_big.py's size, through the sandbox's allow-list
        sandbox="relaxed" if os.environ.get("KERNELMAP_SANDBOX") == "relaxed" else "strict",
        **overrides,
    )
    return Evaluator(cfg)


def _evaluate(ev: Any, task: str, candidate: str, label: str | None = None) -> dict[str, Any]:
    """One evaluation as a plain record (an exception is recorded, not raised)."""
    rec: dict[str, Any] = {"label": label or Path(candidate).stem, "task": task}
    t0 = time.monotonic()
    try:
        r = ev.evaluate(PROBES_DIR / task, PROBES_DIR / candidate)
    except Exception as e:
        rec.update(verdict="ERROR", error=f"{type(e).__name__}: {e}"[:400])
        rec["wall_s"] = time.monotonic() - t0
        return rec
    t = r.timing
    rec.update(
        verdict=r.verdict.value,
        speedup_vs_eager=r.speedup_vs_eager,
        candidate_ms=t.candidate.median_ms if t else None,
        eager_ms=t.eager.median_ms if t and t.eager else None,
        floor_ms=t.floor_ms if t else None,
        sync_overhead_ms=t.sync_overhead_ms if t else None,
        memory=r.features.get("memory"),
        stages_s={k: round(v, 4) for k, v in r.stages_s.items()},
        network_isolated=r.features.get("network_isolated"),
        sandbox=[m for m in r.messages if m.startswith("sandbox:")],
        messages=[m[:300] for m in r.messages[:8]],
        wall_s=time.monotonic() - t0,
    )
    return rec


def _verdicts(evals: list[dict[str, Any]]) -> dict[str, str]:
    return {e["label"]: e["verdict"] for e in evals}


def probe_ipc(dry: bool) -> dict[str, Any]:
    """A normal output and a foreign-owned one (CuPy on the GPU, NumPy on the CPU)."""
    cupy, why = (None, "CuPy needs a CUDA GPU (dry run on the CPU)") if dry else _cupy()
    evals: list[dict[str, Any]] = []
    with _evaluator(dry) as ev:
        evals.append(_evaluate(ev, "relu_tiny.py", "relu_reference.py", "torch_owned"))
        if dry:
            evals.append(_evaluate(ev, "relu_tiny.py", "ipc_numpy.py", "numpy_owned"))
        if cupy is not None:
            evals.append(_evaluate(ev, "relu_tiny.py", "ipc_cupy.py", "cupy_owned"))
    figures: dict[str, Any] = _verdicts(evals)
    if cupy is None:
        figures["cupy_owned"] = "skipped"
    bad = [e["label"] for e in evals if e["verdict"] != "OK"]
    details = {"cupy": "ran" if cupy is not None else f"skipped: {why}"}
    return _result(
        "fail" if bad else "ok",
        figures,
        details,
        evals,
        problems=[f"{b}: not OK" for b in bad],
    )


def probe_compile(dry: bool) -> dict[str, Any]:
    """Cold and warm first compile in one Evaluator, and again in a fresh one."""
    evals: list[dict[str, Any]] = []
    with _evaluator(dry) as ev:
        evals.append(_evaluate(ev, "relu_tiny.py", "relu_triton.py", "first"))
        evals.append(_evaluate(ev, "relu_tiny.py", "relu_triton_pairs.py", "second"))
        zygote_s = ev.zygote_start_s
    with _evaluator(dry) as ev:
        evals.append(_evaluate(ev, "relu_tiny.py", "relu_triton.py", "fresh_evaluator"))
        zygote2_s = ev.zygote_start_s
    figures: dict[str, Any] = {}
    for e in evals:
        st = e.get("stages_s", {})
        figures[e["label"]] = (
            f"{e['verdict']} load {st.get('load_s', float('nan')):.2f}"
            f" corr {st.get('correctness_s', float('nan')):.2f}"
        )
    # The first evaluation of each evaluator builds Triton's shared, read-only module layer.
    figures["prebuild_s"] = [e.get("stages_s", {}).get("triton_prebuild_s") for e in evals]
    bad = [e["label"] for e in evals if e["verdict"] != "OK"]
    details = {"zygote_start_s": [zygote_s, zygote2_s]}
    return _result("fail" if bad else "ok", figures, details, evals, [f"{b}: not OK" for b in bad])


def _copy_bandwidth(numel: int, device: str) -> dict[str, Any]:
    """Device-to-device copy bandwidth (bytes read + written per second), median of 20 copies."""
    import torch

    src = torch.randn(numel, device=device)
    dst = torch.empty_like(src)
    times = []
    for i in range(25):
        if device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            dst.copy_(src)
            end.record()
            end.synchronize()
            dt = start.elapsed_time(end) / 1e3
        else:
            t0 = time.perf_counter()
            dst.copy_(src)
            dt = time.perf_counter() - t0
        if i >= 5:  # warm-up
            times.append(dt)
    med = statistics.median(times)
    nbytes = 2 * src.numel() * src.element_size()
    del src, dst
    if device == "cuda":
        torch.cuda.empty_cache()
    return {"bytes": nbytes, "median_s": med, "gb_per_s": nbytes / med / 1e9}


def probe_timing(dry: bool) -> dict[str, Any]:
    """Timing sanity: a tiny and a 1 GiB ReLU against the measured copy bandwidth."""
    rows = BIG_ROWS_DRY if dry else 4096
    os.environ[ROWS_ENV] = str(rows)  # read by relu_big.py here and in the evaluator's children
    numel = rows * 65536
    evals: list[dict[str, Any]] = []
    with _evaluator(dry, pool_bytes=4 << 30) as ev:
        for task, size in (("relu_tiny.py", "tiny"), ("relu_big.py", "big")):
            for cand, kind in (("relu_reference.py", "reference"), ("relu_triton.py", "triton")):
                evals.append(_evaluate(ev, task, cand, f"{size}_{kind}"))
    copy = _copy_bandwidth(numel, "cpu" if dry else "cuda")
    figures: dict[str, Any] = {"copy_gb_s": copy["gb_per_s"]}
    overheads = [e["sync_overhead_ms"] for e in evals if e.get("sync_overhead_ms") is not None]
    figures["sync_overhead_ms"] = max(overheads) if overheads else None
    problems, flags = [], []
    for e in evals:
        if e["verdict"] != "OK":
            problems.append(f"{e['label']}: {e['verdict']}")
        if e["label"].startswith("tiny") and e["verdict"] in ("ASYNC_WORK", "QUARANTINE"):
            flags.append(f"{e['label']} judged {e['verdict']}: the timing of tiny kernels is off")
        ms = e.get("candidate_ms")
        figures[f"{e['label']}_ms"] = ms
        if e["label"].startswith("big") and ms:
            bw = 2 * numel * 4 / (ms / 1e3) / 1e9
            e["implied_gb_s"] = bw
            e["ratio_to_copy"] = bw / copy["gb_per_s"]
            figures[f"{e['label']}_x_copy"] = e["ratio_to_copy"]
            lo, hi = BANDWIDTH_BAND
            if not dry and not lo <= e["ratio_to_copy"] <= hi:
                flags.append(
                    f"{e['label']}: implied {bw:.0f} GB/s is {e['ratio_to_copy']:.2f}x the copy"
                    f" bandwidth (expected {lo}-{hi}x)"
                )
    details = {"big_numel": numel, "big_bytes": numel * 4, "copy": copy, "flags": flags}
    if dry:
        details["note"] = "dry run: CPU timings mean nothing; interpreted Triton is not timed"
    status = "fail" if problems or flags else "ok"
    return _result(status, figures, details, evals, problems + flags)


def probe_memory(dry: bool, out: Path) -> dict[str, Any]:
    """``bench/memory_bench.py --json OUT``: its own figures and its exit status."""
    script = ROOT / "bench" / "memory_bench.py"
    mem_json = out.with_name(out.stem + ".memory_bench.json")
    argv = [sys.executable, str(script), "--json", str(mem_json)]
    # 1 GiB on the GPU; a small input on the dry run (1 GiB on the CPU takes minutes).
    argv += ["--device", "cpu", "--size-mib", str(MEMORY_MIB_DRY)] if dry else ["--device", "cuda"]
    # The whole probe runs under gpu_check's limit, which kills this process group on timeout.
    proc = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT)
    report: Any = None
    if mem_json.is_file():
        report = json.loads(mem_json.read_text())
        mem_json.unlink()
    figures: dict[str, Any] = {"rc": proc.returncode}
    if isinstance(report, dict):
        figures["verdict"] = report.get("verdict")
        for row in report.get("rows", []):
            if isinstance(row, dict) and "process" in row:
                figures[f"{row['process']}_x_input"] = row.get("factor")
    details = {
        "argv": argv[1:],
        "report": report,
        "output_tail": (proc.stdout + proc.stderr)[-3000:],
    }
    problems = [] if proc.returncode == 0 else [f"memory_bench.py exited {proc.returncode}"]
    if dry and isinstance(report, dict) and report.get("verdict") == "OK":
        # An 8 MiB input is dwarfed by fixed costs (the timing pool, the imports): on the dry
        # run the factors are not held to the 1 GiB targets, only the run must work.
        details["note"] = "dry run: factors of an 8 MiB input, not held to the targets"
        problems = []
    return _result("fail" if problems else "ok", figures, details, problems=problems)


def _result(
    status: str,
    figures: dict[str, Any],
    details: dict[str, Any],
    evaluations: list[dict[str, Any]] | None = None,
    problems: list[str] | None = None,
) -> dict[str, Any]:
    return {
        "status": status,
        "figures": figures,
        "problems": problems or [],
        "details": details,
        "evaluations": evaluations or [],
    }


PROBES: dict[str, Callable[..., dict[str, Any]]] = {
    "env": probe_env,
    "fork_cuda": probe_fork_cuda,
    "ipc": probe_ipc,
    "compile": probe_compile,
    "timing": probe_timing,
    "memory": probe_memory,
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Run one preflight probe of a GPU host.")
    p.add_argument("probe", choices=sorted(PROBES))
    p.add_argument("--json", type=Path, required=True, metavar="OUT", help="write the result here")
    p.add_argument("--dry-run", action="store_true", help="on the CPU, with small sizes")
    a = p.parse_args(argv)
    if not a.dry_run and a.probe != "env":
        import torch

        if not torch.cuda.is_available():
            print(
                "gpu_preflight: no CUDA GPU is visible; pass --dry-run for the CPU run",
                file=sys.stderr,
            )
            return 2
    t0 = time.monotonic()
    try:
        fn = PROBES[a.probe]
        res = fn(a.dry_run, a.json) if a.probe == "memory" else fn(a.dry_run)
    except Exception as e:  # a broken probe is a failed probe, reported like the others
        res = _result("fail", {"error": f"{type(e).__name__}: {e}"[:200]}, {})
        res["details"]["traceback"] = traceback.format_exc()[-4000:]
    res = {"probe": a.probe, "dry_run": a.dry_run, **res, "seconds": time.monotonic() - t0}
    a.json.write_text(json.dumps(res, indent=1, default=str) + "\n")
    print(f"gpu_preflight {a.probe}: {res['status']}", *res["problems"], sep="\n  ")
    return 1 if res["status"] == "fail" else 0


if __name__ == "__main__":
    sys.exit(main())
