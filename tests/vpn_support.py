"""Helpers for the tests of the ``vpn`` protocol against a real ocserv (tests/test_vpn_*.py)."""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import users_support  # noqa: F401  (gevent monkey-patching first, as under the locust command)
from real_support import private_dir, start_or_skip
from users_support import Run, environment, wait_until

from gateload.targets.local.ocserv import Ocserv
from gateload.targets.local.process import _descendants
from gateload.targets.profile import Workload, dump_profile, load_profile

REPO = Path(__file__).resolve().parent.parent
BASE_PROFILE = REPO / "targets" / "profiles" / "local-real.toml"
#: One 127.0.0.x per simulated user (the profile key the tests exercise).
SPREAD = "127.0.0.2-127.0.0.254"
#: A paced burst of 8 keepalives 250 ms apart or a ping through the tunnel, then a short think time:
#: every tunnel stays busy. The think time is longer than the pace, so no gap between two bursts can
#: pass for a gap inside one; and the pace is under half the mean think time, where the analysis'
#: Little's-law check starts counting a gap as a think pause (at 0.3-0.7 s it counted paced gaps).
WORKLOAD = Workload(
    activities_per_session=1000,
    think_min_s=0.6,
    think_max_s=1.0,
    typing_interval_ms=250.0,
    burst_keys=8,
    documents=["memo.pdf"],
    timeout_s=10.0,
    mix={"typing": 1.0, "tunnel": 0.5},
)


@contextlib.contextmanager
def ocserv(prefix: str, **kwargs: Any) -> Iterator[Ocserv]:
    """A started ocserv in a private folder (skipped without root or the package; failed in CI)."""
    with private_dir(prefix) as state:
        vpn = start_or_skip(lambda: Ocserv(state / "vpn", **kwargs).start())
        try:
            yield vpn
        finally:
            vpn.stop()


def vpn_profile(
    vpn: Ocserv,
    folder: Path,
    name: str,
    *,
    credentials: Path | None = None,
    workload: Workload = WORKLOAD,
    **gateway: Any,
) -> Path:
    """The shipped local-real profile pointed at this ocserv: protocol vpn, its CA pinned in
    ``gateway.ca_file``, its accounts; ``gateway`` overrides more keys (e.g. ``source_addresses``)."""
    assert vpn.ca is not None
    p = load_profile(BASE_PROFILE)
    profile = dataclasses.replace(
        p,
        gateway=dataclasses.replace(
            p.gateway,
            host=vpn.host,
            port=vpn.port,
            protocol="vpn",
            host_key="",
            ca_file=str(vpn.ca.ca_cert),
            **gateway,
        ),
        credentials=dataclasses.replace(p.credentials, file=str(credentials or vpn.credentials)),
        workload=workload,
    )
    return dump_profile(profile, folder / f"{name}.toml")


def _hex_address(host: str, port: int) -> str:
    """``host:port`` as /proc/net/tcp writes it (little-endian IPv4 hex, port hex)."""
    return f"{ipaddress.IPv4Address(host).packed[::-1].hex().upper()}:{port:04X}"


def _socket_inodes(pid: int) -> set[str]:
    """The socket inodes the process ``pid`` and its children hold."""
    inodes = set()
    for p in (pid, *_descendants(pid)):
        with contextlib.suppress(OSError):
            for fd in Path(f"/proc/{p}/fd").iterdir():
                with contextlib.suppress(OSError):
                    link = os.readlink(fd)
                    if link.startswith("socket:["):
                        inodes.add(link[8:-1])
    return inodes


def connections(vpn: Ocserv) -> tuple[list[str], int]:
    """Server side: the client addresses of the established connections ocserv's processes hold, and
    how many established connections the kernel has on the server's port in all.

    By socket inode: a connection of some other program whose ephemeral port happens to equal the
    server's port (on a shared machine) is not counted. The kernel's count also holds connections it
    completed but ocserv has not accepted (they wait in the listen queue).
    """
    assert vpn.daemon is not None and vpn.daemon.proc is not None
    inodes = _socket_inodes(vpn.daemon.proc.pid)
    server = _hex_address(vpn.host, vpn.port)
    # /proc/net/tcp is read in chunks while connections come and go: the same socket can be listed
    # twice (a run of 20 users once showed 22), so each connection counts once, by its client end
    held: dict[str, str] = {}
    kernel: set[str] = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1] == server and fields[3] == "01":  # 01 = ESTABLISHED
            kernel.add(fields[2])
            if fields[9] in inodes:
                held[fields[2]] = str(ipaddress.IPv4Address(bytes.fromhex(fields[2].split(":")[0])[::-1]))
    return list(held.values()), len(kernel)


@dataclasses.dataclass
class Watched:
    """A run of users and what the server showed meanwhile."""

    run: Run
    most: int = 0  # most connections ocserv held at once
    most_kernel: int = 0  # most established connections on its port at once (accepted or queued)
    sources: set[str] = dataclasses.field(default_factory=set)  # client addresses ocserv saw


def run_users(vpn: Ocserv, profile: Path, user_class: type, users: int, until: float) -> Watched:
    """Run ``users`` users in this process for ``until`` seconds, watching the server every 0.5 s."""
    watched = Watched(environment(profile, user_class))
    runner = watched.run.env.create_local_runner()
    try:
        runner.start(users, spawn_rate=users)
        deadline = time.monotonic() + until
        while time.monotonic() < deadline:
            wait_until(lambda: False, min(0.5, deadline - time.monotonic()))
            held, kernel = connections(vpn)
            watched.most = max(watched.most, len(held))
            watched.most_kernel = max(watched.most_kernel, kernel)
            watched.sources |= set(held)
    finally:
        runner.quit()
    return watched


def failures(run: Run) -> list[tuple[str, str]]:
    """``(name, error class)`` of every failed sample."""
    return [(s["name"], s["context"]["error"]) for s in run.samples if s["exception"] is not None]
