"""The remote-desktop protocol ``rdp``: ``RDPSession`` (one employee's desktop over RDP, greenlet side).

A profile's ``[gateway] protocol = "rdp"`` selects it (:mod:`gateload.locustfiles.lib.remote`);
``gateway.host`` and ``gateway.port`` name the RDP server (xrdp, or another that speaks TLS security). The
client is PyPI ``aardwolf`` with the fixes of :mod:`gateload.locustfiles.lib.rdpfix`; it runs in the bridge's
loop thread (:class:`RDPDesktop`), every operation is timed there and the samples are fired here.

A logon is three samples, all timed from the start of the TCP connect, the milestones a person sees:
``RDP connect`` (TCP, X.224, TLS, MCS, licensing and capability exchange done), ``RDP first_frame``
(the first bitmap of the screen) and ``RDP desktop_ready`` (role logon: the whole desktop painted,
i.e. bitmaps covering every cell of the screen). The one activity served is ``typing``: a burst of
``workload.burst_keys`` key presses at ``workload.typing_interval_ms`` (``RDP key``, paced, with its
intended start, role echo): from the key press until the first screen update after it, the framebuffer
change the key causes (on the stock xrdp account an xterm echoes it). Keys alternate a letter and
BackSpace so the line never grows. Each burst also fires two aggregate rows over the burst: ``RDP
frames`` (response_length = bitmap rectangles received) and ``RDP bytes`` (response_length = screen
update bytes); their sums over their durations are frames and bytes per second.

Error classes: ``auth_failed`` (the server painted a screen but never a whole desktop and went quiet:
xrdp shows its login dialog again after a rejected password; a session cap shows the same dialog),
``refused``, ``reset``, ``tls_error``, ``timeout``, ``throttled`` (the connect did not finish while the
TCP connection was accepted: a server whose pending-connection queue is full, as xrdp's backlog of 2)
and ``other``. No password or server text goes into a sample or a log: aardwolf's own logger is kept
at CRITICAL, its exceptions become fixed words.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import logging
import ssl
import time
from typing import Any

from aardwolf.commons.factory import RDPConnectionFactory
from aardwolf.commons.iosettings import RDPIOSettings
from aardwolf.commons.queuedata.constants import MOUSEBUTTON, VIDEO_FORMAT
from asyauth.common.constants import asyauthSecret

from gateload.analysis.catalogue import Catalogue, Operation
from gateload.locustfiles.lib import rdpfix, remote
from gateload.locustfiles.lib.aiobridge import Timed
from gateload.locustfiles.lib.bridged import BridgedSession, paced_burst
from gateload.locustfiles.lib.errors import OperationError
from gateload.targets.profile import cert_sha256, format_cert_sha256

RDP = "RDP"
_NET = ("refused", "reset", "timeout", "tls_error", "throttled", "other")
_ERR = (*_NET, "auth_failed")
RDP_CATALOGUE = Catalogue(
    ("rdp",),
    (
        Operation(
            RDP,
            "connect",
            "TCP, X.224, TLS, MCS, licensing and capabilities (from connect start)",
            errors=_NET,
        ),
        Operation(RDP, "first_frame", "the first bitmap of the screen (from connect start)", errors=_ERR),
        Operation(
            RDP,
            "desktop_ready",
            "the whole desktop painted (from connect start): the logon time",
            errors=_ERR,
            roles=("logon",),
        ),
        Operation(
            RDP,
            "key",
            "one paced key press until the screen update it causes (t_intended = the plan)",
            paced=True,
            burst=True,
            rate_from="workload.typing_interval_ms",
            errors=_NET,
            activities=("typing",),
            roles=("echo",),
        ),
        Operation(
            RDP, "frames", "bitmap rectangles received during a burst (response_length)", aggregate=True
        ),
        Operation(
            RDP, "bytes", "screen update bytes received during a burst (response_length)", aggregate=True
        ),
        Operation(RDP, "reconnect", "after a drop: connect and desktop again", errors=_ERR),
        Operation(RDP, "drop", "the connection ended while idle", errors=_NET),
    ),
)
RDP_ACTIVITIES = RDP_CATALOGUE.activities

#: the screen is judged covered in cells of this many pixels square
CELL = 16
#: after a first frame, this long without a new one and the desktop not whole: the server shows a dialog
QUIET_S = 2.5
#: where the pointer rests so the desktop's window under it gets the keys (no window manager: focus
#: follows the pointer on a bare X display)
POINTER_AT = (60, 60)
SC_A, SC_BACKSPACE = 30, 14
FOCUS_WAIT_S, FOCUS_SETTLE_S = 1.0, 0.05
CLOSE_TIMEOUT_S = 2.0
DESKTOP = (1024, 768)

logging.getLogger("aardwolf").setLevel(logging.CRITICAL)  # failures are classified samples; no text


def _classify(exc: BaseException | None) -> OperationError:
    """aardwolf's failure as an error class with fixed words (its messages may carry server text)."""
    if isinstance(exc, OperationError):
        return exc
    if isinstance(exc, ssl.SSLError | ssl.CertificateError):
        return OperationError("tls_error", type(exc).__name__)
    if isinstance(exc, TimeoutError):
        return OperationError("timeout")
    if isinstance(exc, ConnectionRefusedError):
        return OperationError("refused")
    if isinstance(exc, ConnectionResetError | BrokenPipeError | ConnectionAbortedError | EOFError):
        return OperationError("reset", type(exc).__name__)
    if isinstance(exc, OSError):
        refused = exc.errno in (errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH)
        return OperationError("refused" if refused else "other", type(exc).__name__)
    if exc is not None and "terminated the connection" in str(exc):
        return OperationError("reset", "server closed the connection")
    return OperationError("other", type(exc).__name__ if exc is not None else "")


class RDPDesktop:
    """One RDP connection in the loop thread: connect, wait for the desktop, keys and their screen updates."""

    def __init__(
        self,
        host: str,
        port: int,
        username: str,
        password: str | None,
        timeout_s: float = 10.0,
        cert_pin: bytes | None = None,
        verify: bool = True,
    ) -> None:
        self.host, self.port, self.username = host, port, username
        self._password = password  # never logged
        self.timeout_s = timeout_s
        self.cert_pin = cert_pin  # SHA-256 of the server certificate; None: none pinned
        #: fix 10's hook for this connection (rdpfix.FixedRDPConnection.on_certificate); without
        #: ``verify`` (the profile's explicit opt-out) any certificate is taken
        self.on_certificate = self._check_certificate if verify else None
        self.conn: Any = None
        self.connected = False
        self.closing = False
        self.lost: BaseException | None = None
        self.lost_at: float | None = None
        self.t0 = 0.0  # perf_counter at connect start
        self.first_frame_at: float | None = None
        self.last_frame_at = 0.0
        self.frames = 0
        self._cells = bytearray((DESKTOP[0] // CELL) * (DESKTOP[1] // CELL))
        self._covered = 0
        self._changed: asyncio.Event | None = None
        self._drain: asyncio.Task[None] | None = None
        self._watch: asyncio.Task[None] | None = None

    @property
    def dropped(self) -> bool:
        return self.connected and self.lost is not None and not self.closing

    @property
    def update_bytes(self) -> int:
        return int(self.conn.update_bytes) if self.conn is not None else 0

    @property
    def whole(self) -> bool:
        return self._covered >= len(self._cells)

    # --- the operations (timed by the caller) ----------------------------------------------------------

    async def connect(self) -> float:
        """TCP to the end of the capability exchange; returns ms since connect start."""
        io = RDPIOSettings()
        io.channels = []  # no clipboard or dynamic channels: the desktop only
        io.video_width, io.video_height = DESKTOP
        io.video_out_format = VIDEO_FORMAT.RAW
        io.clipboard_use_pyperclip = False
        # credentials through the factory's URL parser, never printed (the URL is not kept)
        host = f"[{self.host}]" if ":" in self.host else self.host  # an IPv6 literal in a URL
        factory = RDPConnectionFactory.from_url(f"rdp+plain://{host}:{self.port}", io)
        target, cred = factory.get_target(), factory.get_credential()
        target.timeout = self.timeout_s
        cred.username, cred.secret, cred.domain = self.username, self._password, None
        cred.stype = asyauthSecret.PASSWORD
        self.conn = conn = rdpfix.FixedRDPConnection(target, cred, io)
        conn.on_frame = self._on_frame
        conn.on_certificate = self.on_certificate
        self._changed = asyncio.Event()
        self.t0 = time.perf_counter()
        loop = asyncio.get_running_loop()
        self._drain = loop.create_task(self._drain_frames())
        try:
            # aardwolf waits for the X.224 answer without a bound: ours, so a silent server is classified
            async with asyncio.timeout(self.timeout_s):
                ok, err = await conn.connect()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # aardwolf returns most errors, raises a few (and our timeout)
            ok, err = None, exc
        if err is not None or not ok:
            error = _classify(err)
            if error.error_class == "timeout":
                error = _throttled_or_timeout(self)
            raise error
        self.connected = True
        self._watch = loop.create_task(self._watch_end())
        return (time.perf_counter() - self.t0) * 1000.0

    def _check_certificate(self, der: bytes) -> None:
        """Fix 10's hook: refuse a certificate other than the pinned one (before the password is sent)."""
        seen = hashlib.sha256(der).digest()
        if self.cert_pin is None:
            raise ssl.SSLCertVerificationError(
                f"certificate SHA-256 {format_cert_sha256(seen)} is not pinned "
                "(gateway.cert_fingerprint unset)"
            )
        if seen != self.cert_pin:
            raise ssl.SSLCertVerificationError(
                f"certificate SHA-256 {format_cert_sha256(seen)} is not gateway.cert_fingerprint"
            )

    async def first_frame(self) -> float:
        """Until the first bitmap; ms since connect start."""
        await self._until(lambda: self.first_frame_at is not None)
        assert self.first_frame_at is not None
        return (self.first_frame_at - self.t0) * 1000.0

    async def desktop_ready(self) -> float:
        """Until the whole screen is painted (then the pointer is placed on the desktop); ms since start.

        A screen that stops changing for :data:`QUIET_S` before it is whole is the server's login
        dialog (a rejected password, or a session the server refused): ``auth_failed``.
        """
        await self._until(lambda: self.whole, quiet_fails=True)
        done = (time.perf_counter() - self.t0) * 1000.0
        # The window under the pointer gets the focus and repaints (xterm's cursor turns solid): wait
        # for that update (bounded) so the first key's update is the key's own. Not in the logon time.
        assert self._changed is not None
        self._changed.clear()
        await self.conn.send_mouse(MOUSEBUTTON.MOUSEBUTTON_HOVER, *POINTER_AT, False)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(FOCUS_WAIT_S):
                await self._changed.wait()
        await asyncio.sleep(FOCUS_SETTLE_S)
        return done

    async def key(self, scancode: int) -> float:
        """Press and release one key; until the first screen update after the press (ms)."""
        self._alive()
        assert self._changed is not None
        self._changed.clear()
        t0 = time.perf_counter()
        for down in (True, False):
            _, err = await self.conn.send_key_scancode(scancode, down, False)
            if err is not None:
                raise _classify(err)
        await self._wait_changed()
        return (time.perf_counter() - t0) * 1000.0

    async def close(self) -> None:
        """Shutdown request and close, bounded in time."""
        self.closing = True
        conn = self.conn
        if conn is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(CLOSE_TIMEOUT_S):
                    await conn.terminate()
        self._stop_tasks()

    def abort(self) -> None:
        """Drop the connection at once (loop thread; no waiting)."""
        self.closing = True
        conn = self.conn
        if conn is not None:
            conn._RDPConnection__terminate_called = True  # its reader's cleanup must not wait for a reply
        transport = _transport(conn)
        if transport is not None:
            transport.abort()
        self._stop_tasks()
        if conn is not None:
            conn.disconnected_evt.set()

    # --- helpers ----------------------------------------------------------------------------------------

    def _on_frame(self, count: int) -> None:
        now = time.perf_counter()
        self.frames += count
        if self.first_frame_at is None:
            self.first_frame_at = now
        self.last_frame_at = now
        if self._changed is not None:
            self._changed.set()

    async def _drain_frames(self) -> None:
        """Read the (bounded) frame queue as it fills; mark the screen cells each rectangle covers."""
        conn = self.conn
        cols = DESKTOP[0] // CELL
        while True:
            item = await conn.ext_out_queue.get()
            if item is None:
                return
            x0, y0 = max(0, item.x // CELL), max(0, item.y // CELL)
            x1 = min(cols, (item.x + item.width + CELL - 1) // CELL)
            y1 = min(DESKTOP[1] // CELL, (item.y + item.height + CELL - 1) // CELL)
            for row in range(y0, y1):
                for i in range(row * cols + x0, row * cols + x1):
                    if not self._cells[i]:
                        self._cells[i] = 1
                        self._covered += 1

    async def _watch_end(self) -> None:
        await self.conn.disconnected_evt.wait()
        if self.lost is None:
            self.lost, self.lost_at = ConnectionResetError("connection ended"), time.time()
        if self._changed is not None:
            self._changed.set()  # wake a waiting key

    async def _until(self, done: Any, quiet_fails: bool = False) -> None:
        assert self._changed is not None
        while not done():
            self._alive()
            if quiet_fails and self.first_frame_at is not None:
                quiet = time.perf_counter() - self.last_frame_at
                if quiet >= QUIET_S:
                    raise OperationError("auth_failed", "login screen shown, no desktop")
                wait = QUIET_S - quiet
            else:
                wait = QUIET_S
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._changed.wait()
            await asyncio.sleep(0)  # let the drain task mark the cells of what just arrived

    async def _wait_changed(self) -> None:
        assert self._changed is not None
        await self._changed.wait()
        self._alive()

    def _alive(self) -> None:
        if self.lost is not None:
            raise OperationError("reset", "connection ended")

    def _stop_tasks(self) -> None:
        """Cancel our tasks and aardwolf's readers (an aborted connection leaves them waiting forever)."""
        conn = self.conn
        theirs = [getattr(conn, f"_RDPConnection__{n}_reader_task", None) for n in ("x224", "external")]
        for task in (self._drain, self._watch, *theirs):
            if task is not None and not task.done():
                task.cancel()


def _transport(conn: Any) -> Any:
    """The asyncio transport under an aardwolf connection, or None."""
    uni = getattr(conn, "_RDPConnection__connection", None)
    writer = getattr(uni, "writer", None)
    return getattr(writer, "transport", None)


class RDPSession(BridgedSession[RDPDesktop]):
    """One remote desktop, driven from a greenlet; every operation fires a sample.

    A :class:`gateload.locustfiles.lib.remote.RemoteSession` on
    :class:`~gateload.locustfiles.lib.bridged.BridgedSession`: operations never raise for target failures,
    they record them and return False (or the error).
    """

    kind = RDP
    served = RDP_ACTIVITIES

    def _ready(self, conn: RDPDesktop) -> bool:
        return conn.connected and conn.whole

    def logon(self, username: str, secret: str | None, *, record: bool = True) -> OperationError | None:
        """Connect, first frame, desktop ready; the first failure, or None when the desktop is up."""
        gw = self.profile.gateway
        pin = cert_sha256(gw.cert_fingerprint) if gw.cert_fingerprint else None
        timeout = self.profile.workload.timeout_s
        desk = self._begin(
            RDPDesktop(gw.host, gw.port, username, secret, timeout, cert_pin=pin, verify=gw.verify_host_key)
        )
        steps = (
            ("connect", desk.connect),
            ("first_frame", desk.first_frame),
            ("desktop_ready", desk.desktop_ready),
        )
        for name, op in steps:
            # the connect bounds itself (and classifies its timeout): the bridge's bound comes later
            outcome = self.bridge.call_timed(
                op(), timeout + CLOSE_TIMEOUT_S if name == "connect" else timeout
            )
            if outcome.ok:
                # every milestone is timed from the connect's start: the value is that duration
                start = time.time() - (time.perf_counter() - desk.t0)
                outcome = Timed(start, float(outcome.value or 0.0), outcome.value, None)
            elif name == "connect" and isinstance(outcome.error, TimeoutError) and desk.conn is not None:
                outcome = Timed(outcome.start_time, outcome.duration_ms, None, _throttled_or_timeout(desk))
            if record:
                self._fire(RDP, name, outcome)
            if not outcome.ok:
                self.abort()
                err = outcome.error
                return err if isinstance(err, OperationError) else _classify(err)
        return None

    def run_activity(self, name: str, document: str) -> bool:
        """Run one activity (only ``typing``: a paced burst of key presses); True on success."""
        if name != "typing":
            raise ValueError(f"the rdp protocol serves {RDP_ACTIVITIES}, not {name!r}")
        return self.typing()

    def typing(self) -> bool:
        """``workload.burst_keys`` key presses at ``workload.typing_interval_ms`` (paced samples), then
        the burst's frames and bytes."""
        desk = self._require()
        w = self.profile.workload
        keys = iter([SC_A, SC_BACKSPACE] * (w.burst_keys // 2 + 1))
        frames0, bytes0, t0 = desk.frames, desk.update_bytes, time.time()
        burst = paced_burst(
            lambda: desk.key(next(keys)), w.burst_keys, w.typing_interval_ms / 1000.0, w.timeout_s
        )
        samples = self.bridge.run(burst)
        for s in samples:
            self._fire(RDP, "key", s.outcome, t_intended=s.t_intended)
        span: Timed[Any] = Timed(t0, (time.time() - t0) * 1000.0)
        self._fire(RDP, "frames", span, length=desk.frames - frames0)
        self._fire(RDP, "bytes", span, length=desk.update_bytes - bytes0)
        if not samples or not samples[-1].outcome.ok:
            self._broke()
            return False
        return True


async def fetch_certificate(host: str, port: int, timeout_s: float) -> bytes:
    """The certificate (DER) an RDP server presents in its TLS handshake; the connection ends right
    after it, before any credential is sent (``gateload pin --protocol rdp``)."""
    seen: list[bytes] = []

    def keep(der: bytes) -> None:
        seen.append(der)
        raise _Fetched

    desk = RDPDesktop(host, port, "gateload-pin", None, timeout_s)
    desk.on_certificate = keep
    try:
        await desk.connect()
    except OperationError:
        if not seen:
            raise
    finally:
        desk.abort()
    if not seen:
        raise OperationError("other", "the server finished the logon without a certificate")
    return seen[0]


class _Fetched(Exception):
    """Ends a connection once its certificate is in hand."""


def _throttled_or_timeout(desk: RDPDesktop) -> OperationError:
    """A connect that timed out: ``throttled`` when the TCP connection was made (the server accepted
    it into its queue but never served it), else ``timeout``."""
    return OperationError("throttled" if _transport(desk.conn) is not None else "timeout", "connect")


# aardwolf's ASN.1 specs compiled now, before any load: the first logon times the protocol, not this
rdpfix.warm()
#: an RDP certificate is pinned, not checked against a CA (the probe's default tls_error fix is a CA file)
FIXES = {
    "tls_error": (
        "the server's certificate is not gateway.cert_fingerprint: check it, then put the line from "
        "`gateload pin --protocol rdp {host}:{port}` into the profile's [gateway] section"
    )
}
remote.register("rdp", RDP_CATALOGUE, RDPSession, fixes=FIXES)
