"""Interrupted runs of real ``HomeofficeUser`` load: the results folder stays readable, is marked
incomplete, and holds every sample the recorder took in, counted.

``tests/test_locustfile.py`` covers SIGTERM to a local runner and Ctrl-C (SIGINT to the process group)
with ``--processes 2``, with synthetic users. Here, with SSH and portal work in flight against a
reference farm: Ctrl-C to a local runner, SIGTERM to ``--processes 2``, a worker process killed with
SIGKILL mid-run (the run goes on with the other), and the whole load generator killed with SIGKILL
(nothing gets to write the end of the run). Each ends with the analysis CLI: it refuses the run with a
one-line error and exit code 2, and reads it with ``--allow-incomplete``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq
import pytest

from gateload.analysis.runs import load_run
from gateload.analysis.schema import part_files
from gateload.cli import main as gateload_main

ROOT = Path(__file__).resolve().parent.parent
LOCUSTFILE = ROOT / "locustfiles" / "homeoffice.py"
FARM = {
    "farm__accounts": 20,
    "farm__service__distribution": "constant",
    "farm__service__portal_page_ms": 1.0,
    "farm__service__portal_login_ms": 1.0,
    "farm__service__portal_launch_ms": 1.0,
    "farm__service__ssh_auth_ms": 1.0,
    "farm__service__keystroke_ms": 1.0,
    "farm__service__screen_update_ms": 1.0,
    "farm__service__tunnel_request_ms": 1.0,
    "workload__think_min_s": 0.1,
    "workload__think_max_s": 0.2,
    "workload__typing_interval_ms": 20.0,
    "workload__burst_keys": 4,
    "workload__timeout_s": 5.0,
}
USERS = "6"


@pytest.fixture(scope="module")
def farm_profile(reference_farm: Callable[..., Path]) -> Path:
    return reference_farm("reference-before", **FARM)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def processes_2() -> list[str]:
    """--processes 2 with the master on loopback and a free port."""
    port = str(free_port())
    master = ["--master-bind-host", "127.0.0.1", "--master-bind-port", port, "--master-port", port]
    return ["--processes", "2", *master]


def start(profile: Path, results: Path, run_s: int, extra: list[str], log: Path) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "-u", USERS, "-r", USERS]
    cmd += ["-t", f"{run_s}s", "--profile", str(profile), "--results-dir", str(results), "--label", "int"]
    with open(log, "wb") as out:
        return subprocess.Popen(
            [*cmd, *extra, "HomeofficeUser"],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def wait_for(condition: Callable[[], Any], timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def run_dir_with_parts(results: Path, parts: int = 2) -> Path:
    """The run folder, once ``parts`` part files are on disk (the run is well under way)."""
    label = results / "int"
    run = wait_for(lambda: label.is_dir() and next(label.iterdir(), None), 30, "the run folder")
    wait_for(lambda: len(part_files(run)) >= parts, 30, f"{parts} part files")
    return run


def finish(proc: subprocess.Popen[bytes], timeout_s: float) -> None:
    try:
        proc.wait(timeout=timeout_s)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def rows_on_disk(run: Path) -> int:
    return sum(pq.read_metadata(p).num_rows for p in part_files(run))


def meta_of(run: Path) -> dict[str, Any]:
    return json.loads((run / "meta.json").read_text())


def assert_analysis_refuses_then_reads(run: Path, tmp: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``gateload report`` refuses the run (one line, exit 2) and reads it with --allow-incomplete."""
    args = ["report", str(run), "--out", str(tmp / "report"), "--bootstrap", "100"]
    assert gateload_main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "incomplete" in err and "--allow-incomplete" in err, err
    loaded = load_run(run, allow_incomplete=True)
    assert not loaded.complete and len(loaded.samples) == rows_on_disk(run)
    assert gateload_main([*args, "--allow-incomplete"]) == 0, capsys.readouterr()
    verdict = json.loads((tmp / "report" / "verdict.json").read_text())
    assert verdict["incomplete"] is True and verdict["runs"]["run"][0]["samples"] == rows_on_disk(run)
    assert "INCOMPLETE" in (tmp / "report" / "report.html").read_text()


def children(pid: int) -> list[int]:
    """Child process ids (Linux /proc)."""
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


@pytest.mark.parametrize(
    ("sig", "extra"),
    [(signal.SIGINT, []), (signal.SIGTERM, "processes")],
    ids=["ctrl-c-local", "sigterm-processes-2"],
)
@pytest.mark.load
def test_signal_mid_session_keeps_every_sample(
    farm_profile: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], sig: int, extra: Any
) -> None:
    args = processes_2() if extra == "processes" else []
    proc = start(farm_profile, tmp_path / "res", 60, args, tmp_path / "locust.log")
    try:
        run = run_dir_with_parts(tmp_path / "res")
        seen = rows_on_disk(run)
        os.killpg(proc.pid, sig)  # Ctrl-C / a service manager: the whole process group
    finally:
        finish(proc, 60)
    log = (tmp_path / "locust.log").read_text()
    assert "Traceback" not in log, log[-3000:]  # users stopped mid-operation shut down cleanly
    meta = meta_of(run)
    assert meta["status"] == "interrupted" and meta["completed"] is False
    assert proc.returncode == 1, "a headless run cut short does not exit 0"
    assert rows_on_disk(run) == meta["sample_count"] >= seen  # every sample taken in is on disk
    assert meta["recorder"]["complete"], meta["recorder"]["problems"]
    df = pd.read_parquet(run / "samples.parquet")
    assert {"SSH", "HTTP", "SESSION"} <= set(df["type"].astype(str))  # real sessions were under way
    if extra == "processes":
        per_worker = df["worker"].astype(str).value_counts().to_dict()
        assert per_worker == {w: v["rows"] for w, v in meta["recorder"]["workers"].items()}
    assert_analysis_refuses_then_reads(run, tmp_path, capsys)


@pytest.mark.load
def test_killed_worker_process_leaves_a_failed_run_with_what_it_sent(
    farm_profile: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    proc = start(farm_profile, tmp_path / "res", 10, processes_2(), tmp_path / "locust.log")
    try:
        run = run_dir_with_parts(tmp_path / "res", parts=3)
        victim = children(proc.pid)[0]
        os.kill(victim, signal.SIGKILL)  # the OOM killer, a crash: no chance to say goodbye
        killed_at = time.time()
    finally:
        finish(proc, 90)
    meta = meta_of(run)
    assert meta["status"] == "failed" and meta["completed"] is False
    assert proc.returncode == 1, "a CI pipeline trusting Locust's exit code sees the lost worker"
    assert meta["ended_at"] > killed_at + 2, "the run went on with the other worker"
    problems = meta["recorder"]["problems"]
    assert len(problems) == 1 and f":{victim}" in problems[0] and "no final count" in problems[0]
    # every sample that reached the master is on disk, per worker
    df = pd.read_parquet(run / "samples.parquet")
    per_worker = df["worker"].astype(str).value_counts().to_dict()
    assert per_worker == {w: v["rows"] for w, v in meta["recorder"]["workers"].items()}
    assert len(df) == meta["sample_count"] == sum(per_worker.values())
    dead = next(w for w in per_worker if w.endswith(f":{victim}"))
    assert per_worker[dead] > 0  # what the killed worker sent before it died is kept
    survivor = df[df["worker"].astype(str) != dead]
    assert survivor["t_start"].max() > killed_at + 2
    assert_analysis_refuses_then_reads(run, tmp_path, capsys)


@pytest.mark.load
def test_killed_load_generator_leaves_readable_parts(
    farm_profile: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    proc = start(farm_profile, tmp_path / "res", 60, [], tmp_path / "locust.log")
    try:
        run = run_dir_with_parts(tmp_path / "res", parts=3)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        finish(proc, 30)
    meta = meta_of(run)
    assert meta["status"] == "running" and meta["sample_count"] is None  # it never got to the end
    # every finished part is whole (a part is written to a temp file and renamed)
    assert rows_on_disk(run) == len(pd.read_parquet(run / "samples.parquet")) > 0
    assert_analysis_refuses_then_reads(run, tmp_path, capsys)
