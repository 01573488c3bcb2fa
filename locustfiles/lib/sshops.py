"""The SSH operations of a gateway session, as asyncio coroutines that run in the bridge's loop thread.

Each operation is timed inside its coroutine (``perf_counter`` in the loop thread) and returns
:class:`~gateload.locustfiles.lib.aiobridge.Timed` outcomes; nothing here touches Locust or gevent, so the
greenlet side (``gateway.py``) fires the samples.

Echo round trips (keystrokes, Enter until the prompt) are timed from the kernel's receive timestamp of
the answer (``SO_TIMESTAMPNS``) back to the moment the request went into the ``send`` syscall (see
:class:`StampedSocket`), not from when the loop thread got around to it: after every syscall the loop
thread has to win the GIL back from the greenlets, which cost milliseconds while one of them hogged
the CPU (bench/bench_timing.py). Without the stamps (no ``SO_TIMESTAMPNS``, data buffered) the
``perf_counter`` time around the operation is used, as for every other operation.

Shells are taken as shipped (bash, dash, zsh; README "Shells and prompts"): unless the profile names
a fixed prompt, :meth:`GatewayConnection.open_shell` gives each connection a unique prompt that every
command then waits for, and echoes are matched past the escape sequences and redraws of line editors
(typing itself, the hot path, is in ``sshtyping.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import re
import secrets
import socket
import struct
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import asyncssh
from gevent.monkey import get_original

from gateload.locustfiles.lib.aiobridge import Timed, quiet_orphans, timed
from gateload.locustfiles.lib.errors import OperationError
from gateload.locustfiles.lib.sshtyping import (
    ESCAPE,
    KeySample,
    StampClock,
    TypingProcess,
    create_typing_shell,
    type_burst,
)
from gateload.targets.profile import DEFAULT_FIRST_PROMPT, Profile

#: The reference farm's shell prompt (targets/README.md); screen output never contains "$".
PROMPT = b"gw$ "
#: No output for this long after the shell opened counts as "at the prompt" (a prompt no regex knows).
FIRST_PROMPT_QUIET_S = 1.5
#: zsh's first-run menu for an account without ~/.zshrc; "q" quits it and changes nothing.
ZSH_NEWUSER_MENU = b"--- Type one of the keys in parentheses ---"
#: The line that gives the shell its per-connection prompt. Plain assignments, valid in every POSIX
#: shell and zsh: a unique PS1, and no prompt decorations that would print after it (bash's
#: PROMPT_COMMAND, zsh's right prompt and end-of-line mark).
SET_PROMPT = "PS1='[{token}]''$ ' PROMPT_COMMAND= RPS1= RPROMPT= PROMPT_EOL_MARK="
_ESCAPE_RE = re.compile(ESCAPE)
CONNECT_TIMEOUT_S = 10.0
CLOSE_TIMEOUT_S = 2.0

# A connection dropped mid-transfer leaves asyncssh's SFTP read-ahead tasks ending with these, unawaited.
quiet_orphans(asyncssh.SFTPConnectionLost, asyncssh.ConnectionLost)


@dataclass(frozen=True)
class ConnectSpec:
    """Where and how to connect; ``password`` (a ticket or an account password) is never logged."""

    host: str
    port: int
    username: str
    password: str | None = field(default=None, repr=False)
    client_keys: tuple[Any, ...] = ()
    trusted_host_keys: tuple[Any, ...] = ()  # the pinned public key, if pinned by file
    host_key_fingerprint: str = ""  # or its "SHA256:..." fingerprint
    verify_host_key: bool = True
    banner_prefix: str = "gateload-server: "
    keepalive_s: float = 15.0
    timeout_s: float = CONNECT_TIMEOUT_S
    # The shell's fixed prompt (e.g. the reference farm's "gw$ "); "" = wait for the first prompt
    # (``first_prompt`` regex or a quiet period), then set a unique one per connection.
    prompt: bytes = b""
    first_prompt: str = DEFAULT_FIRST_PROMPT
    source: str | None = None  # the local address to connect from (``gateway.source_addresses``)


_keys: dict[tuple[str, bool], Any] = {}


def load_key(path: str, private: bool) -> Any:
    """A key file, read once per process (``OSError`` or ``asyncssh.KeyImportError`` when unusable)."""
    if (path, private) not in _keys:
        _keys[path, private] = asyncssh.read_private_key(path) if private else asyncssh.read_public_key(path)
    return _keys[path, private]


def connect_spec(
    profile: Profile,
    username: str,
    password: str | None,
    timeout_s: float | None = None,
    source: str | None = None,
) -> ConnectSpec:
    """How to reach and verify the profile's gateway as ``username`` (the users' and the probe's way)."""
    gw = profile.gateway
    trusted = (load_key(str(profile.resolve(gw.host_key)), False),) if gw.host_key else ()
    client_keys: tuple[Any, ...] = ()
    if password is None and profile.credentials.ssh_key:
        client_keys = (load_key(str(profile.resolve(profile.credentials.ssh_key)), True),)
    return ConnectSpec(
        host=gw.host,
        port=gw.port,
        username=username,
        password=password,
        client_keys=client_keys,
        trusted_host_keys=trusted,
        host_key_fingerprint=gw.host_key_fingerprint,
        verify_host_key=gw.verify_host_key,
        banner_prefix=gw.server_banner_prefix,
        keepalive_s=gw.keepalive_s,
        prompt=gw.prompt.encode(),
        first_prompt=gw.first_prompt,
        timeout_s=profile.workload.timeout_s if timeout_s is None else timeout_s,
        source=source,
    )


def screen_line(command: str, bursts: int, size: int) -> bytes:
    """The profile's screen command with its ``{bursts}`` and ``{bytes}`` filled in."""
    return command.replace("{bursts}", str(bursts)).replace("{bytes}", str(size)).encode()


class _Client(asyncssh.SSHClient):
    """Learns the backend from the auth banner, checks a fingerprint pin, and notices drops."""

    def __init__(self, spec: ConnectSpec) -> None:
        self.spec = spec
        self.server: str | None = None
        self.lost: Exception | None = None
        self.lost_at: float | None = None
        self.closing = False  # we closed it: not a drop
        self.conn: asyncssh.SSHClientConnection | None = None

    def connection_made(self, conn: asyncssh.SSHClientConnection) -> None:
        self.conn = conn

    def turned_away(self, sock: StampedSocket | None) -> bool:
        """The server sent something, then closed before its SSH version line: a connection limit.

        OpenSSH's sshd answers a connection past ``MaxStartups`` with ``Exceeded MaxStartups`` and
        closes it; a reset on the way (a lossy link, a crashed server) arrives with nothing, and stays
        a ``reset``.
        """
        no_version = self.conn is None or self.conn.get_extra_info("server_version") is None
        return no_version and sock is not None and sock.heard_from_peer

    def auth_banner_received(self, msg: str, lang: str) -> None:
        prefix = self.spec.banner_prefix
        for line in msg.splitlines():
            if prefix and line.startswith(prefix):
                self.server = line[len(prefix) :].strip() or None

    def validate_host_public_key(self, host: str, addr: str, port: int, key: asyncssh.SSHKey) -> bool:
        # Only asked for keys not in the trusted list, i.e. in fingerprint mode.
        pin = self.spec.host_key_fingerprint
        return bool(pin) and key.get_fingerprint("sha256") == pin

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost_at = time.time()
        if isinstance(exc, asyncssh.ConnectionLost) and "keepalive" in exc.reason.lower():
            exc = OperationError("timeout", "keepalive")  # the gateway stopped answering keepalives
        self.lost = exc or asyncssh.ConnectionLost("connection closed by the gateway")


class GatewayConnection:
    """One SSH connection to the gateway with its PTY shell; lives in the loop thread."""

    def __init__(self, spec: ConnectSpec) -> None:
        self.spec = spec
        self.client = _Client(spec)
        self.conn: asyncssh.SSHClientConnection | None = None
        self.shell: TypingProcess | None = None
        self.sftp: asyncssh.SFTPClient | None = None
        self.sock: StampedSocket | None = None
        self.prompt: bytes = spec.prompt  # what every command waits for once the shell is ready

    @property
    def dropped(self) -> bool:
        """The connection ended without us closing it (reset, keepalive timeout, server disconnect)."""
        return self.conn is not None and self.client.lost is not None and not self.client.closing

    async def connect(self) -> str | None:
        """TCP, key exchange with the host key check, and authentication; returns the backend id."""
        spec = self.spec
        if not spec.verify_host_key:
            known_hosts: Any = None  # explicit opt-out in the profile
        else:
            known_hosts = (list(spec.trusted_host_keys), [], [])
        self.sock = await open_stamped_socket(spec.host, spec.port, spec.timeout_s, spec.source)
        with _reset_before_handshake():
            try:
                self.conn = await self._handshake(known_hosts)
            except (asyncssh.ConnectionLost, ConnectionError) as exc:
                if self.client.turned_away(self.sock):
                    raise OperationError("throttled", "closed before the SSH banner") from exc
                raise
        return self.client.server

    async def _handshake(self, known_hosts: Any) -> asyncssh.SSHClientConnection:
        spec = self.spec
        return await asyncssh.connect(
            sock=self.sock,
            username=spec.username,
            password=spec.password,
            client_keys=list(spec.client_keys) or None,
            known_hosts=known_hosts,
            client_factory=lambda: self.client,
            config=None,
            agent_path=None,
            preferred_auth="publickey" if spec.client_keys else "password,keyboard-interactive",
            keepalive_interval=spec.keepalive_s,
            keepalive_count_max=3,
            connect_timeout=spec.timeout_s,
            login_timeout=spec.timeout_s,
        )

    async def backend_from_env(self) -> str | None:
        """The backend id from ``env`` (``GATELOAD_SERVER``), for gateways without the auth banner."""
        result = await self._conn().run("env", check=False, encoding=None)
        out = result.stdout or b""
        for line in (out.encode() if isinstance(out, str) else bytes(out)).splitlines():
            if line.startswith(b"GATELOAD_SERVER="):
                return line.split(b"=", 1)[1].strip().decode(errors="replace") or None
        return None

    async def open_shell(self) -> None:
        """A PTY shell, ready when its prompt is known and showing.

        With a fixed ``spec.prompt`` that is the first prompt. Otherwise the shell's own first prompt
        (or a quiet period) is awaited, then one line of assignments gives it a prompt unique to this
        connection; the shell is ready when that prompt arrives. Assignments only, so bash, dash and
        zsh all take the line; the quotes split the prompt so its echo never looks like the prompt.
        """
        shell = await create_typing_shell(self._conn(), term_type="xterm", term_size=(80, 24), encoding=None)
        self.shell = shell
        if self.spec.prompt:
            await shell.stdout.readuntil(self.spec.prompt)
            return
        await self._first_prompt(shell)
        token = f"gl-{secrets.token_hex(4)}"
        shell.stdin.write(SET_PROMPT.format(token=token).encode() + b"\r")
        self.prompt = f"[{token}]$ ".encode()
        await shell.stdout.readuntil(self.prompt)

    async def _first_prompt(self, shell: asyncssh.SSHClientProcess[bytes]) -> None:
        """Read until the output ends in a prompt, or goes quiet; answer zsh's new-user menu with "q"."""
        pattern = re.compile(self.spec.first_prompt.encode(), re.MULTILINE)
        seen = b""
        answered = False
        while True:
            try:
                chunk = await asyncio.wait_for(shell.stdout.read(65536), FIRST_PROMPT_QUIET_S)
            except TimeoutError:
                return  # quiet: whatever the prompt looks like, the shell waits for input
            if not chunk:
                raise OperationError("ssh_error", "the shell ended before its first prompt")
            seen = (seen + chunk)[-4096:]
            if not answered and ZSH_NEWUSER_MENU in seen:
                shell.stdin.write(b"q")
                answered, seen = True, b""
                continue
            if ends_with_prompt(pattern, visible(seen)):
                return

    async def type_burst(self, text: bytes, interval_s: float, timeout_s: float) -> list[KeySample]:
        """Type ``text`` at a human pace, timing each keystroke until its echo (:func:`type_burst`)."""
        clock = _SocketClock(self.sock) if self.sock is not None else StampClock()
        return await type_burst(self._shell(), clock, text, interval_s, timeout_s)

    async def run_line(self, line: bytes, timeout_s: float) -> Timed[int]:
        """Type a command line (echo untimed), then time from Enter until the next prompt.

        Returns the bytes of output (including the prompt), so bytes/s can be computed.
        """
        shell = self._shell()
        start_time, t0 = time.time(), time.perf_counter()
        try:
            shell.stdin.write(line)
            if line:
                await asyncio.wait_for(shell.stdout.readuntil(_line_echo(line)), timeout_s)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the command line's echo failed: the operation failed
            return Timed(start_time, (time.perf_counter() - t0) * 1000.0, None, exc)
        sock = self.sock
        if sock is not None:
            sock.first_tx = 0.0  # the Enter is the next send
        outcome = await timed(self._enter(shell), timeout_s)
        if sock is None or not outcome.ok:
            return outcome
        return Timed(outcome.start_time, stamped_ms(sock, outcome.duration_ms), outcome.value, None)

    async def _enter(self, shell: asyncssh.SSHClientProcess[bytes]) -> int:
        shell.stdin.write(b"\r")
        return len(await shell.stdout.readuntil(self.prompt))

    async def exec(self, command: str) -> int:
        """Run a command on an exec channel; returns the bytes of output."""
        result = await self._conn().run(command, check=False, encoding=None)
        if result.exit_status != 0:
            raise OperationError("ssh_error", f"exit status {result.exit_status}")
        return len(result.stdout or b"")

    async def sftp_client(self) -> asyncssh.SFTPClient:
        """The connection's SFTP client, started once (not part of any transfer's time)."""
        if self.sftp is None:
            self.sftp = await self._conn().start_sftp_client()
        return self.sftp

    async def sftp_get(self, path: str) -> int:
        """Download a file into memory; returns its size."""
        async with (await self.sftp_client()).open(path, "rb") as fh:
            return len(await fh.read())

    async def sftp_put(self, path: str, data: bytes) -> int:
        """Upload ``data`` as ``path``; returns the bytes written."""
        async with (await self.sftp_client()).open(path, "wb") as fh:
            await fh.write(data)
        return len(data)

    async def tunnel_http(self, target: str, path: str) -> tuple[int, int, str | None]:
        """GET ``path`` from ``target`` (host:port) through a direct-tcpip channel.

        Returns (status, bytes, X-Gateload-Server or None).
        """
        host, _, port = target.rpartition(":")
        reader, writer = await self._conn().open_connection(host, int(port))
        try:
            writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
            data = await reader.read()
        finally:
            writer.close()
        return parse_http_response(data)

    async def close(self) -> None:
        """Exit the shell politely, then close the connection (bounded)."""
        self.client.closing = True
        if self.conn is None:
            return
        try:
            if self.shell is not None and self.client.lost is None:
                self.shell.stdin.write(b"exit\r")
                await asyncio.wait_for(self.shell.wait_closed(), CLOSE_TIMEOUT_S)
        except (OSError, asyncssh.Error, TimeoutError):
            pass  # the connection is going anyway
        finally:
            self.conn.close()
            with contextlib.suppress(OSError, asyncssh.Error, TimeoutError):
                await asyncio.wait_for(self.conn.wait_closed(), CLOSE_TIMEOUT_S)

    def abort(self) -> None:
        """Close at once without waiting (a stopped user)."""
        self.client.closing = True
        if self.conn is not None:
            self.conn.abort()

    def _conn(self) -> asyncssh.SSHClientConnection:
        if self.conn is None:
            raise OperationError("ssh_error", "not connected")
        return self.conn

    def _shell(self) -> TypingProcess:
        if self.shell is None:
            raise OperationError("ssh_error", "no shell")
        return self.shell


if TYPE_CHECKING:
    _RealSocket = socket.socket
else:
    _RealSocket = get_original("socket", "socket")  # the loop thread needs no gevent socket
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)  # Linux
SCM_TIMESTAMPNS = getattr(socket, "SCM_TIMESTAMPNS", SO_TIMESTAMPNS)
_TIMESPEC = struct.Struct("@qq")
_ANCILLARY = socket.CMSG_SPACE(_TIMESPEC.size)


class StampedSocket(_RealSocket):
    """A TCP socket that knows when it last sent and when what it last received arrived.

    ``first_tx``: ``time.time()`` just before the first ``send`` syscall since it was set to 0;
    ``rx_time``: the kernel's timestamp (``SO_TIMESTAMPNS``, CLOCK_REALTIME) of the data of the last
    ``recv``. Both are taken outside the GIL's reach: neither waits for the loop thread to get the GIL
    back, which is what timing inside the coroutine measured too when greenlets hogged the CPU.
    """

    __slots__ = ("_ancillary", "_rx_time", "first_tx", "heard_from_peer")
    first_tx: float
    _rx_time: float
    _ancillary: list[tuple[int, int, bytes]] | None
    #: some data has arrived; not taken from the stamps: the kernel turns receive timestamps on a
    #: moment after the first socket asks for them, so the first packets may come unstamped
    heard_from_peer: bool

    def send(self, data: Any, flags: int = 0) -> int:
        if not self.first_tx:
            self.first_tx = time.time()
        return super().send(data, flags)

    def sendmsg(self, buffers: Any, *args: Any) -> int:
        if not self.first_tx:
            self.first_tx = time.time()
        return super().sendmsg(buffers, *args)

    # The stamp is kept raw and decoded when asked for (once per operation, not per recv).
    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        data, ancillary, _flags, _addr = self.recvmsg(bufsize, _ANCILLARY, flags)
        if ancillary:
            self._ancillary = ancillary
        if data:
            self.heard_from_peer = True
        return data

    def recv_into(self, buffer: Any, nbytes: int = 0, flags: int = 0) -> int:
        view = memoryview(buffer)
        n, ancillary, _flags, _addr = self.recvmsg_into(
            [view[:nbytes] if nbytes else view], _ANCILLARY, flags
        )
        if ancillary:
            self._ancillary = ancillary
        if n:
            self.heard_from_peer = True
        return n

    @property
    def rx_time(self) -> float:
        """The kernel's arrival time (epoch seconds) of the data of the last stamped ``recv``; 0 if none."""
        ancillary, self._ancillary = self._ancillary, None
        if ancillary:
            for level, kind, payload in ancillary:
                if level == socket.SOL_SOCKET and kind == SCM_TIMESTAMPNS and len(payload) >= _TIMESPEC.size:
                    sec, nsec = _TIMESPEC.unpack_from(payload)
                    self._rx_time = sec + nsec * 1e-9
        return self._rx_time


def ends_with_prompt(pattern: re.Pattern[bytes], text: bytes) -> bool:
    """True if a match of ``pattern`` ends where ``text`` ends (a prompt waits for input after it)."""
    return any(m.end() == len(text) for m in pattern.finditer(text))


def visible(data: bytes) -> bytes:
    """``data`` without terminal escape sequences (what a prompt regex is matched against)."""
    return _ESCAPE_RE.sub(b"", data)


@functools.lru_cache(maxsize=64)
def _line_echo(line: bytes) -> re.Pattern[bytes]:
    """The echo of a pasted command line: its bytes in order, whatever a line editor puts between.

    Line editors redraw and wrap long lines (bash inserts "\r", zsh " \r\x1b[K" and repeats a
    character), so the echo is complete when every byte of the line has come, in order. Possessive
    gaps take the first occurrence of each byte: linear time, no backtracking.
    """
    parts = [rb"[^" + re.escape(bytes((c,))) + rb"]*+" + re.escape(bytes((c,))) for c in line]
    return re.compile(rb"\A" + b"".join(parts))


class _SocketClock(StampClock):
    """Keystrokes timed from the ``send`` syscall to the kernel's arrival stamp of the echo."""

    def __init__(self, sock: StampedSocket) -> None:
        self.sock = sock

    def start(self) -> None:
        self.sock.first_tx = 0.0

    def stop(self, fallback_ms: float) -> float:
        return stamped_ms(self.sock, fallback_ms)


def stamped_ms(sock: StampedSocket, fallback_ms: float) -> float:
    """Milliseconds from the first send since ``first_tx`` was cleared to the last data's arrival.

    ``fallback_ms`` (timed around the operation) when the stamps do not fit: nothing sent, no kernel
    stamp, or a stamp outside [send, now].
    """
    tx, rx = sock.first_tx, sock.rx_time
    if tx and tx <= rx <= time.time():
        return (rx - tx) * 1000.0
    return fallback_ms


@contextlib.contextmanager
def _reset_before_handshake() -> Iterator[None]:
    """A connection reset before asyncssh reads the peer's address is a reset, not a TypeError.

    asyncssh unpacks ``getpeername()`` in ``_connection_made``; on a socket the gateway (or a lossy
    link) has already reset, that is None and asyncssh raises TypeError (the ronf/asyncssh#259 kind).
    """
    try:
        yield
    except TypeError as exc:
        frames = traceback.extract_tb(exc.__traceback__)
        if not frames or frames[-1].name != "_connection_made":
            raise
        raise ConnectionResetError(errno.ECONNRESET, "reset before the SSH handshake") from exc


async def open_stamped_socket(
    host: str, port: int, timeout_s: float, source: str | None = None
) -> StampedSocket:
    """A connected TCP socket with kernel receive timestamps on (when the system has them), from the
    local address ``source`` when given (an ephemeral port)."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    error: BaseException = OSError(f"no address for {host}")
    for family, kind, proto, _name, address in infos:
        sock = StampedSocket(family, kind, proto)
        sock.first_tx = sock._rx_time = 0.0
        sock._ancillary = None
        sock.heard_from_peer = False
        try:
            sock.setblocking(False)
            if source:
                sock.bind((source, 0))
            with contextlib.suppress(OSError):  # no kernel stamps: operations are timed around them
                sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            await asyncio.wait_for(loop.sock_connect(sock, address), timeout_s)
            return sock
        except (OSError, TimeoutError) as exc:
            sock.close()
            error = exc
        except BaseException:
            sock.close()
            raise
    raise error


def parse_http_response(data: bytes) -> tuple[int, int, str | None]:
    """(status, total bytes, X-Gateload-Server) of a raw HTTP/1.x response."""
    head, _, _ = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ", 2) if lines and lines[0] else []
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
        raise OperationError("other", "no HTTP response through the tunnel")
    server = None
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"x-gateload-server":
            server = value.strip().decode(errors="replace") or None
    return int(parts[1]), len(data), server
