"""The capacity model: simulated servers with worker slots, FIFO queues and a load balancer.

Service time is simulated with ``asyncio.sleep`` while holding a worker slot, so a server's capacity
comes from the profile, not from this machine's CPU. The hot path (:meth:`SimServer.work`) does no
logging and no allocation beyond one timer, because the load generator shares the same cores.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import random
from collections import deque
from collections.abc import Callable
from typing import Literal

from gateload.targets.profile import Farm, ServerGroup, ServiceTimes

#: Operation name -> ServiceTimes field holding its mean (ms on a speed-1.0 server).
OP_MEANS = {
    "portal_page": "portal_page_ms",
    "portal_login": "portal_login_ms",
    "portal_launch": "portal_launch_ms",
    "ssh_auth": "ssh_auth_ms",
    "keystroke": "keystroke_ms",
    "screen_update": "screen_update_ms",
    "tunnel_request": "tunnel_request_ms",
}
#: Operations whose time is bytes / rate (deterministic) rather than a sampled mean.
BYTE_OPS = ("sftp", "document")
OPS = (*OP_MEANS, *BYTE_OPS)

# Shape of the lognormal: sigma of the underlying normal. 0.5 gives a moderate right tail.
LOGNORMAL_SIGMA = 0.5


def make_sampler(distribution: str, rng: random.Random) -> Callable[[float], float]:
    """A function mean_seconds -> one service time drawn from ``distribution`` with that mean."""
    if distribution == "exponential":
        return lambda mean: rng.expovariate(1.0 / mean)
    if distribution == "lognormal":
        # mu chosen so that E[X] = exp(mu + sigma^2 / 2) equals the requested mean
        half_var = LOGNORMAL_SIGMA * LOGNORMAL_SIGMA / 2.0
        return lambda mean: rng.lognormvariate(math.log(mean) - half_var, LOGNORMAL_SIGMA)
    if distribution == "constant":
        return lambda mean: mean
    raise ValueError(f"unknown service-time distribution {distribution!r}")


class ServerFaults:
    """What is wrong with one server right now; ``SimServer.fault`` points here while any fault is active.

    It lives beside the server it describes: the fault controller (``faults.py``) builds and swaps these
    in, and the server's hot paths consult it.
    """

    __slots__ = ("auth_fail", "down", "http_503", "rng", "sftp_factor", "stall")

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.down = False
        self.auth_fail = 0.0  # percent
        self.http_503 = 0.0  # percent
        self.sftp_factor = 1.0
        self.stall: asyncio.Event | None = None  # set when the stall ends

    def admits(self, kind: str) -> bool:
        """Whether new work of ``kind`` ("portal" or "ssh") gets past the fault."""
        if self.down:
            return False
        return not (kind == "portal" and self.http_503 and self.rng.random() * 100.0 < self.http_503)

    def fails_auth(self) -> bool:
        """Whether this login fails (auth_fail)."""
        return bool(self.auth_fail) and self.rng.random() * 100.0 < self.auth_fail

    async def delay(self, op: str, seconds: float) -> float:
        """Wait out a stall, then the operation's service time (slower for SFTP under slow_sftp)."""
        stall = self.stall
        if stall is not None:
            await stall.wait()
        return seconds * self.sftp_factor if op == "sftp" else seconds


class SimServer:
    """One simulated backend: ``workers`` slots, a FIFO queue, session and work counters."""

    def __init__(
        self,
        server_id: str,
        group: ServerGroup,
        service: ServiceTimes,
        sampler: Callable[[float], float],
    ) -> None:
        self.id = server_id
        self.workers = group.workers
        self.max_sessions = group.max_sessions
        self.queue_limit = group.queue_limit
        self.speed = group.speed
        self._sampler = sampler
        # mean seconds per op on this server (speed already applied)
        self._means = {op: getattr(service, name) / 1000.0 / group.speed for op, name in OP_MEANS.items()}
        self._bytes_per_s = service.sftp_mb_per_s * 1e6 * group.speed
        self._busy = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self.portal_sessions = 0
        self.ssh_sessions = 0
        self.busy_s = 0.0
        self.served = dict.fromkeys(OPS, 0)
        self.refused = {"portal": 0, "ssh": 0}
        # Set by the fault controller while a fault is active on this server (faults.py); the hot
        # paths test it for None and nothing else when no fault is active.
        self.fault: ServerFaults | None = None

    # --- admission -----------------------------------------------------------------------------

    @property
    def queue_depth(self) -> int:
        """Operations waiting for a worker slot."""
        return len(self._waiters)

    @property
    def busy(self) -> int:
        """Worker slots in use."""
        return self._busy

    def has_room(self) -> bool:
        """Whether new work would be admitted: a free slot, or a queue not yet at its limit."""
        return self._busy < self.workers or len(self._waiters) < self.queue_limit

    def try_admit(self, kind: str) -> bool:
        """Whether new work of ``kind`` ("portal") fits; a refusal is counted."""
        if self.has_room() and (self.fault is None or self.fault.admits(kind)):
            return True
        self.refused[kind] += 1
        return False

    def try_open_ssh_session(self) -> bool:
        """Count a new gateway session if the server accepts one (sessions and queue below limits)."""
        if (
            self.ssh_sessions >= self.max_sessions
            or not self.has_room()
            or (self.fault is not None and not self.fault.admits("ssh"))
        ):
            self.refused["ssh"] += 1
            return False
        self.ssh_sessions += 1
        return True

    def close_ssh_session(self) -> None:
        """A session opened by :meth:`try_open_ssh_session` has ended."""
        self.ssh_sessions -= 1

    # --- service time --------------------------------------------------------------------------

    def service_time(self, op: str, nbytes: int = 0) -> float:
        """Seconds one ``op`` takes on this server (sampled; byte ops are size / rate)."""
        if op in BYTE_OPS:
            return nbytes / self._bytes_per_s
        return self._sampler(self._means[op])

    async def work(self, op: str, seconds: float | None = None) -> None:
        """Hold a worker slot for one operation's service time, waiting FIFO if all are busy."""
        if seconds is None:
            seconds = self._sampler(self._means[op])
        if self.fault is not None:
            seconds = await self.fault.delay(op, seconds)
        if self._busy < self.workers and not self._waiters:
            self._busy += 1
        else:
            await self._wait_for_slot()
        loop = asyncio.get_running_loop()
        start = loop.time()
        try:
            await asyncio.sleep(seconds)
        finally:
            self.busy_s += loop.time() - start
            self.served[op] += 1
            self._release()

    async def _wait_for_slot(self) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self._release()  # the slot was handed to us just before the cancel: pass it on
            else:
                self._waiters.remove(fut)
            raise

    def _release(self) -> None:
        # Hand the slot straight to the oldest waiter (FIFO); the busy count stays the same.
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                return
        self._busy -= 1

    def snapshot(self) -> dict[str, object]:
        """Counters for /metrics."""
        return {
            "workers": self.workers,
            "max_sessions": self.max_sessions,
            "queue_limit": self.queue_limit,
            "speed": self.speed,
            "portal_sessions": self.portal_sessions,
            "ssh_sessions": self.ssh_sessions,
            "busy": self._busy,
            "queue_depth": len(self._waiters),
            "served": dict(self.served),
            "served_total": sum(self.served.values()),
            "busy_seconds": round(self.busy_s, 6),
            "refused": dict(self.refused),
        }


class Cluster:
    """The farm's servers behind one load balancer (round-robin or least-connections)."""

    def __init__(self, farm: Farm, rng: random.Random | None = None) -> None:
        sampler = make_sampler(farm.service.distribution, rng or random.Random())
        self.servers = [
            SimServer(f"{g.name}-{i:02d}", g, farm.service, sampler)
            for g in farm.servers
            for i in range(1, g.count + 1)
        ]
        self.by_id = {s.id: s for s in self.servers}
        self.balancer = farm.balancer
        # One cursor per service, as a real balancer has one virtual server for the portal and one for
        # SSH: with a shared cursor, two servers and one portal request per SSH connection settle
        # into "portal on one server, SSH on the other".
        self._rr = {kind: itertools.cycle(range(len(self.servers))) for kind in ("portal", "ssh")}

    def pick(self, kind: Literal["portal", "ssh"]) -> SimServer:
        """The backend for a new portal session or session-less request, or a new SSH connection."""
        start = next(self._rr[kind])
        if self.balancer == "round-robin":
            server = self.servers[start]
            return server if server.fault is None or not server.fault.down else self._next_up(start)
        # least-connections: fewest open sessions, then least in-flight work; ties rotate so that an
        # idle farm still spreads new sessions over every server
        n = len(self.servers)
        best = None
        best_key: tuple[int, int] | None = None
        for k in range(n):
            s = self.servers[(start + k) % n]
            if s.fault is not None and s.fault.down:
                continue  # a dead server gets no new work (the balancer's health check)
            key = (s.portal_sessions + s.ssh_sessions, s.busy + s.queue_depth)
            if best_key is None or key < best_key:
                best, best_key = s, key
        return best if best is not None else self.servers[start]

    def _next_up(self, start: int) -> SimServer:
        """The next server after ``start`` that is not down (round-robin around a dead server)."""
        n = len(self.servers)
        for k in range(1, n):
            s = self.servers[(start + k) % n]
            if s.fault is None or not s.fault.down:
                return s
        return self.servers[start]  # all down: it refuses the work itself

    def snapshot(self) -> dict[str, dict[str, object]]:
        """Per-server counters, keyed by server id, in profile order."""
        return {s.id: s.snapshot() for s in self.servers}
