"""``bench/gpu_check.py --dry-run``: the GPU check's steps still run, on the CPU.

The check is meant for GPU hosts, where nobody runs it often; this test runs every step of it on
the CPU with small shapes so that a change to the evaluator, the search or the benches that breaks
the check shows up here first.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
STEPS = [
    "env",
    "fork_cuda",
    "ipc",
    "compile",
    "timing",
    "memory",
    "evaluator_bench",
    "search:softmax",
    "search:gelu_chain",
    "search:cross_entropy",
]
PROBES = ["fork_cuda", "ipc", "compile", "timing", "memory"]

# bench/ is not a package: load the script as a module, leaving sys.path alone.
_spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "bench" / "gpu_check.py")
gpu_check = sys.modules.setdefault("gpu_check", importlib.util.module_from_spec(_spec))
_spec.loader.exec_module(gpu_check)  # registered first: its dataclasses look their module up


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess, Path]:
    out = tmp_path_factory.mktemp("gpu-check") / "out"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--dry-run", str(out)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=900,
    )
    return proc, out


def _load(out: Path, name: str) -> dict:
    return json.loads((out / name).read_text())


@pytest.mark.slow
@pytest.mark.timeout(960)
def test_dry_run_passes_and_writes_at_most_8_json_files(dry_run):
    proc, out = dry_run
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    files = sorted(p.name for p in out.iterdir())
    assert files == [
        "env.json",
        "evaluator_bench.json",
        "preflight.json",
        "search.json",
        "summary.json",
    ]
    assert len([f for f in files if f.endswith(".json")]) <= 8


@pytest.mark.slow
@pytest.mark.timeout(960)
def test_table_has_every_step_with_a_status(dry_run):
    proc, out = dry_run
    summary = _load(out, "summary.json")
    assert summary["mode"] == "dry-run (CPU)"
    rows = {r["step"]: r for r in summary["rows"]}
    assert list(rows) == STEPS
    memory_bench = (ROOT / "bench" / "memory_bench.py").is_file()
    for name, row in rows.items():
        want = "skipped" if name == "memory" and not memory_bench else "ok"
        assert row["status"] == want, (name, row)
        assert row["seconds"] > 0 or want == "skipped", row
    table = proc.stdout[proc.stdout.index("GPU check (dry-run (CPU))") :]
    lines = table.splitlines()
    assert lines[1].split() == ["step", "status", "seconds", "figures"]
    for name in STEPS:
        line = next(x for x in lines if x.startswith(name + " "))
        assert line.split()[1] == rows[name]["status"]
    # The sandbox mode is said, from what the evaluations reported.
    sandbox = summary["sandbox"]
    assert sandbox["evaluations"] >= 12
    assert sandbox["mode"] in ("isolated", "relaxed")
    assert f"sandbox: {sandbox['mode']}" in table


@pytest.mark.slow
@pytest.mark.timeout(960)
def test_env_reports_versions_and_the_search_imports(dry_run):
    _, out = dry_run
    env = _load(out, "env.json")["report"]
    assert env["status"] == "ok"
    d = env["details"]
    assert d["versions"]["torch"] and d["versions"]["triton"] and d["versions"]["numpy"]
    assert d["gcc"] and d["python_headers"] is True
    assert d["search_imports"] is True and d["search_unmet"] == []
    assert d["search_versions"]["ribs"].startswith("0.12")


@pytest.mark.slow
@pytest.mark.timeout(960)
def test_preflight_probes_ran(dry_run):
    _, out = dry_run
    pre = _load(out, "preflight.json")
    assert sorted(pre) == sorted(PROBES)
    rep = {name: rec["report"] for name, rec in pre.items()}
    for name in ("fork_cuda", "ipc", "compile", "timing"):
        assert rep[name]["status"] == "ok", (name, rep[name]["problems"])

    fork = rep["fork_cuda"]["details"]
    assert fork["cuda_initialized_before_fork"] is False
    assert fork["child_exit"] == 0 and fork["child"]["op_value"] == 1024.0

    ipc = rep["ipc"]
    verdicts = {e["label"]: e["verdict"] for e in ipc["evaluations"]}
    assert verdicts["torch_owned"] == "OK" and verdicts["numpy_owned"] == "OK"
    if importlib.util.find_spec("cupy") is None or "cupy_owned" not in verdicts:
        # CuPy is GPU-only: on the CPU its part is skipped, and says why.
        assert ipc["figures"]["cupy_owned"] == "skipped"
        assert ipc["details"]["cupy"].startswith("skipped: ")

    comp = rep["compile"]["evaluations"]
    assert [e["label"] for e in comp] == ["first", "second", "fresh_evaluator"]
    for e in comp:
        assert e["verdict"] == "OK", e
        assert e["stages_s"]["load_s"] > 0 and e["stages_s"]["correctness_s"] > 0

    timing = rep["timing"]
    assert {e["label"]: e["verdict"] for e in timing["evaluations"]} == {
        "tiny_reference": "OK",
        "tiny_triton": "OK",
        "big_reference": "OK",
        "big_triton": "OK",
    }
    assert timing["details"]["copy"]["gb_per_s"] > 0
    assert timing["figures"]["big_reference_ms"] > 0
    assert timing["figures"]["big_reference_x_copy"] > 0

    mem = rep["memory"]
    if (ROOT / "bench" / "memory_bench.py").is_file():
        assert mem["status"] == "ok" and mem["figures"]["verdict"] == "OK", mem["problems"]
    else:
        assert mem["status"] == "skipped"


@pytest.mark.slow
@pytest.mark.timeout(960)
def test_evaluator_bench_and_searches_ran(dry_run):
    _, out = dry_run
    bench = _load(out, "evaluator_bench.json")
    assert bench["status"] == "ok"
    cases = {c["name"]: c for c in bench["report"]["cases"]}
    assert cases["softmax_small/reference"]["result"]["verdict"] == "OK"
    assert cases["corpus/zeros"]["result"]["verdict"] == "INCORRECT"
    assert cases["corpus/try_fallback"]["result"]["verdict"] == "STATIC_REJECT"

    search = _load(out, "search.json")
    assert sorted(search) == ["cross_entropy", "gelu_chain", "softmax"]
    for task, rec in search.items():
        assert rec["status"] == "ok", (task, rec["why"], rec["output_tail"][-2000:])
        (row,) = rec["report"]
        assert row["evaluations"] == 3 and row["stopped"] == "budget"
        assert row["verdict"] == "OK" and row["best_ms"] > 0
        # The templates matched (the search tried more than the reference).
        assert "templates: template:" in rec["output_tail"]


def test_without_a_gpu_it_exits_2(tmp_path):
    pytest.importorskip("torch")
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "gpu_check.py"), str(tmp_path / "out")],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "no CUDA GPU" in proc.stderr and "--dry-run" in proc.stderr
    assert not (tmp_path / "out").exists()


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in state


def test_step_timeout_kills_its_process_group_and_the_check_goes_on(tmp_path):
    pid_file = tmp_path / "grandchild.pid"
    code = (
        "import subprocess, sys, time;"
        f"p = subprocess.Popen(['sleep', '60']); open({str(pid_file)!r}, 'w').write(str(p.pid));"
        "time.sleep(60)"
    )
    step = gpu_check.Step("slow", [sys.executable, "-c", code], budget_s=3.0)
    step.run(3.0, tmp_path)
    assert step.status == "timeout" and "3 s limit" in step.why
    assert step.seconds < 10
    assert not _alive(int(pid_file.read_text()))
    quick = gpu_check.Step("quick", [sys.executable, "-c", "print('done')"], budget_s=3.0)
    quick.run(3.0, tmp_path)
    # No JSON: a step must report, exiting 0 is not enough.
    assert quick.status == "fail" and quick.why == "wrote no JSON"
    assert "done" in quick.output_tail
