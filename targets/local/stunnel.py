"""stunnel (TLS) in front of a plain-TCP service, with a per-run test CA.

Usage::

    ca = make_test_ca(tmp / "tls")
    with Stunnel(ca, upstream=("127.0.0.1", 8080), state_dir=tmp / "stunnel") as tls:
        url = f"https://127.0.0.1:{tls.port}"   # verify against ca.ca_cert
"""

from __future__ import annotations

from pathlib import Path

from gateload.targets.local.process import Daemon, Launcher, free_port, require_binary
from gateload.targets.local.tlsca import TestCA


class Stunnel(Launcher):
    """A foreground stunnel server that terminates TLS and forwards to ``upstream``."""

    def __init__(
        self, ca: TestCA, upstream: tuple[str, int], state_dir: Path, host: str = "127.0.0.1"
    ) -> None:
        self.binary = require_binary("stunnel4", "stunnel4")
        self.ca = ca
        self.upstream = upstream
        self.state_dir = state_dir
        self.host = host
        self.port = 0
        self._daemon: Daemon | None = None

    @property
    def url(self) -> str:
        return f"https://{self.host}:{self.port}"

    def _make_daemon(self) -> Daemon:
        self.port = free_port(self.host)
        config = self.state_dir / "stunnel.conf"
        config.write_text(self.config_text())
        argv = [self.binary, str(config)]
        return Daemon("stunnel", argv, [(self.host, self.port)], self.state_dir / "stunnel.log")

    def config_text(self) -> str:
        up_host, up_port = self.upstream
        return f"""\
; Written by targets/local/stunnel.py for one test run.
foreground = yes
pid =
debug = notice
syslog = no

[portal]
accept = {self.host}:{self.port}
connect = {up_host}:{up_port}
cert = {self.ca.server_cert}
key = {self.ca.server_key}
sslVersionMin = TLSv1.2
"""
