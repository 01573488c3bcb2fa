"""A real haproxy on loopback: portal backends in HTTP mode with sticky sessions, gateways in TCP mode.

HTTP mode pins a session to one backend with haproxy's own cookie (``cookie SERVERID insert indirect
nocache``; its value is the backend id) and names the backend that served each response in a header
set by haproxy itself (``X-Served-By``), so per-server attribution is the load balancer's word, not
the backend's. TCP mode balances SSH connections over several sshd instances. A stats listener gives
haproxy's own per-server counters (``server_stats``) to cross-check the load generator's attribution.

Usage::

    with HAProxy(tmp, http_backends=[Backend("web-01", "127.0.0.1", 8001), ...],
                 tcp_backends=[Backend("gw-01", "127.0.0.1", 2201), ...]) as lb:
        lb.http_port, lb.tcp_port, lb.server_stats()
"""

from __future__ import annotations

import csv
import io
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from gateload.targets.local.process import Daemon, Launcher, free_port, require_binary

STICKY_COOKIE = "SERVERID"
HTTP_BACKEND = "portal_servers"  # haproxy proxy names, for counts()
TCP_BACKEND = "gateway_servers"
SERVER_HEADER = "X-Served-By"


@dataclass(frozen=True)
class Backend:
    """One server behind the balancer; ``id`` is its haproxy server name and cookie value."""

    id: str
    host: str
    port: int


class HAProxy(Launcher):
    """A foreground ``haproxy -db -f <private config>`` with an HTTP and/or a TCP frontend."""

    def __init__(
        self,
        state_dir: Path,
        *,
        http_backends: list[Backend] | None = None,
        tcp_backends: list[Backend] | None = None,
        http_balance: Literal["roundrobin", "leastconn"] = "roundrobin",
        tcp_balance: Literal["roundrobin", "leastconn"] = "leastconn",
        host: str = "127.0.0.1",
    ) -> None:
        self.binary = require_binary("haproxy", "haproxy")
        if not http_backends and not tcp_backends:
            raise ValueError("give http_backends, tcp_backends or both")
        self.state_dir = state_dir
        self.http_backends = http_backends or []
        self.tcp_backends = tcp_backends or []
        self.http_balance = http_balance
        self.tcp_balance = tcp_balance
        self.host = host
        self.http_port = 0
        self.tcp_port = 0
        self.stats_port = 0
        self._daemon: Daemon | None = None

    @property
    def url(self) -> str:
        """Base URL of the HTTP frontend."""
        return f"http://{self.host}:{self.http_port}"

    def _make_daemon(self) -> Daemon:
        self.http_port = free_port(self.host) if self.http_backends else 0
        self.tcp_port = free_port(self.host) if self.tcp_backends else 0
        self.stats_port = free_port(self.host)
        config = self.state_dir / "haproxy.cfg"
        config.write_text(self.config_text())
        ports = [(self.host, p) for p in (self.http_port, self.tcp_port, self.stats_port) if p]
        argv = [self.binary, "-db", "-f", str(config)]
        return Daemon("haproxy", argv, ports, self.state_dir / "haproxy.log")

    def config_text(self) -> str:
        """The private haproxy.cfg (no /etc/haproxy, no pid file, logs to stderr)."""
        parts = [_GLOBAL, self._stats_section()]
        if self.http_backends:
            parts.append(self._http_section())
        if self.tcp_backends:
            parts.append(self._tcp_section())
        return "\n".join(parts)

    def _stats_section(self) -> str:
        return f"""\
frontend stats
    mode http
    bind {self.host}:{self.stats_port}
    stats enable
    stats uri /stats
"""

    def _http_section(self) -> str:
        servers = "\n".join(f"    server {b.id} {b.host}:{b.port} cookie {b.id}" for b in self.http_backends)
        return f"""\
frontend portal
    mode http
    option httplog
    bind {self.host}:{self.http_port}
    default_backend {HTTP_BACKEND}

backend {HTTP_BACKEND}
    mode http
    balance {self.http_balance}
    # Sticky sessions: the first response sets SERVERID=<backend id>; later requests carrying it go
    # to that backend. `indirect` hides the cookie from the backend, `nocache` keeps caches out.
    cookie {STICKY_COOKIE} insert indirect nocache httponly
    # Attribution by the balancer itself: which server answered this response.
    http-response set-header {SERVER_HEADER} %[srv_name]
{servers}
"""

    def _tcp_section(self) -> str:
        servers = "\n".join(f"    server {b.id} {b.host}:{b.port}" for b in self.tcp_backends)
        return f"""\
frontend gateway
    mode tcp
    option tcplog
    bind {self.host}:{self.tcp_port}
    default_backend {TCP_BACKEND}

backend {TCP_BACKEND}
    mode tcp
    balance {self.tcp_balance}
{servers}
"""

    def server_stats(self) -> dict[tuple[str, str], dict[str, str]]:
        """haproxy's own counters per (proxy, server), from the stats page's CSV export.

        Useful keys: ``stot`` (sessions), ``hrsp_2xx`` ... (HTTP responses), ``bin``/``bout`` (bytes).
        """
        url = f"http://{self.host}:{self.stats_port}/stats;csv"
        with urllib.request.urlopen(url, timeout=5) as resp:
            text = resp.read().decode()
        rows = csv.DictReader(io.StringIO(text.lstrip("# ")))
        return {(r["pxname"], r["svname"]): r for r in rows}

    def counts(self, proxy: str, key: str = "stot") -> dict[str, int]:
        """haproxy's counter ``key`` for each server of ``proxy`` (a backend name) since it started.

        ``stot``: connections (TCP mode) or sessions; ``req_tot``: HTTP requests (HTTP mode).
        """
        return {
            server: int(row[key] or 0)
            for (px, server), row in self.server_stats().items()
            if px == proxy and server not in ("FRONTEND", "BACKEND")
        }


_GLOBAL = """\
# Written by targets/local/haproxy.py for one test run.
global
    maxconn 4096
    log stderr format raw local0 notice

defaults
    log global
    timeout connect 5s
    timeout client 120s
    timeout server 120s
    timeout http-request 10s
"""
