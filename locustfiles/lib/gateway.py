"""The SSH gateway: ``SSHSession`` (one employee's gateway connection, greenlet side) and ``GatewayUser``.

Operations run as coroutines in the bridge's loop thread (``sshops.py``), timed there; the samples
are fired here, in the greenlet. The operations (type, name, what, paced, error classes, activities,
roles) are declared once, in :data:`SSH_CATALOGUE`; this module registers the ``ssh`` protocol
(:mod:`gateload.locustfiles.lib.remote`) that a profile's ``[gateway] protocol = "ssh"`` selects.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from gateload.analysis.catalogue import HTTP_STATUS_ERRORS, SSH_ERRORS, Catalogue, Operation
from gateload.locustfiles.lib import remote
from gateload.locustfiles.lib.aiobridge import Timed
from gateload.locustfiles.lib.bridged import BridgedSession
from gateload.locustfiles.lib.errors import HttpStatusError, OperationError, safe_error
from gateload.locustfiles.lib.runtime import sample_context
from gateload.locustfiles.lib.sshops import GatewayConnection, connect_spec, screen_line
from gateload.locustfiles.lib.sshtyping import KeySample
from gateload.targets.profile import ACTIVITIES

SSH, SFTP, TUNNEL = "SSH", "SFTP", "TUNNEL"
_ERR = SSH_ERRORS
# the server's connection limit turned the user away before the SSH banner (sshd MaxStartups)
_CONNECT_ERR = (*_ERR, "throttled")
_HTTP_ERR = (*HTTP_STATUS_ERRORS, "tls_error")
SSH_CATALOGUE = Catalogue(
    ("ssh",),
    (
        Operation(
            SSH, "connect", "TCP + key exchange (host key checked) + authentication", errors=_CONNECT_ERR
        ),
        Operation(SSH, "shell", "PTY shell opened, until the first prompt", errors=_ERR),
        Operation(
            SSH,
            "keystroke",
            "one paced keystroke until its echo (t_intended = the plan)",
            paced=True,
            burst=True,
            rate_from="workload.typing_interval_ms",
            errors=_ERR,
            activities=("typing",),
            roles=("echo",),
        ),
        Operation(
            SSH,
            "enter",
            "Enter after a typing burst until the prompt is back",
            errors=_ERR,
            activities=("typing",),
        ),
        Operation(
            SSH,
            "screen_update",
            "Enter after `gateway.screen_command` (N lines of B bytes) until all bytes and the prompt",
            errors=_ERR,
            activities=("screen",),
        ),
        Operation(SSH, "exec", "`echo` on an exec channel", errors=_ERR, activities=("exec",)),
        # a reconnect takes a new portal ticket first, so portal errors show here too
        Operation(
            SSH,
            "reconnect",
            "after a drop: new credentials/ticket, connect, shell ready",
            errors=(*_CONNECT_ERR, *_HTTP_ERR),
        ),
        Operation(SSH, "drop", "the connection ended while idle (keepalive failure, reset)", errors=_ERR),
        Operation(
            SFTP,
            "get",
            "a document download (bytes recorded)",
            errors=(*_ERR, "sftp_error"),
            activities=("sftp_get",),
        ),
        Operation(
            SFTP,
            "put",
            "a document upload (bytes recorded)",
            errors=(*_ERR, "sftp_error"),
            activities=("sftp_put",),
        ),
        Operation(
            TUNNEL,
            "http",
            "GET through a direct-tcpip channel to gateway.tunnel_target",
            errors=(*_ERR, "tunnel_refused", *HTTP_STATUS_ERRORS),
            activities=("tunnel",),
        ),
    ),
)
# In the profile's order, so a seeded random stream draws the same activities as before the catalogue.
SSH_ACTIVITIES = tuple(a for a in ACTIVITIES if a in SSH_CATALOGUE.activities)
_TYPED = b"echo the quick brown fox jumps over the lazy dog "
DEFAULT_UPLOAD_BYTES = 65536


class SSHSession(BridgedSession[GatewayConnection]):
    """One gateway connection with its PTY shell, driven from a greenlet; every operation fires a sample.

    A remote.RemoteSession (HomeofficeUser drives it without knowing it is SSH) on the shared
    :class:`~gateload.locustfiles.lib.bridged.BridgedSession` bookkeeping. Operations never raise for target
    failures: they record them and return False. After a failure, :attr:`usable` says whether the
    connection can go on (``broken``: the shell is out of step); if not, the user reconnects.
    """

    kind = SSH
    served = SSH_ACTIVITIES

    # --- state ------------------------------------------------------------------------------------

    def _ready(self, conn: GatewayConnection) -> bool:
        return conn.shell is not None  # the PTY shell is open

    def _loss(self, conn: GatewayConnection) -> tuple[float | None, BaseException | None]:
        return conn.client.lost_at, conn.client.lost

    # --- connect ----------------------------------------------------------------------------------

    def logon(self, username: str, password: str | None, *, record: bool = True) -> OperationError | None:
        """Connect, authenticate and open the shell; the first failure, or None when the shell is ready.

        ``record=False`` (a reconnect) fires no connect/shell samples: the caller fires ``reconnect``.
        """
        conn = self._begin(
            GatewayConnection(connect_spec(self.profile, username, password, source=self.source))
        )
        outcome = self.bridge.call_timed(conn.connect())
        # The banner names the backend even when it then refuses the connection.
        self.server = conn.client.server
        if outcome.ok and self.server is None:
            self.server = self._backend_from_env()
        if record:
            self._fire(SSH, "connect", outcome)
        if not outcome.ok:
            self.abort()
            return _as_error(outcome.error)
        shell = self.bridge.call_timed(conn.open_shell(), self.profile.workload.timeout_s)
        if record:
            self._fire(SSH, "shell", shell)
        if not shell.ok:
            self.abort()
            return _as_error(shell.error)
        return None

    def _backend_from_env(self) -> str | None:
        assert self.conn is not None
        found = self.bridge.call_timed(self.conn.backend_from_env(), self.profile.workload.timeout_s)
        return found.value if found.ok else None

    # --- activities -------------------------------------------------------------------------------

    def run_activity(self, name: str, document: str) -> bool:
        """Run one SSH activity of the workload mix; True on success."""
        ops: dict[str, Callable[[], bool]] = {
            "typing": self.typing,
            "screen": self.screen,
            "exec": self.exec,
            "sftp_get": lambda: self.sftp_get(document),
            "sftp_put": lambda: self.sftp_put(document),
            "tunnel": self.tunnel,
        }
        return ops[name]()

    def typing(self) -> bool:
        """A typing burst at the profile's pace (one ``keystroke`` sample per key), then ``enter``.

        Burst and Enter are one hand-over to the loop thread (each costs the loop and the hub a
        wake-up); both are timed there as before, and the samples are fired here afterwards.
        """
        w = self.profile.workload
        text = self._next_text(w.burst_keys)
        conn = self._require()
        samples, end = self.bridge.run(
            _burst_then_enter(conn, text, w.typing_interval_ms / 1000.0, w.timeout_s)
        )
        self._fire_keystrokes(samples)
        if end is None:  # the burst failed: no Enter
            self._broke()
            return False
        self._fire(SSH, "enter", end, length=end.value or 0)
        if not end.ok:
            self._broke()
            return False
        return True

    def _fire_keystrokes(self, samples: list[KeySample]) -> None:
        """One ``keystroke`` sample per key: what ``_fire`` sends, with the per-sample work of a
        success (no error to classify or make safe) done once per burst: the hot path of typing."""
        request = self.environment.events.request
        user_id, server = self.user_id, self.server
        for s in samples:
            o = s.outcome
            if o.error is not None:
                self._fire(SSH, "keystroke", o, length=0, t_intended=s.t_intended)
                continue
            request.fire(
                request_type=SSH,
                name="keystroke",
                response_time=o.duration_ms,
                response_length=o.value or 0,
                exception=None,
                context=sample_context(
                    user_id, server=server, t_intended=s.t_intended, start_time=o.start_time
                ),
                start_time=o.start_time,
                url=None,
                response=None,
            )

    def screen(self) -> bool:
        """``gateway.screen_command`` in the shell: one ``screen_update`` sample from Enter to the prompt."""
        w = self.profile.workload
        line = screen_line(self.profile.gateway.screen_command, w.screen_bursts, w.screen_bytes)
        outcome = self.bridge.run(self._require().run_line(line, w.timeout_s))
        self._fire(SSH, "screen_update", outcome, length=outcome.value or 0)
        if not outcome.ok:
            self._broke()
        return outcome.ok

    def exec(self) -> bool:
        """``echo`` on an exec channel."""
        outcome = self.bridge.call_timed(
            self._require().exec("echo gateload"), self.profile.workload.timeout_s
        )
        return self._after(SSH, "exec", outcome)

    def sftp_get(self, document: str) -> bool:
        """Download a document over SFTP."""
        if not self._sftp_ready("get"):
            return False
        op = self._require().sftp_get(document)
        return self._after(SFTP, "get", self.bridge.call_timed(op, self.profile.workload.timeout_s))

    def sftp_put(self, document: str) -> bool:
        """Upload a document-sized file over SFTP (per process and user, so uploads never collide)."""
        if not self._sftp_ready("put"):
            return False
        size = DEFAULT_UPLOAD_BYTES
        if self.profile.farm is not None:
            size = self.profile.farm.documents.get(document, size)
        path = f"upload-{os.getpid()}-{self.user_id}-{document}"
        op = self._require().sftp_put(path, _payload(size))
        return self._after(SFTP, "put", self.bridge.call_timed(op, self.profile.workload.timeout_s))

    def tunnel(self) -> bool:
        """HTTP GET through a direct-tcpip tunnel to ``gateway.tunnel_target``."""
        gw = self.profile.gateway
        op = self._require().tunnel_http(gw.tunnel_target, gw.tunnel_path)
        outcome = self.bridge.call_timed(op, self.profile.workload.timeout_s)
        status, length, server = outcome.value if outcome.value is not None else (0, 0, None)
        if outcome.ok and status >= 400:
            outcome = Timed(outcome.start_time, outcome.duration_ms, None, HttpStatusError(status))
        return self._after(TUNNEL, "http", outcome, length=length, server=server)

    # --- helpers ----------------------------------------------------------------------------------

    def _sftp_ready(self, name: str) -> bool:
        started = self.bridge.call_timed(self._require().sftp_client(), self.profile.workload.timeout_s)
        if not started.ok:
            self._after(SFTP, name, started)
        return started.ok

    @staticmethod
    def _next_text(n: int) -> bytes:
        # Each burst types a new harmless "echo ..." line.
        return (_TYPED * (n // len(_TYPED) + 1))[:n]


async def _burst_then_enter(
    conn: GatewayConnection, text: bytes, interval_s: float, timeout_s: float
) -> tuple[list[KeySample], Timed[int] | None]:
    """The burst's keystrokes, then (if every key was echoed) Enter until the prompt; loop thread."""
    samples = await conn.type_burst(text, interval_s, timeout_s)
    if not samples or not samples[-1].outcome.ok:
        return samples, None
    # Enter: the typed "echo ..." line runs and the prompt comes back.
    return samples, await conn.run_line(b"", timeout_s)


def _payload(size: int) -> bytes:
    return (b"gateload upload " * (size // 16 + 1))[:size]


def _as_error(exc: BaseException | None) -> OperationError:
    return safe_error(exc) or OperationError("other")


remote.register("ssh", SSH_CATALOGUE, SSHSession)
