"""Benchmark 4, scale: concurrent, mostly idle homeoffice SSH sessions one worker process holds, and its RSS.

The echo server (``bench_ssh.py serve``, its own process, minimal per-session work, backlog 4096)
counts the PTY shells open and prints the count every second. The client is **one** Locust process:
``locust -f locustfiles/homeoffice.py GatewayUser`` (the real user class: bridge, loop thread,
recorder, run folder), 10,000 users (``--sessions``) spawned at 150/s, with SSH keepalive on
(``KEEPALIVE_S``) and a mostly idle workload: a two-key typing burst, then 20-40 s of think time.
Open-files limits are raised to the hard limit for every process.

Once the server holds every session (or stops gaining), the sessions are held for 30 s (several
keepalive rounds); the figures are the fewest shells open during the hold, the client's RSS at its end
(VmRSS, psutil), sessions per GB, and the drops and reconnects the recorder saw.

Baseline, same run, same server: a pure asyncio asyncssh client (no Locust, no gevent) holding the same
number of shells with the same keepalive; its RSS per session tells what the gateload stack adds.

    .venv/bin/python bench/bench_scale.py            # full (about 4 minutes: 10,000 SSH handshakes twice)
    .venv/bin/python bench/bench_scale.py --smoke    # a few seconds, nothing appended to RESULTS.md
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import subprocess
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

KEEPALIVE_S = 10.0
TARGET_SESSIONS = 5000
TARGET_RSS_GB = 1.5
GB = 1024**3
WORKLOAD = {
    "think_min_s": 20.0,
    "think_max_s": 40.0,
    "typing_interval_ms": 150.0,
    "burst_keys": 2,
    "timeout_s": 30.0,
    "mix": {"typing": 1.0},
}


@dataclass(frozen=True)
class Settings:
    sessions: int
    spawn_rate: float
    hold_s: float
    stall_s: float  # give up ramping when the server count has not grown for this long


FULL = Settings(sessions=10000, spawn_rate=150.0, hold_s=30.0, stall_s=30.0)
SMOKE = Settings(sessions=40, spawn_rate=40.0, hold_s=2.0, stall_s=10.0)


# --- the pure asyncio baseline (its own process) -----------------------------------------------------


def hold_main(args: argparse.Namespace) -> int:
    """``hold``: open ``--sessions`` shells with keepalive, hold them until SIGTERM; RSS lines on stdout."""
    import asyncio

    import asyncssh
    import psutil
    from bench_ssh import PASSWORD, PROMPT, USERNAME, raise_nofile

    raise_nofile()
    me = psutil.Process()

    async def main() -> None:
        trusted = [asyncssh.read_public_key(args.host_key)]
        gate = asyncio.Semaphore(20)
        held: list[Any] = []

        async def open_one() -> None:
            async with gate:
                try:
                    conn = await asyncssh.connect(
                        "127.0.0.1", args.port, username=USERNAME, password=PASSWORD,
                        known_hosts=(trusted, [], []), client_keys=None, agent_path=None, config=None,
                        keepalive_interval=KEEPALIVE_S, keepalive_count_max=3, preferred_auth="password",
                        connect_timeout=30, login_timeout=30,
                    )  # fmt: skip
                    proc = await conn.create_process(term_type="xterm", term_size=(80, 24), encoding=None)
                    await proc.stdout.readuntil(PROMPT)
                except (OSError, asyncssh.Error, TimeoutError):
                    return
                held.append((conn, proc))

        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        opening = asyncio.gather(*(open_one() for _ in range(args.sessions)))
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)
            print(json.dumps({"held": len(held), "rss": me.memory_info().rss}), flush=True)
        opening.cancel()
        for conn, _ in held:
            conn.abort()

    asyncio.run(main())
    return 0


# --- the benchmark ----------------------------------------------------------------------------------


def _hold(server: Any, s: Settings, sampler: Any, pid: int, alive: Any) -> dict[str, Any]:
    """Wait until the server holds ``s.sessions`` (or stops gaining), then hold; the figures."""
    started = time.monotonic()
    counts: list[tuple[float, int]] = []  # (wall time, shells the server holds)
    best, best_at = -1, started
    ramp_deadline = started + s.sessions / s.spawn_rate * 3 + 120
    while time.monotonic() < ramp_deadline and alive():
        n = server.sessions
        counts.append((time.time(), n))
        if n > best:
            best, best_at = n, time.monotonic()
        if n >= s.sessions or time.monotonic() - best_at > s.stall_s:
            break
        time.sleep(0.5)
    ramp_s = time.monotonic() - started
    held_min = server.sessions
    hold_end = time.monotonic() + s.hold_s
    while time.monotonic() < hold_end and alive():
        time.sleep(0.5)
        held_min = min(held_min, server.sessions)
    rss = sampler.series[pid][-1][2] if sampler.series.get(pid) else 0
    return {"held": held_min, "rss": rss, "peak_rss": sampler.peak_rss(pid), "ramp_s": ramp_s,
            "marginal_kb": _marginal_kb(counts, sampler.series.get(pid) or [])}  # fmt: skip


def _marginal_kb(counts: list[tuple[float, int]], rss: list[tuple[float, float, int]]) -> float:
    """KB of RSS each extra session costs: the RSS slope from a quarter of the final count to the end."""
    if len(counts) < 2 or len(rss) < 2:
        return float("nan")
    final = counts[-1][1]

    def rss_at(t: float) -> float:
        return min(rss, key=lambda r: abs(r[0] - t))[2]

    t_quarter, n_quarter = next(((t, n) for t, n in counts if n >= final / 4), counts[0])
    t_end, n_end = counts[-1]
    if n_end <= n_quarter:
        return float("nan")
    return (rss_at(t_end) - rss_at(t_quarter)) / (n_end - n_quarter) / 1024


def run_gateload(s: Settings, server: Any, profile: Path, work: Path, sampler: Any) -> dict[str, Any]:
    from bench_ssh import LOCUST, read_samples

    run_time = int(s.sessions / s.spawn_rate * 3 + s.hold_s + 180)
    cmd = [LOCUST, "-f", str(ROOT / "locustfiles" / "homeoffice.py"), "--headless", "--only-summary",
           "-u", str(s.sessions), "-r", str(s.spawn_rate), "-t", f"{run_time}s", "--stop-timeout", "0",
           "--profile", str(profile), "--results-dir", str(work / "results"), "--label", "scale",
           "--loglevel", "WARNING", "GatewayUser"]  # fmt: skip
    log = work / "locust.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
        sampler.watch(proc.pid)
        try:
            result = _hold(server, s, sampler, proc.pid, lambda: proc.poll() is None)
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(120)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    df = read_samples(work / "results")
    ssh = df[df["type"] == "SSH"]
    result["connect_failures"] = int(((ssh["name"] == "connect") & ~ssh["success"]).sum())
    result["drops"] = int((ssh["name"] == "drop").sum())
    result["reconnects"] = int((ssh["name"] == "reconnect").sum())
    result["keystrokes"] = int(((ssh["name"] == "keystroke") & ssh["success"]).sum())
    return result


def run_baseline(s: Settings, server: Any, work: Path, sampler: Any) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "hold", "--port", str(server.ports["echo"]),
           "--host-key", str(server.host_key_pub), "--sessions", str(s.sessions)]  # fmt: skip
    with open(work / "baseline.log", "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        sampler.watch(proc.pid)
        try:
            result = _hold(server, s, sampler, proc.pid, lambda: proc.poll() is None)
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    return result


def _wait_closed(server: Any, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while server.sessions > 0 and time.monotonic() < deadline:
        time.sleep(0.5)


def run(s: Settings) -> dict[str, Any]:
    from bench_ssh import CpuSampler, EchoServerProcess, load_average, raise_nofile, write_profile

    limit = raise_nofile()  # inherited by every child
    load_before = load_average()
    # the work folder holds a run's raw results and profiles: scratch, removed with the run
    with tempfile.TemporaryDirectory(prefix="gateload-bench-scale-", ignore_cleanup_errors=True) as tmp:
        work = Path(tmp)
        with EchoServerProcess({"echo": 0.0}, status_s=0.5) as server, CpuSampler(step_s=0.5) as sampler:
            sampler.watch(server.pid)
            profile = write_profile(
                work, server.ports["echo"], server.host_key_pub, workload=WORKLOAD, keepalive_s=KEEPALIVE_S
            )
            base = run_baseline(s, server, work, sampler)
            _wait_closed(server)
            gl = run_gateload(s, server, profile, work, sampler)
            server_rss = sampler.peak_rss(server.pid)
    held, rss = gl["held"], gl["rss"]
    figures = {
        "sessions_held": held,
        "client_rss_mb": rss / 2**20,
        "sessions_per_gb": held / (rss / GB) if rss else 0.0,
        "marginal_kb_per_session": gl["marginal_kb"],
        "baseline_sessions_held": base["held"],
        "baseline_rss_mb": base["rss"] / 2**20,
        "baseline_sessions_per_gb": base["held"] / (base["rss"] / GB) if base["rss"] else 0.0,
        "baseline_marginal_kb_per_session": base["marginal_kb"],
        "marginal_kb_ratio": gl["marginal_kb"] / base["marginal_kb"] if base["marginal_kb"] else float("nan"),
        "ramp_s": gl["ramp_s"],
        "drops": gl["drops"],
        "reconnects": gl["reconnects"],
        "connect_failures": gl["connect_failures"],
        "server_peak_rss_mb": server_rss / 2**20,
    }
    met = held >= min(s.sessions, TARGET_SESSIONS) and rss <= TARGET_RSS_GB * GB
    notes = (
        f"one Locust process, GatewayUser x {s.sessions} at {s.spawn_rate:g}/s, keepalive {KEEPALIVE_S:g} s, "
        f"think {WORKLOAD['think_min_s']:g}-{WORKLOAD['think_max_s']:g} s between 2-key bursts; held for "
        f"{s.hold_s:g} s after the ramp ({gl['keystrokes']} keystrokes in the run); sessions_held is the "
        f"fewest shells the server counted during the hold; RSS at the end of the hold (peak "
        f"{gl['peak_rss'] / 2**20:.0f} MB); open files limit {limit}; baseline = pure asyncio asyncssh "
        f"client, same server, same keepalive; load average before {load_before[0]:.2f}, after "
        f"{load_average()[0]:.2f}. Target: >= {TARGET_SESSIONS:,} sessions within {TARGET_RSS_GB:g} GB."
    )
    return {"figures": figures, "notes": notes, "target_met": met}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    sub = parser.add_subparsers(dest="cmd")
    p = sub.add_parser("hold", help="the pure asyncio baseline (internal)")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--host-key", required=True)
    p.add_argument("--sessions", type=int, required=True)
    parser.add_argument("--smoke", action="store_true", help="seconds-long run; nothing appended")
    parser.add_argument("--sessions", type=int, default=0, help="sessions to open (default 10,000)")
    args = parser.parse_args(argv)
    if args.cmd == "hold":
        return hold_main(args)
    from dataclasses import replace

    from bench_ssh import report

    settings = SMOKE if args.smoke else FULL
    if args.sessions:
        settings = replace(settings, sessions=args.sessions)
    return report("scale", run(settings), smoke=args.smoke)


if __name__ == "__main__":
    sys.exit(main())
