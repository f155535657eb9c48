"""Kernel tasks: loading and validating a KernelBench-format task file.

A task file defines ``class Model(nn.Module)``, ``get_inputs()`` and ``get_init_inputs()``,
and optionally ``ATOL``, ``RTOL``, ``ALLOW_TF32`` and ``SHAPES``. Task code is untrusted: it
is loaded only in sandboxed children (:mod:`evaluator_worker.reference_role`), and the judge
keeps what they report, a :class:`TaskInfo`.

A task is refused, with the reason and the line where there is one, when it does not parse,
misses a required name, makes inputs that are not tensors, raises, or has an output that a
constant would match or that does not depend on its inputs (zeros would pass it).

The value checks run the reference twice on real inputs. Where no GPU work should happen
(the controller, the API) and the inputs are large, ``check_values="auto"`` checks only the
structure, on the ``meta`` device (shapes and dtypes, no memory); the worker, which owns the
GPU, then runs the value checks before its first evaluation. Validation holds at most one
input set and two outputs in the task dtype (the comparisons upcast chunk by chunk).
"""

from __future__ import annotations

import ast
import dataclasses
import hashlib
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from evaluator_worker import compare, inputs, parsing
from evaluator_worker.errors import TaskError
from evaluator_worker.modules import describe, error_line, import_file

#: Most held-out ``SHAPES`` a task may declare (each is one more correctness trial).
MAX_SHAPES = 32

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
    input_bytes, output_bytes:
        Bytes of one input set and of its outputs (from a run on the ``meta`` device; None
        where the task cannot run there).
    values_checked:
        Whether the value checks ran (see the module docstring).
    """

    path: str
    source: str
    module: ModuleType
    dtype: torch.dtype
    tolerance: compare.Tolerance
    allow_tf32: bool
    n_shapes: int
    input_bytes: int | None = None
    output_bytes: int | None = None
    values_checked: bool = True

    def reference(self) -> torch.nn.Module:
        """A fresh reference model built from ``get_init_inputs()``."""
        return self.module.Model(*self.module.get_init_inputs())

    def info(self) -> TaskInfo:
        """What the judge keeps of this task (no code)."""
        return TaskInfo(
            self.path,
            self.source,
            self.dtype,
            self.tolerance,
            self.allow_tf32,
            self.n_shapes,
            self.input_bytes,
            self.output_bytes,
            self.values_checked,
            self.input_bytes,
        )


@dataclasses.dataclass
class TaskInfo:
    """A validated task as the judge knows it: its settings and sizes, never its code.

    Attributes as :class:`Task`'s, plus ``set_bytes``: bytes of one input set (from the
    ``meta`` device, else measured on the device), which sizes the timing pool.
    """

    path: str
    source: str
    dtype: torch.dtype
    tolerance: compare.Tolerance
    allow_tf32: bool
    n_shapes: int
    input_bytes: int | None = None
    output_bytes: int | None = None
    values_checked: bool = True
    set_bytes: int | None = None

    @property
    def sha256(self) -> str:
        """Digest of the task's source."""
        return hashlib.sha256(self.source.encode()).hexdigest()

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form (what a ``task`` child sends the judge)."""
        return {
            "path": self.path,
            "source": self.source,
            "dtype": str(self.dtype).removeprefix("torch."),
            "atol": self.tolerance.atol,
            "rtol": self.tolerance.rtol,
            "allow_tf32": self.allow_tf32,
            "n_shapes": self.n_shapes,
            "input_bytes": self.input_bytes,
            "output_bytes": self.output_bytes,
            "values_checked": self.values_checked,
            "set_bytes": self.set_bytes,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TaskInfo:
        """Parse what a child sent; raises ``ValueError`` when a field is malformed."""
        from evaluator_worker.protocol import DTYPES

        dtype = DTYPES.get(str(d["dtype"]))
        if dtype is None:
            raise ValueError(f"bad dtype {str(d['dtype'])[:40]!r}")
        sizes = [d.get(k) for k in ("input_bytes", "output_bytes", "set_bytes")]
        if not all(v is None or (isinstance(v, int) and 0 <= v < 1 << 50) for v in sizes):
            raise ValueError("bad sizes")
        atol, rtol, n_shapes = float(d["atol"]), float(d["rtol"]), d["n_shapes"]
        if not (0 <= atol < 1 and 0 <= rtol < 1):  # NaN fails both
            raise ValueError("bad tolerances")
        if not isinstance(n_shapes, int) or not 0 <= n_shapes <= MAX_SHAPES:
            raise ValueError("bad n_shapes")
        return cls(
            str(d["path"]),
            str(d["source"]),
            dtype,
            compare.Tolerance(atol, rtol),
            bool(d["allow_tf32"]),
            n_shapes,
            *sizes[:2],
            bool(d["values_checked"]),
            sizes[2],
        )


def _parse(path: Path, source: str) -> ast.Module:
    try:
        return parsing.parse(source, filename=str(path))
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
    if len(shapes) > MAX_SHAPES:
        raise TaskError(
            f"SHAPES has {len(shapes)} entries; at most {MAX_SHAPES} held-out shapes are checked",
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


VALUE_CHECK_BYTES = 512 << 20


def meta_sizes(mod: ModuleType) -> tuple[int | None, int | None]:
    """Bytes of one input set and of its outputs, from a run on the ``meta`` device.

    Nothing is allocated; ``None`` where the task's code cannot run there (an op without a
    meta kernel, a tensor made on an explicit device).
    """
    try:
        with torch.device("meta"):
            xs = list(mod.get_inputs())
            if not all(isinstance(x, torch.Tensor) and x.device.type == "meta" for x in xs):
                return None, None
            n_in = inputs.nbytes(xs)
            model = mod.Model(*mod.get_init_inputs())
            with torch.no_grad():
                out = model(*xs)
        flat = compare.flatten(out)
        if not all(isinstance(y, torch.Tensor) for y in flat):
            return n_in, None
        return n_in, inputs.nbytes(flat)
    except Exception:  # the value checks (or the worker) find out what is wrong
        return None, None


def _check_values(
    mod: ModuleType, path: Path, device: torch.device, init: list[Any], tol: compare.Tolerance
) -> None:
    with torch.device(device):
        model = _call(mod.Model, "Model(*get_init_inputs())", path, *init)
    model = model.to(device).eval()
    inputs.reseed_parameters(model, 12345)
    outs = []
    for seed in (1, 2):
        x = inputs.generate(mod, inputs.InputSpec(seed=seed), device)
        outs.append(run_reference(model, x, path))
        del x
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
        same = compare.Expected(a, tuple(a.shape), a.dtype)
        if a.shape == b.shape and compare.compare_expected(b, same, tol).ok:
            raise TaskError(
                f"{what} is independent of its inputs: two different input sets give the same"
                " result, so a kernel that ignores its inputs would pass",
                str(path),
            )


def _check_structure(mod: ModuleType, path: Path, init: list[Any]) -> None:
    """The reference runs on the ``meta`` device and returns tensors."""
    with torch.device("meta"):
        xs = list(mod.get_inputs())
        model = _call(mod.Model, "Model(*get_init_inputs())", path, *init)
        with torch.no_grad():
            check_output(_call(model, "the reference Model.forward", path, *xs), path)


def _validate(
    mod: ModuleType, path: Path, device: torch.device, check_values: bool | str, n_in: int | None
) -> tuple[torch.dtype, compare.Tolerance, bool, int, bool]:
    init = _call(mod.get_init_inputs, "get_init_inputs()", path)
    if not isinstance(init, (list, tuple)):
        raise TaskError(
            f"get_init_inputs() must return a list, got {type(init).__name__}", str(path)
        )
    values = check_values is True or (
        check_values == "auto" and (n_in is None or n_in <= VALUE_CHECK_BYTES)
    )
    # The structure of the inputs is checked where it costs nothing: on the meta device when
    # the task runs there, on the real device otherwise (and then only once).
    with torch.device("meta" if n_in is not None else device):
        xs = check_inputs(_call(mod.get_inputs, "get_inputs()", path), path)
    dtype = inputs.floating_dtype(xs)
    del xs
    tol, allow_tf32, n_shapes = _metadata(mod, path, dtype)
    for i, fn in enumerate(getattr(mod, "SHAPES", [])):
        with torch.device("meta" if n_in is not None else device):
            check_inputs(_call(fn, f"SHAPES[{i}]()", path), path, f"SHAPES[{i}]()")
    if values:
        _check_values(mod, path, device, list(init), tol)
    else:
        _check_structure(mod, path, list(init))
    return dtype, tol, allow_tf32, n_shapes, values


def load_task(
    path: str | Path, device: str | torch.device = "cpu", check_values: bool | str = True
) -> Task:
    """Load and validate a task file; raises :class:`TaskError` with the reason.

    ``check_values``: True runs the value checks on ``device``; ``"auto"`` runs them only when
    an input set takes at most :data:`VALUE_CHECK_BYTES` (else the structure is checked on
    the ``meta`` device and ``Task.values_checked`` is False).
    """
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
    n_in, n_out = meta_sizes(mod)
    dtype, tol, allow_tf32, n_shapes, values = _validate(
        mod, p, torch.device(device), check_values, n_in
    )
    return Task(str(p), source, mod, dtype, tol, allow_tf32, n_shapes, n_in, n_out, values)


def check_task_values(task: Task, device: str | torch.device) -> None:
    """Run the value checks of a task loaded with ``check_values=False`` (or ``"auto"``)."""
    path = Path(task.path)
    init = _call(task.module.get_init_inputs, "get_init_inputs()", path)
    _check_values(task.module, path, torch.device(device), list(init), task.tolerance)
    task.values_checked = True
