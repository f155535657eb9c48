"""Compile a candidate's Triton kernels for sm_90 (H100/H200) without a GPU, with real signatures.

Usage: ``python -m tests.sm90_compile TASK CANDIDATE [--points all|first|last|N] [--seed S]
[--no-shapes] [--cache-dir DIR]``, or ``--jobs FILE`` for many candidates in one process.
Prints one JSON object per parameter point (``params``, ``ok``, ``message``, and ``kernels``:
each compile's signature, constexprs, options, grid, ``n_regs``, ``n_spills`` and ``shared``)
and exits 1 if any point fails (2 when the task or candidate cannot be read).

At each point of the candidate's ``SEARCH_SPACE`` (injected as module globals, as the evaluator
does), the task's inputs are built on the ``meta`` device (so KernelBench-sized shapes cost no
memory), ``ModelNew`` runs its forward with every Triton launch recorded instead of run
(:func:`recording`), and each distinct launch is compiled to a cubin by Triton's own pipeline
and its bundled ptxas (:func:`compile_launch`). The signature is what Triton would specialise
for those argument values on a GPU (:func:`specialise`): pointer dtypes, ``i32``/``i64`` by
range, ints equal to 1 as constants, 16-divisibility of ints and of tensor addresses. A point
fails when the forward raises, launches nothing, a kernel does not compile, or a launch would be
refused on an sm_90 GPU (shared memory, threads or registers per block, grid size).

This runs the candidate's Python (on meta tensors), so it is for our own templates and corpus,
not for untrusted code. ``TRITON_INTERPRET`` must be off when the candidate is imported; the
CLI turns it off and uses a private ``TRITON_CACHE_DIR`` (``--cache-dir`` shares one).
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import dataclasses
import itertools
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from evaluator_worker import inputs as task_inputs  # noqa: E402
from evaluator_worker.modules import import_file  # noqa: E402
from evaluator_worker.static_gate import check_source  # noqa: E402

# sm_90 limits a launch must respect: the driver refuses the launch otherwise (Triton checks
# shared memory and threads when it loads the kernel; CUDA checks the grid).
SM90 = (90, 32)  # capability, warp size
MAX_SHARED = 232448  # opt-in dynamic shared memory per block (227 KiB)
MAX_THREADS = 1024
REGISTERS_PER_BLOCK = 65536
MAX_GRID = (2**31 - 1, 65535, 65535)


def specialise(
    value: Any, *, annotation: str = "", specialize: bool = True, align: bool = True
) -> tuple[str, Any]:
    """``(type, specialisation)`` of one non-constexpr argument, as Triton's launcher makes it.

    ``type`` is a signature entry (``"*fp32"``, ``"i32"``, ``"i64"``, ``"fp32"``, ``"u1"``...)
    or ``"constexpr"`` (ints equal to 1, and None, whose value is then the specialisation);
    otherwise the specialisation is ``"D"`` (divisible by 16), ``""`` (not), or None (not
    specialised: bools, floats, ``do_not_specialize``). Types come from Triton's own
    ``mangle_type`` (i32 or i64 by range); divisibility follows ``BaseBackend``'s
    ``get_int_specialization`` / ``get_tensor_specialization``, except that a tensor's address
    is its allocation's (16-byte aligned, as PyTorch's CUDA allocator guarantees) plus its
    storage offset, since meta tensors have none. An annotated type (``n: tl.int64``) wins.
    """
    from triton.runtime.jit import mangle_type

    if value is None:
        return "constexpr", None
    is_tensor = hasattr(value, "data_ptr") and hasattr(value, "dtype")
    is_int = isinstance(value, int) and not isinstance(value, bool)
    if annotation == "u1" or annotation.removeprefix("*k").removeprefix("*")[:2] in ("fp", "bf"):
        specialize = False  # Triton never specialises annotated floats and bools
    if is_int and value == 1 and specialize and not annotation:
        return "constexpr", 1
    ty = annotation or mangle_type(value)
    if not specialize or not (is_tensor or is_int):
        return ty, None
    if is_tensor:
        offset = (
            value.storage_offset() * value.element_size() if hasattr(value, "storage_offset") else 0
        )
        return ty, "D" if align and offset % 16 == 0 else ""
    return ty, "D" if align and value % 16 == 0 else ""


@dataclasses.dataclass
class Launch:
    """One recorded ``kernel[grid](...)`` call: the JIT function and what it was given."""

    fn: Any  # triton.runtime.jit.JITFunction
    args: tuple
    kwargs: dict
    grid: Any


@contextlib.contextmanager
def recording() -> Iterator[list[Launch]]:
    """Record every Triton launch made inside the block, instead of compiling and running it.

    ``JITFunction.run`` is what ``kernel[grid](...)`` and ``@triton.heuristics`` call; an
    ``@triton.autotune`` kernel would benchmark its configs on the GPU, so each of its configs
    is recorded as a launch instead (all of them: any may be picked on the GPU).
    """
    from triton.runtime.autotuner import Autotuner
    from triton.runtime.jit import JITFunction

    launches: list[Launch] = []

    def run(self, *args, grid, warmup, **kwargs):
        launches.append(Launch(self, args, kwargs, grid))

    def tune(self, *args, **kwargs):
        for config in self.configs:
            self.fn.run(*args, **{**kwargs, **config.all_kwargs()})

    saved = JITFunction.run, Autotuner.run
    JITFunction.run, Autotuner.run = run, tune
    try:
        yield launches
    finally:
        JITFunction.run, Autotuner.run = saved


@dataclasses.dataclass
class KernelSpec:
    """What ``triton.compile`` is given for one launch (the inputs of ``ASTSource``)."""

    fn: Any
    signature: dict[str, str]
    constexprs: dict[tuple[int], Any]
    attrs: dict[tuple[int], list]
    options: dict[str, Any]
    grid: tuple[int, ...]

    @property
    def name(self) -> str:
        """The kernel's function name."""
        return self.fn.__name__

    def key(self) -> str:
        """Identity of the compile (two launches with one key compile the same kernel)."""
        return repr(
            (self.fn.__qualname__, self.signature, self.constexprs, self.attrs, self.options)
        )

    def describe(self) -> dict[str, Any]:
        """JSON-able summary: signature with ``:D`` on 16-divisible args, constexprs by name."""
        names = list(self.signature)
        sig = [
            f"{n}:{t}" + (":D" if self.attrs.get((i,)) else "")
            for i, (n, t) in enumerate(self.signature.items())
            if t != "constexpr"
        ]
        consts = {names[k[0]]: _jsonable(v) for k, v in self.constexprs.items()}
        return {"kernel": self.name, "signature": ", ".join(sig), "constexprs": consts,
                "options": self.options, "grid": list(self.grid)}  # fmt: skip


def _jsonable(v: Any) -> Any:
    return v if v is None or isinstance(v, (bool, int, float, str)) else str(v)


def spec_of(launch: Launch) -> KernelSpec:
    """The compile Triton would do for ``launch`` on an sm_90 GPU (its ``JITFunction.run``).

    Raises ``TypeError``/``KeyError`` where Triton's launcher would (bad arguments, an option
    the CUDA backend does not know).
    """
    from triton.backends.compiler import BaseBackend
    from triton.backends.nvidia.compiler import CUDAOptions

    fn = launch.fn
    names = [p.name for p in fn.params]
    sig_kwargs = {k: v for k, v in launch.kwargs.items() if k in names}
    options = {k: v for k, v in launch.kwargs.items() if k not in names}
    for k in options:
        if k not in CUDAOptions.__dataclass_fields__:
            raise KeyError(f"Keyword argument {k} was specified but unrecognised")
    if fn.debug and "debug" not in options:
        options["debug"] = fn.debug
    bound = fn.signature.bind(*launch.args, **sig_kwargs)
    bound.apply_defaults()
    values = list(bound.arguments.values())
    signature, constexprs, attrs = {}, {}, {}
    for i, (p, v) in enumerate(zip(fn.params, values, strict=True)):
        if p.is_constexpr:
            ty, spec = "constexpr", v
        else:
            ann = getattr(p, "annotation_type", "")
            ty, spec = specialise(
                v,
                annotation=ann,
                specialize=not p.do_not_specialize,
                align=not p.do_not_specialize_on_alignment,
            )
            if getattr(p, "is_const", False) and ty.startswith("*") and not ty.startswith("*k"):
                ty = "*k" + ty[1:]
        signature[p.name] = ty
        if ty == "constexpr":
            constexprs[(i,)] = spec
        elif isinstance(spec, str):
            attrs[(i,)] = BaseBackend.parse_attr(spec)  # "D": [["tt.divisibility", 16]]
    grid = launch.grid(dict(bound.arguments)) if callable(launch.grid) else launch.grid
    grid = tuple(int(g) for g in grid)
    return KernelSpec(fn, signature, constexprs, attrs, options, grid)


@dataclasses.dataclass
class Compiled:
    """Resources of one compiled kernel, as the driver would report them when loading it."""

    n_regs: int | None
    n_spills: int | None  # local memory per thread / 4, as Triton counts spills
    shared: int
    num_warps: int
    seconds: float


def compile_launch(spec: KernelSpec) -> Compiled:
    """Compile ``spec`` to an sm_90 cubin with Triton's pipeline and bundled ptxas."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    t0 = time.perf_counter()
    src = ASTSource(spec.fn, spec.signature, spec.constexprs, spec.attrs)
    kernel = triton.compile(src, target=GPUTarget("cuda", *SM90), options=dict(spec.options))
    regs, local = _resource_usage(kernel.asm["cubin"], kernel.metadata.name)
    return Compiled(
        n_regs=regs,
        n_spills=None if local is None else local // 4,
        shared=int(kernel.metadata.shared),
        num_warps=int(kernel.metadata.num_warps),
        seconds=time.perf_counter() - t0,
    )


_RES = re.compile(r"Function (\S+):\s*REG:(\d+)\s+STACK:(\d+)\s+SHARED:\d+\s+LOCAL:(\d+)")


def _resource_usage(cubin: bytes, name: str) -> tuple[int | None, int | None]:
    """``(registers, local bytes)`` per thread from ``cuobjdump -res-usage``, as the driver's
    ``NUM_REGS`` / ``LOCAL_SIZE_BYTES`` report them when Triton loads the kernel (local memory
    is the stack frame, where ptxas spills, plus local arrays); ``(None, None)`` without
    cuobjdump."""
    import triton.backends.nvidia as nvidia

    tool = Path(nvidia.__file__).parent / "bin" / "cuobjdump"
    if not tool.exists():
        return None, None
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run([str(tool), "-res-usage", f.name], capture_output=True, text=True)
    for fname, regs, stack, local in _RES.findall(out.stdout):
        if fname == name:
            return int(regs), int(stack) + int(local)
    return None, None


def launch_problems(spec: KernelSpec, c: Compiled) -> list[str]:
    """Why an sm_90 GPU would refuse this launch (empty when it would not)."""
    threads = c.num_warps * SM90[1]
    out = []
    if c.shared > MAX_SHARED:
        out.append(f"needs {c.shared} bytes of shared memory, sm_90 allows {MAX_SHARED}")
    if threads > MAX_THREADS:
        out.append(f"{threads} threads per block, sm_90 allows {MAX_THREADS}")
    # Registers are allocated per thread in units of 8 (ptxas keeps within .maxntid's budget,
    # so this is a guard against a driver refusing the block, not an expected failure).
    if c.n_regs is not None and -(-c.n_regs // 8) * 8 * threads > REGISTERS_PER_BLOCK:
        out.append(f"{c.n_regs} registers x {threads} threads exceed {REGISTERS_PER_BLOCK}")
    grid = spec.grid + (1,) * (3 - len(spec.grid))
    if len(spec.grid) > 3 or any(g < 0 or g > m for g, m in zip(grid, MAX_GRID, strict=False)):
        out.append(f"grid {spec.grid} exceeds CUDA's {MAX_GRID}")
    return out


def meta_inputs(task: ModuleType, which: int | None) -> list[Any]:
    """The inputs of ``get_inputs()`` (``which=None``) or ``SHAPES[which]``, on the meta device.

    Built there directly where the generator allows it (no memory, whatever the shape);
    otherwise generated on the CPU and moved.
    """
    spec = task_inputs.InputSpec(1, "task", which)
    try:
        return task_inputs.generate(task, spec, torch.device("meta"))
    except Exception:  # e.g. an op the meta device does not implement
        xs = task_inputs.generate(task, spec, torch.device("cpu"))
        return [x.to("meta") if isinstance(x, torch.Tensor) else x for x in xs]


def meta_model(candidate: ModuleType, task: ModuleType) -> torch.nn.Module:
    """``ModelNew(*get_init_inputs())`` with its parameters on the meta device."""
    init = list(task.get_init_inputs())
    with torch.device("meta"):
        model = candidate.ModelNew(*init)
    return model.eval()


def check_point(
    task: ModuleType,
    candidate_path: str | Path,
    params: dict[str, Any],
    input_sets: list[tuple[str, list[Any]]],
    tag: str = "0",
) -> dict[str, Any]:
    """Record and compile every launch of the candidate at ``params`` on each input set.

    Returns the JSON object the CLI prints for the point: ``params``, ``ok``, ``message`` (the
    failures, joined by "; "), ``kernels`` (one entry per distinct compile: its launch, the input
    set that launched it first, ``n_regs``, ``n_spills``, ``shared``, seconds) and ``seconds``.
    """
    t0 = time.perf_counter()
    problems: list[str] = []
    kernels: list[dict[str, Any]] = []
    seen: set[str] = set()
    # stdout carries the JSON lines: what the candidate or Triton prints (a ptxas failure comes
    # with the whole PTX) goes to stderr.
    with contextlib.redirect_stdout(sys.stderr):
        try:
            model = meta_model(import_file(candidate_path, f"kernelmap_sm90_{tag}", params), task)
            for label, xs in input_sets:
                with recording() as launches, torch.no_grad():
                    model(*xs)
                if not launches:
                    problems.append(f"{label}: the forward launched no Triton kernel")
                for spec in map(spec_of, launches):
                    if spec.key() not in seen:
                        seen.add(spec.key())
                        entry, errors = _compile_entry(spec)
                        kernels.append({**entry, "inputs": label})
                        problems += [f"{label}: {spec.name}: {e}" for e in errors]
        except Exception as e:  # a failing point is reported, and the others still run
            problems.append(_one_line(e))
    return {"params": params, "ok": not problems, "message": "; ".join(problems),
            "kernels": kernels, "seconds": round(time.perf_counter() - t0, 2)}  # fmt: skip


def _compile_entry(spec: KernelSpec) -> tuple[dict[str, Any], list[str]]:
    """The kernel's JSON entry, and why it failed to compile or would fail to launch."""
    entry = spec.describe()
    try:
        c = compile_launch(spec)
    except Exception as e:
        return {**entry, "error": _one_line(e)}, [_one_line(e)]
    entry.update(n_regs=c.n_regs, n_spills=c.n_spills, shared=c.shared,
                 seconds=round(c.seconds, 2))  # fmt: skip
    return entry, launch_problems(spec, c)


def _one_line(e: BaseException, limit: int = 1200) -> str:
    """``Type: message`` on one line; a long one keeps its head and its tail, where Triton puts
    the error under the quoted source."""
    text = " ".join(str(e).split())
    if len(text) > limit:
        text = text[: limit // 4] + " ... " + text[-(3 * limit) // 4 :]
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def all_points(space: dict[str, list] | None) -> list[dict[str, Any]]:
    """Every point of ``space`` in ``itertools.product`` order (one empty point if none)."""
    space = space or {}
    return [dict(zip(space, vals, strict=True)) for vals in itertools.product(*space.values())]


def select_points(points: list[dict], which: str, seed: int = 0) -> list[dict]:
    """The points ``which`` names: ``"all"``, ``"first"``, ``"last"``, or a number N: N points
    drawn with ``seed``, always including the first and the last, in order."""
    if which == "all":
        return points
    if which in ("first", "last"):
        return points[:1] if which == "first" else points[-1:]
    n = int(which)
    if n >= len(points):
        return points
    if n <= 1:
        return points[:n]
    middle = random.Random(seed).sample(range(1, len(points) - 1), n - 2)
    return [points[i] for i in sorted({0, len(points) - 1, *middle})]


def _valid_points(which: str) -> bool:
    return which in ("all", "first", "last") or which.isdigit()


def prepare_environment(cache_dir: str | None) -> None:
    """Compile mode for the rest of the process; call before triton or a candidate is imported.

    The interpreter must be off when a kernel is decorated (with it on, ``@triton.jit`` makes
    an interpreted function that never compiles). ``TRITON_DEFAULT_FP_FUSION=1`` keeps Triton
    3.9's default (fused FMAs, as the GPU hosts' Triton 3.6 does) without its warning.
    """
    os.environ["TRITON_INTERPRET"] = "0"
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    if cache_dir is None:
        cache_dir = tempfile.mkdtemp(prefix="kernelmap_sm90_")
        atexit.register(shutil.rmtree, cache_dir, ignore_errors=True)
    os.environ["TRITON_CACHE_DIR"] = cache_dir


def run_job(
    task_path: str | Path,
    candidate_path: str | Path,
    points: str = "all",
    seed: int = 0,
    shapes: bool = True,
) -> Iterator[dict[str, Any]]:
    """Check one candidate against one task at the ``points`` :func:`select_points` names, on
    ``get_inputs()`` and (``shapes``) each ``SHAPES`` entry; yields each point's result (see
    :func:`check_point`) with ``task`` and ``candidate`` added.

    Raises ``OSError`` / the task module's exception when the files cannot be loaded.
    """
    with contextlib.redirect_stdout(sys.stderr):  # stdout is for the JSON lines
        task = import_file(task_path, "kernelmap_sm90_task")
    source = Path(candidate_path).read_text()
    todo = select_points(all_points(check_source(source, str(candidate_path)).search_space),
                         points, seed)  # fmt: skip
    labels: list[tuple[str, int | None]] = [("get_inputs", None)]
    if shapes:
        labels += [(f"SHAPES[{j}]", j) for j in range(len(getattr(task, "SHAPES", [])))]
    with contextlib.redirect_stdout(sys.stderr):
        input_sets = [(label, meta_inputs(task, j)) for label, j in labels]
    for k, params in enumerate(todo):
        result = check_point(task, candidate_path, params, input_sets, tag=str(k))
        yield {"task": str(task_path), "candidate": str(candidate_path), **result}


def _run_jobs(jobs: Iterator[str], stream: bool) -> int:
    """Check each job (a JSON line); 1 if any point failed, 2 if a file could not be loaded."""
    status = 0
    for raw in jobs:
        if not raw.strip():
            continue
        job = json.loads(raw)
        tag = {"id": job["id"]} if "id" in job else {}
        points = str(job.get("points", "all"))
        try:
            if not _valid_points(points):
                raise ValueError(f"points takes all, first, last or a number, got {points!r}")
            results = run_job(job["task"], job["candidate"], points, int(job.get("seed", 0)),
                              bool(job.get("shapes", True)))  # fmt: skip
            for result in results:
                status = max(status, 0 if result["ok"] else 1)
                print(json.dumps({**tag, **result}, default=str), flush=True)
        except Exception as e:  # the job is malformed, or its task or candidate will not load
            message = f"{job.get('task')} {job.get('candidate')}: {_one_line(e)}"
            if not stream:
                print(f"sm90_compile: {message}", file=sys.stderr)
                return 2
            print(json.dumps({**tag, "params": None, "ok": False, "message": message}), flush=True)
            status = 2
        if stream:
            print(json.dumps({**tag, "done": True}), flush=True)
    return status


def main(argv: list[str] | None = None) -> int:
    """The CLI (see the module docstring).

    ``--jobs FILE`` checks many candidates in one process (a process start costs seconds): one
    JSON object per line, with the keys ``task``, ``candidate`` and optionally ``points``,
    ``seed``, ``shapes`` (as the options) and ``id``, which is copied into its result lines.
    ``--jobs -`` reads them from stdin as they come and ends each job's output with a line
    ``{"id": ..., "done": true}``, so a caller can keep two processes busy with one queue.
    """
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("task", nargs="?")
    p.add_argument("candidate", nargs="?")
    p.add_argument(
        "--points", default="all", help="all, first, last, or N seeded points (first and last too)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the --points sample")
    p.add_argument("--no-shapes", action="store_true", help="only get_inputs(), not SHAPES")
    p.add_argument("--jobs", help="a JSON-lines file of jobs (task, candidate...), - for stdin")
    p.add_argument("--cache-dir", help="TRITON_CACHE_DIR to use (default: a new temporary one)")
    a = p.parse_args(argv)
    if a.jobs == "-":
        jobs: Iterator[str] = iter(sys.stdin)
    elif a.jobs:
        jobs = iter(Path(a.jobs).read_text().splitlines())
    elif a.task and a.candidate:
        if not _valid_points(a.points):
            p.error(f"--points takes all, first, last or a number, got {a.points!r}")
        job = {"task": a.task, "candidate": a.candidate, "points": a.points, "seed": a.seed,
               "shapes": not a.no_shapes}  # fmt: skip
        jobs = iter([json.dumps(job)])
    else:
        p.error("give TASK CANDIDATE, or --jobs FILE")
    prepare_environment(a.cache_dir)
    return _run_jobs(jobs, stream=a.jobs == "-")


if __name__ == "__main__":
    sys.exit(main())
