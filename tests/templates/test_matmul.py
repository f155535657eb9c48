"""Matmul template (matmul / linear + fused pointwise epilogue): matching, correctness, GPU build.

Matcher tests build small task files in several spellings and check which variants come back,
and that near-misses are declined with a reason. Correctness tests write each candidate and run
``tests/template_check.py`` on it, which checks every point of its ``SEARCH_SPACE`` in the
Triton interpreter against the float64 reference (the task's inputs, a normal redraw and its
held-out ``SHAPES``, with odd sizes that are not multiples of any block); the checks run two at
a time in subprocesses (``TRITON_INTERPRET`` must be set before triton is imported). Finally the
kernels are compiled for an sm_90 target without a GPU, which the interpreter cannot vouch for.
"""

from __future__ import annotations

import concurrent.futures
import json
import math
import os
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from evaluator_worker.static_gate import check_source
from evaluator_worker.task import load_task
from evolution.descriptors import default_dims
from evolution.templates import matmul
from evolution.templates.analysis import analyse
from evolution.templates.base import TemplateCandidate

ROOT = Path(__file__).resolve().parents[2]

_TASK = """
import torch
import torch.nn as nn
import torch.nn.functional as F

ALLOW_TF32 = {tf32}


class Model(nn.Module):
    def __init__(self):
        super().__init__()
{init}

    def forward(self, {args}):
{body}


SHAPES = [{shapes}]


def get_inputs():
    return [{inputs}]


def get_init_inputs():
    return []
"""


def write_task(
    path: Path,
    body: str,
    inputs: str,
    init: str = "",
    shapes: tuple = (),
    args: str = "x",
    tf32: bool = False,
) -> Path:
    """A task file whose forward(``args``) runs ``body`` (statements; the last one returns)."""
    init = textwrap.indent(textwrap.dedent(init), " " * 8) if init else "        pass"
    body = textwrap.indent(textwrap.dedent(body).strip(), " " * 8)
    shapes = ", ".join(f"lambda: [{s}]" for s in shapes)
    path.write_text(
        _TASK.format(init=init, body=body, inputs=inputs, shapes=shapes, args=args, tf32=tf32)
    )
    return path


def instantiate(path: Path) -> list[TemplateCandidate] | str:
    """What the matmul template makes of the task at ``path``."""
    (template,) = matmul.TEMPLATES
    return template.instantiate(analyse(load_task(str(path)).module))


def assert_valid(cand: TemplateCandidate) -> None:
    gate = check_source(cand.source, f"{cand.variant}.py")
    assert gate.ok, gate.reasons
    space = gate.search_space
    assert space and all(isinstance(v, list) and v for v in space.values())
    assert 4 <= math.prod(len(v) for v in space.values()) <= 20
    assert cand.source.startswith(f"# kernelmap template {cand.template}/{cand.variant}")


# -- matching -------------------------------------------------------------------------------

LINEAR = "self.fc = nn.Linear(45, 29)"
AB = ("A, B", "torch.randn(37, 45), torch.randn(45, 29)")
SPELLINGS = [
    # (body, init, args, inputs, ops in the note)
    (
        "return F.leaky_relu(self.fc(x) * 2.0, 0.1)",
        LINEAR,
        "x",
        "torch.randn(5, 7, 45)",
        "matmul -> bias -> mul -> leaky_relu",
    ),
    (
        "return torch.relu(F.linear(x, self.w, self.b))",
        "self.w = nn.Parameter(torch.randn(29, 45))\nself.b = nn.Parameter(torch.randn(29))",
        "x",
        "torch.randn(37, 45)",
        "matmul -> bias -> relu",
    ),
    ("return F.linear(x, w)", "", "x, w", "torch.randn(37, 45), torch.randn(29, 45)", "matmul"),
    (
        "return self.act(self.fc(x))",
        "self.fc = nn.Linear(45, 29, bias=False)\nself.act = nn.GELU(approximate='tanh')",
        "x",
        "torch.randn(37, 45)",
        "matmul -> gelu",
    ),
    ("return torch.matmul(A, B) / 3.0", "", *AB, "matmul -> div"),
    ("return F.mish(F.mish(A @ B))", "", *AB, "matmul -> mish -> mish"),
    ("return torch.mm(A, B).clamp(-1.0, 1.0)", "", *AB, "matmul -> clamp"),
    ("return A.matmul(B).sigmoid()", "", *AB, "matmul -> sigmoid"),
    ("return torch.tanh(A.mm(B) - 0.5)", "", *AB, "matmul -> sub -> tanh"),
    (
        "return torch.bmm(A, B)",
        "",
        "A, B",
        "torch.randn(3, 37, 45), torch.randn(3, 45, 29)",
        "matmul",
    ),
    (
        "y = A @ B + self.b\nreturn y * torch.sigmoid(y)",
        "self.b = nn.Parameter(torch.randn(29))",
        *AB,
        "matmul -> add -> sigmoid -> mul",
    ),
    (
        "return torch.matmul(A.T, B)",
        "",
        "A, B",
        "torch.randn(45, 37), torch.randn(45, 29)",
        "matmul",
    ),
    (
        "return A.t() @ B.transpose(0, 1)",
        "",
        "A, B",
        "torch.randn(45, 37), torch.randn(29, 45)",
        "matmul",
    ),
    (
        "return torch.bmm(A.permute(0, 2, 1), B.mT)",
        "",
        "A, B",
        "torch.randn(3, 45, 37), torch.randn(3, 29, 45)",
        "matmul",
    ),
    (
        "return torch.transpose(A, -1, -2) @ B",
        "",
        "A, B",
        "torch.randn(45, 37), torch.randn(45, 29)",
        "matmul",
    ),
    (
        "return torch.relu(A @ B + C)",
        "",
        "A, B, C",
        "torch.randn(37, 45), torch.randn(45, 29), torch.randn(37, 29)",
        "matmul -> add -> relu",
    ),
    (
        "x = self.fc(x)\nr = x.clone().detach()\nreturn self.act(x * 0.5 + r)",
        "self.fc = nn.Linear(45, 29)\nself.act = nn.ReLU(inplace=True)",
        "x",
        "torch.randn(37, 45)",
        "matmul -> bias -> mul -> add -> relu",
    ),
    (
        "return torch.addmm(self.b, x, self.w.t(), beta=0.5)",
        "self.w = nn.Parameter(torch.randn(29, 45))\nself.b = nn.Parameter(torch.randn(29))",
        "x",
        "torch.randn(37, 45)",
        "matmul -> bias",
    ),
    (
        "return torch.baddbmm(C, A, B, alpha=2.0).max(C)",
        "",
        "A, B, C",
        "torch.randn(3, 37, 45), torch.randn(3, 45, 29), torch.randn(3, 37, 29)",
        "matmul -> bias -> maximum",
    ),
    (
        "return torch.minimum(self.bn(self.fc(x)), self.c)",
        "self.fc = nn.Linear(45, 29)\nself.bn = nn.BatchNorm1d(29)\n"
        "self.c = nn.Parameter(torch.tensor(0.5))",
        "x",
        "torch.randn(37, 45)",
        "matmul -> bias -> batch_norm -> minimum",
    ),
    (
        "return F.relu(x @ w, True)",
        "",
        "x, w",
        "torch.randn(45), torch.randn(45, 29)",
        "matmul -> relu",
    ),
    (
        "return self.drop(F.hardtanh(self.fc(x), -0.5, 0.5))",
        "self.fc = nn.Linear(45, 29)\nself.drop = nn.Dropout(0.3)",
        "x",
        "torch.randn(37, 45)",
        "matmul -> bias -> clamp",
    ),
]


@pytest.mark.parametrize(("body", "init", "args", "inputs", "ops"), SPELLINGS)
def test_spellings_are_recognised(tmp_path, body, init, args, inputs, ops):
    got = instantiate(write_task(tmp_path / "task.py", body, inputs, init, args=args))
    assert isinstance(got, list), got
    assert [c.variant for c in got] == ["tiled"]
    assert got[0].note.startswith(ops + ";"), got[0].note
    assert_valid(got[0])


def test_split_k_is_offered_only_for_long_k(tmp_path):
    long_k = write_task(
        tmp_path / "long.py", "return A @ B", "torch.randn(5, 67), torch.randn(67, 7)", args="A, B"
    )
    got = instantiate(long_k)
    assert [c.variant for c in got] == ["tiled", "split_k"]
    for c in got:
        assert_valid(c)
    square = write_task(
        tmp_path / "square.py",
        "return A @ B",
        "torch.randn(64, 64), torch.randn(64, 64)",
        args="A, B",
    )
    assert [c.variant for c in instantiate(square)] == ["tiled"]


@pytest.mark.parametrize(
    ("dtype", "tf32", "dot"),
    [
        ("float32", False, 'input_precision="ieee"'),
        ("float32", True, 'input_precision="tf32"'),
        ("float16", False, "tl.dot(a, b, acc)\n"),
        ("bfloat16", False, "tl.dot(a, b, acc)\n"),
    ],
)
def test_precision_follows_the_task(tmp_path, dtype, tf32, dot):
    inputs = f"torch.randn(37, 45, dtype=torch.{dtype}), torch.randn(45, 29, dtype=torch.{dtype})"
    (cand,) = instantiate(
        write_task(tmp_path / "task.py", "return A @ B", inputs, args="A, B", tf32=tf32)
    )
    assert dot in cand.source
    assert ("tf32" in cand.source) == tf32


NEAR_MISSES = [
    # (body, init, args, inputs, words expected in the reason)
    ("return torch.softmax(self.fc(x), dim=1)", LINEAR, "x", "torch.randn(37, 45)", "softmax"),
    ("return self.fc(x).sum(dim=1)", LINEAR, "x", "torch.randn(37, 45)", "sum after the matmul"),
    ("return torch.relu(x)", "", "x", "torch.randn(37, 45)", "no matmul"),
    ("return (A @ B) @ B.t()", "", *AB, "more than one matmul"),
    ("return self.fc(x * 2.0)", LINEAR, "x", "torch.randn(37, 45)", "computed"),
    (
        "return A @ B + r",
        "",
        "A, B, r",
        "torch.randn(37, 45), torch.randn(45, 29), torch.randn(37, 1)",
        "per-column",
    ),
    ("y = A @ B\nreturn y, torch.relu(y)", "", *AB, "output"),
    ("return A @ v", "", "A, v", "torch.randn(37, 45), torch.randn(45)", "1-D"),
    (
        "return A @ B",
        "",
        "A, B",
        "torch.randn(37, 45).double(), torch.randn(45, 29).double()",
        "dtype",
    ),
    (
        "return A @ B",
        "",
        "A, B",
        "torch.randint(0, 5, (37, 45)), torch.randint(0, 5, (45, 29))",
        "dtype",
    ),
    (
        "return A @ B",
        "",
        "A, B",
        "torch.randn(2, 1, 37, 45), torch.randn(1, 3, 45, 29)",
        "broadcast",
    ),
    (
        "y = self.fc(x)\nF.relu(y, inplace=True)\nreturn y",
        LINEAR,
        "x",
        "torch.randn(37, 45)",
        "in-place",
    ),
    ("return (A @ B) ** 0.5", "", *AB, "exponent"),
    (
        "return (A @ B).clamp(min=self.lo)",
        "self.lo = nn.Parameter(torch.zeros(29))",
        *AB,
        "not a pointwise op",
    ),
    ("return (A @ B).div(2.0, rounding_mode='floor')", "", *AB, "not a pointwise op"),
    (
        "return self.bn(A @ B)",
        "self.bn = nn.BatchNorm1d(45)",
        "A, B",
        "torch.randn(3, 45, 37), torch.randn(37, 29)",
        "not 2-D",
    ),
    ("return torch.relu(A @ B) * A.sum()", "", *AB, "computes outside"),
    (
        "return A.permute(1, 0, 2) @ B",
        "",
        "A, B",
        "torch.randn(45, 3, 37), torch.randn(37, 29)",
        "computed",
    ),
]


@pytest.mark.parametrize(("body", "init", "args", "inputs", "words"), NEAR_MISSES)
def test_near_misses_are_declined(tmp_path, body, init, args, inputs, words):
    got = instantiate(write_task(tmp_path / "task.py", body, inputs, init, args=args))
    assert isinstance(got, str), f"accepted {body}"
    assert words in got, got


# -- correctness over whole search spaces (Triton interpreter) -------------------------------

# A DAG that reuses one value through most of the epilogue expressions the template writes.
_MANY_OPS = """
x = torch.matmul(A.T, B) + C
y = F.hardswish(x) - F.softplus(x, beta=2.0, threshold=3.0) + F.elu(x, 0.7)
y = torch.tanh(y) + F.selu(x) * 0.1 + F.relu6(x) * F.softsign(x) - torch.sigmoid(x)
return F.gelu(y) + F.silu(x) * torch.abs(x) + x.clamp(max=0.25) + F.hardsigmoid(x) ** 2
"""

# (id, body, init, args, inputs, shapes, variants); sizes avoid multiples of any block.
CHECKS = [
    (
        "linear_mul_leaky_relu",
        "return F.leaky_relu(self.fc(x) * 2.0, 0.1)",
        LINEAR,
        "x",
        "torch.randn(5, 7, 45)",
        ("torch.randn(3, 45)", "torch.randn(1, 2, 45)"),
        ["tiled"],
    ),
    (
        "matmul_div_gelu",
        "return F.gelu(torch.matmul(A, B) / 3.0)",
        "",
        *AB,
        ("torch.randn(1, 3), torch.randn(3, 70)", "torch.randn(70, 17), torch.randn(17, 1)"),
        ["tiled"],
    ),
    (
        "bmm_mish_mish",
        "return F.mish(F.mish(torch.bmm(A, B)))",
        "",
        "A, B",
        "torch.randn(3, 37, 45), torch.randn(3, 45, 29)",
        ("torch.randn(2, 5, 3), torch.randn(2, 3, 70)",),
        ["tiled"],
    ),
    (
        "split_k",
        "return torch.sigmoid(torch.mm(A, B) * self.s) - self.t",
        "self.s = nn.Parameter(torch.randn(7))\nself.t = nn.Parameter(torch.randn(1))",
        "A, B",
        "torch.randn(5, 67), torch.randn(67, 7)",
        ("torch.randn(3, 130), torch.randn(130, 7)", "torch.randn(1, 1), torch.randn(1, 7)"),
        ["tiled", "split_k"],
    ),
    (
        "transposed_residual_many_ops",
        _MANY_OPS,
        "",
        "A, B, C",
        "torch.randn(45, 37), torch.randn(45, 29), torch.randn(37, 29)",
        ("torch.randn(3, 1), torch.randn(3, 66), torch.randn(1, 66)",),
        ["tiled"],
    ),
    (
        "broadcast_batch",
        "return A @ B.transpose(-1, -2)",
        "",
        "A, B",
        "torch.randn(37, 45), torch.randn(3, 29, 45)",
        ("torch.randn(1, 3), torch.randn(2, 70, 3)",),
        ["tiled"],
    ),
    (
        "addmm_batchnorm_min",
        "y = self.bn(torch.addmm(self.b, x, self.w.t(), beta=0.5, alpha=2.0))\n"
        "return torch.min(y, self.c) - self.c",
        "self.w = nn.Parameter(torch.randn(29, 45) * 0.2)\nself.b = nn.Parameter(torch.randn(29))\n"
        "self.bn = nn.BatchNorm1d(29)\nself.c = nn.Parameter(torch.tensor(0.3))",
        "x",
        "torch.randn(37, 45)",
        ("torch.randn(1, 45)", "torch.randn(70, 45)"),
        ["tiled"],
    ),
    (
        "linear_4d_swish_fp16",
        "y = self.fc(x)\nreturn F.hardtanh(y * torch.sigmoid(y), -0.5, 1.5)",
        "self.fc = nn.Linear(45, 29).half()",
        "x",
        "torch.randn(2, 3, 5, 45, dtype=torch.float16)",
        ("torch.randn(1, 1, 1, 45, dtype=torch.float16)",),
        ["tiled"],
    ),
]

BF16 = (
    "linear_gelu_bf16",
    "return F.gelu(F.linear(x, self.w, self.b), approximate='tanh')",
    "self.w = nn.Parameter(torch.randn(29, 45, dtype=torch.bfloat16) * 0.2)\n"
    "self.b = nn.Parameter(torch.randn(29, dtype=torch.bfloat16))",
    "x",
    "torch.randn(37, 45, dtype=torch.bfloat16)",
    ("torch.randn(3, 45).bfloat16()",),
    ["tiled"],
)


def _run_check(task: Path, cand: Path) -> subprocess.CompletedProcess:
    # template_check widens bf16 tl.dot operands in the interpreter, as the evaluator does.
    cmd = [sys.executable, "-m", "tests.template_check", str(task), str(cand)]
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)


@pytest.fixture(scope="module")
def checks(tmp_path_factory):
    """Every check's candidates, written and started two at a time; by id: [(variant, run)]."""
    tmp = tmp_path_factory.mktemp("matmul_checks")
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=2)
    started: dict[str, list] = {}
    for cid, body, init, args, inputs, shapes, variants in [*CHECKS, BF16]:
        task = write_task(tmp / f"{cid}.py", body, inputs, init, shapes, args=args)
        cands = instantiate(task)
        assert isinstance(cands, list), f"{cid}: {cands}"
        assert [c.variant for c in cands] == variants
        started[cid] = []
        for c in cands:
            path = tmp / f"{cid}_{c.variant}.py"
            path.write_text(c.source)
            run = pool.submit(_run_check, task, path)
            started[cid].append((c.variant, path, run))
    yield started
    pool.shutdown(cancel_futures=True)


@pytest.mark.parametrize("cid", [c[0] for c in [*CHECKS, BF16]])
def test_every_schedule_is_correct(checks, cid):
    for variant, path, run in checks[cid]:
        proc = run.result()
        points = [line for line in proc.stdout.splitlines() if line.startswith("{")]
        failed = [line for line in points if '"ok": false' in line]
        assert proc.returncode == 0 and points and not failed, (
            f"{cid}/{variant}: {failed[:3] or proc.stderr[-2000:]}"
        )
        assert_valid(TemplateCandidate("matmul", variant, path.read_text()))


# -- the kernels also build for a real GPU (no GPU needed) -----------------------------------

_COMPILE = """
import importlib.util, sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

path, dtype, config = sys.argv[1], sys.argv[2], int(sys.argv[3])
spec = importlib.util.spec_from_file_location("candidate", path)
mod = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mod)
bm, bn, bk, gm, nw, ns = mod.CONFIGS[config]
blocks = {"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": gm}
for name, fn in vars(mod).items():
    if not name.endswith("_kernel"):
        continue
    sig, consts, attrs = {}, {}, {}
    for i, p in enumerate(fn.params):
        if p.is_constexpr:
            sig[p.name], consts[p.name] = "constexpr", blocks[p.name]
            continue
        ptr = "*fp32" if p.name == "ws_ptr" else dtype
        sig[p.name] = ptr if p.name.endswith("_ptr") else "i32"
        attrs[(i,)] = [["tt.divisibility", 16]]  # as Triton specialises large aligned shapes
    k = triton.compile(ASTSource(fn, sig, consts, attrs), target=GPUTarget("cuda", 90, 32),
                       options={"num_warps": nw, "num_stages": ns})
    print(name, "shared", k.metadata.shared, "wgmma" if "wgmma" in k.asm["ptx"] else "fma")
"""


@pytest.mark.slow
@pytest.mark.parametrize(
    ("cid", "variant", "dtype", "config", "unit"),
    [
        # The smallest tiles where ptxas is slow (big FMA kernels), the default where it is not.
        ("transposed_residual_many_ops", "tiled", "*fp32", -1, "fma"),
        ("split_k", "split_k", "*fp32", 0, "fma"),
        ("linear_gelu_bf16", "tiled", "*bf16", 0, "wgmma"),
    ],
)
def test_kernels_compile_for_sm90(checks, tmp_path, cid, variant, dtype, config, unit):
    pytest.importorskip("triton.backends.nvidia")
    (path,) = [p for v, p, _ in checks[cid] if v == variant]
    script = tmp_path / "compile.py"
    script.write_text(_COMPILE)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path / "cache")
    cmd = [sys.executable, str(script), str(path), dtype, str(config)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert lines and all(line.endswith(unit) or "reduce" in line for line in lines), lines


# -- on the CPU the map spreads the family (it declares no BLOCK or num_warps parameter) ------


def test_cpu_default_dims_read_the_templates_own_parameters(tmp_path):
    long_k = write_task(
        tmp_path / "long.py", "return A @ B", "torch.randn(5, 67), torch.randn(67, 7)", args="A, B"
    )
    spaces = [check_source(c.source, "c.py").search_space for c in instantiate(long_k)]
    assert default_dims("cpu", [None, *spaces]) == [
        "param:CONFIG=0/1/2/3/4/5/6/7",
        "param:SPLIT_K=4/8/16/32/64",
    ]


def test_a_cpu_run_keeps_more_than_one_matmul_elite(tmp_path):
    """``kernelmap run`` with the default dimensions: the reference and the tiled family's
    schedules land in different cells (with ``block_size,num_warps_param`` all shared one)."""
    task = write_task(
        tmp_path / "task.py",
        "return torch.relu(A @ B)",
        "torch.randn(16, 24), torch.randn(24, 20)",
        args="A, B",
    )
    env = dict(os.environ, KERNELMAP_DATA_DIR=str(tmp_path / "data"), KERNELMAP_DEVICE="cpu")
    env.pop("KERNELMAP_DATABASE_URL", None)
    cmd = [sys.executable, "-m", "services.cli.main", "run", str(task), "--budget", "5", "--json"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "template:matmul/tiled" in proc.stderr
    out = json.loads(proc.stdout)
    assert out["verdicts"] == {"OK": 5}, out
    assert out["elites"] > 1, out
    with sqlite3.connect(tmp_path / "data" / "kernelmap.db") as db:
        (config,) = db.execute("select config from runs where id = ?", (out["run_id"],)).fetchone()
    assert json.loads(config)["dims"] == "param:CONFIG=0/1/2/3/4/5/6/7"  # kept for a resume
