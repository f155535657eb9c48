"""The correctness protocol (judge side): trial plan, reference outputs and the checks.

At least five trials with fresh secret-seeded inputs, rotating the input distributions
(the task's own generator, normal, scaled/shifted uniform, heavy-tailed with outliers), then
one trial per held-out ``SHAPES`` generator. The first trial runs the same input twice
(determinism). Before each call the candidate's free memory is filled with NaN. After each
call the judge checks the guards around every input (``OOB_WRITE``), that the inputs are
unchanged (``INPUT_MUTATED``) and the outputs (``INCORRECT``, ``NONDETERMINISTIC``).

The reference model is the task's code, so it runs in a sandboxed ``reference`` child
(:mod:`evaluator_worker.reference_role`); :class:`Reference` is the judge's handle on it.

Memory, per trial, in units of the task's input bytes ``I`` and output bytes ``O``: the
reference child makes the float64 reference first (``3I + 2O`` while the float64 model runs,
then the float64 inputs are freed), then the task-dtype reference only long enough to
measure its error; the judge takes its own copy of the inputs (``I``) and the float64
expected outputs (``2O``), and the child frees its copies. The candidate's input buffers come
back and are checked and freed before its outputs are fetched, and the comparisons run in
chunks (:mod:`evaluator_worker.compare`).
"""

from __future__ import annotations

import random
from typing import Any

import torch

from evaluator_worker import compare, inputs, memory, protocol
from evaluator_worker.process import CandidateProcess, Failure
from evaluator_worker.task import TaskInfo
from evaluator_worker.verdict import Verdict


class Reference:
    """The judge's handle on the reference child: expected outputs as the judge's own data."""

    def __init__(
        self, proc: CandidateProcess, task: TaskInfo, device: torch.device, timeout_s: float
    ) -> None:
        self.proc, self.task, self.device, self.timeout_s = proc, task, device, timeout_s
        self.note: str | None = None

    def _ask(self, msg: dict[str, Any], what: str) -> dict[str, Any]:
        try:
            return self.proc.request(msg, self.timeout_s, what)
        except Failure as f:
            raise Failure(f.verdict, f"the task's reference model failed: {f.message}") from None

    def expected(
        self, spec: inputs.InputSpec, with_inputs: bool = True
    ) -> tuple[list[Any] | None, list[compare.Expected]]:
        """The inputs of ``spec`` (when asked) and what the outputs for them must be."""
        msg = {"op": "expected", "spec": spec.to_dict(), "inputs": with_inputs}
        reply = self._ask(msg, "computing the reference outputs")
        try:
            xs = [own(x, self.device) for x in reply["inputs"]] if with_inputs else None
            exp = [
                compare.Expected(
                    own(e["value"], self.device),
                    tuple(int(n) for n in e["shape"]),
                    protocol.DTYPES[e["dtype"]],
                    float(e["ref_err"]),
                )
                for e in reply["expected"]
            ]
        except (KeyError, TypeError, ValueError, OverflowError) as e:
            raise Failure(
                Verdict.RUNTIME_ERROR, f"the reference process sent a malformed answer ({e})"
            ) from None
        if reply.get("note"):
            self.note = str(reply["note"])[:400]
        del reply
        self._ask({"op": "release"}, "releasing the reference outputs")
        return xs, exp

    def floor(self, spec: inputs.InputSpec) -> tuple[int, int]:
        """Bytes moved and FLOPs of one reference call on the inputs of ``spec``."""
        reply = self._ask({"op": "floor", "spec": spec.to_dict()}, "counting the reference's work")
        return int(reply["nbytes"]), int(reply["flops"])


def _usable(expected: list[compare.Expected], tol: compare.Tolerance) -> bool:
    """Whether a redrawn input set gives a reference worth comparing against."""
    for e in expected:
        y = e.value
        if y.is_floating_point() and y.numel():
            if compare.finite_fraction(y) < 0.5 or compare.constant_would_pass(y, tol) is not None:
                return False
    return True


def plan(task: TaskInfo, trials: int, rng: random.Random) -> list[inputs.InputSpec]:
    """The trial input specs: rotated distributions, then the held-out shapes."""
    specs = [
        inputs.InputSpec(rng.getrandbits(62), inputs.DISTRIBUTIONS[i % len(inputs.DISTRIBUTIONS)])
        for i in range(trials)
    ]
    specs += [inputs.InputSpec(rng.getrandbits(62), "task", j) for j in range(task.n_shapes)]
    return specs


def _label(spec: inputs.InputSpec) -> str:
    return f"held-out SHAPES[{spec.shape}]" if spec.shape is not None else f"{spec.dist} inputs"


def check_outputs(
    outs: list[torch.Tensor],
    expected: list[compare.Expected],
    tol: compare.Tolerance,
    what: str,
) -> float:
    """Raise ``INCORRECT`` unless ``outs`` pass; returns the worst relative L2 error."""
    c = compare.compare_expected_outputs(outs, expected, tol)
    if not c.ok:
        raise Failure(Verdict.INCORRECT, f"{what}: {c.message}")
    return c.rel_l2


def own(t: Any, device: torch.device) -> Any:
    """The judge's own copy of a tensor the candidate process sent.

    A tensor mapped over CUDA IPC is the candidate's memory, which it could still change:
    cloned. A tensor that came as bytes is already the judge's: moved, never copied twice.
    """
    if not isinstance(t, torch.Tensor):
        return t
    if t.is_cuda:
        return t.clone()
    return t.to(device)


def fetch_outputs(
    proc: CandidateProcess, device: torch.device, timeout_s: float, what: str
) -> list[list[Any]]:
    """The outputs of the candidate's last ``call`` request, one list per repeat."""
    reply = proc.request({"op": "outputs"}, timeout_s, what)
    return [[own(o, device) for o in rep] for rep in reply["outputs"]]


def _check_inputs(bufs: list[Any], xs: list[Any], device: torch.device, what: str) -> None:
    tensors = [x for x in xs if isinstance(x, torch.Tensor)]
    if len(bufs) != len(tensors):
        raise Failure(
            Verdict.RUNTIME_ERROR,
            f"{what}: the candidate process returned {len(bufs)} input buffers,"
            f" expected {len(tensors)}",
        )
    for i, (buf, x) in enumerate(zip(bufs, tensors, strict=True)):
        buf = buf.to(device)
        if not inputs.guards_intact(buf):
            raise Failure(
                Verdict.OOB_WRITE,
                f"{what}: the candidate wrote outside input {i}"
                " (a guard region next to it changed)",
            )
        if not compare.same(inputs.unguard(buf, x.shape), x):
            raise Failure(
                Verdict.INPUT_MUTATED,
                f"{what}: input {i} was modified by the call; inputs must stay unchanged",
            )
        del buf


def run_trials(
    proc: CandidateProcess,
    reference: Reference,
    specs: list[inputs.InputSpec],
    rng: random.Random,
    timeout_s: float,
    messages: list[str],
) -> dict[str, Any]:
    """Run every trial; raises :class:`Failure` at the first failing check."""
    device, tol = reference.device, reference.task.tolerance
    worst = 0.0
    for k, spec in enumerate(specs):
        xs, expected = reference.expected(spec)
        if spec.dist != "task" and not _usable(expected, tol):
            messages.append(
                f"trial {k}: the reference is degenerate on {spec.dist} inputs;"
                " used the task's own generator instead"
            )
            spec = inputs.InputSpec(rng.getrandbits(62), "task", spec.shape)
            del xs, expected
            xs, expected = reference.expected(spec)
        what = f"trial {k} ({_label(spec)})"
        reply = proc.request(
            {
                "op": "call",
                "variant": "candidate",
                "spec": spec.to_dict(),
                "repeat": 2 if k == 0 else 1,
                "poison_bytes": [e.nbytes for e in expected],
            },
            timeout_s,
            what,
        )
        _check_inputs(reply.pop("buffers"), xs, device, what)
        del xs, reply
        memory.release_cached(device)
        outs = fetch_outputs(proc, device, timeout_s, what)
        worst = max(worst, check_outputs(outs[0], expected, tol, what))
        if len(outs) > 1:
            first, second = outs
            if any(not compare.same(a, b) for a, b in zip(first, second, strict=True)):
                firsts = [compare.Expected(a, tuple(a.shape), a.dtype) for a in first]
                c = compare.compare_expected_outputs(second, firsts, tol)
                if not c.ok:
                    raise Failure(
                        Verdict.NONDETERMINISTIC,
                        f"{what}: the same input gave a different output the second time:"
                        f" {c.message}",
                    )
                messages.append(
                    "the same input gave bitwise-different outputs twice (within tolerance)"
                )
            check_outputs(second, expected, tol, what + ", second call")
            del first, second
        del outs, expected
    memory.release_cached(device)
    if reference.note:
        messages.append(reference.note)
    return {"trials": len(specs), "worst_rel_l2": worst}
