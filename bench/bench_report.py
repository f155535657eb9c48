"""The evaluator bench's report: the table of rows and the summary the targets are about.

:func:`table` is the fixed-width table, one line per :class:`~bench_runner.Row`;
:func:`summarise` computes the figures (adversarial verdicts, honest controls,
reference-as-candidate speedups, per-candidate overhead) and :func:`summary_text` prints them
under the table.
"""

from __future__ import annotations

import statistics

from bench_runner import Row

REFERENCE_BAND = (0.97, 1.03)
OVERHEAD_TARGET_S = 1.5
SANDBOX_TARGET_MS = 50.0

COLUMNS = (
    ("case", 36, "<"),
    ("expected", 24, "<"),
    ("verdict", 16, "<"),
    ("ok", 2, "<"),
    ("x_eager", 7, ">"),
    ("x_comp", 7, ">"),
    ("cand_ms", 9, ">"),
    ("eager_ms", 9, ">"),
    ("floor_ms", 9, ">"),
    ("spawn_s", 7, ">"),
    ("load_s", 7, ">"),
    ("corr_s", 7, ">"),
    ("meas_s", 7, ">"),
    ("total_s", 7, ">"),
    ("ovh_s", 6, ">"),
)


def _num(x: float | None, fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


def _cells(r: Row) -> list[str]:
    res, st = r.result, r.stages
    t = res.timing if res is not None else None
    return [
        r.case.name,
        "|".join(sorted(r.case.expected)),
        r.verdict,
        "✓" if r.ok else "✗",
        _num(res.speedup_vs_eager if res else None, ".3f"),
        _num(res.speedup_vs_compile if res else None, ".3f"),
        _num(t.candidate.median_ms if t else None, ".4g"),
        _num(t.eager.median_ms if t and t.eager else None, ".4g"),
        _num(t.floor_ms if t else None, ".4g"),
        _num(st.get("spawn_s"), ".2f"),
        _num(st.get("load_s"), ".2f"),
        _num(st.get("correctness_s"), ".2f"),
        _num(st.get("measure_s"), ".2f"),
        _num(st.get("total_s", r.wall_s), ".2f"),
        _num(r.overhead_s, ".2f"),
    ]


def _line(cells: list[str]) -> str:
    parts = []
    for text, (_, width, align) in zip(cells, COLUMNS, strict=True):
        text = text if len(text) <= width else text[: width - 1] + "~"
        parts.append(format(text, f"{align}{width}"))
    return " ".join(parts).rstrip()


def table(rows: list[Row]) -> str:
    """The fixed-width table of all rows."""
    head = _line([name for name, _, _ in COLUMNS])
    lines = [head, "-" * len(head)]
    lines += [_line(_cells(r)) for r in rows]
    return "\n".join(lines)


def summarise(rows: list[Row], device: str, zygotes: dict[str, tuple[float, int]]) -> dict:
    """The figures the targets are about."""
    adversarial = [r for r in rows if r.case.kind == "adversarial"]
    honest = [r for r in rows if r.case.kind != "adversarial"]
    references = []
    for r in rows:
        if r.case.kind != "reference":
            continue
        s = r.result.speedup_vs_eager if r.result is not None else None
        within = s is not None and REFERENCE_BAND[0] <= s <= REFERENCE_BAND[1]
        references.append({"case": r.case.name, "speedup_vs_eager": s, "within_band": within})
    boxes = [
        r.result.stages_s["sandbox_s"] * 1e3
        for r in rows
        if r.result is not None and r.result.stages_s.get("sandbox_s") is not None
    ]
    median_box = statistics.median(boxes) if boxes else None
    overheads = [r.overhead_s for r in rows if r.overhead_s is not None]
    median_ovh = statistics.median(overheads) if overheads else None
    return {
        "device": device,
        "adversarial_expected": sum(r.ok for r in adversarial),
        "adversarial_total": len(adversarial),
        "adversarial_failed": [r.case.name for r in adversarial if not r.ok],
        "honest_total": len(honest),
        "honest_all_ok": all(r.ok for r in honest),
        "honest_failed": [r.case.name for r in honest if not r.ok],
        "reference_band": list(REFERENCE_BAND),
        "references": references,
        "overhead_median_s": median_ovh,
        "overhead_min_s": min(overheads) if overheads else None,
        "overhead_max_s": max(overheads) if overheads else None,
        "overhead_n": len(overheads),
        "overhead_target_s": OVERHEAD_TARGET_S,
        "overhead_within_target": median_ovh is not None and median_ovh <= OVERHEAD_TARGET_S,
        "zygote_start_s": {k: z for k, (z, _) in zygotes.items()},
        "sandbox_setup_median_ms": median_box,
        "sandbox_setup_max_ms": max(boxes) if boxes else None,
        "sandbox_setup_n": len(boxes),
        "sandbox_setup_within_target": median_box is not None and median_box <= SANDBOX_TARGET_MS,
    }


def _mark(flag: bool) -> str:
    return "✓" if flag else "✗"


def summary_text(s: dict, rows: list[Row], task_load_s: dict[str, float]) -> str:
    """The summary lines under the table."""
    out = []
    for r in rows:
        if r.ok:
            continue
        msgs = [r.error] if r.error else (r.result.messages if r.result is not None else [])
        why = " | ".join(m for m in msgs[:2] if m) or "(no message)"
        out.append(f"  {r.case.name}: {r.verdict}: {why[:400]}")
    if out:
        out.insert(0, "Unexpected results:")
        out.append("")
    out.append("Summary")
    n_adv, tot = s["adversarial_expected"], s["adversarial_total"]
    out.append(f"  adversarial cases with an expected verdict: {n_adv}/{tot} {_mark(n_adv == tot)}")
    if s["adversarial_failed"]:
        out.append(f"    not as expected: {', '.join(s['adversarial_failed'])}")
    out.append(
        f"  honest controls all OK: {'yes' if s['honest_all_ok'] else 'no'}"
        f" ({s['honest_total'] - len(s['honest_failed'])}/{s['honest_total']})"
        f" {_mark(s['honest_all_ok'])}"
    )
    if s["honest_failed"]:
        out.append(f"    rejected: {', '.join(s['honest_failed'])}")
    lo, hi = REFERENCE_BAND
    note = " (informational on the CPU)" if s["device"] == "cpu" else ""
    out.append(f"  reference-as-candidate speedup_vs_eager within [{lo}, {hi}]{note}:")
    for ref in s["references"]:
        sp = ref["speedup_vs_eager"]
        out.append(f"    {ref['case']:<36} {_num(sp, '.3f'):>7} {_mark(ref['within_band'])}")
    if s["overhead_median_s"] is None:
        out.append("  per-candidate overhead: no candidate process was started")
    else:
        out.append(
            f"  per-candidate overhead (spawn_s + load_s + zygote share), median over"
            f" {s['overhead_n']} candidates: {s['overhead_median_s']:.2f} s"
            f" (min {s['overhead_min_s']:.2f}, max {s['overhead_max_s']:.2f});"
            f" target <= {OVERHEAD_TARGET_S} s {_mark(s['overhead_within_target'])}"
        )
    if s["sandbox_setup_median_ms"] is not None:
        out.append(
            f"  sandbox set-up per candidate process (namespaces, private root, uid, seccomp),"
            f" median over {s['sandbox_setup_n']}: {s['sandbox_setup_median_ms']:.1f} ms"
            f" (max {s['sandbox_setup_max_ms']:.1f}); target <= {SANDBOX_TARGET_MS:g} ms"
            f" {_mark(s['sandbox_setup_within_target'])}"
        )
    for key, z in s["zygote_start_s"].items():
        out.append(f"  zygote start [{key}]: {z:.2f} s")
    for name, dt in task_load_s.items():
        out.append(f"  task validation (in a sandboxed task child) {name}: {dt:.2f} s")
    return "\n".join(out)
