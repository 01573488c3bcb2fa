"""The SSL-VPN protocol ``vpn``: ``VPNSession`` (one employee's AnyConnect-compatible tunnel, greenlet side).

A profile's ``[gateway] protocol = "vpn"`` selects it (:mod:`locustfiles.lib.remote`); ``gateway.host``
and ``gateway.port`` name the VPN server (ocserv or another AnyConnect-compatible one). The operations
run as coroutines in the bridge's loop thread (:mod:`locustfiles.lib.vpnops`), timed there; the samples
are fired here. A logon is three samples: ``VPN tls`` (TCP + TLS handshake, certificate verified),
``VPN logon`` (the XML login form until the session cookie) and ``VPN tunnel_up`` (``CONNECT`` until
the tunnel's address). The one activity served is ``typing``: a burst of ``workload.burst_keys`` DPD
round trips through the tunnel at ``workload.typing_interval_ms`` (``VPN keepalive``, paced, with its
intended start): what a person keeping a tunnel busy at typing pace costs the gateway, the VPN's echo.

The certificate is verified against ``gateway.ca_file`` when the profile has that key, else against
``portal.ca_file`` (the organisation's CA that signs the portal), else the system CAs.
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
from dataclasses import dataclass
from typing import Any

from analysis.catalogue import Catalogue, Operation
from locustfiles.lib import remote
from locustfiles.lib.aiobridge import Bridge, Timed, get_bridge, timed
from locustfiles.lib.errors import OperationError, safe_error
from locustfiles.lib.runtime import Target, fire
from locustfiles.lib.vpnops import VPNConnection, VPNSpec
from targets.profile import Profile

VPN = "VPN"
_NET = ("refused", "reset", "timeout", "tls_error", "other")
_ERR = (*_NET, "auth_failed", "http_4xx", "http_5xx", "tunnel_refused")
VPN_CATALOGUE = Catalogue(
    ("vpn",),
    (
        Operation(VPN, "tls", "TCP + TLS handshake, the gateway certificate verified", errors=_NET),
        Operation(
            VPN,
            "logon",
            "XML login (init, username, password forms) until the session cookie",
            errors=_ERR,
            roles=("logon",),
        ),
        Operation(
            VPN,
            "tunnel_up",
            "CONNECT /CSCOSSLC/tunnel until 200 with the tunnel address (refused = throttled)",
            errors=_ERR,
        ),
        Operation(
            VPN,
            "keepalive",
            "one paced CSTP DPD request until its response (t_intended = the plan)",
            paced=True,
            rate_from="workload.typing_interval_ms",
            errors=_NET,
            activities=("typing",),
            roles=("echo",),
        ),
        Operation(VPN, "reconnect", "after a drop: TLS, logon, tunnel up again", errors=_ERR),
        Operation(VPN, "drop", "the tunnel ended while idle (disconnect packet, reset)", errors=_NET),
    ),
)
VPN_ACTIVITIES = VPN_CATALOGUE.activities


@dataclass(frozen=True, slots=True)
class PacedSample:
    """One paced keepalive of a burst."""

    t_intended: float  # epoch seconds it was planned for (t0 + k * interval)
    outcome: Timed[float]


def ca_file_of(profile: Profile) -> str:
    """The CA bundle that verifies the VPN gateway: ``gateway.ca_file``, else ``portal.ca_file``."""
    path = getattr(profile.gateway, "ca_file", "") or getattr(profile.portal, "ca_file", "")
    return str(profile.resolve(path)) if path else ""


def source_address(host: str, user_id: int) -> str | None:
    """A distinct 127.0.0.x source for each simulated user when the gateway is on loopback, else None.

    Servers throttle per source address (ocserv bans and rate-limits one address); on ``lo`` any
    127.0.0.0/8 address works as a source without setup. Addresses 127.0.0.2-254 rotate by user id.
    """
    try:
        if ipaddress.ip_address(host).version == 4 and ipaddress.ip_address(host).is_loopback:
            return f"127.0.0.{2 + user_id % 253}"
    except ValueError:
        pass
    return None


def spec_for(
    profile: Profile, username: str, password: str | None, user_id: int = 0, spread_sources: bool = False
) -> VPNSpec:
    """How to reach and verify the profile's VPN gateway as ``username``."""
    gw = profile.gateway
    return VPNSpec(
        host=gw.host,
        port=gw.port,
        username=username,
        password=password,
        ca_file=ca_file_of(profile),
        timeout_s=profile.workload.timeout_s,
        source_host=source_address(gw.host, user_id) if spread_sources else None,
    )


async def keepalive_burst(
    conn: VPNConnection, count: int, interval_s: float, timeout_s: float
) -> list[PacedSample]:
    """``count`` DPD round trips planned ``interval_s`` apart (bounded by count); stops at the first failure.

    A late round trip does not shift the plan: the next one starts at its planned time or at once,
    so the intended starts (and the corrected latency) keep the schedule.
    """
    loop = asyncio.get_running_loop()
    t0_wall, t0 = time.time(), loop.time()
    samples: list[PacedSample] = []
    for k in range(count):
        delay = t0 + k * interval_s - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        outcome = await timed(conn.dpd(), timeout_s)
        samples.append(PacedSample(t0_wall + k * interval_s, outcome))
        if not outcome.ok:
            break
    return samples


class VPNSession:
    """One AnyConnect-compatible tunnel, driven from a greenlet; every operation fires a sample.

    A :class:`locustfiles.lib.remote.RemoteSession`: operations never raise for target failures, they
    record them and return False (or the error).
    """

    #: bind each user's connections to its own 127.0.0.x (a test or a future profile key turns it on)
    spread_sources = False

    def __init__(self, environment: Any, target: Target, user_id: int, bridge: Bridge | None = None) -> None:
        self.environment = environment
        self.profile = target.profile
        self.user_id = user_id
        self.bridge = bridge or get_bridge()
        self.conn: VPNConnection | None = None
        self.server: str | None = None
        self.broken = False
        self._drop_recorded = False

    @property
    def usable(self) -> bool:
        """The tunnel is up and not broken."""
        return self.conn is not None and self.conn.up and not self.broken

    @property
    def dropped(self) -> bool:
        return self.conn is not None and self.conn.dropped

    @property
    def activities(self) -> tuple[str, ...]:
        return VPN_ACTIVITIES

    def logon(self, username: str, secret: str | None, *, record: bool = True) -> OperationError | None:
        """TLS, the XML login and the tunnel; the first failure, or None when the tunnel is up.

        ``record=False`` (a reconnect) fires no samples: the caller fires ``reconnect``.
        """
        self.abort()
        spec = spec_for(self.profile, username, secret, self.user_id, self.spread_sources)
        conn = self.conn = VPNConnection(spec)
        self.broken, self._drop_recorded = False, False
        timeout = self.profile.workload.timeout_s
        for name, op in (("tls", conn.tls), ("logon", conn.logon), ("tunnel_up", conn.tunnel_up)):
            outcome = self.bridge.call_timed(op(), timeout)
            if name == "tunnel_up" and outcome.ok:
                self.server = conn.tunnel_headers.get("x-cstp-server-name") or self.server
            if record:
                self._fire(name, outcome)
            if not outcome.ok:
                self.abort()
                return safe_error(outcome.error) or OperationError("other")
        return None

    def record_idle_drop(self) -> None:
        """Fire a ``drop`` sample for a tunnel that ended while idle (once)."""
        c = self.conn
        if c is None or not c.dropped or self._drop_recorded:
            return
        self._drop_recorded = True
        self._fire("drop", Timed(c.lost_at or time.time(), 0.0, None, c.lost))

    def record_reconnect(self, start: float, duration_ms: float, error: OperationError | None) -> None:
        """Fire the ``VPN reconnect`` sample of a reconnect the caller timed."""
        self._fire("reconnect", Timed(start, duration_ms, None, error))

    def run_activity(self, name: str, document: str) -> bool:
        """Run one activity (only ``typing``: a paced burst of keepalives); True on success."""
        if name != "typing":
            raise ValueError(f"the vpn protocol serves {VPN_ACTIVITIES}, not {name!r}")
        return self.typing()

    def typing(self) -> bool:
        """``workload.burst_keys`` DPD round trips at ``workload.typing_interval_ms`` (paced samples)."""
        conn = self.conn
        if conn is None:
            raise RuntimeError("VPNSession used before logon()")
        w = self.profile.workload
        burst = keepalive_burst(conn, w.burst_keys, w.typing_interval_ms / 1000.0, w.timeout_s)
        samples = self.bridge.run(burst)
        for s in samples:
            self._fire("keepalive", s.outcome, t_intended=s.t_intended)
        if not samples or not samples[-1].outcome.ok:
            self.broken = True
            if self.dropped:
                self._drop_recorded = True  # the failed keepalive already shows the drop
            return False
        return True

    def close(self) -> None:
        """Send the CSTP disconnect and close (bounded; no sample)."""
        conn, self.conn = self.conn, None
        if conn is not None:
            self.bridge.run(conn.close())

    def abort(self) -> None:
        """Drop the connection at once without waiting (a stopped user, a broken session)."""
        conn, self.conn = self.conn, None
        if conn is not None:
            self.bridge.loop.call_soon_threadsafe(conn.abort)

    def _fire(self, name: str, outcome: Timed[Any], *, t_intended: float | None = None) -> None:
        fire(
            self.environment,
            request_type=VPN,
            name=name,
            start_time=outcome.start_time,
            response_time=outcome.duration_ms,
            response_length=0,
            exception=safe_error(outcome.error),
            user_id=self.user_id,
            server=self.server,
            t_intended=t_intended,
        )


remote.register("vpn", VPN_CATALOGUE, VPNSession)
