"""Statistics: histograms, block bootstrap, warm-up and stop cuts, and interval coverage by simulation."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from analysis_fixtures import COVERAGE, SMALL
from scipy.signal import lfilter

from gateload.analysis.catalogue import Catalogue, Operation
from gateload.analysis.metrics import analyze_run
from gateload.analysis.samples import Samples, Step
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


@dataclass
class _Typed:
    """A run as the analysis reads it (analysis.samples.RunData), made of paced typing bursts."""

    path: Path
    samples: Samples
    steps: list[Step]
    catalogue: Catalogue


def _typing_run(
    burst: bool, stop: float = 60.0, recorded_by: float | None = None
) -> tuple[_Typed, np.ndarray]:
    """20 users typing bursts of 12 keys at 150 ms (10 ms each), 1-3 s apart, in two 30 s steps. A burst
    is recorded only if it ended by ``recorded_by`` (the stop: in-flight bursts are lost, as in the
    harness); returns the run and every key's start, recorded or not."""
    rng = np.random.default_rng(7)
    starts, intended, users = [], [], []
    for u in range(20):
        t = rng.uniform(0, 2)
        while t < stop:
            keys = t + 0.15 * np.arange(12)
            keep = keys < stop
            if recorded_by is None or keys[-1] + 0.01 <= recorded_by:
                starts.append(keys[keep])
                intended.append(keys[keep])
                users.append(np.full(int(keep.sum()), u))
            t = keys[-1] + 0.01 + rng.uniform(1, 3)
    every = np.concatenate(starts)
    order = np.argsort(every)
    n = len(every)
    samples = Samples(
        t=every[order],
        dur=np.full(n, 10.0),
        t_intended=np.concatenate(intended)[order],
        op=np.zeros(n, dtype=np.int32),
        ops=["SSH keystroke"],
        op_is_session=np.array([False]),
        success=np.ones(n, dtype=bool),
        error=np.full(n, -1, dtype=np.int32),
        errors=[],
        server=np.full(n, -1, dtype=np.int32),
        servers=[],
        user=np.concatenate(users)[order].astype(np.int64),
        user_count=np.full(n, 20),
    )
    key = Operation("SSH", "keystroke", paced=True, burst=burst, rate_from="workload.typing_interval_ms")
    steps = [Step(0, 0.0, 30.0, 20, 0.0), Step(1, 30.0, stop, 20, 0.0)]
    return _Typed(Path("typed"), samples, steps, Catalogue(("ssh",), (key,))), every


def test_the_last_step_loses_the_bursts_in_flight_at_the_stop() -> None:
    """Bursts still running at the stop are never recorded: the last seconds of a real run look slower
    than they were (the demo's last step lost 5% of its throughput to it). The stop cut removes them."""
    run, _ = _typing_run(burst=True, recorded_by=60.0)
    _, every = _typing_run(burst=True)  # the same keystrokes, none lost
    first, last = steady_windows(run)
    assert first.steady_end == first.end  # only the run's last step meets the stop
    assert 1.5 <= last.stop_cut_s <= 2.0  # a burst lasts 1.66 s
    t = run.samples.t
    truth = np.sum((every >= last.steady_start) & (every < last.steady_end)) / last.duration
    kept = np.sum((t >= last.steady_start) & (t < last.steady_end)) / last.duration
    uncut = np.sum((t >= last.steady_start) & (t < last.end)) / (last.end - last.steady_start)
    assert kept == pytest.approx(truth, rel=0.01)
    assert uncut < 0.97 * truth  # what the window lost without the cut
    # recorded one by one, a keystroke is missing only while it runs: the cut is its duration
    single, _ = _typing_run(burst=False, recorded_by=60.0)
    assert steady_windows(single)[-1].stop_cut_s == pytest.approx(0.01, abs=1e-6)


def test_the_stop_cut_takes_at_most_a_fifth_of_the_window() -> None:
    # a saturated farm's bursts are in flight for 12 s and more: cutting all of that would leave only the
    # step's transient start, so the cut stops at a fifth and the horizon is kept for a warning
    run, _ = _typing_run(burst=True, stop=34.0, recorded_by=34.0)
    last = steady_windows(run)[-1]
    assert last.stop_cut_s == pytest.approx(0.2 * (last.end - last.steady_start))
    assert last.stop_horizon_s > last.stop_cut_s + 0.5
