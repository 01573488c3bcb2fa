"""The OpenVPN protocol ``openvpn``: ``OpenVPNSession`` (one employee's tunnel through Debian's client).

A profile's ``[gateway] protocol = "openvpn"`` selects it (:mod:`gateload.locustfiles.lib.remote`);
``gateway.host`` and ``gateway.port`` name the OpenVPN server (UDP, as Debian's sample server.conf
ships; a TCP server would need a profile key for the transport, not there yet).
Each session is one ``openvpn`` client process without a tun device, driven over its management
interface (:mod:`gateload.locustfiles.lib.openvpnops`); the password goes over that socket only.

A logon is these samples, timed in the loop thread as the client's notifications arrive:

- ``OVPN start``: the client process up to its management hold (the generator's cost, not the server's);
- ``OVPN tls``: hold release until the TLS handshake and key exchange completed (first packets, TLS,
  the credentials sent; the server runs its password check here, before its half of the key exchange);
- ``OVPN config``: PUSH_REQUEST until the server's PUSH_REPLY (the pushed config; measured p50 0.6 ms on
  loopback, as the password was checked already); a rejected password shows here as ``auth_failed``
  (the server answers the PUSH_REQUEST with AUTH_FAILED);
- ``OVPN tunnel_up``: hold release until ``>STATE:...,CONNECTED``, the logon time as the client sees it
  (an aggregate: it spans tls and config, so it is never counted twice in throughput or errors).

The activity served is ``typing``: ``OVPN hold``, the tunnel held for ``workload.burst_keys`` x
``workload.typing_interval_ms`` while it must stay ``CONNECTED``. It is *not* a round trip: a client
without a tun device sends no data we could time, and the management interface's ``state`` command
only asks the local process. OpenVPN's own keepalive (the pushed ``ping 10``, ``ping-restart 120``)
keeps the tunnel alive during the hold; the sample's length is the bytes the client received meanwhile.
A tunnel that ends under the session (the server restarts it, kicks it for a second logon of the same
account, or goes away) is a ``drop``, and the user reconnects with a new client process.

The certificate is verified against ``gateway.ca_file`` when the profile has that key, else
``portal.ca_file`` (OpenVPN needs a CA file; it never uses the system CAs). With
``gateway.source_addresses`` each user's client binds to its own address (``--local ADDR --lport 0``);
OpenVPN's own limits are per server and per account, not per address, so it is rarely needed.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from gateload.analysis.catalogue import Catalogue, Operation
from gateload.locustfiles.lib import remote
from gateload.locustfiles.lib.aiobridge import Timed
from gateload.locustfiles.lib.bridged import BridgedSession
from gateload.locustfiles.lib.errors import OperationError, classify
from gateload.locustfiles.lib.openvpnops import OpenVPNClient, OpenVPNSpec

OVPN = "OVPN"
_NET = ("refused", "reset", "timeout", "tls_error", "other")
_ERR = (*_NET, "auth_failed")
OPENVPN_CATALOGUE = Catalogue(
    ("openvpn",),
    (
        Operation(
            OVPN,
            "start",
            "the openvpn client process up to its management hold (generator side)",
            errors=_NET,
        ),
        Operation(
            OVPN, "tls", "hold release until the TLS handshake and key exchange completed", errors=_ERR
        ),
        Operation(OVPN, "config", "PUSH_REQUEST until the server's PUSH_REPLY (pushed config)", errors=_ERR),
        Operation(
            OVPN,
            "tunnel_up",
            "hold release until >STATE CONNECTED: the tunnel's logon time (spans tls and config)",
            errors=_ERR,
            roles=("logon",),
            aggregate=True,
        ),
        Operation(
            OVPN,
            "hold",
            "the tunnel held burst_keys x typing_interval_ms, staying CONNECTED (not a round trip)",
            errors=_NET,
            activities=("typing",),
        ),
        Operation(OVPN, "reconnect", "after a drop: a new client process until CONNECTED", errors=_ERR),
        Operation(OVPN, "drop", "the tunnel ended while idle (restart, kicked, server gone)", errors=_NET),
    ),
)
OPENVPN_ACTIVITIES = OPENVPN_CATALOGUE.activities


class OpenVPNSession(BridgedSession[OpenVPNClient]):
    """One OpenVPN tunnel (one client process), driven from a greenlet; every operation fires a sample."""

    kind = OVPN
    served = OPENVPN_ACTIVITIES

    def _ready(self, conn: OpenVPNClient) -> bool:
        return conn.up

    def spec(self, username: str, password: str | None) -> OpenVPNSpec:
        """How to reach and verify the profile's OpenVPN server as ``username``."""
        gw = self.profile.gateway
        return OpenVPNSpec(
            host=gw.host,
            port=gw.port,
            username=username,
            password=password,
            ca_file=self.profile.gateway_ca_file(),
            timeout_s=self.profile.workload.timeout_s,
            source_host=self.source,  # gateway.source_addresses: this user's 127.0.0.x
        )

    def logon(self, username: str, secret: str | None, *, record: bool = True) -> OperationError | None:
        """A client process, TLS, the pushed config, CONNECTED; the first failure, or None when up.

        ``record=False`` (a reconnect) fires no samples: the caller fires ``reconnect``.
        """
        conn = self._begin(OpenVPNClient(self.spec(username, secret)))
        began: list[float] = []

        def note(name: str, outcome: Timed[Any]) -> Timed[Any] | None:
            if name == "tls":
                began.append(outcome.start_time)
            # From the client's notification times, as tunnel_up is: tls and config are then exact parts
            # of it, whatever the loop thread's wake-up took (seen 1.2 ms over on a busy machine).
            tls_ms, reply_ms = conn.step_ms("TLS_DONE"), conn.step_ms("PUSH_REPLY")
            if not outcome.ok or tls_ms is None:
                return None
            if name == "tls":
                return dataclasses.replace(outcome, duration_ms=tls_ms)
            if name == "config" and reply_ms is not None:
                return dataclasses.replace(outcome, duration_ms=reply_ms - tls_ms)
            return None

        steps = (("start", conn.start), ("tls", conn.tls), ("config", conn.config))
        error = self._steps(steps, record, note)
        if error is None:
            outcome = self.bridge.call_timed(conn.connected(), self.profile.workload.timeout_s)
            if not outcome.ok:
                self.abort()
                error = OperationError(classify(outcome.error) or "other", "not CONNECTED")
        if record and began:
            # the aggregate logon row: from hold release to CONNECTED (or to the failure)
            start = began[0]
            ms = conn.tunnel_ms() if error is None else (time.time() - start) * 1000.0
            self._fire(OVPN, "tunnel_up", Timed(start, ms, None, error))
        return error

    def run_activity(self, name: str, document: str) -> bool:
        """Run one activity (only ``typing``: hold the tunnel); True on success."""
        if name != "typing":
            raise ValueError(f"the openvpn protocol serves {OPENVPN_ACTIVITIES}, not {name!r}")
        return self.hold()

    def hold(self) -> bool:
        """Hold the tunnel ``burst_keys`` x ``typing_interval_ms``; a tunnel that ends meanwhile fails it."""
        conn = self._require()
        w = self.profile.workload
        seconds = w.burst_keys * w.typing_interval_ms / 1000.0
        outcome = self.bridge.call_timed(conn.hold(seconds), seconds + w.timeout_s)
        if not self._after(OVPN, "hold", outcome):
            self._broke()
            return False
        return True


remote.register("openvpn", OPENVPN_CATALOGUE, OpenVPNSession, verifies_tls=True)
