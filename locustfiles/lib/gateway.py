"""The SSH gateway: ``SSHSession`` (one employee's gateway connection, greenlet side) and ``GatewayUser``.

Operations run as coroutines in the bridge's loop thread (``sshops.py``), timed there; the samples
are fired here, in the greenlet. The operations (type, name, what, paced, error classes, activities,
roles) are declared once, in :data:`SSH_CATALOGUE`; this module registers the ``ssh`` protocol
(:mod:`locustfiles.lib.remote`) that a profile's ``[gateway] protocol = "ssh"`` selects.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

from analysis.catalogue import Catalogue, Operation
from locustfiles.lib import remote
from locustfiles.lib.aiobridge import Bridge, Timed, get_bridge
from locustfiles.lib.errors import HttpStatusError, OperationError, safe_error
from locustfiles.lib.runtime import Target, fire
from locustfiles.lib.sshops import GatewayConnection, connect_spec, screen_line
from targets.profile import ACTIVITIES

SSH, SFTP, TUNNEL = "SSH", "SFTP", "TUNNEL"
_ERR = ("refused", "reset", "timeout", "auth_failed", "host_key_mismatch", "ssh_error", "other")
_HTTP_ERR = ("http_401", "http_403", "http_503", "http_5xx", "http_4xx", "tls_error")
SSH_CATALOGUE = Catalogue(
    ("ssh",),
    (
        Operation(SSH, "connect", "TCP + key exchange (host key checked) + authentication", errors=_ERR),
        Operation(SSH, "shell", "PTY shell opened, until the first prompt", errors=_ERR),
        Operation(
            SSH,
            "keystroke",
            "one paced keystroke until its echo (t_intended = the plan)",
            paced=True,
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
            errors=(*_ERR, *_HTTP_ERR),
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
            errors=(*_ERR, "tunnel_refused", *_HTTP_ERR[:5]),
            activities=("tunnel",),
        ),
    ),
)
# In the profile's order, so a seeded random stream draws the same activities as before the catalogue.
SSH_ACTIVITIES = tuple(a for a in ACTIVITIES if a in SSH_CATALOGUE.activities)
_TYPED = b"echo the quick brown fox jumps over the lazy dog "
DEFAULT_UPLOAD_BYTES = 65536


class SSHSession:
    """One gateway connection with its PTY shell, driven from a greenlet; every operation fires a sample.

    Operations never raise for target failures: they record them and return False. After a failure,
    :attr:`usable` says whether the connection can go on; if not, the user reconnects.
    """

    def __init__(self, environment: Any, target: Target, user_id: int, bridge: Bridge | None = None) -> None:
        # A remote.RemoteSession: HomeofficeUser drives it without knowing it is SSH.
        self.environment = environment
        self.profile = target.profile
        self.user_id = user_id
        self.bridge = bridge or get_bridge()
        self.conn: GatewayConnection | None = None
        self.server: str | None = None
        self.broken = False  # the shell is out of step (a failed keystroke or screen): reconnect
        self._drop_recorded = False

    # --- state ------------------------------------------------------------------------------------

    @property
    def usable(self) -> bool:
        """Connected, shell open, not dropped, not out of step."""
        c = self.conn
        return c is not None and c.shell is not None and not c.dropped and not self.broken

    @property
    def dropped(self) -> bool:
        return self.conn is not None and self.conn.dropped

    @property
    def activities(self) -> tuple[str, ...]:
        """The workload activities an SSH session serves (from :data:`SSH_CATALOGUE`)."""
        return SSH_ACTIVITIES

    def record_idle_drop(self) -> None:
        """Fire a ``drop`` sample for a connection that ended while idle (once, if no failed op showed it)."""
        c = self.conn
        if c is None or not c.dropped or self._drop_recorded:
            return
        self._drop_recorded = True
        lost_at = c.client.lost_at or time.time()
        self._fire(SSH, "drop", Timed(lost_at, 0.0, None, c.client.lost))

    def record_reconnect(self, start: float, duration_ms: float, error: OperationError | None) -> None:
        """Fire the ``SSH reconnect`` sample of a reconnect the caller timed."""
        self._fire(SSH, "reconnect", Timed(start, duration_ms, None, error))

    # --- connect ----------------------------------------------------------------------------------

    def logon(self, username: str, password: str | None, *, record: bool = True) -> OperationError | None:
        """Connect, authenticate and open the shell; the first failure, or None when the shell is ready.

        ``record=False`` (a reconnect) fires no connect/shell samples: the caller fires ``reconnect``.
        """
        self.abort()
        self.conn = GatewayConnection(connect_spec(self.profile, username, password))
        self.broken, self._drop_recorded = False, False
        outcome = self.bridge.call_timed(self.conn.connect())
        # The banner names the backend even when it then refuses the connection.
        self.server = self.conn.client.server
        if outcome.ok and self.server is None:
            self.server = self._backend_from_env()
        if record:
            self._fire(SSH, "connect", outcome)
        if not outcome.ok:
            self.abort()
            return _as_error(outcome.error)
        shell = self.bridge.call_timed(self.conn.open_shell(), self.profile.workload.timeout_s)
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
        """A typing burst at the profile's pace (one ``keystroke`` sample per key), then ``enter``."""
        w = self.profile.workload
        text = self._next_text(w.burst_keys)
        conn = self._require()
        samples = self.bridge.run(conn.type_burst(text, w.typing_interval_ms / 1000.0, w.timeout_s))
        for s in samples:
            self._fire(SSH, "keystroke", s.outcome, length=s.outcome.value or 0, t_intended=s.t_intended)
        if not samples or not samples[-1].outcome.ok:
            self._failed_shell()
            return False
        # Enter: the typed "echo ..." line runs and the prompt comes back.
        end = self.bridge.run(conn.run_line(b"", w.timeout_s))
        self._fire(SSH, "enter", end, length=end.value or 0)
        if not end.ok:
            self._failed_shell()
            return False
        return True

    def screen(self) -> bool:
        """``gateway.screen_command`` in the shell: one ``screen_update`` sample from Enter to the prompt."""
        w = self.profile.workload
        line = screen_line(self.profile.gateway.screen_command, w.screen_bursts, w.screen_bytes)
        outcome = self.bridge.run(self._require().run_line(line, w.timeout_s))
        self._fire(SSH, "screen_update", outcome, length=outcome.value or 0)
        if not outcome.ok:
            self._failed_shell()
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
        status, length, server = outcome.value if outcome.ok else (0, 0, None)
        if outcome.ok and status >= 400:
            outcome = Timed(outcome.start_time, outcome.duration_ms, None, HttpStatusError(status))
        return self._after(TUNNEL, "http", outcome, length=length, server=server)

    # --- close ------------------------------------------------------------------------------------

    def close(self) -> None:
        """Leave the shell with ``exit`` and close the connection (bounded; no sample)."""
        conn, self.conn = self.conn, None
        if conn is not None:
            self.bridge.run(conn.close())

    def abort(self) -> None:
        """Drop the connection at once without waiting (a stopped user, a broken session)."""
        conn, self.conn = self.conn, None
        if conn is not None:
            self.bridge.loop.call_soon_threadsafe(conn.abort)

    # --- helpers ----------------------------------------------------------------------------------

    def _require(self) -> GatewayConnection:
        if self.conn is None:
            raise RuntimeError("SSHSession used before logon()")
        return self.conn

    def _sftp_ready(self, name: str) -> bool:
        started = self.bridge.call_timed(self._require().sftp_client(), self.profile.workload.timeout_s)
        if not started.ok:
            self._after(SFTP, name, started)
        return started.ok

    def _after(self, kind: str, name: str, outcome: Timed[Any], **kw: Any) -> bool:
        length = kw.pop("length", None)
        if length is None:
            length = outcome.value if isinstance(outcome.value, int) else 0
        self._fire(kind, name, outcome, length=length, **kw)
        if not outcome.ok and self.dropped:
            self._drop_recorded = True  # this failure already shows the drop
        return outcome.ok

    def _failed_shell(self) -> None:
        self.broken = True
        if self.dropped:
            self._drop_recorded = True

    @staticmethod
    def _next_text(n: int) -> bytes:
        # Each burst types a new harmless "echo ..." line.
        return (_TYPED * (n // len(_TYPED) + 1))[:n]

    def _fire(
        self,
        kind: str,
        name: str,
        outcome: Timed[Any],
        *,
        length: int = 0,
        t_intended: float | None = None,
        server: str | None = None,
    ) -> None:
        fire(
            self.environment,
            request_type=kind,
            name=name,
            start_time=outcome.start_time,
            response_time=outcome.duration_ms,
            response_length=length,
            exception=outcome.error,
            user_id=self.user_id,
            server=server or self.server,
            t_intended=t_intended,
        )


def _payload(size: int) -> bytes:
    return (b"gateload upload " * (size // 16 + 1))[:size]


def _as_error(exc: BaseException | None) -> OperationError:
    return safe_error(exc) or OperationError("other")


remote.register("ssh", SSH_CATALOGUE, SSHSession)
