"""A small JSON API portal, shaped unlike the reference portal, for tests/test_portal_flow.py.

``python tests/json_portal.py CREDENTIALS_CSV`` serves on a free loopback port and prints one line,
``ready PORT``. Its API (the shape of example-json-api-portal.toml):

- ``POST /api/v1/auth`` JSON ``{"login": {"user", "secret"}}`` -> 200 ``{"data": {"token", "mfa":
  {"required"}}}`` and header ``X-Request-Id``; 401 ``{"error"}`` on bad credentials, 415 for a body
  that is not JSON. No cookie: the token alone carries the session.
- ``POST /api/v1/auth/otp`` ``Authorization: Bearer T`` JSON ``{"otp"}`` -> 200 ``{"data": {"ok": true}}``;
  a token of an account with a TOTP secret works elsewhere only after this step.
- ``GET /api/v1/apps`` (bearer) -> 200 ``{"data": {"apps": [...]}}``.
- ``GET /api/v1/files/{name}`` (bearer) -> 200 bytes, 404 unknown file.
- ``DELETE /api/v1/auth`` (bearer) -> 204; the token is dead afterwards.
- ``GET /stats`` -> JSON counters (requests by route, auth failures, live tokens) for the test.

Every answer carries ``X-Backend: api-1``. A bad or dead token is 401. It has no launch route and no
ticket: the gateway takes the account password.
"""

from __future__ import annotations

import asyncio
import csv
import secrets
import sys
from collections import Counter
from pathlib import Path

import pyotp
from aiohttp import web

FILES = {"memo.pdf": b"m" * 4096, "report.xlsx": b"r" * 8192}


def make_app(accounts: dict[str, tuple[str, str]]) -> web.Application:
    """The portal for ``accounts`` (username -> (password, totp secret))."""
    tokens: dict[str, tuple[str, bool]] = {}  # token -> (username, fully logged on)
    stats: Counter[str] = Counter()

    @web.middleware
    async def backend(request: web.Request, handler: object) -> web.StreamResponse:
        resource = request.match_info.route.resource
        stats[f"{request.method} {resource.canonical if resource else request.path}"] += 1
        try:
            response = await handler(request)  # type: ignore[operator]
        except web.HTTPException as exc:
            exc.headers["X-Backend"] = "api-1"
            raise
        response.headers["X-Backend"] = "api-1"
        return response

    def session(request: web.Request, full: bool = True) -> str:
        auth = request.headers.get("Authorization", "")
        token = auth.removeprefix("Bearer ") if auth.startswith("Bearer ") else ""
        entry = tokens.get(token)
        if entry is None or (full and not entry[1]):
            stats["bad_token"] += 1
            raise web.HTTPUnauthorized(text='{"error": "token"}', content_type="application/json")
        return token

    async def auth(request: web.Request) -> web.Response:
        try:
            login = (await request.json())["login"]
            user, secret = str(login["user"]), str(login["secret"])
        except (ValueError, KeyError, TypeError):
            raise web.HTTPUnsupportedMediaType() from None
        account = accounts.get(user)
        if account is None or account[0] != secret:
            stats["auth_failed"] += 1
            raise web.HTTPUnauthorized(text='{"error": "credentials"}', content_type="application/json")
        token = secrets.token_urlsafe(24)
        tokens[token] = (user, not account[1])
        body = {"data": {"token": token, "mfa": {"required": bool(account[1])}}}
        return web.json_response(body, headers={"X-Request-Id": secrets.token_hex(4)})

    async def otp(request: web.Request) -> web.Response:
        token = session(request, full=False)
        user = tokens[token][0]
        code = str((await request.json()).get("otp", ""))
        if not pyotp.TOTP(accounts[user][1]).verify(code, valid_window=1):
            stats["otp_failed"] += 1
            raise web.HTTPUnauthorized(text='{"error": "otp"}', content_type="application/json")
        tokens[token] = (user, True)
        return web.json_response({"data": {"ok": True}})

    async def apps(request: web.Request) -> web.Response:
        session(request)
        return web.json_response({"data": {"apps": [{"id": "shell", "name": "SSH shell"}]}})

    async def files(request: web.Request) -> web.Response:
        session(request)
        body = FILES.get(request.match_info["name"])
        if body is None:
            raise web.HTTPNotFound()
        return web.Response(body=body, content_type="application/octet-stream")

    async def logout(request: web.Request) -> web.Response:
        del tokens[session(request)]
        return web.Response(status=204)

    async def stat(_request: web.Request) -> web.Response:
        return web.json_response({**stats, "live_tokens": len(tokens)})

    app = web.Application(middlewares=[backend])
    app.router.add_post("/api/v1/auth", auth)
    app.router.add_post("/api/v1/auth/otp", otp)
    app.router.add_delete("/api/v1/auth", logout)
    app.router.add_get("/api/v1/apps", apps)
    app.router.add_get("/api/v1/files/{name}", files)
    app.router.add_get("/stats", stat)
    return app


def read_accounts(path: Path) -> dict[str, tuple[str, str]]:
    """username -> (password, totp secret) from a gateload credentials CSV."""
    with path.open(newline="") as fh:
        return {r["username"]: (r["password"], r.get("totp_secret") or "") for r in csv.DictReader(fh)}


async def serve(credentials: Path) -> None:
    runner = web.AppRunner(make_app(read_accounts(credentials)), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    print(f"ready {port}", flush=True)
    await asyncio.Event().wait()  # until the test terminates the process


if __name__ == "__main__":
    asyncio.run(serve(Path(sys.argv[1])))
