"""Plain configuration of one evaluation (no pydantic here: this package runs on bare GPU hosts)."""

from __future__ import annotations

import dataclasses
from typing import Literal

Device = Literal["auto", "cpu", "cuda"]

#: Settings that belong to the worker, never to a job: a run's configuration cannot choose
#: its device, switch the static gate off or loosen the sandbox.
WORKER_ONLY = (
    "device",
    "static_gate",
    "sandbox",
    "sandbox_disk_mb",
    "sandbox_shm_mb",
    "max_processes",
    "cuda_memory_fraction",
    "pass_env",
    "sandbox_read_only",
)
#: Resource limits a job may lower but never raise above the worker's own (its time limit
#: is the run's: the queue's own time limit is derived from it).
CAPPED = ("memory_limit_mb", "pool_bytes")


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """How to evaluate a candidate.

    Attributes
    ----------
    device:
        ``"cuda"``, ``"cpu"`` or ``"auto"`` (CUDA when a GPU is visible).
    timeout_s:
        Bound on each stage of the candidate (load, correctness, timing), in seconds.
    trials:
        Correctness trials with fresh secret-seeded inputs (at least 5), rotating the input
        distributions; the task's held-out ``SHAPES`` are checked in addition.
    warmup_calls, warmup_s:
        Warm-up before timing: at least this many calls and this many seconds.
    samples:
        Timed samples per variant (candidate, eager, torch.compile); at least 100.
    rounds:
        The samples are taken in this many interleaved rounds across the variants.
    pool_bytes:
        Upper bound on the memory the pool of fresh timing inputs may take in each of the
        candidate and baseline processes (at least two input sets are always used).
    compile_baseline:
        ``"auto"`` times torch.compile of the reference on CUDA only (inductor's CPU
        compile takes tens of seconds); ``"always"`` / ``"never"`` force it.
    stress_calls:
        Calls made on the CPU for Triton candidates (whose interpreted time is not
        performance) before the last output is re-checked.
    memory_limit_mb:
        Address-space limit of a CPU candidate process (CUDA processes cannot take one).
    sandbox:
        ``"strict"`` refuses to evaluate where any layer of the sandbox cannot be set up
        (:mod:`evaluator_worker.sandbox`); ``"relaxed"`` evaluates with what the host allows
        and every result says what was missing.
    sandbox_disk_mb, sandbox_shm_mb:
        Sizes of a child's private writable directory (``/home/sandbox``: home, ``/tmp``,
        compiler caches) and of its private ``/dev/shm``. Both are RAM-backed (tmpfs) and
        counted by no address-space limit: at most their sum of host memory per child.
    max_processes:
        Processes (and threads) a child may have at once.
    cuda_memory_fraction:
        Share of the GPU's memory one child process may allocate through PyTorch.
    sandbox_read_only:
        Further host paths the children see read-only (a CUDA installation outside ``/usr``,
        say); the Python installation, ``site-packages``, ``PYTHONPATH`` and
        ``LD_LIBRARY_PATH`` entries are shown anyway.
    pass_env:
        Names of further environment variables the children get from the worker (the
        benchmarks' size knobs); every other variable outside the sandbox's allow-list is
        dropped. Never put a secret here.
    quarantine_factor:
        A speedup over eager above this is quarantined until re-measured independently.
    floor_margin:
        A median below ``floor * floor_margin`` is ``IMPOSSIBLE``.
    static_gate:
        Apply the AST static gate. Only tests of the sandbox's defence in depth turn it off.
    time_interpreted, interpreter_samples:
        Also time Triton candidates running in the CPU interpreter (with this many samples, at
        least 5), for searches on machines without a GPU. The result is
        ``cpu_interpreter_ratio``, never a speedup.
    interpreter_warmup_calls:
        Warm-up calls of each variant before interpreted timing (instead of ``warmup_calls``):
        the interpreter compiles nothing and caches nothing to warm, and one of its calls can
        take seconds, so ten were a third of an interpreted evaluation's time.
    """

    device: Device = "auto"
    timeout_s: float = 60.0
    trials: int = 5
    warmup_calls: int = 10
    warmup_s: float = 0.025
    samples: int = 100
    rounds: int = 5
    pool_bytes: int = 2 << 30
    compile_baseline: Literal["auto", "always", "never"] = "auto"
    stress_calls: int = 12
    memory_limit_mb: int = 16384
    sandbox: Literal["strict", "relaxed"] = "strict"
    sandbox_disk_mb: int = 2048
    sandbox_shm_mb: int = 512
    max_processes: int = 512
    cuda_memory_fraction: float = 0.9
    pass_env: tuple[str, ...] = ()
    sandbox_read_only: tuple[str, ...] = ()
    quarantine_factor: float = 10.0
    floor_margin: float = 0.9
    static_gate: bool = True
    time_interpreted: bool = False
    interpreter_samples: int = 20
    interpreter_warmup_calls: int = 2

    def __post_init__(self) -> None:
        if self.trials < 5:
            raise ValueError(f"trials must be at least 5, got {self.trials}")
        if self.samples < 100:
            raise ValueError(f"samples must be at least 100, got {self.samples}")
        if self.interpreter_samples < 5:
            raise ValueError(
                f"interpreter_samples must be at least 5, got {self.interpreter_samples}"
            )
        if self.interpreter_warmup_calls < 1:
            raise ValueError(
                f"interpreter_warmup_calls must be at least 1, got {self.interpreter_warmup_calls}"
            )
        if self.timeout_s <= 0:
            raise ValueError(f"timeout must be positive, got {self.timeout_s}")
        if self.sandbox not in ("strict", "relaxed"):
            raise ValueError(f"sandbox must be strict or relaxed, got {self.sandbox!r}")
        if not 0 < self.cuda_memory_fraction <= 1:
            raise ValueError(
                f"cuda_memory_fraction must be in (0, 1], got {self.cuda_memory_fraction}"
            )
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be auto, cpu or cuda, got {self.device!r}")


def job_config(worker: EvalConfig, asked: dict) -> EvalConfig:
    """The configuration a job runs under: the worker's, with what the job may change.

    Unknown fields and :data:`WORKER_ONLY` ones are ignored; :data:`CAPPED` limits are the
    smaller of the job's and the worker's.
    """
    known = {f.name for f in dataclasses.fields(EvalConfig)}
    changes = {k: v for k, v in asked.items() if k in known and k not in WORKER_ONLY}
    for key in CAPPED:
        if key in changes and isinstance(changes[key], (int, float)):
            changes[key] = min(changes[key], getattr(worker, key))
    return dataclasses.replace(worker, **changes)
