"""ReferenceFarm: the portal, the gateway and the intranet of one profile, started and stopped together.

Usage::

    async with ReferenceFarm(load_profile("targets/profiles/reference-before.toml")) as farm:
        print(farm.portal_url, farm.gateway_port)
        dump_profile(farm.effective_profile, "effective.toml")

Port 0 in the profile (portal URL, gateway port, intranet port) means "pick a free port"; the
effective profile names the ports actually bound and absolute paths into the state folder.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import random
import socket
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

import asyncssh
from aiohttp import web

from gateload.errors import InputError
from gateload.memory import RELEASE_EVERY_S, release_free_memory
from gateload.targets.profile import Profile, is_loopback
from gateload.targets.reference.capacity import Cluster
from gateload.targets.reference.context import FarmContext
from gateload.targets.reference.faults import FaultController, admin_token, build_admin_app
from gateload.targets.reference.gateway import start_gateway
from gateload.targets.reference.intranet import build_intranet_app
from gateload.targets.reference.logins import AccountLogins
from gateload.targets.reference.portal import Portal
from gateload.targets.reference.state import FarmState, prepare_state
from gateload.targets.reference.tickets import TicketBook

BACKLOG = 1024  # a ramping load test opens many connections at once
SHUTDOWN_GRACE_S = 2.0


class ReferenceFarm:
    """The embedded reference gateway farm of one profile (``target.kind = "reference"``)."""

    def __init__(
        self,
        profile: Profile,
        *,
        state_dir: Path | None = None,
        bind: str | None = None,
        seed: int | None = None,
    ) -> None:
        """``bind`` overrides ``farm.bind`` and is the explicit way to listen beyond loopback."""
        if profile.farm is None:
            raise InputError(
                f"{profile.path}: target.kind is '{profile.target.kind}'; "
                "gateload serve needs a reference profile with a [farm] section"
            )
        self.profile = profile
        self.farm = profile.farm
        self.state_dir = Path(state_dir).resolve() if state_dir else profile.resolve(profile.farm.state_dir)
        self.bind = bind or profile.farm.bind
        if bind is None and not is_loopback(self.bind):
            raise InputError(
                f"{profile.path}: farm.bind is '{self.bind}', which is not loopback; "
                f"pass --bind {self.bind} to expose the farm beyond this machine on purpose"
            )
        self._rng = random.Random(seed)
        self._logins = AccountLogins(self.farm.max_sessions_per_account)  # checks the limit now
        self.context: FarmContext | None = None
        self.portal: Portal | None = None
        self._runners: list[web.AppRunner] = []
        self._gateway: asyncssh.SSHAcceptor | None = None
        self.portal_url = ""
        self.gateway_port = 0
        self.intranet_port = 0
        self.admin_port = 0  # the fault admin endpoint, always on 127.0.0.1
        self._effective: Profile | None = None
        self._housekeeping: asyncio.Task[None] | None = None

    async def __aenter__(self) -> ReferenceFarm:
        await self.start()
        return self

    async def __aexit__(
        self, _t: type[BaseException] | None, _e: BaseException | None, _tb: TracebackType | None
    ) -> None:
        await self.stop()

    @property
    def state(self) -> FarmState:
        assert self.context is not None, "start() the farm first"
        return self.context.state

    @property
    def effective_profile(self) -> Profile:
        """The profile with the bound ports and absolute state paths (credentials, pinned host key)."""
        assert self._effective is not None, "start() the farm first"
        return self._effective

    def metrics_snapshot(self) -> dict[str, Any]:
        """Per-server sessions, queue depth, served counts and busy time, as /metrics reports them."""
        assert self.context is not None, "start() the farm first"
        return self.context.snapshot()

    async def start(self) -> None:
        """Prepare the state folder and start intranet, gateway and portal; returns when they listen."""
        state = prepare_state(self.state_dir, self.farm)
        cluster = Cluster(self.farm, self._rng)
        ctx = FarmContext(
            profile=self.profile,
            cluster=cluster,
            tickets=TicketBook(self.farm.ticket_ttl_s),
            state=state,
            logins=self._logins,
        )
        ctx.faults = FaultController(cluster, ctx.ssh_connections, seed=self._rng.random())
        self.context = ctx
        try:
            await self._start_services(ctx)
        except BaseException:
            await self.stop()
            raise
        self._effective = self._effective_profile(state)
        self._housekeeping = asyncio.create_task(_release_memory_forever())

    async def _start_services(self, ctx: FarmContext) -> None:
        # the intranet is internal: always loopback, whatever farm.bind says
        intranet_sock = _listen("127.0.0.1", self.farm.intranet_port, "farm.intranet_port")
        self.intranet_port = intranet_sock.getsockname()[1]
        await self._serve_app(build_intranet_app(ctx), intranet_sock)

        gateway_port = self.profile.gateway.port
        try:
            self._gateway = await start_gateway(ctx, self.bind, gateway_port, self.intranet_port, BACKLOG)
        except OSError as exc:
            raise _busy_port("gateway.port", self.bind, gateway_port, exc) from None
        self.gateway_port = self._gateway.get_port()
        ctx.gateway_host = self._public_host(self.profile.gateway.host)
        ctx.gateway_port = self.gateway_port

        url = urlsplit(self.profile.portal.url)
        portal_sock = _listen(self.bind, url.port or 0, "portal.url")
        self.portal = Portal(ctx)
        await self._serve_app(self.portal.app(), portal_sock)
        await self._start_faults(ctx)
        host = self._public_host(url.hostname or self.bind)
        shown = f"[{host}]" if ":" in host else host
        self.portal_url = f"http://{shown}:{portal_sock.getsockname()[1]}"

    async def _start_faults(self, ctx: FarmContext) -> None:
        """The fault schedule (from now) and its admin endpoint, which is loopback-only whatever the bind."""
        assert ctx.faults is not None and self.portal is not None
        ctx.faults.on_restart.append(self.portal.forget_server)
        admin_sock = _listen("127.0.0.1", self.farm.admin_port, "farm.admin_port")
        self.admin_port = admin_sock.getsockname()[1]
        await self._serve_app(build_admin_app(ctx.faults, admin_token(self.state_dir)), admin_sock)
        ctx.faults.start(self.farm.faults)

    async def _serve_app(self, app: web.Application, sock: socket.socket) -> None:
        # access_log=None: no per-request logging on the hot path
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=SHUTDOWN_GRACE_S)
        self._runners.append(runner)
        await runner.setup()
        await web.SockSite(runner, sock, backlog=BACKLOG).start()

    def _public_host(self, configured: str) -> str:
        """The host clients should dial: the bind address, unless it is a wildcard."""
        return configured if self.bind in ("0.0.0.0", "::", "") else self.bind

    def _effective_profile(self, state: FarmState) -> Profile:
        p = self.profile
        return dataclasses.replace(
            p,
            portal=dataclasses.replace(p.portal, url=self.portal_url),
            gateway=dataclasses.replace(
                p.gateway,
                host=self._public_host(p.gateway.host),
                port=self.gateway_port,
                host_key=str(state.host_key_pub_path),
                host_key_fingerprint="",
            ),
            credentials=dataclasses.replace(p.credentials, file=str(state.credentials_path)),
            farm=dataclasses.replace(
                self.farm,
                state_dir=str(self.state_dir),
                bind=self.bind,
                intranet_port=self.intranet_port,
                admin_port=self.admin_port,
            ),
        )

    async def stop(self) -> None:
        """Stop listening, close open SSH connections and portal keep-alives; safe to call twice."""
        if self._housekeeping is not None:
            self._housekeeping.cancel()
            self._housekeeping = None
        if self._gateway is not None:
            self._gateway.close()
            await self._gateway.wait_closed()
            self._gateway = None
        if self.context is not None and self.context.faults is not None:
            await self.context.faults.stop()  # a stall releases its waiters, so nothing hangs on it
        if self.context is not None:
            conns = list(self.context.ssh_connections)
            for conn in conns:
                conn.close()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(
                    asyncio.gather(*(c.wait_closed() for c in conns), return_exceptions=True),
                    SHUTDOWN_GRACE_S,
                )
        for runner in reversed(self._runners):
            await runner.cleanup()
        self._runners.clear()


async def _release_memory_forever() -> None:
    """A long-running farm churns buffers too (SFTP documents, SSH packets): keep its memory flat."""
    while True:
        await asyncio.sleep(RELEASE_EVERY_S)
        release_free_memory()


def _listen(host: str, port: int, key: str) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family, backlog=BACKLOG)
    except OSError as exc:
        raise _busy_port(key, host, port, exc) from None


def _busy_port(key: str, host: str, port: int, exc: OSError) -> InputError:
    return InputError(
        f"cannot listen on {host}:{port} ({key}): {exc.strerror or exc}; "
        "stop whatever uses it or pass --free-ports"
    )


def with_free_ports(profile: Profile) -> Profile:
    """The profile with portal, gateway, intranet and admin ports set to 0 (the farm picks free ones)."""
    url = urlsplit(profile.portal.url)
    host = f"[{url.hostname}]" if url.hostname and ":" in url.hostname else url.hostname
    farm = dataclasses.replace(profile.farm, intranet_port=0, admin_port=0) if profile.farm else None
    return dataclasses.replace(
        profile,
        portal=dataclasses.replace(profile.portal, url=f"{url.scheme}://{host}:0"),
        gateway=dataclasses.replace(profile.gateway, port=0),
        farm=farm,
    )
