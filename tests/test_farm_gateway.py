"""The reference SSH gateway, in process: auth, banner, PTY echo, exec, SFTP sandbox, tunnels, refusal."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import asyncssh
import pytest

from gateload.targets.profile import Profile
from gateload.targets.reference.farm import ReferenceFarm
from gateload.targets.reference.harness import portal_ticket
from gateload.targets.reference.state import Account, add_authorized_key

Scenario = Callable[[ReferenceFarm], Awaitable[Any]]


def run(profile: Profile, scenario: Scenario, state_dir: Path | None = None) -> Any:
    async def main() -> Any:
        async with ReferenceFarm(profile, state_dir=state_dir, seed=11) as farm:
            return await scenario(farm)

    return asyncio.run(main())


def _account(farm: ReferenceFarm, index: int = 0) -> Account:
    return list(farm.state.accounts.values())[index]


class BannerClient(asyncssh.SSHClient):
    """Remembers the auth banner, which names the backend."""

    def __init__(self) -> None:
        self.banner = ""

    def auth_banner_received(self, msg: str, lang: str) -> None:
        self.banner += msg


def _connect(farm: ReferenceFarm, username: str, password: str | None = None, **kwargs: Any) -> Any:
    options: dict[str, Any] = {"known_hosts": None, "client_keys": None, "agent_path": None}
    options.update(kwargs)
    return asyncssh.connect(
        "127.0.0.1",
        farm.gateway_port,
        username=username,
        password=password,
        client_factory=BannerClient,
        **options,
    )


async def _ticket(farm: ReferenceFarm, index: int = 0) -> dict[str, Any]:
    return await portal_ticket(farm.portal_url, _account(farm, index))


# --- authentication --------------------------------------------------------------------------------


def test_ticket_logs_in_once_and_backend_is_revealed(fast_profile: Callable[..., Profile]) -> None:
    async def scenario(farm: ReferenceFarm) -> None:
        launch = await _ticket(farm)
        async with _connect(farm, launch["username"], launch["ticket"]) as conn:
            banner = conn.get_owner().banner
            assert banner.startswith("gateload-server: ") and banner.endswith("\n")
            server = banner.split(": ", 1)[1].strip()
            assert server in farm.effective_profile.server_ids
            env = await conn.run("env", check=True)
            assert env.stdout == f"GATELOAD_SERVER={server}\n"
        with pytest.raises(asyncssh.PermissionDenied):
            async with _connect(farm, launch["username"], launch["ticket"]):
                pass
        tickets = farm.metrics_snapshot()["tickets"]
        assert (tickets["issued"], tickets["consumed"], tickets["rejected"]) == (1, 1, 1)

    run(fast_profile(), scenario)


def test_no_ticket_wrong_user_and_forged_tickets_are_refused(fast_profile: Callable[..., Profile]) -> None:
    async def scenario(farm: ReferenceFarm) -> None:
        launch = await _ticket(farm, 0)
        other_user = _account(farm, 1).username
        for username, password in [
            (launch["username"], "not-a-ticket"),
            (launch["username"], _account(farm, 0).password),  # static credentials are off
            (other_user, launch["ticket"]),  # a ticket is valid only for the user it names
            (launch["username"], launch["ticket"][:-3] + "AAA"),
        ]:
            with pytest.raises(asyncssh.PermissionDenied):
                async with _connect(farm, username, password):
                    pass
        async with _connect(farm, launch["username"], launch["ticket"]):
            pass  # the genuine ticket was not burnt by the failed attempts

    run(fast_profile(farm__static_credentials=False), scenario)


def test_expired_ticket_is_refused(fast_profile: Callable[..., Profile]) -> None:
    async def scenario(farm: ReferenceFarm) -> None:
        launch = await _ticket(farm)
        while time.time() <= launch["expires_at"]:  # bounded by the 0.3 s TTL
            await asyncio.sleep(0.05)
        with pytest.raises(asyncssh.PermissionDenied):
            async with _connect(farm, launch["username"], launch["ticket"]):
                pass

    run(fast_profile(farm__ticket_ttl_s=0.3), scenario)


@pytest.mark.parametrize("static", [True, False])
def test_static_credentials_switch(fast_profile: Callable[..., Profile], static: bool) -> None:
    async def scenario(farm: ReferenceFarm) -> bool:
        acct = _account(farm)
        try:
            async with _connect(farm, acct.username, acct.password):
                return True
        except asyncssh.PermissionDenied:
            return False

    assert run(fast_profile(farm__static_credentials=static), scenario) is static


def test_public_key_auth_from_authorized_keys(fast_profile: Callable[..., Profile], ssh_keypair: Any) -> None:
    other_key = asyncssh.generate_private_key("ssh-ed25519")

    async def scenario(farm: ReferenceFarm) -> None:
        with pytest.raises(asyncssh.PermissionDenied):  # not listed yet
            async with _connect(farm, "anyone", client_keys=[str(ssh_keypair.private_path)]):
                pass
        add_authorized_key(farm.state.root, ssh_keypair.public_line)  # re-read on change, no restart
        async with _connect(farm, "anyone", client_keys=[str(ssh_keypair.private_path)]) as conn:
            assert (await conn.run("echo key", check=True)).stdout == "key\n"
        with pytest.raises(asyncssh.PermissionDenied):
            async with _connect(farm, "anyone", client_keys=[other_key]):
                pass

    run(fast_profile(), scenario)


def test_host_key_is_persisted_and_can_be_pinned(
    fast_profile: Callable[..., Profile], tmp_path: Path
) -> None:
    profile = fast_profile()
    state = tmp_path / "persist"

    async def scenario(farm: ReferenceFarm) -> str:
        pub = Path(farm.effective_profile.gateway.host_key)
        assert pub == state / "ssh_host_key.pub"
        assert (state / "ssh_host_key").stat().st_mode & 0o777 == 0o600
        pinned = asyncssh.import_known_hosts(f"[127.0.0.1]:{farm.gateway_port} {pub.read_text()}")
        launch = await _ticket(farm)
        async with _connect(farm, launch["username"], launch["ticket"], known_hosts=pinned):
            pass
        wrong = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode()
        launch = await _ticket(farm)
        with pytest.raises(asyncssh.HostKeyNotVerifiable):
            async with _connect(
                farm,
                launch["username"],
                launch["ticket"],
                known_hosts=asyncssh.import_known_hosts(f"[127.0.0.1]:{farm.gateway_port} {wrong}"),
            ):
                pass
        return pub.read_text()

    first = run(profile, scenario, state_dir=state)
    second = run(profile, scenario, state_dir=state)
    assert first == second


def test_saturated_gateway_refuses_with_too_many_connections(fast_profile: Callable[..., Profile]) -> None:
    profile = fast_profile(farm__servers__0__count=1, farm__servers__0__max_sessions=1)

    async def scenario(farm: ReferenceFarm) -> None:
        first = await _ticket(farm, 0)
        second = await _ticket(farm, 1)
        async with _connect(farm, first["username"], first["ticket"]):
            with pytest.raises(asyncssh.DisconnectError) as info:
                async with _connect(farm, second["username"], second["ticket"]):
                    pass
            assert info.value.code == asyncssh.DISC_TOO_MANY_CONNECTIONS
            assert "too many connections" in info.value.reason
        deadline = time.monotonic() + 5
        while farm.metrics_snapshot()["servers"]["old-01"]["ssh_sessions"] and time.monotonic() < deadline:
            await asyncio.sleep(0.01)  # the server notices the close a moment after the client
        async with _connect(farm, second["username"], second["ticket"]):
            pass  # the refused attempt did not consume the ticket: auth never started
        assert farm.metrics_snapshot()["servers"]["old-01"]["refused"]["ssh"] == 1

    run(profile, scenario)


# --- shell and exec --------------------------------------------------------------------------------


READ_TIMEOUT_S = 10.0  # a broken echo path fails fast instead of hanging the suite


async def _until(proc: asyncssh.SSHClientProcess[bytes], marker: bytes = b"gw$ ") -> bytes:
    return await asyncio.wait_for(proc.stdout.readuntil(marker), READ_TIMEOUT_S)


async def _exactly(proc: asyncssh.SSHClientProcess[bytes], n: int) -> bytes:
    return await asyncio.wait_for(proc.stdout.readexactly(n), READ_TIMEOUT_S)


async def _shell(conn: asyncssh.SSHClientConnection) -> asyncssh.SSHClientProcess[bytes]:
    proc = await conn.create_process(term_type="xterm", encoding=None)
    assert await _until(proc) == b"gw$ "
    return proc


def test_pty_shell_echoes_keystrokes_and_runs_lines(fast_profile: Callable[..., Profile]) -> None:
    async def scenario(farm: ReferenceFarm) -> None:
        launch = await _ticket(farm)
        async with _connect(farm, launch["username"], launch["ticket"]) as conn:
            proc = await _shell(conn)
            for key in b"echo hi":
                proc.stdin.write(bytes([key]))
                assert await _exactly(proc, 1) == bytes([key])
            proc.stdin.write(b"\r")
            assert await _until(proc) == b"\r\nhi\r\ngw$ "
            proc.stdin.write(b"screen 3 50\r")
            out = await _until(proc)
            lines = out.split(b"\r\n")
            assert lines[0] == b"screen 3 50" and lines[-1] == b"gw$ "
            assert [len(x) for x in lines[1:-1]] == [50, 50, 50] and b"$" not in b"".join(lines[1:-1])
            proc.stdin.write(b"ecx\x7fho ok\r")  # backspace edits the line
            assert (await _until(proc)).endswith(b"\r\nok\r\ngw$ ")
            proc.stdin.write(b"nope\r")
            assert b"sh: nope: not found\r\n" in await _until(proc)
            proc.stdin.write(b"exit\r")
            await asyncio.wait_for(proc.wait(), 5)
            assert proc.exit_status == 0
        keystrokes = farm.metrics_snapshot()["servers"]
        assert sum(s["served"]["keystroke"] for s in keystrokes.values()) >= len("echo hi")

    run(fast_profile(), scenario)


def test_one_sessions_backlog_does_not_block_another(fast_profile: Callable[..., Profile]) -> None:
    # one server, one worker: both sessions share one slot, served FIFO per operation
    profile = fast_profile(
        farm__servers__0__count=1, farm__service__keystroke_ms=40.0, farm__service__distribution="constant"
    )

    async def scenario(farm: ReferenceFarm) -> tuple[float, float]:
        a, b = await _ticket(farm, 0), await _ticket(farm, 1)
        async with (
            _connect(farm, a["username"], a["ticket"]) as conn_a,
            _connect(farm, b["username"], b["ticket"]) as conn_b,
        ):
            shell_a, shell_b = await _shell(conn_a), await _shell(conn_b)
            loop = asyncio.get_running_loop()
            start = loop.time()
            shell_a.stdin.write(b"x" * 20)  # a paste: 20 keystrokes = 0.8 s of work for session A
            await _exactly(shell_a, 1)
            shell_b.stdin.write(b"y")
            await _exactly(shell_b, 1)
            b_echo = loop.time() - start
            await _exactly(shell_a, 19)
            a_done = loop.time() - start
            return b_echo, a_done

    b_echo, a_done = run(profile, scenario)
    assert a_done > 0.7  # 20 x 40 ms on the one worker, plus B's keystroke
    assert b_echo < a_done / 3, (b_echo, a_done)


def test_exec_commands(fast_profile: Callable[..., Profile]) -> None:
    async def scenario(farm: ReferenceFarm) -> None:
        launch = await _ticket(farm)
        async with _connect(farm, launch["username"], launch["ticket"]) as conn:
            r = await conn.run("echo hello world")
            assert (r.stdout, r.exit_status) == ("hello world\n", 0)
            r = await conn.run("screen 2 10")
            assert r.stdout == "abcdefghij\nabcdefghij\n" and r.exit_status == 0
            r = await conn.run("rm -rf /")
            assert (r.stdout, r.exit_status) == ("sh: rm: not found\n", 127)
            r = await conn.run("screen x")
            assert r.exit_status == 2 and r.stdout.startswith("usage: screen")

    run(fast_profile(), scenario)


# --- SFTP ------------------------------------------------------------------------------------------


def test_sftp_round_trip_in_a_seeded_sandbox(fast_profile: Callable[..., Profile], tmp_path: Path) -> None:
    payload = os.urandom(300_000)
    (tmp_path / "up.bin").write_bytes(payload)

    async def scenario(farm: ReferenceFarm) -> None:
        launch = await _ticket(farm)
        async with (
            _connect(farm, launch["username"], launch["ticket"]) as conn,
            conn.start_sftp_client() as sftp,
        ):
            docs = farm.effective_profile.farm.documents  # type: ignore[union-attr]
            assert set(docs) <= set(await sftp.listdir("."))
            for name, size in docs.items():
                assert (await sftp.stat(name)).size == size
            await sftp.put(str(tmp_path / "up.bin"), "up.bin")
            await sftp.get("up.bin", str(tmp_path / "down.bin"))
        assert (tmp_path / "down.bin").read_bytes() == payload
        sandbox = farm.state.root / "sftp" / launch["username"]
        assert (sandbox / "up.bin").read_bytes() == payload

    run(fast_profile(), scenario)


def test_sftp_cannot_leave_the_sandbox(fast_profile: Callable[..., Profile], tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("top secret")

    async def scenario(farm: ReferenceFarm) -> None:
        launch = await _ticket(farm)
        sandbox = farm.state.sandbox(launch["username"])
        os.symlink(outside / "secret.txt", sandbox / "link-to-secret")
        os.symlink(outside, sandbox / "link-to-dir")
        async with (
            _connect(farm, launch["username"], launch["ticket"]) as conn,
            conn.start_sftp_client() as sftp,
        ):
            # ".." cannot climb above the sandbox root: it is the root
            assert sorted(await sftp.listdir("/../../..")) == sorted(await sftp.listdir("/"))
            assert await sftp.realpath("../..") == "/"
            with pytest.raises(asyncssh.SFTPNoSuchFile):
                await sftp.stat("/etc/passwd")  # absolute paths are inside the sandbox too
            for escape in ("link-to-secret", "link-to-dir/secret.txt", "/link-to-dir"):
                with pytest.raises(asyncssh.SFTPPermissionDenied):
                    async with sftp.open(escape) as fh:
                        await fh.read()
            with pytest.raises(asyncssh.SFTPPermissionDenied):
                await sftp.listdir("link-to-dir")
            with pytest.raises(asyncssh.SFTPPermissionDenied):
                await sftp.symlink(str(outside), "new-link")
            with pytest.raises(asyncssh.SFTPPermissionDenied):
                await sftp.link("memo.pdf", "hard-link")
            with pytest.raises(asyncssh.SFTPPermissionDenied):
                async with sftp.open("link-to-dir/planted.txt", "wb") as fh:
                    await fh.write(b"x")
        assert not (outside / "planted.txt").exists()
        assert not (sandbox / "new-link").exists()

    run(fast_profile(), scenario)


def test_sftp_transfer_is_throttled_to_the_profile_rate(fast_profile: Callable[..., Profile]) -> None:
    async def scenario(farm: ReferenceFarm) -> float:
        launch = await _ticket(farm)
        async with (
            _connect(farm, launch["username"], launch["ticket"]) as conn,
            conn.start_sftp_client() as sftp,
        ):
            start = time.perf_counter()
            async with sftp.open("big.bin", "wb") as fh:
                await fh.write(b"z" * 1_000_000)
            return time.perf_counter() - start

    elapsed = run(fast_profile(farm__service__sftp_mb_per_s=5.0), scenario)
    assert elapsed >= 0.7 * 0.2  # 1 MB at 5 MB/s: 0.2 s; the throttle can only make it slower


# --- tunnels ---------------------------------------------------------------------------------------


def test_tunnel_reaches_the_intranet_only(fast_profile: Callable[..., Profile]) -> None:
    async def scenario(farm: ReferenceFarm) -> None:
        launch = await _ticket(farm)
        async with _connect(farm, launch["username"], launch["ticket"]) as conn:
            server = conn.get_owner().banner.split(": ", 1)[1].strip()
            reader, writer = await conn.open_connection("intranet", 80)
            writer.write(b"GET / HTTP/1.0\r\nHost: intranet\r\n\r\n")
            answer = await asyncio.wait_for(reader.read(), 5)
            head, _, body = answer.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.0 200") or head.startswith(b"HTTP/1.1 200")
            assert f"X-Gateload-Server: {server}".encode() in head
            assert b"intranet" in body.lower()
            refused = [("127.0.0.1", farm.gateway_port), ("intranet", 81), ("example.org", 80)]
            refused.append(("127.0.0.1", int(farm.portal_url.rsplit(":", 1)[1])))
            for host, port in refused:
                with pytest.raises(asyncssh.ChannelOpenError) as info:
                    await conn.open_connection(host, port)
                assert info.value.code == asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED
        served = farm.metrics_snapshot()["servers"][server]["served"]
        assert served["tunnel_request"] == 1

    run(fast_profile(), scenario)


def test_intranet_is_loopback_only_and_unattributed_without_a_tunnel(
    fast_profile: Callable[..., Profile],
) -> None:
    async def scenario(farm: ReferenceFarm) -> None:
        assert farm.effective_profile.farm.intranet_port == farm.intranet_port  # type: ignore[union-attr]
        async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{farm.intranet_port}/") as r:
            assert r.status == 200 and r.headers["X-Gateload-Server"] == "lb"

    run(fast_profile(), scenario)
