"""The emulated homeoffice link between the real Locust users and real gateway software.

``link_profile`` puts delay proxies in front of the profile's portal and gateway (as the locustfile does
when ``[link]`` names a preset); the added delay must appear in the latency the users measure: a
keystroke echo and a kept-alive HTTP request each pay one round trip, 2 x the one-way delay.
"""

from __future__ import annotations

import dataclasses
import statistics
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import users_support  # noqa: F401  (gevent monkey-patching first, as under the locust command)
from real_support import FAST_WORKLOAD, running_farm
from users_support import Run, run_users

from locustfiles.lib.gateway import GatewayUser
from locustfiles.lib.portal import PortalUser
from targets.link import link_profile
from targets.local.farm import LocalRealFarm
from targets.profile import Link, dump_profile, load_profile

ROOT = Path(__file__).resolve().parent.parent
DELAY_MS = 10.0
TOLERANCE_MS = 2.0  # the bar


@pytest.fixture(scope="module")
def farm() -> Iterator[LocalRealFarm]:
    with running_farm("real-link", portal_backends=1, gateways=1) as local:
        yield local


ROUNDS = 3  # direct and linked runs alternate (ABABAB), so a burst of load elsewhere hits both sides


def _latencies(samples: list[dict], kind: str, name: str) -> list[float]:
    return [s["response_time"] for s in samples if (s["request_type"], s["name"]) == (kind, name)]


def _abab(direct_path: Path, collect: Callable[[Path], list[float]]) -> tuple[float, float]:
    """Median latency direct and through a DELAY_MS link, from alternating runs."""
    profile = dataclasses.replace(load_profile(direct_path), link=Link(preset="custom", delay_ms=DELAY_MS))
    direct: list[float] = []
    linked_values: list[float] = []
    with link_profile(profile) as linked:
        linked_path = dump_profile(linked.profile, direct_path.with_name(f"linked-{direct_path.name}"))
        for _ in range(ROUNDS):
            direct += collect(direct_path)
            linked_values += collect(linked_path)
    assert len(direct) >= 20 * ROUNDS and len(linked_values) >= 20 * ROUNDS
    return statistics.median(direct), statistics.median(linked_values)


def test_link_delay_shows_in_keystroke_echo_latency(farm: LocalRealFarm) -> None:
    workload = dataclasses.replace(
        FAST_WORKLOAD, mix={"typing": 1.0}, burst_keys=10, typing_interval_ms=DELAY_MS * 4
    )

    def keystrokes(path: Path) -> list[float]:
        def enough(r: Run) -> bool:
            return r.count("SSH", "keystroke") >= 30

        run = run_users(path, GatewayUser, users=2, until=enough, timeout_s=60)
        assert run.operations(ok=False).total() == 0, run.errors()
        return _latencies(run.samples, "SSH", "keystroke")

    direct, through_link = _abab(
        farm.write_profile("typing", accounts="gateway", workload=workload), keystrokes
    )
    print(f"keystroke echo median: direct {direct:.2f} ms, through link {through_link:.2f} ms")
    assert through_link - direct == pytest.approx(2 * DELAY_MS, abs=TOLERANCE_MS)


def test_link_delay_shows_in_portal_request_latency(farm: LocalRealFarm) -> None:
    workload = dataclasses.replace(FAST_WORKLOAD, think_min_s=0.0, think_max_s=0.02)

    def requests(path: Path) -> list[float]:
        def enough(r: Run) -> bool:
            return r.count("HTTP", "GET /api/apps") >= 20

        run = run_users(path, PortalUser, users=2, until=enough, timeout_s=60)
        assert run.operations(ok=False).total() == 0, run.errors()
        return _latencies(run.samples, "HTTP", "GET /api/apps")

    direct, through_link = _abab(
        farm.write_profile("portal-fast", accounts="portal", workload=workload), requests
    )
    print(f"GET /api/apps median: direct {direct:.2f} ms, through link {through_link:.2f} ms (TLS verified)")
    assert through_link - direct == pytest.approx(2 * DELAY_MS, abs=TOLERANCE_MS)


def test_link_thread_keeps_time_under_gevent_monkey_patching() -> None:
    """What Locust does to the process (gevent.monkey.patch_all) must not slow the delay line."""
    script = textwrap.dedent(
        """
        from gevent import monkey; monkey.patch_all()
        import socket, statistics, time, gevent
        from gevent.server import StreamServer
        from targets.link import LinkProxy, LinkSpec, LinkThread

        def echo(sock, _addr):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            while data := sock.recv(4096):
                sock.sendall(data)

        server = StreamServer(("127.0.0.1", 0), echo); server.start()
        thread = LinkThread(); proxy = LinkProxy(server.address, LinkSpec(delay_ms=15.0))
        thread.add(proxy); thread.start()
        sock = socket.create_connection(proxy.address)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        rtts = []
        for _ in range(40):
            t0 = time.perf_counter(); sock.sendall(b"ping"); sock.recv(16)
            rtts.append((time.perf_counter() - t0) * 1000)
        sock.close(); thread.stop(); server.stop()
        print(statistics.median(rtts))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60, check=True
    )
    assert float(out.stdout.strip().splitlines()[-1]) == pytest.approx(30.0, abs=TOLERANCE_MS), out.stderr
