"""The GPU verdicts' logic on synthetic timings and traces (no GPU needed)."""

from __future__ import annotations

from evaluator_worker import crosschecks
from evaluator_worker.result import EvalResult, Stats, Timing
from evaluator_worker.timing import stats
from evaluator_worker.verdict import Verdict


def _s(ms: float) -> Stats:
    return stats([ms * (1 + 0.001 * i) for i in range(100)])


def _timing(
    cand: float, eager: float = 1.0, compile_: float | None = 0.8, synced: float | None = None
) -> Timing:
    return Timing(
        "cuda",
        "cuda-events+l2-flush",
        _s(cand),
        _s(eager),
        _s(compile_) if compile_ else None,
        _s(synced) if synced else None,
    )


def test_speedups_against_both_baselines():
    res = EvalResult(Verdict.OK)
    scored = crosschecks.score(res, _timing(0.5), 10.0)
    assert res.verdict == Verdict.OK and scored.median_ms == _s(0.5).median_ms
    assert abs(res.speedup_vs_eager - 2.0) < 0.01 and abs(res.speedup_vs_compile - 1.6) < 0.01


def test_work_left_running_is_async_and_scored_at_the_synced_time():
    res = EvalResult(Verdict.OK)
    scored = crosschecks.score(res, _timing(0.1, synced=0.9), 10.0)
    assert res.verdict == Verdict.ASYNC_WORK
    assert abs(res.speedup_vs_eager - 1 / 0.9) < 0.01  # not the 10x the events claimed
    assert scored.median_ms == _s(0.9).median_ms


def test_a_small_sync_overhead_is_not_async_work():
    res = EvalResult(Verdict.OK)
    crosschecks.score(res, _timing(0.005, eager=0.01, synced=0.015), 10.0)  # 10 us of sync
    assert res.verdict == Verdict.OK


def test_over_ten_times_eager_is_quarantined():
    res = EvalResult(Verdict.OK)
    crosschecks.score(res, _timing(0.05), 10.0)
    assert res.verdict == Verdict.QUARANTINE and "independent" in res.messages[-1]


def test_kernels_on_another_stream_are_async_work():
    res = EvalResult(Verdict.OK)
    crosschecks.check_profile(
        res, {"side_stream_kernels": 2, "own_us": 5.0, "library_us": 0.0}, ["softmax_kernel"]
    )
    assert res.verdict == Verdict.ASYNC_WORK


def test_custom_kernels_that_hide_a_library_call_are_baseline_wrap():
    res = EvalResult(Verdict.OK)
    prof = {"side_stream_kernels": 0, "own_us": 1.0, "library_us": 99.0}
    crosschecks.check_profile(res, prof, ["noop_kernel"])
    assert res.verdict == Verdict.BASELINE_WRAP and "99%" in res.messages[-1]
    honest = EvalResult(Verdict.OK)
    crosschecks.check_profile(honest, prof, [])  # plain PyTorch claims no custom kernels
    assert honest.verdict == Verdict.OK


def test_faster_than_the_floor_is_impossible():
    res = EvalResult(Verdict.OK)
    crosschecks.check_floor(res, _s(1.0), floor_ms=2.0, basis="memory", margin=0.9)
    assert res.verdict == Verdict.IMPOSSIBLE and res.features["floor_fraction"] > 1.9
    ok = EvalResult(Verdict.OK)
    crosschecks.check_floor(ok, _s(2.1), floor_ms=2.0, basis="memory", margin=0.9)
    assert ok.verdict == Verdict.OK and 0.9 < ok.features["floor_fraction"] < 1.0


def test_features_from_kernels_and_trace():
    feats = {
        "triton": [
            {
                "kernel": "k",
                "n_regs": 40,
                "n_spills": 0,
                "shared": 1024,
                "num_warps": 8,
                "num_stages": 3,
                "tensor_cores": True,
                "vector_load_v4": False,
            }
        ],
        "cupy": [],
    }
    out = crosschecks.derive_features(
        feats, {"kernel_count": 2, "kernels": [], "own_us": 3.0, "library_us": 1.0}
    )
    assert out["n_regs"] == 40 and out["tensor_cores"] is True and out["kernel_count"] == 2
