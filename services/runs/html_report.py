"""The HTML report of a run: a self-contained file (inline SVG, no scripts, no network).

It shows the MAP-Elites heatmap, the best-objective and QD-score curves over evaluations,
the verdict counts and the best kernel's source with its evaluation. Objectives measured by
the CPU interpreter are labelled so, never as speedups.
"""

from __future__ import annotations

import dataclasses
import html
import math
from typing import Any

LABELS = {
    "gpu-speedup": "speedup over the better of eager and torch.compile (GPU)",
    "cpu-time": "CPU time of the reference / CPU time of the candidate",
    "cpu-interpreter": "cpu-interpreter: reference CPU time / interpreted Triton CPU time"
    " (not performance)",
}


@dataclasses.dataclass
class ReportData:
    """Everything the report shows, as plain data."""

    run_id: int
    task_name: str
    status: str
    objective_label: str
    dims: list[dict[str, Any]]  # name, label, low, high, bins
    elites: list[dict[str, Any]]  # cell, candidate_id, objective, measures
    curve: list[dict[str, Any]]  # evaluations, best_objective, qd_score, coverage
    verdicts: dict[str, int]
    summary: dict[str, Any]
    best: dict[str, Any] | None  # candidate_id, source, params, evaluation (result dict)


def _color(t: float) -> str:
    t = min(1.0, max(0.0, t))
    r, g, b = int(30 + 200 * t), int(60 + 150 * (1 - abs(t - 0.5) * 2)), int(200 - 170 * t)
    return f"rgb({r},{g},{b})"


def _bin(value: float, dim: dict[str, Any]) -> int:
    lo, hi, n = dim["low"], dim["high"], dim["bins"]
    if hi <= lo:
        return 0
    return int(min(n - 1, max(0, math.floor((value - lo) / (hi - lo) * n))))


def heatmap(data: ReportData) -> str:
    """An SVG grid over the first two dimensions (a third is summarised by its best cell)."""
    if not data.dims:
        return "<p>No descriptor dimensions.</p>"
    dx = data.dims[0]
    dy = (
        data.dims[1]
        if len(data.dims) > 1
        else {"name": "-", "label": "", "low": 0, "high": 1, "bins": 1}
    )
    best: dict[tuple[int, int], dict[str, Any]] = {}
    for e in data.elites:
        m = e["measures"]
        key = (_bin(m[0], dx), _bin(m[1], dy) if len(m) > 1 else 0)
        if key not in best or e["objective"] > best[key]["objective"]:
            best[key] = e
    objs = [e["objective"] for e in best.values()] or [0.0]
    lo, hi = min(objs), max(objs)
    cw, ch, left, top = 48, 32, 110, 10
    w, h = left + cw * dx["bins"] + 20, top + ch * dy["bins"] + 60
    parts = [f'<svg width="{w}" height="{h}" role="img" aria-label="archive heatmap">']
    for i in range(dx["bins"]):
        for j in range(dy["bins"]):
            x, y = left + i * cw, top + (dy["bins"] - 1 - j) * ch
            e = best.get((i, j))
            if e is None:
                parts.append(
                    f'<rect x="{x}" y="{y}" width="{cw - 2}" height="{ch - 2}" fill="#eee"/>'
                )
                continue
            t = 0.5 if hi == lo else (e["objective"] - lo) / (hi - lo)
            tip = f"candidate {e['candidate_id']}: {math.exp(e['objective']):.3g}x"
            parts.append(
                f'<rect x="{x}" y="{y}" width="{cw - 2}" height="{ch - 2}" '
                f'fill="{_color(t)}"><title>{html.escape(tip)}</title></rect>'
            )
            parts.append(
                f'<text x="{x + cw / 2 - 1}" y="{y + ch / 2 + 3}" font-size="10" '
                f'text-anchor="middle">{math.exp(e["objective"]):.3g}</text>'
            )
    parts.append(
        f'<text x="{left}" y="{h - 25}" font-size="12">{html.escape(dx["name"])} '
        f"({dx['low']:g} .. {dx['high']:g}, {dx['bins']} bins) &#8594;</text>"
    )
    parts.append(
        f'<text x="5" y="{top + 12}" font-size="12">{html.escape(dy["name"])} &#8593;</text>'
    )
    parts.append("</svg>")
    return "".join(parts)


def curve(points: list[tuple[float, float]], title: str, transform=None) -> str:
    """A small SVG line chart of ``(x, y)`` points."""
    pts = [(x, transform(y) if transform else y) for x, y in points if y is not None]
    if len(pts) < 1:
        return f"<p>{html.escape(title)}: no data yet.</p>"
    w, h, pad = 420, 180, 36
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    x0, x1 = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
    y0, y1 = min(ys), max(ys) if max(ys) > min(ys) else min(ys) + 1

    def sx(x: float) -> float:
        return pad + (x - x0) / (x1 - x0) * (w - 2 * pad)

    def sy(y: float) -> float:
        return h - pad - (y - y0) / (y1 - y0) * (h - 2 * pad)

    line = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in pts)
    return (
        f'<svg width="{w}" height="{h}" role="img" aria-label="{html.escape(title)}">'
        f'<text x="{pad}" y="14" font-size="12">{html.escape(title)}</text>'
        f'<polyline fill="none" stroke="#2a6" stroke-width="2" points="{line}"/>'
        f'<text x="{pad}" y="{h - 8}" font-size="10">evaluations {x0:g} .. {x1:g}</text>'
        f'<text x="2" y="{pad}" font-size="10">{y1:.3g}</text>'
        f'<text x="2" y="{h - pad}" font-size="10">{y0:.3g}</text></svg>'
    )


def render(data: ReportData) -> str:
    """The whole report as one HTML document."""
    esc = html.escape
    label = LABELS.get(data.objective_label, data.objective_label)
    s = data.summary
    rows = "".join(
        f"<tr><td>{esc(k)}</td><td>{v}</td></tr>" for k, v in sorted(data.verdicts.items())
    )
    best_html = "<p>No correct candidate yet.</p>"
    best_out = s.get("best") or {}
    best_label = LABELS.get(best_out.get("objective_label"), best_out.get("objective_label"))
    if data.best:
        ev = data.best.get("evaluation") or {}
        msgs = "".join(f"<li>{esc(str(m))}</li>" for m in ev.get("messages", []))
        params = ", ".join(f"{esc(str(k))}={esc(str(v))}" for k, v in data.best["params"].items())
        best_html = (
            f"<p>candidate {data.best['candidate_id']}"
            f" &middot; verdict {esc(ev.get('verdict', '?'))}"
            f" &middot; ratio {math.exp(data.best['objective']):.4g}x ({esc(str(best_label))})"
            f" &middot; params {params or 'none'}</p><ul>{msgs}</ul>"
            f"<pre>{esc(data.best['source'])}</pre>"
        )
    points = [(c["evaluations"], c.get("best_objective")) for c in data.curve]
    qd = [(c["evaluations"], c.get("qd_score")) for c in data.curve]
    best_speed = s.get("best_ratio")
    counts = s.get("counts") or {}
    counted = (
        f" ({counts.get('candidates_evaluated', 0)} candidates,"
        f" {counts.get('remeasures', 0)} re-measures)"
        if counts
        else ""
    )
    why = s.get("stop_reason_text")
    notes = "".join(f"<li>{esc(n)}</li>" for n in s.get("notes", []))
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>kernelmap run {data.run_id}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:70em}}pre{{background:#f6f6f6;
padding:1em;overflow:auto}}td{{padding:2px 10px}}.label{{color:#a50}}</style></head><body>
<h1>kernelmap run {data.run_id}: {esc(data.task_name)}</h1>
<p>status <b>{esc(data.status)}</b>{f" ({esc(why)})" if why else ""}
&middot; evaluations {s.get("evaluations", 0)}{counted}
&middot; elites {s.get("elites", 0)} &middot; coverage {100 * s.get("coverage", 0):.1f}%
&middot; QD-score {s.get("qd_score", 0):.3g}
&middot; best {f"{best_speed:.3g}x ({esc(str(best_label))})" if best_speed else "n/a"}</p>
<p class="label">this run's timings: {esc(label)}</p><ul>{notes}</ul>
<h2>Archive</h2>{heatmap(data)}
<h2>Progress</h2>{curve(points, "best ratio over evaluations", math.exp)}
{curve(qd, "QD-score over evaluations")}
<h2>Verdicts</h2><p>one per evaluation or static reject</p><table>{rows}</table>
<h2>Best kernel</h2>{best_html}
</body></html>
"""
