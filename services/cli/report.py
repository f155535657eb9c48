"""Human-readable output of the CLI (without ``--json``): an evaluation's result, and a
run's progress line while it searches."""

from __future__ import annotations

import math
import sys
import time
from typing import TYPE_CHECKING, Any

from evaluator_worker.result import EvalResult, Stats

if TYPE_CHECKING:  # the search's imports (pyribs) stay out of `kernelmap eval`
    from evolution.loop import Progress


def _stats(name: str, s: Stats | None) -> str:
    if s is None:
        return f"  {name:<10} not measured"
    lo, hi = s.ci95_ms
    return (
        f"  {name:<10} median {s.median_ms:.4g} ms   IQR {s.iqr_ms:.3g} ms"
        f"   95% CI [{lo:.4g}, {hi:.4g}]   n={s.n}"
    )


def _speedup(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}x"


def _features(f: dict[str, Any]) -> str:
    skip = {"kernels", "triton_kernels", "cupy_kernels"}
    parts = [f"{k}={v}" for k, v in f.items() if k not in skip and v not in (None, [], {})]
    return ", ".join(parts) or "none"


def render(result: EvalResult, title: str = "") -> str:
    """A multi-line report: verdict, speedups, timings, features, messages, stage times."""
    lines = [title] if title else []
    tag = "correct" if result.correct else "not accepted"
    lines.append(f"verdict   {result.verdict.value} ({tag})")
    hw = result.hardware
    lines.append(
        f"device    {result.device} ({hw.get('name', '?')}; torch {hw.get('torch')},"
        f" triton {hw.get('triton')})"
    )
    if result.params:
        lines.append("params    " + ", ".join(f"{k}={v}" for k, v in result.params.items()))
    lines.append(
        f"speedup   vs eager {_speedup(result.speedup_vs_eager)}"
        f"   vs torch.compile {_speedup(result.speedup_vs_compile)}"
    )
    t = result.timing
    if t is not None:
        lines.append(f"timing    ({t.method})")
        lines.append(_stats("candidate", t.candidate))
        lines.append(_stats("eager", t.eager))
        lines.append(_stats("compile", t.compile))
        if t.candidate_synced is not None:
            lines.append(_stats("synced", t.candidate_synced))
        if t.floor_ms is not None:
            lines.append(f"  floor      {t.floor_ms:.4g} ms ({t.floor_basis})")
    else:
        lines.append("timing    none")
    lines.append(f"features  {_features(result.features)}")
    if result.messages:
        lines.append("messages")
        lines.extend(f"  - {m}" for m in result.messages)
    if result.output:
        lines.append("output    (what the candidate printed, control characters escaped)")
        lines.extend(f"  | {_printable(ln)}" for ln in result.output.splitlines()[-20:])
    st = result.stages_s
    if st:
        lines.append("stages    " + ", ".join(f"{k[:-2]} {v:.2f} s" for k, v in st.items()))
    return "\n".join(lines)


def _printable(text: str) -> str:
    """``text`` with every non-printable character escaped (no terminal escape gets through)."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class ProgressLine:
    """The progress bar on stderr: one rewritten line on a terminal, periodic lines elsewhere.

    Called with each :class:`evolution.loop.Progress` of a search (``every_s`` seconds apart
    at most when the stream is not a terminal); :meth:`done` ends the line.
    """

    def __init__(self, stream=sys.stderr, every_s: float = 5.0) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self.every_s = every_s
        self.last = 0.0
        self.ended = False

    def __call__(self, p: Progress) -> None:
        verdicts = " ".join(f"{k}:{v}" for k, v in sorted(p.verdicts.items()))
        best = "n/a" if p.best_objective is None else f"{math.exp(p.best_objective):.3g}x"
        label = "" if p.objective_label in (None, "gpu-speedup") else f" [{p.objective_label}]"
        text = (
            f"[{p.evaluations}/{p.budget}] in flight {p.in_flight}  best {best}{label}"
            f"  elites {p.elites}  coverage {100 * p.coverage:.1f}%  {verdicts}"
        )
        now = time.monotonic()
        if self.tty:
            self.stream.write("\r" + text[:160].ljust(160))
            self.stream.flush()
        elif now - self.last >= self.every_s or (p.evaluations >= p.budget and not self.ended):
            self.ended = p.evaluations >= p.budget
            self.stream.write(text + "\n")
            self.stream.flush()
            self.last = now

    def done(self) -> None:
        """End the rewritten line on a terminal."""
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()
