"""The task's own code, in a sandboxed child: validation, reference outputs, FLOP counts.

A task file is untrusted as much as a candidate is (any user of the service can submit one),
so the judge never imports it. Two roles of the sandboxed child run it instead and send only
data back (protocol messages: JSON and tensor bytes, never pickles):

- ``task``: loads and validates the task (:func:`evaluator_worker.task.load_task`) and
  answers with its settings (:class:`evaluator_worker.task.TaskInfo`); ``check_values`` runs
  the value checks on the worker's device.
- ``reference``: builds the reference model exactly as the candidate process does (same
  secret seeds) and a float64 copy; ``expected`` answers an input spec with the inputs and
  the expected outputs (:class:`evaluator_worker.compare.Expected` fields), ``floor`` with the
  bytes and FLOPs of one call. What it sent stays alive until ``release`` (CUDA IPC maps it).

A task that lies in its own reference only misleads the evaluation of its own candidates.
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from evaluator_worker import compare, floor, inputs, memory
from evaluator_worker.errors import TaskError
from evaluator_worker.modules import import_file
from evaluator_worker.task import Task, check_task_values, load_task, to_double


class TaskFailure(Exception):
    """A :class:`TaskError` on its way to the judge (``kind`` ``TASK_ERROR``)."""

    kind = "TASK_ERROR"

    def __init__(self, err: TaskError) -> None:
        super().__init__(err.reason)
        self.line = err.line


class TaskRole:
    """Role ``task``: validation of one task file."""

    def __init__(self, req: dict[str, Any], device: torch.device) -> None:
        self.device = device
        try:
            self.task: Task = load_task(req["task_path"], device, check_values=False)
        except TaskError as e:
            raise TaskFailure(e) from None

    def info(self) -> dict[str, Any]:
        """The task's settings, as the judge keeps them."""
        info = self.task.info()
        if info.set_bytes is None:  # no meta run: measure one real input set
            info.set_bytes = inputs.nbytes(
                inputs.generate(self.task.module, inputs.InputSpec(seed=0), self.device)
            )
        return info.to_dict()

    def check_values(self, req: dict[str, Any]) -> dict[str, Any]:
        """The value checks on this process's device (see ``check_task_values``)."""
        try:
            check_task_values(self.task, self.device)
        except TaskError as e:
            raise TaskFailure(e) from None
        finally:
            memory.release_cached(self.device)
        return {"ok": True}


class ReferenceRole:
    """Role ``reference``: the trusted comparison's inputs and expected outputs."""

    def __init__(self, req: dict[str, Any], device: torch.device) -> None:
        self.device = device
        self.module = import_file(req["task_path"], "kernelmap_task")
        _, self.model = inputs.build_reference(
            self.module, int(req["init_seed"]), int(req["param_seed"]), device
        )
        self.model64 = copy.deepcopy(self.model).double()
        self.note: str | None = None
        self.kept: Any = None

    @torch.no_grad()
    def _expected(self, spec: inputs.InputSpec) -> tuple[list[Any], list[compare.Expected]]:
        # The float64 forward first, on float64 inputs made from a task-dtype draw that is
        # freed at once; the task-dtype inputs are drawn again (the same values: the draw is
        # seeded) for the task-dtype forward. Peak: the float64 inputs and outputs alone.
        x64 = to_double(inputs.generate(self.module, spec, self.device))
        try:
            ref64 = compare.flatten(self.model64(*x64))
        except Exception as e:  # an op without float64 support: fall back, and say so
            self.note = (
                f"float64 reference unavailable ({type(e).__name__}); compared in task dtype"
            )
            ref64 = None
        del x64
        xs = inputs.generate(self.module, spec, self.device)
        ref = compare.flatten(self.model(*xs))
        if ref64 is None or len(ref64) != len(ref):
            return xs, [compare.Expected(r, tuple(r.shape), r.dtype) for r in ref]
        out = [compare.expect(y64, yr) for y64, yr in zip(ref64, ref, strict=True)]
        del ref, ref64
        return xs, out

    def expected(self, req: dict[str, Any]) -> dict[str, Any]:
        """Inputs (when asked) and expected outputs for one input spec."""
        self.release({})
        xs, exp = self._expected(inputs.InputSpec.from_dict(req["spec"]))
        reply: dict[str, Any] = {
            "expected": [
                {
                    "value": e.value,
                    "shape": list(e.shape),
                    "dtype": str(e.dtype).removeprefix("torch."),
                    "ref_err": e.ref_err,
                }
                for e in exp
            ],
            "note": self.note,
        }
        if req.get("inputs", True):
            reply["inputs"] = xs
        del xs, exp
        self.kept = reply
        return reply

    def release(self, req: dict[str, Any]) -> dict[str, Any]:
        """Drop what the last reply sent (the judge has its own copies by now)."""
        self.kept = None
        memory.release_cached(self.device)
        return {"ok": True}

    def floor(self, req: dict[str, Any]) -> dict[str, Any]:
        """Bytes moved and FLOPs of one reference call, for the speed-of-light floor."""
        self.release({})
        xs = inputs.generate(self.module, inputs.InputSpec.from_dict(req["spec"]), self.device)
        with torch.no_grad():
            out = self.model(*xs)
        nbytes = inputs.nbytes(xs) + inputs.nbytes(out)
        del out
        flops = floor.count_flops(self.model, xs)
        del xs
        memory.release_cached(self.device)
        return {"nbytes": int(nbytes), "flops": int(flops)}
