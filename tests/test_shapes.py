"""Load schedules (step, workday, arrivals, none), the arrival grid and the Locust shape that follows them."""

from __future__ import annotations

import argparse
import itertools
import math
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gateload.errors import InputError
from gateload.locustfiles.lib.arrivals import ArrivalSchedule, install, next_arrival, summary
from gateload.locustfiles.lib.options import plain_parser
from gateload.locustfiles.lib.schedule import WORKDAY, build_plan, parse_timespan

ROOT = Path(__file__).resolve().parent.parent


def opts(*args: str) -> argparse.Namespace:
    return plain_parser().parse_args(list(args))


# --- step ---------------------------------------------------------------------------------------------


def test_step_users_list_with_ramp_and_hold() -> None:
    plan = build_plan(
        opts("--shape", "step", "--step-users", "10,20,40", "--step-hold", "30", "--step-ramp", "5")
    )
    assert plan.steps == (10, 20, 40)
    assert [p.duration_s for p in plan.phases] == [35.0, 35.0, 35.0]
    assert [p.spawn_rate for p in plan.phases] == [2.0, 2.0, 4.0]  # users to add / ramp seconds
    assert plan.duration_s == 105.0 and plan.peak_users == 40
    assert plan.at(0.0)[0] == 0 and plan.at(34.9)[0] == 0 and plan.at(35.0)[0] == 1
    assert plan.at(104.9)[1].users == 40
    assert plan.at(105.0) is None


def test_step_start_add_count_equals_the_list() -> None:
    listed = build_plan(opts("--shape", "step", "--step-users", "10,20,30,40"))
    counted = build_plan(
        opts("--shape", "step", "--step-start", "10", "--step-add", "10", "--step-count", "4")
    )
    assert counted.steps == listed.steps == (10, 20, 30, 40)
    assert counted.phases == listed.phases


def test_step_without_ramp_ramps_at_spawn_rate_and_keeps_the_full_hold() -> None:
    plan = build_plan(opts("--shape", "step", "--step-users", "10,30", "--step-hold", "20", "-r", "5"))
    assert [p.ramp_s for p in plan.phases] == [2.0, 4.0]
    assert [p.duration_s - p.ramp_s for p in plan.phases] == [20.0, 20.0]
    assert {p.spawn_rate for p in plan.phases} == {5.0}


def test_run_time_caps_a_shape() -> None:
    plan = build_plan(opts("--shape", "step", "--step-users", "5,10", "--step-hold", "30", "-t", "40s"))
    assert plan.scheduled_s == 70.0 and plan.duration_s == 40.0
    assert plan.at(39.9)[1].users == 10
    assert plan.at(40.0) is None


# --- workday, arrivals, none --------------------------------------------------------------------------


def test_workday_is_a_compressed_day_peaking_at_users() -> None:
    plan = build_plan(opts("--shape", "workday", "-u", "100", "--workday-minutes", "9"))
    names = [p.name for p in plan.phases]
    assert names == [w[0] for w in WORKDAY] == ["logon-storm", "morning", "lunch", "afternoon", "logoff"]
    users = {p.name: p.users for p in plan.phases}
    assert users["logon-storm"] == users["morning"] == plan.peak_users == 100
    assert users["lunch"] < users["afternoon"] < users["morning"]
    assert users["logoff"] < users["lunch"]
    assert plan.duration_s == pytest.approx(9 * 60)
    storm = plan.phases[0]
    # the storm: all users log on within its first quarter (one compressed hour = 60 s here)
    assert storm.ramp_s == pytest.approx(15.0) and storm.spawn_rate == pytest.approx(100 / 15.0)


def test_arrivals_plan_keeps_a_pool_and_the_rate() -> None:
    plan = build_plan(opts("--shape", "arrivals", "--arrival-rate", "5", "-u", "200", "-t", "60"))
    assert plan.arrival_rate == 5.0 and plan.steps == (200,) and plan.duration_s == 60.0
    assert plan.params["arrival_rate"] == 5.0 and plan.params["pool_users"] == 200


def test_shape_none_is_one_open_phase_of_plain_options() -> None:
    plan = build_plan(opts("-u", "7", "-r", "2"))
    assert plan.shape == "none" and plan.steps == (7,) and plan.duration_s == math.inf
    assert build_plan(opts("-u", "7", "-r", "2", "-t", "1m")).duration_s == 60.0


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--shape", "step", "--step-users", "10,x,40"], "--step-users"),
        (["--shape", "step"], "--step-users"),
        (["--shape", "step", "--step-users", "10,0"], "--step-users"),
        (["--shape", "step", "--step-users", "10", "--step-count", "3", "--step-start", "1"], "--step-users"),
        (["--shape", "step", "--step-users", "10", "--step-hold", "0"], "--step-hold"),
        (["--shape", "step", "--step-users", "10", "--step-ramp", "-1"], "--step-ramp"),
        (["--shape", "workday"], "-u"),
        (["--shape", "workday", "-u", "10", "--workday-minutes", "0"], "--workday-minutes"),
        (["--shape", "arrivals", "-u", "10"], "--arrival-rate"),
    ],
)
def test_bad_shape_specs_name_the_flag_and_the_fix(args: list[str], named: str) -> None:
    with pytest.raises(InputError) as err:
        build_plan(opts(*args))
    message = str(err.value)
    assert named in message and "\n" not in message
    assert any(w in message for w in ("e.g.", "must", "give", "pass", "either"))


def test_parse_timespan() -> None:
    assert parse_timespan("90") == 90 and parse_timespan("90s") == 90
    assert parse_timespan("2m") == 120 and parse_timespan("1h30m") == 5400
    with pytest.raises(InputError, match="30s, 5m or 1h30m"):
        parse_timespan("ten")


def test_plan_from_args_reads_campaign_arguments_without_importing_locust() -> None:
    code = (
        "import sys\n"
        "from gateload.locustfiles.lib.schedule import plan_from_args\n"
        "p = plan_from_args(['--shape', 'step', '--step-users', '15,50,110', '--step-hold', '9',"
        " '--step-ramp', '3', '--processes', '2'])\n"
        "assert 'locust' not in sys.modules and 'gevent' not in sys.modules, 'Locust was imported'\n"
        "print(p.steps, p.peak_users, p.duration_s, p.describe())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "(15, 50, 110) 110 36.0 step load 15/50/110 sessions"


# --- arrivals grid ------------------------------------------------------------------------------------


def test_one_process_claims_arrivals_at_the_rate() -> None:
    t0 = 1000.0
    sched = ArrivalSchedule(t0, rate=4.0)
    times = [sched.claim(now=t0) for _ in range(8)]
    assert times == [t0 + k / 4.0 for k in range(8)]


def test_processes_split_the_grid_without_gaps_or_duplicates() -> None:
    t0, rate, slots = 500.0, 10.0, 3
    claimed = []
    for slot in range(slots):
        sched = ArrivalSchedule(t0, rate, slot=slot, slots=slots)
        mine = [sched.claim(now=t0) for _ in range(20)]
        assert all(b - a == pytest.approx(slots / rate) for a, b in itertools.pairwise(mine))
        assert sched.rate_per_process == pytest.approx(rate / slots)
        claimed += mine
    assert sorted(claimed) == pytest.approx([t0 + j / rate for j in range(60)])


def test_a_late_first_claim_starts_at_the_next_own_arrival_then_never_skips() -> None:
    t0 = 100.0
    sched = ArrivalSchedule(t0, rate=2.0, slot=1, slots=2)  # this process owns j = 1, 3, 5, ...
    first = sched.claim(now=t0 + 3.2)  # j=7 is the first own arrival at or after now (t0 + 3.5)
    assert first == t0 + 3.5
    # later sessions keep the grid even when they are behind it (the lateness is measured, not hidden)
    assert [sched.claim(now=t0 + 100) for _ in range(2)] == [t0 + 4.5, t0 + 5.5]


def test_claimed_and_planned_arrivals_by_a_time() -> None:
    t0 = 0.0
    a, b = ArrivalSchedule(t0, 10.0, slot=0, slots=2), ArrivalSchedule(t0, 10.0, slot=1, slots=2)
    for _ in range(3):  # a: j = 0, 2, 4 (t = 0, .2, .4); b: j = 1, 3, 5
        a.claim(now=t0)
        b.claim(now=t0)
    assert a.planned_by(0.45) == 5  # j = 0..4 are due by 0.45 s
    assert a.claimed_by(0.45) == 3 and b.claimed_by(0.45) == 2  # b's j = 5 (0.5 s) was not due yet
    assert a.claimed_by(-1.0) == 0 and a.claimed_by(100.0) == 3


def test_planned_arrivals_run_to_the_last_worker_stop() -> None:
    """The master decides to stop at 4.004 s; its message reaches the workers at 4.16 s, and by then
    they had started the sessions planned for 4.05, 4.10 and 4.15 s (busy-core run 56)."""
    t0, rate = 100.0, 20.0
    workers = [ArrivalSchedule(t0, rate, slot=s, slots=2) for s in (0, 1)]
    for sched in workers:
        for _ in range(42):  # j = 0..83 between them: up to 4.15 s
            sched.claim(now=t0)
    stopped = [t0 + 4.16, t0 + 4.12]
    finals = [
        {"arrivals_claimed": sched.claimed_by(stop), "arrivals_stopped_at": stop}
        for sched, stop in zip(workers, stopped, strict=True)
    ]
    got = summary(t0, rate, t0 + 4.004, finals)
    assert got["until"] == t0 + 4.16 and got["planned"] == 84  # j = 0..83
    assert got["claimed"] == 42 + 41 <= got["planned"]  # slot 1's j = 83 (4.15 s) was not due at 4.12
    old = summary(t0, rate, t0 + 4.004, [{"arrivals_claimed": f["arrivals_claimed"]} for f in finals])
    assert old["planned"] == 81 < old["claimed"]  # without the workers' stop times: run 56's fault


def test_a_single_process_counts_its_own_claims_to_its_own_stop() -> None:
    t0 = 0.0
    local = ArrivalSchedule(t0, 10.0)
    for _ in range(10):
        local.claim(now=t0)
    assert summary(t0, 10.0, 0.55, [], local) == {"rate": 10.0, "planned": 6, "claimed": 6, "until": 0.55}


def test_next_arrival_is_none_outside_arrival_mode() -> None:
    env = argparse.Namespace()
    assert next_arrival(env) is None
    install(env, ArrivalSchedule(time.time(), 1.0))
    assert isinstance(next_arrival(env), float)
    install(env, None)
    assert next_arrival(env) is None


# --- the Locust shape ---------------------------------------------------------------------------------


def make_shape(*args: str):
    from locust.env import Environment
    from locust.event import Events

    from gateload.locustfiles.lib.shapes import PlannedShape

    env = Environment(events=Events(), parsed_options=opts(*args))
    runner = env.create_local_runner()
    phases: list[int] = []
    shape = PlannedShape(on_phase=lambda index, phase, s: phases.append(index))
    shape.runner = runner
    shape.reset_time()
    return shape, phases, runner


def at(shape, elapsed: float):
    """Tick the shape as if ``elapsed`` seconds had passed since it started."""
    shape.start_time = time.perf_counter() - elapsed
    return shape.tick()


def test_shape_follows_the_plan_and_records_each_step_once() -> None:
    shape, phases, runner = make_shape(
        "--shape", "step", "--step-users", "3,6", "--step-hold", "10", "--step-ramp", "2"
    )
    try:
        assert shape.use_common_options and shape.abstract  # never picked up by Locust on its own
        assert at(shape, 0.5) == (3, 1.5)
        assert at(shape, 5.0) == (3, 1.5)
        assert at(shape, 12.5) == (6, 1.5)
        assert at(shape, 23.9) == (6, 1.5)
        assert phases == [0, 1] and not shape.finished
        assert at(shape, 24.1) is None and shape.finished
        steps = shape.steps
        assert [(s["index"], s["users"], s["phase"]) for s in steps] == [(0, 3, "step-1"), (1, 6, "step-2")]
        assert steps[0]["start"] <= steps[0]["end"] == steps[1]["start"] <= steps[1]["end"]
        assert abs(steps[0]["start"] - time.time()) < 60  # real epoch times
    finally:
        runner.quit()


def test_shape_rereads_the_options_when_restarted() -> None:
    shape, _phases, runner = make_shape("--shape", "step", "--step-users", "3", "--step-hold", "10")
    try:
        assert shape.plan.steps == (3,)
        runner.environment.parsed_options.step_users = "4,8"  # as the web UI form would set it
        shape.reset_time()
        assert shape.plan.steps == (4, 8) and shape.steps == []
    finally:
        runner.quit()
