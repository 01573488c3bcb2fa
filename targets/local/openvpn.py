"""A real OpenVPN server (Debian ``openvpn``, server mode) on a loopback port.

Configured from a private folder the way an administrator would, starting from Debian's sample
``server.conf`` (``/usr/share/doc/openvpn/examples/sample-config-files/server.conf``): UDP, ``dev tun``,
``topology subnet``, ``server <net> 255.255.255.0``, ``keepalive 10 120``, ``persist-key``,
``persist-tun``, ``explicit-exit-notify 1``; what the sample leaves commented out (``max-clients``,
``duplicate-cn``, ``tls-auth``, ``user nobody``) stays at OpenVPN's built-in defaults. What a
username/password deployment adds:

- TLS with a per-run test CA (:mod:`gateload.targets.local.tlsca`, EC keys, so ``dh none``: ECDHE only);
- the password checked by an ``auth-user-pass-verify`` script (``via-file``: the password never goes
  into the environment or a command line) against a file of salted SHA-256 hashes;
- no client certificates (``verify-client-cert none``) and ``username-as-common-name``, so OpenVPN's
  per-name rules apply to accounts (without it every password-only client would be ``UNDEF``).

Two variants of the anti-abuse settings:

- :data:`PRODUCTION_DEFAULTS`: what the sample ships (OpenVPN 2.6 defaults): at most 100 answered
  initial packets per 10 s (``connect-freq-initial``), 1024 clients, and **one session per account**
  (no ``duplicate-cn``: a second logon of the same user disconnects the first, and the server does
  not tell that client: it stops hearing from the server). Measured (``bench/bench_openvpn.py``):
  ``connect-freq-initial`` does not slow a storm of genuine clients (150 logons in ~10 s, none
  waited for a second initial packet): as its manual says, attempts that complete the handshake are
  not counted; it limits spoofed or abandoned ones;
- :data:`RELAXED`: ``duplicate-cn`` and no initial-packet limit, for load tests that share accounts or
  storm the server from one generator.

The server needs a tun device (``/dev/net/tun``, present here): it opens ``gltun<N>`` in the current
network namespace with an address from a per-instance private /24, so parallel instances never share
one; it is removed when the server stops. No namespace is needed: clients connect over loopback.

``OpenVPNServer(..., credentials=path)`` takes the accounts of an existing ``username,password`` CSV
(a portal's, so one directory serves both) instead of making new ones.

Usage::

    with OpenVPNServer(tmp / "ovpn", accounts=20, relaxed=True) as vpn:
        ...  # vpn.host, vpn.port, vpn.ca.ca_cert, vpn.credentials (username,password CSV), vpn.accounts
"""

from __future__ import annotations

import hashlib
import secrets
import socket
from pathlib import Path

from gateload.targets.local.accounts import new_accounts, read_accounts, write_credentials, write_private
from gateload.targets.local.process import Daemon, Launcher, MissingTool, require_binary, require_root
from gateload.targets.local.tlsca import TestCA, make_test_ca

#: Debian's sample server.conf as shipped (what it leaves commented out is OpenVPN 2.6's default).
PRODUCTION_DEFAULTS: dict[str, str | None] = {
    "keepalive": "10 120",
    "connect-freq-initial": "100 10",  # the 2.6 default, written out so the variant shows it
    "max-clients": "1024",  # the built-in default (the sample's ";max-clients 100" is commented out)
}
#: The "relaxed" variant: accounts may hold several sessions, no limit on answered initial packets.
RELAXED: dict[str, str | None] = PRODUCTION_DEFAULTS | {
    "duplicate-cn": None,  # a flag: several sessions per account
    "connect-freq-initial": "100000 1",
}
USER_PREFIX = "gl-ovpn-"

#: The auth-user-pass-verify script: line 1 of the file is the username, line 2 the password. The
#: password reaches sha256sum on a pipe from the shell's printf builtin, never a command line.
VERIFY_SCRIPT = """#!/bin/sh
# OpenVPN auth-user-pass-verify (via-file): exit 0 accepts the password.
set -u
db={passwd}
user=$(sed -n 1p "$1")
pass=$(sed -n 2p "$1")
line=$(grep -m1 -F "$user:" "$db") || exit 1
[ "${{line%%:*}}" = "$user" ] || exit 1
rest=${{line#*:}}
salt=${{rest%%:*}}
want=${{rest#*:}}
got=$(printf '%s%s' "$salt" "$pass" | sha256sum | cut -d' ' -f1)
[ "$got" = "$want" ]
"""


def hash_line(username: str, password: str, salt: str | None = None) -> str:
    """One line of the password file: ``username:salt:sha256(salt + password)``."""
    salt = salt or secrets.token_hex(8)
    return f"{username}:{salt}:{hashlib.sha256((salt + password).encode()).hexdigest()}"


def free_udp_port(host: str = "127.0.0.1") -> int:
    """A UDP port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class OpenVPNServer(Launcher):
    """A foreground ``openvpn --config <private server.conf>`` on 127.0.0.1 and a free UDP port."""

    def __init__(
        self,
        state_dir: Path,
        *,
        accounts: int = 20,
        relaxed: bool = False,
        host: str = "127.0.0.1",
        credentials: Path | None = None,
    ) -> None:
        self.binary = require_binary("openvpn", "openvpn")
        require_root("start an OpenVPN server (tun device)")
        if not Path("/dev/net/tun").exists():
            raise MissingTool("the OpenVPN server needs /dev/net/tun; run where the tun device exists")
        self.state_dir = state_dir
        self.n_accounts = accounts
        self.source_credentials = credentials  # accounts of this CSV (e.g. a portal's) instead of new ones
        self.relaxed = relaxed
        self.settings = RELAXED if relaxed else PRODUCTION_DEFAULTS
        self.host = host
        self.port = 0
        self.proto = "udp"
        self.ca: TestCA | None = None
        self.accounts: list[tuple[str, str]] = []
        # A private /24 per instance (10.150-199.x.0): parallel instances never hand out one address.
        self.network = f"10.{150 + secrets.randbelow(50)}.{secrets.randbelow(256)}.0"
        self.device = f"gltun{secrets.randbelow(10**6)}"
        self._daemon: Daemon | None = None

    @property
    def daemon(self) -> Daemon | None:
        return self._daemon

    @property
    def passwd(self) -> Path:
        return self.state_dir / "passwd"

    @property
    def credentials(self) -> Path:
        """The accounts as a ``username,password`` CSV (owner-only), for a profile's credentials file."""
        return self.state_dir / "credentials.csv"

    @property
    def log(self) -> Path:
        return self.state_dir / "openvpn.log"

    def _prepare(self) -> None:
        """The folder, the test CA, the accounts and the verify script."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.state_dir.chmod(0o700)
        self.ca = make_test_ca(self.state_dir / "tls")
        self.accounts = (
            read_accounts(self.source_credentials)
            if self.source_credentials is not None
            else new_accounts(USER_PREFIX, self.n_accounts)
        )
        write_private(self.passwd, "".join(hash_line(u, p) + "\n" for u, p in self.accounts))
        script = self.state_dir / "verify.sh"
        write_private(script, VERIFY_SCRIPT.format(passwd=_sh_quote(str(self.passwd))))
        script.chmod(0o700)
        (self.state_dir / "tmp").mkdir(mode=0o700, exist_ok=True)
        write_credentials(self.credentials, self.accounts)

    def _make_daemon(self) -> Daemon:
        self.port = free_udp_port(self.host)
        config = self.state_dir / "server.conf"
        config.write_text(self.config_text())
        argv = [self.binary, "--config", str(config)]
        name = f"openvpn server {'relaxed' if self.relaxed else 'production-defaults'}"
        # A UDP port cannot be probed by connecting: the daemon is up when its log says so.
        return _UDPDaemon(name, argv, [], self.log)

    def config_text(self) -> str:
        """The private server.conf: Debian's sample with this instance's files, port and network."""
        assert self.ca is not None, "_prepare() makes the CA"
        lines = [
            f"local {self.host}",
            f"port {self.port}",
            f"proto {self.proto}",
            f"dev {self.device}",
            "dev-type tun",
            f"ca {self.ca.ca_cert}",
            f"cert {self.ca.server_cert}",
            f"key {self.ca.server_key}",
            "dh none",
            "topology subnet",
            f"server {self.network} 255.255.255.0",
            "persist-key",
            "persist-tun",
            "explicit-exit-notify 1",
            "verb 3",
            # username/password logon, as a password-only deployment configures it
            "script-security 2",
            f"auth-user-pass-verify {self.state_dir / 'verify.sh'} via-file",
            f"tmp-dir {self.state_dir / 'tmp'}",
            "verify-client-cert none",
            "username-as-common-name",
            *(k if v is None else f"{k} {v}" for k, v in self.settings.items()),
        ]
        return "\n".join(lines) + "\n"

    def log_text(self) -> str:
        """The server's log so far (it never holds a password)."""
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""


class _UDPDaemon(Daemon):
    """A daemon whose readiness is a log line (OpenVPN's ``Initialization Sequence Completed``)."""

    def start(self) -> Daemon:
        import time

        super().start()  # no ports: returns once the process is spawned
        deadline = time.monotonic() + self.start_timeout_s
        while True:
            text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
            if "Initialization Sequence Completed" in text:
                return self
            if self.proc is None or self.proc.poll() is not None or time.monotonic() > deadline:
                tail = self.log_tail()
                self.stop()
                if "Address already in use" in text:
                    raise RuntimeError(f"{self.name}: port in use: {tail}")
                raise RuntimeError(f"{self.name} did not start: {tail}")
            time.sleep(0.02)


def _sh_quote(text: str) -> str:
    return "'" + text.replace("'", "'\"'\"'") + "'"
