"""The reference portal, in process: every endpoint, its failure paths, stickiness, 503, metrics."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pyotp
import pytest

from gateload.targets.profile import Profile
from gateload.targets.reference.farm import ReferenceFarm
from gateload.targets.reference.harness import portal_login
from gateload.targets.reference.state import Account

HEADER = "X-Gateload-Server"

Scenario = Callable[[ReferenceFarm, aiohttp.ClientSession], Awaitable[Any]]


def run(profile: Profile, scenario: Scenario) -> Any:
    """Start a farm in this thread's event loop, run ``scenario(farm, http)``, stop the farm."""

    async def main() -> Any:
        async with ReferenceFarm(profile, seed=7) as farm, _browser() as http:
            return await scenario(farm, http)

    return asyncio.run(main())


def _browser() -> aiohttp.ClientSession:
    # unsafe=True: aiohttp's default cookie jar ignores cookies set by IP-address hosts like 127.0.0.1
    return aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))


def _account(farm: ReferenceFarm, index: int = 0) -> Account:
    return list(farm.state.accounts.values())[index]


async def _csrf(http: aiohttp.ClientSession, url: str) -> str:
    async with http.get(f"{url}/login") as r:
        text = await r.text()
    return text.split('name="csrf_token" value="')[1].split('"')[0]


def test_login_page_sets_session_cookie_and_csrf(fast_profile: Callable[..., Profile]) -> None:
    async def scenario(farm: ReferenceFarm, http: aiohttp.ClientSession) -> None:
        async with http.get(f"{farm.portal_url}/login") as r:
            assert r.status == 200
            assert r.headers[HEADER] in farm.effective_profile.server_ids
            assert r.content_type == "text/html"
            assert '<input type="hidden" name="csrf_token" value="' in await r.text()
            assert "gl_session" in r.cookies

    run(fast_profile(), scenario)


def test_login_failure_paths(fast_profile: Callable[..., Profile]) -> None:
    async def scenario(farm: ReferenceFarm, http: aiohttp.ClientSession) -> None:
        url, acct = farm.portal_url, _account(farm)
        good = {"username": acct.username, "password": acct.password}
        # no session at all (never fetched the login page): no CSRF token can be right
        async with _browser() as fresh, fresh.post(f"{url}/login", data={**good, "csrf_token": "x"}) as r:
            assert r.status == 403 and HEADER in r.headers
        csrf = await _csrf(http, url)
        async with http.post(f"{url}/login", data=good) as r:
            assert r.status == 403, "missing CSRF"
        async with http.post(f"{url}/login", data={**good, "csrf_token": csrf + "x"}) as r:
            assert r.status == 403, "wrong CSRF"
        async with http.post(f"{url}/login", data={**good, "password": "wrong", "csrf_token": csrf}) as r:
            assert r.status == 401, "wrong password"
        async with http.post(f"{url}/login", data={**good, "username": "nobody", "csrf_token": csrf}) as r:
            assert r.status == 401, "unknown user"
        async with http.get(f"{url}/api/apps") as r:
            assert r.status == 401, "failed logins must not log in"
        async with http.post(f"{url}/login", data={**good, "csrf_token": csrf}) as r:
            assert r.status == 200 and await r.json() == {"mfa_required": False}

    run(fast_profile(), scenario)


def test_apps_launch_documents_logout(fast_profile: Callable[..., Profile]) -> None:
    async def scenario(farm: ReferenceFarm, http: aiohttp.ClientSession) -> None:
        url = farm.portal_url
        async with http.get(f"{url}/api/apps") as r:
            assert r.status == 401
        async with http.get(f"{url}/documents/memo.pdf") as r:
            assert r.status == 401
        csrf = await portal_login(http, url, _account(farm))
        async with http.get(f"{url}/api/apps") as r:
            apps = (await r.json())["apps"]
            assert r.status == 200 and {"id", "name", "kind"} <= set(apps[0])
            assert "desktop" in {a["id"] for a in apps}
        # launch: CSRF header required, app must exist, body must be JSON
        async with http.post(f"{url}/api/launch", json={"app": "desktop"}) as r:
            assert r.status == 403
        async with http.post(f"{url}/api/launch", json={"app": "nope"}, headers={"X-CSRF-Token": csrf}) as r:
            assert r.status == 404
        async with http.post(f"{url}/api/launch", data=b"{not json", headers={"X-CSRF-Token": csrf}) as r:
            assert r.status == 400
        before = time.time()
        async with http.post(
            f"{url}/api/launch", json={"app": "desktop"}, headers={"X-CSRF-Token": csrf}
        ) as r:
            assert r.status == 200
            launch = await r.json()
        assert set(launch) == {"ticket", "host", "port", "username", "expires_at"}
        assert (launch["host"], launch["port"]) == ("127.0.0.1", farm.gateway_port)
        assert launch["username"] == _account(farm).username
        ttl = farm.effective_profile.farm.ticket_ttl_s  # type: ignore[union-attr]
        assert before + ttl - 1 < launch["expires_at"] < time.time() + ttl + 1
        # documents of the configured sizes
        for name, size in farm.effective_profile.farm.documents.items():  # type: ignore[union-attr]
            async with http.get(f"{url}/documents/{name}") as r:
                assert r.status == 200 and r.content_type == "application/octet-stream"
                assert len(await r.read()) == size
        async with http.get(f"{url}/documents/secret.txt") as r:
            assert r.status == 404
        # logout: CSRF required, then the session is gone
        async with http.post(f"{url}/logout") as r:
            assert r.status == 403
        async with http.post(f"{url}/logout", headers={"X-CSRF-Token": csrf}) as r:
            assert r.status == 200 and await r.json() == {"ok": True}
        async with http.get(f"{url}/api/apps") as r:
            assert r.status == 401
        async with http.post(f"{url}/logout", headers={"X-CSRF-Token": csrf}) as r:
            assert r.status == 401

    run(fast_profile(), scenario)


def test_mfa_step(fast_profile: Callable[..., Profile]) -> None:
    async def scenario(farm: ReferenceFarm, http: aiohttp.ClientSession) -> None:
        url, acct = farm.portal_url, _account(farm)
        assert acct.totp_secret, "mfa profiles generate a TOTP secret per account"
        csrf = await _csrf(http, url)
        form = {"username": acct.username, "password": acct.password, "csrf_token": csrf}
        async with http.post(f"{url}/login", data=form) as r:
            assert await r.json() == {"mfa_required": True}
        async with http.get(f"{url}/api/apps") as r:
            assert r.status == 401, "the password alone must not log in"
        code = pyotp.TOTP(acct.totp_secret).now()
        wrong = f"{(int(code) + 500_000) % 1_000_000:06d}"
        async with http.post(f"{url}/mfa", data={"code": wrong, "csrf_token": csrf}) as r:
            assert r.status == 401
        async with http.post(f"{url}/mfa", data={"code": code}) as r:
            assert r.status == 403
        async with http.post(f"{url}/mfa", data={"code": code, "csrf_token": csrf}) as r:
            assert r.status == 200 and await r.json() == {"ok": True}
        async with http.get(f"{url}/api/apps") as r:
            assert r.status == 200

    run(fast_profile(farm__mfa=True), scenario)


def test_mfa_credentials_file_has_totp_column(fast_profile: Callable[..., Profile]) -> None:
    async def scenario(farm: ReferenceFarm, _http: aiohttp.ClientSession) -> str:
        path = farm.state.credentials_path
        assert path.stat().st_mode & 0o777 == 0o600
        return path.read_text()

    text = run(fast_profile(farm__mfa=True, farm__accounts=7), scenario)
    lines = text.splitlines()
    assert lines[0] == "username,password,totp_secret"
    assert len(lines) == 8 and all(len(line.split(",")) == 3 for line in lines)


def test_sessions_are_sticky_and_new_sessions_rotate(fast_profile: Callable[..., Profile]) -> None:
    async def scenario(farm: ReferenceFarm, _http: aiohttp.ClientSession) -> tuple[list[str], list[set[str]]]:
        firsts, per_session = [], []
        for i in range(4):
            async with _browser() as http:
                seen = set()
                csrf = await portal_login(http, farm.portal_url, _account(farm, i))
                async with http.get(f"{farm.portal_url}/login") as r:
                    seen.add(r.headers[HEADER])
                    firsts.append(r.headers[HEADER])
                csrf = await _csrf(http, farm.portal_url)
                for path in ("/api/apps", "/documents/memo.pdf"):
                    async with http.get(farm.portal_url + path) as r:
                        seen.add(r.headers[HEADER])
                async with http.post(f"{farm.portal_url}/logout", headers={"X-CSRF-Token": csrf}) as r:
                    seen.add(r.headers[HEADER])
                per_session.append(seen)
        return firsts, per_session

    firsts, per_session = run(fast_profile(), scenario)
    assert all(len(s) == 1 for s in per_session), per_session
    assert sorted(firsts) == ["old-01", "old-02", "old-03", "old-04"]


def test_saturated_backend_answers_503(fast_profile: Callable[..., Profile]) -> None:
    # one server, one worker, no queue: a second concurrent request finds no room
    profile = fast_profile(
        farm__servers__0__count=1,
        farm__servers__0__queue_limit=0,
        farm__service__portal_page_ms=300.0,
        farm__service__distribution="constant",
    )

    async def scenario(farm: ReferenceFarm, http: aiohttp.ClientSession) -> None:
        first = asyncio.create_task(http.get(f"{farm.portal_url}/login"))
        while farm.metrics_snapshot()["servers"]["old-01"]["busy"] == 0:
            await asyncio.sleep(0.005)  # wait until the first request holds the only slot
        async with _browser() as other, other.get(f"{farm.portal_url}/login") as r:
            assert r.status == 503 and r.headers[HEADER] == "old-01"
        async with await first as r:
            assert r.status == 200
        async with http.get(f"{farm.portal_url}/healthz") as r:
            assert r.status == 200
        assert farm.metrics_snapshot()["servers"]["old-01"]["refused"]["portal"] == 1

    run(profile, scenario)


def test_healthz_and_unknown_paths_come_from_the_balancer(fast_profile: Callable[..., Profile]) -> None:
    async def scenario(farm: ReferenceFarm, http: aiohttp.ClientSession) -> None:
        async with http.get(f"{farm.portal_url}/healthz") as r:
            assert r.status == 200 and await r.json() == {"status": "ok"} and r.headers[HEADER] == "lb"
        async with http.get(f"{farm.portal_url}/nope") as r:
            assert r.status == 404 and r.headers[HEADER] == "lb"

    run(fast_profile(), scenario)


def test_metrics_json_and_prometheus(fast_profile: Callable[..., Profile]) -> None:
    async def scenario(farm: ReferenceFarm, http: aiohttp.ClientSession) -> tuple[dict[str, Any], str]:
        for _ in range(8):  # round robin: two new sessions per server
            async with _browser() as b, b.get(f"{farm.portal_url}/login") as r:
                assert r.status == 200
        async with http.get(f"{farm.portal_url}/metrics?format=json") as r:
            assert r.content_type == "application/json"
            data = await r.json()
        async with http.get(f"{farm.portal_url}/metrics") as r:
            assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            text = await r.text()
        assert data == {**farm.metrics_snapshot(), "uptime_s": data["uptime_s"]}
        return data, text

    data, text = run(fast_profile(), scenario)
    servers = data["servers"]
    assert list(servers) == ["old-01", "old-02", "old-03", "old-04"]
    for s in servers.values():
        assert s["served"]["portal_page"] == 2 and s["portal_sessions"] == 2
        assert s["ssh_sessions"] == 0 and s["queue_depth"] == 0 and s["busy"] == 0
        assert 0 < s["busy_seconds"] < 1.0
    assert 'gateload_served_total{server="old-03",op="portal_page"} 2' in text
    assert 'gateload_active_sessions{server="old-02",kind="portal"} 2' in text
    assert 'gateload_queue_depth{server="old-04"} 0' in text
    assert "# TYPE gateload_busy_seconds_total counter" in text


def test_idle_sessions_are_swept(fast_profile: Callable[..., Profile]) -> None:
    async def scenario(farm: ReferenceFarm, _http: aiohttp.ClientSession) -> None:
        for _ in range(3):
            async with _browser() as b, b.get(f"{farm.portal_url}/login") as r:
                assert r.status == 200
        assert farm.portal is not None
        assert farm.portal.sweep() == 0, "fresh sessions stay"
        assert farm.portal.sweep(now=time.monotonic() + 3600) == 3
        assert sum(s["portal_sessions"] for s in farm.metrics_snapshot()["servers"].values()) == 0

    run(fast_profile(), scenario)


@pytest.mark.parametrize("bind", ["192.0.2.1", "0.0.0.0"])
def test_non_loopback_bind_from_the_profile_is_refused(
    fast_profile: Callable[..., Profile], bind: str
) -> None:
    from gateload.errors import InputError

    with pytest.raises(InputError, match="pass --bind"):
        ReferenceFarm(fast_profile(farm__bind=bind))


def test_least_connections_sends_new_sessions_to_the_emptiest_backend(
    fast_profile: Callable[..., Profile],
) -> None:
    async def scenario(farm: ReferenceFarm, _http: aiohttp.ClientSession) -> list[str]:
        browsers = [_browser() for _ in range(4)]
        try:
            servers, tokens = [], []
            for i, b in enumerate(browsers):  # one session on each backend
                tokens.append(await portal_login(b, farm.portal_url, _account(farm, i)))
                async with b.get(f"{farm.portal_url}/api/apps") as r:
                    servers.append(r.headers[HEADER])
            async with browsers[2].post(
                f"{farm.portal_url}/logout", headers={"X-CSRF-Token": tokens[2]}
            ) as r:
                assert r.status == 200
            async with _browser() as newcomer, newcomer.get(f"{farm.portal_url}/login") as r:
                servers.append(r.headers[HEADER])
            return servers
        finally:
            for b in browsers:
                await b.close()

    servers = run(fast_profile(farm__balancer="least-connections"), scenario)
    assert sorted(servers[:4]) == ["old-01", "old-02", "old-03", "old-04"]
    assert servers[4] == servers[2], "the backend that lost its session gets the next one"
