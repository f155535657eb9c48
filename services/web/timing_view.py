"""An evaluation's timing as the candidate page shows it: its series (median, IQR, 95% CI, raw
samples) and the geometry of the raw-samples strip plot (pure: plain data in, plain data out)."""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

#: Most raw samples plotted per series (evenly picked from the sorted samples beyond that).
MAX_PLOTTED_SAMPLES = 400
#: The timing series of an evaluation, as the evaluator names them, with what the page calls them.
SERIES = (
    ("candidate", "candidate"),
    ("eager", "eager"),
    ("compile", "torch.compile"),
    ("candidate_synced", "candidate (synced)"),
)


def shown(value: Any) -> str:
    """A parameter or feature value as one line of text (escaped by the template)."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True, default=str)
    return str(value)


@dataclasses.dataclass(frozen=True)
class SeriesTiming:
    """One timed series of an evaluation (milliseconds)."""

    name: str
    median_ms: float | None
    iqr_ms: float | None
    ci95_ms: tuple[float, float] | None
    n: int | None
    samples_ms: list[float]


def timing_series(timing: dict[str, Any] | None) -> list[SeriesTiming]:
    """The series an evaluation's timing dict holds, in :data:`SERIES` order."""
    out = []
    for key, name in SERIES:
        stats = (timing or {}).get(key)
        if not isinstance(stats, dict):
            continue
        ci = stats.get("ci95_ms")
        samples = [float(s) for s in stats.get("samples_ms") or [] if isinstance(s, int | float)]
        out.append(
            SeriesTiming(
                name,
                stats.get("median_ms"),
                stats.get("iqr_ms"),
                (float(ci[0]), float(ci[1]))
                if isinstance(ci, list | tuple) and len(ci) == 2
                else None,
                stats.get("n"),
                samples,
            )
        )
    return out


@dataclasses.dataclass(frozen=True)
class SamplesPlot:
    """Geometry of the raw-samples strip plot (drawn by ``partials/cand_samples.html``).

    One row per series at height ``y``; ``points`` are x positions (pixels) of its samples,
    ``median_x`` its median's; the axis runs ``left``..``right`` over ``lo_ms``..``hi_ms``,
    logarithmic when ``log``.
    """

    width: int
    height: int
    left: int
    right: int
    lo_ms: float
    hi_ms: float
    log: bool
    rows: list[dict[str, Any]]


def samples_plot(series: list[SeriesTiming], width: int = 640) -> SamplesPlot | None:
    """The strip plot of the series' raw samples, on one axis; None without samples."""
    with_samples = [s for s in series if s.samples_ms]
    if not with_samples:
        return None
    values = [v for s in with_samples for v in s.samples_ms if v > 0] or [1.0]
    lo, hi = min(values), max(values)
    log = hi / lo > 10
    if hi == lo:
        lo, hi = lo * 0.9, hi * 1.1

    def scale(v: float) -> float:
        if log:
            v = max(v, lo)
            pos = (math.log(v) - math.log(lo)) / (math.log(hi) - math.log(lo))
        else:
            pos = (v - lo) / (hi - lo)
        return round(left + pos * (right - left), 1)

    left, right, row_h = 130, width - 20, 30
    rows = []
    for i, s in enumerate(with_samples):
        picked = sorted(s.samples_ms)
        if len(picked) > MAX_PLOTTED_SAMPLES:
            step = (len(picked) - 1) / (MAX_PLOTTED_SAMPLES - 1)
            picked = [picked[round(k * step)] for k in range(MAX_PLOTTED_SAMPLES)]
        y = 20 + i * row_h
        median = s.median_ms if s.median_ms is not None else picked[len(picked) // 2]
        rows.append(
            {
                "name": s.name,
                "y": y,
                "points": [scale(v) for v in picked],
                "median_x": scale(median),
                "median_ms": median,
                "n": len(s.samples_ms),
            }
        )
    height = 20 + len(rows) * row_h + 24
    return SamplesPlot(width, height, left, right, lo, hi, log, rows)
