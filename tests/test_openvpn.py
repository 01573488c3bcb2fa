"""The ``openvpn`` protocol against a real OpenVPN server (issue 13, part 3).

The server is Debian's openvpn in server mode, started by the tests as root from Debian's sample
server.conf (:class:`gateload.targets.local.openvpn.OpenVPNServer`): the "relaxed" variant for the load test,
the sample's defaults ("production defaults": one session per account) for the throttling test. Locust's
GatewayUser drives one client process per user through a profile with ``[gateway] protocol = "openvpn"``.
Every test checks that no client process outlives it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import gevent
import pytest
import users_support  # noqa: F401  (gevent monkey-patching first, as under the locust command)
from locust.env import Environment
from locust.event import Events
from real_support import private_dir, probe_passed, run_async, start_or_skip
from test_recorder import meta_of, parsed
from users_support import FAST, Run, environment, wait_until

from gateload.analysis.runs import load_run
from gateload.cli import main as gateload_main
from gateload.locustfiles.lib import openvpnops, remote, runfolder
from gateload.locustfiles.lib.aiobridge import Timed, timed
from gateload.locustfiles.lib.errors import classify
from gateload.locustfiles.lib.openvpn import OPENVPN_CATALOGUE, OpenVPNSession
from gateload.locustfiles.lib.openvpnops import OpenVPNClient, OpenVPNSpec
from gateload.locustfiles.lib.remoteuser import GatewayUser
from gateload.locustfiles.lib.session import HomeofficeUser
from gateload.targets.local.openvpn import OpenVPNServer, free_udp_port
from gateload.targets.local.tlsca import make_test_ca
from gateload.targets.portalflow import REFERENCE_FLOW, TicketSpec
from gateload.targets.profile import Workload, dump_profile, load_profile

BASE_PROFILE = Path(__file__).resolve().parent.parent / "targets" / "profiles" / "local-real.toml"
USERS = 20
HOLD_S = 15.0
#: A hold of 8 x 250 ms, then a short think time: every user holds its tunnel all along.
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


def _profile(
    vpn: OpenVPNServer, folder: Path, name: str, credentials: Path | None = None, sources: str = ""
) -> Path:
    """The shipped local-real profile pointed at this server: protocol openvpn, its CA, its accounts."""
    assert vpn.ca is not None
    p = load_profile(BASE_PROFILE)
    profile = dataclasses.replace(
        p,
        portal=dataclasses.replace(p.portal, ca_file=str(vpn.ca.ca_cert)),
        gateway=dataclasses.replace(
            p.gateway,
            host=vpn.host,
            port=vpn.port,
            protocol="openvpn",
            host_key="",
            ca_file=str(vpn.ca.ca_cert),
            source_addresses=sources,
        ),
        credentials=dataclasses.replace(p.credentials, file=str(credentials or vpn.credentials)),
        workload=WORKLOAD,
    )
    return dump_profile(profile, folder / f"{name}.toml")


def _our_clients() -> list[int]:
    """pids of openvpn client processes this test process started (its children), zombies included."""
    me, found = os.getpid(), []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError):
            text = stat.read_text()
            name, rest = text.split("(", 1)[1].rsplit(")", 1)
            client = b"--client" in (stat.parent / "cmdline").read_bytes().split(b"\0")  # not the server
            if name == "openvpn" and int(rest.split()[1]) == me and client:
                found.append(int(stat.parent.name))
    return found


@pytest.fixture(autouse=True)
def no_orphans() -> Iterator[None]:
    """Every client process ends with its session: none is left (or must be killed) after a test."""
    yield
    deadline = time.monotonic() + 3.0  # SIGTERM'd clients exit within TERM_TIMEOUT_S
    while _our_clients() and time.monotonic() < deadline:
        time.sleep(0.05)
    left = [
        (pid, Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]) for pid in _our_clients()
    ]
    killed = openvpnops.kill_all()
    assert left == [] and killed == 0, f"openvpn clients left behind: {left}"


@pytest.fixture(scope="module")
def relaxed() -> Iterator[OpenVPNServer]:
    with private_dir("openvpn-relaxed") as state:
        vpn = start_or_skip(lambda: OpenVPNServer(state / "vpn", accounts=USERS, relaxed=True).start())
        try:
            yield vpn
        finally:
            vpn.stop()


@pytest.fixture(scope="module")
def production() -> Iterator[OpenVPNServer]:
    with private_dir("openvpn-production") as state:
        vpn = start_or_skip(lambda: OpenVPNServer(state / "vpn", accounts=3, relaxed=False).start())
        try:
            yield vpn
        finally:
            vpn.stop()


def _run(profile: Path, users: int, until: float, spawn_rate: float = 0.0) -> tuple[Run, int]:
    """Run ``users`` GatewayUsers for ``until`` seconds: the run and the most client processes at once."""
    run = environment(profile, GatewayUser)
    runner = run.env.create_local_runner()
    most = 0
    try:
        runner.start(users, spawn_rate=spawn_rate or users)
        deadline = time.monotonic() + until
        while time.monotonic() < deadline:
            wait_until(lambda: False, min(0.5, deadline - time.monotonic()))
            most = max(most, len(_our_clients()))
    finally:
        runner.quit()
    return run, most


def test_the_openvpn_protocol_is_a_registered_remote_session() -> None:
    proto = remote.protocol("openvpn")
    assert proto.catalogue is OPENVPN_CATALOGUE and proto.factory is OpenVPNSession
    assert OPENVPN_CATALOGUE.logon == "OVPN tunnel_up"
    assert OPENVPN_CATALOGUE.aggregates == frozenset({"OVPN tunnel_up"})
    assert OPENVPN_CATALOGUE.activities == ("typing",) and OPENVPN_CATALOGUE.paced == ()


def test_the_password_never_reaches_the_client_command_line(tmp_path: Path) -> None:
    spec = OpenVPNSpec("127.0.0.1", 1194, "alice", "s3cret-pw", "/ca.pem")
    argv = openvpnops.client_argv("/usr/sbin/openvpn", spec, tmp_path / "m.sock")
    assert "s3cret-pw" not in " ".join(argv) and "s3cret-pw" not in repr(spec)
    assert argv[argv.index("--dev") + 1] == "null" and "--management-query-passwords" in argv


def test_a_forked_worker_never_kills_its_parents_clients() -> None:
    """``locust --processes`` forks: the child's exit-time kill list starts empty, so its atexit cleanup
    cannot SIGKILL the parent's tunnels."""
    openvpnops._live.add(2**22 + 1)  # a pid no process has (pid_max is at most 2**22)
    try:
        pid = os.fork()
        if pid == 0:
            os._exit(0 if not openvpnops._live else 1)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        openvpnops._live.discard(2**22 + 1)


def test_debians_openvpn_client_connects_to_the_test_server(relaxed: OpenVPNServer, tmp_path: Path) -> None:
    """The server is a genuine OpenVPN server: the stock client, as client.conf configures it, gets a
    tunnel (the password in a 0600 file here, as a person's client config keeps it)."""
    assert relaxed.ca is not None
    user, password = relaxed.accounts[0]
    auth = tmp_path / "auth.txt"
    auth.touch(mode=0o600)
    auth.write_text(f"{user}\n{password}\n")
    log = tmp_path / "client.log"
    argv = ["openvpn", "--client", "--dev", "null", "--ifconfig-noexec", "--route-noexec", "--nobind"]
    argv += ["--remote", relaxed.host, str(relaxed.port), "--proto", "udp", "--ca", str(relaxed.ca.ca_cert)]
    argv += ["--remote-cert-tls", "server", "--auth-user-pass", str(auth), "--verb", "3", "--log", str(log)]
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and "Initialization Sequence Completed" not in _text(log):
            assert proc.poll() is None, _text(log)[-500:]
            time.sleep(0.05)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    text = _text(log)
    assert "Initialization Sequence Completed" in text, text[-500:]
    assert "PUSH_REPLY" in text and "VERIFY OK" in text
    assert password not in text and password not in relaxed.log_text()


#: A generator process that brings one tunnel up with the harness's driver, prints the client's pid and
#: waits; the password comes on its stdin (never a command line or a file).
GENERATOR = """
import asyncio, sys
sys.path.insert(0, sys.argv[1])
from gateload.locustfiles.lib.openvpnops import OpenVPNClient, OpenVPNSpec
host, port, user, ca = sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]
password = sys.stdin.readline().strip()
async def main():
    client = OpenVPNClient(OpenVPNSpec(host, port, user, password, ca))
    for op in (client.start, client.tls, client.config, client.connected):
        await asyncio.wait_for(op(), 15)
    print(client.pid, flush=True)
    await asyncio.sleep(60)
asyncio.run(main())
"""


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_a_killed_generator_leaves_no_client_behind(relaxed: OpenVPNServer, tmp_path: Path) -> None:
    """SIGKILL the generator (no atexit, no cleanup): its client sees the management socket close and
    exits by itself (``--management-client``), so not even a crash leaves a tunnel process behind."""
    assert relaxed.ca is not None
    user, password = relaxed.accounts[1]
    root = str(Path(__file__).resolve().parent.parent)
    argv = [
        sys.executable,
        "-c",
        GENERATOR,
        root,
        relaxed.host,
        str(relaxed.port),
        user,
        str(relaxed.ca.ca_cert),
    ]
    # its private management folder goes under tmp_path: a killed generator cannot remove it itself
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    gen = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert gen.stdin is not None and gen.stdout is not None
        gen.stdin.write(password + "\n")
        gen.stdin.flush()
        line = gen.stdout.readline()  # bounded: the generator's own waits are 15 s each
        assert line.strip().isdigit(), f"no tunnel: {line!r}, exit {gen.poll()}"
        client = int(line)
        assert _alive(client)
    finally:
        gen.kill()
        gen.wait(timeout=10)
    deadline = time.monotonic() + 5.0
    while _alive(client) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(client), f"openvpn client {client} outlived its killed generator"


def _text(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


@pytest.mark.load
def test_users_hold_tunnels_with_no_failures(relaxed: OpenVPNServer, tmp_path: Path) -> None:
    """Twenty users, one client process each (each from its own 127.0.0.x), hold tunnels for 15 s on the
    relaxed server: 0 failures."""
    profile = _profile(relaxed, tmp_path, "relaxed", sources="127.0.0.2-127.0.0.254")
    run, most = _run(profile, USERS, HOLD_S)
    assert not run.user_errors, run.user_errors
    failures = [(s["name"], s["context"]["error"]) for s in run.samples if s["exception"] is not None]
    assert failures == [], [str(s["exception"]) for s in run.samples if s["exception"] is not None][:3]
    ops = run.operations()
    # each user logged on once and held its tunnel: no reconnects, no drops
    for name in ("start", "tls", "config", "tunnel_up"):
        assert ops[("OVPN", name)] == USERS, (name, ops)
    assert ops[("OVPN", "reconnect")] == 0 and ops[("OVPN", "drop")] == 0
    assert most == USERS, f"{most} client processes at once"
    # every user held its tunnel over the run: several holds of 2 s each
    per_user = Counter(s["context"]["user_id"] for s in run.samples if s["name"] == "hold")
    assert len(per_user) == USERS and min(per_user.values()) >= 3, per_user
    holds = [s["response_time"] for s in run.samples if s["name"] == "hold"]
    assert min(holds) >= 0.99 * WORKLOAD.burst_keys * WORKLOAD.typing_interval_ms, min(holds)
    # the logon's parts, all from the client's notification times: tunnel_up spans tls and config
    by_user: dict[int, dict[str, float]] = {}
    for s in run.samples:
        if s["name"] in ("tls", "config", "tunnel_up"):
            by_user.setdefault(s["context"]["user_id"], {})[s["name"]] = s["response_time"]
    for parts in by_user.values():
        assert parts["tunnel_up"] >= parts["tls"] + parts["config"] - 1e-6, parts
        assert parts["config"] >= 0.0, parts
    # the server saw them all, each under its account's name (username-as-common-name)
    log = relaxed.log_text()
    assert all(f"[{user}] Peer Connection Initiated" in log for user, _ in relaxed.accounts[:USERS])
    # ... each from its user's own source address (gateway.source_addresses)
    seen = set(
        re.findall(r"\[gl-ovpn-\d+\] Peer Connection Initiated with \[AF_INET\](127\.0\.0\.\d+):", log)
    )
    ours = {f"127.0.0.{2 + s['context']['user_id'] % 253}" for s in run.samples}
    assert len(ours) == USERS and ours <= seen, (sorted(ours), sorted(seen))


def test_a_wrong_password_is_a_classified_auth_failure(production: OpenVPNServer, tmp_path: Path) -> None:
    wrong = tmp_path / "wrong.csv"
    wrong.write_text("username,password\n" + f"{production.accounts[0][0]},not-the-password-x7\n")
    wrong.chmod(0o600)
    run = environment(_profile(production, tmp_path, "wrong", credentials=wrong), GatewayUser)
    runner = run.env.create_local_runner()
    try:
        runner.start(1, spawn_rate=1)
        assert wait_until(lambda: run.count("OVPN", "config", ok=False) >= 1, 15)
    finally:
        runner.quit()
    assert not run.user_errors, run.user_errors
    failed = [s for s in run.samples if s["exception"] is not None]
    # the server's AUTH_FAILED answers the PUSH_REQUEST; the aggregate logon row fails with it
    assert {(s["name"], s["context"]["error"]) for s in failed} == {
        ("config", "auth_failed"),
        ("tunnel_up", "auth_failed"),
    }
    assert run.count("OVPN", "tls") >= 1 and run.count("OVPN", "tunnel_up") == 0
    assert all("not-the-password" not in str(s["exception"]) for s in failed)
    assert "not-the-password" not in production.log_text()


@pytest.mark.load
def test_production_defaults_allow_one_session_per_account(production: OpenVPNServer, tmp_path: Path) -> None:
    """Two users on one account: without duplicate-cn (as shipped) the server drops the older session
    when the second logs on, without telling its client. The silent server is a classified drop."""
    one = tmp_path / "one.csv"
    one.write_text("username,password\n" + ",".join(production.accounts[1]) + "\n")
    one.chmod(0o600)
    profile = _profile(production, tmp_path, "production", credentials=one)
    stale = openvpnops.OpenVPNClient(OpenVPNSpec("h", 1, "u")).stale_after_s
    # the second user logs on 2 s after the first (at once, one of them may wait in vain for its
    # PUSH_REPLY: a timeout, classified too)
    run, _most = _run(profile, 2, 2.0 + stale + 8.0, spawn_rate=0.5)
    assert not run.user_errors, run.user_errors
    errors = Counter((s["name"], s["context"]["error"]) for s in run.samples if s["exception"] is not None)
    allowed = {o.name: set(o.errors) for o in OPENVPN_CATALOGUE.operations}
    assert all(err in allowed[name] and err != "other" for name, err in errors), errors
    # the dropped session's hold failed as a timeout (the server went silent), then it logged on again
    assert errors[("hold", "timeout")] >= 1, errors
    assert run.count("OVPN", "tunnel_up") == 2 and run.count("OVPN", "reconnect") >= 1, errors
    assert "will cause previous active sessions by this client to be dropped" in production.log_text()


@pytest.mark.parametrize("case", ["untrusted CA", "closed port"])
def test_an_untrusted_certificate_and_a_closed_port_are_classified(
    production: OpenVPNServer, tmp_path: Path, case: str
) -> None:
    """The certificate is verified (a CA that did not sign it is ``tls_error``); no server is ``refused``."""
    assert production.ca is not None
    user, password = production.accounts[2]
    ca = make_test_ca(tmp_path / "other-ca").ca_cert if case == "untrusted CA" else production.ca.ca_cert
    port = production.port if case == "untrusted CA" else free_udp_port()

    async def attempt() -> Timed[None]:
        client = OpenVPNClient(OpenVPNSpec(production.host, port, user, password, str(ca)))
        try:
            started = await timed(client.start(), 5.0)
            assert started.ok, started
            return await timed(client.tls(), 8.0)
        finally:
            await client.close()

    outcome = run_async(attempt())
    assert classify(outcome.error) == ("tls_error" if case == "untrusted CA" else "refused"), outcome
    assert outcome.duration_ms < 8000.0  # classified, not left to time out


@pytest.mark.load
def test_a_run_folder_of_openvpn_users_is_read_by_gateload_compare(
    relaxed: OpenVPNServer, tmp_path: Path
) -> None:
    """Two short runs recorded as Locust records them; ``gateload compare`` takes the logon and the
    operations from the catalogue in meta.json, with no change to the analysis."""
    profile = _profile(relaxed, tmp_path, "run")
    for label in ("before", "after"):
        ns = parsed("--results-dir", str(tmp_path / "results"), "--label", label, "--profile", str(profile))
        env = Environment(user_classes=[GatewayUser], events=Events(), parsed_options=ns)
        runner = env.create_local_runner()
        controller = runfolder.attach(env)
        try:
            runner.start(3, spawn_rate=3)
            wait_until(lambda: False, 6.0)
            runner.stop()
            gevent.sleep(0)
        finally:
            runner.quit()
        run_dir = controller.last_run_dir
        assert run_dir is not None
        meta = meta_of(run_dir)
        assert meta["status"] == "completed"
        assert meta["catalogue"] == OPENVPN_CATALOGUE.to_json()
        run = load_run(run_dir)
        assert run.catalogue == OPENVPN_CATALOGUE
        assert {"OVPN tls", "OVPN config", "OVPN tunnel_up", "OVPN hold"} <= set(run.samples.ops)
    acceptance = tmp_path / "acceptance.toml"
    acceptance.write_text(
        "version = 1\n[load]\nreference_users = 3\n[logon]\nmax_p95_ms = 3000\n[errors]\nmax_rate = 0.01\n"
        "[throughput]\nmin_peak_gain = 0.5\n"
    )
    out, results = tmp_path / "report", tmp_path / "results"
    args = ["compare", str(results / "before"), str(results / "after"), "--acceptance", str(acceptance)]
    code = gateload_main([*args, "--out", str(out), "--bootstrap", "100"])
    assert code in (0, 1, 3), code
    summary = (out / "summary.md").read_text()
    assert "OVPN tunnel_up" in summary and "SSH" not in summary


@pytest.mark.load
def test_a_homeoffice_user_works_through_the_portal_and_openvpn(reference_farm, tmp_path: Path) -> None:
    """HomeofficeUser with ``protocol = "openvpn"``: portal logon (with MFA), apps and launch, the
    OpenVPN tunnel with the account's own password (``[portal.flow.ticket]`` maps it: OpenVPN takes no
    portal ticket), a workday of holds and portal documents, logoff (the client ends), again. One
    directory: the OpenVPN server's accounts are the portal's."""
    farm = load_profile(reference_farm("reference-before", **FAST))
    with private_dir("openvpn-homeoffice") as state:
        vpn = start_or_skip(
            lambda: OpenVPNServer(state / "vpn", credentials=farm.credentials_path, relaxed=True).start()
        )
        try:
            assert vpn.ca is not None
            profile = dataclasses.replace(
                farm,
                portal=dataclasses.replace(
                    farm.portal, flow=dataclasses.replace(REFERENCE_FLOW, ticket=TicketSpec())
                ),
                gateway=dataclasses.replace(
                    farm.gateway,
                    protocol="openvpn",
                    host=vpn.host,
                    port=vpn.port,
                    ca_file=str(vpn.ca.ca_cert),
                ),
                workload=dataclasses.replace(farm.workload, mix={"typing": 1.0, "document": 1.0}),
            )
            run = environment(dump_profile(profile, tmp_path / "homeoffice-openvpn.toml"), HomeofficeUser)
            runner = run.env.create_local_runner()
            try:
                runner.start(2, spawn_rate=2)
                assert wait_until(lambda: run.count("SESSION", "session") >= 3, 60), run.operations()
            finally:
                runner.quit()
        finally:
            vpn.stop()
    assert not run.user_errors, run.user_errors
    failures = [(s["request_type"], s["name"], s["context"]["error"]) for s in run.samples if s["exception"]]
    assert failures == []
    ops = run.operations()
    # every session that logged on did so through the tunnel, and each finished one had a workday
    assert ops[("OVPN", "tunnel_up")] >= ops[("SESSION", "logon")] >= ops[("SESSION", "session")] >= 3, ops
    for op in [("HTTP", "POST /mfa"), ("HTTP", "POST /api/launch"), ("OVPN", "hold")]:
        assert ops[op] > 0, (op, ops)
    assert not any(kind == "SSH" for kind, _ in ops), ops


def test_probe_brings_one_tunnel_up_and_names_each_step(production: OpenVPNServer, tmp_path: Path) -> None:
    """``gateload probe`` of an openvpn profile: one client process, a line per operation, none left."""
    cmd = [sys.executable, "-m", "gateload.cli", "probe", str(_profile(production, tmp_path, "probe"))]
    done = subprocess.run([*cmd, "--only", "gateway"], capture_output=True, text=True, timeout=120)
    probe_passed(done, ("OVPN start", "OVPN tls", "OVPN config", "OVPN tunnel_up", "OVPN hold"))
