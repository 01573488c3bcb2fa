"""The ``vpn`` protocol (AnyConnect-compatible SSL-VPN) against a real ocserv on loopback (issue 13, part 1).

ocserv is Debian's package, started by the tests as root from a private config
(:class:`targets.local.ocserv.Ocserv`): the "relaxed" variant for the load test, Debian's shipped
anti-abuse settings ("production defaults") for the throttling test. Locust's GatewayUser speaks the
protocol through a profile with ``[gateway] protocol = "vpn"``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import os
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path

import pytest
import users_support  # noqa: F401  (gevent monkey-patching first, as under the locust command)
from real_support import private_dir, run_async, start_or_skip
from users_support import Run, environment, wait_until

from locustfiles.lib import remote
from locustfiles.lib.aiobridge import Timed, timed
from locustfiles.lib.errors import classify
from locustfiles.lib.remoteuser import GatewayUser
from locustfiles.lib.vpn import VPN_CATALOGUE, VPNSession, source_address
from locustfiles.lib.vpnops import VPNConnection, VPNSpec
from targets.local.ocserv import Ocserv
from targets.local.process import _descendants, free_port
from targets.local.tlsca import make_test_ca
from targets.profile import Workload, dump_profile, load_profile

BASE_PROFILE = Path(__file__).resolve().parent.parent / "targets" / "profiles" / "local-real.toml"
USERS = 20
HOLD_S = 25.0
#: A paced burst of 8 keepalives 250 ms apart, then a short think time: every tunnel stays busy. The
#: think time is longer than the pace, so no gap between two bursts can pass for a gap inside one.
WORKLOAD = Workload(
    activities_per_session=1000,
    think_min_s=0.3,
    think_max_s=0.7,
    typing_interval_ms=250.0,
    burst_keys=8,
    documents=["memo.pdf"],
    timeout_s=10.0,
    mix={"typing": 1.0},
)


def _profile(vpn: Ocserv, folder: Path, name: str, credentials: Path | None = None) -> Path:
    """The shipped local-real profile pointed at this ocserv: protocol vpn, its CA, its accounts."""
    assert vpn.ca is not None
    p = load_profile(BASE_PROFILE)
    profile = dataclasses.replace(
        p,
        portal=dataclasses.replace(p.portal, ca_file=str(vpn.ca.ca_cert)),
        gateway=dataclasses.replace(p.gateway, host=vpn.host, port=vpn.port, protocol="vpn", host_key=""),
        credentials=dataclasses.replace(p.credentials, file=str(credentials or vpn.credentials)),
        workload=WORKLOAD,
    )
    return dump_profile(profile, folder / f"{name}.toml")


@pytest.fixture(scope="module")
def relaxed() -> Iterator[Ocserv]:
    with private_dir("ocserv-relaxed") as state:
        vpn = start_or_skip(lambda: Ocserv(state / "vpn", accounts=USERS, relaxed=True).start())
        try:
            yield vpn
        finally:
            vpn.stop()


@pytest.fixture(scope="module")
def production() -> Iterator[Ocserv]:
    with private_dir("ocserv-production") as state:
        vpn = start_or_skip(lambda: Ocserv(state / "vpn", accounts=3, relaxed=False).start())
        try:
            yield vpn
        finally:
            vpn.stop()


def _hex_address(host: str, port: int) -> str:
    """``host:port`` as /proc/net/tcp writes it (little-endian IPv4 hex, port hex)."""
    return f"{ipaddress.IPv4Address(host).packed[::-1].hex().upper()}:{port:04X}"


def _socket_inodes(pid: int) -> set[str]:
    """The socket inodes the process ``pid`` and its children hold."""
    inodes = set()
    for p in (pid, *_descendants(pid)):
        with contextlib.suppress(OSError):
            for fd in Path(f"/proc/{p}/fd").iterdir():
                with contextlib.suppress(OSError):
                    link = os.readlink(fd)
                    if link.startswith("socket:["):
                        inodes.add(link[8:-1])
    return inodes


def _clients(vpn: Ocserv) -> list[str]:
    """The client addresses of the established connections ocserv's processes hold (server side).

    By socket inode: a connection of some other program whose ephemeral port happens to equal the
    server's port (on a shared machine) is not counted.
    """
    assert vpn.daemon is not None and vpn.daemon.proc is not None
    inodes = _socket_inodes(vpn.daemon.proc.pid)
    server = _hex_address(vpn.host, vpn.port)
    found = []
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1] == server and fields[3] == "01" and fields[9] in inodes:  # 01 = ESTABLISHED
            found.append(str(ipaddress.IPv4Address(bytes.fromhex(fields[2].split(":")[0])[::-1])))
    return found


def _run(vpn: Ocserv, profile: Path, users: int, until: float) -> tuple[Run, int, set[str]]:
    """Run ``users`` GatewayUsers for ``until`` seconds: the run, the most connections the server held at
    once, and the client addresses it saw."""
    run = environment(profile, GatewayUser)
    runner = run.env.create_local_runner()
    most, sources = 0, set()
    try:
        runner.start(users, spawn_rate=users)
        deadline = time.monotonic() + until
        while time.monotonic() < deadline:
            wait_until(lambda: False, min(0.5, deadline - time.monotonic()))
            clients = _clients(vpn)
            most, sources = max(most, len(clients)), sources | set(clients)
    finally:
        runner.quit()
    return run, most, sources


def test_the_vpn_protocol_is_a_registered_remote_session() -> None:
    proto = remote.protocol("vpn")
    assert proto.catalogue is VPN_CATALOGUE and proto.factory is VPNSession
    assert VPN_CATALOGUE.logon == "VPN logon" and VPN_CATALOGUE.echo == "VPN keepalive"
    assert [o.key for o in VPN_CATALOGUE.paced] == ["VPN keepalive"]
    assert VPN_CATALOGUE.activities == ("typing",)


def test_openconnect_logs_on_to_the_test_server(relaxed: Ocserv) -> None:
    """The server is a genuine AnyConnect-compatible one: Debian's openconnect client authenticates."""
    assert relaxed.ca is not None
    user, password = relaxed.accounts[0]
    done = subprocess.run(
        [
            "openconnect",
            "--authenticate",
            "--no-dtls",
            "--passwd-on-stdin",
            f"--cafile={relaxed.ca.ca_cert}",
            *("-u", user, f"{relaxed.host}:{relaxed.port}"),
        ],
        input=password + "\n",
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert done.returncode == 0, done.stderr[-500:]
    assert "COOKIE=" in done.stdout


def test_twenty_users_hold_tunnels_with_no_failures(
    relaxed: Ocserv, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """20 tunnels held for 25 s, each from its own 127.0.0.x, kept busy by paced keepalives: 0 failures."""
    monkeypatch.setattr(VPNSession, "spread_sources", True)
    profile = _profile(relaxed, tmp_path, "relaxed")
    run, most, sources = _run(relaxed, profile, USERS, HOLD_S)
    assert not run.user_errors, run.user_errors
    failures = [(s["name"], s["context"]["error"]) for s in run.samples if s["exception"] is not None]
    assert failures == []
    ops = run.operations()
    # each user logged on once and held its tunnel: no reconnects, no drops
    assert ops[("VPN", "tls")] == ops[("VPN", "logon")] == ops[("VPN", "tunnel_up")] == USERS
    assert ops[("VPN", "reconnect")] == 0 and ops[("VPN", "drop")] == 0
    # the server held all 20 at once, each from its user's own address
    ours = {source_address(relaxed.host, s["context"]["user_id"]) for s in run.samples}
    assert len(ours) == USERS and ours == sources, (sorted(ours), sorted(sources))
    assert most == USERS, f"{most} tunnels at once at the server, from {sorted(sources)}"
    # every user kept its tunnel busy: at least a few paced bursts each over the hold
    per_user = Counter(s["context"]["user_id"] for s in run.samples if s["name"] == "keepalive")
    assert len(per_user) == USERS and min(per_user.values()) >= 3 * WORKLOAD.burst_keys, per_user
    # paced: within each burst the intended starts follow the plan exactly (bursts are think time apart)
    keep = [s for s in run.samples if s["name"] == "keepalive"]
    first_user = keep[0]["context"]["user_id"]
    planned = sorted(s["context"]["t_intended"] for s in keep if s["context"]["user_id"] == first_user)
    on_plan = sum(abs(b - a - WORKLOAD.typing_interval_ms / 1000.0) < 1e-3 for a, b in pairwise(planned))
    assert on_plan == (WORKLOAD.burst_keys - 1) * (len(planned) // WORKLOAD.burst_keys), planned
    # the tunnel-up sample names the server (X-CSTP-Server-Name), so analysis can attribute it
    assert all(s["context"]["server"] for s in run.samples if s["name"] in ("tunnel_up", "keepalive"))


def test_a_wrong_password_is_a_classified_auth_failure(production: Ocserv, tmp_path: Path) -> None:
    wrong = tmp_path / "wrong.csv"
    wrong.write_text("username,password\n" + f"{production.accounts[0][0]},not-the-password-x7\n")
    wrong.chmod(0o600)
    run = environment(_profile(production, tmp_path, "wrong", credentials=wrong), GatewayUser)
    runner = run.env.create_local_runner()
    try:
        runner.start(1, spawn_rate=1)
        assert wait_until(lambda: run.count("VPN", "logon", ok=False) >= 1, 15)
    finally:
        runner.quit()
    assert not run.user_errors, run.user_errors
    failed = [s for s in run.samples if s["exception"] is not None]
    assert {(s["name"], s["context"]["error"]) for s in failed} == {("logon", "auth_failed")}
    assert run.count("VPN", "tls") >= 1 and run.count("VPN", "tunnel_up") == 0
    assert all("not-the-password" not in str(s["exception"]) for s in failed)


def test_production_defaults_throttle_as_classified_failures(production: Ocserv, tmp_path: Path) -> None:
    """Nine users on three accounts: Debian's max-same-clients = 2 refuses the third session of each."""
    profile = _profile(production, tmp_path, "production")
    run, most, sources = _run(production, profile, 9, 8.0)
    assert not run.user_errors, run.user_errors
    errors = Counter((s["name"], s["context"]["error"]) for s in run.samples if s["exception"] is not None)
    assert errors, "no session was refused"
    allowed = {o.name: set(o.errors) for o in VPN_CATALOGUE.operations}
    assert all(err in allowed[name] and err != "other" for name, err in errors), errors
    assert errors[("tunnel_up", "refused")] >= 3, errors
    # two sessions per account (three accounts) held, all from the one generator address; the server's
    # connection count also holds a retrying user's connection until ocserv refuses it (CI saw 7)
    assert sources == {"127.0.0.1"}, sources
    assert run.count("VPN", "tunnel_up") == 6, errors
    assert 6 <= most <= 9, (most, errors)


def test_an_untrusted_certificate_and_a_closed_port_are_classified(
    production: Ocserv, tmp_path: Path
) -> None:
    """The certificate is verified (a CA that did not sign it is ``tls_error``); no server is ``refused``."""
    assert production.ca is not None
    other_ca = make_test_ca(tmp_path / "other-ca")
    user, password = production.accounts[1]

    async def attempt(port: int, ca: Path) -> Timed[str]:
        conn = VPNConnection(VPNSpec(production.host, port, user, password, str(ca), timeout_s=5.0))
        try:
            return await timed(conn.tls(), 5.0)
        finally:
            conn.abort()

    trusted = run_async(attempt(production.port, production.ca.ca_cert))
    untrusted = run_async(attempt(production.port, other_ca.ca_cert))
    closed = run_async(attempt(free_port(), production.ca.ca_cert))
    assert trusted.ok and trusted.value == "TLSv1.2", trusted  # Debian's tls-priorities: TLS 1.2 only
    assert classify(untrusted.error) == "tls_error", untrusted
    assert classify(closed.error) == "refused", closed
