"""torch.compile of the reference under different inductor settings: library candidates.

They are the baselines to beat, searched like any other family (max-autotune, coordinate
descent tuning, persistent or split reductions) and labelled ``library:`` wherever they appear.
CUDA graphs are never enabled: graph replay would hide work from the timing cross-checks.
"""

from __future__ import annotations

import re

from evolution.templates.analysis import TaskAnalysis
from evolution.templates.base import Template, TemplateCandidate

SPACE = {
    "max_autotune": [False, True],
    "coordinate_descent_tuning": [False, True],
    "persistent_reductions": [True, False],
    "split_reductions": [True, False],
}

FOOTER = """

# kernelmap library candidate: the reference above under torch.compile (inductor).
SEARCH_SPACE = {space!r}

ModelNew.forward = torch.compile(
    ModelNew.forward,
    options={{
        "max_autotune": max_autotune,
        "coordinate_descent_tuning": coordinate_descent_tuning,
        "triton.persistent_reductions": persistent_reductions,
        "split_reductions": split_reductions,
        "triton.cudagraphs": False,
    }},
)
"""


class TorchCompile(Template):
    """The reference compiled by inductor, one candidate family over its settings."""

    name = "torch_compile"
    needs_graph = False

    def instantiate(self, analysis: TaskAnalysis) -> list[TemplateCandidate] | str:
        if not analysis.source:
            return "the task's source is not available"
        if not re.search(r"^import torch\s*$", analysis.source, re.MULTILINE):
            return "the task does not `import torch` at module level"
        source = re.sub(r"\bModel\b", "ModelNew", analysis.source).rstrip() + "\n"
        source += FOOTER.format(space=SPACE)
        return [
            TemplateCandidate(
                self.name, "inductor", source, "the reference under torch.compile", kind="library"
            )
        ]


TEMPLATES: list[Template] = [TorchCompile()]
