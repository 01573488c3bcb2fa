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
from needs import wakeup_lateness_ms
from real_support import FAST_WORKLOAD, running_farm
from users_support import Run, run_users

from gateload.locustfiles.lib.portal import PortalUser
from gateload.locustfiles.lib.remoteuser import GatewayUser
from gateload.targets.link import LinkedProfile, link_profile
from gateload.targets.local.farm import DOCUMENTS, LocalRealFarm
from gateload.targets.profile import Link, dump_profile, load_profile

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


@dataclasses.dataclass(frozen=True)
class Medians:
    """Median latency direct, through a zero-delay link and through a DELAY_MS link (alternating runs),
    and how late the DELAY_MS link's delay lines released a chunk on average."""

    direct: float
    zero: float
    delayed: float
    late: float

    def check(self, what: str) -> None:
        """The delay shows in full (at least 2 x DELAY_MS - tolerance more than direct), and the delay
        line adds no more than 2 x DELAY_MS + tolerance + its own measured lateness to the same proxy
        hop without delay: the hop's own cost (two more loopback wake-ups) is the zero-delay run's."""
        print(
            f"{what} median: direct {self.direct:.2f} ms, zero-delay link {self.zero:.2f} ms, "
            f"{DELAY_MS:g} ms link {self.delayed:.2f} ms, link late {self.late:.2f} ms"
        )
        late = max(self.late, wakeup_lateness_ms())  # a timer is late by about this, never early
        assert self.delayed - self.direct >= 2 * DELAY_MS - TOLERANCE_MS, self
        assert self.delayed - self.zero <= 2 * DELAY_MS + TOLERANCE_MS + 2 * late, (self, late)


def _abab(direct_path: Path, collect: Callable[[Path], list[float]]) -> Medians:
    """Direct, zero-delay-link and DELAY_MS-link runs alternate (ABCABC), so load elsewhere hits all."""
    base = load_profile(direct_path)
    values: dict[str, list[float]] = {"direct": [], "zero": [], "delayed": []}
    delayed = dataclasses.replace(base, link=Link(preset="custom", delay_ms=DELAY_MS))
    zero = dataclasses.replace(base, link=Link(preset="custom", delay_ms=0.0))
    with link_profile(zero) as zero_link, link_profile(delayed) as linked:
        paths = {
            "direct": direct_path,
            "zero": dump_profile(zero_link.profile, direct_path.with_name(f"zero-{direct_path.name}")),
            "delayed": dump_profile(linked.profile, direct_path.with_name(f"linked-{direct_path.name}")),
        }
        for _ in range(ROUNDS):
            for name, path in paths.items():
                values[name] += collect(path)
    assert all(len(v) >= 20 * ROUNDS for v in values.values()), {k: len(v) for k, v in values.items()}
    late = max(stats.mean_late_ms() for stats in linked.stats.values() if stats.releases)
    return Medians(*(statistics.median(values[k]) for k in ("direct", "zero", "delayed")), late=late)


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

    _abab(farm.write_profile("typing", accounts="gateway", workload=workload), keystrokes).check(
        "keystroke echo"
    )


def test_link_delay_shows_in_portal_request_latency(farm: LocalRealFarm) -> None:
    workload = dataclasses.replace(FAST_WORKLOAD, think_min_s=0.0, think_max_s=0.02)

    def requests(path: Path) -> list[float]:
        def enough(r: Run) -> bool:
            return r.count("HTTP", "GET /api/apps") >= 20

        run = run_users(path, PortalUser, users=2, until=enough, timeout_s=60)
        assert run.operations(ok=False).total() == 0, run.errors()
        return _latencies(run.samples, "HTTP", "GET /api/apps")

    _abab(farm.write_profile("portal-fast", accounts="portal", workload=workload), requests).check(
        "GET /api/apps (TLS verified)"
    )


def test_link_thread_keeps_time_under_gevent_monkey_patching() -> None:
    """What Locust does to the process (gevent.monkey.patch_all) must not slow the delay line."""
    script = textwrap.dedent(
        """
        from gevent import monkey; monkey.patch_all()
        import socket, statistics, time, gevent
        from gevent.server import StreamServer
        from gateload.targets.link import LinkProxy, LinkSpec, LinkThread

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


def _through_link(
    farm: LocalRealFarm, name: str, link: Link, **changes: object
) -> tuple[Path, LinkedProfile]:
    """A gateway profile behind ``link``; the caller stops the returned LinkedProfile."""
    path = farm.write_profile(name, accounts="gateway", **changes)
    linked = link_profile(dataclasses.replace(load_profile(path), link=link), seed=7)
    return dump_profile(linked.profile, path.with_name(f"linked-{path.name}")), linked


def test_link_loss_shows_as_reset_connections_to_the_users(farm: LocalRealFarm) -> None:
    workload = dataclasses.replace(FAST_WORKLOAD, mix={"exec": 1.0})
    lossy = Link(preset="custom", loss_reset_pct=50.0)
    path, linked = _through_link(farm, "lossy", lossy, workload=workload)
    try:

        def enough(r: Run) -> bool:
            return r.count("SSH", "connect", ok=False) + r.count("SSH", "connect") >= 6

        run = run_users(path, GatewayUser, users=3, until=enough, timeout_s=60)
    finally:
        linked.stop()
    connects = [s for s in run.samples if (s["request_type"], s["name"]) == ("SSH", "connect")]
    failed = [s for s in connects if s["exception"] is not None]
    # Every connection the link reset is a failed connect classified "reset", and nothing else failed.
    assert len(failed) == linked.stats["gateway"].resets > 0
    assert set(run.operations(ok=False)) == {("SSH", "connect")}
    assert {s["context"]["error"] for s in failed} == {"reset"}
    assert run.count("SSH", "connect") > 0  # the others got through (about half of the attempts)
    print(f"link reset {len(failed)} of {len(connects)} SSH connections; all recorded as 'reset'")


def test_link_bandwidth_shows_in_sftp_download_time(farm: LocalRealFarm) -> None:
    kbit = 2000.0  # 250 kB/s: the 64 KiB document takes 262 ms on the wire
    workload = dataclasses.replace(FAST_WORKLOAD, mix={"sftp_get": 1.0})
    path, linked = _through_link(
        farm, "narrow", Link(preset="custom", bandwidth_kbit=kbit), workload=workload
    )
    try:
        run = run_users(path, GatewayUser, users=1, until=lambda r: r.count("SFTP", "get") >= 5, timeout_s=60)
    finally:
        linked.stop()
    gets = _latencies(run.samples, "SFTP", "get")
    assert len(gets) >= 5, run.errors()
    wire_ms = DOCUMENTS["memo.pdf"] * 8 / kbit  # kbit/s = bit/ms
    # SFTP framing and requests add a little on top of the payload; never faster than the wire.
    median = statistics.median(gets)
    print(f"SFTP get of 64 KiB at {kbit:.0f} kbit/s: median {median:.1f} ms, wire {wire_ms:.1f} ms")
    assert wire_ms < median < wire_ms * 1.25, gets
