"""What the search proposes and what it learns back: plain data, no database, queue or GPU."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
from typing import Any

from evolution.canonical import canonical_form


@functools.lru_cache(maxsize=1024)
def normalised_digest(source: str) -> Any:
    """sha256 (a hash object, copy it before updating) of the source's canonical form
    (:func:`evolution.canonical.canonical_form`: its syntax tree, whatever the layout and
    comments). One source is keyed many times (a parameter family proposes it thousands of
    times, the LLM emitter and the store each key a child), so each distinct source is
    written out once."""
    return hashlib.sha256(canonical_form(source).encode())


def candidate_key(source: str, params: dict[str, Any]) -> str:
    """sha256 of the source's canonical form and the parameters: equal keys are duplicates
    (the parameters' JSON follows the form's last NUL; JSON holds none)."""
    h = normalised_digest(source).copy()
    h.update(b"\0" + json.dumps(params, sort_keys=True, default=str).encode())
    return h.hexdigest()


@dataclasses.dataclass(frozen=True)
class CandidateSpec:
    """A candidate an emitter proposes.

    Attributes
    ----------
    source:
        The candidate file's text (defines ``ModelNew``).
    params:
        ``SEARCH_SPACE`` choices injected as module globals.
    emitter:
        Name of the emitter that made it (``seed``, ``params``...).
    parent_ids:
        Candidate ids it was derived from.
    label:
        A short human label (the seed's file name, the family...).
    genome:
        The float genome the parameters were decoded from, for parameter emitters.
    """

    source: str
    params: dict[str, Any] = dataclasses.field(default_factory=dict)
    emitter: str = "seed"
    parent_ids: tuple[int, ...] = ()
    label: str = ""
    genome: tuple[float, ...] | None = None

    @property
    def key(self) -> str:
        """The duplicate-detection key (see :func:`candidate_key`)."""
        return candidate_key(self.source, self.params)


OBJECTIVE_LABELS = ("gpu-speedup", "cpu-time", "cpu-interpreter")


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What an evaluation taught the search about one candidate.

    ``objective`` is ``log(speedup)`` over the better of eager and torch.compile on a GPU
    (``gpu-speedup``), the log of the reference's CPU time over the candidate's for plain
    PyTorch on the CPU (``cpu-time``), or the same ratio for Triton run by the CPU interpreter
    (``cpu-interpreter``: not performance, labelled so wherever it appears). ``noise`` is the
    relative spread of that ratio (IQR over median, candidate plus baseline), used to decide
    whether a challenger beats an elite beyond the measured noise. ``None`` objective: not
    usable (failed, or no timing).
    """

    candidate_id: int
    verdict: str
    objective: float | None
    objective_label: str
    noise: float
    features: dict[str, Any]
    params: dict[str, Any]
    speedup_vs_eager: float | None = None
    speedup_vs_compile: float | None = None
    #: The evaluator's messages (why it failed, what it noticed): what a repair prompt shows.
    messages: tuple[str, ...] = ()

    @property
    def accepted(self) -> bool:
        """Only ``OK`` candidates with an objective may enter an archive."""
        return self.verdict == "OK" and self.objective is not None and math.isfinite(self.objective)


def _rel_iqr(stats: dict[str, Any] | None) -> float:
    if not stats or not stats.get("median_ms"):
        return 0.0
    return float(stats.get("iqr_ms", 0.0)) / float(stats["median_ms"])


def outcome_from_result(candidate_id: int, result: dict[str, Any]) -> Outcome:
    """Turn an evaluation result (``EvalResult.to_dict()``) into an :class:`Outcome`."""
    verdict = result.get("verdict", "RUNTIME_ERROR")
    timing = result.get("timing") or {}
    cand = timing.get("candidate")
    objective: float | None = None
    label = "gpu-speedup" if result.get("device") == "cuda" else "cpu-time"
    noise = 0.0
    if cand and cand.get("median_ms"):
        pair = (timing.get("eager"), timing.get("compile"))
        bases = [b for b in pair if b and b.get("median_ms")]
        if bases:
            best = min(bases, key=lambda b: b["median_ms"])
            if timing.get("method") == "cpu-interpreter":
                label = "cpu-interpreter"
            objective = math.log(best["median_ms"] / cand["median_ms"])
            noise = _rel_iqr(cand) + _rel_iqr(best)
    return Outcome(
        candidate_id=candidate_id,
        verdict=verdict,
        objective=objective,
        objective_label=label,
        noise=noise,
        features=dict(result.get("features") or {}),
        params=dict(result.get("params") or {}),
        speedup_vs_eager=result.get("speedup_vs_eager"),
        speedup_vs_compile=result.get("speedup_vs_compile"),
        messages=tuple(str(m) for m in (result.get("messages") or ())[:20]),
    )


def ratio_interval(timing: dict[str, Any] | None) -> tuple[float, float] | None:
    """The spread of an evaluation's ratio (baseline time over candidate time, the speedup the
    objective is the log of): ``(low, high)`` from the two 95% confidence intervals of the
    medians, the baseline being the faster of eager and torch.compile as in
    :func:`outcome_from_result`; None without both intervals.

    The reference timed against itself shows what this spread means: its ratio is 1 up to
    noise, and any ratio inside ``(low, high)`` of a candidate is as good as that candidate's.
    """
    timing = timing or {}
    cand = timing.get("candidate") or {}
    bases = [b for b in (timing.get("eager"), timing.get("compile")) if b and b.get("median_ms")]
    if not bases or not cand.get("ci95_ms"):
        return None
    base = min(bases, key=lambda b: b["median_ms"])
    if not base.get("ci95_ms"):
        return None
    (c_lo, c_hi), (b_lo, b_hi) = cand["ci95_ms"], base["ci95_ms"]
    if min(c_lo, c_hi, b_lo, b_hi) <= 0:
        return None
    return float(b_lo) / float(c_hi), float(b_hi) / float(c_lo)
