"""Templates: parametric Triton kernels that write complete candidate files for a task.

A :class:`Template` looks at a :class:`~evolution.templates.analysis.TaskAnalysis` and either
returns candidates (each a full candidate file whose schedule is a ``SEARCH_SPACE``) or a
sentence saying why it does not apply. Structural variants of one template (single-pass vs
split reduction, vector width...) are separate candidates, so the archive keeps them in
different niches; the parameter emitter then searches each one's schedule.
"""

from __future__ import annotations

import abc
import dataclasses

from evolution.templates.analysis import TaskAnalysis


@dataclasses.dataclass(frozen=True)
class TemplateCandidate:
    """One instantiated template: a candidate file and where it came from."""

    template: str
    variant: str
    source: str
    note: str = ""
    kind: str = "template"

    @property
    def label(self) -> str:
        """The label its candidates carry: ``<kind>:<name>/<variant>``; ``kind`` is
        ``template`` for our kernels and ``library`` for baselines such as torch.compile."""
        return f"{self.kind}:{self.template}/{self.variant}"


class Template(abc.ABC):
    """A family of parametric kernels; subclasses set ``name`` and implement ``instantiate``."""

    name: str = ""
    needs_graph: bool = True

    @abc.abstractmethod
    def instantiate(self, analysis: TaskAnalysis) -> list[TemplateCandidate] | str:
        """Candidates for this task, or why this template does not apply (one sentence)."""
