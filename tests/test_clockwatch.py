"""Generator pauses (clockwatch.py): a stretch in which the process ran nothing is recorded with both
clocks, and the analysis names it beside the health checks it spoils."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import gevent
import gevent.monkey
import pytest

from gateload.analysis.metrics import analyze_run
from gateload.analysis.synthetic import SynthSpec, build_run, write_run
from gateload.locustfiles.lib.clockwatch import ClockWatch

TICK_S = 0.05
# time.sleep as the OS gives it, even when Locust's monkey-patching made it a gevent sleep
real_sleep = gevent.monkey.get_original("time", "sleep")


def test_a_wall_clock_jump_is_a_pause_of_the_wall_clock_alone() -> None:
    """What a VM snapshot did on this machine: the wall clock moved 11 s, the monotonic clock not."""
    offset = [0.0]
    watch = ClockWatch("local", tick_s=TICK_S, wall=lambda: time.time() + offset[0])
    watch.start()
    gevent.sleep(4 * TICK_S)
    offset[0] = 11.0
    gevent.sleep(4 * TICK_S)
    (pause,) = watch.stop()
    assert pause["process"] == "local"
    assert pause["wall_s"] == pytest.approx(11.0, abs=1.0) and pause["monotonic_s"] < 1.0
    assert pause["end"] - pause["start"] == pytest.approx(pause["wall_s"], abs=1e-3)


def test_a_blocked_process_is_a_pause_of_both_clocks() -> None:
    watch = ClockWatch("local", tick_s=TICK_S, threshold_s=0.5)
    watch.start()
    gevent.sleep(2 * TICK_S)
    real_sleep(0.8)  # the hub cannot run: nothing in this process is scheduled
    gevent.sleep(2 * TICK_S)
    (pause,) = watch.stop()
    assert pause["monotonic_s"] >= 0.8 and pause["wall_s"] == pytest.approx(pause["monotonic_s"], abs=0.1)


def test_a_process_that_keeps_running_records_no_pause() -> None:
    watch = ClockWatch("local", tick_s=TICK_S)
    watch.start()
    for _ in range(20):
        real_sleep(0.02)  # short blocks, like a busy generator's, are no pause
        gevent.sleep(0.01)
    assert watch.stop() == []


def test_the_analysis_names_a_pause_and_the_checks_it_spoils() -> None:
    spec = SynthSpec(
        steps=((10, 30.0),), paced_rate=0.0, session_s=1e9, usl=(4.0, 0.02, 0.001), closed_loop=True
    )
    start = spec.start_epoch + 15.0
    jump = {"process": "vm:1", "start": start, "end": start + 11.0, "wall_s": 11.0, "monotonic_s": 0.0}
    run = build_run(spec.with_(generator_lag_s=0.3, extra_meta={"generator_pauses": [jump]}))
    (pause,) = run.generator_pauses
    assert pause.clock_jump and pause.start == pytest.approx(15.0 + spec.start_epoch - run.origin)
    warnings = analyze_run(run, n_boot=200).warnings
    named = [w for w in warnings if w.startswith("the load generator (vm:1) ran nothing for 11.0 s")]
    assert named and "paused virtual machine or a stepped clock" in named[0], warnings
    little = [w for w in warnings if "Little's law" in w]
    assert little and all("11.0 s generator pause at" in w for w in little), warnings
    # the same run without the pause: the Little warning stands alone, and no pause is named
    plain = analyze_run(build_run(spec.with_(generator_lag_s=0.3)), n_boot=200).warnings
    assert not [w for w in plain if "generator pause" in w or "ran nothing" in w], plain
    assert [w for w in plain if "Little's law" in w]


def test_the_report_shows_the_pause_in_generator_health(tmp_path: Path) -> None:
    spec = SynthSpec(steps=((10, 30.0),), paced_rate=0.0, session_s=1e9, closed_loop=True)
    start = spec.start_epoch + 15.0
    jump = {"process": "vm:1", "start": start, "end": start + 11.0, "wall_s": 11.0, "monotonic_s": 0.0}
    run_dir = write_run(spec.with_(extra_meta={"generator_pauses": [jump]}), tmp_path)
    gateload = str(Path(sys.executable).with_name("gateload"))
    out = tmp_path / "report"
    done = subprocess.run(
        [gateload, "report", str(run_dir), f"--out={out}", "--bootstrap", "200"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    (health,) = json.loads((out / "verdict.json").read_text())["metrics"]["health"]["run"]
    (pause,) = health["generator_pauses"]
    assert pause["process"] == "vm:1" and pause["clock_jump"] and pause["seconds"] == pytest.approx(11.0)
    assert "generator pauses 11 s at" in (out / "report.html").read_text()
