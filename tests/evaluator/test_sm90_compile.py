"""Every template kernel, and the corpus's Triton kernels, compile for an sm_90 GPU (no GPU needed).

``tests/sm90_compile.py`` runs each candidate's forward on meta tensors, records its Triton
launches and compiles each to a cubin with Triton's bundled ptxas, with the signature Triton
would specialise for those arguments on a GPU; it also refuses launches an H100/H200 would
refuse (shared memory, threads, registers, grid). The interpreter tests
(``test_templates_*.py``) check what the kernels compute; this checks what only the GPU
compiler sees (layouts, register pressure, the types of KernelBench-sized arguments).

Covered: every candidate ``instantiate_all`` makes for each task below (a "schedule" is a
variant's ``SEARCH_SPACE`` and, for matmul, its precision's table of tiles):

- Small tasks, the template tests' own (``CHECKS`` of ``test_templates_rows``, ``_matmul`` and
  ``_losses``, ``CHECKED`` of ``_pointwise``) plus a TF32 linear. On the first task that makes
  each (template, variant, schedule), EVERY point of the space is compiled at the task's inputs,
  and the first and last points also at each of its ``SHAPES``.
- Sampled, to stay within about 3 minutes on two cores (every point at every ``SHAPES`` entry
  too takes a fifth more; every point of every task, over ten minutes): the other small tasks'
  candidates at their first and last points (at the inputs and each ``SHAPES``); matmul ones
  (ptxas takes seconds per tile) at the last, smallest tile only, and the ``zoo_*`` pointwise
  tasks (many ops in one kernel, for which ptxas needs minutes at the largest tiles) at the
  first point only.
- KernelBench-sized tasks (``bench/tasks``, full size, on meta tensors): every candidate at
  ``BENCH_SAMPLE`` seeded points, always including the first and the last.
- The adversarial corpus and the examples (the manifest's cases): every candidate with a
  ``@triton.jit`` kernel at every point, against its task; ``try_fallback``'s kernel is broken
  on purpose and must be refused by the compiler.

The compiles run in two subprocesses at a time (``TRITON_INTERPRET`` must be off before triton
is imported; the suite runs two test files at once), fed from one queue in test order, sharing
a private Triton cache. The whole file takes about 2 minutes on two idle cores.
"""

from __future__ import annotations

import ast
import concurrent.futures
import json
import os
import queue
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from evaluator_worker.modules import import_file
from evaluator_worker.static_gate import check_source
from evolution.templates import analyse, instantiate_all
from tests.sm90_compile import all_points, select_points
from tests.templates import test_losses as losses_t
from tests.templates import test_matmul as matmul_t
from tests.templates import test_pointwise as pointwise_t
from tests.templates import test_rows as rows_t

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
BENCH = sorted((ROOT / "bench" / "tasks").glob("*.py"))
BENCH_SAMPLE = "4"
SEED = 0
# The points the other small tasks get, by task id prefix (default: first and last).
SAMPLED = {"matmul/": "last", "pointwise/zoo_": "first"}
WORKERS = 2

TF32 = ("linear_tf32", "return self.fc(x)", "self.fc = nn.Linear(45, 29)", "x",
        "torch.randn(37, 45)", ("torch.randn(3, 45)",), ["tiled"])  # fmt: skip


def _small_tasks(tmp: Path) -> dict[str, Path]:
    """The template tests' own small task files, written under ``tmp``, by test id."""
    out: dict[str, Path] = {}
    for cid, expr, init, inputs, shapes, *_ in rows_t.CHECKS:
        out[f"rows/{cid}"] = rows_t.write_task(tmp / f"rows_{cid}.py", expr, inputs, init, shapes)
    for cid, body, init, args, inputs, shapes, _ in [*matmul_t.CHECKS, matmul_t.BF16, TF32]:
        path = tmp / f"matmul_{cid}.py"
        out[f"matmul/{cid}"] = matmul_t.write_task(
            path, body, inputs, init, shapes, args=args, tf32=cid == TF32[0]
        )
    for name, (source, _, _) in pointwise_t.CHECKED.items():
        out[f"pointwise/{name}"] = tmp / f"pointwise_{name}.py"
        out[f"pointwise/{name}"].write_text(source)
    for name, forward, args, inputs, shapes, init, _ in losses_t.CHECKS:
        path = tmp / f"losses_{name}.py"
        out[f"losses/{name}"] = losses_t.write_task(path, forward, inputs, shapes, args, init)
    return out


SMALL_IDS = (
    [f"rows/{c[0]}" for c in rows_t.CHECKS]
    + [f"matmul/{c[0]}" for c in [*matmul_t.CHECKS, matmul_t.BF16, TF32]]
    + [f"pointwise/{name}" for name in pointwise_t.CHECKED]
    + [f"losses/{c[0]}" for c in losses_t.CHECKS]
)
BENCH_IDS = [f"bench/{p.stem}" for p in BENCH]
# The manifest's Triton candidates, each against the task of its first case (tests/corpus is not
# a package, so the manifest is imported by path).
CORPUS = {}
for _case in import_file(ROOT / "tests" / "corpus" / "manifest.py", "kernelmap_manifest").CASES:
    _path = _case.candidate_path
    # escape_* tasks and candidates are hostile templates that only
    # tests/evaluator/sandbox/test_sandbox_escape.py runs, sandboxed; this check imports its
    # files unsandboxed, so it leaves them out.
    if _case.name.startswith("escape_"):
        continue
    if _path and "@triton.jit" in _path.read_text():
        CORPUS.setdefault(f"corpus/{_path.parent.name}/{_path.stem}", _case)
BROKEN_ON_PURPOSE = {"corpus/candidates/try_fallback": "arange's range must be a power of 2"}


def _schedule(source: str) -> str:
    """What a candidate's points mean: its ``SEARCH_SPACE`` and, where the points index a table
    of tiles (matmul, whose table follows the task's precision), that ``CONFIGS`` table."""
    configs = [
        ast.unparse(node.value)
        for node in ast.parse(source).body
        if isinstance(node, ast.Assign)
        and any(getattr(t, "id", "") == "CONFIGS" for t in node.targets)
    ]
    return repr((check_source(source).search_space, configs))


def _job(tid: str, task: Path, cand: Path, points: str, shapes: bool) -> dict:
    space = check_source(cand.read_text()).search_space
    expect = len(select_points(all_points(space), points, SEED))
    return {"id": f"{tid}/{cand.stem}/{points}{'' if shapes else '/no-shapes'}",
            "task": str(task), "candidate": str(cand), "points": points, "seed": SEED,
            "shapes": shapes, "expect": expect}  # fmt: skip


def _plan(tmp: Path) -> tuple[dict[str, list[dict]], set[str], dict[tuple, dict]]:
    """``({test id: [job...]}, labels made, {(label, schedule): job compiling every point})``."""
    by_test: dict[str, list[dict]] = {}
    made: set[str] = set()
    full: dict[tuple, dict] = {}
    cands = tmp / "candidates"
    cands.mkdir()
    for tid, task in {**_small_tasks(tmp), **{f"bench/{p.stem}": p for p in BENCH}}.items():
        by_test[tid] = []
        for c in instantiate_all(analyse(import_file(task, "kernelmap_sm90_plan")), "cpu")[0]:
            path = cands / f"{tid.replace('/', '_')}_{c.template}_{c.variant}.py"
            path.write_text(c.source)
            kind = (c.label, _schedule(c.source))
            made.add(c.label)
            if tid.startswith("bench/"):
                by_test[tid].append(_job(tid, task, path, BENCH_SAMPLE, True))
            elif kind not in full:
                full[kind] = _job(tid, task, path, "all", False)
                by_test[tid] += [full[kind], _job(tid, task, path, "2", True)]
            else:
                points = next((v for k, v in SAMPLED.items() if tid.startswith(k)), "2")
                by_test[tid].append(_job(tid, task, path, points, True))
    for tid, case in CORPUS.items():
        by_test[tid] = [_job(tid, case.task_path, case.candidate_path, "all", True)]
    return by_test, made, full


def _worker(jobs: queue.SimpleQueue, results: dict, tmp: Path, n: int) -> None:
    """Feed jobs from ``jobs`` to one ``sm90_compile.py --jobs -`` process, one at a time, and
    resolve each job's future with its result lines (a new process if one dies)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TRITON_", "KERNELMAP_BENCH"))}
    cmd = [sys.executable, "-m", "tests.sm90_compile", "--jobs", "-"]
    cmd += ["--cache-dir", str(tmp / "triton_cache")]
    log = tmp / f"worker_{n}.log"
    proc = None
    with log.open("w") as err:
        while True:
            try:
                job = jobs.get_nowait()
            except queue.Empty:
                break
            if proc is None or proc.poll() is not None:
                proc = subprocess.Popen(cmd, cwd=ROOT, env=env, text=True, stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, stderr=err)  # fmt: skip
            lines = []
            try:
                proc.stdin.write(json.dumps(job) + "\n")
                proc.stdin.flush()
                for raw in proc.stdout:
                    if not raw.startswith("{"):  # not ours (sm90_compile sends prints to stderr)
                        continue
                    line = json.loads(raw)
                    if line.get("done"):
                        break
                    lines.append(line)
                else:
                    raise EOFError("the compile process died")
            except (OSError, EOFError, ValueError) as e:  # died, or wrote a broken line
                lines.append(
                    {"id": None, "ok": False, "message": f"{e}: {log.read_text()[-3000:]}"}
                )
            results[job["id"]].set_result(lines)
        if proc is not None:
            proc.stdin.close()
            proc.wait(timeout=60)


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """``(jobs by test id, labels made, {(label, schedule): its every-point job}, {job id: future
    of its result lines})``; the jobs are queued at once, in test order, for two processes."""
    tmp = tmp_path_factory.mktemp("sm90")
    with pytest.MonkeyPatch.context() as mp:  # bench tasks at full size, as the workers see them
        for key in [k for k in os.environ if k.startswith("KERNELMAP_BENCH")]:
            mp.delenv(key)
        by_test, made, full = _plan(tmp)
    jobs: queue.SimpleQueue = queue.SimpleQueue()
    results: dict[str, concurrent.futures.Future] = {}
    for job in (j for js in by_test.values() for j in js):  # in test order: no test waits long
        jobs.put(job)
        results[job["id"]] = concurrent.futures.Future()
    threads = [threading.Thread(target=_worker, args=(jobs, results, tmp, n), daemon=True)
               for n in range(WORKERS)]  # fmt: skip
    for t in threads:
        t.start()
    yield by_test, made, full, results
    while not jobs.empty():  # stop early (a test failed with -x): drop what has not started
        results[jobs.get_nowait()["id"]].cancel()
    for t in threads:
        t.join(timeout=600)


def _failures(compiled, tid: str) -> tuple[list[str], list[dict]]:
    """What failed among the jobs of test ``tid``, and their result lines."""
    by_test, _, _, futures = compiled
    failures, lines = [], []
    for job in by_test[tid]:
        got = futures[job["id"]].result()
        mine = [r for r in got if r["id"] == job["id"]]
        failures += [f"{r['id']} {r.get('params')}: {r['message']}" for r in got if r["id"] is None]
        failures += [f"{job['id']} {r['params']}: {r['message']}" for r in mine if not r["ok"]]
        if len(mine) != job["expect"]:
            failures.append(f"{job['id']}: {len(mine)} points checked, {job['expect']} expected")
        lines += mine
    return failures, lines


@pytest.mark.parametrize("tid", SMALL_IDS + BENCH_IDS)
def test_template_kernels_compile_for_sm90(compiled, tid):
    assert compiled[0][tid], f"{tid}: no template matches the task"
    failures, lines = _failures(compiled, tid)
    assert not failures, "\n".join(failures[:5])
    kernels = [k for r in lines for k in r["kernels"]]
    assert kernels and all(k["n_regs"] for k in kernels)  # cuobjdump read every cubin


@pytest.mark.parametrize("tid", list(CORPUS))
def test_corpus_kernels_compile_for_sm90(compiled, tid):
    failures, lines = _failures(compiled, tid)
    if tid in BROKEN_ON_PURPOSE:
        assert lines and all(not r["ok"] for r in lines)
        assert all(BROKEN_ON_PURPOSE[tid] in r["message"] for r in lines), lines[0]["message"]
    else:
        assert not failures, "\n".join(failures[:5])


def test_every_variant_is_compiled_at_every_point(compiled):
    """Each variant any task gets (the bench tasks' too) is compiled at every point of each of
    its small tasks' schedules, not only at sampled points."""
    _, made, full, results = compiled
    assert made == {label for label, _ in full}, sorted(made - {label for label, _ in full})
    assert len(made) >= 20 and "template:matmul/split_k" in made, sorted(made)
    for job in full.values():
        points = all_points(check_source(Path(job["candidate"]).read_text()).search_space)
        lines = [r for r in results[job["id"]].result() if r["id"] == job["id"] and r["ok"]]
        assert len(lines) == len(points) > 1, job["id"]


def test_recording_sees_through_autotune_and_heuristics(tmp_path, monkeypatch):
    """An autotuned kernel is recorded once per config (any may win on the GPU)."""
    import torch

    from tests.sm90_compile import recording, spec_of

    monkeypatch.setenv("TRITON_INTERPRET", "0")
    src = tmp_path / "tuned.py"
    src.write_text(
        "import triton\nimport triton.language as tl\n\n\n"
        "@triton.autotune([triton.Config({'BLOCK': 64}, num_warps=2),"
        " triton.Config({'BLOCK': 128}, num_warps=4)], key=['n'])\n"
        "@triton.heuristics({'EVEN': lambda a: a['n'] % a['BLOCK'] == 0})\n"
        "@triton.jit\n"
        "def k(x_ptr, n, BLOCK: tl.constexpr, EVEN: tl.constexpr):\n"
        "    tl.store(x_ptr + tl.arange(0, BLOCK), 1.0)\n"
    )
    mod = import_file(src, "kernelmap_sm90_tuned")
    x = torch.empty(2**31 + 5, device="meta", dtype=torch.bfloat16)
    with recording() as launches:
        mod.k[(1,)](x, x.numel())
    specs = [spec_of(launch) for launch in launches]
    assert [s.options["num_warps"] for s in specs] == [2, 4]
    assert [s.describe()["constexprs"] for s in specs] == [
        {"BLOCK": 64, "EVEN": False},
        {"BLOCK": 128, "EVEN": False},
    ]
    assert specs[0].signature == {
        "x_ptr": "*bf16",
        "n": "i64",
        "BLOCK": "constexpr",
        "EVEN": "constexpr",
    }


def test_specialisation_matches_triton():
    """Our rules agree with this Triton's own (C++) specialiser, value by value."""
    import torch
    from triton.backends.compiler import BaseBackend
    from triton.runtime import jit

    from tests.sm90_compile import specialise

    native = getattr(jit, "native_specialize_impl", None)
    if native is None:
        pytest.skip("this Triton specialises in Python (older than 3.5)")
    t = torch.empty(64, 393216, device="meta")
    values = [t, t.half(), t.to(torch.int64), 1, 0, 16, 17, -16, 2**31 - 1, 2**31, 2**40 + 3,
              -(2**31) - 1, 2**63, True, 2.5, None]  # fmt: skip
    for v in values:
        for specialize in (True, False):
            for align in (True, False):
                want = native(BaseBackend, v, False, specialize, align)
                got = specialise(v, specialize=specialize, align=align)
                assert got == tuple(want), (v, specialize, align)
    # Meta tensors have no address: a view's alignment comes from its storage offset.
    assert specialise(t[:, 1:]) == ("*fp32", "")
    assert specialise(t[:, 4:]) == ("*fp32", "D")
