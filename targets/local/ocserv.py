"""A real ocserv (AnyConnect-compatible SSL-VPN server, Debian ``ocserv``) on a loopback port.

Configured from a private folder the way an administrator would: plain password auth from an
``ocpasswd`` file (accounts made with ``ocpasswd``), a certificate from a per-run test CA
(:mod:`gateload.targets.local.tlsca`; clients verify it), TCP only on 127.0.0.1 (no UDP/DTLS), its own
``socket-file``, started as root with the workers run as Debian's ``ocserv`` account (``run-as-user``
as the package ships it) and isolated (``isolate-workers``).

Two variants of the anti-abuse settings:

- :data:`PRODUCTION_DEFAULTS`: the values of Debian's shipped ``/etc/ocserv/ocserv.conf`` (2 sessions
  per user, 100 ms between new connections, bans at score 80, at most 16 clients): what a load
  generator on one address meets on a stock server;
- :data:`RELAXED`: those limits off, for load tests that need many tunnels from one generator.

What those limits do in ocserv 1.1.6 (its source, and tests/test_vpn_tunnel.py): ``max-same-clients``
refuses a third tunnel of one account at ``CONNECT`` (``401 Cookie is not acceptable``, then a TLS
``access_denied`` alert). ``max-clients`` counts connections (worker processes, logging-in ones too,
not tunnels): a connection accepted at the cap is closed at once, and the listener then stops
accepting until fewer than 90 % of the cap are connected, so later clients wait in the kernel's
accept queue (a burst of 20 got 15 in and 5 waiting). ``rate-limit-ms`` pauses accepting only while
ocserv's sec-mod has a backlog, so on a quiet server it does not limit new connections to 10/s.
Bans never apply to a client on the subnet of one of the server's interfaces ("Not applying ban to
local IP"): 127.0.0.0/8 is never banned, so bans cannot be tested on loopback.

Each session gets a tun device (``/dev/net/tun``, present here) named ``glvpn<N>`` in the current
network namespace, with an address from a per-instance private /24 so parallel instances never share
one; ocserv removes it when the session ends. Its server end is the /24's first host
(:attr:`Ocserv.gateway_address`): the host's kernel answers an ICMP echo sent through the tunnel to
it, the service behind the server that ``VPN ping`` measures. No network namespace is needed: ocserv
starts sessions in this container as it is.

Usage::

    with Ocserv(tmp / "vpn", accounts=20, relaxed=True) as vpn:
        ...  # vpn.host, vpn.port, vpn.ca.ca_cert, vpn.credentials (username,password CSV), vpn.accounts

``Ocserv(..., credentials=path)`` takes the accounts of an existing ``username,password`` CSV instead
(a portal's directory, so one employee has one password for the portal and the VPN).
"""

from __future__ import annotations

import contextlib
import ipaddress
import pwd
import secrets
import stat
import subprocess
from pathlib import Path

from gateload.targets.local.accounts import new_accounts, read_accounts, write_credentials
from gateload.targets.local.process import (
    Daemon,
    Launcher,
    MissingTool,
    free_port,
    require_binary,
    require_root,
)
from gateload.targets.local.tlsca import TestCA, make_test_ca

#: Debian's shipped anti-abuse and timer settings (ocserv 1.1, /etc/ocserv/ocserv.conf).
PRODUCTION_DEFAULTS = {
    "max-clients": "16",
    "max-same-clients": "2",
    "rate-limit-ms": "100",
    "max-ban-score": "80",
    "ban-reset-time": "1200",
    "auth-timeout": "240",
    "min-reauth-time": "300",
    "cookie-timeout": "300",
    "keepalive": "32400",
    "dpd": "90",
    "mobile-dpd": "1800",
}
#: The "relaxed" variant: no per-user session limit, no client cap, no rate limit, no bans (0 = off).
RELAXED = PRODUCTION_DEFAULTS | {
    "max-clients": "0",
    "max-same-clients": "0",
    "rate-limit-ms": "0",
    "max-ban-score": "0",
}
#: Debian's shipped TLS priorities (TLS 1.2 only).
TLS_PRIORITIES = "NORMAL:%SERVER_PRECEDENCE:%COMPAT:-VERS-SSL3.0:-VERS-TLS1.0:-VERS-TLS1.1:-VERS-TLS1.3"
USER_PREFIX = "gl-vpn-"


class Ocserv(Launcher):
    """A foreground ``ocserv -f -c <private config>`` on 127.0.0.1 and a free TCP port."""

    def __init__(
        self,
        state_dir: Path,
        *,
        accounts: int = 20,
        relaxed: bool = False,
        host: str = "127.0.0.1",
        credentials: Path | None = None,
    ) -> None:
        self.binary = require_binary("ocserv", "ocserv")
        self.ocpasswd = require_binary("ocpasswd", "ocserv")
        require_root("start ocserv (tun devices, worker isolation)")
        if not Path("/dev/net/tun").exists():
            raise MissingTool("ocserv needs /dev/net/tun; run where the tun device exists")
        self.state_dir = state_dir
        self.n_accounts = accounts
        self.source_credentials = credentials  # accounts from this CSV instead of new ones
        self.relaxed = relaxed
        self.settings = RELAXED if relaxed else PRODUCTION_DEFAULTS
        self.host = host
        self.port = 0
        self.ca: TestCA | None = None
        self.accounts: list[tuple[str, str]] = []
        # A private /24 per instance (10.200-249.x.0): parallel instances never hand out one address.
        self.network = f"10.{200 + secrets.randbelow(50)}.{secrets.randbelow(256)}.0"
        self._daemon: Daemon | None = None

    @property
    def daemon(self) -> Daemon | None:
        return self._daemon

    @property
    def gateway_address(self) -> str:
        """The server's own end of every tunnel (the first host of its /24)."""
        return str(ipaddress.IPv4Address(self.network) + 1)

    @property
    def passwd(self) -> Path:
        return self.state_dir / "ocpasswd"

    @property
    def credentials(self) -> Path:
        """The accounts as a ``username,password`` CSV (owner-only), for a profile's credentials file."""
        return self.state_dir / "credentials.csv"

    def _prepare(self) -> None:
        """The folder, the test CA and the accounts (``ocpasswd``, random passwords)."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.state_dir.chmod(0o755)  # the workers (run-as-user) reach the socket file in it
        _make_traversable(self.state_dir)
        self.ca = make_test_ca(self.state_dir / "tls")
        with contextlib.suppress(FileNotFoundError):
            self.passwd.unlink()
        self.accounts = (
            read_accounts(self.source_credentials)
            if self.source_credentials is not None
            else new_accounts(USER_PREFIX, self.n_accounts)
        )
        for name, password in self.accounts:
            # ocpasswd asks twice on its stdin; the password never appears on a command line.
            subprocess.run(
                [self.ocpasswd, "-c", str(self.passwd), name],
                input=f"{password}\n{password}\n",
                text=True,
                check=True,
                capture_output=True,
            )
        write_credentials(self.credentials, self.accounts)

    def _make_daemon(self) -> Daemon:
        self.port = free_port(self.host)
        config = self.state_dir / "ocserv.conf"
        config.write_text(self.config_text())
        argv = [self.binary, "-f", "-c", str(config)]
        name = f"ocserv {'relaxed' if self.relaxed else 'production-defaults'}"
        return Daemon(name, argv, [(self.host, self.port)], self.state_dir / "ocserv.log")

    def config_text(self) -> str:
        """The private ocserv.conf: Debian's shipped settings with this instance's files and port."""
        assert self.ca is not None, "_prepare() makes the CA"
        run_as = "ocserv" if _account_exists("ocserv") else "nobody"
        lines = [
            f'auth = "plain[passwd={self.passwd}]"',
            f"listen-host = {self.host}",
            f"tcp-port = {self.port}",
            # no udp-port: TCP (CSTP) only, no DTLS
            f"socket-file = {self.state_dir / 'ocserv.sock'}",
            f"pid-file = {self.state_dir / 'ocserv.pid'}",
            f"server-cert = {self.ca.server_cert}",
            f"server-key = {self.ca.server_key}",
            f"run-as-user = {run_as}",
            f"run-as-group = {run_as if run_as == 'ocserv' else 'nogroup'}",
            "isolate-workers = true",
            f'tls-priorities = "{TLS_PRIORITIES}"',
            *(f"{k} = {v}" for k, v in self.settings.items()),
            "use-occtl = false",
            "log-level = 1",
            "device = glvpn",
            "predictable-ips = true",
            f"ipv4-network = {self.network}",
            "ipv4-netmask = 255.255.255.0",
            "cisco-client-compat = true",
            "ping-leases = false",
        ]
        return "\n".join(lines) + "\n"


def _make_traversable(folder: Path) -> None:
    """Add search permission for others (o+x) to every ancestor lacking it; never removes bits."""
    for parent in folder.resolve().parents:
        mode = parent.stat().st_mode
        if not mode & stat.S_IXOTH:
            parent.chmod(stat.S_IMODE(mode) | stat.S_IXOTH)


def _account_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True
