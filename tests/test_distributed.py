"""Distributed load: a Locust master and two worker processes on loopback against the reference farm.

The merged results must be the sum of what the workers did. Each process also loads
``tests/distributed_tally.py``, which counts the requests that process fired, independently of
gateload's recorder and of Locust's stats. The test checks, exactly: samples in the run folder ==
Locust's total request count (meta.json and locust_stats.csv) == the sum of the workers' own tallies,
per worker too, and the samples' ``worker`` column names the two worker processes.
"""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pandas as pd
import pytest
from real_support import private_dir
from users_support import FAST

from gateload.analysis.schema import SAMPLES_DIR
from gateload.targets.local.process import free_port

ROOT = Path(__file__).resolve().parent.parent
LOCUST = str(Path(sys.executable).parent / "locust")
LOCUSTFILES = "locustfiles/homeoffice.py,tests/distributed_tally.py"
USERS, RUN_TIME = 6, "8s"
TALLY_ENV = "GATELOAD_TALLY_FILE"


def _start(argv: list[str], log: Path, tally: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, TALLY_ENV: str(tally)}
    with log.open("wb") as out:
        return subprocess.Popen(
            [LOCUST, *argv], cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
        )


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait(10)


@pytest.fixture(scope="module")
def distributed_run(reference_farm: Callable[..., Path]) -> Iterator[dict]:
    """Run master + 2 workers once; the run folder, the worker names and every process's tally."""
    profile = reference_farm("reference-before", **FAST)
    with private_dir("distributed") as work:
        yield _run(profile, work)


def _run(profile: Path, work: Path) -> dict:
    port = free_port()
    common = ["-f", LOCUSTFILES, "--profile", str(profile)]
    master_args = [
        "--master", "--master-bind-host", "127.0.0.1", "--master-bind-port", str(port),
        "--expect-workers", "2", "--expect-workers-max-wait", "60",
        "--headless", "-u", str(USERS), "-r", str(USERS), "-t", RUN_TIME,
        "--results-dir", str(work / "results"), "--label", "distributed", "--run-id", "r1",
        "HomeofficeUser",
    ]  # fmt: skip
    master = _start(
        [*common, *master_args],
        work / "master.log",
        work / "tally-master.json",
    )
    workers = [
        _start(
            [*common, "--worker", "--master-host", "127.0.0.1", "--master-port", str(port)],
            work / f"worker-{i}.log",
            work / f"tally-worker-{i}.json",
        )
        for i in range(2)
    ]
    try:
        master_rc = master.wait(120)  # bounded: -t 8s plus start-up and the final flush
        worker_rcs = [w.wait(30) for w in workers]
    finally:
        for proc in (master, *workers):
            _stop(proc)
    logs = {p.name: p.read_text(errors="replace")[-3000:] for p in work.glob("*.log")}
    assert master_rc == 0 and worker_rcs == [0, 0], logs
    return {
        "run_dir": work / "results" / "distributed" / "r1",
        "worker_names": {f"{socket.gethostname()}:{w.pid}" for w in workers},
        "tallies": [json.loads((work / f"tally-worker-{i}.json").read_text()) for i in range(2)],
        "master_tally": json.loads((work / "tally-master.json").read_text()),
    }


@pytest.mark.load
def test_merged_samples_equal_the_sum_of_what_the_workers_did(distributed_run: dict) -> None:
    run_dir: Path = distributed_run["run_dir"]
    samples = pd.read_parquet(run_dir / SAMPLES_DIR)
    meta = json.loads((run_dir / "meta.json").read_text())
    with (run_dir / "locust_stats.csv").open() as fh:
        aggregated = next(r for r in csv.DictReader(fh) if r["Name"] == "Aggregated")
    tallies = distributed_run["tallies"]
    worker_total = sum(t["requests"] for t in tallies)

    assert meta["status"] == "completed" and meta["processes"] == 2
    assert distributed_run["master_tally"]["requests"] == 0  # the master runs no users
    assert all(t["requests"] > 0 for t in tallies)  # both workers did work
    assert len(samples) == meta["sample_count"] == meta["locust"]["requests"] == worker_total
    assert int(aggregated["Request Count"]) == worker_total
    failures = int((~samples["success"]).sum())
    assert failures == meta["locust"]["failures"] == sum(t["failures"] for t in tallies)


@pytest.mark.load
def test_every_sample_names_the_worker_that_recorded_it(distributed_run: dict) -> None:
    samples = pd.read_parquet(distributed_run["run_dir"] / SAMPLES_DIR)
    per_worker = samples.groupby("worker", observed=True).size().to_dict()
    assert set(per_worker) == distributed_run["worker_names"]  # two distinct worker processes
    assert per_worker == {t["worker"]: t["requests"] for t in distributed_run["tallies"]}
    # Users are numbered per process; (worker, user_id) tells the 6 users apart across workers.
    users = samples[["worker", "user_id"]].drop_duplicates()
    assert len(users) == USERS
    assert users.groupby("worker", observed=True).size().tolist() == [USERS // 2, USERS // 2]
