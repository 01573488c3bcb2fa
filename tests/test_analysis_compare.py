"""Comparison, capacity and generator health on synthetic runs whose truth is known."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from analysis_fixtures import NEW, OLD, REF, REF_STEPS, SMALL, before_after

from gateload.analysis import capacity
from gateload.analysis.acceptance import Acceptance
from gateload.analysis.compare import FAIL, INCONCLUSIVE, PASS, compare_runs, evaluate_check, evaluate_compare
from gateload.analysis.metrics import RunStats, analyze_run
from gateload.analysis.runs import load_run
from gateload.analysis.synthetic import (
    OpSpec,
    SynthSpec,
    build_run,
    truth_peak_throughput,
    truth_quantile,
    truth_throughput,
)
from gateload.errors import InputError

BOOT = 300


def stats(spec: SynthSpec) -> RunStats:
    return analyze_run(build_run(spec), n_boot=BOOT)


def test_known_shift_found_with_right_sign_and_covered(tmp_path: Path) -> None:
    b_dir, a_dir = before_after(tmp_path, gain=2.0, latency=0.7)
    acc = Acceptance(
        reference_users=REF, min_peak_gain=1.3, sla={"SSH exec": 1000.0}, max_latency_ratio={"SSH exec": 1.0}
    )
    v = compare_runs(b_dir, a_dir, acc, n_boot=BOOT)
    b_spec, a_spec = load_run(b_dir), load_run(a_dir)
    assert b_spec.samples.servers and a_spec.samples.servers
    before = SMALL.with_(load_latency=False, steps=REF_STEPS)
    lam, sigma, kappa = SMALL.usl
    after = before.with_(usl=(2 * lam, sigma, kappa), latency_scale=0.7)
    truth_gain = truth_peak_throughput(after) / truth_peak_throughput(before)
    pt = v.metrics["peak_throughput"]
    assert pt["ratio"] > 1.3 and pt["change"] == "improved"
    assert pt["ci"][0] <= truth_gain <= pt["ci"][1]
    for name in ("SSH exec", "SSH screen_update"):
        op = v.metrics["operations"][name]
        assert op["change"] == "improved", name  # latency down
        assert op["p95_ratio"]["ci_low"] <= 0.7 <= op["p95_ratio"]["ci_high"], name
    by_name = {c.name: c for c in v.criteria}
    assert by_name["peak_throughput_gain"].verdict == PASS
    assert by_name["latency_ratio[SSH exec]"].verdict == PASS
    assert v.metrics["scaling_efficiency"]["expected_gain"] == pytest.approx(3.0)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_no_shift_never_claims_a_gain(seed: int) -> None:
    spec = SMALL.with_(servers=OLD)
    before = stats(spec.with_(seed=seed, run_id="b"))
    after = stats(spec.with_(seed=seed + 100, run_id="a", label="after"))
    v = evaluate_compare([before], [after], Acceptance(min_peak_gain=1.0))
    gain = v.criteria[0]
    assert gain.verdict != PASS
    assert gain.ci_low < 1.0 < gain.ci_high or abs(gain.estimate - 1) < 0.05
    assert v.metrics["peak_throughput"]["change"] in ("no change detected", "within noise")


def test_knee_lands_on_the_first_step_above_the_sla() -> None:
    spec = SynthSpec(
        steps=tuple((n, 20.0) for n in (5, 10, 20, 40, 60)),
        ramp_s=1.0,
        usl=(10.0, 0.05, 0.004),
        paced_rate=0.0,
        session_s=1e9,
        seed=11,
    )
    op = "SSH exec"
    p95 = [truth_quantile(spec, op, n, 0.95) for n, _ in spec.steps]
    assert all(np.diff(p95) > 0)
    limit = math.sqrt(p95[2] * p95[3])  # between the 3rd and 4th step
    rs = analyze_run(build_run(spec), n_boot=BOOT)
    knee = capacity.find_knee(rs.steps, op, limit)
    assert knee.users == 40
    no_knee = capacity.find_knee(rs.steps, op, p95[-1] * 3)
    assert no_knee.users is None


def test_co_correction_recovers_planned_start_latency_on_a_stall() -> None:
    """Paced keystrokes at 10/s; the server stalls 3 s. Users planned to type throughout the stall, so the
    latency from the intended start of those keystrokes runs up to 3 s; the raw durations hide it."""
    stall_at, stall_s, rate = 30.0, 3.0, 10.0
    spec = SynthSpec(
        steps=((10, 60.0),),
        ramp_s=0.0,
        warmup_factor=1.0,
        usl=(2.0, 0.0, 0.0),
        ops=(OpSpec("SSH", "exec", 1.0, 5.0, sigma=0.2),),
        paced_rate=rate,
        keystroke_ms=5.0,
        ar_sd=0.0,
        load_latency=False,
        session_s=1e9,
        stall=(stall_at, stall_s),
        seed=5,
    )
    rs = analyze_run(build_run(spec), n_boot=BOOT)
    st = rs.steps[0]
    w = st.window
    assert w.steady_start < stall_at and w.end > stall_at + stall_s
    paced = st.paced["SSH keystroke"]
    # Keystrokes are planned uniformly in time: a share f = stall / window of them is planned inside the
    # stall and waits until it ends, so the top (1 - q) of the planned-start latency is (1 - (1-q)/f) * stall.
    f = stall_s / w.duration
    expected_p99 = stall_s * 1000 * (1 - 0.01 / f)
    assert paced.corrected["p99"].value == pytest.approx(expected_p99, rel=0.05)
    assert paced.max_ms == pytest.approx(stall_s * 1000, rel=0.02)
    raw = st.ops["SSH keystroke"].q["p99"].value
    assert raw < 50  # the closed loop issued one slow keystroke per user: raw p99 stays tiny
    assert capacity.latency_of(st, "SSH keystroke", "p99") is paced.corrected["p99"]


def test_paced_shortfall_is_flagged() -> None:
    base = SynthSpec(
        steps=((5, 30.0),),
        ramp_s=0.0,
        usl=(2.0, 0.0, 0.0),
        paced_rate=10.0,
        load_latency=False,
        session_s=1e9,
        warmup_factor=1.0,
    )
    ok = stats(base.with_(keystroke_ms=5.0)).steps[0].paced["SSH keystroke"]
    assert not ok.flagged and ok.rate.achieved == pytest.approx(10.0, rel=0.02)
    slow = stats(base.with_(keystroke_ms=150.0, ar_sd=0.0)).steps[0].paced["SSH keystroke"]
    assert slow.flagged
    assert slow.rate.achieved < 8.0 and slow.rate.shortfall > 0.2


def test_littles_law_flags_a_generator_that_falls_behind() -> None:
    spec = SynthSpec(
        steps=((10, 30.0), (20, 30.0)),
        paced_rate=0.0,
        session_s=1e9,
        usl=(4.0, 0.02, 0.001),
        closed_loop=True,
    )
    healthy = stats(spec)
    for st in healthy.steps:
        assert st.little is not None and st.little.ok and abs(st.little.ratio - 1) < 0.1
        assert st.throughput.lo <= truth_throughput(spec, st.users) <= st.throughput.hi  # X = USL via Little
    starved = stats(spec.with_(generator_lag_s=0.3))
    assert all(not st.little.ok for st in starved.steps)
    assert any("Little's law" in w for w in starved.warnings)


def test_saturated_generator_cannot_pass_a_throughput_gain() -> None:
    before = stats(SMALL.with_(servers=OLD, cpu_warnings=4))
    lam, s, k = SMALL.usl
    after = stats(SMALL.with_(label="after", servers=OLD + NEW, usl=(3 * lam, s, k), seed=9))
    v = evaluate_compare([before], [after], Acceptance(min_peak_gain=1.2))
    c = v.criteria[0]
    assert c.verdict == INCONCLUSIVE and "load generator saturated" in c.note
    assert any("CPU warning" in w for w in v.warnings)


def test_a_generator_pause_in_a_measured_window_cannot_pass_a_throughput_gain() -> None:
    """The pause's time is missing from that step's throughput, as if the target had been slower."""
    spec = SMALL.with_(servers=OLD)
    w = stats(spec).steps[-1].window
    mid = spec.start_epoch + (w.steady_start + w.steady_end) / 2  # the synthetic origin is start_epoch
    pause = {"process": "local", "start": mid, "end": mid + 5.0, "wall_s": 5.0, "monotonic_s": 0.0}
    lam, s, k = SMALL.usl
    after = stats(SMALL.with_(label="after", servers=OLD + NEW, usl=(3 * lam, s, k), seed=9))
    clean = evaluate_compare([stats(spec)], [after], Acceptance(min_peak_gain=1.2)).criteria[0]
    assert clean.verdict == PASS
    paused = stats(spec.with_(extra_meta={"generator_pauses": [pause]}))
    c = evaluate_compare([paused], [after], Acceptance(min_peak_gain=1.2)).criteria[0]
    assert c.verdict == INCONCLUSIVE and "stood still 5.0 s in its measured windows" in c.note, c.note
    # outside every measured window (before the first step's warm-up ends) it changes no verdict
    early = dict(pause, start=spec.start_epoch - 30.0, end=spec.start_epoch - 25.0)
    outside = stats(spec.with_(extra_meta={"generator_pauses": [early]}))
    assert evaluate_compare([outside], [after], Acceptance(min_peak_gain=1.2)).criteria[0].verdict == PASS


def test_a_starved_new_server_fails_its_share() -> None:
    before = stats(SMALL.with_(servers=OLD))
    weights = (1.0,) * 11 + (0.2,)  # new-08 gets a fifth of an even share
    after = stats(SMALL.with_(label="after", servers=OLD + NEW, server_weights=weights, seed=3))
    v = evaluate_compare([before], [after], Acceptance(min_share_of_even=0.5))
    share = v.criteria[0]
    assert share.verdict == FAIL and "new-08" in share.description
    assert share.estimate == pytest.approx(0.2 * 12 / 11.2, rel=0.3)
    assert v.metrics["servers"]["new-08"]["new"] and not v.metrics["servers"]["old-01"]["new"]
    fair = stats(SMALL.with_(label="after", servers=OLD + NEW, seed=4))
    assert evaluate_compare([before], [fair], Acceptance(min_share_of_even=0.5)).criteria[0].verdict == PASS


def test_incomplete_run_is_refused_unless_allowed_and_never_passes(tmp_path: Path) -> None:
    from gateload.analysis.synthetic import write_run

    run_dir = write_run(SMALL.with_(status="interrupted"), tmp_path)
    with pytest.raises(InputError, match="incomplete"):
        load_run(run_dir)
    run = load_run(run_dir, allow_incomplete=True)
    assert not run.complete
    rs = analyze_run(run, n_boot=BOOT)
    v = evaluate_check([rs], Acceptance(max_error_rate=0.5))
    assert v.incomplete and v.verdict == INCONCLUSIVE
    assert any("INCOMPLETE" in w for w in v.warnings)


def test_three_replicates_per_side_use_between_run_variance() -> None:
    lam, s, k = SMALL.usl
    before = [stats(SMALL.with_(run_id=f"b{i}", seed=i)) for i in range(3)]
    after = [
        stats(SMALL.with_(label="after", run_id=f"a{i}", usl=(2 * lam, s, k), seed=50 + i)) for i in range(3)
    ]
    v = evaluate_compare(before, after, Acceptance(min_peak_gain=1.2))
    assert "between-run" in v.metrics["interval_method"]
    truth = truth_peak_throughput(SMALL.with_(usl=(2 * lam, s, k))) / truth_peak_throughput(SMALL)
    lo, hi = v.metrics["peak_throughput"]["ci"]
    assert lo <= truth <= hi
    assert v.criteria[0].verdict == PASS


def test_check_gates_a_single_run_on_its_slas() -> None:
    rs = stats(SMALL.with_(servers=OLD + NEW))
    truth = truth_quantile(SMALL, "SSH exec", REF, 0.95)
    loose = Acceptance(
        reference_users=REF, sla={"SSH exec": truth * 3}, max_error_rate=0.05, min_share_of_even=0.3
    )
    assert evaluate_check([rs], loose).verdict == PASS
    tight = Acceptance(reference_users=REF, sla={"SSH exec": truth / 3})
    v = evaluate_check([rs], tight)
    assert v.verdict == FAIL and v.exit_code == 1
    missing = Acceptance(reference_users=500, sla={"SSH exec": 100.0})
    v = evaluate_check([rs], missing)
    assert v.verdict == INCONCLUSIVE and "no step within" in v.criteria[0].note


def test_inconclusive_says_what_would_settle_it() -> None:
    spec = SMALL.with_(servers=OLD)
    b, a = stats(spec.with_(seed=21)), stats(spec.with_(label="after", seed=22))
    v0 = evaluate_compare([b], [a], Acceptance(min_peak_gain=1.0))
    est = v0.criteria[0].estimate
    near = est * 0.995  # margin inside the interval, just below the estimate
    c = evaluate_compare([b], [a], Acceptance(min_peak_gain=near)).criteria[0]
    assert c.verdict == INCONCLUSIVE
    assert "replicates" in c.note or "longer" in c.note or "sits on the margin" in c.note


def test_an_unsaturated_staircase_cannot_fail_a_throughput_gain() -> None:
    """The after farm was never pushed to its capacity: its peak is a lower bound, so no FAIL on it."""
    lam, s, k = SMALL.usl
    before = stats(SMALL.with_(servers=OLD))
    short = stats(
        SMALL.with_(label="after", servers=OLD + NEW, usl=(2 * lam, s, k), steps=((5, 20.0), (10, 20.0)))
    )
    c = evaluate_compare([before], [short], Acceptance(min_peak_gain=3.0)).criteria[0]
    assert c.verdict == INCONCLUSIVE and "still rising" in c.note
    full = stats(SMALL.with_(label="after", servers=OLD + NEW, usl=(2 * lam, s, k), seed=8))
    assert evaluate_compare([before], [full], Acceptance(min_peak_gain=3.0)).criteria[0].verdict == FAIL
