"""The SSH gateway (asyncssh): ticket/password and public-key auth, PTY shell, exec, SFTP, tunnels.

Each TCP connection is given a simulated backend by the balancer when it arrives. A saturated backend
(sessions at ``max_sessions`` or queue at ``queue_limit``) refuses it with an SSH disconnect
``DISC_TOO_MANY_CONNECTIONS``, sent right after the auth banner that names the backend. Keystrokes
are handled as they arrive, one at a time per session and in order, each echoed after one keystroke
service time; sessions never wait for each other except through the shared worker slots.
"""

from __future__ import annotations

import asyncio
import hmac
import os
from collections.abc import Awaitable
from pathlib import Path

import asyncssh

from gateload.targets.reference.capacity import SimServer
from gateload.targets.reference.context import FarmContext
from gateload.targets.reference.shell import EXIT, PROMPT, prompt_of, run_line

INTRANET_HOST = "intranet"
# AES-GCM first and no chacha20: in asyncssh chacha20-poly1305 builds several cipher contexts per
# packet, which costs both farm and load generator CPU on every keystroke. Real gateways commonly
# offer AES-GCM too; the CTR modes stay for old clients.
ENCRYPTION_ALGS = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com", "aes128-ctr", "aes256-ctr")
LOGIN_TIMEOUT_S = 30  # a half-open login holds a session slot; let it go sooner than the 2 min default
_CTRL_C, _CTRL_D, _BACKSPACE, _DEL = 3, 4, 8, 127
_NOT_ECHOED = frozenset((13, 10))


class GatewayConnection(asyncssh.SSHServer):
    """One SSH connection: its backend, admission, authentication and tunnel requests."""

    def __init__(self, ctx: FarmContext, intranet_port: int) -> None:
        self.ctx = ctx
        self._intranet_port = intranet_port
        farm = ctx.profile.farm
        assert farm is not None
        self._static = farm.static_credentials
        self._allow = frozenset(farm.tunnel_allow)
        self._banner = f"{ctx.profile.gateway.server_banner_prefix}{{}}\n"
        self.conn: asyncssh.SSHServerConnection | None = None
        self.server: SimServer = ctx.cluster.servers[0]
        self.admitted = False
        self._auth_charged = False
        self._login: str | None = None  # the account this connection holds a login of (logins.py)

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self.conn = conn
        self.ctx.ssh_connections.add(conn)
        self.server = self.ctx.cluster.pick("ssh")
        self.admitted = self.server.try_open_ssh_session()

    def connection_lost(self, exc: Exception | None) -> None:
        self.ctx.ssh_connections.discard(self.conn)  # type: ignore[arg-type]
        if self.admitted:
            self.server.close_ssh_session()
            self.admitted = False
        if self._login is not None:
            self.ctx.logins.close(self._login)
            self._login = None

    async def begin_auth(self, username: str) -> bool:
        assert self.conn is not None
        self.conn.send_auth_banner(self._banner.format(self.server.id))
        if not self.admitted:
            # asyncssh sends this as an SSH disconnect message, then closes the connection
            raise asyncssh.DisconnectError(asyncssh.DISC_TOO_MANY_CONNECTIONS, "too many connections")
        keys = self.ctx.state.authorized_keys.get()
        if keys is not None:
            self.conn.set_authorized_keys(keys)
        if not self._auth_charged:  # once per connection, even if the client switches usernames
            self._auth_charged = True
            await self.server.work("ssh_auth")
        return True

    def password_auth_supported(self) -> bool:
        return True

    def validate_password(self, username: str, password: str) -> bool:
        if self.server.fault is not None and self.server.fault.fails_auth():  # auth_fail (faults.py)
            return False
        if self.ctx.tickets.consume(username, password):
            return self._admit_login(username)
        if self._static:
            account = self.ctx.state.accounts.get(username)
            ok = account is not None and hmac.compare_digest(account.password.encode(), password.encode())
            return ok and self._admit_login(username)
        return False

    def auth_completed(self) -> None:
        # Public-key logons pass no validate_password: they are counted (or refused) here.
        if self._login is None and self.conn is not None:
            self._admit_login(str(self.conn.get_extra_info("username")))

    def _admit_login(self, username: str) -> bool:
        """Hold a login of ``username``, or refuse it over farm.max_sessions_per_account (as pam_limits)."""
        if self._login is not None:
            return True
        if not self.ctx.logins.try_open(username):
            # asyncssh sends this as an SSH disconnect message, then closes the connection
            reason = "too many logins for this account"
            raise asyncssh.DisconnectError(asyncssh.DISC_TOO_MANY_CONNECTIONS, reason)
        self._login = username
        return True

    def connection_requested(  # type: ignore[override]  # asyncssh accepts a forwarder; its hint omits it
        self, dest_host: str, dest_port: int, orig_host: str, orig_port: int
    ) -> Awaitable[asyncssh.SSHForwarder]:
        if f"{dest_host}:{dest_port}" not in self._allow:
            reason = f"tunnels to {dest_host}:{dest_port} are not allowed"
            raise asyncssh.ChannelOpenError(asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED, reason)
        if dest_host == INTRANET_HOST:
            return self._open_intranet()
        assert self.conn is not None
        return self.conn.forward_connection(dest_host, dest_port)

    async def _open_intranet(self) -> asyncssh.SSHForwarder:
        """Connect to the intranet and remember which backend this tunnel belongs to (by local port)."""
        sources = self.ctx.tunnel_sources
        leg = _TunnelLeg(sources)
        try:
            transport, _ = await asyncio.get_running_loop().create_connection(
                lambda: leg, "127.0.0.1", self._intranet_port
            )
        except OSError as exc:
            raise asyncssh.ChannelOpenError(asyncssh.OPEN_CONNECT_FAILED, str(exc)) from None
        leg.local_port = transport.get_extra_info("sockname")[1]
        sources[leg.local_port] = self.server
        return asyncssh.SSHForwarder(leg)


class _TunnelLeg(asyncssh.SSHForwarder):
    """The TCP side of an intranet tunnel; unregisters its local port when it closes."""

    def __init__(self, sources: dict[int, SimServer]) -> None:
        super().__init__()
        self._sources = sources
        self.local_port = 0

    def connection_lost(self, exc: Exception | None) -> None:
        self._sources.pop(self.local_port, None)
        super().connection_lost(exc)


# --- sessions: shell and exec ---------------------------------------------------------------------


async def handle_session(
    stdin: asyncssh.SSHReader[bytes], stdout: asyncssh.SSHWriter[bytes], _stderr: asyncssh.SSHWriter[bytes]
) -> None:
    """Serve one session channel: exec runs one command, otherwise an interactive shell."""
    chan = stdout.channel
    assert isinstance(chan, asyncssh.SSHServerChannel)  # a server's session: exit() is there
    owner = chan.get_connection().get_owner()
    assert isinstance(owner, GatewayConnection)
    server = owner.server
    if chan.get_subsystem():
        stdout.write(b"unknown subsystem\n")
        chan.exit(1)
        return
    command = chan.get_command()
    if command is not None:
        status = await run_line(command, server, stdout.write, stdout.drain, b"\n")
        chan.exit(0 if status == EXIT else status)
        return
    await _shell(stdin, stdout, server)
    chan.exit(0)


async def _shell(
    stdin: asyncssh.SSHReader[bytes], stdout: asyncssh.SSHWriter[bytes], server: SimServer
) -> None:
    write, drain = stdout.write, stdout.drain
    line = bytearray()
    after_cr = False
    variables: dict[str, str] = {}  # the session's shell variables; PS1 is its prompt
    write(PROMPT)
    while True:
        try:
            data = await stdin.read(4096)
        except (asyncssh.TerminalSizeChanged, asyncssh.BreakReceived, asyncssh.SignalReceived):
            continue
        if not data:
            return
        for byte in data:
            if byte in _NOT_ECHOED:
                if byte == 10 and after_cr:  # "\r\n" from a client is one Enter, not two
                    after_cr = False
                    continue
                after_cr = byte == 13
                text = line.decode(errors="replace")
                line.clear()
                write(b"\r\n")
                if await run_line(text, server, write, drain, b"\r\n", variables) == EXIT:
                    return
                write(prompt_of(variables))
                continue
            after_cr = False
            await server.work("keystroke")
            write(bytes((byte,)))
            if byte in (_BACKSPACE, _DEL):
                del line[-1:]
            elif byte == _CTRL_C:
                line.clear()
            elif byte == _CTRL_D and not line:
                return
            else:
                line.append(byte)


# --- SFTP -----------------------------------------------------------------------------------------


class SandboxSFTPServer(asyncssh.SFTPServer):
    """SFTP chrooted to the user's sandbox: no path or symlink escapes, no new links, throttled I/O."""

    def __init__(self, chan: asyncssh.SSHServerChannel) -> None:
        conn = chan.get_connection()
        owner = conn.get_owner()
        assert isinstance(owner, GatewayConnection)
        self._server = owner.server
        root = owner.ctx.state.sandbox(conn.get_extra_info("username"))
        super().__init__(chan, chroot=os.fsencode(root))
        self._root = os.fsencode(os.path.realpath(root))
        self._locks: dict[object, asyncio.Lock] = {}

    def map_path(self, path: bytes) -> bytes:
        mapped = super().map_path(path)
        # realpath resolves symlinks already on disk: one pointing outside the sandbox is refused
        real = os.path.realpath(mapped)
        if real != self._root and not real.startswith(self._root + b"/"):
            raise asyncssh.SFTPPermissionDenied("path leaves the sandbox")
        return mapped

    def symlink(self, oldpath: bytes, newpath: bytes) -> None:
        raise asyncssh.SFTPPermissionDenied("links are not allowed")

    def link(self, oldpath: bytes, newpath: bytes) -> None:
        raise asyncssh.SFTPPermissionDenied("links are not allowed")

    def _lock(self, file_obj: object) -> asyncio.Lock:
        # one chunk at a time per open file: the rate limit is per transfer, and a client's many
        # parallel requests wait here rather than flooding the backend's queue
        lock = self._locks.get(file_obj)
        if lock is None:
            lock = self._locks[file_obj] = asyncio.Lock()
        return lock

    async def read(self, file_obj: object, offset: int, size: int) -> bytes:  # type: ignore[override]
        async with self._lock(file_obj):
            data = super().read(file_obj, offset, size)
            assert isinstance(data, bytes)
            if data:
                await self._server.work("sftp", self._server.service_time("sftp", len(data)))
            return data

    async def write(self, file_obj: object, offset: int, data: bytes) -> int:  # type: ignore[override]
        async with self._lock(file_obj):
            await self._server.work("sftp", self._server.service_time("sftp", len(data)))
            written = super().write(file_obj, offset, data)
            assert isinstance(written, int)
            return written

    def close(self, file_obj: object) -> None:
        self._locks.pop(file_obj, None)
        super().close(file_obj)


async def start_gateway(
    ctx: FarmContext, host: str, port: int, intranet_port: int, backlog: int = 100
) -> asyncssh.SSHAcceptor:
    """Listen for SSH on ``host:port`` (0 = a free port); ``acceptor.get_port()`` tells the port."""
    return await asyncssh.create_server(
        lambda: GatewayConnection(ctx, intranet_port),
        host,
        port,
        server_host_keys=[ctx.state.host_key],
        session_factory=handle_session,
        sftp_factory=SandboxSFTPServer,
        encryption_algs=list(ENCRYPTION_ALGS),
        encoding=None,  # bytes end to end: no decoding cost, no split multi-byte characters
        line_editor=False,  # raw PTY: every keystroke reaches us as it is typed
        allow_scp=False,
        agent_forwarding=False,
        x11_forwarding=False,
        login_timeout=LOGIN_TIMEOUT_S,
        reuse_address=True,
        backlog=backlog,
    )


def host_key_fingerprint(pub_path: Path) -> str:
    """The ``SHA256:...`` fingerprint of a public key file, as ``ssh-keygen -lf`` prints it."""
    return asyncssh.read_public_key(pub_path).get_fingerprint("sha256")
