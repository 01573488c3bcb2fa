"""The gateway side against real OpenSSH: sshd on loopback, behind haproxy in TCP mode.

What is checked: the stock test account (``useradd -m``, ``/bin/sh``, no harness files), password and
public-key auth, the pinned host key, the SFTP subsystem (the distribution's sftp-server, in the
home), ``direct-tcpip`` only to the permitted local service, backend attribution (auth banner and
``GATELOAD_SERVER``), and the GatewayUser doing every SSH activity through the real load balancer
with the same per-server counts that haproxy reports. sshd and haproxy are started from
the project's files and stopped afterwards, with no process left.
"""

from __future__ import annotations

import dataclasses
import os
import pwd
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import asyncssh
import gevent
import pytest
import users_support  # noqa: F401  (gevent monkey-patching first, as under the locust command)
from real_support import FAST_WORKLOAD, private_dir, run_async, running_farm
from users_support import run_users

from gateload.locustfiles.lib.remoteuser import GatewayUser
from gateload.targets.local.farm import DOCUMENTS, LocalRealFarm
from gateload.targets.local.haproxy import TCP_BACKEND
from gateload.targets.local.process import _descendants
from gateload.targets.local.sshd import Sshd
from gateload.targets.profile import load_profile

pytestmark = pytest.mark.sshd

SSH_ACTIVITIES = {
    ("SSH", "keystroke"),
    ("SSH", "screen_update"),
    ("SSH", "exec"),
    ("SFTP", "get"),
    ("SFTP", "put"),
    ("TUNNEL", "http"),
}


@pytest.fixture(scope="module")
def farm() -> Iterator[LocalRealFarm]:
    with running_farm("real-gateway", portal_backends=0, gateways=2) as local:
        yield local


class _Client(asyncssh.SSHClient):
    def __init__(self) -> None:
        self.banner = ""

    def auth_banner_received(self, msg: str, lang: str) -> None:
        self.banner += msg


async def _connect(
    sshd: Sshd, farm: LocalRealFarm, **kw: object
) -> tuple[asyncssh.SSHClientConnection, _Client]:
    assert farm.keys is not None
    client = _Client()
    options: dict[str, object] = {
        "username": sshd.user.name,
        "known_hosts": ([asyncssh.read_public_key(farm.keys.host_key_pub)], [], []),
        "client_keys": None,
        "password": sshd.user.password,
        "agent_path": None,
        "config": None,
    }
    options.update(kw)
    conn, _ = await asyncssh.create_connection(lambda: client, sshd.host, sshd.port, **options)
    return conn, client


def test_stock_user_with_sh_password_and_key_auth(farm: LocalRealFarm) -> None:
    sshd = farm.sshds[0]
    assert pwd.getpwnam(sshd.user.name).pw_shell == "/bin/sh"
    # As useradd -m made it: the skeleton's .profile, no prompt or helper commands for the harness.
    assert (sshd.user.home / ".profile").read_bytes() == Path("/etc/skel/.profile").read_bytes()
    assert "PS1" not in sshd.config_text() and not (sshd.state_dir / "bin").exists()
    assert farm.keys is not None

    async def scenario() -> tuple[str, str, str, str]:
        conn, client = await _connect(sshd, farm)
        async with conn:
            env = (await conn.run("echo $GATELOAD_SERVER; readlink /proc/$$/exe", check=True)).stdout
        key_conn, _ = await _connect(sshd, farm, password=None, client_keys=[str(farm.keys.client_key)])
        async with key_conn:
            who = (await key_conn.run("id -un", check=True)).stdout
        return client.banner, str(env), str(who), conn.get_extra_info("server_version")

    banner, env, who, version = run_async(scenario())
    assert banner == "gateload-server: gw-01\n"
    server_id, shell = str(env).split()
    assert server_id == "gw-01"
    assert shell.endswith("dash") or shell.endswith("/sh")  # /bin/sh, not a heavy bash
    assert who.strip() == sshd.user.name
    assert "OpenSSH" in version  # the peer is the real thing


def test_wrong_password_and_unpinned_host_key_are_refused(farm: LocalRealFarm) -> None:
    sshd = farm.sshds[0]
    other_key = asyncssh.generate_private_key("ssh-ed25519").convert_to_public()

    async def scenario() -> None:
        with pytest.raises(asyncssh.PermissionDenied):
            await _connect(sshd, farm, password="not-the-password")
        with pytest.raises(asyncssh.HostKeyNotVerifiable):
            await _connect(sshd, farm, known_hosts=([other_key], [], []))

    run_async(scenario())


def test_sftp_subsystem_serves_the_seeded_documents_and_takes_uploads(farm: LocalRealFarm) -> None:
    sshd = farm.sshds[0]
    seeded = (sshd.sftp_dir / "memo.pdf").read_bytes()

    async def scenario() -> tuple[bytes, list[str], int]:
        conn, _ = await _connect(sshd, farm)
        async with conn, conn.start_sftp_client() as sftp:
            async with sftp.open("memo.pdf", "rb") as fh:
                got = await fh.read()
            async with sftp.open("upload-test.bin", "wb") as fh:
                await fh.write(b"u" * 10_000)
            names = sorted(await sftp.listdir("."))
            size = (await sftp.stat("upload-test.bin")).size or 0
        return got, names, size

    got, names, size = run_async(scenario())
    assert len(got) == DOCUMENTS["memo.pdf"] and got == seeded
    assert "memo.pdf" in names and size == 10_000
    uploaded = sshd.sftp_dir / "upload-test.bin"
    assert uploaded.stat().st_uid == sshd.user.uid  # written by the test user, not root


def test_direct_tcpip_reaches_only_the_permitted_service(farm: LocalRealFarm) -> None:
    sshd = farm.sshds[0]
    other = farm.gateway_lb.tcp_port if farm.gateway_lb else 1

    async def scenario() -> bytes:
        conn, _ = await _connect(sshd, farm)
        async with conn:
            reader, writer = await conn.open_connection("127.0.0.1", farm.intranet_port)
            writer.write(b"GET / HTTP/1.0\r\nHost: intranet\r\n\r\n")
            body = await reader.read()
            writer.close()
            with pytest.raises(asyncssh.ChannelOpenError):
                await conn.open_connection("127.0.0.1", other)
        return body

    body = run_async(scenario())
    assert body.startswith(b"HTTP/1.0 200") and b"intranet" in body


def test_gateway_user_does_every_activity_through_haproxy_tcp(farm: LocalRealFarm) -> None:
    assert farm.gateway_lb is not None
    path = farm.write_profile("gateway-fast", accounts="gateway", workload=FAST_WORKLOAD)
    before = farm.gateway_lb.counts(TCP_BACKEND)
    run = run_users(
        path, GatewayUser, users=4, until=lambda r: set(r.operations()) >= SSH_ACTIVITIES, timeout_s=60
    )
    assert not run.user_errors, run.user_errors
    assert set(run.operations()) >= SSH_ACTIVITIES, run.operations()
    assert run.operations(ok=False) == Counter(), run.errors()
    after = farm.gateway_lb.counts(TCP_BACKEND)
    # Attribution through the balancer: the banner names the sshd haproxy chose, connection by connection.
    connects = Counter(
        s["context"]["server"] for s in run.samples if (s["request_type"], s["name"]) == ("SSH", "connect")
    )
    assert connects == Counter({srv: after[srv] - before[srv] for srv in after if after[srv] > before[srv]})
    assert set(connects) == {"gw-01", "gw-02"}  # leastconn spreads 4 users over both
    servers = {s["context"]["server"] for s in run.samples}
    assert servers == {"gw-01", "gw-02"}
    print("gateway user operations:", dict(run.operations()), "connections per sshd:", dict(connects))


def test_gateway_user_with_public_key_auth(farm: LocalRealFarm) -> None:
    path = farm.write_profile("gateway-key", accounts="gateway", key_auth=True, workload=FAST_WORKLOAD)
    profile = load_profile(path)
    assert profile.credentials.ssh_key  # the GatewayUser takes the key instead of the password
    wanted = {("SSH", "connect"), ("SSH", "exec"), ("SFTP", "get")}
    run = run_users(path, GatewayUser, users=2, until=lambda r: wanted <= set(r.operations()), timeout_s=45)
    assert wanted <= set(run.operations()), run.errors()
    assert run.count("SSH", "connect", ok=False) == 0
    logs = "".join((s.state_dir / "sshd.log").read_text() for s in farm.sshds)
    assert "Accepted publickey for gateload-test" in logs


def test_sshd_stops_with_its_sessions_and_leaves_no_process() -> None:
    with running_farm("real-stop", portal_backends=0, gateways=1) as local:
        _stop_with_open_session(local)


def _stop_with_open_session(local: LocalRealFarm) -> None:
    sshd = local.sshds[0]
    assert sshd.daemon is not None and sshd.daemon.proc is not None
    leader = sshd.daemon.proc.pid

    async def scenario() -> tuple[list[int], list[int]]:
        conn, _ = await _connect(sshd, local)
        family = _descendants(leader)  # this open session's sshd processes
        local.stop()  # blocks the loop briefly: the session is still open when sshd is stopped
        alive = [pid for pid in [leader, *family] if _state(pid) not in ("Z", "")]
        conn.abort()
        return family, alive

    family, alive = run_async(scenario())
    assert family, "an open session has sshd child processes"
    assert alive == []
    assert sshd.daemon is None


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return ""  # gone


def test_effective_profile_is_the_shipped_one_with_run_values(farm: LocalRealFarm) -> None:
    shipped = load_profile(Path(__file__).resolve().parent.parent / "targets/profiles/local-real.toml")
    effective = load_profile(farm.gateway_profile_path)
    assert shipped.target.kind == effective.target.kind == "real"
    assert effective.gateway.port == farm.gateway_lb.tcp_port  # type: ignore[union-attr]
    assert effective.gateway.tunnel_target == f"127.0.0.1:{farm.intranet_port}"
    same = dataclasses.replace(
        effective,
        gateway=shipped.gateway,
        credentials=shipped.credentials,
        portal=shipped.portal,
        path=shipped.path,
    )
    assert same == shipped  # only ports, paths and credentials differ


def test_farm_command_removes_its_temporary_state_and_keeps_a_named_one() -> None:
    # The temporary folder holds the accounts' passwords and keys: nothing of it outlives the farm.
    state, profile = _run_farm_command()
    assert profile.is_relative_to(state)
    assert not state.exists()
    with private_dir("real-state") as folder:
        state, profile = _run_farm_command("--state-dir", str(folder / "state"))
        assert state == folder / "state"
        accounts = load_profile(profile).credentials_path
        assert accounts.is_relative_to(state) and accounts.stat().st_mode & 0o077 == 0


def _run_farm_command(*extra: str) -> tuple[Path, Path]:
    """Run ``python -m gateload.targets.local.farm`` (one gateway) until it is ready, then SIGTERM it;
    the state folder and the gateway profile it printed."""
    argv = [sys.executable, "-m", "gateload.targets.local.farm", "--portal-backends", "0", "--gateways", "1"]
    proc = subprocess.Popen([*argv, *extra], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    try:
        with gevent.Timeout(60, RuntimeError(f"the farm was not ready within 60 s: {lines}")):
            while not lines or not lines[-1].startswith("ready"):
                line = proc.stdout.readline() if proc.stdout else ""
                if not line:
                    break
                lines.append(line)
    finally:
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=60)
    if rc == 2 and lines and lines[-1].startswith("error:") and not os.environ.get("CI"):
        pytest.skip(lines[-1].strip())  # no sshd or root here; CI provides both
    assert rc == 0, lines
    state = next(line.split()[1] for line in lines if line.startswith("state "))
    profile = next(line.split(": ", 1)[1] for line in lines if "gateway accounts: " in line)
    return Path(state), Path(profile.strip())
