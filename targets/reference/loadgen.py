"""A small pure-asyncio closed-loop load, for the farm's own tests and calibration (not for campaigns).

Each client repeats one operation, waits ``think_s`` and goes again, until ``duration_s`` has passed
or ``max_ops`` operations were done in total: every loop stops by itself. Latency is timed around the
operation only. The Locust users are the real load generator; this exists so the farm can be checked
and calibrated without them.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import asyncssh

from gateload.targets.reference.harness import portal_login, portal_ticket
from gateload.targets.reference.state import Account

Operation = Callable[[], Awaitable[bool]]


@dataclass
class LoadResult:
    clients: int
    elapsed_s: float = 0.0
    errors: int = 0
    latencies_s: list[float] = field(default_factory=list)

    @property
    def ops(self) -> int:
        return len(self.latencies_s)

    @property
    def throughput(self) -> float:
        """Successful operations per second."""
        return self.ops / self.elapsed_s if self.elapsed_s else 0.0

    @property
    def mean_ms(self) -> float:
        return 1000 * statistics.fmean(self.latencies_s) if self.latencies_s else float("nan")

    def percentile_ms(self, q: float) -> float:
        """The q-th percentile (0-100) of latency in milliseconds."""
        if not self.latencies_s:
            return float("nan")
        ordered = sorted(self.latencies_s)
        return 1000 * ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]

    def summary(self) -> str:
        return (
            f"clients={self.clients} ops={self.ops} errors={self.errors} {self.throughput:.1f} ops/s "
            f"mean={self.mean_ms:.1f} ms p50={self.percentile_ms(50):.1f} p95={self.percentile_ms(95):.1f}"
        )


async def closed_loop(
    operations: list[Operation], *, duration_s: float, max_ops: int, think_s: float = 0.0
) -> LoadResult:
    """Run one client per operation until the time or the operation budget is used up."""
    result = LoadResult(clients=len(operations))
    loop = asyncio.get_running_loop()
    start = loop.time()
    deadline = start + duration_s
    budget = [max_ops]

    async def client(op: Operation) -> None:
        while loop.time() < deadline and budget[0] > 0:
            budget[0] -= 1
            t0 = time.perf_counter()
            try:
                ok = await asyncio.wait_for(op(), max(0.001, deadline + 5.0 - loop.time()))
            except (TimeoutError, OSError, asyncssh.Error, aiohttp.ClientError):
                ok = False
            if ok:
                result.latencies_s.append(time.perf_counter() - t0)
            else:
                result.errors += 1
            if think_s:
                await asyncio.sleep(think_s)

    await asyncio.gather(*(client(op) for op in operations))
    result.elapsed_s = loop.time() - start
    return result


# --- ready-made operations -------------------------------------------------------------------------


async def portal_page_clients(
    base_url: str, accounts: list[Account], path: str = "/api/apps"
) -> tuple[list[Operation], Callable[[], Awaitable[None]]]:
    """Logged-in portal sessions (one per account, each pinned to a backend) that GET ``path``.

    Returns the operations and an async ``close()``.
    """
    connector = aiohttp.TCPConnector(limit=0)
    sessions = [
        aiohttp.ClientSession(
            connector=connector, connector_owner=False, cookie_jar=aiohttp.CookieJar(unsafe=True)
        )
        for _ in accounts
    ]
    await asyncio.gather(*(portal_login(s, base_url, a) for s, a in zip(sessions, accounts, strict=True)))

    def make(http: aiohttp.ClientSession) -> Operation:
        async def op() -> bool:
            async with http.get(base_url + path) as r:
                await r.read()
                return r.status == 200

        return op

    async def close() -> None:
        for s in sessions:
            await s.close()
        await connector.close()

    return [make(s) for s in sessions], close


async def keystroke_clients(
    base_url: str, accounts: list[Account]
) -> tuple[list[Operation], Callable[[], Awaitable[None]]]:
    """SSH PTY shells (ticket login through the portal); each operation is one keystroke until its echo."""
    conns: list[Any] = []
    procs: list[Any] = []

    async def open_one(account: Account) -> None:
        launch = await portal_ticket(base_url, account)
        conn = await asyncssh.connect(
            launch["host"],
            launch["port"],
            username=launch["username"],
            password=launch["ticket"],
            known_hosts=None,
            client_keys=None,
            agent_path=None,
        )
        proc = await conn.create_process(term_type="xterm", encoding=None)
        await proc.stdout.readuntil(b"gw$ ")
        conns.append(conn)
        procs.append(proc)

    await asyncio.gather(*(open_one(a) for a in accounts))

    def make(proc: Any) -> Operation:
        async def op() -> bool:
            proc.stdin.write(b"k")
            return await proc.stdout.readexactly(1) == b"k"

        return op

    async def close() -> None:
        for conn in conns:
            conn.close()
        await asyncio.gather(*(c.wait_closed() for c in conns), return_exceptions=True)

    return [make(p) for p in procs], close
