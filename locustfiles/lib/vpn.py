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

import ipaddress
from typing import Any

from analysis.catalogue import Catalogue, Operation
from locustfiles.lib import remote
from locustfiles.lib.aiobridge import Timed
from locustfiles.lib.bridged import BridgedSession, paced_burst
from locustfiles.lib.errors import OperationError
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


class VPNSession(BridgedSession[VPNConnection]):
    """One AnyConnect-compatible tunnel, driven from a greenlet; every operation fires a sample.

    A :class:`locustfiles.lib.remote.RemoteSession` on the shared
    :class:`~locustfiles.lib.bridged.BridgedSession`: operations never raise for target failures,
    they record them and return False (or the error).
    """

    kind = VPN
    served = VPN_ACTIVITIES
    #: bind each user's connections to its own 127.0.0.x (a test or a future profile key turns it on)
    spread_sources = False

    def _ready(self, conn: VPNConnection) -> bool:
        return conn.up

    def logon(self, username: str, secret: str | None, *, record: bool = True) -> OperationError | None:
        """TLS, the XML login and the tunnel; the first failure, or None when the tunnel is up.

        ``record=False`` (a reconnect) fires no samples: the caller fires ``reconnect``.
        """
        spec = spec_for(self.profile, username, secret, self.user_id, self.spread_sources)
        conn = self._begin(VPNConnection(spec))

        def learn_server(name: str, outcome: Timed[Any]) -> None:
            if name == "tunnel_up" and outcome.ok:  # X-CSTP-Server-Name names the gateway
                self.server = conn.tunnel_headers.get("x-cstp-server-name") or self.server

        steps = (("tls", conn.tls), ("logon", conn.logon), ("tunnel_up", conn.tunnel_up))
        return self._steps(steps, record, learn_server)

    def run_activity(self, name: str, document: str) -> bool:
        """Run one activity (only ``typing``: a paced burst of keepalives); True on success."""
        if name != "typing":
            raise ValueError(f"the vpn protocol serves {VPN_ACTIVITIES}, not {name!r}")
        return self.typing()

    def typing(self) -> bool:
        """``workload.burst_keys`` DPD round trips at ``workload.typing_interval_ms`` (paced samples)."""
        conn = self._require()
        w = self.profile.workload
        burst = paced_burst(conn.dpd, w.burst_keys, w.typing_interval_ms / 1000.0, w.timeout_s)
        samples = self.bridge.run(burst)
        for s in samples:
            self._fire(VPN, "keepalive", s.outcome, t_intended=s.t_intended)
        if not samples or not samples[-1].outcome.ok:
            self._broke()
            return False
        return True


remote.register("vpn", VPN_CATALOGUE, VPNSession)
