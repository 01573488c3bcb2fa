"""The user classes under the real ``locust`` command: headless, ``--processes 2``, clean exit."""

from __future__ import annotations

import csv
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from users_support import FAST

from gateload.targets.profile import ACTIVITIES

REPO = Path(__file__).resolve().parent.parent
LOCUST = str(Path(sys.executable).with_name("locust"))
RUN_S = 6


@pytest.mark.load
def test_headless_with_two_processes(reference_farm, tmp_path: Path) -> None:
    path = reference_farm("reference-before", **FAST, workload__mix={a: 1.0 for a in ACTIVITIES})
    cmd = [
        LOCUST,
        "-f",
        "locustfiles/homeoffice.py",
        "--headless",
        "-u",
        "4",
        "-r",
        "4",
        "-t",
        f"{RUN_S}s",
        "--processes",
        "2",
        "--profile",
        str(path),
        "--results-dir",
        str(tmp_path / "results"),
        "--csv",
        str(tmp_path / "locust"),
        "--exit-code-on-error",
        "0",
        "HomeofficeUser",
    ]
    t0 = time.monotonic()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    elapsed = time.monotonic() - t0
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert elapsed < RUN_S + 45  # the processes exit by themselves, in bounded time
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]

    with open(tmp_path / "locust_stats.csv", newline="") as fh:
        stats = {(r["Type"], r["Name"]): r for r in csv.DictReader(fh)}
    for op in [
        ("HTTP", "GET /login"),
        ("HTTP", "POST /mfa"),
        ("SSH", "connect"),
        ("SSH", "keystroke"),
        ("SESSION", "logon"),
    ]:
        assert int(stats[op]["Request Count"]) > 0, op
    assert sum(int(r["Failure Count"]) for r in stats.values()) == 0

    # Both child processes ran users: the raw samples name two workers.
    parts = list((tmp_path / "results").rglob("samples.parquet"))
    assert len(parts) == 1
    samples = pd.read_parquet(parts[0])
    assert samples["worker"].nunique() == 2
    assert set(samples.loc[samples["type"] == "SSH", "name"]) >= {"connect", "keystroke", "screen_update"}
