"""Fault injection for the reference farm: what breaks, on which server, when, and for how long.

A load test is most needed when things break, so the farm can break on purpose. Kinds (profile
schema :class:`gateload.targets.profile.Fault`):

=========  ===================================================================================
reset      open SSH connections of the server(s) are reset (TCP RST) at the start, and again every
           ``every_s`` while active; new connections are accepted (and reset at the next tick)
stall      every operation started while active waits until the fault ends (a frozen server)
auth_fail  ``percent`` % of portal logins (``POST /login`` 401) and gateway logins fail
http_503   ``percent`` % of portal requests answer 503 (a 503 storm)
down       the server dies: its SSH connections are reset, portal requests pinned to it answer 503,
           the balancer sends new work elsewhere; when it comes back its portal sessions are gone
slow_sftp  SFTP transfers take ``factor`` times longer
=========  ===================================================================================

Every fault has a duration, so it ends by itself. Faults come from the profile (``[[farm.faults]]``,
``start_s`` after the farm started) or at runtime from the admin endpoint (``start_s`` after the
request), which listens on 127.0.0.1 only and needs ``Authorization: Bearer <token>``; the token is
``GATELOAD_ADMIN_TOKEN`` or else generated into ``<state_dir>/admin_token`` (mode 0600). Nothing
prints it.

Hot paths pay one attribute test: ``SimServer.fault`` is None unless a fault is active on that server,
and the controller swaps in a :class:`capacity.ServerFaults` at each start and end (a timer, not a poll).

Admin API (JSON): ``GET /admin/faults`` (active, scheduled, log), ``POST /admin/faults`` with a fault
(``kind``, ``duration_s``, optional ``server``, ``start_s``, ``percent``, ``factor``, ``every_s``),
``DELETE /admin/faults`` (end all now) and ``DELETE /admin/faults/{id}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hmac
import ipaddress
import json
import os
import random
import secrets
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from gateload.errors import InputError
from gateload.targets.profile import ALL_SERVERS, FAULT_KINDS, Fault, fault_problem
from gateload.targets.reference.capacity import Cluster, ServerFaults, SimServer

TOKEN_ENV = "GATELOAD_ADMIN_TOKEN"
TOKEN_FILE = "admin_token"
LOG_LIMIT = 1000  # fault log entries kept (a long soak with a flapping schedule stays bounded)
_LINGER_RST = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends RST, as a crashed peer does


@dataclass
class ActiveFault:
    """A fault of the schedule: its spec, source and state (scheduled, active, ended)."""

    id: int
    spec: Fault
    source: str  # "profile" or "admin"
    start: float  # loop time
    end: float  # loop time
    state: str = "scheduled"
    started_at: float | None = None  # epoch seconds
    ended_at: float | None = None
    next_tick: float = 0.0  # reset with every_s: loop time of the next reset
    released: asyncio.Event | None = None  # stall: set at the end

    def as_dict(self, now_loop: float) -> dict[str, Any]:
        """The fault as JSON-ready data; planned times in epoch seconds (``now_loop``: loop time now)."""
        now_epoch = time.time()
        return {
            "id": self.id,
            **dataclasses.asdict(self.spec),
            "source": self.source,
            "state": self.state,
            "planned_start": round(now_epoch + self.start - now_loop, 3),
            "planned_end": round(now_epoch + self.end - now_loop, 3),
            "started_at": self.started_at,
            "ended_at": self.ended_at,
        }


class FaultController:
    """The fault schedule of one farm: starts and ends faults on time and keeps a log."""

    def __init__(self, cluster: Cluster, connections: set[Any], seed: float | None = None) -> None:
        self.cluster = cluster
        self.connections = connections  # the gateway's open SSH connections (FarmContext.ssh_connections)
        self.rng = random.Random(seed)
        self.faults: list[ActiveFault] = []
        self.log: list[dict[str, Any]] = []
        self.started_total = dict.fromkeys(FAULT_KINDS, 0)
        self.resets = 0  # SSH connections reset by faults
        self.on_restart: list[Callable[[SimServer], object]] = []  # e.g. the portal forgets its sessions
        self._ids = 0
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None

    # --- schedule ---------------------------------------------------------------------------------

    def _now(self) -> float:
        return asyncio.get_running_loop().time()

    def add(self, spec: Fault, source: str, base: float | None = None) -> ActiveFault:
        """Schedule ``spec`` at ``base + start_s`` (loop time; default now); applied at once if due."""
        problem = fault_problem(spec, [s.id for s in self.cluster.servers])
        if problem:
            raise ValueError(problem)
        self._ids += 1
        start = (self._now() if base is None else base) + spec.start_s
        fault = ActiveFault(self._ids, spec, source, start, start + spec.duration_s)
        self.faults.append(fault)
        self.apply()
        self._poke()
        return fault

    def clear(self, fault_id: int | None = None) -> int:
        """End one fault (or all) now; returns how many were ended or unscheduled."""
        now = self._now()
        hit = [f for f in self.faults if f.state != "ended" and fault_id in (None, f.id)]
        for f in hit:
            f.end = min(f.end, now)
            f.start = min(f.start, f.end)
        self.apply()
        self._poke()
        return len(hit)

    def _poke(self) -> None:
        """Wake the timer: the next start or end may be sooner now."""
        if self._wake is not None:
            self._wake.set()

    def start(self, schedule: list[Fault]) -> None:
        """Schedule the profile's faults from now and run the timer (call inside the farm's loop)."""
        self._wake = asyncio.Event()
        base = self._now()
        for spec in schedule:
            self.add(spec, "profile", base)
        self._task = asyncio.create_task(self._timer())

    async def stop(self) -> None:
        """Stop the timer; faults still active end now (a stall releases its waiters)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for f in self.faults:
            if f.released is not None:
                f.released.set()
        for s in self.cluster.servers:
            s.fault = None

    async def _timer(self) -> None:
        assert self._wake is not None
        while True:
            due = self.apply()
            self._wake.clear()
            timeout = None if due is None else max(0.0, due - self._now())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)

    # --- transitions --------------------------------------------------------------------------------

    def apply(self) -> float | None:
        """Start and end what is due, set every server's fault state; the loop time of the next change."""
        now = self._now()
        changed = False
        for f in self.faults:
            if f.state == "scheduled" and now >= f.start:
                changed = True
                if now >= f.end:  # cleared before it began
                    f.state = "ended"
                    continue
                self._begin(f, now)
            if f.state == "active" and now >= f.end:
                changed = True
                self._finish(f)
            elif f.state == "active" and f.spec.every_s and now >= f.next_tick:
                self._reset_connections(self._targets(f.spec))
                f.next_tick = now + f.spec.every_s
        if changed:
            self._set_server_state()
            self.faults = [f for f in self.faults if f.state != "ended"] + [
                f for f in self.faults if f.state == "ended"
            ][-LOG_LIMIT:]
        return self._next_due()

    def _next_due(self) -> float | None:
        times = []
        for f in self.faults:
            if f.state == "scheduled":
                times.append(f.start)
            elif f.state == "active":
                times.append(f.end)
                if f.spec.every_s:
                    times.append(f.next_tick)
        return min(times) if times else None

    def _begin(self, f: ActiveFault, now: float) -> None:
        f.state, f.started_at = "active", time.time()
        self.started_total[f.spec.kind] += 1
        self._log("start", f)
        if f.spec.kind == "stall":
            f.released = asyncio.Event()
        if f.spec.kind in ("reset", "down"):
            self._reset_connections(self._targets(f.spec))
            f.next_tick = now + f.spec.every_s

    def _finish(self, f: ActiveFault) -> None:
        f.state, f.ended_at = "ended", time.time()
        self._log("end", f)
        if f.released is not None:
            f.released.set()
        if f.spec.kind == "down":
            for server in self._targets(f.spec):
                for hook in self.on_restart:
                    hook(server)

    def _targets(self, spec: Fault) -> list[SimServer]:
        if spec.server == ALL_SERVERS:
            return list(self.cluster.servers)
        return [self.cluster.by_id[spec.server]]

    def _set_server_state(self) -> None:
        """Rebuild each server's ServerFaults from the active faults (None where nothing is active)."""
        states: dict[str, ServerFaults] = {}
        for f in self.faults:
            if f.state != "active":
                continue
            for server in self._targets(f.spec):
                st = states.setdefault(server.id, ServerFaults(self.rng))
                kind = f.spec.kind
                if kind == "down":
                    st.down = True
                elif kind == "auth_fail":
                    st.auth_fail = max(st.auth_fail, f.spec.percent)
                elif kind == "http_503":
                    st.http_503 = max(st.http_503, f.spec.percent)
                elif kind == "slow_sftp":
                    st.sftp_factor = max(st.sftp_factor, f.spec.factor)
                elif kind == "stall":
                    st.stall = f.released
        for server in self.cluster.servers:
            server.fault = states.get(server.id)

    def _reset_connections(self, servers: list[SimServer]) -> None:
        """Reset (TCP RST) every open SSH connection served by one of ``servers``."""
        targets = {s.id for s in servers}
        for conn in list(self.connections):
            owner = conn.get_owner()
            server = getattr(owner, "server", None)
            if server is None or server.id not in targets:
                continue
            sock = conn.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
            conn.abort()
            self.resets += 1

    def _log(self, event: str, f: ActiveFault) -> None:
        entry = {"t": round(time.time(), 3), "event": event, "id": f.id}
        self.log.append({**entry, "kind": f.spec.kind, "server": f.spec.server})
        del self.log[:-LOG_LIMIT]

    # --- reading ----------------------------------------------------------------------------------

    def describe(self, fault: ActiveFault) -> dict[str, Any]:
        """One fault as JSON-ready data (epoch times)."""
        return fault.as_dict(self._now())

    def snapshot(self) -> dict[str, Any]:
        """Active and scheduled faults, the log, and counters (for the admin endpoint and /metrics)."""
        now = self._now()
        return {
            "active": [f.as_dict(now) for f in self.faults if f.state == "active"],
            "scheduled": [f.as_dict(now) for f in self.faults if f.state == "scheduled"],
            "ended": [f.as_dict(now) for f in self.faults if f.state == "ended"],
            "log": list(self.log),
            "started_total": dict(self.started_total),
            "ssh_resets": self.resets,
        }


# --- the admin endpoint -------------------------------------------------------------------------------


def admin_token(state_dir: Path) -> str:
    """The admin token: ``GATELOAD_ADMIN_TOKEN``, else ``<state_dir>/admin_token`` (created 0600)."""
    from_env = os.environ.get(TOKEN_ENV, "").strip()
    if from_env:
        return from_env
    path = Path(state_dir) / TOKEN_FILE
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        try:
            token = path.read_text().strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError(
                f"{path}: cannot read the admin token ({type(exc).__name__}); delete it (a new one is made) "
                f"or set {TOKEN_ENV}"
            ) from None
        if token:
            return token
        path.unlink()  # an empty file (a crash mid-write): make a new token
        return admin_token(state_dir)
    token = secrets.token_urlsafe(32)
    with os.fdopen(fd, "w") as fh:
        fh.write(token + "\n")
    return token


_SPEC_FIELDS = {f.name for f in dataclasses.fields(Fault)}


def parse_fault(data: Any, server_ids: list[str]) -> Fault:
    """A Fault from admin JSON; ValueError with a one-line reason when it is not one."""
    if not isinstance(data, dict):
        raise ValueError('body must be a JSON object like {"kind": "stall", "duration_s": 5}')
    unknown = sorted(set(data) - _SPEC_FIELDS)
    if unknown:
        raise ValueError(f"unknown key {unknown[0]!r}; allowed: {', '.join(sorted(_SPEC_FIELDS))}")
    if data.get("kind") not in FAULT_KINDS:
        raise ValueError(f"'kind' is {data.get('kind')!r}; use one of {', '.join(FAULT_KINDS)}")
    if "duration_s" not in data:
        raise ValueError("'duration_s' is missing; every fault ends by itself")
    for key, value in data.items():
        if key not in ("kind", "server") and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise ValueError(f"{key!r} must be a number")
    if not isinstance(data.get("server", ALL_SERVERS), str):
        raise ValueError("'server' must be a server id or '*'")
    numbers = {k: float(v) for k, v in data.items() if k not in ("kind", "server")}
    spec = Fault(**{**data, **numbers})
    problem = fault_problem(spec, server_ids)
    if problem:
        raise ValueError(problem)
    return spec


def build_admin_app(controller: FaultController, token: str) -> web.Application:
    """The admin application: loopback peers with the bearer token only."""
    expected = f"Bearer {token}".encode()

    @web.middleware
    async def guard(request: web.Request, handler: Any) -> web.StreamResponse:
        peer = request.transport.get_extra_info("peername") if request.transport else None
        if not peer or not ipaddress.ip_address(peer[0]).is_loopback:
            refusal = {"error": "the admin endpoint answers loopback clients only"}
            return web.json_response(refusal, status=403)
        given = request.headers.get("Authorization", "").encode()
        if not hmac.compare_digest(given, expected):
            return web.json_response(
                {"error": "missing or wrong token; send Authorization: Bearer <admin token>"},
                status=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
        return await handler(request)

    server_ids = [s.id for s in controller.cluster.servers]

    async def list_faults(_request: web.Request) -> web.StreamResponse:
        return web.json_response(controller.snapshot())

    async def add_fault(request: web.Request) -> web.StreamResponse:
        try:
            spec = parse_fault(await request.json(), server_ids)
        except (json.JSONDecodeError, UnicodeDecodeError):
            return web.json_response({"error": "body must be JSON"}, status=400)
        except (ValueError, TypeError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        fault = controller.add(spec, "admin")
        return web.json_response(controller.describe(fault), status=201)

    async def clear_faults(request: web.Request) -> web.StreamResponse:
        raw = request.match_info.get("id")
        if raw is not None and not raw.isdigit():
            return web.json_response({"error": "fault id must be a number"}, status=400)
        ended = controller.clear(int(raw) if raw is not None else None)
        if raw is not None and not ended:
            return web.json_response({"error": f"no active or scheduled fault {raw}"}, status=404)
        return web.json_response({"ended": ended})

    app = web.Application(middlewares=[guard], client_max_size=64 * 1024)
    app.add_routes(
        [
            web.get("/admin/faults", list_faults),
            web.post("/admin/faults", add_fault),
            web.delete("/admin/faults", clear_faults),
            web.delete("/admin/faults/{id}", clear_faults),
        ]
    )
    return app


# --- a client (tests, benchmarks, ``gateload fault``) -------------------------------------------------


@dataclass
class FaultClient:
    """Talks to a running farm's admin endpoint; the port comes from the effective profile."""

    port: int
    token: str = field(repr=False)
    host: str = "127.0.0.1"
    timeout_s: float = 10.0

    @classmethod
    def for_profile(cls, profile: Any) -> FaultClient:
        """From an effective profile (``farm.admin_port`` bound, ``farm.state_dir`` holding the token)."""
        farm = profile.farm
        if farm is None or not farm.admin_port:
            raise ValueError("the profile names no admin port; use the effective profile of a running farm")
        return cls(farm.admin_port, admin_token(profile.resolve(farm.state_dir)))

    def request(self, method: str, path: str = "/admin/faults", body: Any = None) -> tuple[int, Any]:
        """(status, JSON answer) of one request."""
        import urllib.error
        import urllib.request

        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            f"http://{self.host}:{self.port}{path}",
            data=data,
            method=method,
            headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                return resp.status, json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"null")

    def inject(self, kind: str, duration_s: float, **params: Any) -> dict[str, Any]:
        """Start a fault now (or after ``start_s``); the fault as the farm scheduled it."""
        status, answer = self.request("POST", body={"kind": kind, "duration_s": duration_s, **params})
        if status != 201:
            raise ValueError(f"the farm refused the fault: {answer.get('error') if answer else status}")
        return dict(answer)

    def state(self) -> dict[str, Any]:
        """Active, scheduled and ended faults and the log."""
        status, answer = self.request("GET")
        if status != 200:
            raise ValueError(f"the farm answered {status}")
        return dict(answer)

    def clear(self) -> int:
        """End every fault now."""
        return int(self.request("DELETE")[1]["ended"])
