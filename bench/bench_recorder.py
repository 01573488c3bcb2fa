"""Benchmark 5, the sample recorder: samples/s sustained through the real Recorder, without slowing users.

In one process (gevent, as under Locust), ``GREENLETS`` greenlets fire ``events.request`` as fast as
they can with the same arguments our users fire (``gateload.locustfiles.lib.runtime.fire``: start time,
response time, context with user id, server, intended start, error class), yielding every ``YIELD_EVERY``
fires. Two Locust environments, each with a local runner (so Locust's own stats listener is there in
both):

- **baseline**: no recorder: the fire loop and Locust's stats only;
- **recorder**: the same plus ``Recorder`` recording into a temporary run folder (Parquet parts written
  by its writer thread, as in a real run).

Phases alternate (baseline, recorder, ...). Per phase: fires per second; for the recorder also the
time ``finish()`` needs to get the rest on disk, so the **sustained** rate is rows on disk / (firing +
draining) and every row fired must be on disk. "Without slowing users": the recorder's cost per fire
in microseconds (1/rate difference), and paced phases (``PACED_RATE`` samples/s, baseline and
recorder again) in which a probe greenlet sleeps 2 ms in a loop and measures how late it wakes (p99 and
max): a flush that held the GIL or the hub for long would show there as lateness the baseline has not.

    .venv/bin/python bench/bench_recorder.py            # full (about a minute)
    .venv/bin/python bench/bench_recorder.py --smoke    # a few seconds, nothing appended to RESULTS.md
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
for _p in (str(ROOT), str(BENCH)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

TARGET_PER_S = 100_000
GREENLETS = 8
YIELD_EVERY = 100
PROBE_SLEEP_S = 0.002
PACED_RATE = 50_000.0  # samples/s in the paced phases (half the target), where the probe runs


@dataclass(frozen=True)
class Settings:
    seconds: float  # firing time per phase
    max_fires: int  # per phase, whichever comes first
    rounds: int


FULL = Settings(seconds=8.0, max_fires=3_000_000, rounds=3)
SMOKE = Settings(seconds=1.0, max_fires=200_000, rounds=1)


@dataclass
class Phase:
    fired: int
    fire_s: float
    drain_s: float = 0.0
    rows: int = -1  # rows on disk (recorder phases)
    problems: int = 0
    probe_p99_ms: float = 0.0
    probe_max_ms: float = 0.0

    @property
    def fire_rate(self) -> float:
        return self.fired / self.fire_s

    @property
    def sustained_rate(self) -> float:
        return (self.rows if self.rows >= 0 else self.fired) / (self.fire_s + self.drain_s)


def _environment(with_recorder: bool) -> tuple[Any, Any]:
    from locust import User
    from locust.env import Environment

    from gateload.locustfiles.lib.recorder import Recorder

    class Idle(User):  # Environment wants a user class; none is ever started
        abstract = False

    env = Environment(user_classes=[Idle])
    env.create_local_runner()
    return env, Recorder(env) if with_recorder else None


def _fire_loop(env: Any, budget: list[int], deadline: float, user_id: int, rate: float = 0.0) -> int:
    """Fire in chunks of ``YIELD_EVERY``, yielding between chunks; paced at ``rate``/s if given."""
    import gevent

    fire = env.events.request.fire
    n = 0
    clock = time.time
    perf = time.perf_counter
    t0 = perf()
    while budget[0] > 0 and perf() < deadline:
        budget[0] -= YIELD_EVERY
        for _ in range(YIELD_EVERY):
            now = clock()
            fire(
                request_type="SSH",
                name="keystroke",
                response_time=1.25,
                response_length=1,
                exception=None,
                context={"user_id": user_id, "server": "old-01", "t_intended": now, "error": None,
                         "start_time": now},
                start_time=now,
                url=None,
                response=None,
            )  # fmt: skip
        n += YIELD_EVERY
        gevent.sleep(max(0.0, t0 + n / rate - perf()) if rate else 0.0)
    return n


def _probe(stop: list[bool], lateness: list[float]) -> None:
    import gevent

    while not stop[0]:
        t0 = time.perf_counter()
        gevent.sleep(PROBE_SLEEP_S)
        lateness.append((time.perf_counter() - t0 - PROBE_SLEEP_S) * 1000.0)


def run_phase(s: Settings, with_recorder: bool, run_dir: Path, paced: bool = False) -> Phase:
    """One phase: as fast as possible, or (``paced``) at ``PACED_RATE`` with the probe greenlet."""
    import gevent

    env, recorder = _environment(with_recorder)
    if recorder is not None:
        recorder.start(run_dir.name, run_dir)
    stop, lateness = [False], []
    probe = gevent.spawn(_probe, stop, lateness) if paced else None
    budget = [s.max_fires]
    rate = PACED_RATE / GREENLETS if paced else 0.0
    t0 = time.perf_counter()
    loops = [gevent.spawn(_fire_loop, env, budget, t0 + s.seconds, i, rate) for i in range(GREENLETS)]
    gevent.joinall(loops, timeout=s.seconds + 30, raise_error=True)
    fire_s = time.perf_counter() - t0
    phase = Phase(sum(g.value or 0 for g in loops), fire_s)
    if recorder is not None:
        t1 = time.perf_counter()
        result = recorder.finish()
        phase.drain_s = time.perf_counter() - t1
        phase.rows, phase.problems = result.rows, len(result.problems)
    stop[0] = True
    if probe is not None:
        probe.join(1)
    ordered = sorted(lateness)
    phase.probe_p99_ms = ordered[int(0.99 * (len(ordered) - 1))] if ordered else float("nan")
    phase.probe_max_ms = ordered[-1] if ordered else float("nan")
    env.events.request._handlers.clear()  # this environment is done: drop its listeners
    return phase


def run(s: Settings) -> dict[str, Any]:
    import gc

    from bench_ssh import load_average

    load_before = load_average()
    # the work folder holds a run's raw results and profiles: scratch, removed with the run
    with tempfile.TemporaryDirectory(prefix="gateload-bench-recorder-", ignore_cleanup_errors=True) as tmp:
        work = Path(tmp)
        base: list[Phase] = []
        rec: list[Phase] = []
        paced_base: list[Phase] = []
        paced_rec: list[Phase] = []
        for i in range(s.rounds):
            for paced, (b, r) in ((False, (base, rec)), (True, (paced_base, paced_rec))):
                gc.collect()
                b.append(run_phase(s, False, work / f"base-{i}-{paced}", paced))
                gc.collect()
                r.append(run_phase(s, True, work / f"rec-{i}-{paced}", paced))
    lost = sum(p.fired - p.rows for p in rec + paced_rec)
    base_rate = statistics.median(p.fire_rate for p in base)
    rec_rate = statistics.median(p.fire_rate for p in rec)
    sustained = statistics.median(p.sustained_rate for p in rec)
    figures = {
        "recorder_samples_per_s": sustained,
        "recorder_fire_rate_per_s": rec_rate,
        "baseline_fire_rate_per_s": base_rate,
        "recorder_ratio": rec_rate / base_rate,
        "recorder_us_per_fire": 1e6 / rec_rate - 1e6 / base_rate,
        "recorder_drain_s": statistics.median(p.drain_s for p in rec),
        "paced_rate_per_s": statistics.median(p.fire_rate for p in paced_rec),
        "probe_p99_late_ms_recorder": statistics.median(p.probe_p99_ms for p in paced_rec),
        "probe_p99_late_ms_baseline": statistics.median(p.probe_p99_ms for p in paced_base),
        "probe_max_late_ms_recorder": max(p.probe_max_ms for p in paced_rec),
        "probe_max_late_ms_baseline": max(p.probe_max_ms for p in paced_base),
        "samples_lost": lost,
    }
    notes = (
        f"{GREENLETS} greenlets firing, yield every {YIELD_EVERY}; {s.rounds} round(s) of {s.seconds:g} s "
        f"per phase (baseline first; flat out, then paced at {PACED_RATE:,.0f}/s with a probe greenlet "
        f"sleeping {PROBE_SLEEP_S * 1000:g} ms in a loop), {sum(p.rows for p in rec + paced_rec):,} rows "
        "written, "
        f"{sum(p.problems for p in rec)} recorder problems; Locust's stats listener in both phases; "
        f"switch interval {sys.getswitchinterval() * 1000:g} ms; load average before {load_before[0]:.2f}, "
        f"after {load_average()[0]:.2f}. Target: recorder_samples_per_s >= {TARGET_PER_S:,}, none lost."
    )
    return {"figures": figures, "notes": notes, "target_met": sustained >= TARGET_PER_S and lost == 0}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--smoke", action="store_true", help="seconds-long run; nothing appended")
    args = parser.parse_args(argv)
    import logging

    import locust  # noqa: F401  (gevent's monkey-patching first, as under the locust command)

    # Locust's CPU monitor warns when this process is busy: here it is busy on purpose.
    logging.getLogger().setLevel(logging.ERROR)
    from bench_ssh import report

    return report("recorder", run(SMOKE if args.smoke else FULL), smoke=args.smoke)


if __name__ == "__main__":
    sys.exit(main())
