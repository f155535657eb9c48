"""The adversarial corpus (evaluator.md, "Adversarial corpus"): each case is a task, a candidate and
the set of verdicts that count as the evaluator holding.

Paths are relative to the repository root. ``candidate=None`` means the test builds the candidate:
``from_reference`` turns the task's own source into a candidate (``\\bModel\\b`` -> ``ModelNew``),
``template`` names a template that lives in the test file (the network case needs a port that only
exists at test time). ``gate=False`` cases run with the static gate off: the sandbox and the judge
must hold by themselves. ``max_speedup`` bounds the speedup an ``OK`` verdict may claim.
``dedicated`` cases need more than one evaluation (or a listening socket) and are run by their
own tests.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TASKS = "tests/corpus/tasks"
CANDS = "tests/corpus/candidates"
EXAMPLE = "examples/softmax"


@dataclasses.dataclass(frozen=True)
class Case:
    """One candidate evaluated against one task, and the verdicts that are acceptable."""

    name: str
    task: str
    candidate: str | None
    expected: frozenset[str]
    gpu: bool = False
    gate: bool = True
    from_reference: bool = False
    template: str | None = None
    max_speedup: float | None = None
    dedicated: bool = False
    timeout_s: float | None = None  # None: the test's default for the device

    @property
    def task_path(self) -> Path:
        """Absolute path of the task file."""
        return ROOT / self.task

    @property
    def candidate_path(self) -> Path | None:
        """Absolute path of the candidate file, or None when the test generates it."""
        return ROOT / self.candidate if self.candidate else None


def _s(*verdicts: str) -> frozenset[str]:
    return frozenset(verdicts)


OK = _s("OK")
INCORRECT = _s("INCORRECT")
REJECT = _s("STATIC_REJECT")
# Correct but untrusted timing is acceptable for a timer patch; a fast OK is not (max_speedup).
TIMER_PATCHED = _s("OK", "IMPOSSIBLE", "QUARANTINE")

SOFTMAX = f"{TASKS}/softmax.py"
LAYERNORM = f"{TASKS}/layernorm.py"
RELU = f"{TASKS}/relu.py"


def _c(name: str) -> str:
    return f"{CANDS}/{name}.py"


CASES: list[Case] = [
    # Honest controls: must be OK.
    Case("softmax_triton", SOFTMAX, _c("softmax_triton"), OK),
    Case("softmax_torch", SOFTMAX, _c("softmax_torch"), OK),
    Case("layernorm_triton", LAYERNORM, _c("layernorm_triton"), OK),
    Case("relu_triton", RELU, _c("relu_triton"), OK),
    Case("reference_softmax", SOFTMAX, None, OK, from_reference=True),
    Case("reference_layernorm", LAYERNORM, None, OK, from_reference=True),
    Case("reference_relu", RELU, None, OK, from_reference=True),
    Case("example_triton", f"{EXAMPLE}/task.py", f"{EXAMPLE}/triton_softmax.py", OK),
    Case("example_torch", f"{EXAMPLE}/task.py", f"{EXAMPLE}/torch_softmax.py", OK),
    Case("example_reference", f"{EXAMPLE}/task.py", None, OK, from_reference=True),
    Case("example_wrong", f"{EXAMPLE}/task.py", f"{EXAMPLE}/wrong_softmax.py", INCORRECT),
    # Wrong answers dressed up as fast ones.
    Case("stale_empty", SOFTMAX, _c("stale_empty"), INCORRECT),
    Case("zeros", SOFTMAX, _c("zeros"), INCORRECT),
    Case("constant", SOFTMAX, _c("constant"), INCORRECT),
    Case("zero_inputs_inplace", SOFTMAX, _c("zero_inputs_inplace"), _s("INCORRECT", "INPUT_MUTATED")),
    Case("bf16_compute", SOFTMAX, _c("bf16_compute"), INCORRECT),
    Case("memo_shape", SOFTMAX, _c("memo_shape"), INCORRECT),
    Case("memo_id", SOFTMAX, _c("memo_id"), INCORRECT),
    Case("memo_content", SOFTMAX, _c("memo_content"), INCORRECT),
    Case("layernorm_no_affine", LAYERNORM, _c("layernorm_no_affine"), INCORRECT),
    Case("after_ten_calls", SOFTMAX, _c("after_ten_calls"), INCORRECT),
    # Attacks on the evaluator itself: the static gate stops them first...
    Case("try_fallback", SOFTMAX, _c("try_fallback"), REJECT),
    Case("patch_perf_counter", SOFTMAX, _c("patch_perf_counter"), REJECT),
    Case("patch_event_timer", SOFTMAX, _c("patch_event_timer"), REJECT),
    Case("forged_exit", SOFTMAX, _c("forged_exit"), REJECT),
    Case("background_thread", SOFTMAX, _c("background_thread"), REJECT),
    Case("gc_scan", SOFTMAX, _c("gc_scan"), REJECT),
    Case("network", SOFTMAX, None, REJECT, template="network", dedicated=True),
    # ...and with the gate off, the sandbox and the judge must still hold. (try_fallback has no
    # gate-off case: on the CPU its fallback really is a correct softmax, only the gate stops it.)
    Case("patch_perf_counter_nogate", SOFTMAX, _c("patch_perf_counter"), TIMER_PATCHED,
         gate=False, max_speedup=3.0),
    Case("forged_exit_nogate", SOFTMAX, _c("forged_exit"), _s("LOAD_ERROR", "RUNTIME_ERROR"),
         gate=False),
    Case("background_thread_nogate", SOFTMAX, _c("background_thread"), INCORRECT, gate=False),
    Case("gc_scan_nogate", SOFTMAX, _c("gc_scan"), INCORRECT, gate=False),
    Case("network_nogate", SOFTMAX, None, _s("OK", "LOAD_ERROR"), gate=False, template="network",
         dedicated=True),
    # Never returns: TIMEOUT, then the next candidate must evaluate normally.
    Case("infinite_loop", SOFTMAX, _c("infinite_loop"), _s("TIMEOUT"), dedicated=True, timeout_s=5.0),
    # Sandbox escapes (issue 10), with the gate off: the OS sandbox alone must hold. The verdict is
    # the least of it: tests/evaluator/sandbox/test_sandbox_escape.py checks that nothing was
    # written, read, seen or leaked. Templates (``template`` names the file the test fills in: a
    # host directory, the judge's pid, a marker) are run only there; "TASK_ERROR" means the task
    # is refused.
    Case("escape_env", SOFTMAX, _c("escape_env"), REJECT),
    Case("escape_env_nogate", SOFTMAX, _c("escape_env"), _s("LOAD_ERROR"), gate=False),
    Case("escape_kill_parent", SOFTMAX, _c("escape_kill_parent"), REJECT),
    Case("escape_kill_parent_nogate", SOFTMAX, _c("escape_kill_parent"),
         _s("LOAD_ERROR", "RUNTIME_ERROR"), gate=False),
    Case("escape_write", SOFTMAX, _c("escape_write"), _s("LOAD_ERROR", "OK"), gate=False,
         template="escape_write", dedicated=True),
    Case("escape_read", SOFTMAX, _c("escape_read"), _s("RUNTIME_ERROR"), gate=False,
         template="escape_read", dedicated=True),
    Case("escape_list", SOFTMAX, _c("escape_list"), _s("LOAD_ERROR"), gate=False,
         template="escape_list", dedicated=True),
    Case("escape_carry", SOFTMAX, _c("escape_carry"), _s("LOAD_ERROR"), gate=False,
         template="escape_carry", dedicated=True),
    Case("escape_signal", SOFTMAX, _c("escape_signal"), _s("LOAD_ERROR"), gate=False,
         template="escape_signal", dedicated=True),
    Case("escape_proc", SOFTMAX, _c("escape_proc"), _s("LOAD_ERROR"), gate=False,
         template="escape_proc", dedicated=True),
    Case("escape_linger", SOFTMAX, _c("escape_linger"), _s("OK", "TIMEOUT"), gate=False,
         template="escape_linger", dedicated=True),
    Case("escape_task_report", f"{TASKS}/escape_task_report.py", _c("softmax_torch"),
         _s("TASK_ERROR"), gate=False, template="escape_task_report", dedicated=True),
    Case("escape_task_import_write", f"{TASKS}/escape_task_import_write.py", _c("softmax_torch"),
         OK, gate=False, template="escape_task_import_write", dedicated=True),
    Case("escape_task_forward", f"{TASKS}/escape_task_forward.py", _c("softmax_torch"),
         _s("RUNTIME_ERROR"), gate=False, template="escape_task_forward", dedicated=True),
    # GPU only.
    Case("softmax_triton_gpu", SOFTMAX, _c("softmax_triton"), OK, gpu=True),
    Case("reference_softmax_gpu", SOFTMAX, None, OK, gpu=True, from_reference=True),
    Case("after_ten_calls_gpu", SOFTMAX, _c("after_ten_calls"), INCORRECT, gpu=True),
    Case("stale_empty_gpu", SOFTMAX, _c("stale_empty"), INCORRECT, gpu=True),
    Case("side_stream", SOFTMAX, _c("side_stream"), _s("ASYNC_WORK", "STATIC_REJECT"), gpu=True),
    Case("side_stream_nogate", SOFTMAX, _c("side_stream"), _s("ASYNC_WORK", "INCORRECT"), gpu=True,
         gate=False),
    Case("patch_event_timer_nogate", SOFTMAX, _c("patch_event_timer"), TIMER_PATCHED, gpu=True,
         gate=False, max_speedup=3.0),
    Case("illegal_address", SOFTMAX, _c("illegal_address"), _s("CUDA_FATAL", "OOB_WRITE"), gpu=True,
         dedicated=True),
    Case("infinite_loop_gpu", SOFTMAX, _c("infinite_loop"), _s("TIMEOUT"), gpu=True, dedicated=True,
         timeout_s=5.0),
]

BY_NAME = {c.name: c for c in CASES}
assert len(BY_NAME) == len(CASES), "duplicate case names"
