"""OpenSSH's connection limit as it ships, and its relaxed variant: a logon it turns away is ``throttled``.

sshd's ``MaxStartups 10:30:100`` (the default) turns away 30 % of new connections while 10 others are
still logging on; it writes ``Exceeded MaxStartups`` and closes. A load generator's logon storm meets
that long before the gateway's capacity, so the report must say so (``throttled``, not a ``reset``
that looks like a network fault). The relaxed variant (``Sshd(relaxed=True)``) lets the same storm in.

Logons run under ``asyncio.run``: in this gevent-patched process asyncssh's address lookup needs the
hub to run, and nothing here is timed.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections import Counter
from collections.abc import Iterator

import pytest
from real_support import private_dir, start_or_skip

from gateload.locustfiles.lib.errors import classify
from gateload.locustfiles.lib.sshops import ConnectSpec, GatewayConnection
from gateload.targets.local.sshd import Sshd, SshKeys
from gateload.targets.reference.gateway import host_key_fingerprint

pytestmark = pytest.mark.sshd

PENDING = 10  # connections still logging on: sshd's "start", from which new ones may be turned away
ATTEMPTS = 40  # at 30 % each, none turned away has a probability of 0.7 ** 40 = 6e-7


@contextlib.contextmanager
def stock_sshd(relaxed: bool) -> Iterator[tuple[Sshd, ConnectSpec]]:
    """A stock sshd (production defaults unless ``relaxed``) and how to log on to it."""
    with private_dir("sshd-limits") as folder:
        keys = SshKeys.generate(folder / "keys")
        sshd = start_or_skip(lambda: Sshd(keys, folder / "gw", relaxed=relaxed))
        with sshd:
            spec = ConnectSpec(
                sshd.host,
                sshd.port,
                sshd.user.name,
                sshd.user.password,
                host_key_fingerprint=host_key_fingerprint(keys.host_key_pub),
                timeout_s=10.0,
            )
            yield sshd, spec


@contextlib.contextmanager
def logons_pending(sshd: Sshd, n: int) -> Iterator[None]:
    """``n`` connections that got sshd's version line and then say nothing: still logging on.

    One sshd turns away (a connection still pending from its start-up check can push the count past
    ``start``) is closed and replaced; at most ``3 * n`` tries.
    """
    socks: list[socket.socket] = []
    try:
        for _ in range(3 * n):
            if len(socks) == n:
                break
            sock = socket.create_connection((sshd.host, sshd.port), timeout=10)
            if _version_line(sock).startswith(b"SSH-2.0-"):
                socks.append(sock)
            else:
                sock.close()
        assert len(socks) == n, f"only {len(socks)} of {n} connections held"
        yield
    finally:
        for sock in socks:
            sock.close()


def _version_line(sock: socket.socket) -> bytes:
    line = b""
    with contextlib.suppress(ConnectionError):
        while not line.endswith(b"\n"):
            chunk = sock.recv(256)
            if not chunk:
                break
            line += chunk
    return line


async def _logons(spec: ConnectSpec, n: int) -> Counter[str]:
    """``n`` logons one after the other: "ok" or the error class of each."""
    outcomes: Counter[str] = Counter()
    for _ in range(n):
        conn = GatewayConnection(spec)
        try:
            await conn.connect()
            outcomes["ok"] += 1
        except Exception as exc:
            outcomes[classify(exc) or "none"] += 1
        finally:
            await conn.close()
            conn.abort()
    return outcomes


def _throttling(sshd: Sshd) -> bool:
    """sshd logged that it began turning connections away (it logs the first drop only)."""
    return "beginning MaxStartups throttling" in (sshd.state_dir / "sshd.log").read_text(errors="replace")


def test_production_defaults_turn_logons_away_as_throttled() -> None:
    with stock_sshd(relaxed=False) as (sshd, spec):
        assert "MaxStartups 10:30:100" in (sshd.state_dir / "sshd_config").read_text()
        with logons_pending(sshd, PENDING):
            outcomes = asyncio.run(_logons(spec, ATTEMPTS))
        throttling = _throttling(sshd)
    print(f"stock sshd, {PENDING} logons pending, {ATTEMPTS} more: {dict(outcomes)}")
    # Every logon sshd turned away is "throttled" (its text arrives before its close), none a reset.
    assert set(outcomes) <= {"ok", "throttled"}, outcomes
    assert throttling  # sshd logged that it turned connections away
    assert outcomes["throttled"] >= 1, outcomes
    assert outcomes["ok"] >= 1, outcomes


def test_the_relaxed_variant_lets_the_same_logons_in() -> None:
    with stock_sshd(relaxed=True) as (sshd, spec):
        assert "MaxStartups 200:30:400" in (sshd.state_dir / "sshd_config").read_text()
        with logons_pending(sshd, PENDING):
            outcomes = asyncio.run(_logons(spec, ATTEMPTS))
        assert outcomes == Counter(ok=ATTEMPTS), outcomes
        assert not _throttling(sshd)


async def _logon_to(answer: bytes, rst: bool) -> str:
    """The error class of a logon to a server that reads the client's version line, writes ``answer``
    and closes (with a reset when ``rst``)."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readline()
        writer.write(answer)
        await writer.drain()
        if rst:
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    async with server:
        port = server.sockets[0].getsockname()[1]
        conn = GatewayConnection(ConnectSpec("127.0.0.1", port, "u", "p", verify_host_key=False, timeout_s=5))
        try:
            await conn.connect()
        except Exception as exc:
            return classify(exc) or "none"
        finally:
            conn.abort()
    return "ok"


@pytest.mark.parametrize(
    ("answer", "rst", "expected"),
    [
        (b"Exceeded MaxStartups\r\n", False, "throttled"),  # sshd past MaxStartups
        (b"Too many users\r\n", True, "throttled"),  # any text, then a reset: still turned away
        (b"", True, "reset"),  # nothing arrived: a reset (a lossy link, a crashed server)
        (b"SSH-2.0-Test\r\n", False, "reset"),  # the banner came: the server closed a real session
    ],
)
def test_only_a_close_after_text_before_the_banner_is_throttled(
    answer: bytes, rst: bool, expected: str
) -> None:
    assert asyncio.run(_logon_to(answer, rst)) == expected
