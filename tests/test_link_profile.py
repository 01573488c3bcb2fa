"""The profile's [link] section routes a real Locust run through the emulated homeoffice link."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from gateload.targets.profile import Link, dump_profile, load_profile

ROOT = Path(__file__).resolve().parent.parent
ONE_WAY_MS = 15.0


def keystroke_median_ms(profile: Path, results: Path) -> float:
    cmd = [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(ROOT / "locustfiles/homeoffice.py"),
        "--headless",
        "-u",
        "4",
        "-r",
        "4",
        "-t",
        "8s",
        "--profile",
        str(profile),
        "--results-dir",
        str(results),
        "--label",
        "link",
        "GatewayUser",
    ]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=90)
    assert out.returncode == 0, out.stderr[-2000:]
    samples = pd.read_parquet(next(results.glob("link/*/samples.parquet")))
    keys = samples[(samples["name"] == "keystroke") & samples["success"]]
    assert len(keys) > 40
    return float(keys["duration_ms"].median())


@pytest.mark.slow
@pytest.mark.load
def test_link_preset_adds_its_delay_to_measured_latency(reference_farm, tmp_path: Path) -> None:
    base = reference_farm(
        "reference-before", farm__service__keystroke_ms=1.0, farm__service__distribution="constant"
    )
    profile = load_profile(base)
    typing = dataclasses.replace(profile, workload=dataclasses.replace(profile.workload, mix={"typing": 1.0}))
    direct_path = dump_profile(typing, tmp_path / "direct.toml")
    linked = tmp_path / "linked.toml"
    dump_profile(dataclasses.replace(typing, link=Link(preset="custom", delay_ms=ONE_WAY_MS)), linked)

    direct = keystroke_median_ms(direct_path, tmp_path / "direct")
    through_link = keystroke_median_ms(linked, tmp_path / "linked")
    # a keystroke echo crosses the link twice; the issue allows 2 ms of error
    assert through_link - direct == pytest.approx(2 * ONE_WAY_MS, abs=2.0)
