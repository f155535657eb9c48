"""Row templates (softmax, LayerNorm/RMSNorm, one-dim reductions): matching and correctness.

Matcher tests build small task files in several spellings and check which templates and variants
come back, and that near-misses are declined with a reason. Correctness tests write each
candidate and run ``tests/template_check.py`` on it, which checks every point of its
``SEARCH_SPACE`` in the Triton interpreter against the float64 reference (the task's inputs, a
normal redraw and its held-out ``SHAPES``, all with sizes that are not multiples of any block).
The checks run two at a time in subprocesses (``TRITON_INTERPRET`` must be set before import).
"""

from __future__ import annotations

import concurrent.futures
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from evaluator_worker.static_gate import check_source
from evaluator_worker.task import load_task
from evolution.templates import rows
from evolution.templates.analysis import analyse
from evolution.templates.base import TemplateCandidate

ROOT = Path(__file__).resolve().parents[2]

_TASK = """
import torch
import torch.nn as nn
import torch.nn.functional as F


class Model(nn.Module):
    def __init__(self):
        super().__init__()
{init}

    def forward(self, x):
        return {expr}


SHAPES = [{shapes}]


def get_inputs():
    return [{inputs}]


def get_init_inputs():
    return []
"""


def write_task(path: Path, expr: str, inputs: str, init: str = "", shapes: tuple = ()) -> Path:
    """A task file computing ``expr`` of ``x`` (one input, made by ``inputs``)."""
    init = textwrap.indent(init, " " * 8) if init else "        pass"
    shapes = ", ".join(f"lambda: [{s}]" for s in shapes)
    path.write_text(_TASK.format(init=init, expr=expr, inputs=inputs, shapes=shapes))
    return path


def instantiate(path: Path) -> dict[str, list[TemplateCandidate] | str]:
    """What each row template makes of the task at ``path``, by template name."""
    analysis = analyse(load_task(str(path)).module)
    return {t.name: t.instantiate(analysis) for t in rows.TEMPLATES}


def assert_valid(cand: TemplateCandidate) -> None:
    gate = check_source(cand.source, f"{cand.variant}.py")
    assert gate.ok, gate.reasons
    space = gate.search_space
    assert space and all(isinstance(v, list) and v for v in space.values())
    assert math.prod(len(v) for v in space.values()) <= 16
    assert cand.source.startswith(f"# kernelmap template {cand.template}/{cand.variant}")


# -- matching -------------------------------------------------------------------------------

ALL_SOFTMAX = {"single_pass", "online", "split"}
ALL_LN = {"single_pass", "welford", "split"}
ALL_RMS = {"row", "row_looped", "row_split"}

SPELLINGS = [
    # (expr, init, inputs, template, variants)
    ("self.sm(x)", "self.sm = nn.Softmax(dim=-1)", "torch.randn(5, 37)", "softmax", ALL_SOFTMAX),
    ("torch.softmax(x, 1)", "", "torch.randn(5, 37)", "softmax", ALL_SOFTMAX),
    ("F.softmax(x, dim=-1)", "", "torch.randn(5, 37)", "softmax", ALL_SOFTMAX),
    ("x.softmax(2)", "", "torch.randn(2, 3, 37)", "softmax", ALL_SOFTMAX),
    (
        "self.lsm(x)",
        "self.lsm = nn.LogSoftmax(dim=1)",
        "torch.randn(5, 37)",
        "softmax",
        ALL_SOFTMAX,
    ),
    ("torch.log_softmax(x, dim=-1)", "", "torch.randn(5, 37)", "softmax", ALL_SOFTMAX),
    ("F.log_softmax(x, 1)", "", "torch.randn(5, 40000)", "softmax", {"online", "split"}),
    ("self.ln(x)", "self.ln = nn.LayerNorm(37)", "torch.randn(5, 37)", "layer_norm", ALL_LN),
    (
        "self.ln(x)",
        "self.ln = nn.LayerNorm((4, 37), elementwise_affine=False)",
        "torch.randn(2, 4, 37)",
        "layer_norm",
        ALL_LN,
    ),
    (
        "self.ln(x)",
        "self.ln = nn.LayerNorm(37, bias=False)",
        "torch.randn(5, 37)",
        "layer_norm",
        ALL_LN,
    ),
    (
        "F.layer_norm(x, (37,), self.w, None, 1e-6)",
        "self.w = nn.Parameter(torch.ones(37))",
        "torch.randn(5, 37)",
        "layer_norm",
        ALL_LN,
    ),
    ("self.n(x)", "self.n = nn.RMSNorm(37)", "torch.randn(5, 37)", "rms_norm", ALL_RMS),
    (
        "F.rms_norm(x, (37,), self.w, 1e-6)",
        "self.w = nn.Parameter(torch.ones(37))",
        "torch.randn(5, 37)",
        "rms_norm",
        ALL_RMS,
    ),
    (
        "x / torch.sqrt(torch.mean(x ** 2, dim=1, keepdim=True) + self.eps)",
        "self.eps = 1e-5",
        "torch.randn(2, 5, 4, 3)",
        "rms_norm",
        {"strided", "strided_looped"},
    ),
    (
        "x * torch.rsqrt((x * x).mean(-1, keepdim=True) + 1e-6)",
        "",
        "torch.randn(5, 37)",
        "rms_norm",
        ALL_RMS,
    ),
    ("torch.sum(x, dim=1)", "", "torch.randn(2, 37, 5)", "reduce", {"strided"}),
    ("x.sum(-1, keepdim=True)", "", "torch.randn(2, 37, 5)", "reduce", {"row"}),
    ("torch.mean(x, 1)", "", "torch.randn(5, 37)", "reduce", {"row"}),
    ("torch.max(x, dim=1)[0]", "", "torch.randn(5, 37)", "reduce", {"row"}),
    ("x.max(1).values", "", "torch.randn(5, 37)", "reduce", {"row"}),
    ("torch.amin(x, dim=0)", "", "torch.randn(5, 37)", "reduce", {"strided"}),
    ("torch.argmax(x, dim=-1)", "", "torch.randn(5, 37)", "reduce", {"row"}),
    ("x.argmin(dim=0, keepdim=True)", "", "torch.randn(5, 37)", "reduce", {"strided"}),
]


@pytest.mark.parametrize(("expr", "init", "inputs", "template", "variants"), SPELLINGS)
def test_spellings_are_recognised(tmp_path, expr, init, inputs, template, variants):
    got = instantiate(write_task(tmp_path / "task.py", expr, inputs, init))
    cands = got.pop(template)
    assert isinstance(cands, list), cands
    assert {c.variant for c in cands} == variants
    for c in cands:
        assert_valid(c)
    # Only one template of the family claims it; the others say why not.
    assert all(isinstance(reason, str) and reason for reason in got.values())


NEAR_MISSES = [
    # (expr, init, inputs, words expected in the reason)
    ("torch.softmax(x, 1) * 2.0", "", "torch.randn(5, 37)", "epilogue"),
    ("torch.relu(x.sum(1))", "", "torch.randn(5, 37)", "epilogue"),
    ("torch.softmax(x * 2.0, 1)", "", "torch.randn(5, 37)", "computed tensor"),
    ("self.ln(x + 1.0)", "self.ln = nn.LayerNorm(37)", "torch.randn(5, 37)", "computed tensor"),
    ("x.sum(dim=(0, 1))", "", "torch.randn(3, 5, 37)", "several dims"),
    ("x.sum()", "", "torch.randn(5, 37)", "all dims"),
    ("torch.argmax(x)", "", "torch.randn(5, 37)", "all dims"),
    ("torch.max(x, 1)", "", "torch.randn(5, 37)", "(values, indices)"),
    ("F.softmax(x, -1, dtype=torch.float64)", "", "torch.randn(5, 37)", "casts"),
    ("self.sm(x)", "self.sm = nn.Softmax()", "torch.randn(5, 37)", "no explicit dim"),
    ("x.double().sum(1)", "", "torch.randn(5, 37)", "computed tensor"),
    ("x.sum(1)", "", "torch.randn(5, 37, dtype=torch.float64)", "float64"),
    ("x.sum(1)", "", "torch.randint(0, 9, (5, 37))", "int64"),
    ("x @ x.t()", "", "torch.randn(5, 37)", "not a row op"),
    ("torch.max(x, x * 2.0)", "", "torch.randn(5, 37)", "elementwise"),
    ("F.layer_norm(x, x.shape[-1:])", "", "torch.randn(5, 37)", "not a constant"),
]


@pytest.mark.filterwarnings("ignore:Implicit dimension choice")
@pytest.mark.parametrize(("expr", "init", "inputs", "words"), NEAR_MISSES)
def test_near_misses_are_declined(tmp_path, expr, init, inputs, words):
    got = instantiate(write_task(tmp_path / "task.py", expr, inputs, init))
    for name, reason in got.items():
        assert isinstance(reason, str), f"{name} accepted {expr}"
        assert words in reason, reason


def test_softmax_over_a_leading_dim_is_declined(tmp_path):
    got = instantiate(write_task(tmp_path / "task.py", "torch.softmax(x, 0)", "torch.randn(5, 37)"))
    assert "not over the last dim" in got["softmax"]
    assert "computes softmax" in got["reduce"]


def test_single_pass_is_not_offered_for_very_long_rows(tmp_path):
    got = instantiate(
        write_task(
            tmp_path / "task.py",
            "self.ln(x)",
            "torch.randn(2, 16, 64, 64)",
            "self.ln = nn.LayerNorm((16, 64, 64))",
        )
    )
    assert {c.variant for c in got["layer_norm"]} == {"welford", "split"}


# -- correctness over whole search spaces (Triton interpreter) -----------------------------------

# (id, expr, init, inputs, shapes, template, variants checked); sizes avoid multiples of blocks.
CHECKS = [
    (
        "softmax",
        "torch.softmax(x, dim=1)",
        "",
        "torch.randn(2, 5000) * 3",
        ("torch.randn(3, 77)", "torch.randn(1, 4097)"),
        "softmax",
        ALL_SOFTMAX,
    ),
    (
        "log_softmax_fp16",
        "F.log_softmax(x, dim=-1)",
        "",
        "torch.randn(2, 1, 4500, dtype=torch.float16)",
        ("torch.randn(1, 3, 33).half()",),
        "softmax",
        {"single_pass", "split"},
    ),
    (
        "layer_norm",
        "self.ln(x)",
        "self.ln = nn.LayerNorm((4, 1100))",
        "torch.randn(2, 4, 1100) * 2 + 1",
        ("torch.randn(1, 4, 1100) + 100.0",),
        "layer_norm",
        ALL_LN,
    ),
    (
        "rms_norm_no_weight",
        "self.n(x)",
        "self.n = nn.RMSNorm(4500, elementwise_affine=False)",
        "torch.randn(2, 4500)",
        ("torch.randn(3, 4500)",),
        "rms_norm",
        ALL_RMS,
    ),
    (
        "rms_norm_kernelbench",
        "x / torch.sqrt(torch.mean(x ** 2, dim=1, keepdim=True) + 1e-5)",
        "",
        "torch.randn(2, 5, 7, 9)",
        ("torch.randn(1, 70, 3, 11)", "torch.randn(1, 1, 1, 1)"),
        "rms_norm",
        {"strided", "strided_looped"},
    ),
    (
        "sum_strided_keepdim",
        "torch.sum(x, dim=1, keepdim=True)",
        "",
        "torch.randn(2, 37, 19)",
        ("torch.randn(1, 300, 1)", "torch.randn(2, 7, 33)"),
        "reduce",
        {"strided"},
    ),
    (
        "max_strided",
        "torch.max(x, 0)[0]",
        "",
        "torch.randn(37, 19)",
        ("torch.randn(1, 1)",),
        "reduce",
        {"strided"},
    ),
    (
        "mean_row_fp16",
        "x.mean(-1)",
        "",
        "torch.rand(3, 2, 37, dtype=torch.float16) + 1",
        ("torch.rand(1, 1, 300).half()",),
        "reduce",
        {"row"},
    ),
    (
        "argmax_row",
        "x.argmax(dim=-1)",
        "",
        "torch.randn(5, 37)",
        ("torch.randn(3, 300)", "torch.randint(0, 3, (4, 50)).float()"),
        "reduce",
        {"row"},
    ),
    (
        "argmin_strided",
        "torch.argmin(x, dim=1)",
        "",
        "torch.randn(2, 37, 5)",
        ("torch.randint(0, 3, (2, 40, 7)).float()",),
        "reduce",
        {"strided"},
    ),
]


def _check(task: Path, cand_path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tests.template_check", str(task), str(cand_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.fixture(scope="module")
def check_results(tmp_path_factory) -> dict[str, tuple[TemplateCandidate, object]]:
    """Every (check id, variant) run through template_check, two subprocesses at a time."""
    jobs = {}
    for cid, expr, init, inputs, shapes, template, variants in CHECKS:
        d = tmp_path_factory.mktemp(cid)
        task = write_task(d / "task.py", expr, inputs, init, shapes)
        cands = instantiate(task)[template]
        assert isinstance(cands, list), cands
        assert {c.variant for c in cands} >= variants
        for c in cands:
            if c.variant in variants:
                path = d / f"{c.variant}.py"
                path.write_text(c.source)
                jobs[f"{cid}/{c.variant}"] = (c, task, path)
    workers = max(2, min(4, os.cpu_count() or 2))
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        futures = {k: pool.submit(_check, task, path) for k, (_, task, path) in jobs.items()}
        return {k: (jobs[k][0], f.result()) for k, f in futures.items()}


CHECK_IDS = [f"{c[0]}/{v}" for c in CHECKS for v in sorted(c[6])]


@pytest.mark.slow
@pytest.mark.parametrize("check_id", CHECK_IDS)
def test_whole_search_space_is_correct(check_results, check_id):
    cand, proc = check_results[check_id]
    assert_valid(cand)
    failures = [line for line in proc.stdout.splitlines() if '"ok": false' in line]
    detail = "\n".join(failures[:3]) or proc.stdout[-2000:] + proc.stderr[-2000:]
    assert proc.returncode == 0, detail
    points = math.prod(len(v) for v in check_source(cand.source).search_space.values())
    assert proc.stdout.count('"ok": true') == points


# That the kernels build for a GPU (sm_90, ptxas), which the interpreter does not check, is tested
# on these same tasks with real launch signatures in test_sm90_compile.py (every point of each
# variant's search space on the first task that makes it).
