"""Statistics: histogram accuracy, block bootstrap, warm-up cut, and interval coverage by simulation."""

from __future__ import annotations

import math

import numpy as np
import pytest
from analysis_fixtures import COVERAGE, SMALL
from scipy.signal import lfilter

from gateload.analysis.metrics import analyze_run
from gateload.analysis.stats import (
    Estimate,
    block_hist,
    block_weights,
    bucket_index,
    hist_quantiles,
    interval_method,
    optimal_block_length,
    pooled,
    ratio,
)
from gateload.analysis.steady import mser, steady_windows
from gateload.analysis.synthetic import build_run, truth_quantile, truth_throughput


def ar1(rng: np.random.Generator, n: int, phi: float) -> np.ndarray:
    return lfilter([1.0], [1.0, -phi], rng.normal(0, 1, n))


def test_histogram_quantiles_within_a_quarter_percent() -> None:
    rng = np.random.default_rng(1)
    x = rng.lognormal(3.0, 1.2, 200_000)
    hist = block_hist(np.zeros(len(x), dtype=np.int64), bucket_index(x), 1)
    qs = [0.5, 0.9, 0.95, 0.99, 0.999]
    approx = hist_quantiles(hist.values, hist.total(), qs)
    exact = np.quantile(x, qs)
    assert np.max(np.abs(approx / exact - 1)) < 0.0025


def test_block_weights_draw_whole_windows_of_consecutive_blocks() -> None:
    w = block_weights(50, 5, 200, np.random.default_rng(0))
    assert w.shape == (200, 50)
    assert np.all(w.sum(axis=1) == 50)
    assert w.mean() == pytest.approx(1.0, abs=0.05)  # every block equally likely


def test_block_length_grows_with_autocorrelation() -> None:
    rng = np.random.default_rng(2)
    assert optimal_block_length(rng.normal(size=400)) <= 2
    assert optimal_block_length(ar1(rng, 400, 0.9)) >= 6


def test_mser_cuts_a_known_warmup() -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(0, 0.1, 500)
    x[:100] += np.linspace(1.5, 0.0, 100)  # a transient over the first 20 %
    cut, ok = mser(x)
    assert ok
    assert 60 <= cut <= 110


def test_mser_keeps_a_stationary_series_and_rejects_a_trend() -> None:
    rng = np.random.default_rng(4)
    cut, ok = mser(rng.normal(0, 0.1, 500))
    assert ok and cut <= 25
    _, ok = mser(np.linspace(0, 3, 500) + rng.normal(0, 0.1, 500))
    assert not ok


def test_steady_windows_cut_the_ramp_and_warmup() -> None:
    run = build_run(SMALL.with_(warmup_factor=4.0, warmup_s=4.0, seed=5))
    windows = steady_windows(run)
    assert [w.users for w in windows] == [10, 30, 60]
    for w in windows:
        assert w.ramp_s == pytest.approx(2.0, abs=0.2)
        assert w.steady_start >= w.start + 2.0
        assert w.duration > 10.0


def test_interval_coverage_by_simulation() -> None:
    """Nominal 95 % intervals of p95 and throughput cover the truth in >= 90 % of 150 autocorrelated runs."""
    spec = COVERAGE
    truth_p95 = truth_quantile(spec, "SSH exec", 20, 0.95)
    truth_x = truth_throughput(spec, 20)
    hits_p95 = hits_x = 0
    n = 150
    for seed in range(n):
        st = analyze_run(build_run(spec.with_(seed=seed)), n_boot=400).steps[0]
        q = st.ops["SSH exec"].q["p95"]
        hits_p95 += q.lo <= truth_p95 <= q.hi
        hits_x += st.throughput.lo <= truth_x <= st.throughput.hi
    assert hits_p95 / n >= 0.90, hits_p95
    assert hits_x / n >= 0.90, hits_x
    # and not trivially: the intervals are not absurdly wide
    assert (q.hi - q.lo) / q.value < 0.5


def test_ratio_interval_coverage_by_simulation() -> None:
    """The after/before p95 ratio (independent runs, known shift 0.8) is covered in >= 90 % of 100 pairs."""
    hits = 0
    n = 100
    for seed in range(n):
        b = analyze_run(build_run(COVERAGE.with_(seed=seed)), n_boot=400).steps[0]
        a = analyze_run(build_run(COVERAGE.with_(seed=10_000 + seed, latency_scale=0.8)), n_boot=400).steps[0]
        r = ratio([a.ops["SSH exec"].q["p95"]], [b.ops["SSH exec"].q["p95"]], 0.95)
        hits += r.lo <= 0.8 <= r.hi
    assert hits / n >= 0.90, hits


def test_replicates_use_between_run_variance() -> None:
    rng = np.random.default_rng(6)
    before = [Estimate(v) for v in rng.normal(100, 5, 4)]
    after = [Estimate(v) for v in rng.normal(150, 5, 4)]
    r = ratio(after, before, 0.95)
    assert r.lo < 1.5 < r.hi
    assert r.lo > 1.2  # a clear gain stays clear
    assert "between-run" in interval_method(4, 4)
    assert "bootstrap" in interval_method(2, 4)
    p = pooled(before, 0.95)
    assert p.lo < p.value < p.hi and p.df == 3


def test_two_replicates_average_their_bootstraps() -> None:
    rng = np.random.default_rng(7)
    e1 = Estimate(10.0, boot=rng.normal(10, 1, 500), df=20)
    e2 = Estimate(12.0, boot=rng.normal(12, 1, 500), df=20)
    p = pooled([e1, e2], 0.95)
    assert p.value == pytest.approx(11.0)
    # averaging two independent runs shrinks the spread by about sqrt(2)
    half = (p.hi - p.lo) / 2
    assert half == pytest.approx(1.96 * math.sqrt(0.5) * 1.05, rel=0.2)
