"""Kernel tasks: loading and validating a KernelBench-format task file.

A task file defines ``class Model(nn.Module)``, ``get_inputs()`` and ``get_init_inputs()``,
and optionally ``ATOL``, ``RTOL``, ``ALLOW_TF32`` and ``SHAPES`` (architecture.md). Task code
is the user's own reference and runs in the judge; candidate code never does.

A task is refused, with the reason and the line where there is one, when it does not parse,
misses a required name, makes inputs that are not tensors, raises, or has an output that a
constant would match or that does not depend on its inputs (zeros would pass it).
"""

from __future__ import annotations

import ast
import copy
import dataclasses
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from evaluator_worker import compare, inputs
from evaluator_worker.errors import TaskError
from evaluator_worker.modules import describe, error_line, import_file

REQUIRED = (
    ("Model", ast.ClassDef, "class Model(nn.Module)"),
    ("get_inputs", ast.FunctionDef, "def get_inputs()"),
    ("get_init_inputs", ast.FunctionDef, "def get_init_inputs()"),
)


@dataclasses.dataclass
class Task:
    """A loaded, validated task.

    Attributes
    ----------
    path, source:
        The task file and its text.
    module:
        The imported module (``Model``, ``get_inputs``, ``get_init_inputs``).
    dtype:
        The working dtype (of the first floating input).
    tolerance:
        ``ATOL``/``RTOL`` or the dtype's default.
    allow_tf32:
        ``ALLOW_TF32`` (default False).
    n_shapes:
        How many held-out ``SHAPES`` generators the task declares.
    """

    path: str
    source: str
    module: ModuleType
    dtype: torch.dtype
    tolerance: compare.Tolerance
    allow_tf32: bool
    n_shapes: int

    def reference(self) -> torch.nn.Module:
        """A fresh reference model built from ``get_init_inputs()``."""
        return self.module.Model(*self.module.get_init_inputs())


def _parse(path: Path, source: str) -> ast.Module:
    try:
        return ast.parse(source, filename=str(path))
    except SyntaxError as e:
        raise TaskError(f"syntax error: {e.msg}", str(path), e.lineno) from None


def _check_names(tree: ast.Module, path: Path) -> None:
    defined: dict[str, type] = {}
    for node in tree.body:
        if isinstance(node, (ast.ClassDef, ast.FunctionDef)):
            defined[node.name] = type(node)
        elif isinstance(node, ast.Assign):
            for t in node.targets:
                if isinstance(t, ast.Name):
                    defined[t.id] = ast.Assign
    for name, kind, what in REQUIRED:
        if name not in defined:
            article = "class" if kind is ast.ClassDef else "function"
            raise TaskError(f"no {article} {name}: a task must define {what}", str(path))


def _metadata(
    mod: ModuleType, path: Path, dtype: torch.dtype
) -> tuple[compare.Tolerance, bool, int]:
    default = compare.default_tolerance(dtype)
    tol = {}
    for name in ("ATOL", "RTOL"):
        v = getattr(mod, name, None)
        if v is None:
            tol[name] = default.atol if name == "ATOL" else default.rtol
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= float(v) < 1:
            raise TaskError(f"{name} must be a number in [0, 1), got {v!r}", str(path))
        tol[name] = float(v)
    allow_tf32 = getattr(mod, "ALLOW_TF32", False)
    if not isinstance(allow_tf32, bool):
        raise TaskError(f"ALLOW_TF32 must be True or False, got {allow_tf32!r}", str(path))
    shapes = getattr(mod, "SHAPES", [])
    if not isinstance(shapes, (list, tuple)) or not all(callable(s) for s in shapes):
        raise TaskError(
            "SHAPES must be a list of functions that each return an inputs list like get_inputs()",
            str(path),
        )
    return compare.Tolerance(tol["ATOL"], tol["RTOL"]), allow_tf32, len(shapes)


def _call(fn: Any, what: str, path: Path, *args: Any) -> Any:
    try:
        return fn(*args)
    except Exception as e:
        raise TaskError(f"{what} raised {describe(e)}", str(path), error_line(e, path)) from None


def check_inputs(xs: Any, path: Path, what: str = "get_inputs()") -> list[Any]:
    """The inputs list, or a ``TaskError`` saying which element is not a tensor."""
    if not isinstance(xs, (list, tuple)):
        raise TaskError(f"{what} must return a list of tensors, got {type(xs).__name__}", str(path))
    for i, x in enumerate(xs):
        if not isinstance(x, torch.Tensor):
            raise TaskError(
                f"{what} element {i} is a {type(x).__name__}, not a tensor: pass constants to"
                " the model through get_init_inputs() instead",
                str(path),
            )
    return list(xs)


def check_output(out: Any, path: Path) -> list[torch.Tensor]:
    """The flattened output, or a ``TaskError`` when it is not tensors."""
    flat = compare.flatten(out)
    if not flat or not all(isinstance(y, torch.Tensor) for y in flat):
        raise TaskError(
            f"Model.forward must return a tensor or a tuple of tensors, got {type(out).__name__}",
            str(path),
        )
    return flat


def to_double(xs: list[Any]) -> list[Any]:
    """Floating tensors cast to float64 (integer tensors kept)."""
    return [x.double() if isinstance(x, torch.Tensor) and x.is_floating_point() else x for x in xs]


@torch.no_grad()
def run_reference(model: torch.nn.Module, xs: list[Any], path: Path) -> list[torch.Tensor]:
    """Run ``model`` on ``xs``; a ``TaskError`` names the line if the reference raises."""
    return check_output(_call(model, "the reference Model.forward", path, *xs), path)


def _validate(
    mod: ModuleType, path: Path, device: torch.device
) -> tuple[torch.dtype, compare.Tolerance, bool, int]:
    init = _call(mod.get_init_inputs, "get_init_inputs()", path)
    if not isinstance(init, (list, tuple)):
        raise TaskError(
            f"get_init_inputs() must return a list, got {type(init).__name__}", str(path)
        )
    xs = check_inputs(_call(mod.get_inputs, "get_inputs()", path), path)
    dtype = inputs.floating_dtype(xs)
    tol, allow_tf32, n_shapes = _metadata(mod, path, dtype)
    for i, fn in enumerate(getattr(mod, "SHAPES", [])):
        check_inputs(_call(fn, f"SHAPES[{i}]()", path), path, f"SHAPES[{i}]()")
    with torch.device(device):
        model = _call(mod.Model, "Model(*get_init_inputs())", path, *init)
    model = model.to(device).eval()
    inputs.reseed_parameters(model, 12345)
    model64 = copy.deepcopy(model).double()
    outs = []
    for seed in (1, 2):
        x = inputs.generate(mod, inputs.InputSpec(seed=seed), device)
        run_reference(model, x, path)
        outs.append(run_reference(model64, to_double(x), path))
    for k, (a, b) in enumerate(zip(*outs, strict=True)):
        if not a.is_floating_point():
            continue
        what = "the output" if len(outs[0]) == 1 else f"output {k}"
        c = compare.constant_would_pass(a, tol)
        if c is not None:
            raise TaskError(
                f"{what} is near-constant: the constant {c:g} matches it within atol={tol.atol:g}"
                f" rtol={tol.rtol:g}, so a kernel returning zeros or a constant would pass."
                " Scale the inputs or outputs up, or tighten ATOL",
                str(path),
            )
        if a.shape == b.shape and compare.compare_tensor(b, a, a.to(b.dtype), tol).ok:
            raise TaskError(
                f"{what} is independent of its inputs: two different input sets give the same"
                " result, so a kernel that ignores its inputs would pass",
                str(path),
            )
    return dtype, tol, allow_tf32, n_shapes


def load_task(path: str | Path, device: str | torch.device = "cpu") -> Task:
    """Load and validate a task file; raises :class:`TaskError` with the reason."""
    p = Path(path)
    if not p.is_file():
        raise TaskError("task file not found", str(p))
    try:
        source = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise TaskError(f"cannot read the task file: {e}", str(p)) from None
    _check_names(_parse(p, source), p)
    try:
        mod = import_file(p, "kernelmap_task")
    except Exception as e:
        raise TaskError(
            f"importing the task raised {describe(e)}", str(p), error_line(e, p)
        ) from None
    for name, kind, what in REQUIRED:
        obj = getattr(mod, name, None)
        if not callable(obj) or (
            kind is ast.ClassDef
            and not (isinstance(obj, type) and issubclass(obj, torch.nn.Module))
        ):
            raise TaskError(f"{name} must be {what}", str(p))
    dtype, tol, allow_tf32, n_shapes = _validate(mod, p, torch.device(device))
    return Task(str(p), source, mod, dtype, tol, allow_tf32, n_shapes)
