"""The structured result of an evaluation, as the CLI, workers and the archive see it."""

from __future__ import annotations

import dataclasses
from typing import Any

from evaluator_worker.verdict import Verdict


@dataclasses.dataclass
class Stats:
    """Summary of timed samples, in milliseconds.

    ``ci95`` is a distribution-free 95% confidence interval of the median (order statistics).
    """

    median_ms: float
    iqr_ms: float
    ci95_ms: tuple[float, float]
    mean_ms: float
    min_ms: float
    n: int
    samples_ms: list[float] = dataclasses.field(default_factory=list, repr=False)

    def to_dict(self, raw: bool = True) -> dict[str, Any]:
        """JSON form; ``raw=False`` leaves the raw samples out."""
        d = dataclasses.asdict(self)
        d["ci95_ms"] = list(self.ci95_ms)
        if not raw:
            d.pop("samples_ms")
        return d


@dataclasses.dataclass
class Timing:
    """Timings of the candidate and the baselines, measured by the same code, interleaved."""

    device: str
    method: str
    candidate: Stats
    eager: Stats | None = None
    compile: Stats | None = None
    candidate_synced: Stats | None = None
    floor_ms: float | None = None
    floor_basis: str | None = None
    sync_overhead_ms: float | None = None

    def to_dict(self, raw: bool = True) -> dict[str, Any]:
        """JSON form."""
        out: dict[str, Any] = {"device": self.device, "method": self.method}
        for name in ("candidate", "eager", "compile", "candidate_synced"):
            s = getattr(self, name)
            out[name] = s.to_dict(raw) if s is not None else None
        out["floor_ms"] = self.floor_ms
        out["floor_basis"] = self.floor_basis
        out["sync_overhead_ms"] = self.sync_overhead_ms
        return out


#: Characters of a candidate's own output kept with its result.
OUTPUT_CHARS = 2000


@dataclasses.dataclass
class EvalResult:
    """What an evaluation found. ``messages`` are the human-readable reasons.

    ``output`` is the end of what the candidate process itself printed (at most
    :data:`OUTPUT_CHARS` characters): the candidate's own text, shown as such, never parsed.
    """

    verdict: Verdict
    messages: list[str] = dataclasses.field(default_factory=list)
    speedup_vs_eager: float | None = None
    speedup_vs_compile: float | None = None
    timing: Timing | None = None
    features: dict[str, Any] = dataclasses.field(default_factory=dict)
    device: str = "cpu"
    hardware: dict[str, Any] = dataclasses.field(default_factory=dict)
    stages_s: dict[str, float] = dataclasses.field(default_factory=dict)
    params: dict[str, Any] = dataclasses.field(default_factory=dict)
    cpu_interpreter_ratio: float | None = None
    output: str | None = None

    @classmethod
    def failure(cls, verdict: Verdict | str, message: str, **extra: Any) -> dict[str, Any]:
        """The result dict of a job that produced no evaluation, with one message.

        Shaped exactly like :meth:`to_dict` (``verdict`` as its string), except that
        ``device`` is ``None``: no device evaluated it. ``extra`` adds keys (``worker``,
        ``task_refused``, ...) or overrides them.
        """
        result = cls(verdict=Verdict(verdict), messages=[message]).to_dict()
        result["device"] = None
        result.update(extra)
        return result

    @property
    def correct(self) -> bool:
        """Whether the candidate computed the right answer (see ``Verdict.correct``)."""
        return self.verdict.correct

    def to_dict(self, raw: bool = True) -> dict[str, Any]:
        """The JSON object ``kernelmap eval --json`` prints."""
        return {
            "verdict": self.verdict.value,
            "correct": self.correct,
            "speedup_vs_eager": self.speedup_vs_eager,
            "speedup_vs_compile": self.speedup_vs_compile,
            "timing": self.timing.to_dict(raw) if self.timing else None,
            "features": self.features,
            "messages": list(self.messages),
            "device": self.device,
            "hardware": self.hardware,
            "stages_s": self.stages_s,
            "params": self.params,
            "cpu_interpreter_ratio": self.cpu_interpreter_ratio,
            "output": self.output,
        }
