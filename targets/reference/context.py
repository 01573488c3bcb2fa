"""What the farm's services share: the cluster, the ticket book, the state folder and live addresses."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import asyncssh

from gateload.targets.profile import Profile
from gateload.targets.reference.capacity import Cluster, SimServer
from gateload.targets.reference.faults import FaultController
from gateload.targets.reference.logins import AccountLogins
from gateload.targets.reference.state import FarmState
from gateload.targets.reference.tickets import TicketBook

#: Value of the server header for answers that no simulated backend gave (health, metrics, 404s).
BALANCER_ID = "lb"


@dataclass
class FarmContext:
    profile: Profile
    cluster: Cluster
    tickets: TicketBook
    state: FarmState
    gateway_host: str = ""
    gateway_port: int = 0
    # local port of a tunnel's TCP connection to the intranet -> the gateway server it came through
    tunnel_sources: dict[int, SimServer] = field(default_factory=dict)
    # open SSH connections, so that stop() can close them (asyncssh's listener leaves them open)
    ssh_connections: set[asyncssh.SSHServerConnection] = field(default_factory=set)
    started_at: float = field(default_factory=time.time)
    faults: FaultController | None = None  # fault injection (faults.py); None in bare test contexts
    logins: AccountLogins = field(default_factory=AccountLogins)  # SSH sessions per account (logins.py)

    def snapshot(self) -> dict[str, object]:
        """Everything /metrics reports, as plain data (no secrets)."""
        return {
            "farm": self.profile.target.name,
            "uptime_s": round(time.time() - self.started_at, 3),
            "balancer": self.cluster.balancer,
            "tickets": {
                "issued": self.tickets.issued,
                "consumed": self.tickets.consumed,
                "rejected": self.tickets.rejected,
            },
            "servers": self.cluster.snapshot(),
            "logins": self.logins.snapshot(),
            **({"faults": self.faults.snapshot()} if self.faults is not None else {}),
        }
