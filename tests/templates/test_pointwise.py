"""Tests for the pointwise template: which references it fuses (in their common spellings), which
it declines and why, and that every point of each candidate's search space computes the
reference (Triton interpreter, via tests/template_check.py, on small odd shapes and SHAPES).
"""

from __future__ import annotations

import concurrent.futures
import itertools
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from evaluator_worker.static_gate import check_source
from evaluator_worker.task import load_task
from evolution.templates.analysis import analyse
from evolution.templates.base import TemplateCandidate
from evolution.templates.pointwise import SPACES, TEMPLATES

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = TEMPLATES[0]


def _task(
    forward: str,
    inputs: str,
    shapes: str = "",
    *,
    params: str = "x",
    init: str = "",
    args: str = "",
) -> str:
    """A task file: ``Model.forward(self, <params>)`` runs ``forward`` (its body lines)."""
    return textwrap.dedent("""\
        import math
        import operator
        import statistics

        import torch
        import torch.nn as nn
        import torch.nn.functional as F


        class Model(nn.Module):
            def __init__(self{sig}):
                super().__init__()
        {init}

            def forward(self, {params}):
        {forward}


        def get_inputs():
            return [{inputs}]


        def get_init_inputs():
            return [{args}]


        SHAPES = [{shapes}]
        """).format(
        sig=", *args" if args else "",
        init=textwrap.indent(textwrap.dedent(init), " " * 8) or "        pass",
        params=params,
        forward=textwrap.indent(textwrap.dedent(forward), " " * 8),
        inputs=inputs,
        args=args,
        shapes=shapes,
    )


def _instantiate(tmp_path: Path, source: str, name: str = "task") -> list[TemplateCandidate] | str:
    path = tmp_path / f"{name}.py"
    path.write_text(source)
    return TEMPLATE.instantiate(analyse(load_task(str(path)).module))


def _variants(result: list[TemplateCandidate] | str) -> list[str]:
    assert not isinstance(result, str), result
    return [c.variant for c in result]


# --- tasks checked across whole search spaces ------------------------------------------------

ONE = "torch.randn(5, 37)"
TWO = "torch.randn(5, 37), torch.randn(5, 37)"
ODD = "lambda: [torch.randn(3, 130)], lambda: [torch.randn(1, 1)]"
ODD2 = (
    "lambda: [torch.randn(3, 130), torch.randn(3, 130)],"
    " lambda: [torch.randn(1, 3), torch.randn(1, 3)]"
)

# The selector zoos: each element shows one op (picked by which normal quantile s falls in), so
# every op is checked elementwise against the float64 reference within one kernel.
_ZOO = """\
        cuts = [statistics.NormalDist().inv_cdf((k + 1) / len(ops)) for k in range(len(ops) - 1)]
        out = ops[-1]
        for op, cut in reversed(list(zip(ops[:-1], cuts))):
            out = torch.where(s < cut, op, out)
        return out
"""
ZOO_ACT = (
    """\
        s = y
        ops = [torch.relu(x), F.relu6(x * 4), F.leaky_relu(x, 0.2), F.elu(x * 3, alpha=1.3),
               torch.selu(x * 3), F.celu(x * 3, 0.7), F.gelu(x * 3),
               F.gelu(x * 3, approximate="tanh"),
               F.silu(x * 3), F.mish(x * 5), F.softplus(x * 5), F.softplus(x * 5, 2.0, 3.0),
               F.softsign(x), F.hardtanh(x, -0.5, 0.5), F.hardsigmoid(x * 4), F.hardswish(x * 4),
               torch.sigmoid(x * 5), torch.tanh(x * 3), F.logsigmoid(x * 5), F.tanhshrink(x),
               F.hardshrink(x, 0.3), F.softshrink(x, 0.3), F.threshold(x, 0.1, 20.0),
               self.elu(x * 2), self.gelu(x * 2), self.softplus(x), self.hardtanh(x * 3),
               self.relu6(x * 8), self.mish(x), self.silu(x)]
"""
    + _ZOO
)
ZOO_ACT_INIT = """\
    self.elu = nn.ELU(0.5)
    self.gelu = nn.GELU(approximate="tanh")
    self.softplus = nn.Softplus(beta=0.5, threshold=2.0)
    self.hardtanh = nn.Hardtanh(-2.0, 1.0)
    self.relu6 = nn.ReLU6()
    self.mish = nn.Mish()
    self.silu = nn.SiLU()
"""
ZOO_MATH = (
    """\
        s = z
        ops = [x + y, x - 2.5, 1 - x, torch.rsub(x, y, alpha=2), torch.add(x, y, alpha=0.5), x * y,
               x / (y.abs() + 0.5), 1.0 / (x.abs() + 1), torch.reciprocal(x + 3.0), -x, abs(x),
               x ** 2, torch.pow(x, 3), x.pow(5), (x.abs() + 0.1) ** 2.5, (x.abs() + 0.5) ** -3,
               2 ** x, torch.square(x), torch.sqrt(x.abs()), torch.rsqrt(x.abs() + 0.1),
               torch.exp(x), torch.exp2(x), torch.log(x.abs() + 0.1), torch.log2(x.abs() + 0.1),
               torch.log1p(x.abs()), torch.expm1(x), torch.sin(x * 3), x.cos(), torch.erf(x),
               torch.max(x, y), x.min(y), torch.maximum(x, y), torch.clamp(x, min=y),
               x.clamp(-0.3, 0.4), torch.clamp_min(x, 0.1), x.clamp_max(0.1),
               torch.clip(x, max=0.2),
               x.where(x > 0, y), (x > 0) * y, (x > 0).float() + y, (x * 3.3).half().float(),
               (x * 3).to(torch.bfloat16).to(y.dtype), torch.special.expit(x),
               torch.relu(torch.log(x)), x / torch.relu(y), operator.truediv(x, 3.0) * self.w,
               x.masked_fill(x < 0, 0.5), torch.sign(x)]
"""
    + _ZOO
)
ZOO_BOOL = """\
        a = (x > y) & (z < 0)
        b = torch.logical_not(x.ne(y)) | (x >= 0.5)
        c = torch.where(z > 1, x < -0.2, (x <= 0.1) == (y > 0))
        return torch.logical_or(a, torch.where(z > 0.5, b, c))
"""
# Small outputs: the relative L2 check sees any loss of relative precision in these.
TINY = """\
        return torch.tanh(x * 1e-3) + torch.log1p(y * 1e-3) + torch.expm1(x * 1e-3) * 0.5
"""
XYZ = "torch.randn(6, 67), torch.randn(1, 67), torch.randn(6, 67)"
XYZ_SHAPES = "lambda: [torch.randn(3, 67), torch.randn(1, 67), torch.randn(3, 67)]"

# name: (task source, the variants it must get, points to check). 0 points: every point of every
# variant; N > 0: the first N points of the broadcast variant only (the op zoos: their ops go
# through the same expression code in both variants, and the flat indexing is checked above).
CHECKED = {
    "gelu": (_task("return torch.nn.functional.gelu(x)", ONE, ODD), ["flat", "broadcast"], 0),
    "mingpt_gelu": (
        _task(
            "return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi)"
            " * (x + 0.044715 * torch.pow(x, 3.0))))",
            "torch.rand(5, 37)",
            ODD,
        ),
        ["flat", "broadcast"],
        0,
    ),
    "clamp_bias": (
        _task(
            "return torch.clamp(x * self.scale + self.bias, min=0.0, max=6.0)",
            "torch.randn(2, 3, 5, 7) * 4",
            "lambda: [torch.randn(1, 3, 9, 11) * 4], lambda: [torch.randn(4, 3, 1, 2)]",
            init="self.scale = args[1]\nself.bias = nn.Parameter(torch.randn(args[0], 1, 1))",
            args="3, 2.5",
        ),
        ["broadcast"],
        0,
    ),
    "where_broadcast": (
        _task(
            "return torch.where(x > y, x - y, y * 0.5)",
            "torch.randn(5, 37), torch.randn(1, 37)",
            "lambda: [torch.randn(3, 130), torch.randn(1, 130)],"
            " lambda: [torch.randn(4, 3), torch.randn(1, 3)]",
            params="x, y",
        ),
        ["broadcast"],
        0,
    ),
    "leaky_relu_module": (
        _task(
            "return self.act(x)",
            ONE,
            ODD,
            init="self.act = nn.LeakyReLU(negative_slope=args[0])",
            args="0.2",
        ),
        ["flat", "broadcast"],
        0,
    ),
    "hardtanh": (
        _task("return F.hardtanh(x, min_val=-1.0, max_val=1.0)", "torch.randn(5, 37) * 2", ODD),
        ["flat", "broadcast"],
        0,
    ),
    "relu_sum": (
        _task("return torch.relu(x + y)", TWO, ODD2, params="x, y"),
        ["flat", "broadcast"],
        0,
    ),
    "zoo_act": (
        _task(
            ZOO_ACT,
            "torch.randn(16, 67), torch.randn(16, 67)",
            "lambda: [torch.randn(9, 130), torch.randn(9, 130)]",
            params="x, y",
            init=ZOO_ACT_INIT,
            args="0",
        ),
        ["flat", "broadcast"],
        2,
    ),
    "zoo_math": (
        _task(
            ZOO_MATH,
            XYZ,
            XYZ_SHAPES,
            params="x, y, z",
            init="self.w = nn.Parameter(torch.randn(67))",
            args="0",
        ),
        ["broadcast"],
        2,
    ),
    "zoo_bool": (_task(ZOO_BOOL, XYZ, XYZ_SHAPES, params="x, y, z"), ["broadcast"], 2),
    "tiny": (_task(TINY, TWO, ODD2, params="x, y"), ["flat", "broadcast"], 1),
    "half": (
        _task(
            "return torch.clamp(F.gelu(x) * y + torch.tanh(x), -2.0, 2.0)",
            "torch.randn(5, 37).half(), torch.randn(5, 37).half()",
            "lambda: [torch.randn(3, 130).half(), torch.randn(3, 130).half()]",
            params="x, y",
        ),
        ["flat", "broadcast"],
        2,
    ),
}


@pytest.fixture(scope="module")
def checks(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> dict:
    """``{task: (variants made, {variant: running check})}`` or the decline reason.

    Every selected check starts at once (a subprocess each, as many as there are cores).
    """
    selected = {
        item.callspec.params["name"]
        for item in request.session.items
        if item.originalname == "test_candidates_are_correct_over_their_search_space"
    }
    tmp = tmp_path_factory.mktemp("pointwise")
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2))
    started: dict = {}
    for name, (source, _, limit) in CHECKED.items():
        if name not in selected:
            continue
        result = _instantiate(tmp, source, name)
        if isinstance(result, str):
            started[name] = result
            continue
        started[name] = ([c.variant for c in result], {})
        for cand in result:
            if limit and cand.variant != "broadcast":
                continue
            path = tmp / f"{name}_{cand.variant}.py"
            path.write_text(cand.source)
            cmd = [sys.executable, "-m", "tests.template_check", str(tmp / f"{name}.py"), str(path)]
            cmd += ["--limit", str(limit)] if limit else []
            started[name][1][cand.variant] = pool.submit(
                subprocess.run, cmd, cwd=ROOT, capture_output=True, text=True, timeout=240
            )
    yield started
    pool.shutdown(cancel_futures=True)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CHECKED))
def test_candidates_are_correct_over_their_search_space(checks: dict, name: str) -> None:
    assert not isinstance(checks[name], str), checks[name]
    made, runs = checks[name]
    assert made == CHECKED[name][1]
    limit = CHECKED[name][2]
    for variant, future in runs.items():
        run = future.result()
        points = limit or len(list(itertools.product(*SPACES[variant].values())))
        assert run.returncode == 0 and len(run.stdout.strip().splitlines()) == points, (
            f"{name}/{variant}:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
        )


# --- matching: spellings -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "forward,init",
    [
        ("return torch.relu(x)", ""),
        ("return F.relu(x)", ""),
        ("return x.relu()", ""),
        ("return self.act(x)", "self.act = nn.ReLU()"),
        ("return self.act(x * 2)", "self.act = nn.ReLU(inplace=True)"),
        ("return torch.clamp(x, min=0.0)", ""),
        ("return x.clamp_min(0)", ""),
        ("return F.relu(x * 2, inplace=True)", ""),
        ("return (x * 2).relu_()", ""),
    ],
)
def test_relu_spellings_are_fused(tmp_path: Path, forward: str, init: str) -> None:
    result = _instantiate(tmp_path, _task(forward, ONE, init=init))
    assert _variants(result) == ["flat", "broadcast"]
    assert "tl.where(" in result[0].source


@pytest.mark.parametrize(
    "forward,init",
    [
        ("return F.leaky_relu(x, 0.125)", ""),
        ("return F.leaky_relu(x, negative_slope=0.125)", ""),
        ("return self.act(x)", "self.act = nn.LeakyReLU(0.125)"),
        ("return torch.where(x > 0, x, x * 0.125)", ""),
    ],
)
def test_leaky_relu_spellings_keep_their_slope(tmp_path: Path, forward: str, init: str) -> None:
    result = _instantiate(tmp_path, _task(forward, ONE, init=init))
    assert _variants(result) == ["flat", "broadcast"]
    assert "0.125" in result[0].source


@pytest.mark.parametrize(
    "forward,init,marker",
    [
        ("return F.gelu(x)", "", "tl.math.erf("),
        ("return self.act(x)", "self.act = nn.GELU()", "tl.math.erf("),
        ("return F.gelu(x, approximate='tanh')", "", "_tanh("),
        ("return self.act(x)", "self.act = nn.GELU(approximate='tanh')", "_tanh("),
        ("return self.act(x)", "self.act = nn.Hardtanh(-2.0, 2.0)", "(-2.0)"),
        ("return x.clip(-2, 2)", "", "(-2.0)"),
        ("return x * torch.sigmoid(x)", "", "tl.sigmoid("),
        ("return x / (1 + torch.abs(x))", "", "tl.abs("),
        ("return torch.selu(x)", "", "1.0507009873554805"),
    ],
)
def test_activation_spellings(tmp_path: Path, forward: str, init: str, marker: str) -> None:
    result = _instantiate(tmp_path, _task(forward, ONE, init=init))
    assert _variants(result) == ["flat", "broadcast"]
    assert marker in result[0].source


def test_broadcast_operands_get_only_the_broadcast_variant(tmp_path: Path) -> None:
    source = CHECKED["clamp_bias"][0]
    result = _instantiate(tmp_path, source)
    assert _variants(result) == ["broadcast"]
    assert "self.bias = nn.Parameter(torch.empty((3, 1, 1)" in result[0].source
    assert "2.5" in result[0].source  # the python attribute is baked as a constant


# --- matching: near misses ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "forward,init,why",
    [
        ("return torch.softmax(x, dim=-1)", "", "reduction"),
        ("return torch.relu(x).sum(dim=1)", "", "reduction"),
        ("return torch.max(torch.relu(x), 1)[0]", "", "reduction"),
        ("return torch.relu(x @ self.w)", "self.w = nn.Parameter(torch.randn(37, 37))", "matmul"),
        ("return torch.relu(self.fc(x))", "self.fc = nn.Linear(37, 37)", "matmul"),
        ("return torch.relu(x.view(-1)) * 2", "", "moves data"),
        ("return torch.relu(x).reshape(-1)", "", "moves data"),
        ("return torch.relu_(x)", "", "in place"),
        ("return F.leaky_relu(x, 0.1, inplace=True)", "", "in place"),
        ("x.relu_()\nreturn x * 2", "", "in place"),
        ("return self.act(x)", "self.act = nn.ReLU(inplace=True)", "in place"),
        ("y = x * 2\ny.relu_()\nreturn y", "", "in place"),
        ("return F.dropout(torch.relu(x), p=0.5, training=True)", "", "random"),
        ("return self.drop(torch.relu(x))", "self.drop = nn.Dropout(0.1)", "random"),
        ("return (x * 10).long()", "", "int64"),
        ("return torch.div(x, 0.3, rounding_mode='floor')", "", "rounding_mode"),
        ("return x.double() * 2", "", "float64"),
        ("return torch.relu(x), torch.sigmoid(x)", "", "tuple"),
        ("return torch.atan(x)", "", "'atan'"),
        ("return x * x.shape[1]", "", "shape"),
        ("if x.sum() > 0:\n    return x\nreturn -x", "", "traced"),
    ],
)
def test_near_misses_are_declined_with_a_reason(
    tmp_path: Path, forward: str, init: str, why: str
) -> None:
    result = _instantiate(tmp_path, _task(forward, ONE, init=init))
    assert isinstance(result, str), [c.variant for c in result]
    assert why in result


# --- the generated files -------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["mingpt_gelu", "clamp_bias", "zoo_act", "zoo_bool"])
def test_sources_pass_the_static_gate_and_declare_their_space(tmp_path: Path, name: str) -> None:
    for cand in _instantiate(tmp_path, CHECKED[name][0]):
        report = check_source(cand.source)
        assert report.ok, report.reasons
        assert report.search_space == SPACES[cand.variant]
        assert len(list(itertools.product(*report.search_space.values()))) <= 12
        assert cand.source.startswith(f"# Generated by kernelmap template pointwise/{cand.variant}")
        assert report.custom_kernels and report.uses_triton
        assert cand.label == f"template:pointwise/{cand.variant}"
