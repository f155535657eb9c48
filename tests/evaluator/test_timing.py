"""Summary statistics of timed samples."""

from __future__ import annotations

import pytest

from evaluator_worker.timing import stats


def test_median_iqr_and_ci():
    s = stats([float(x) for x in range(1, 102)])  # 1..101
    assert s.median_ms == 51 and s.n == 101 and s.min_ms == 1
    assert s.iqr_ms == pytest.approx(50)
    lo, hi = s.ci95_ms
    assert lo < 51 < hi and hi - lo < 30
    assert len(s.samples_ms) == 101


def test_outliers_do_not_move_the_median():
    s = stats([1.0] * 99 + [1000.0])
    assert s.median_ms == 1.0 and s.mean_ms > 10


def test_no_samples_is_an_error():
    with pytest.raises(ValueError):
        stats([])
