"""Per-server shares through the real load balancer, from a real ``locust`` run's results folder.

The locustfile runs as a subprocess (headless, as in CI runs) against the local real farm: PortalUser
through stunnel and haproxy (HTTP, sticky), GatewayUser through haproxy (TCP) to two sshd. The run
folder's samples are grouped by ``server`` with pandas and checked against haproxy's own per-server
counters; the analysis module then shows each backend's share with its interval.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from real_support import FAST_WORKLOAD, running_farm

from gateload.analysis.compare import share_of_even
from gateload.analysis.metrics import analyze_run
from gateload.analysis.runs import load_run
from gateload.analysis.schema import SAMPLES_DIR
from gateload.targets.local.farm import LocalRealFarm
from gateload.targets.local.haproxy import HTTP_BACKEND, TCP_BACKEND

ROOT = Path(__file__).resolve().parent.parent
LOCUST = str(Path(sys.executable).parent / "locust")
USERS = 6


@pytest.fixture(scope="module")
def farm() -> Iterator[LocalRealFarm]:
    with running_farm("real-shares", portal_backends=3, gateways=2) as local:
        yield local


def _locust_run(
    profile: Path, user_class: str, results: Path, seconds: int = 8, extra: tuple[str, ...] = ()
) -> Path:
    """A headless run of the project's locustfile; returns its run folder."""
    argv = [
        LOCUST, "-f", "locustfiles/homeoffice.py", "--headless",
        "-u", str(USERS), "-r", str(USERS), "-t", f"{seconds}s",
        "--profile", str(profile), "--results-dir", str(results), "--label", "real", "--run-id", user_class,
        *extra, user_class,
    ]  # fmt: skip
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return results / "real" / user_class


def _check_against_haproxy(run_dir: Path, lb_delta: dict[str, int], kind: str) -> pd.Series:
    samples = pd.read_parquet(run_dir / SAMPLES_DIR)
    assert samples["success"].all(), samples.loc[~samples["success"], ["name", "error"]]
    counted = samples[samples["type"] == kind].groupby("server", observed=True).size()
    lb = pd.Series(lb_delta)
    assert sorted(counted.index) == sorted(lb.index)
    gap = lb.reindex(counted.index) - counted
    # haproxy saw every sampled operation; at most one per user was cut off unsampled at the end.
    assert (gap >= 0).all() and gap.sum() <= USERS, pd.DataFrame({"samples": counted, "haproxy": lb})
    return counted / counted.sum()


@pytest.mark.load
def test_portal_share_per_backend_through_haproxy(farm: LocalRealFarm) -> None:
    assert farm.portal_lb is not None
    workload = dataclasses.replace(FAST_WORKLOAD, think_min_s=0.05, think_max_s=0.1)
    profile = farm.write_profile("shares-portal", accounts="portal", workload=workload)
    before = farm.portal_lb.counts(HTTP_BACKEND, "req_tot")
    run_dir = _locust_run(profile, "PortalUser", farm.state_dir / "results")
    after = farm.portal_lb.counts(HTTP_BACKEND, "req_tot")
    share = _check_against_haproxy(run_dir, {s: after[s] - before[s] for s in after}, "HTTP")
    assert ((share - 1 / 3).abs() < 0.1).all(), share

    stats = analyze_run(load_run(run_dir))
    assert sorted(stats.servers) == sorted(farm.backend_ids)
    even = share_of_even(stats, farm.backend_ids)
    for server, estimate in even.items():
        # share / (1/3): about 1 for each of the three backends, with an interval around it
        assert 0.7 < estimate.value < 1.3, (server, estimate)
        assert estimate.lo <= estimate.value <= estimate.hi
    print("portal share of even per backend:", {s: round(e.value, 3) for s, e in even.items()})


@pytest.mark.load
def test_gateway_share_per_sshd_through_haproxy_tcp(farm: LocalRealFarm) -> None:
    assert farm.gateway_lb is not None
    workload = dataclasses.replace(FAST_WORKLOAD, think_min_s=0.05, think_max_s=0.1)
    profile = farm.write_profile("shares-gateway", accounts="gateway", workload=workload)
    before = farm.gateway_lb.counts(TCP_BACKEND)
    # The local sshd farm has one stock test account and no per-account login limit: the users share it,
    # said explicitly (without it, the pre-flight check refuses 6 users on 1 account).
    run_dir = _locust_run(
        profile, "GatewayUser", farm.state_dir / "results", extra=("--users-per-account", str(USERS))
    )
    after = farm.gateway_lb.counts(TCP_BACKEND)
    samples = pd.read_parquet(run_dir / SAMPLES_DIR)
    connects = samples[(samples["type"] == "SSH") & (samples["name"] == "connect")]
    per_sshd = connects.groupby("server", observed=True).size().to_dict()
    # One SSH connection per user, each attributed by the banner of the sshd haproxy chose.
    assert per_sshd == {s: after[s] - before[s] for s in after}
    assert per_sshd == {"gw-01": USERS // 2, "gw-02": USERS // 2}  # leastconn: even split
    assert samples["success"].all(), samples.loc[~samples["success"], ["name", "error"]]

    stats = analyze_run(load_run(run_dir))
    even = share_of_even(stats, ["gw-01", "gw-02"])
    assert set(even) == {"gw-01", "gw-02"}
    assert all(0.5 < e.value < 1.5 for e in even.values()), even
    print("gateway share of even per sshd:", {s: round(e.value, 3) for s, e in even.items()})
