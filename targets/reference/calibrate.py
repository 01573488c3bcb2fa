"""Calibrate the reference farm on this machine: saturation throughput and the farm's CPU cost.

    python -m gateload.targets.reference.calibrate [--profile reference-before] [--seconds 5]

For each profile it starts ``gateload serve`` as a subprocess, drives it with a closed-loop asyncio
load (no think time, several clients per server, so every worker stays busy) and prints:

- portal pages/s and keystroke echoes/s sustained, next to the capacity the profile implies
  (servers x workers / mean service time);
- the farm process's CPU time per 1,000 keystroke echoes and per 1,000 portal requests, and this
  load generator's own, so the team can tell whether farm + load generator fit on the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from pathlib import Path

from gateload.targets.profile import Profile
from gateload.targets.reference.harness import FarmProcess, resolve_profile, write_profile_variant
from gateload.targets.reference.loadgen import closed_loop, keystroke_clients, portal_page_clients
from gateload.targets.reference.state import read_credentials

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def capacity(profile: Profile, op_ms: float) -> float:
    """Operations per second the profile's servers can serve at 100% busy, for one op type."""
    assert profile.farm is not None
    return sum(g.count * g.workers * g.speed for g in profile.farm.servers) * 1000.0 / op_ms


async def measure(farm: FarmProcess, seconds: float, per_server: int) -> list[str]:
    profile = farm.profile
    assert profile.farm is not None
    n = len(profile.server_ids) * per_server
    accounts = read_credentials(Path(profile.credentials.file))[:n]
    lines = []
    for kind, factory, op_ms in (
        ("portal GET /api/apps", portal_page_clients, profile.farm.service.portal_page_ms),
        ("keystroke echo", keystroke_clients, profile.farm.service.keystroke_ms),
    ):
        ops, close = await factory(profile.portal.url, accounts)
        farm_cpu, own_cpu = process_cpu_s(farm.pid), time.process_time()
        result = await closed_loop(ops, duration_s=seconds, max_ops=1_000_000)
        farm_cpu, own_cpu = process_cpu_s(farm.pid) - farm_cpu, time.process_time() - own_cpu
        await close()
        per_k = 1000.0 * 1000.0 / max(result.ops, 1)  # CPU milliseconds per 1,000 operations
        lines.append(
            f"  {kind:22s} {result.throughput:7.1f} ops/s (capacity {capacity(profile, op_ms):6.1f}) "
            f"mean {result.mean_ms:6.1f} ms p95 {result.percentile_ms(95):6.1f} ms errors {result.errors}; "
            f"CPU per 1000: farm {farm_cpu * per_k:5.0f} ms, load generator {own_cpu * per_k:5.0f} ms"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", action="append", help="profile name or path (repeatable)")
    parser.add_argument("--seconds", type=float, default=5.0, help="seconds per measurement")
    parser.add_argument("--clients-per-server", type=int, default=4)
    parser.add_argument("--single-server", action="store_true", help="also measure a 1-server variant")
    args = parser.parse_args(argv)
    names = args.profile or ["reference-before", "reference-after"]
    with tempfile.TemporaryDirectory(prefix="gateload-calibrate-") as tmp:
        runs = [(name, resolve_profile(name)) for name in names]
        if args.single_server:
            one = write_profile_variant(
                names[0],
                Path(tmp) / "one.toml",
                {
                    "farm.servers": [
                        {
                            "name": "old",
                            "count": 1,
                            "workers": 1,
                            "max_sessions": 100,
                            "queue_limit": 50,
                            "speed": 1.0,
                        }
                    ]
                },
            )
            runs.insert(0, (f"{names[0]} (1 server)", one))
        for label, path in runs:
            with FarmProcess(path, state_dir=Path(tmp) / "state") as farm:
                print(f"{label}: {len(farm.profile.server_ids)} servers, farm up in {farm.startup_s:.2f} s")
                for line in asyncio.run(measure(farm, args.seconds, args.clients_per_server)):
                    print(line, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
