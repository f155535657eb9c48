"""The correctness protocol (judge side): trial plan, reference outputs and the checks.

At least five trials with fresh secret-seeded inputs, rotating the input distributions
(the task's own generator, normal, scaled/shifted uniform, heavy-tailed with outliers), then
one trial per held-out ``SHAPES`` generator. The first trial runs the same input twice
(determinism). Before each call the candidate's free memory is filled with NaN. After each
call the judge checks the guards around every input (``OOB_WRITE``), that the inputs are
unchanged (``INPUT_MUTATED``) and the outputs (``INCORRECT``, ``NONDETERMINISTIC``).
"""

from __future__ import annotations

import copy
import random
from typing import Any

import torch

from evaluator_worker import compare, inputs
from evaluator_worker.process import CandidateProcess, Failure
from evaluator_worker.task import Task, to_double
from evaluator_worker.verdict import Verdict


class Reference:
    """The trusted reference model in the task dtype and in float64, on the judge's device."""

    def __init__(self, task: Task, init_seed: int, param_seed: int, device: torch.device) -> None:
        self.task = task
        self.device = device
        _, self.model = inputs.build_reference(task.module, init_seed, param_seed, device)
        self.model64 = copy.deepcopy(self.model).double()
        self.note: str | None = None

    @torch.no_grad()
    def outputs(self, xs: list[Any]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """``(task-dtype outputs, float64 outputs)`` for one input set."""
        ref = compare.flatten(self.model(*xs))
        try:
            ref64 = compare.flatten(self.model64(*to_double(xs)))
        except Exception as e:  # an op without float64 support: fall back, and say so
            self.note = (
                f"float64 reference unavailable ({type(e).__name__}); compared in task dtype"
            )
            ref64 = [r.double() if r.is_floating_point() else r for r in ref]
        return ref, ref64


def _usable(ref64: list[torch.Tensor], tol: compare.Tolerance) -> bool:
    """Whether a redrawn input set gives a reference worth comparing against."""
    for y in ref64:
        if y.is_floating_point() and y.numel():
            finite = torch.isfinite(y)
            if (
                float(finite.float().mean()) < 0.5
                or compare.constant_would_pass(y, tol) is not None
            ):
                return False
    return True


def plan(task: Task, trials: int, rng: random.Random) -> list[inputs.InputSpec]:
    """The trial input specs: rotated distributions, then the held-out shapes."""
    specs = [
        inputs.InputSpec(rng.getrandbits(62), inputs.DISTRIBUTIONS[i % len(inputs.DISTRIBUTIONS)])
        for i in range(trials)
    ]
    specs += [inputs.InputSpec(rng.getrandbits(62), "task", j) for j in range(task.n_shapes)]
    return specs


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.shape != b.shape:
        return False
    eq = a == b
    if a.is_floating_point():
        eq = eq | (torch.isnan(a) & torch.isnan(b))
    return bool(eq.all())


def _label(spec: inputs.InputSpec) -> str:
    return f"held-out SHAPES[{spec.shape}]" if spec.shape is not None else f"{spec.dist} inputs"


def check_outputs(
    outs: list[torch.Tensor],
    ref: list[torch.Tensor],
    ref64: list[torch.Tensor],
    tol: compare.Tolerance,
    what: str,
) -> float:
    """Raise ``INCORRECT`` unless ``outs`` pass; returns the worst relative L2 error."""
    c = compare.compare_outputs(outs, ref64, ref, tol)
    if not c.ok:
        raise Failure(Verdict.INCORRECT, f"{what}: {c.message}")
    return c.rel_l2


def run_trials(
    proc: CandidateProcess,
    reference: Reference,
    specs: list[inputs.InputSpec],
    rng: random.Random,
    timeout_s: float,
    messages: list[str],
) -> dict[str, Any]:
    """Run every trial; raises :class:`Failure` at the first failing check."""
    task, device, tol = reference.task, reference.device, reference.task.tolerance
    worst = 0.0
    for k, spec in enumerate(specs):
        xs = inputs.generate(task.module, spec, device)
        ref, ref64 = reference.outputs(xs)
        if spec.dist != "task" and not _usable(ref64, tol):
            messages.append(
                f"trial {k}: the reference is degenerate on {spec.dist} inputs;"
                " used the task's own generator instead"
            )
            spec = inputs.InputSpec(rng.getrandbits(62), "task", spec.shape)
            xs = inputs.generate(task.module, spec, device)
            ref, ref64 = reference.outputs(xs)
        what = f"trial {k} ({_label(spec)})"
        reply = proc.request(
            {
                "op": "call",
                "variant": "candidate",
                "spec": spec.to_dict(),
                "repeat": 2 if k == 0 else 1,
                "poison_bytes": [inputs.nbytes(r) for r in ref],
            },
            timeout_s,
            what,
        )
        outs = [[o.to(device).clone() for o in rep] for rep in reply["outputs"]]
        tensors = [x for x in xs if isinstance(x, torch.Tensor)]
        bufs = reply["buffers"]
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
            if not _same(inputs.unguard(buf, x.shape), x):
                raise Failure(
                    Verdict.INPUT_MUTATED,
                    f"{what}: input {i} was modified by the call; inputs must stay unchanged",
                )
        worst = max(worst, check_outputs(outs[0], ref, ref64, tol, what))
        if len(outs) > 1:
            first, second = outs
            if any(not _same(a, b) for a, b in zip(first, second, strict=True)):
                c = compare.compare_outputs(
                    second, [a.double() if a.is_floating_point() else a for a in first], first, tol
                )
                if not c.ok:
                    raise Failure(
                        Verdict.NONDETERMINISTIC,
                        f"{what}: the same input gave a different output the second time:"
                        f" {c.message}",
                    )
                messages.append(
                    "the same input gave bitwise-different outputs twice (within tolerance)"
                )
            check_outputs(second, ref, ref64, tol, what + ", second call")
    if reference.note:
        messages.append(reference.note)
    return {"trials": len(specs), "worst_rel_l2": worst}
