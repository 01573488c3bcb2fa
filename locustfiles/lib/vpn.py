"""The SSL-VPN protocol ``vpn``: ``VPNSession`` (one employee's AnyConnect-compatible tunnel, greenlet side).

A profile's ``[gateway] protocol = "vpn"`` selects it (:mod:`gateload.locustfiles.lib.remote`);
``gateway.host`` and ``gateway.port`` name the VPN server (ocserv or another AnyConnect-compatible one). The
operations run as coroutines in the bridge's loop thread (:mod:`gateload.locustfiles.lib.vpnops`), timed
there; the samples are fired here. A logon is three samples: ``VPN tls`` (TCP + TLS handshake, certificate
verified), ``VPN logon`` (the XML login form until the session cookie) and ``VPN tunnel_up`` (``CONNECT``
until the tunnel's address). Two activities are served:

- ``typing``: a burst of ``workload.burst_keys`` DPD round trips through the tunnel at
  ``workload.typing_interval_ms`` (``VPN keepalive``, paced, with its intended start): what a person
  keeping a tunnel busy at typing pace costs the gateway, the VPN's echo;
- ``tunnel``: a request through the tunnel (``VPN ping``): an ICMP echo in a CSTP data frame to
  ``gateway.tunnel_ping`` (default: the server's own end of the tunnel), until its reply.

The certificate is verified against ``gateway.ca_file``, else ``portal.ca_file`` (the organisation's
CA that signs the portal), else the system CAs. With ``gateway.source_addresses`` each user connects
from its own address, so the server's per-address limits see one client per simulated user.

Error classes: ``auth_failed`` (a rejected password), ``throttled`` (the server's anti-abuse limits:
ocserv's max-same-clients refuses the tunnel, its max-clients cap and bans close the connection in
the TLS handshake), ``refused`` (nothing listens), ``tls_error`` (the certificate), ``timeout``
(including a connection ocserv leaves waiting while it stops accepting at its cap), ``http_*``.
"""

from __future__ import annotations

from typing import Any

from gateload.analysis.catalogue import Catalogue, Operation
from gateload.locustfiles.lib import remote
from gateload.locustfiles.lib.aiobridge import Timed
from gateload.locustfiles.lib.bridged import BridgedSession, paced_burst, source_for
from gateload.locustfiles.lib.errors import OperationError
from gateload.locustfiles.lib.vpnops import VPNConnection, VPNSpec
from gateload.targets.profile import Profile

VPN = "VPN"
_NET = ("refused", "reset", "timeout", "tls_error", "throttled", "other")
_ERR = (*_NET, "auth_failed", "http_503", "http_4xx", "http_5xx", "tunnel_refused")
VPN_CATALOGUE = Catalogue(
    ("vpn",),
    (
        Operation(
            VPN,
            "tls",
            "TCP + TLS handshake, certificate verified (throttled: closed by the server's limits)",
            errors=_NET,
        ),
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
            "CONNECT /CSCOSSLC/tunnel until 200 with the tunnel address (throttled: a session limit)",
            errors=_ERR,
        ),
        Operation(
            VPN,
            "keepalive",
            "one paced CSTP DPD request until its response (t_intended = the plan)",
            paced=True,
            burst=True,
            rate_from="workload.typing_interval_ms",
            errors=_NET,
            activities=("typing",),
            roles=("echo",),
        ),
        Operation(
            VPN,
            "ping",
            "an ICMP echo through the tunnel to gateway.tunnel_ping until its reply (bytes sent)",
            errors=_NET,
            activities=("tunnel",),
        ),
        Operation(VPN, "reconnect", "after a drop: TLS, logon, tunnel up again", errors=_ERR),
        Operation(VPN, "drop", "the tunnel ended while idle (disconnect packet, reset)", errors=_NET),
    ),
)
VPN_ACTIVITIES = VPN_CATALOGUE.activities


def spec_for(profile: Profile, username: str, password: str | None, user_id: int = 0) -> VPNSpec:
    """How to reach and verify the profile's VPN gateway as ``username`` (user ``user_id``'s source)."""
    gw = profile.gateway
    return VPNSpec(
        host=gw.host,
        port=gw.port,
        username=username,
        password=password,
        ca_file=profile.gateway_ca_file(),
        timeout_s=profile.workload.timeout_s,
        source_host=source_for(profile, user_id),
    )


class VPNSession(BridgedSession[VPNConnection]):
    """One AnyConnect-compatible tunnel, driven from a greenlet; every operation fires a sample.

    A :class:`gateload.locustfiles.lib.remote.RemoteSession` on the shared
    :class:`~gateload.locustfiles.lib.bridged.BridgedSession`: operations never raise for target failures,
    they record them and return False (or the error).
    """

    kind = VPN
    served = VPN_ACTIVITIES

    def _ready(self, conn: VPNConnection) -> bool:
        return conn.up

    def logon(self, username: str, secret: str | None, *, record: bool = True) -> OperationError | None:
        """TLS, the XML login and the tunnel; the first failure, or None when the tunnel is up.

        ``record=False`` (a reconnect) fires no samples: the caller fires ``reconnect``.
        """
        spec = spec_for(self.profile, username, secret, self.user_id)
        conn = self._begin(VPNConnection(spec))

        def learn_server(name: str, outcome: Timed[Any]) -> None:
            if name == "tunnel_up" and outcome.ok:  # X-CSTP-Server-Name names the gateway
                self.server = conn.tunnel_headers.get("x-cstp-server-name") or self.server

        steps = (("tls", conn.tls), ("logon", conn.logon), ("tunnel_up", conn.tunnel_up))
        return self._steps(steps, record, learn_server)

    def run_activity(self, name: str, document: str) -> bool:
        """Run one activity (``typing``: a paced burst of keepalives; ``tunnel``: a ping); True on success."""
        if name == "typing":
            return self.typing()
        if name == "tunnel":
            return self.ping()
        raise ValueError(f"the vpn protocol serves {VPN_ACTIVITIES}, not {name!r}")

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

    def ping(self) -> bool:
        """One ICMP echo through the tunnel to ``gateway.tunnel_ping`` (or the tunnel's gateway)."""
        conn = self._require()
        dst = self.profile.gateway.tunnel_ping or conn.gateway_address()
        outcome = self.bridge.call_timed(conn.ping(dst), self.profile.workload.timeout_s)
        return self._after(VPN, "ping", outcome)


remote.register("vpn", VPN_CATALOGUE, VPNSession, verifies_tls=True)
