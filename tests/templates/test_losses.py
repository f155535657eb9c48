"""Norm and loss templates (``norms``, ``cross_entropy``, ``losses``): what they recognise, what
they decline, and that every schedule in every generated candidate's SEARCH_SPACE is correct
(Triton interpreter, small odd shapes)."""

from __future__ import annotations

import math
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from evaluator_worker.static_gate import check_source
from evaluator_worker.task import load_task
from evolution.templates import losses
from evolution.templates.analysis import analyse

ROOT = Path(__file__).resolve().parents[2]
# The norm and loss family, asked together so each test also checks the others decline.
TEMPLATES = losses.TEMPLATES
BY_NAME = {t.name: t for t in TEMPLATES}


def write_task(
    path: Path,
    forward: str,
    inputs: str,
    shapes: tuple[str, ...] = (),
    args: str = "x",
    init: str = "pass",
) -> Path:
    """A task file whose ``Model.forward(args)`` returns ``forward``."""
    shape_fns = ", ".join(f"lambda: {s}" for s in shapes)
    path.write_text(
        textwrap.dedent(f"""\
        import torch
        import torch.nn as nn
        import torch.nn.functional as F


        class Model(nn.Module):
            def __init__(self):
                super().__init__()
                {init}

            def forward(self, {args}):
                return {forward}


        def get_inputs():
            return {inputs}


        def get_init_inputs():
            return []


        SHAPES = [{shape_fns}]
    """)
    )
    return path


def instantiate(path: Path) -> dict[str, list | str]:
    """Every template's answer for the task at ``path``, by template name."""
    analysis = analyse(load_task(path).module)
    return {t.name: t.instantiate(analysis) for t in TEMPLATES}


X = "[torch.rand(5, 300)]"
PT = "[torch.randn(37, 19), torch.randn(37, 19)]"
CE = "[torch.randn(37, 19), torch.randint(0, 19, (37,))]"
PROBS = "[torch.rand(13, 37).softmax(-1), torch.rand(13, 37).softmax(-1)]"
ROWS3 = ["row", "split", "single_pass"]

# (forward, args, inputs, init, template, variants)
MATCHES = [
    ("x / torch.sum(torch.abs(x), dim=1, keepdim=True)", "x", X, "", "lp_norm", ROWS3),
    ("x / torch.mean(torch.abs(x), dim=1, keepdim=True)", "x", X, "", "lp_norm", ROWS3),
    ("x / x.abs().sum(-1, keepdim=True)", "x", X, "", "lp_norm", ROWS3),
    ("x / torch.norm(x, p=2, dim=1, keepdim=True)", "x", X, "", "lp_norm", ROWS3),
    ("x / x.norm(dim=-1, keepdim=True)", "x", X, "", "lp_norm", ROWS3),
    ("x / torch.linalg.vector_norm(x, dim=1, keepdim=True)", "x", X, "", "lp_norm", ROWS3),
    ("x / (torch.sqrt((x * x).sum(dim=1, keepdim=True)) + 1e-6)", "x", X, "", "lp_norm", ROWS3),
    ("x / torch.norm(x, p=2, dim=1, keepdim=True).clamp(min=1e-8)", "x", X, "", "lp_norm", ROWS3),
    ("F.normalize(x, p=1, dim=-1)", "x", X, "", "lp_norm", ROWS3),
    (
        "x / torch.norm(x, dim=1, keepdim=True)",
        "x",
        "[torch.rand(5, 20000)]",
        "",
        "lp_norm",
        ["row", "split"],
    ),
    ("F.normalize(x, dim=1)", "x", "[torch.randn(2, 37, 5, 7)]", "", "lp_norm", ["strided"]),
    ("x / torch.norm(x, p='fro')", "x", "[torch.rand(3, 5, 7, 11)]", "", "lp_norm", ["split"]),
    ("x / torch.linalg.norm(x)", "x", "[torch.rand(3, 5, 7)]", "", "lp_norm", ["split"]),
    ("x / x.norm(2, (1, 2), True)", "x", "[torch.rand(3, 5, 7)]", "", "lp_norm", ROWS3),
    (
        "torch.nn.functional.cross_entropy(p, t)",
        "p, t",
        CE,
        "",
        "cross_entropy",
        ["row", "single_pass"],
    ),
    (
        "self.loss(p, t)",
        "p, t",
        CE,
        "self.loss = nn.CrossEntropyLoss()",
        "cross_entropy",
        ["row", "single_pass"],
    ),
    (
        "F.nll_loss(F.log_softmax(p, dim=1), t, reduction='sum')",
        "p, t",
        CE,
        "",
        "cross_entropy",
        ["row", "single_pass"],
    ),
    (
        "F.cross_entropy(p, t, ignore_index=3, reduction='none')",
        "p, t",
        CE,
        "",
        "cross_entropy",
        ["row", "single_pass"],
    ),
    (
        "F.cross_entropy(p, t)",
        "p, t",
        "[torch.randn(4, 20000), torch.randint(0, 9, (4,))]",
        "",
        "cross_entropy",
        ["row"],
    ),
    ("torch.mean((p - t) ** 2)", "p, t", PT, "", "pointwise_loss", ["split"]),
    ("((p - t).pow(2)).mean()", "p, t", PT, "", "pointwise_loss", ["split"]),
    ("F.mse_loss(p, t)", "p, t", PT, "", "pointwise_loss", ["split"]),
    (
        "self.loss(p, t)",
        "p, t",
        PT,
        "self.loss = nn.MSELoss(reduction='sum')",
        "pointwise_loss",
        ["split"],
    ),
    ("torch.nn.functional.smooth_l1_loss(p, t)", "p, t", PT, "", "pointwise_loss", ["split"]),
    (
        "self.loss(p, t)",
        "p, t",
        PT,
        "self.loss = nn.HuberLoss(delta=0.5)",
        "pointwise_loss",
        ["split"],
    ),
    ("F.l1_loss(p, t)", "p, t", PT, "", "pointwise_loss", ["split"]),
    (
        "F.kl_div(torch.log(p), t, reduction='batchmean')",
        "p, t",
        PROBS,
        "",
        "pointwise_loss",
        ["split"],
    ),
    (
        "self.loss(p, t)",
        "p, t",
        PROBS,
        "self.loss = nn.KLDivLoss(reduction='batchmean', log_target=True)",
        "pointwise_loss",
        ["split"],
    ),
    (
        "torch.mean(torch.clamp(1 - p * t, min=0))",
        "p, t",
        "[torch.randn(6, 30), torch.randn(30)]",
        "",
        "pointwise_loss",
        ["split"],
    ),
    (
        "torch.relu(1 - p * t).sum()",
        "p, t",
        "[torch.randn(6, 30), torch.randn(6, 1)]",
        "",
        "pointwise_loss",
        ["split"],
    ),
    ("x.abs().sum()", "x", X, "", "pointwise_loss", ["split"]),
    (
        "torch.mean(torch.where((p - t).abs() < 1, 0.5 * (p - t) ** 2, (p - t).abs() - 0.5))",
        "p, t",
        PT,
        "",
        "pointwise_loss",
        ["split"],
    ),
]


@pytest.mark.parametrize(
    "forward, args, inputs, init, template, variants",
    MATCHES,
    ids=[f"{m[4]}:{m[0][:40]}" for m in MATCHES],
)
def test_recognises(tmp_path, forward, args, inputs, init, template, variants):
    got = instantiate(write_task(tmp_path / "task.py", forward, inputs, args=args, init=init))
    cands = got[template]
    assert not isinstance(cands, str), cands
    assert [c.variant for c in cands] == variants
    # The other templates of the family leave it alone.
    assert all(isinstance(v, str) for k, v in got.items() if k != template)
    for c in cands:
        report = check_source(c.source, "candidate.py")
        assert report.ok, report.reasons
        assert report.search_space and 1 <= math.prod(map(len, report.search_space.values())) <= 16
        assert c.source.startswith(f"# kernelmap template {template}/{c.variant}")


# (forward, args, inputs, init, template, words of the reason)
DECLINES = [
    ("x / torch.norm(x, p=3, dim=1, keepdim=True)", "x", X, "", "lp_norm", "3-norm"),
    ("x / torch.norm(x, dim=1)", "x", "[torch.rand(5, 5)]", "", "lp_norm", "keepdim"),
    (
        "x / torch.norm(x, p=2, dim=(0, 2), keepdim=True)",
        "x",
        "[torch.rand(3, 4, 5)]",
        "",
        "lp_norm",
        "not contiguous",
    ),
    (
        "torch.relu(x / torch.norm(x, dim=1, keepdim=True))",
        "x",
        X,
        "",
        "lp_norm",
        "does not divide",
    ),
    ("x / torch.sqrt(torch.mean(x ** 2, dim=1, keepdim=True))", "x", X, "", "lp_norm", "RMS"),
    ("x / torch.linalg.norm(x, ord=2)", "x", X, "", "lp_norm", "matrix norm"),
    ("(y := x * 2) / torch.norm(y, dim=1, keepdim=True)", "x", X, "", "lp_norm", "computed"),
    (
        "F.cross_entropy(p, t, label_smoothing=0.1)",
        "p, t",
        CE,
        "",
        "cross_entropy",
        "label smoothing",
    ),
    (
        "self.loss(p, t)",
        "p, t",
        CE,
        "self.loss = nn.CrossEntropyLoss(weight=torch.rand(19))",
        "cross_entropy",
        "weights",
    ),
    (
        "F.cross_entropy(p, t)",
        "p, t",
        "[torch.randn(4, 5, 3), torch.randint(0, 5, (4, 3))]",
        "",
        "cross_entropy",
        "rank 3",
    ),
    (
        "F.cross_entropy(p, t)",
        "p, t",
        "[torch.randn(4, 5), torch.rand(4, 5).softmax(-1)]",
        "",
        "cross_entropy",
        "probabilities",
    ),
    ("F.cross_entropy(p * 2, t)", "p, t", CE, "", "cross_entropy", "computed"),
    ("F.nll_loss(p, t)", "p, t", CE, "", "cross_entropy", "log_softmax"),
    ("F.mse_loss(p, t, reduction='none')", "p, t", PT, "", "pointwise_loss", "'none'"),
    ("torch.mean((p - t) ** 2, dim=1)", "p, t", PT, "", "pointwise_loss", "keeps dims"),
    ("torch.mean(torch.tanh(p - t))", "p, t", PT, "", "pointwise_loss", "tanh"),
    ("torch.mean((p - t) ** 2) * 0.5", "p, t", PT, "", "pointwise_loss", "not a mean or sum"),
    ("torch.mean(p.abs() ** t)", "p, t", PT, "", "pointwise_loss", "raises to"),
    (
        "torch.mean(p * t)",
        "p, t",
        "[torch.randn(3, 1, 5), torch.randn(1, 4, 1)]",
        "",
        "pointwise_loss",
        "rows x columns",
    ),
    (
        "F.kl_div(p, t, reduction='batchmean')",
        "p, t",
        "[torch.rand(5) - 2, torch.rand(3, 5) + 1]",
        "",
        "pointwise_loss",
        "broadcast",
    ),
]


@pytest.mark.parametrize(
    "forward, args, inputs, init, template, words",
    DECLINES,
    ids=[f"{d[4]}:{d[0][:40]}" for d in DECLINES],
)
def test_declines(tmp_path, forward, args, inputs, init, template, words):
    got = instantiate(write_task(tmp_path / "task.py", forward, inputs, args=args, init=init))
    assert all(isinstance(v, str) for v in got.values()), got
    assert words in got[template]


# Tasks checked at every SEARCH_SPACE point: (id, forward, args, inputs, shapes, init,
# variants to check). Sizes are odd and not multiples of any block.
CHECKS = [
    (
        "l1_mean",
        "x / torch.mean(torch.abs(x), dim=1, keepdim=True)",
        "x",
        X,
        ("[torch.rand(3, 1037)]", "[torch.rand(1, 7)]"),
        "",
        ROWS3,
    ),
    (
        "l2_eps_3d",
        "x / (torch.norm(x, p=2, dim=-1, keepdim=True) + 1e-6)",
        "x",
        "[torch.randn(4, 3, 130)]",
        ("[torch.randn(2, 5, 9)]",),
        "",
        ["single_pass"],
    ),
    (
        "normalize_nchw",
        "F.normalize(x, dim=1)",
        "x",
        "[torch.randn(2, 37, 5, 7)]",
        ("[torch.randn(3, 5, 13, 11)]",),
        "",
        ["strided"],
    ),
    (
        "frobenius",
        "x / torch.norm(x, p='fro')",
        "x",
        "[torch.rand(3, 5, 7, 11)]",
        ("[torch.rand(2, 3, 37, 41)]",),
        "",
        ["split"],
    ),
    (
        "cross_entropy",
        "torch.nn.functional.cross_entropy(p, t)",
        "p, t",
        CE,
        (
            "[torch.randn(5, 1100), torch.randint(0, 1100, (5,))]",
            "[torch.randn(1, 3), torch.randint(0, 3, (1,))]",
        ),
        "",
        ["row", "single_pass"],
    ),
    (
        "ce_ignore_sum",
        "self.loss(p, t)",
        "p, t",
        "[torch.randn(37, 5), torch.randint(0, 5, (37,))]",
        ("[torch.randn(9, 300), torch.randint(0, 3, (9,))]",),
        "self.loss = nn.CrossEntropyLoss(ignore_index=2, reduction='sum')",
        ["single_pass"],
    ),
    # Argument names that collide with the candidate's own locals (x, t, in0, in1).
    (
        "nll_none",
        "F.nll_loss(F.log_softmax(t, dim=-1), x, reduction='none')",
        "t, x",
        CE,
        ("[torch.randn(3, 2100), torch.randint(0, 2100, (3,))]",),
        "",
        ["row"],
    ),
    (
        "mse",
        "torch.mean((p - t) ** 2)",
        "p, t",
        PT,
        ("[torch.randn(3, 20011), torch.randn(3, 20011)]",),
        "",
        ["split"],
    ),
    (
        "huber_sum",
        "F.smooth_l1_loss(p, t, beta=0.5, reduction='sum')",
        "p, t",
        "[torch.randn(37, 19) * 2, torch.randn(37, 19)]",
        ("[torch.randn(7, 4099) * 2, torch.randn(7, 4099)]",),
        "",
        ["split"],
    ),
    (
        "kl_batchmean",
        "F.kl_div(torch.log(p), t, reduction='batchmean')",
        "p, t",
        PROBS,
        ("[torch.rand(3, 5000).softmax(-1), torch.rand(3, 5000).softmax(-1)]",),
        "",
        ["split"],
    ),
    (
        "hinge_cols",
        "torch.mean(torch.clamp(1 - p * t, min=0))",
        "p, t",
        "[torch.randn(6, 300), torch.randint(0, 2, (300,)).float() * 2 - 1]",
        ("[torch.randn(3, 1000), torch.randint(0, 2, (1000,)).float() * 2 - 1]",),
        "",
        ["split"],
    ),
    (
        "hinge_rows",
        "torch.mean(torch.clamp(1 - in1 * in0, min=0))",
        "in1, in0",
        "[torch.randn(6, 300), torch.randint(0, 2, (6, 1)).float() * 2 - 1]",
        ("[torch.randn(3, 1000), torch.randint(0, 2, (3, 1)).float() * 2 - 1]",),
        "",
        ["split"],
    ),
]


@pytest.fixture(scope="module")
def checked(tmp_path_factory) -> dict[str, subprocess.CompletedProcess]:
    """Run tests/template_check.py on every (task, variant) of CHECKS, two at a time."""
    base = tmp_path_factory.mktemp("losses")
    jobs = []
    for name, forward, args, inputs, shapes, init, variants in CHECKS:
        task = write_task(base / f"{name}.py", forward, inputs, shapes, args, init)
        cands = {
            c.variant: c for t in instantiate(task).values() if not isinstance(t, str) for c in t
        }
        for v in variants:
            path = base / f"{name}_{v}.py"
            path.write_text(cands[v].source)
            jobs.append((f"{name}/{v}", task, path))

    def run(job):
        key, task, path = job
        cmd = [sys.executable, "-m", "tests.template_check", str(task), str(path)]
        return key, subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)

    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(pool.map(run, jobs))


@pytest.mark.slow
@pytest.mark.parametrize("key", [f"{c[0]}/{v}" for c in CHECKS for v in c[6]])
def test_every_schedule_is_correct(checked, key):
    proc = checked[key]
    failures = [line for line in proc.stdout.splitlines() if '"ok": false' in line]
    assert proc.returncode == 0, (failures[:3] or proc.stdout[-2000:]) + [proc.stderr[-2000:]]
    assert proc.stdout.count('"ok": true') >= 6  # every point of the space ran
