"""The greenlet side every bridged remote session shares (SSH, SSL-VPN, and next RDP and OpenVPN).

A bridged session drives one connection object whose operations are coroutines run in the bridge's
loop thread (:mod:`gateload.locustfiles.lib.aiobridge`) and timed there; the samples are fired here, from the
greenlet. :class:`BridgedSession` holds what is the same for every protocol: the connection and its
bookkeeping (``broken``, a drop recorded at most once), ``close``/``abort``, the ``reconnect`` and
``drop`` samples, firing a sample, a logon made of timed steps, and :func:`paced_burst` for paced
operations with their intended starts. A protocol subclass sets :attr:`BridgedSession.kind` and
:attr:`BridgedSession.served`, creates its connection in ``logon`` and adds its activities.

Per-address limits of a server (ocserv's bans, xrdp's pending connections) see one client per
simulated user when the profile names ``[gateway] source_addresses``: :attr:`BridgedSession.source`
is this user's, rotating by user id; a protocol binds its connections to it.

The connection (:class:`BridgedConnection`) says whether it ended under us (``dropped``) and why
(``lost``, ``lost_at``), closes politely as a coroutine and aborts at once from the loop thread.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, Protocol, TypeVar

from gateload.locustfiles.lib.aiobridge import Bridge, Timed, get_bridge, timed
from gateload.locustfiles.lib.errors import OperationError, safe_error
from gateload.locustfiles.lib.runtime import Target, fire
from gateload.targets.profile import Profile, source_addresses

T = TypeVar("T")


class BridgedConnection(Protocol):
    """What :class:`BridgedSession` needs of a protocol's connection object."""

    @property
    def dropped(self) -> bool:
        """The connection ended without us closing it (reset, EOF, the server's disconnect)."""
        ...

    async def close(self) -> None:
        """End politely, bounded in time (runs in the loop thread)."""
        ...

    def abort(self) -> None:
        """Drop at once without waiting (called in the loop thread)."""
        ...


C = TypeVar("C", bound=BridgedConnection)


@dataclass(frozen=True, slots=True)
class PacedSample(Generic[T]):
    """One operation of a paced burst."""

    t_intended: float  # epoch seconds it was planned for (t0 + k * interval)
    outcome: Timed[T]


async def paced_burst(
    op: Callable[[], Awaitable[T]], count: int, interval_s: float, timeout_s: float
) -> list[PacedSample[T]]:
    """``count`` runs of ``op()`` planned ``interval_s`` apart (loop thread); stops at the first failure.

    A late operation does not shift the plan: the next one starts at its planned time or at once, so
    the intended starts (and the latency corrected from them) keep the schedule.
    """
    loop = asyncio.get_running_loop()
    t0_wall, t0 = time.time(), loop.time()
    samples: list[PacedSample[T]] = []
    for k in range(count):
        delay = t0 + k * interval_s - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        outcome = await timed(op(), timeout_s)
        samples.append(PacedSample(t0_wall + k * interval_s, outcome))
        if not outcome.ok:
            break
    return samples


@functools.cache
def _sources(spec: str) -> tuple[str, ...]:
    return tuple(source_addresses(spec)) if spec else ()


def source_for(profile: Profile, user_id: int) -> str | None:
    """The user's source address from ``gateway.source_addresses`` (rotating by user id), or None (the
    system picks). The profile was validated when loaded."""
    found = _sources(profile.gateway.source_addresses)
    return found[user_id % len(found)] if found else None


class BridgedSession(Generic[C]):
    """A :class:`gateload.locustfiles.lib.remote.RemoteSession` over one bridged connection (greenlet side).

    Operations never raise for target failures: they fire a sample and return False (or the error).
    After a failure :attr:`usable` says whether the session can go on; if not, the user reconnects.
    """

    #: sample type of the session's own rows (``reconnect``, ``drop``), e.g. "SSH" or "VPN"
    kind: ClassVar[str] = ""
    #: workload activities (``workload.mix`` keys) the protocol serves, in the profile's order
    served: ClassVar[tuple[str, ...]] = ()

    def __init__(self, environment: Any, target: Target, user_id: int, bridge: Bridge | None = None) -> None:
        self.environment = environment
        self.target = target
        self.profile = target.profile
        self.user_id = user_id
        self.bridge = bridge or get_bridge()
        self.conn: C | None = None
        self.server: str | None = None  # backend that carries the session, when the target says
        self.broken = False  # out of step after a failed operation: reconnect
        self._drop_recorded = False

    # --- state ------------------------------------------------------------------------------------

    @property
    def usable(self) -> bool:
        """Connected, ready (:meth:`_ready`), not dropped, not out of step."""
        c = self.conn
        return c is not None and self._ready(c) and not c.dropped and not self.broken

    @property
    def dropped(self) -> bool:
        return self.conn is not None and self.conn.dropped

    @property
    def activities(self) -> tuple[str, ...]:
        return self.served

    @property
    def source(self) -> str | None:
        """The local address this user's connections come from (``gateway.source_addresses``), or None."""
        return source_for(self.profile, self.user_id)

    def _ready(self, conn: C) -> bool:
        """Whether a connection that has not dropped can run activities (e.g. its shell is open)."""
        return True

    def _loss(self, conn: C) -> tuple[float | None, BaseException | None]:
        """When and why the connection ended under us (``conn.lost_at``, ``conn.lost`` by default)."""
        return getattr(conn, "lost_at", None), getattr(conn, "lost", None)

    # --- the session's own rows -------------------------------------------------------------------

    def record_idle_drop(self) -> None:
        """Fire a ``drop`` sample for a connection that ended while idle (once, if no failed op showed it)."""
        c = self.conn
        if c is None or not c.dropped or self._drop_recorded:
            return
        self._drop_recorded = True
        lost_at, lost = self._loss(c)
        self._fire(self.kind, "drop", Timed(lost_at or time.time(), 0.0, None, lost))

    def record_reconnect(self, start: float, duration_ms: float, error: OperationError | None) -> None:
        """Fire the protocol's ``reconnect`` sample of a reconnect the caller timed."""
        self._fire(self.kind, "reconnect", Timed(start, duration_ms, None, error))

    # --- logon ------------------------------------------------------------------------------------

    def _begin(self, conn: C) -> C:
        """Start a new connection: the old one (if any) aborted, the bookkeeping reset."""
        self.abort()
        self.conn = conn
        self.broken, self._drop_recorded = False, False
        return conn

    def _steps(
        self,
        steps: Sequence[tuple[str, Callable[[], Awaitable[Any]]]],
        record: bool,
        after: Callable[[str, Timed[Any]], Timed[Any] | None] | None = None,
    ) -> OperationError | None:
        """Run the logon's timed steps ``(name, coroutine function)`` in order, one sample each.

        ``after(name, outcome)`` runs before the sample is fired (e.g. to learn the backend); what it
        returns, if not None, is recorded instead (e.g. a duration from the protocol's own event times).
        The first failure aborts the connection and is returned; ``record=False`` (a reconnect) fires
        nothing: the caller fires ``reconnect``.
        """
        timeout = self.profile.workload.timeout_s
        for name, op in steps:
            outcome = self.bridge.call_timed(op(), timeout)
            if after is not None:
                outcome = after(name, outcome) or outcome
            if record:
                self._fire(self.kind, name, outcome)
            if not outcome.ok:
                self.abort()
                return safe_error(outcome.error) or OperationError("other")
        return None

    # --- close ------------------------------------------------------------------------------------

    def close(self) -> None:
        """End the session politely (bounded; no sample)."""
        conn, self.conn = self.conn, None
        if conn is not None:
            self.bridge.run(conn.close())

    def abort(self) -> None:
        """Drop the connection at once without waiting (a stopped user, a broken session)."""
        conn, self.conn = self.conn, None
        if conn is not None:
            self.bridge.loop.call_soon_threadsafe(conn.abort)

    # --- helpers ----------------------------------------------------------------------------------

    def _require(self) -> C:
        if self.conn is None:
            raise RuntimeError(f"{type(self).__name__} used before logon()")
        return self.conn

    def _after(self, kind: str, name: str, outcome: Timed[Any], **kw: Any) -> bool:
        """Fire the sample of one operation (``length``: its value when an int); True when it succeeded."""
        length = kw.pop("length", None)
        if length is None:
            length = outcome.value if isinstance(outcome.value, int) else 0
        self._fire(kind, name, outcome, length=length, **kw)
        if not outcome.ok and self.dropped:
            self._drop_recorded = True  # this failure already shows the drop
        return outcome.ok

    def _broke(self) -> None:
        """The session is out of step after a failed operation (the user reconnects)."""
        self.broken = True
        if self.dropped:
            self._drop_recorded = True  # the failed operation already shows the drop

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
