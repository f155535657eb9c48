"""The evaluator's memory discipline and failure paths, on the CPU.

What a user would see go wrong on a GPU host otherwise: a task too large for the GPU ends as
one ``OutOfMemoryError`` per candidate; a hung baseline fails an honest candidate; a CuPy
output the judge cannot map kills the candidate process; honest microsecond kernels become
``ASYNC_WORK`` on a host with a slow sync. Each behaviour is checked here without a GPU.
"""

from __future__ import annotations

import os
import stat
import textwrap
import time

import pytest
import torch

from evaluator_worker import compare, inputs, memory, protocol
from evaluator_worker.config import EvalConfig
from evaluator_worker.crosschecks import score
from evaluator_worker.errors import TaskError
from evaluator_worker.judge import Evaluator
from evaluator_worker.result import EvalResult, Timing
from evaluator_worker.task import load_task
from evaluator_worker.timing import stats
from evaluator_worker.verdict import Verdict

RELU_TASK = """
import torch
import torch.nn as nn


class Model(nn.Module):
    def forward(self, x):
        return torch.relu(x)


def get_inputs():
    return [torch.randn({rows}, {cols})]


def get_init_inputs():
    return []
"""


def _task(tmp_path, rows=64, cols=256, name="task.py"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(RELU_TASK.format(rows=rows, cols=cols)))
    return path


def _reference_candidate(task_path, tmp_path):
    cand = tmp_path / "cand.py"
    cand.write_text(task_path.read_text().replace("class Model(", "class ModelNew("))
    return cand


# -- comparisons in chunks ----------------------------------------------------------------------


def test_chunked_comparison_finds_the_first_bad_element_across_chunks(monkeypatch):
    monkeypatch.setattr(compare, "CHUNK", 1000)
    y64 = torch.randn(10, 450, dtype=torch.float64)
    y = y64.float()
    exp = compare.expect(y64, y)
    assert compare.compare_expected(y.clone(), exp, compare.Tolerance(1e-4, 1e-4)).ok
    bad = y.clone()
    bad[7, 123] += 1.0  # flat index 3273: the fourth chunk
    bad[9, 1] = float("nan")
    c = compare.compare_expected(bad, exp, compare.Tolerance(1e-4, 1e-4))
    assert not c.ok and "NaN positions differ" in c.message and "(9, 1)" in c.message
    bad[9, 1] = y[9, 1]
    c = compare.compare_expected(bad, exp, compare.Tolerance(1e-4, 1e-4))
    assert not c.ok and "1 of 4500 elements" in c.message and "(7, 123)" in c.message


def test_comparison_never_writes_the_tensors_it_compares():
    y64 = torch.randn(3000, dtype=torch.float64)
    y = y64.clone()  # a float64 task: chunks are views, not copies
    before = (y64.clone(), y.clone())
    compare.compare_expected(y, compare.expect(y64, y64.clone()), compare.Tolerance(1e-7, 1e-7))
    assert torch.equal(y64, before[0]) and torch.equal(y, before[1])


def test_heavy_tailed_inputs_are_the_same_in_judge_and_child_and_keep_their_outliers():
    mod = type("M", (), {"get_inputs": staticmethod(lambda: [torch.randn(2000, 1100)])})
    a = inputs.generate(mod, inputs.InputSpec(7, "heavy_tailed"), torch.device("cpu"))[0]
    b = inputs.generate(mod, inputs.InputSpec(7, "heavy_tailed"), torch.device("cpu"))[0]
    assert torch.equal(a, b)
    assert float(a.abs().max()) > 50.0  # outliers present beyond the chunk boundary
    assert a.shape == (2000, 1100) and a.dtype == torch.float32


# -- the wire: no copies, and bytes where CUDA IPC fails ---------------------------------------


def test_received_tensors_are_built_on_the_received_buffer_itself():
    blobs: list = []
    body = protocol.encode({"x": torch.arange(10, dtype=torch.float32)}, blobs)
    received = [bytearray(bytes(b)) for b in blobs]
    out = protocol.decode(body, received)
    out["x"][0] = 42.0  # shares memory with the received bytearray: no second copy
    assert received[0][:4] == torch.tensor([42.0]).numpy().tobytes()


class _PretendCuda(torch.Tensor):
    """A CPU tensor that says it is on CUDA, so sharing it over CUDA IPC fails."""

    @property
    def is_cuda(self):  # noqa: D401
        return True


def test_a_tensor_that_cannot_be_shared_over_cuda_ipc_travels_as_bytes():
    protocol.IPC_FALLBACKS.clear()
    t = torch.Tensor._make_subclass(_PretendCuda, torch.arange(6, dtype=torch.float32))
    blobs: list = []
    body = protocol.encode([t], blobs, cuda_ipc=True)
    assert "__tensor__" in body[0] and "__cuda__" not in body[0]
    assert len(protocol.IPC_FALLBACKS) == 1
    back = protocol.decode(body, [bytearray(bytes(b)) for b in blobs])
    assert torch.equal(back[0], torch.arange(6, dtype=torch.float32))


# -- what a task needs, refused once ----------------------------------------------------------


def test_large_tasks_are_validated_on_the_meta_device_where_no_gpu_work_should_happen(tmp_path):
    path = _task(tmp_path, rows=65536, cols=65536)  # 16 GiB of fp32 input
    t0 = time.monotonic()
    task = load_task(path, "cpu", check_values="auto")
    assert time.monotonic() - t0 < 10
    assert not task.values_checked
    assert task.input_bytes == task.output_bytes == 65536 * 65536 * 4
    small = load_task(_task(tmp_path, name="small.py"), "cpu", check_values="auto")
    assert small.values_checked


def test_a_task_that_cannot_fit_is_refused_once_with_the_figures(tmp_path, monkeypatch):
    path = _task(tmp_path, rows=4096, cols=4096)
    calls = []
    monkeypatch.setattr(memory, "free_bytes", lambda device: calls.append(1) or 512 << 20)
    with Evaluator(EvalConfig(device="cpu")) as ev:
        with pytest.raises(TaskError) as first:
            ev.evaluate(path, _reference_candidate(path, tmp_path))
        msg = str(first.value)
        assert "does not fit" in msg and "GiB free" in msg and "0.5 GiB free" in msg
        need = ev.need(ev_task := load_task(path, "cpu", check_values=False))
        assert need is not None and need.peak_bytes > 4 * ev_task.input_bytes
        with pytest.raises(TaskError) as second:
            ev.evaluate(path, _reference_candidate(path, tmp_path))
        assert str(second.value) == msg
    assert len(calls) == 1  # the second candidate was refused from the cache


# -- failure paths ------------------------------------------------------------------------------

HANGING_BASELINE = """
import time

import torch
import torch.nn as nn

CALLS = [0]


class Model(nn.Module):
    def forward(self, x):
        # The judge calls the reference fewer than 30 times (validation, trials, re-check);
        # the baseline process's warm-up and samples go past that, and hang.
        CALLS[0] += 1
        if CALLS[0] > 30:
            time.sleep(600)
        return torch.relu(x)


def get_inputs():
    return [torch.randn(64, 128)]


def get_init_inputs():
    return []
"""

HONEST_CANDIDATE = """
import torch
import torch.nn as nn


class ModelNew(nn.Module):
    def forward(self, x):
        return torch.relu(x)
"""


@pytest.mark.slow
def test_a_hung_baseline_loses_only_its_own_figure(tmp_path):
    task = tmp_path / "task.py"
    task.write_text(HANGING_BASELINE)
    cand = tmp_path / "cand.py"
    cand.write_text(HONEST_CANDIDATE)
    with Evaluator(EvalConfig(device="cpu", timeout_s=8.0)) as ev:
        res = ev.evaluate(task, cand)
    assert res.verdict == Verdict.OK, res.messages
    assert res.timing is not None and res.timing.candidate.n >= 100
    assert res.timing.eager is None and res.speedup_vs_eager is None
    assert any("eager baseline failed and is left out" in m for m in res.messages), res.messages
    mem = res.features["memory"]
    assert mem["candidate"]["rss_peak_bytes"] > 0  # every live process reports its peak


def test_sync_overhead_of_the_host_is_not_taken_for_async_work():
    event = stats([0.004] * 100)
    synced = stats([0.050] * 50)
    slow_host = Timing("cuda", "cuda-events", event, stats([0.01] * 100), None, synced)
    res = EvalResult(Verdict.OK)
    score(res, slow_host, 10.0)
    assert res.verdict == Verdict.ASYNC_WORK  # without knowing the host's overhead
    slow_host.sync_overhead_ms = 0.046
    res = EvalResult(Verdict.OK)
    scored = score(res, slow_host, 10.0)
    assert res.verdict == Verdict.OK and scored.median_ms == pytest.approx(0.004)
    hidden = Timing("cuda", "cuda-events", event, stats([0.5] * 100), None, stats([0.3] * 50))
    hidden.sync_overhead_ms = 0.046
    res = EvalResult(Verdict.OK)
    scored = score(res, hidden, 10.0)
    assert res.verdict == Verdict.ASYNC_WORK and scored.median_ms == pytest.approx(0.254)


# -- Triton's shared module layer ----------------------------------------------------------


def test_shared_triton_layer_serves_modules_but_never_kernels_and_is_never_written(
    tmp_path, monkeypatch
):
    from evaluator_worker.triton_cache import SHARED_ENV, LayeredCacheManager, seal

    shared, private = tmp_path / "shared", tmp_path / "private"
    (shared / "k1").mkdir(parents=True)
    (shared / "k1" / "cuda_utils.so").write_bytes(b"built once")
    (shared / "k1" / "__grp__kernel.json").write_text('{"child_paths": {}}')
    assert seal(shared) == 2
    assert not os.stat(shared / "k1" / "cuda_utils.so").st_mode & stat.S_IWUSR
    monkeypatch.setenv("TRITON_CACHE_DIR", str(private))
    monkeypatch.setenv(SHARED_ENV, str(shared))
    m = LayeredCacheManager("k1")
    assert m.get_file("cuda_utils.so") == str(shared / "k1" / "cuda_utils.so")
    assert m.get_group("kernel.json") is None  # kernels stay private per candidate
    written = m.put(b"mine", "launcher.so")
    assert written.startswith(str(private))
    assert m.get_file("launcher.so") == written
