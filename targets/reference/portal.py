"""The portal (aiohttp): login with CSRF, optional TOTP step, app list, launch tickets, documents.

A portal session (cookie ``gl_session``) is pinned to one simulated backend at ``GET /login``, as a
sticky load balancer does. Every request first checks the backend's queue (503 beyond its limit),
then holds a worker slot for its service time, then does its (cheap) real work. Nothing is logged per
request: the load generator shares this machine's cores.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import secrets
import time

import pyotp
from aiohttp import web

from gateload.targets.reference.capacity import SimServer
from gateload.targets.reference.context import BALANCER_ID, FarmContext
from gateload.targets.reference.metrics import PROMETHEUS_CONTENT_TYPE, render_json, render_prometheus

COOKIE = "gl_session"
CSRF_HEADER = "X-CSRF-Token"
# Idle portal sessions are forgotten, so a load test that never logs out cannot grow memory forever.
IDLE_TTL_S = {"new": 120.0, "mfa": 120.0, "ok": 900.0}
SWEEP_EVERY_S = 10.0

APPS = (
    {"id": "desktop", "name": "Homeoffice desktop", "kind": "ssh"},
    {"id": "files", "name": "Documents", "kind": "sftp"},
    {"id": "intranet", "name": "Intranet", "kind": "tunnel"},
)
APP_IDS = frozenset(a["id"] for a in APPS)

LOGIN_PAGE = """<!doctype html>
<html><head><title>Homeoffice portal</title></head><body>
<h1>Homeoffice portal</h1>
<form method="post" action="/login">
<input type="hidden" name="csrf_token" value="{csrf}">
<label>User <input name="username"></label>
<label>Password <input name="password" type="password"></label>
<button type="submit">Log in</button>
</form>
</body></html>
"""


class PortalSession:
    """One browser session: its backend, CSRF token, user and login state (new, mfa, ok)."""

    __slots__ = ("csrf", "last_seen", "server", "state", "user")

    def __init__(self, server: SimServer) -> None:
        self.server = server
        self.csrf = secrets.token_urlsafe(24)
        self.user = ""
        self.state = "new"
        self.last_seen = time.monotonic()


class Portal:
    """The portal's routes and its session table."""

    def __init__(self, ctx: FarmContext) -> None:
        self.ctx = ctx
        self.sessions: dict[str, PortalSession] = {}
        farm = ctx.profile.farm
        assert farm is not None
        self.mfa = farm.mfa
        self._documents = {name: (ctx.state.documents_dir / name).read_bytes() for name in farm.documents}
        self._header = ctx.profile.portal.server_header or "X-Gateload-Server"
        self._sweeper: asyncio.Task[None] | None = None

    def app(self) -> web.Application:
        """The aiohttp application."""
        app = web.Application()
        app.add_routes(
            [
                web.get("/login", self.login_page),
                web.post("/login", self.login),
                web.post("/mfa", self.mfa_step),
                web.get("/api/apps", self.apps),
                web.post("/api/launch", self.launch),
                web.get("/documents/{name}", self.document),
                web.post("/logout", self.logout),
                web.get("/healthz", self.healthz),
                web.get("/metrics", self.metrics),
            ]
        )
        app.on_response_prepare.append(self._default_header)
        app.on_startup.append(self._start_sweeper)
        app.on_cleanup.append(self._stop_sweeper)
        return app

    # --- plumbing ------------------------------------------------------------------------------

    def _reply(self, server: SimServer | None, status: int, body: object) -> web.Response:
        return web.json_response(
            body, status=status, headers={self._header: server.id if server else BALANCER_ID}
        )

    def _route(self, request: web.Request) -> tuple[PortalSession | None, SimServer]:
        """The request's session (touched) and backend; session-less requests go to the balancer."""
        session = self.sessions.get(request.cookies.get(COOKIE, ""))
        if session is None:
            return None, self.ctx.cluster.pick("portal")
        session.last_seen = time.monotonic()
        return session, session.server

    async def _serve(self, server: SimServer, op: str, seconds: float | None = None) -> web.Response | None:
        """Admission control then service time; a 503 response when the backend is saturated."""
        if not server.try_admit("portal"):
            return self._reply(server, 503, {"error": "server busy, try again later"})
        await server.work(op, seconds)
        return None

    def _csrf_ok(self, session: PortalSession | None, token: str | None) -> bool:
        return session is not None and bool(token) and hmac.compare_digest(session.csrf, str(token))

    def _drop(self, sid: str) -> None:
        session = self.sessions.pop(sid, None)
        if session is not None:
            session.server.portal_sessions -= 1

    async def _default_header(self, _request: web.Request, response: web.StreamResponse) -> None:
        # 404/405 from the router never reached a backend
        if self._header not in response.headers:
            response.headers[self._header] = BALANCER_ID

    # --- endpoints -----------------------------------------------------------------------------

    async def login_page(self, request: web.Request) -> web.StreamResponse:
        """A fresh session with a CSRF token; an existing cookie keeps its backend (stickiness)."""
        old_sid = request.cookies.get(COOKIE, "")
        _, server = self._route(request)
        if refused := await self._serve(server, "portal_page"):
            return refused
        self._drop(old_sid)
        session = PortalSession(server)
        sid = secrets.token_urlsafe(24)
        self.sessions[sid] = session
        server.portal_sessions += 1
        response = web.Response(
            text=LOGIN_PAGE.format(csrf=session.csrf),
            content_type="text/html",
            headers={self._header: server.id},
        )
        response.set_cookie(COOKIE, sid, httponly=True, samesite="Strict", path="/")
        return response

    async def login(self, request: web.Request) -> web.StreamResponse:
        session, server = self._route(request)
        if refused := await self._serve(server, "portal_login"):
            return refused
        form = await request.post()
        if not self._csrf_ok(session, form.get("csrf_token")):  # type: ignore[arg-type]
            return self._reply(server, 403, {"error": "missing or wrong CSRF token; GET /login first"})
        assert session is not None
        if server.fault is not None and server.fault.fails_auth():  # auth_fail fault (faults.py)
            return self._reply(server, 401, {"error": "wrong username or password"})
        account = self.ctx.state.accounts.get(str(form.get("username", "")))
        password = str(form.get("password", ""))
        if account is None or not hmac.compare_digest(account.password.encode(), password.encode()):
            return self._reply(server, 401, {"error": "wrong username or password"})
        session.user = account.username
        session.state = "mfa" if self.mfa else "ok"
        return self._reply(server, 200, {"mfa_required": self.mfa})

    async def mfa_step(self, request: web.Request) -> web.StreamResponse:
        session, server = self._route(request)
        if refused := await self._serve(server, "portal_login"):
            return refused
        form = await request.post()
        if not self._csrf_ok(session, form.get("csrf_token")):  # type: ignore[arg-type]
            return self._reply(server, 403, {"error": "missing or wrong CSRF token"})
        assert session is not None
        if session.state != "mfa":
            return self._reply(server, 401, {"error": "no MFA step pending; POST /login first"})
        secret = self.ctx.state.accounts[session.user].totp_secret
        # valid_window=1 accepts the neighbouring 30 s steps, for clock skew at step boundaries
        if not pyotp.TOTP(secret).verify(str(form.get("code", "")), valid_window=1):
            return self._reply(server, 401, {"error": "wrong one-time code"})
        session.state = "ok"
        return self._reply(server, 200, {"ok": True})

    async def apps(self, request: web.Request) -> web.StreamResponse:
        session, server = self._route(request)
        if refused := await self._serve(server, "portal_page"):
            return refused
        if session is None or session.state != "ok":
            return self._reply(server, 401, {"error": "not logged in"})
        return self._reply(server, 200, {"apps": list(APPS)})

    async def launch(self, request: web.Request) -> web.StreamResponse:
        session, server = self._route(request)
        if refused := await self._serve(server, "portal_launch"):
            return refused
        if session is None or session.state != "ok":
            return self._reply(server, 401, {"error": "not logged in"})
        if not self._csrf_ok(session, request.headers.get(CSRF_HEADER)):
            return self._reply(server, 403, {"error": f"missing or wrong {CSRF_HEADER} header"})
        try:
            app_id = (await request.json()).get("app")
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
            return self._reply(server, 400, {"error": 'body must be JSON like {"app": "desktop"}'})
        if app_id not in APP_IDS:
            return self._reply(server, 404, {"error": f"unknown app {app_id!r}"})
        ticket, expires_at = self.ctx.tickets.issue(session.user)
        return self._reply(
            server,
            200,
            {
                "ticket": ticket,
                "host": self.ctx.gateway_host,
                "port": self.ctx.gateway_port,
                "username": session.user,
                "expires_at": expires_at,
            },
        )

    async def document(self, request: web.Request) -> web.StreamResponse:
        session, server = self._route(request)
        body = self._documents.get(request.match_info["name"])
        allowed = session is not None and session.state == "ok"
        # the backend works for the page and, when it sends the file, for the bytes at the set rate
        seconds = server.service_time("portal_page")
        if allowed and body is not None:
            seconds += server.service_time("document", len(body))
        if refused := await self._serve(server, "document", seconds):
            return refused
        if not allowed:
            return self._reply(server, 401, {"error": "not logged in"})
        if body is None:
            return self._reply(server, 404, {"error": "no such document"})
        return web.Response(
            body=body, content_type="application/octet-stream", headers={self._header: server.id}
        )

    async def logout(self, request: web.Request) -> web.StreamResponse:
        session, server = self._route(request)
        if refused := await self._serve(server, "portal_page"):
            return refused
        if session is None or session.state == "new":
            return self._reply(server, 401, {"error": "not logged in"})
        if not self._csrf_ok(session, request.headers.get(CSRF_HEADER)):
            return self._reply(server, 403, {"error": f"missing or wrong {CSRF_HEADER} header"})
        self._drop(request.cookies.get(COOKIE, ""))
        response = self._reply(server, 200, {"ok": True})
        response.del_cookie(COOKIE, path="/")
        return response

    async def healthz(self, _request: web.Request) -> web.StreamResponse:
        return self._reply(None, 200, {"status": "ok"})

    async def metrics(self, request: web.Request) -> web.StreamResponse:
        snapshot = self.ctx.snapshot()
        headers = {self._header: BALANCER_ID}
        if request.query.get("format") == "json":
            return web.Response(text=render_json(snapshot), content_type="application/json", headers=headers)
        return web.Response(
            text=render_prometheus(snapshot),
            headers={**headers, "Content-Type": PROMETHEUS_CONTENT_TYPE},
        )

    def forget_server(self, server: SimServer) -> int:
        """Forget the sessions pinned to ``server`` (it died and came back); returns how many."""
        gone = [sid for sid, s in self.sessions.items() if s.server is server]
        for sid in gone:
            self._drop(sid)
        return len(gone)

    # --- idle sessions -------------------------------------------------------------------------

    async def _start_sweeper(self, _app: web.Application) -> None:
        self._sweeper = asyncio.create_task(self._sweep_forever())

    async def _stop_sweeper(self, _app: web.Application) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_EVERY_S)
            self.sweep()

    def sweep(self, now: float | None = None) -> int:
        """Forget sessions idle longer than their TTL; returns how many were dropped."""
        now = time.monotonic() if now is None else now
        stale = [sid for sid, s in self.sessions.items() if now - s.last_seen > IDLE_TTL_S[s.state]]
        for sid in stale:
            self._drop(sid)
        return len(stale)
