"""Benchmark: what one OpenVPN tunnel costs the generator (one Debian ``openvpn`` client process each).

The ``openvpn`` protocol (``locustfiles/lib/openvpn.py``) runs one client process per simulated session
(``--dev null``, driven over its management socket). This measures, against a real OpenVPN server on
loopback (``targets/local/openvpn.py``, root needed for its tun device):

- **logon storm**: ``--tunnels`` clients started at once (at most ``--concurrency`` logging on at a
  time, through the harness's own driver :class:`OpenVPNClient`), on the relaxed server:
  ``tunnels_per_s`` (all up / wall time), the tunnel-up p50/p95, and the CPU seconds per tunnel-up
  split into the client processes, the server (with its password-check script runs) and the driver
  (this Python process), so
  ``tunnel_ups_per_core_s`` = 1 / CPU seconds per tunnel-up (generator side: client + driver);
- **held tunnels**: memory per client process (RSS, and PSS, which shares the libraries fairly between
  the processes), ``tunnels_per_gb`` from PSS, and the CPU a held, idle tunnel costs (OpenVPN's own
  keepalive, the management byte counts) over ``--hold-s``: ``held_tunnels_per_core`` at that pace;
- **production defaults**: the same storm against the server as Debian's sample ships it, whose
  ``connect-freq-initial 100 10`` answers at most 100 new clients per 10 s: ``tunnels_per_s_production``
  and how many logons got the server's first answer only after their client sent the initial packet
  again (``late_first_answer_production``; ``late_first_answer`` is the relaxed baseline).

The baseline in the same run is the relaxed server itself: the production figure is read against it.
Every loop is bounded (count and a deadline); every client process is killed at the end.

    .venv/bin/python bench/bench_openvpn.py            # full (~1-2 min: 150 tunnels per storm)
    .venv/bin/python bench/bench_openvpn.py --smoke    # seconds, nothing appended to RESULTS.md
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench_ssh import load_average, raise_nofile, report  # noqa: E402

from gateload.locustfiles.lib.aiobridge import timed  # noqa: E402
from gateload.locustfiles.lib.openvpnops import OpenVPNClient, OpenVPNSpec, kill_all  # noqa: E402
from gateload.targets.local.openvpn import OpenVPNServer  # noqa: E402
from gateload.targets.local.process import MissingTool  # noqa: E402

#: A first answer later than this means the initial packet went unanswered and was sent again (the
#: client retransmits its hard reset after 2 s; on loopback the answer otherwise takes milliseconds
#: plus the server's queue).
LATE_MS = 1900.0


def cpu_s(pid: int) -> float:
    """CPU seconds a process has run, all its threads (0 when it is gone).

    From ``/proc/PID/schedstat`` (nanoseconds): a client's logon takes a few ms of CPU, below the
    10 ms tick that ``/proc/PID/stat`` counts in.
    """
    total = 0
    for task in Path(f"/proc/{pid}/task").glob("*/schedstat"):
        try:
            total += int(task.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue
    return total / 1e9


def children_cpu_s(pid: int) -> float:
    """CPU seconds of a process's ended, reaped children (the server's verify script runs), in ticks."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")


def memory_kb(pid: int) -> tuple[int, int]:
    """(RSS, PSS) of a process in kB, from smaps_rollup."""
    rss = pss = 0
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Rss:"):
                rss = int(line.split()[1])
            elif line.startswith("Pss:"):
                pss = int(line.split()[1])
    except OSError:
        pass
    return rss, pss


@dataclass
class Storm:
    """What one logon storm gave."""

    up: list[OpenVPNClient]
    failed: int
    wall_s: float
    tunnel_ms: list[float]
    first_answer_ms: list[float]  # hold release until the server's first answer (state AUTH)
    driver_cpu_s: float
    server_cpu_s: float


async def storm(server: OpenVPNServer, tunnels: int, concurrency: int, deadline_s: float) -> Storm:
    """``tunnels`` clients logging on at once (``concurrency`` at a time); they stay up afterwards."""
    assert server.ca is not None and server.daemon is not None and server.daemon.proc is not None
    ca = str(server.ca.ca_cert)
    gate = asyncio.Semaphore(concurrency)
    up: list[OpenVPNClient] = []
    tunnel_ms: list[float] = []
    first_answer_ms: list[float] = []
    failed = 0

    async def one(i: int) -> None:
        nonlocal failed
        user, password = server.accounts[i % len(server.accounts)]
        client = OpenVPNClient(OpenVPNSpec(server.host, server.port, user, password, ca))
        async with gate:
            outcome = None
            for op in (client.start, client.tls, client.config, client.connected):
                outcome = await timed(op(), 30.0)
                if not outcome.ok:
                    break
            first = client.step_ms("AUTH")
            if first is not None:
                first_answer_ms.append(first)
        if outcome is not None and outcome.ok:
            up.append(client)
            tunnel_ms.append(client.tunnel_ms())
        else:
            failed += 1
            client.abort()

    server_pid = server.daemon.proc.pid
    server0 = cpu_s(server_pid) + children_cpu_s(server_pid)
    driver0, t0 = time.process_time(), time.perf_counter()
    async with asyncio.timeout(deadline_s):
        await asyncio.gather(*(one(i) for i in range(tunnels)))
    wall = time.perf_counter() - t0
    return Storm(
        up,
        failed,
        wall,
        tunnel_ms,
        first_answer_ms,
        time.process_time() - driver0,
        cpu_s(server_pid) + children_cpu_s(server_pid) - server0,
    )


async def close_all(clients: list[OpenVPNClient]) -> None:
    await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    return (
        statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1] if len(values) > 1 else values[0]
    )


async def measure(args: argparse.Namespace, state: Path) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    relaxed = OpenVPNServer(state / "relaxed", accounts=args.tunnels, relaxed=True).start()
    try:
        s = await storm(relaxed, args.tunnels, args.concurrency, args.deadline_s)
        try:
            pids = [c.pid for c in s.up if c.pid is not None]
            client_cpu = sum(cpu_s(p) for p in pids)
            mem = [memory_kb(p) for p in pids]
            n = max(1, len(s.up))
            figures |= {
                "tunnels": len(s.up),
                "failed": s.failed,
                "tunnels_per_s": round(len(s.up) / s.wall_s, 2),
                "tunnel_up_p50_ms": round(pct(s.tunnel_ms, 50), 1),
                "tunnel_up_p95_ms": round(pct(s.tunnel_ms, 95), 1),
                "first_answer_p95_ms": round(pct(s.first_answer_ms, 95), 1),
                "late_first_answer": sum(ms > LATE_MS for ms in s.first_answer_ms),
                "client_cpu_ms_per_up": round(1000 * client_cpu / n, 2),
                "driver_cpu_ms_per_up": round(1000 * s.driver_cpu_s / n, 2),
                "server_cpu_ms_per_up": round(1000 * s.server_cpu_s / n, 2),
            }
            generator = (client_cpu + s.driver_cpu_s) / n
            figures["tunnel_ups_per_core_s"] = round(1 / generator, 1) if generator else float("nan")
            figures["client_rss_mb"] = round(statistics.mean(r for r, _ in mem) / 1024, 2) if mem else 0
            figures["client_pss_mb"] = round(statistics.mean(p for _, p in mem) / 1024, 2) if mem else 0
            if figures["client_pss_mb"]:
                figures["tunnels_per_gb"] = round(1024 / figures["client_pss_mb"])
            # held and idle: the clients' and the driver's CPU over the hold
            c0, d0, t0 = sum(cpu_s(p) for p in pids), time.process_time(), time.perf_counter()
            await asyncio.sleep(args.hold_s)
            held = sum(c.up for c in s.up)
            used = sum(cpu_s(p) for p in pids) - c0 + time.process_time() - d0
            per_tunnel_per_s = used / n / (time.perf_counter() - t0)
            figures["held_after_hold"] = held
            figures["held_cpu_ms_per_tunnel_min"] = round(per_tunnel_per_s * 60_000, 3)
            figures["held_tunnels_per_core"] = (
                round(1 / per_tunnel_per_s) if per_tunnel_per_s else float("inf")
            )
        finally:
            await close_all(s.up)
    finally:
        relaxed.stop()
    production = OpenVPNServer(state / "production", accounts=args.tunnels, relaxed=False).start()
    try:
        p = await storm(production, args.tunnels, args.concurrency, args.deadline_s)
        try:
            figures["tunnels_per_s_production"] = round(len(p.up) / p.wall_s, 2)
            figures["failed_production"] = p.failed
            # the server ignored the initial packet (connect-freq-initial) and the client sent it again:
            # its first answer comes seconds late; the relaxed storm is the baseline (queueing alone)
            figures["late_first_answer_production"] = sum(ms > LATE_MS for ms in p.first_answer_ms)
            figures["tunnel_up_p95_ms_production"] = round(pct(p.tunnel_ms, 95), 1)
        finally:
            await close_all(p.up)
    finally:
        production.stop()
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="seconds-long run; nothing recorded")
    parser.add_argument("--tunnels", type=int, default=150, help="clients per logon storm (default 150)")
    parser.add_argument("--concurrency", type=int, default=50, help="logons at a time (default 50)")
    parser.add_argument("--hold-s", type=float, default=30.0, help="idle hold measured (default 30)")
    parser.add_argument("--deadline-s", type=float, default=120.0, help="bound on one storm (default 120)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.tunnels, args.concurrency, args.hold_s, args.deadline_s = 4, 4, 2.0, 30.0
    raise_nofile()
    load0 = load_average()[0]
    state = Path(tempfile.mkdtemp(prefix="gateload-bench-openvpn-"))
    try:
        figures = asyncio.run(measure(args, state))
    except MissingTool as exc:
        print(f"bench_openvpn: {exc}", file=sys.stderr)
        return 2
    finally:
        kill_all()
        shutil.rmtree(state, ignore_errors=True)
    notes = (
        f"{args.tunnels} tunnels per storm, {args.concurrency} at a time, {args.hold_s:g} s idle hold; "
        f"load {load0:.2f} -> {load_average()[0]:.2f}"
    )
    ok = figures.get("failed", 1) == 0 and figures.get("held_after_hold") == figures.get("tunnels")
    return report("openvpn", {"figures": figures, "notes": notes, "target_met": ok}, smoke=args.smoke)


if __name__ == "__main__":
    sys.exit(main())
