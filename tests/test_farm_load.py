"""The capacity model under a short, bounded closed-loop load against a farm subprocess.

Each client is a logged-in portal session pinned (round-robin) to one backend, so N clients on S
servers put exactly N/S clients on each server. Service time is raised to 40 ms per page, so the
rates stay low enough (<= ~200 req/s) for a busy 2-core machine. Assertions are ratios with honest
tolerances, never absolute latencies.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest

from targets.profile import load_profile
from targets.reference.loadgen import LoadResult, closed_loop, portal_page_clients
from targets.reference.state import read_credentials

PAGE_MS = 40.0  # mean service time of a portal page in these tests (exponential)
SECONDS = 3.0  # per measurement; every loop also stops after MAX_OPS
MAX_OPS = 5_000


def _farm(reference_farm: Callable[..., Path], name: str) -> Path:
    return reference_farm(name, farm__service__portal_page_ms=PAGE_MS, farm__accounts=60)


def _measure(profile_path: Path, per_server: int, think_s: float) -> LoadResult:
    profile = load_profile(profile_path)
    clients = len(profile.server_ids) * per_server
    accounts = read_credentials(Path(profile.credentials.file))[:clients]

    async def main() -> LoadResult:
        ops, close = await portal_page_clients(profile.portal.url, accounts)
        try:
            return await closed_loop(ops, duration_s=SECONDS, max_ops=MAX_OPS, think_s=think_s)
        finally:
            await close()

    return asyncio.run(main())


@pytest.mark.slow
def test_latency_grows_with_load_and_throughput_stops_at_capacity(
    reference_farm: Callable[..., Path],
) -> None:
    path = _farm(reference_farm, "reference-before")
    capacity = 4 * 1000.0 / PAGE_MS  # 4 servers x 1 worker, 40 ms per page: 100 pages/s
    light = _measure(path, per_server=1, think_s=0.0)
    heavy = _measure(path, per_server=6, think_s=0.0)
    assert light.errors == 0 and heavy.errors == 0
    # one client per server finds it idle; six queue behind each other (~6 x the service time)
    assert heavy.mean_ms > 3 * light.mean_ms, (light.summary(), heavy.summary())
    # saturated: the workers set the pace, not this machine's CPU, and never more than capacity
    assert 0.7 * capacity < heavy.throughput < 1.15 * capacity, heavy.summary()
    # alone on its server, a request takes about one service time (plus client overhead)
    assert light.mean_ms < 2 * PAGE_MS, light.summary()


@pytest.mark.slow
def test_twelve_servers_carry_three_times_the_load_of_four_at_the_same_latency(
    reference_farm: Callable[..., Path],
) -> None:
    # same load per server (2 clients each, 100 ms think: about 50% busy), 3x the clients
    before = _measure(_farm(reference_farm, "reference-before"), per_server=2, think_s=0.1)
    after = _measure(_farm(reference_farm, "reference-after"), per_server=2, think_s=0.1)
    assert before.errors == 0 and after.errors == 0
    ratio = after.throughput / before.throughput
    assert 2.4 < ratio < 3.6, (before.summary(), after.summary())
    assert 0.6 < after.mean_ms / before.mean_ms < 1.6, (before.summary(), after.summary())
