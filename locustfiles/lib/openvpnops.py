"""Debian's ``openvpn`` client, one process per tunnel, driven over its management interface from asyncio.

The client runs without a tun device (``--dev null --ifconfig-noexec --route-noexec``): the tunnel comes
fully up (TLS, the password, the pushed config, ``CONNECTED``) while nothing on this machine changes. It
is started with ``--management <private unix socket> unix --management-client --management-hold
--management-query-passwords``: it connects to a socket this module listens on, waits for ``hold
release``, and asks for the username and password over that socket, so the password never appears on a
command line, in a file or in a log. The management connection is the process's lifeline: when it
closes (our process ended, the session aborted) OpenVPN exits by itself (``--management-client``).

Times are taken in the loop thread when each notification arrives (OpenVPN's own timestamps are whole
seconds): ``start`` (the process up to its hold), ``tls`` (hold release until the log line ``Peer
Connection Initiated``: the first packets, the TLS handshake and key exchange), ``config`` (the
PUSH_REQUEST until the log line of the server's PUSH_REPLY) and the tunnel (hold release until
``>STATE:...,CONNECTED``). A client without a tun device reports no ``GET_CONFIG`` or ``ASSIGN_IP``
state, so those two steps come from fixed markers of its real-time log (``log on``, verb 3 as the
stock client.conf has it); only the markers are matched, no log text is kept. Nothing here touches
Locust or gevent; no server text and no secret ever goes into an exception message.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import re
import shutil
import signal
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gevent.monkey import get_original

from gateload.locustfiles.lib.errors import OperationError

# gevent patches both to watch children from its hub; the loop thread has no hub of its own.
_waitpid = get_original("os", "waitpid")
_posix_spawn = get_original("os", "posix_spawn")

#: How long a client process gets to exit after SIGTERM before SIGKILL (bounded; it sends an
#: explicit-exit-notify to the server in that time, as a user closing the client does).
TERM_TIMEOUT_S = 1.0
#: OpenVPN's keepalive as Debian's sample server pushes it (``keepalive 10 120``: ``ping 10``), used until
#: the PUSH_REPLY says otherwise.
DEFAULT_PING_S = 10.0
#: Seconds between the client's byte counts (``bytecount``): the resolution of "nothing came in".
BYTECOUNT_S = 1
_PING_RE = re.compile(r"[',]ping (\d+)[,']")
MAX_LINE_BYTES = 65536

#: pids of client processes alive in this process: killed at interpreter exit whatever happened.
_live: set[int] = set()


def openvpn_binary() -> str:
    """The ``openvpn`` client binary, or an OperationError naming the package to install."""
    found = shutil.which("openvpn") or shutil.which("openvpn", path="/usr/sbin:/sbin")
    if not found:
        raise OperationError("other", "openvpn not found; install it with apt-get install -y openvpn")
    return found


@dataclass(frozen=True)
class OpenVPNSpec:
    """Where and how to connect; ``password`` is never logged (repr=False)."""

    host: str
    port: int
    username: str
    password: str | None = field(default=None, repr=False)
    ca_file: str = ""  # PEM bundle that signs the server's certificate (required by OpenVPN)
    proto: str = "udp"
    timeout_s: float = 10.0
    source_host: str | None = None  # bind to this local address (one 127.0.0.x per simulated user)


def client_argv(binary: str, spec: OpenVPNSpec, management: Path) -> list[str]:
    """The client's command line: a stock client config, no tun device, no secret."""
    argv = [
        binary,
        "--client",
        "--dev",
        "null",
        "--ifconfig-noexec",
        "--route-noexec",
        "--proto",
        spec.proto,
        "--remote",
        spec.host,
        str(spec.port),
        "--ca",
        spec.ca_file,
        "--remote-cert-tls",
        "server",  # as client.conf ships: the peer must hold a server certificate
        "--auth-user-pass",
        "--auth-nocache",
        "--auth-retry",
        "none",  # a rejected password ends the client (AUTH_FAILED), no interactive retry
        "--connect-retry-max",
        "1",
        "--management",
        str(management),
        "unix",
        "--management-client",
        "--management-hold",
        "--management-query-passwords",
        "--verb",
        "3",  # the stock client.conf's level: the handshake and PUSH_REPLY lines we time
    ]
    if spec.source_host:
        argv += ["--local", spec.source_host, "--lport", "0"]
    else:
        argv += ["--nobind"]
    return argv


def _quote(text: str) -> str:
    """A management-interface argument: double quotes, backslash escapes."""
    if "\n" in text or "\r" in text:
        raise OperationError("other", "a credential holds a line break")
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


#: ``>STATE:`` descriptions of a restart or exit, and the error class each means.
_REASONS = {
    "auth-failure": "auth_failed",
    "tls-error": "tls_error",
    "connection-reset": "reset",
    "connection-failed": "refused",
    "ping-restart": "reset",
    "server-pushed-connection-reset": "reset",
    "server_poll": "timeout",
}
#: ``>LOG:`` fragments that mark a step of the logon (pseudo-states, timed like ``>STATE:``); only these
#: fixed markers are looked for, the log text itself is never kept.
_LOG_STEPS = (
    ("Peer Connection Initiated", "TLS_DONE"),  # the TLS handshake and key exchange completed
    ("Received control message: 'PUSH_REPLY", "PUSH_REPLY"),  # the pushed config arrived
)
#: ``>LOG:`` fragments that name a cause the state does not.
_LOG_CAUSES = (
    ("Connection refused", "refused"),
    ("ECONNREFUSED", "refused"),
    ("VERIFY ERROR", "tls_error"),
    ("certificate verify failed", "tls_error"),
    ("TLS handshake failed", "tls_error"),
    ("AUTH_FAILED", "auth_failed"),
)


class OpenVPNClient:
    """One ``openvpn`` client process and its management connection (loop thread only)."""

    def __init__(self, spec: OpenVPNSpec) -> None:
        self.spec = spec
        self.pid: int | None = None
        self.states: list[tuple[float, str, str]] = []  # (perf_counter, state, description)
        self.server_ip: str | None = None  # the tunnel address the server assigned
        self.bytes_in = self.bytes_out = 0
        self.ping_s = DEFAULT_PING_S  # the server's keepalive interval (pushed)
        self.last_rx = time.perf_counter()  # when the byte count last showed data from the server
        self.lost: OperationError | None = None  # why the tunnel ended (or failed before it was up)
        self.lost_at: float | None = None
        self.closing = False
        self.exited = asyncio.Event()
        self._dir: Path | None = None
        self._server: asyncio.AbstractServer | None = None
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._connected: asyncio.Future[None] | None = None
        self._changed = asyncio.Event()  # set on every state or failure
        self._held = asyncio.Event()
        self._cause: str | None = None  # a cause seen in the log, for the next failure
        self._pidfd: int | None = None
        self._released_at: float | None = None
        self._up = False

    @property
    def up(self) -> bool:
        """CONNECTED and nothing has ended it since."""
        return self._up and self.lost is None and not self.closing

    @property
    def dropped(self) -> bool:
        """The tunnel was up and ended without us closing it (restart, server gone, process gone)."""
        return self._up and self.lost is not None and not self.closing

    # --- the operations ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Spawn the client and wait for its management connection and hold (the generator's cost)."""
        loop = asyncio.get_running_loop()
        self._dir = Path(tempfile.mkdtemp(prefix="gl-ovpn-"))  # 0700: nobody else reaches the socket
        sock = self._dir / "mgmt.sock"
        self._connected = loop.create_future()
        self._server = await asyncio.start_unix_server(self._accept, path=str(sock), limit=MAX_LINE_BYTES)
        argv = client_argv(openvpn_binary(), self.spec, sock)
        devnull = os.open(os.devnull, os.O_RDWR)
        try:
            self.pid = _posix_spawn(
                argv[0],
                argv,
                {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C"},
                file_actions=[
                    (os.POSIX_SPAWN_DUP2, devnull, 0),
                    (os.POSIX_SPAWN_DUP2, devnull, 1),
                    (os.POSIX_SPAWN_DUP2, devnull, 2),
                ],
                setsid=True,  # a Ctrl-C in the terminal reaches us, and we end the clients
            )
        finally:
            os.close(devnull)
        _live.add(self.pid)
        self._watch_exit(loop)
        await self._wait(self._connected)
        await self._wait_event(self._held)

    async def tls(self) -> None:
        """Release the hold; returns when the TLS handshake and key exchange completed."""
        self._released_at = time.perf_counter()
        self._send("hold release")
        await self._until("TLS_DONE")

    async def config(self) -> None:
        """PUSH_REQUEST until the server's PUSH_REPLY (the server checks the password before it answers)."""
        await self._until("PUSH_REPLY")

    async def connected(self) -> None:
        """Until ``CONNECTED`` (the tunnel is up)."""
        await self._until("CONNECTED")
        self._up = True
        self.last_rx = time.perf_counter()

    def step_ms(self, state: str) -> float | None:
        """Hold release until the first ``state`` (``AUTH``: the server's first answer; ``CONNECTED``)."""
        at = next((t for t, s, _ in self.states if s == state), None)
        if self._released_at is None or at is None:
            return None
        return (at - self._released_at) * 1000.0

    def tunnel_ms(self) -> float:
        """Hold release until ``CONNECTED``, from the notification times (0 before)."""
        return self.step_ms("CONNECTED") or 0.0

    @property
    def stale_after_s(self) -> float:
        """Silence from the server after which the tunnel is dead: two missed pings and a count's delay."""
        return 2 * self.ping_s + BYTECOUNT_S + 1.0

    async def hold(self, seconds: float) -> int:
        """Hold the tunnel ``seconds``; fails as soon as it ends. Returns the bytes received meanwhile.

        Not a round trip: the client sends nothing we could time. OpenVPN's own keepalive (the pushed
        ``ping 10``) keeps the tunnel alive; what this observes is that it stays ``CONNECTED`` and that
        the server's pings keep arriving. A server that stops sending (it dropped this session, e.g.
        for a second logon of the same account, which it does not tell the old client) is a ``timeout``
        after :attr:`stale_after_s`, long before the client's own ``ping-restart 120`` would notice.
        """
        start_in = self.bytes_in
        self._raise_if_lost()
        if not self._up:
            raise OperationError("other", "hold before the tunnel is up")
        loop = asyncio.get_running_loop()
        end = loop.time() + seconds
        while (left := end - loop.time()) > 0:
            self._changed.clear()
            self._raise_if_lost()
            if time.perf_counter() - self.last_rx > self.stale_after_s:
                self._fail("timeout", "no packet from the server (the tunnel is dead)")
                self._raise_if_lost()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(left, 1.0)):
                    await self._changed.wait()
        self._raise_if_lost()
        return self.bytes_in - start_in

    async def close(self) -> None:
        """End the client as a user does (SIGTERM: it tells the server), then SIGKILL if it lingers."""
        self.closing = True
        if self.pid is not None and not self.exited.is_set():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGTERM)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(TERM_TIMEOUT_S):
                    await self.exited.wait()
        self.abort()

    def abort(self) -> None:
        """Kill the client at once and drop the management connection (loop thread; no waiting)."""
        self.closing = True
        if self.pid is not None and not self.exited.is_set():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
        if self._writer is not None:
            self._writer.transport.abort()
        if self._server is not None:
            self._server.close()
            self._server = None
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    # --- management interface ------------------------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._writer is not None:  # only our client may connect (0700 folder): ignore a second
            writer.close()
            return
        self._reader, self._writer = reader, writer
        if self._server is not None:
            self._server.close()  # one connection: stop listening
        self._send("state on")
        self._send("log on")
        self._send(f"bytecount {BYTECOUNT_S}")
        if self._connected is not None and not self._connected.done():
            self._connected.set_result(None)
        try:
            await self._read_lines(reader)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            if not self.closing:
                self._fail(self._cause or "reset", "the client's management connection ended")

    async def _read_lines(self, reader: asyncio.StreamReader) -> None:
        while line := await reader.readline():
            self._on_line(line.decode("utf-8", "replace").rstrip("\r\n"))

    def _on_line(self, line: str) -> None:
        if line.startswith(">STATE:"):
            parts = line[7:].split(",")
            state = parts[1] if len(parts) > 1 else ""
            desc = parts[2] if len(parts) > 2 else ""
            self.states.append((time.perf_counter(), state, desc))
            if state == "CONNECTED" and len(parts) > 3 and parts[3]:
                self.server_ip = parts[3]
            if state in ("RECONNECTING", "EXITING"):
                self._fail(_REASONS.get(desc, self._cause or "reset"), f"client state {state}")
            self._changed.set()
        elif line.startswith(">PASSWORD:"):
            if "Verification Failed" in line:
                self._fail("auth_failed", "password rejected")
            elif line.startswith(">PASSWORD:Need 'Auth'"):
                if self.spec.password is None:
                    self._fail("auth_failed", "the server asks for a password")
                else:
                    self._send(f'username "Auth" {_quote(self.spec.username)}')
                    self._send(f'password "Auth" {_quote(self.spec.password)}')
        elif line.startswith(">HOLD:"):
            self._held.set()
        elif line.startswith(">BYTECOUNT:"):
            with contextlib.suppress(ValueError):
                b_in, b_out = line[11:].split(",")[:2]
                if int(b_in) > self.bytes_in:
                    self.last_rx = time.perf_counter()
                self.bytes_in, self.bytes_out = int(b_in), int(b_out)
        elif line.startswith(">LOG:"):
            for fragment, step in _LOG_STEPS:
                if fragment in line:
                    self.states.append((time.perf_counter(), step, ""))
                    self._changed.set()
                    if step == "PUSH_REPLY" and (ping := _PING_RE.search(line)):
                        self.ping_s = float(ping.group(1))
            for fragment, cause in _LOG_CAUSES:
                if fragment in line:
                    self._cause = self._cause or cause
                    if cause == "refused" and not self._up:
                        # the server's port answered "unreachable": nothing listens there (a real
                        # client would retry until its hand-window ends; the user's logon has failed)
                        self._fail("refused", "the server port is closed")
        elif line.startswith(">FATAL:"):
            self._fail(self._cause or "other", "the client stopped (fatal)")

    def _send(self, command: str) -> None:
        if self._writer is None or self._writer.is_closing():
            raise OperationError("reset", "no management connection")
        self._writer.write(command.encode() + b"\n")

    def _fail(self, error_class: str, detail: str) -> None:
        if self.lost is None and not self.closing:
            self.lost = OperationError(error_class, detail)
            self.lost_at = time.time()
        self._changed.set()

    def _raise_if_lost(self) -> None:
        if self.lost is not None:
            raise OperationError(self.lost.error_class, self.lost.detail)

    async def _until(self, state: str) -> None:
        """Wait for ``>STATE:...,state``; a failure (or the process's end) first raises its class."""
        while True:
            # the state first: when it and a failure arrive in one read (TLS done, then AUTH_FAILED),
            # this step did complete and the failure belongs to the next one
            if any(s == state for _, s, _ in self.states):
                return
            self._raise_if_lost()
            self._changed.clear()
            await self._changed.wait()

    async def _wait(self, fut: asyncio.Future[None]) -> None:
        done = asyncio.ensure_future(self.exited.wait())
        either: set[asyncio.Future[Any]] = {fut, done}
        try:
            await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
        finally:
            done.cancel()
        if not fut.done():
            raise OperationError(self._cause or "other", "the client exited before it was ready")

    async def _wait_event(self, event: asyncio.Event) -> None:
        while not event.is_set():
            self._raise_if_lost()
            waiter = asyncio.ensure_future(event.wait())
            changed = asyncio.ensure_future(self._changed.wait())
            try:
                await asyncio.wait({waiter, changed}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                waiter.cancel()
                changed.cancel()
            self._changed.clear()

    # --- the process's end ---------------------------------------------------------------------------

    def _watch_exit(self, loop: asyncio.AbstractEventLoop) -> None:
        """Reap the process when it exits (a pidfd in the loop: no SIGCHLD handler, no polling)."""
        assert self.pid is not None
        try:
            self._pidfd = os.pidfd_open(self.pid)
        except OSError:  # the process is gone already
            self._reaped()
            return
        loop.add_reader(self._pidfd, self._reaped)

    def _reaped(self) -> None:
        if self._pidfd is not None:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None
        if self.pid is not None:
            with contextlib.suppress(ChildProcessError):
                _waitpid(self.pid, os.WNOHANG)  # someone else may have reaped it (ECHILD)
            _live.discard(self.pid)
        self.exited.set()
        if not self.closing and self._writer is None:
            # With a management connection its end tells why (its last lines are read first): the
            # pidfd can be ready in the same loop turn as the AUTH_FAILED lines still unread.
            self._fail(self._cause or "reset", "the client process ended")


def kill_all() -> int:
    """SIGKILL every client process still alive in this process (at exit, after a test); how many."""
    killed = 0
    for pid in list(_live):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
            killed += 1
        with contextlib.suppress(ChildProcessError, OSError):
            _waitpid(pid, 0)
        _live.discard(pid)
    return killed


def _kill_at_exit() -> None:
    kill_all()


atexit.register(_kill_at_exit)
# A forked child (locust --processes) owns none of its parent's clients: it must never kill them.
os.register_at_fork(after_in_child=_live.clear)
