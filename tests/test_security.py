"""Security: no secret in any output, verification on by default, loopback by default, a guarded admin
endpoint, an SFTP sandbox that cannot be left, and tunnels that reach the allow-list only.

The secrets test runs a real campaign-like flow (a reference farm subprocess with faults, two Locust
runs, one with ``--processes 2``, and ``gateload compare``) and reads every byte it left behind,
Parquet columns included, for every account password, TOTP secret, the admin token and every ticket
the farm issued (it writes them to a file only because the test sets ``GATELOAD_TEST_TICKET_LOG``).
"""

from __future__ import annotations

import asyncio
import csv
import dataclasses
import ipaddress
import json
import os
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncssh
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from aiohttp.test_utils import make_mocked_request

from gateload.cli import main as gateload_main
from gateload.targets.profile import GatewayTarget, PortalTarget, Profile, load_profile
from gateload.targets.reference.farm import ReferenceFarm
from gateload.targets.reference.faults import (
    TOKEN_ENV,
    FaultClient,
    FaultController,
    admin_token,
    build_admin_app,
)
from gateload.targets.reference.harness import FarmProcess, portal_ticket, write_profile_variant
from gateload.targets.reference.tickets import TEST_TICKET_LOG_ENV

ROOT = Path(__file__).resolve().parent.parent
LOCUSTFILE = ROOT / "locustfiles" / "homeoffice.py"
FAST = {
    "farm.accounts": 8,
    "farm.mfa": True,
    "farm.service.distribution": "constant",
    "farm.service.portal_page_ms": 1.0,
    "farm.service.portal_login_ms": 1.0,
    "farm.service.portal_launch_ms": 1.0,
    "farm.service.ssh_auth_ms": 1.0,
    "farm.service.keystroke_ms": 1.0,
    "farm.service.screen_update_ms": 1.0,
    "farm.service.tunnel_request_ms": 1.0,
    "workload.activities_per_session": 6,
    "workload.think_min_s": 0.1,
    "workload.think_max_s": 0.2,
    "workload.typing_interval_ms": 20.0,
    "workload.burst_keys": 4,
    "workload.timeout_s": 3.0,
}
# failures on purpose: error paths are where secrets leak into messages
FAULTS = [
    {"kind": "auth_fail", "server": "old-01", "start_s": 1.0, "duration_s": 30.0, "percent": 30.0},
    {"kind": "http_503", "server": "old-02", "start_s": 3.0, "duration_s": 2.0},
    {"kind": "reset", "server": "old-03", "start_s": 2.0, "duration_s": 30.0, "every_s": 2.0},
]


# --- no secret in any output --------------------------------------------------------------------------


def secrets_of(state: Path, ticket_log: Path) -> dict[str, set[str]]:
    """Every secret the run could have leaked, by kind."""
    with open(state / "credentials.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    return {
        "password": {r["password"] for r in rows},
        "totp_secret": {r["totp_secret"] for r in rows},
        "ticket": set(ticket_log.read_text().split()),
        "admin_token": {admin_token(state)},
    }


def strings_in(path: Path) -> Iterator[bytes]:
    """The bytes of a file, and for Parquet also every string value (the parts are compressed)."""
    data = path.read_bytes()
    yield data
    if path.suffix == ".parquet":
        table = pq.read_table(path)
        for column in table.columns:
            if pa.types.is_dictionary(column.type):
                column = column.cast(column.type.value_type)
            if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
                yield "\n".join(v for v in column.to_pylist() if v).encode()


def leaks(files: list[Path], secrets: dict[str, set[str]]) -> list[str]:
    found = []
    for path in files:
        for blob in strings_in(path):
            for kind, values in secrets.items():
                found += [f"{kind} in {path}" for v in values if v and v.encode() in blob]
    return found


def locust(profile: Path, results: Path, label: str, extra: list[str]) -> Path:
    """A short headless HomeofficeUser run; its console output kept as locust.log in the run folder."""
    cmd = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "-u", "6", "-r", "6"]
    cmd += ["-t", "8s", "--profile", str(profile), "--results-dir", str(results), "--label", label]
    cmd += ["--exit-code-on-error", "0", *extra, "HomeofficeUser"]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    run_dir = next((results / label).iterdir())
    (run_dir / "locust.log").write_text(out.stdout + out.stderr)
    return run_dir


def processes_2() -> list[str]:
    """--processes 2 with the master on loopback and a free port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    master = ["--master-bind-host", "127.0.0.1", "--master-bind-port", port, "--master-port", port]
    return ["--processes", "2", *master]


@pytest.mark.load
def test_no_secret_in_logs_results_or_reports(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    ticket_log = tmp_path / "tickets.txt"
    monkeypatch.setenv(TEST_TICKET_LOG_ENV, str(ticket_log))  # the farm child inherits it
    variant = write_profile_variant(
        "reference-before", tmp_path / "profile.toml", {**FAST, "farm.faults": FAULTS}
    )
    results, report = tmp_path / "results", tmp_path / "report"
    with FarmProcess(variant, state_dir=tmp_path / "state") as farm:
        before = locust(farm.profile_path, results, "before", processes_2())
        after = locust(farm.profile_path, results, "after", [])
        farm_out = farm.profile_path.parent
        (tmp_path / "farm-stdout.txt").write_text((farm_out / "stdout.txt").read_text())
        (tmp_path / "farm-stderr.txt").write_text(farm.stderr_text())
    acceptance = tmp_path / "acceptance.toml"
    acceptance.write_text("[errors]\nmax_rate = 0.5\n")
    args = ["compare", before, after, "--acceptance", acceptance, "--out", report, "--bootstrap", "100"]
    rc = gateload_main([str(a) for a in args])
    console = capsys.readouterr()
    (tmp_path / "gateload-console.txt").write_text(console.out + console.err)
    assert rc in (0, 1, 3), console.err

    secrets = secrets_of(tmp_path / "state", ticket_log)
    assert len(secrets["password"]) == 8 and len(secrets["totp_secret"]) == 8
    assert len(secrets["ticket"]) >= 10, "the runs got tickets (and the test learned them)"
    # the scanner works: the credentials file holds the passwords and secrets it looks for, and a
    # ticket in a compressed Parquet column is found
    assert leaks([tmp_path / "state" / "credentials.csv"], secrets)
    planted = tmp_path / "planted.parquet"
    pq.write_table(pa.table({"error": [next(iter(secrets["ticket"]))]}), planted, compression="zstd")
    assert set(leaks([planted], secrets)) == {f"ticket in {planted}"}
    planted.unlink()
    outputs = [p for p in tmp_path.rglob("*") if p.is_file()]
    outputs = [p for p in outputs if "state" not in p.relative_to(tmp_path).parts and p != ticket_log]
    kinds = {p.name for p in outputs}
    assert {"locust_stats.csv", "locust_failures.csv", "locust_report.html", "locust.log"} <= kinds
    assert {"report.html", "summary.md", "verdict.json", "meta.json", "farm-stderr.txt"} <= kinds
    assert any(p.suffix == ".parquet" for p in outputs)
    failures = sum(json.loads((r / "meta.json").read_text())["locust"]["failures"] for r in (before, after))
    assert failures > 0, "the faults made error paths run"
    assert leaks(outputs, secrets) == []


# --- verification on by default; opt-outs recorded -------------------------------------------------


def test_verification_is_on_by_default_and_opt_outs_are_recorded(tmp_path: Path) -> None:
    assert PortalTarget(url="https://portal:443").tls_verify is True
    assert GatewayTarget(host="gw", port=22).verify_host_key is True
    base = {"portal.url": "https://127.0.0.1:9", "gateway.port": 9, "farm.accounts": 2}
    variants = {
        "default": {},
        "opted-out": {"portal.tls_verify": False, "gateway.verify_host_key": False},
    }
    credentials = tmp_path / "credentials.csv"
    credentials.write_text("username,password\nuser0001,not-a-real-password\n")
    procs = {}
    for label, change in variants.items():
        settings = {**base, **change, "credentials.file": str(credentials)}
        profile = write_profile_variant("reference-before", tmp_path / f"{label}.toml", settings)
        cmd = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "-u", "1", "-t", "2s"]
        cmd += ["--profile", str(profile), "--results-dir", str(tmp_path / "res"), "--label", label]
        cmd += ["--exit-code-on-error", "0", "PortalUser"]
        procs[label] = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    security = {}
    for label, proc in procs.items():
        _, err = proc.communicate(timeout=90)
        assert proc.returncode == 0, err.decode()[-2000:]
        run_dir = next((tmp_path / "res" / label).iterdir())
        security[label] = json.loads((run_dir / "meta.json").read_text())["security"]
    assert security["default"] == {"host_key_verified": True, "tls_verified": True, "tls": True}
    assert security["opted-out"] == {"host_key_verified": False, "tls_verified": False, "tls": True}


def test_an_rdp_gateway_counts_as_unverified_only_when_opted_out() -> None:
    """Unpinned and verifying, an RDP session stops at the certificate (test_rdp_xrdp): no session of
    such a run is unverified. Only ``verify_host_key = false`` is, as for SSH."""
    from gateload.locustfiles.lib.runinfo import security

    profile = load_profile(ROOT / "targets" / "profiles" / "reference-before.toml")
    rdp = dataclasses.replace(profile.gateway, protocol="rdp")
    pin = "AB:" * 31 + "AB"
    pinned = dataclasses.replace(profile, gateway=dataclasses.replace(rdp, cert_fingerprint=pin))
    opted_out = dataclasses.replace(profile, gateway=dataclasses.replace(rdp, verify_host_key=False))
    assert security(profile)["host_key_verified"] is True  # ssh: verify_host_key (on by default)
    assert security(pinned)["host_key_verified"] is True
    assert security(opted_out)["host_key_verified"] is False


# --- loopback by default ------------------------------------------------------------------------------


def listening(pid: int) -> set[tuple[str, int]]:
    """(address, port) of every TCP socket process ``pid`` listens on (Linux /proc)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = set()
    for table, size in (("tcp", 4), ("tcp6", 16)):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] != "0A" or fields[9] not in inodes:  # 0A: LISTEN
                continue
            hex_ip, hex_port = fields[1].split(":")
            raw = bytes.fromhex(hex_ip)
            # /proc prints each 32-bit word in host (little-endian) order
            words = b"".join(raw[i : i + 4][::-1] for i in range(0, size, 4))
            found.add((str(ipaddress.ip_address(words)), int(hex_port, 16)))
    return found


def test_farm_listens_on_loopback_unless_told_otherwise(tmp_path: Path) -> None:
    variant = write_profile_variant("reference-before", tmp_path / "p.toml", {"farm.accounts": 2})
    with FarmProcess(variant, state_dir=tmp_path / "state") as farm:
        sockets = listening(farm.pid)
        assert len(sockets) == 4  # portal, gateway, intranet, admin
        assert {addr for addr, _ in sockets} == {"127.0.0.1"}, sockets
        assert farm.stderr_text() == ""
    extra = ("--bind", "0.0.0.0")  # the explicit way beyond loopback
    with FarmProcess(variant, state_dir=tmp_path / "state", extra_args=extra) as farm:
        by_port = {port: addr for addr, port in listening(farm.pid)}
        portal_port = int(farm.profile.portal.url.rsplit(":", 1)[1])
        p = farm.profile
        assert by_port[p.gateway.port] == "0.0.0.0" and by_port[portal_port] == "0.0.0.0"
        assert p.farm is not None
        internal = {by_port[p.farm.intranet_port], by_port[p.farm.admin_port]}
        assert internal == {"127.0.0.1"}, "the intranet and the admin endpoint never leave loopback"
        assert "warning: listening on 0.0.0.0" in farm.stderr_text()


# --- the admin endpoint -------------------------------------------------------------------------------


def _status(url: str, headers: dict[str, str]) -> int:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_admin_endpoint_is_loopback_only_and_needs_the_token(tmp_path: Path) -> None:
    variant = write_profile_variant("reference-before", tmp_path / "p.toml", {"farm.accounts": 2})
    state = tmp_path / "state"
    with FarmProcess(variant, state_dir=state, extra_args=("--bind", "127.0.0.2")) as farm:
        assert farm.profile.farm is not None
        port = farm.profile.farm.admin_port
        token = (state / "admin_token").read_text().strip()
        assert (state / "admin_token").stat().st_mode & 0o777 == 0o600 and len(token) >= 32
        url = f"http://127.0.0.1:{port}/admin/faults"
        assert _status(url, {}) == 401
        assert _status(url, {"Authorization": "Bearer wrong"}) == 401
        assert _status(url, {"Authorization": token}) == 401  # the scheme is part of it
        assert _status(url, {"Authorization": f"Bearer {token}x"}) == 401
        assert _status(url, {"Authorization": f"Bearer {token}"}) == 200
        with pytest.raises(ConnectionRefusedError):  # not on the farm's (public) bind address
            socket.create_connection(("127.0.0.2", port), timeout=5).close()
        status, _ = FaultClient(port, "wrong").request("POST", body={"kind": "stall", "duration_s": 1})
        assert status == 401 and FaultClient.for_profile(farm.profile).state()["log"] == []
        printed = farm.ready_line + farm.stderr_text() + farm.profile_path.read_text()
        assert token not in printed


def test_admin_token_from_the_environment_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TOKEN_ENV, "from-the-environment-0123456789abcdef")
    assert admin_token(tmp_path) == "from-the-environment-0123456789abcdef"
    assert not (tmp_path / "admin_token").exists()
    monkeypatch.delenv(TOKEN_ENV)
    first = admin_token(tmp_path)
    assert admin_token(tmp_path) == first  # kept, so two farms sharing a state folder agree


async def _guarded(peer: tuple[str, int], token: str) -> int:
    from gateload.targets.reference.capacity import Cluster

    profile_farm = load_profile(ROOT / "targets" / "profiles" / "reference-before.toml").farm
    assert profile_farm is not None
    app = build_admin_app(FaultController(Cluster(profile_farm), set()), "s3cret-token")

    class Transport:  # no non-loopback client can exist on this machine: a transport naming one
        def get_extra_info(self, name: str, default: Any = None) -> Any:
            return peer if name == "peername" else default

        def is_closing(self) -> bool:
            return False

    request = make_mocked_request(
        "GET", "/admin/faults", headers={"Authorization": f"Bearer {token}"}, app=app, transport=Transport()
    )
    guard = app.middlewares[0]

    async def handler(_request: Any) -> aiohttp.web.Response:
        return aiohttp.web.Response(text="ok")

    return (await guard(request, handler)).status


def test_admin_guard_refuses_peers_beyond_loopback_even_with_the_token() -> None:
    assert asyncio.run(_guarded(("192.0.2.7", 40000), "s3cret-token")) == 403
    assert asyncio.run(_guarded(("127.0.0.1", 40000), "s3cret-token")) == 200
    assert asyncio.run(_guarded(("::1", 40000), "s3cret-token")) == 200


# --- the SFTP sandbox ---------------------------------------------------------------------------------


def run_farm(profile: Profile, scenario: Callable[[ReferenceFarm], Any]) -> Any:
    async def main() -> Any:
        async with ReferenceFarm(profile, seed=5) as farm:
            return await scenario(farm)

    return asyncio.run(main())


async def _connect(farm: ReferenceFarm, index: int = 0) -> asyncssh.SSHClientConnection:
    account = list(farm.state.accounts.values())[index]
    launch = await portal_ticket(farm.portal_url, account)
    return await asyncssh.connect(
        "127.0.0.1",
        farm.gateway_port,
        username=launch["username"],
        password=launch["ticket"],
        known_hosts=None,
        client_keys=None,
        agent_path=None,
    )


def test_sftp_writes_renames_and_removes_stay_in_the_sandbox(fast_profile: Callable[..., Profile]) -> None:
    async def scenario(farm: ReferenceFarm) -> None:
        state = farm.state.root
        names = list(farm.state.accounts)
        other = farm.state.sandbox(names[1])
        (other / "private.txt").write_text("user 2 only")
        credentials = (state / "credentials.csv").read_bytes()
        async with await _connect(farm, 0) as conn, conn.start_sftp_client() as sftp:
            mine = farm.state.sandbox(names[0])
            for path in ("../../escape.txt", "/../escape2.txt"):
                async with sftp.open(path, "wb") as fh:
                    await fh.write(b"x")
            # each landed at the sandbox root: ".." stops there
            assert {"escape.txt", "escape2.txt"} <= set(os.listdir(mine))
            outside = state.parent / f"escape-{os.getpid()}.txt"
            with pytest.raises(asyncssh.SFTPNoSuchFile):  # "/<state>/..." is a path inside the sandbox
                async with sftp.open(f"../../../../../../{outside}", "wb") as fh:
                    await fh.write(b"x")
            assert not outside.exists()
            assert not (state / "escape.txt").exists() and not (state.parent / "escape.txt").exists()
            await sftp.rename("escape.txt", "../../moved.txt")
            assert (mine / "moved.txt").exists() and not (state / "moved.txt").exists()
            await sftp.mkdir("../../made")
            assert (mine / "made").is_dir() and not (state / "made").exists()
            for path in ("../" + names[1] + "/private.txt", f"/../../sftp/{names[1]}/private.txt"):
                with pytest.raises(asyncssh.SFTPNoSuchFile):
                    await sftp.stat(path)  # another user's files are out of reach
            for path in ("../../credentials.csv", "../../ssh_host_key", "/../../admin_token"):
                with pytest.raises(asyncssh.SFTPNoSuchFile):
                    await sftp.remove(path)
            os.symlink(other, mine / "to-user-2")
            with pytest.raises(asyncssh.SFTPPermissionDenied):
                await sftp.listdir("to-user-2")
            with pytest.raises(asyncssh.SFTPPermissionDenied):
                await sftp.rename("moved.txt", "to-user-2/planted.txt")
        assert (state / "credentials.csv").read_bytes() == credentials
        assert sorted(os.listdir(other)) == sorted([*farm.state.documents, "private.txt"])

    run_farm(fast_profile(), scenario)


# --- tunnels ------------------------------------------------------------------------------------------


def test_tunnels_reach_exactly_the_allow_list(fast_profile: Callable[..., Profile]) -> None:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(await reader.read(100))
        await writer.drain()
        writer.close()

    async def scenario(farm: ReferenceFarm, allowed: int, other: int) -> None:
        async with await _connect(farm) as conn:
            reader, writer = await conn.open_connection("127.0.0.1", allowed)
            writer.write(b"ping")
            assert await asyncio.wait_for(reader.read(), 5) == b"ping"
            writer.close()
            refused = [
                ("127.0.0.1", other),  # same host, another port
                ("localhost", allowed),  # same place, another name
                ("127.0.0.1", farm.intranet_port),  # the intranet by its real address
                ("INTRANET", 80),
                ("intranet.", 80),
                ("intranet", 8080),
                ("127.0.0.1", farm.gateway_port),
            ]
            for host, port in refused:
                with pytest.raises(asyncssh.ChannelOpenError) as info:
                    await conn.open_connection(host, port)
                assert info.value.code == asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED, (host, port)
            with pytest.raises(asyncssh.ChannelOpenError):  # no UNIX sockets either
                await conn.open_unix_connection("/run/sshd.pid")
            with pytest.raises(asyncssh.ChannelListenError):  # nor remote (reverse) forwarding
                await conn.forward_remote_port("127.0.0.1", 0, "127.0.0.1", allowed)

    async def main() -> None:
        server = await asyncio.start_server(echo, "127.0.0.1", 0)
        decoy = await asyncio.start_server(echo, "127.0.0.1", 0)
        allowed, other = server.sockets[0].getsockname()[1], decoy.sockets[0].getsockname()[1]
        profile = fast_profile(farm__tunnel_allow=["intranet:80", f"127.0.0.1:{allowed}"])
        try:
            async with ReferenceFarm(profile, seed=5) as farm:
                await scenario(farm, allowed, other)
        finally:
            server.close()
            decoy.close()

    asyncio.run(main())
