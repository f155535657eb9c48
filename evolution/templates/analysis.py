"""What a task's reference computes, for the template matchers: a traced, shape-annotated graph.

The reference ``Model`` is traced with ``torch.fx`` and its nodes are annotated with shapes and
dtypes by running it on ``meta`` tensors shaped like the task's inputs (no memory, no compute).
Anything that cannot be traced (data-dependent control flow, unsupported calls) yields an
analysis with ``graph=None`` and the reason, and the run goes on with its other emitters.
"""

from __future__ import annotations

import dataclasses
from types import ModuleType
from typing import Any

import torch
import torch.fx


@dataclasses.dataclass
class TensorInfo:
    """Shape and dtype of one tensor."""

    shape: tuple[int, ...]
    dtype: torch.dtype


@dataclasses.dataclass
class TaskAnalysis:
    """The reference as a graph, with everything a template needs to write a candidate.

    Attributes
    ----------
    graph:
        The traced ``torch.fx.GraphModule`` (None when tracing failed; see ``reason``).
    inputs:
        Shape and dtype of each forward input (from ``get_inputs()`` on the meta device).
    params:
        Shape and dtype of each entry of the reference's ``state_dict``, by key.
    init_args:
        ``get_init_inputs()`` (the constructor arguments).
    dtype:
        The task's working dtype (first floating input).
    allow_tf32:
        The task's ``ALLOW_TF32``.
    reason:
        Why tracing failed, when it did.
    """

    graph: torch.fx.GraphModule | None
    inputs: list[TensorInfo]
    params: dict[str, TensorInfo]
    init_args: list[Any]
    dtype: torch.dtype
    allow_tf32: bool = False
    reason: str = ""
    source: str = ""

    def module_of(self, node: torch.fx.Node) -> torch.nn.Module | None:
        """The submodule a ``call_module`` node calls."""
        if self.graph is None or node.op != "call_module":
            return None
        return self.graph.get_submodule(str(node.target))

    def nodes(self) -> list[torch.fx.Node]:
        """The graph's nodes in order (empty without a graph)."""
        return list(self.graph.graph.nodes) if self.graph is not None else []

    def compute_nodes(self) -> list[torch.fx.Node]:
        """Nodes that compute (not placeholders, outputs or attribute reads)."""
        return [n for n in self.nodes() if n.op in ("call_function", "call_method", "call_module")]


def _info(t: Any) -> TensorInfo | None:
    if isinstance(t, torch.Tensor):
        return TensorInfo(tuple(int(d) for d in t.shape), t.dtype)
    return None


def analyse(task: ModuleType, source: str = "") -> TaskAnalysis:
    """Trace ``task.Model`` and annotate every node with ``meta["info"]`` (a TensorInfo or None).

    ``source`` is the task file's text, kept for templates that rewrite the reference itself.
    """
    init = list(task.get_init_inputs())
    with torch.device("meta"):
        xs = list(task.get_inputs())
        model = task.Model(*init)
    inputs = [i for i in (_info(x) for x in xs) if i is not None]
    params = {k: TensorInfo(tuple(v.shape), v.dtype) for k, v in model.state_dict().items()}
    dtype = next((i.dtype for i in inputs if i.dtype.is_floating_point), torch.float32)
    base = dict(
        inputs=inputs,
        params=params,
        init_args=init,
        dtype=dtype,
        allow_tf32=bool(getattr(task, "ALLOW_TF32", False)),
        source=source,
    )
    try:
        gm = torch.fx.symbolic_trace(model)
    except Exception as e:  # data-dependent control flow and the like
        return TaskAnalysis(
            graph=None, reason=f"cannot trace Model: {type(e).__name__}: {e}", **base
        )
    try:
        _annotate(gm, xs)
    except Exception as e:
        return TaskAnalysis(
            graph=None, reason=f"cannot infer shapes: {type(e).__name__}: {e}", **base
        )
    return TaskAnalysis(graph=gm, **base)


def _annotate(gm: torch.fx.GraphModule, xs: list[Any]) -> None:
    class Recorder(torch.fx.Interpreter):
        def run_node(self, n: torch.fx.Node) -> Any:
            out = super().run_node(n)
            n.meta["info"] = _info(out)
            n.meta["value"] = out if not isinstance(out, torch.Tensor) else None
            return out

    with torch.no_grad():
        Recorder(gm).run(*xs)


def parameter_skeleton(params: dict[str, TensorInfo], indent: str = "        ") -> str:
    """``__init__`` lines giving ``ModelNew`` the reference's state_dict keys and shapes.

    The evaluator loads the reference's (re-randomised) values into them, so a template reads
    e.g. ``self.ln.weight`` exactly where the reference keeps its LayerNorm weight. Keys of
    submodules become nested ``nn.Module`` containers; all entries are registered as
    parameters (values are loaded, never trained).
    """
    lines: list[str] = []
    made: set[str] = set()
    for key, info in params.items():
        parts = key.split(".")
        for depth in range(1, len(parts)):
            prefix = ".".join(parts[:depth])
            if prefix not in made:
                made.add(prefix)
                lines.append(f"{indent}self.{prefix} = nn.Module()")
        dtype = str(info.dtype).replace("torch.", "torch.")
        lines.append(
            f"{indent}self.{key} = nn.Parameter(torch.empty({info.shape!r},"
            f" dtype={dtype}), requires_grad=False)"
        )
    return "\n".join(lines) if lines else f"{indent}pass"
