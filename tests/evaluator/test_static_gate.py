"""Tests for the static gate: each rule rejects a small hostile source, honest candidates pass."""

from __future__ import annotations

import pathlib
import textwrap

import pytest

from evaluator_worker.static_gate import GateReport, check_source

REPO = pathlib.Path(__file__).resolve().parents[2]


def _check(source: str) -> GateReport:
    return check_source(textwrap.dedent(source))


def _fired(report: GateReport, line: int, fragment: str) -> bool:
    """Whether some reason is on ``line`` and mentions ``fragment``."""
    return any(r.startswith(f"line {line}:") and fragment in r for r in report.reasons)


# --- honest candidates ------------------------------------------------------------------------

TRITON_SOFTMAX = '''
"""Triton row softmax; BLOCK and num_warps are injected by the evaluator from SEARCH_SPACE."""
import torch
import torch.nn as nn
import triton
import triton.language as tl

SEARCH_SPACE = {"BLOCK": [256, 512], "num_warps": [2, 4]}


@triton.jit
def softmax_kernel(out_ptr, in_ptr, stride, n_cols, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    for start in range(0, n_cols, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        x = tl.load(in_ptr + row * stride + cols, mask=cols < n_cols, other=-float("inf"))
        tl.store(out_ptr + row * stride + cols, x, mask=cols < n_cols)


@triton.autotune(configs=[triton.Config({"R": 1}, num_warps=4)], key=["n"])
@triton.jit
def scale_kernel(x_ptr, n, R: tl.constexpr):
    pass


class ModelNew(nn.Module):
    def __init__(self):
        super().__init__()
        self.block = BLOCK

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous()
        out = torch.empty_like(x)
        n_rows, n_cols = x.shape
        grid = lambda meta: (n_rows,)  # noqa: E731
        softmax_kernel[grid](out, x, x.stride(0), n_cols, BLOCK=BLOCK, num_warps=num_warps)
        softmax_kernel[(n_rows,)](out, x, x.stride(0), n_cols, BLOCK=BLOCK, num_warps=num_warps)
        if torch.backends.cuda.matmul.allow_tf32:
            print("tf32 is on")
        return out
'''

TORCH_PLAIN = """
import math
import os.path
import sys
import functools
import itertools
import typing
import dataclasses

import torch
import torch.nn as nn
import torch.nn.functional as F


class ModelNew(nn.Module):
    def __init__(self, dim: int = 1):
        super().__init__()
        self.dim = dim
        self.weight = nn.Parameter(torch.ones(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e = torch.exp(x - x.amax(dim=self.dim, keepdim=True))
        torch.cuda.synchronize() if torch.cuda.is_available() else None
        return F.relu(e / e.sum(dim=self.dim, keepdim=True)) * math.sqrt(1.0)


if __name__ == "__main__":
    print(sys.version, os.path.sep)
"""

CUPY_RELU = r'''
import cupy as cp
import numpy as np
import torch
import torch.nn as nn

code = r"""
extern "C" __global__ void relu(const float* x, float* y, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = x[i] > 0.f ? x[i] : 0.f;
}
"""
relu_kernel = cp.RawKernel(code, "relu")
module = cp.RawModule(code=code)


class ModelNew(nn.Module):
    def __init__(self):
        super().__init__()
        self.scale = cp.ElementwiseKernel("float32 x", "float32 y", "y = 2 * x", "scale")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.empty_like(x)
        n = x.numel()
        threads = 256
        relu_kernel(
            ((n + threads - 1) // threads,),
            (threads,),
            (cp.from_dlpack(x), cp.from_dlpack(y), np.int32(n)),
            stream=cp.cuda.Stream.null,
        )
        return y
'''

HONEST = [
    pytest.param(TRITON_SOFTMAX, id="triton-softmax"),
    pytest.param(TORCH_PLAIN, id="plain-pytorch"),
    pytest.param(CUPY_RELU, id="cupy-rawkernel"),
]


@pytest.mark.parametrize("source", HONEST)
def test_honest_candidates_pass(source: str) -> None:
    report = _check(source)
    assert report.reasons == []
    assert report.ok
    assert report.syntax_error is None


def test_triton_candidate_declares_kernels_and_search_space() -> None:
    report = _check(TRITON_SOFTMAX)
    assert report.uses_triton and not report.uses_cupy
    assert report.custom_kernels == ["softmax_kernel", "scale_kernel"]
    assert report.claims_custom_kernels
    assert report.search_space == {"BLOCK": [256, 512], "num_warps": [2, 4]}


def test_plain_pytorch_candidate_claims_nothing() -> None:
    report = _check(TORCH_PLAIN)
    assert not report.uses_triton and not report.uses_cupy
    assert report.custom_kernels == []
    assert not report.claims_custom_kernels
    assert report.search_space is None


def test_cupy_candidate_names_its_kernels() -> None:
    report = _check(CUPY_RELU)
    assert report.uses_cupy and not report.uses_triton
    assert report.custom_kernels == ["relu_kernel", "module", "self.scale"]
    assert report.claims_custom_kernels


def test_triton_kernels_found_through_from_imports() -> None:
    report = _check(
        """
        from triton import jit, heuristics
        import triton.language as tl

        @heuristics({"EVEN": lambda args: True})
        @jit
        def k(x_ptr, EVEN: tl.constexpr):
            pass
        """
    )
    assert report.ok and report.uses_triton
    assert report.custom_kernels == ["k"]


@pytest.mark.parametrize("name", ["triton_softmax.py", "torch_softmax.py"])
def test_shipped_examples_pass(name: str) -> None:
    path = REPO / "examples" / "softmax" / name
    if not path.exists():
        pytest.skip(f"{path} not present")
    report = check_source(path.read_text(), filename=str(path))
    assert report.ok, report.reasons


# --- rejected sources: (source, line of the violation, text the reason must contain) ----------

REJECTED = [
    # Catching errors.
    pytest.param(
        """
        def forward(x):
            try:
                return fast(x)
            except Exception:
                return ref(x)
        """,
        3,
        "try statement",
        id="try-except",
    ),
    pytest.param("try:\n    f()\nfinally:\n    g()\n", 1, "try statement", id="try-finally"),
    pytest.param(
        "try:\n    f()\nexcept* ValueError:\n    pass\n", 1, "try statement", id="try-star"
    ),
    pytest.param(
        "import contextlib\nwith contextlib.suppress(Exception):\n    f()\n",
        2,
        "contextlib.suppress",
        id="contextlib-suppress",
    ),
    pytest.param(
        "from contextlib import suppress as s\n", 1, "contextlib.suppress", id="suppress-import"
    ),
    pytest.param(
        "class Quiet:\n    def __exit__(self, *exc):\n        return True\n",
        2,
        "__exit__",
        id="swallowing-exit",
    ),
    # Subclassing the reference or torch.Tensor, tensor hooks.
    pytest.param("class ModelNew(Model):\n    pass\n", 1, "subclasses 'Model'", id="model"),
    pytest.param(
        "import task\nclass ModelNew(task.Model):\n    pass\n",
        2,
        "subclasses 'task.Model'",
        id="model-attr",
    ),
    pytest.param(
        "import torch\nclass T(torch.Tensor):\n    pass\n",
        2,
        "subclasses 'torch.Tensor'",
        id="tensor-subclass",
    ),
    pytest.param(
        "from torch import Tensor\nclass T(Tensor):\n    pass\n",
        2,
        "subclasses 'Tensor'",
        id="tensor-subclass-from",
    ),
    pytest.param(
        "import torch\ny = torch.Tensor._make_subclass(torch.Tensor, x)\n",
        2,
        "_make_subclass",
        id="make-subclass",
    ),
    pytest.param(
        "class T:\n    @classmethod\n    def __torch_function__(cls, f, t, a=(), k=None):\n"
        "        pass\n",
        3,
        "__torch_function__",
        id="torch-function",
    ),
    pytest.param("h = T.__torch_dispatch__\n", 1, "__torch_dispatch__", id="torch-dispatch"),
    # Banned builtins and getattr.
    *[
        pytest.param(f"x = {name}('1')\n", 1, f"uses '{name}'", id=f"builtin-{name}")
        for name in """exec eval compile __import__ globals locals vars setattr delattr breakpoint
        open""".split()
    ],
    pytest.param("f = eval\n", 1, "uses 'eval'", id="builtin-reference"),
    pytest.param("x = getattr(obj, name)\n", 1, "non-literal", id="getattr-non-literal"),
    pytest.param("g = getattr\n", 1, "getattr", id="getattr-reference"),
    pytest.param("x = getattr(f, '__globals__')\n", 1, "__globals__", id="getattr-dunder"),
    pytest.param("import os\ngetattr(os, '_exit')(0)\n", 2, "os._exit", id="getattr-os-exit"),
    pytest.param(
        "import torch\ns = getattr(torch.cuda, 'Stream')()\n",
        2,
        "torch.cuda.Stream",
        id="getattr-stream",
    ),
    pytest.param("C = type('C', (Model,), {})\n", 1, "type() with three", id="dynamic-class"),
    # Interpreter internals.
    *[
        pytest.param(f"x = {expr}\n", 1, attr, id=f"escape-{attr}")
        for expr, attr in [
            ("f.__globals__", "__globals__"),
            ("f.__code__", "__code__"),
            ("().__class__.__base__.__subclasses__()", "__subclasses__"),
            ("cls.__bases__", "__bases__"),
            ("cls.__mro__", "__mro__"),
            ("print.__self__", "__self__"),
            ("frame.f_globals", "f_globals"),
            ("frame.f_back", "f_back"),
            ("gen.gi_frame", "gi_frame"),
            ("__builtins__", "__builtins__"),
        ]
    ],
    pytest.param(
        "import operator\ng = operator.attrgetter('__globals__')\n",
        2,
        "'__globals__'",
        id="escape-name-as-string",
    ),
    pytest.param("import time\nd = time.__dict__\n", 2, "'time.__dict__'", id="module-dict"),
    pytest.param("obj.__dict__ = {}\n", 1, "assigns to '.__dict__'", id="dict-assign"),
    pytest.param("obj.__dict__['f'] = g\n", 1, "__dict__", id="dict-item-assign"),
    pytest.param("obj.__dict__.update(f=g)\n", 1, "__dict__.update", id="dict-update"),
    pytest.param("out.__class__ = Fake\n", 1, "assigns to '.__class__'", id="class-assign"),
    # sys and os escapes, also through aliases and from-imports.
    *[
        pytest.param(f"import {mod}\n{mod}.{attr}{tail}\n", 2, shown, id=f"{mod}-{attr}")
        for mod, attr, tail, shown in [
            ("sys", "modules", "['time']", "sys.modules"),
            ("sys", "_getframe", "(1)", "sys._getframe"),
            ("sys", "settrace", "(f)", "sys.settrace"),
            ("sys", "setprofile", "(f)", "sys.setprofile"),
            ("sys", "exit", "(0)", "sys.exit"),
            ("os", "_exit", "(0)", "os._exit"),
            ("os", "kill", "(1, 9)", "os.kill"),
            ("os", "fork", "()", "os.fork"),
            ("os", "system", "('ls')", "os.system"),
            ("os", "execv", "('/bin/sh', [])", "os.execv"),
            ("os", "spawnl", "(0, 'x')", "os.spawnl"),
            ("os", "popen", "('ls')", "os.popen"),
            ("os", "putenv", "('A', '1')", "os.putenv"),
        ]
    ],
    pytest.param(
        "import os\nprint('speedup: 100x')\nos._exit(0)\n", 3, "os._exit", id="exit-at-import"
    ),
    pytest.param("from os import system as run\n", 1, "os.system", id="from-os-system"),
    pytest.param("import sys as s\nf = s._getframe\n", 2, "sys._getframe", id="sys-alias"),
    pytest.param("import os\nos.environ['A'] = '1'\n", 2, "os.environ", id="environ-item"),
    pytest.param("import os\nos.environ.update(A='1')\n", 2, "os.environ", id="environ-update"),
    pytest.param("import os\nos.environ = {}\n", 2, "os.environ", id="environ-assign"),
    pytest.param("from os import *\n", 1, "import *", id="star-import"),
    # Patching imported modules: assignment, augmented, annotated, del; aliases.
    *[
        pytest.param(source, line, shown, id=f"patch-{i}")
        for i, (source, line, shown) in enumerate(
            [
                (
                    "import torch\ntorch.cuda.Event.elapsed_time = lambda *a: 0.001\n",
                    2,
                    "'torch.cuda.Event.elapsed_time'",
                ),
                ("import time\ntime.perf_counter = lambda: 0.0\n", 2, "'time.perf_counter'"),
                ("import time as t\nt.perf_counter = f\n", 2, "'time.perf_counter'"),
                ("import time as t\nt.time = f\n", 2, "'time.time'"),
                (
                    "import torch\ntorch.backends.cuda.matmul.allow_tf32 = True\n",
                    2,
                    "'torch.backends.cuda.matmul.allow_tf32'",
                ),
                (
                    "import torch.nn.functional as F\nF.softmax = f\n",
                    2,
                    "'torch.nn.functional.softmax'",
                ),
                ("import torch as th\nth.softmax = f\n", 2, "'torch.softmax'"),
                ("from torch.cuda import Event\nEvent.elapsed_time = f\n", 2, "Event.elapsed"),
                ("from torch import cuda\ncuda.synchronize = f\n", 2, "'torch.cuda.synchronize'"),
                ("import torch\ntorch.x += 1\n", 2, "'torch.x'"),
                ("import time\ntime.perf_counter: object = f\n", 2, "'time.perf_counter'"),
                ("import torch\ndel torch.cuda.synchronize\n", 2, "deletes 'torch.cuda"),
                ("import triton\ntriton.testing.do_bench = f\n", 2, "'triton.testing.do_bench'"),
                ("import math\nmath.pi = 3\n", 2, "'math.pi'"),
                ("import numpy as np\nnp.allclose = f\n", 2, "'numpy.allclose'"),
                ("import cupy as cp\ncp.asarray = f\n", 2, "'cupy.asarray'"),
                ("import sys\nsys.stdout = f\n", 2, "'sys.stdout'"),
                ("def patch():\n    time.sleep = f\n", 2, "'time.sleep'"),
            ]
        )
    ],
    # Precision, determinism and RNG settings.
    *[
        pytest.param(f"import torch\n{call}\n", 2, shown, id=f"setting-{shown}")
        for call, shown in [
            ("torch.set_float32_matmul_precision('medium')", "torch.set_float32_matmul_precision"),
            ("torch.backends.cuda.enable_flash_sdp(False)", "torch.backends.cuda.enable_flash"),
            ("torch.set_flush_denormal(True)", "torch.set_flush_denormal"),
            ("torch.use_deterministic_algorithms(False)", "torch.use_deterministic_algorithms"),
            ("torch.set_default_dtype(torch.float16)", "torch.set_default_dtype"),
            ("torch.set_default_device('cuda')", "torch.set_default_device"),
            ("torch.manual_seed(0)", "torch.manual_seed"),
            ("torch.cuda.manual_seed_all(0)", "torch.cuda.manual_seed_all"),
            ("torch.seed()", "torch.seed"),
            ("torch.set_rng_state(s)", "torch.set_rng_state"),
            ("torch.random.fork_rng()", "torch.random"),
        ]
    ],
    # Streams, graphs and the allocator.
    *[
        pytest.param(f"import torch\nimport cupy\n{call}\n", 3, shown, id=f"stream-{shown}")
        for call, shown in [
            ("s = torch.cuda.Stream()", "torch.cuda.Stream"),
            ("with torch.cuda.stream(s):\n    pass", "torch.cuda.stream"),
            ("s = torch.cuda.ExternalStream(p)", "torch.cuda.ExternalStream"),
            ("torch.cuda.set_stream(s)", "torch.cuda.set_stream"),
            ("s = torch.Stream()", "torch.Stream"),
            ("s = cupy.cuda.Stream()", "cupy.cuda.Stream"),
            ("g = torch.cuda.CUDAGraph()", "torch.cuda.CUDAGraph"),
            ("with torch.cuda.graph(g):\n    pass", "torch.cuda.graph"),
            ("torch.cuda.set_per_process_memory_fraction(0.5)", "set_per_process_memory"),
            ("torch.cuda.empty_cache()", "torch.cuda.empty_cache"),
            ("torch.cuda.memory.empty_cache()", "torch.cuda.memory"),
            ("p = torch.cuda.caching_allocator_alloc(64)", "torch.cuda.caching_allocator_alloc"),
        ]
    ],
    pytest.param(
        "import cupy as cp\ns = cp.cuda.Stream()\n", 2, "cupy.cuda.Stream", id="cp-stream"
    ),
    pytest.param(
        "import torch as th\ns = th.cuda.Stream()\n", 2, "torch.cuda.Stream", id="th-stream"
    ),
    pytest.param("from torch.cuda import Stream\n", 1, "torch.cuda.Stream", id="from-stream"),
    # Persisting-L2 / access-policy APIs and timer reads in CUDA source strings.
    *[
        pytest.param(
            f'import cupy as cp\nk = cp.RawKernel(r"""\n  {token}(...);\n""", "k")\n',
            2,
            token,
            id=f"cuda-{token}",
        )
        for token in """cudaStreamSetAttribute accessPolicyWindow cudaLimitPersistingL2CacheSize
        cudaDeviceSetLimit hitProp cudaAccessPropertyPersisting""".split()
    ],
    pytest.param(
        'src = """asm volatile("mov.u64 %0, %globaltimer;" : "=l"(t));"""\n',
        1,
        "%globaltimer",
        id="asm-globaltimer",
    ),
    pytest.param(
        'src = "asm(\\"mov.u64 %0, %clock64;\\" : \\"=l\\"(t));"\n', 1, "%clock", id="asm-clock"
    ),
    # A SEARCH_SPACE the search cannot read without running the candidate.
    pytest.param("SEARCH_SPACE = dict(BLOCK=[128])\n", 1, "SEARCH_SPACE", id="search-space-call"),
]


@pytest.mark.parametrize(("source", "line", "fragment"), REJECTED)
def test_rule_rejects(source: str, line: int, fragment: str) -> None:
    report = _check(source)
    assert not report.ok
    assert report.syntax_error is None
    assert _fired(report, line, fragment), report.reasons


BANNED_MODULES = """ctypes ctypes.util gc inspect subprocess multiprocessing threading _thread
concurrent.futures asyncio signal socket ssl http.client urllib.request requests httpx importlib
pickle marshal shutil builtins code codeop pty resource mmap faulthandler atexit weakref types
torch.multiprocessing torch.utils.cpp_extension""".split()


@pytest.mark.parametrize("module", BANNED_MODULES)
def test_banned_module_imports(module: str) -> None:
    for source in (f"import {module}\n", f"import {module} as m\n", f"from {module} import x\n"):
        report = check_source(source)
        assert not report.ok
        assert _fired(report, 1, f"imports '{module}"), report.reasons


@pytest.mark.parametrize(
    "source",
    [
        "from torch.utils import cpp_extension\n",
        "from torch import multiprocessing as mp\n",
        "from concurrent.futures import ThreadPoolExecutor\n",
    ],
)
def test_banned_submodule_through_from_import(source: str) -> None:
    report = check_source(source)
    assert not report.ok and _fired(report, 1, "imports"), report.reasons


def test_banned_module_reached_as_attribute() -> None:
    # torch imports torch.multiprocessing itself, so no import statement is needed to reach it.
    report = check_source("import torch\ntorch.multiprocessing.spawn(f)\n")
    assert _fired(report, 2, "torch.multiprocessing")


@pytest.mark.parametrize(
    "module",
    """sys os os.path math time torch triton triton.language cupy numpy functools typing
    dataclasses itertools""".split(),
)
def test_allowed_imports(module: str) -> None:
    assert check_source(f"import {module}\n").ok


# --- the cases the brief names, spelled out -----------------------------------------------------


def test_background_thread_is_rejected() -> None:
    report = check_source("import threading\nthreading.Thread(target=fill).start()\n")
    assert _fired(report, 1, "imports 'threading'")
    assert _fired(report, 2, "threading")


def test_gc_scan_is_rejected() -> None:
    report = check_source("import gc\nhits = [o for o in gc.get_objects()]\n")
    assert _fired(report, 1, "imports 'gc'")


def test_network_import_is_rejected() -> None:
    report = check_source("import socket\n")
    assert report.reasons == [
        "line 1: imports 'socket' (forbidden: candidates may not use socket; "
        "nothing may leave the sandbox)"
    ]


def test_rebinding_a_from_imported_timer_is_allowed() -> None:
    # Only the candidate's own namespace changes; time.perf_counter itself is untouched.
    report = check_source("from time import perf_counter\nperf_counter = lambda: 0\n")
    assert report.ok, report.reasons


def test_candidate_names_that_shadow_module_names_are_not_flagged() -> None:
    # `code` and `types` are banned modules, but here they are plain variables.
    report = check_source(
        "code = 'x'\ncode.upper()\ntypes = [1]\ntypes.append(2)\nself.x = self.__dict__\n"
    )
    assert report.ok, report.reasons


def test_literal_getattr_of_a_normal_attribute_is_allowed() -> None:
    assert check_source("import triton\nb = getattr(triton, 'next_power_of_2')(5)\n").ok


def test_cupy_default_stream_is_allowed() -> None:
    assert check_source("import cupy as cp\ns = cp.cuda.Stream.null\n").ok


def test_reasons_are_deduplicated() -> None:
    report = check_source("import os\nos._exit(0); os._exit(1)\n")
    assert len(report.reasons) == 1


def test_every_violation_is_reported() -> None:
    report = check_source(
        "import ctypes\nimport time\ntime.time = f\ntry:\n    pass\nfinally:\n    pass\n"
    )
    assert [r.split(":")[0] for r in report.reasons] == ["line 1", "line 3", "line 4"]


def test_syntax_error_names_the_line() -> None:
    report = check_source("import torch\n\ndef forward(x)\n    return x\n")
    assert not report.ok
    assert report.syntax_error is not None
    assert report.syntax_error.startswith("line 3:")
    assert report.reasons == [report.syntax_error]
    assert not report.uses_triton and report.custom_kernels == [] and report.search_space is None


def test_null_byte_is_a_syntax_error() -> None:
    report = check_source("x = 1\0\n")
    assert not report.ok and report.syntax_error is not None


def test_search_space_annotated_assignment() -> None:
    report = check_source("SEARCH_SPACE: dict = {'num_warps': [4, 8]}\n")
    assert report.ok and report.search_space == {"num_warps": [4, 8]}
