"""The benchmarks (bench/, issue 7) in their seconds-long smoke mode: each runs, exits 0, prints its figures.

Only the smoke mode runs in CI: the figures are not checked against targets here (no timed asserts),
only that every headline figure is printed with a finite number, and that a smoke run leaves
bench/RESULTS.md as it was and nothing in its temporary folder (its runs' raw results and profiles are
scratch). ``make bench`` runs the full benchmarks.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
RESULTS = BENCH / "RESULTS.md"

#: bench script -> the figures its smoke run must print with a number.
FIGURES = {
    "bench_portal.py": ["portal_ratio", "portaluser_rps", "fasthttpuser_rps", "cpu_efficiency_ratio"],
    "bench_ssh.py": [
        "ssh_ratio",
        "gateway_ops_per_s",
        "baseline_ops_per_s",
        "cpu_efficiency_ratio",
        "gateway_main_thread_us_per_op",
        "gateway_loop_thread_us_per_op",
    ],
    "bench_timing.py": [
        "no_hog_error_vs_baseline_p50_ms",
        "no_hog_error_vs_baseline_p99_ms",
        "hog_error_vs_baseline_p50_ms",
        "hog_error_vs_baseline_p99_ms",
        "no_hog_error_vs_injected_p50_ms",
        "hog_error_vs_injected_p99_ms",
    ],
    "bench_scale.py": ["sessions_held", "client_rss_mb", "sessions_per_gb", "baseline_sessions_per_gb"],
    "bench_recorder.py": ["recorder_samples_per_s", "recorder_ratio", "recorder_us_per_fire", "samples_lost"],
    "bench_analysis.py": ["compare_s", "compare_peak_rss_mb", "baseline_pandas_s"],
    "bench_density.py": [
        "gatewayuser_sessions_per_core",
        "homeofficeuser_sessions_per_core",
        "gatewayuser_cpu_warnings",
        "homeofficeuser_cpu_warnings",
        "vpn_sessions_per_core",
        "vpn_late_p99_ms",
        "rdp_sessions_per_core",
        "rdp_late_p99_ms",
    ],
    "bench_openvpn.py": ["tunnels_per_s", "client_cpu_ms_per_up", "client_pss_mb", "held_tunnels_per_core"],
}
_NUMBER = r"(-?\d[\d.]*(?:e[+-]?\d+)?|-?nan|-?inf)"
#: bench_density's subjects whose server is a Debian package run as root (ocserv, xrdp): without it
#: their figures give way to a one-line skip note, except under CI, where a missing one is an error.
DENSITY_SERVERS = ("vpn", "rdp")
DENSITY_LIMITS = {"generator", "server", "cap", "none"}


def _results_state() -> bytes | None:
    return RESULTS.read_bytes() if RESULTS.exists() else None


def _figure(output: str, name: str) -> float:
    found = re.search(rf"^\s*{re.escape(name)}:?\s+{_NUMBER}\s*$", output, re.MULTILINE)
    assert found, f"{name} not printed with a number:\n{output[-3000:]}"
    return float(found.group(1))


def _density_skipped(output: str) -> set[str]:
    """bench_density's server subjects skipped here (never under CI); every subject that ran printed
    the limit that stopped its ramp (not judged: a smoke step's seconds on a busy machine mean nothing)."""
    from needs import in_ci

    skipped = {x for x in DENSITY_SERVERS if re.search(rf"^{x}: skipped \(.+\)$", output, re.MULTILINE)}
    assert not (skipped and in_ci()), f"CI must provide the servers of {skipped}"
    for subject in {"gatewayuser", "homeofficeuser", *DENSITY_SERVERS} - skipped:
        found = re.search(rf"^\s*{subject}_limit\s+(\w+)\s*$", output, re.MULTILINE)
        assert found and found.group(1) in DENSITY_LIMITS, f"{subject}_limit:\n{output[-3000:]}"
    return skipped


def _smoke(*args: str, timeout: float = 150) -> str:
    """Run a benchmark with a temporary folder (TMPDIR) of its own; it must leave that folder empty."""
    tmp = Path(tempfile.mkdtemp(prefix="gl-smoke-"))  # short: servers put unix sockets under it
    try:
        proc = subprocess.run(
            [sys.executable, *args],
            cwd=ROOT,
            env={**os.environ, "TMPDIR": str(tmp)},
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        left = sorted(p.name for p in tmp.iterdir())
        assert not left, f"the benchmark left {left} in its temporary folder"
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return proc.stdout


@pytest.mark.parametrize("script", sorted(FIGURES))
@pytest.mark.load
def test_benchmark_smoke_prints_its_figures(script: str) -> None:
    before = _results_state()
    output = _smoke(str(BENCH / script), "--smoke")
    skipped = _density_skipped(output) if script == "bench_density.py" else set()
    for name in FIGURES[script]:
        if name.split("_", 1)[0] not in skipped:
            assert math.isfinite(_figure(output, name)), name
    assert _results_state() == before, "a smoke run must not append to bench/RESULTS.md"


def test_run_all_runs_the_chosen_benchmarks_and_summarises() -> None:
    before = _results_state()
    output = _smoke(str(BENCH / "run_all.py"), "--smoke", "--only", "recorder")
    assert "### recorder (smoke" in output
    assert re.search(r"^\s+recorder\s+[\d.]+ s\s+load\s+[\d.]+\s+ok$", output, re.MULTILINE), output[-2000:]
    _figure(output, "recorder_samples_per_s")
    assert _results_state() == before


def test_run_all_refuses_an_unknown_benchmark() -> None:
    proc = subprocess.run(
        [sys.executable, str(BENCH / "run_all.py"), "--smoke", "--only", "nope"],
        cwd=ROOT, capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert proc.returncode == 2 and "unknown benchmark" in proc.stderr


#: A child whose main thread waits while a second thread spins for at most 3 s.
_SPINNER = """
import threading, time
stop = time.monotonic() + 3.0
def spin():
    while time.monotonic() < stop:
        pass
t = threading.Thread(target=spin)
t.start()
print("up", flush=True)
t.join()
"""


def test_the_cpu_sampler_splits_a_process_by_thread() -> None:
    sys.path.insert(0, str(BENCH))
    from bench_ssh import CpuSampler

    proc = subprocess.Popen([sys.executable, "-c", _SPINNER], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "up"
        with CpuSampler(step_s=0.05) as sampler:
            sampler.watch(proc.pid, threads=True)
            t0 = time.time() + 0.1
            t1 = t0 + 1.0
            while time.time() < t1 + 0.2 and proc.poll() is None:  # bounded by the child's 3 s
                time.sleep(0.05)
            threads = sampler.threads_between(proc.pid, t0, t1)
            total = sampler.cpu_between(proc.pid, t0, t1)
    finally:
        proc.kill()
        proc.wait(5)
    assert set(threads) - {proc.pid} and proc.pid in threads, threads
    spinner = max(c for tid, c in threads.items() if tid != proc.pid)
    assert spinner > 0.1 and threads[proc.pid] < spinner / 10, threads
    # the threads add up to the process (both read from /proc, in clock ticks of 10 ms)
    assert abs(sum(threads.values()) - total) <= 0.03 + 0.05 * total, (threads, total)
