"""SVG charts of a run, made on the server: the MAP-Elites heatmap, progress curves, colours and
the objective labels. Shared by the dashboard's run page and the ``kernelmap run`` HTML report.

Pure functions of plain data returning :class:`markupsafe.Markup` built from escaped parts:
every text that comes from a run (labels, parameters, descriptor names) goes through
:func:`escape`; numbers are formatted here. No ``style`` attributes (the dashboard's
Content-Security-Policy forbids inline styles): presentation attributes (``fill``) and classes.
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from markupsafe import Markup


def escape(text: object) -> str:
    """``text`` escaped for HTML text and attribute values (quotes included)."""
    return html.escape(str(text), quote=True)


#: What each objective label means, in words.
LABELS = {
    "gpu-speedup": "speedup over the better of eager and torch.compile (GPU)",
    "cpu-time": "CPU time of the reference / CPU time of the candidate",
    "cpu-interpreter": "cpu-interpreter: reference CPU time / interpreted Triton CPU time"
    " (not performance)",
}
#: Fill of an empty cell.
EMPTY = "#e6e8eb"
#: Most points a curve draws (a long run has a progress point per few evaluations).
MAX_CURVE_POINTS = 400
#: Widest a heatmap's grid is drawn (pixels); cells shrink to fit, to 3 pixels at least.
MAX_MAP_WIDTH = 960
MAX_MAP_HEIGHT = 640


def label_text(label: str | None) -> str:
    """What an objective label means (the label itself when unknown; ``n/a`` for none)."""
    if not label:
        return "n/a"
    return LABELS.get(label, label)


def color(t: float) -> str:
    """The colour of position ``t`` in ``[0, 1]`` (blue, low, to red, high)."""
    t = min(1.0, max(0.0, t))
    r, g, b = int(30 + 200 * t), int(60 + 150 * (1 - abs(t - 0.5) * 2)), int(200 - 170 * t)
    return f"#{r:02x}{g:02x}{b:02x}"


def ratio_text(ratio: float | None) -> str:
    """A ratio as shown everywhere: three significant digits and ``x``."""
    return "n/a" if ratio is None else f"{ratio:.3g}x"


def bin_of(value: float, dim: Mapping[str, Any]) -> int:
    """The bin of ``value`` on a dimension (``low``, ``high``, ``bins``), clipped to the ends."""
    lo, hi, n = dim["low"], dim["high"], dim["bins"]
    if hi <= lo or n <= 1:
        return 0
    return int(min(n - 1, max(0, math.floor((value - lo) / (hi - lo) * n))))


def _scale(objectives: Iterable[float]) -> tuple[float, float]:
    values = list(objectives) or [0.0]
    return min(values), max(values)


def _position(objective: float, lo: float, hi: float) -> float:
    return 0.5 if hi <= lo else (objective - lo) / (hi - lo)


def _params_text(params: Mapping[str, Any] | None) -> str:
    return ", ".join(f"{k}={v}" for k, v in (params or {}).items()) or "no parameters"


_FLAT = {"name": "-", "label": "", "low": 0.0, "high": 1.0, "bins": 1}


def slices(cells: Sequence[Mapping[str, Any]], dims: Sequence[Mapping[str, Any]]) -> list[int]:
    """How many elites each bin of the third dimension holds (empty for fewer than 3 dims)."""
    if len(dims) < 3:
        return []
    counts = [0] * dims[2]["bins"]
    for c in cells:
        counts[bin_of(c["measures"][2], dims[2])] += 1
    return counts


def heatmap(
    cells: Sequence[Mapping[str, Any]],
    dims: Sequence[Mapping[str, Any]],
    *,
    z: int = 0,
    link: str | None = None,
) -> Markup:
    """The map as an SVG grid over the first two dimensions.

    Parameters
    ----------
    cells:
        The elites: ``candidate_id``, ``objective`` (log ratio), ``measures``; optionally
        ``label``, ``params``, ``objective_label`` (shown in each cell's tooltip).
    dims:
        The descriptor dimensions: ``name``, ``label``, ``low``, ``high``, ``bins``.
    z:
        With 3 dimensions, the bin of the third shown (the other bins are other slices).
    link:
        URL prefix of a cell's link (``/candidates/``: the candidate id is appended); None
        draws cells without links (a report file has nowhere to go).

    Colour is the ratio on a log scale, over every elite of the run (so slices compare);
    a grid position holding several elites (a CVT map binned for display) shows its best.
    Empty cells are grey (one patterned rectangle: the page stays small on a large grid).
    """
    if not dims:
        return Markup("<p>No descriptor dimensions.</p>")
    dx = dims[0]
    dy = dims[1] if len(dims) > 1 else _FLAT
    lo, hi = _scale(c["objective"] for c in cells)
    best: dict[tuple[int, int], Mapping[str, Any]] = {}
    for c in cells:
        m = c["measures"]
        if len(dims) > 2 and bin_of(m[2], dims[2]) != z:
            continue
        key = (bin_of(m[0], dx), bin_of(m[1], dy) if len(m) > 1 else 0)
        if key not in best or c["objective"] > best[key]["objective"]:
            best[key] = c
    nx, ny = dx["bins"], dy["bins"]
    cw = max(3, min(48, MAX_MAP_WIDTH // nx))
    ch = max(3, min(32, MAX_MAP_HEIGHT // ny))
    left, top = 24, 8
    w, h = left + cw * nx + 10, top + ch * ny + 44
    gap = 2 if cw >= 8 and ch >= 8 else 0
    pid = f"km-empty-{cw}-{ch}"
    parts = [
        f'<svg class="heatmap" width="{w}" height="{h}" viewBox="0 0 {w} {h}" role="img"'
        ' aria-label="archive heatmap">',
        f'<defs><pattern id="{pid}" x="{left}" y="{top}" width="{cw}" height="{ch}"'
        f' patternUnits="userSpaceOnUse"><rect width="{cw - gap}" height="{ch - gap}"'
        f' fill="{EMPTY}"/></pattern></defs>',
        f'<rect x="{left}" y="{top}" width="{cw * nx}" height="{ch * ny}" fill="url(#{pid})"/>',
    ]
    numbers = cw >= 36 and ch >= 18
    for (i, j), c in sorted(best.items()):
        x, y = left + i * cw, top + (ny - 1 - j) * ch
        ratio = math.exp(c["objective"])
        tip = (
            f"candidate {c['candidate_id']}: {ratio_text(ratio)}"
            f" ({c.get('objective_label') or 'n/a'}) · {c.get('label') or 'no label'}"
            f" · {_params_text(c.get('params'))}"
        )
        rect = (
            f'<rect x="{x}" y="{y}" width="{cw - gap}" height="{ch - gap}"'
            f' fill="{color(_position(c["objective"], lo, hi))}"><title>{escape(tip)}</title>'
            "</rect>"
        )
        if numbers:
            rect += (
                f'<text x="{x + (cw - gap) / 2:g}" y="{y + ch / 2 + 3:g}" font-size="10"'
                f' text-anchor="middle">{ratio:.3g}</text>'
            )
        if link is not None:
            rect = f'<a href="{escape(link)}{int(c["candidate_id"])}">{rect}</a>'
        parts.append(rect)
    parts.append(
        f'<text x="{left}" y="{h - 24}" font-size="12">{escape(dx["name"])}'
        f" ({dx['low']:g} .. {dx['high']:g}, {nx} bins) &#8594;</text>"
    )
    parts.append(
        f'<text x="4" y="{top + ch * ny}" font-size="12" transform="rotate(-90 12'
        f' {top + ch * ny})">{escape(dy["name"])} ({dy["low"]:g} .. {dy["high"]:g}) &#8594;'
        "</text>"
    )
    parts.append(
        f'<text x="{left}" y="{h - 6}" font-size="11">{len(best)} of {nx * ny} cells'
        " occupied; hover a cell for its elite</text></svg>"
    )
    return Markup("".join(parts))


def legend(cells: Sequence[Mapping[str, Any]], width: int = 240) -> Markup:
    """The heatmap's colour scale: lowest to highest ratio of the run's elites (log scale)."""
    if not cells:
        return Markup("")
    lo, hi = _scale(c["objective"] for c in cells)
    stops = "".join(f'<stop offset="{k / 4:g}" stop-color="{color(k / 4)}"/>' for k in range(5))
    return Markup(
        f'<svg class="legend" width="{width + 120}" height="30" role="img"'
        ' aria-label="colour scale">'
        f'<defs><linearGradient id="km-scale">{stops}</linearGradient></defs>'
        f'<text x="0" y="14" font-size="11">{ratio_text(math.exp(lo))}</text>'
        f'<rect x="50" y="4" width="{width}" height="12" fill="url(#km-scale)"/>'
        f'<text x="{width + 56}" y="14" font-size="11">{ratio_text(math.exp(hi))}</text>'
        f'<text x="50" y="28" font-size="10">ratio, log scale</text></svg>'
    )


def thin(points: Sequence[tuple[float, float]], most: int = MAX_CURVE_POINTS) -> list:
    """At most ``most`` of ``points``, evenly spread, the first and the last kept."""
    if len(points) <= most:
        return list(points)
    step = (len(points) - 1) / (most - 1)
    return [points[round(k * step)] for k in range(most)]


def curve(
    points: Sequence[tuple[float, float | None]],
    title: str,
    transform: Callable[[float], float] | None = None,
    fmt: Callable[[float], str] = lambda v: f"{v:.3g}",
) -> Markup:
    """A small SVG line chart of ``(x, y)`` points (``y`` None skipped), x = evaluations."""
    pts = thin([(x, transform(y) if transform else y) for x, y in points if y is not None])
    if not pts:
        return Markup(f'<p class="muted">{escape(title)}: no data yet.</p>')
    w, h, pad = 420, 180, 40
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    x0, x1 = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
    y0, y1 = min(ys), max(ys) if max(ys) > min(ys) else min(ys) + 1

    def sx(x: float) -> float:
        return pad + (x - x0) / (x1 - x0) * (w - 2 * pad)

    def sy(y: float) -> float:
        return h - pad - (y - y0) / (y1 - y0) * (h - 2 * pad)

    line = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in pts)
    return Markup(
        f'<svg class="curve" width="{w}" height="{h}" role="img"'
        f' aria-label="{escape(title)}">'
        f'<text x="{pad}" y="14" font-size="12">{escape(title)}</text>'
        f'<polyline fill="none" stroke="#2a6" stroke-width="2" points="{line}"/>'
        f'<text x="{pad}" y="{h - 8}" font-size="10">evaluations {x0:g} .. {x1:g}</text>'
        f'<text x="2" y="{pad}" font-size="10">{escape(fmt(y1))}</text>'
        f'<text x="2" y="{h - pad}" font-size="10">{escape(fmt(y0))}</text></svg>'
    )


def progress_curves(stats: Sequence[Mapping[str, Any]]) -> list[Markup]:
    """The three progress curves of a run: best ratio, QD score and coverage over evaluations.

    ``stats``: progress points with ``evaluations``, ``best_objective``, ``qd_score``,
    ``coverage``, oldest first.
    """

    def pts(key: str) -> list[tuple[float, float | None]]:
        return [(s["evaluations"], s.get(key)) for s in stats]

    return [
        curve(pts("best_objective"), "best ratio over evaluations", math.exp, ratio_text),
        curve(pts("qd_score"), "QD score over evaluations"),
        curve(pts("coverage"), "coverage over evaluations", fmt=lambda v: f"{100 * v:.1f}%"),
    ]
