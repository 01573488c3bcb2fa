"""The portal side against real software: stunnel (TLS, per-run CA) -> haproxy (sticky) -> 3 backends.

What is checked: certificate verification stays on and trusts only the run's CA; haproxy's cookie
pins a portal session to one backend (and that pinning is what keeps it working); the PortalUser's
per-server attribution, by haproxy's header or by its cookie, agrees with haproxy's own per-server
request counters; and the share per backend computed from the samples with pandas.
"""

from __future__ import annotations

import dataclasses
import socket
import ssl
from collections import Counter
from collections.abc import Iterator

import aiohttp
import pandas as pd
import pytest
import users_support  # noqa: F401  (gevent monkey-patching first, as under the locust command)
from real_support import run_async, running_farm
from users_support import Run, run_users

from gateload.locustfiles.lib.portal import PortalUser
from gateload.targets.local.farm import LocalRealFarm
from gateload.targets.local.haproxy import HTTP_BACKEND, SERVER_HEADER, STICKY_COOKIE
from gateload.targets.local.tlsca import make_test_ca
from gateload.targets.profile import load_profile
from gateload.targets.reference.harness import portal_login
from gateload.targets.reference.state import read_credentials

USERS = 6


@pytest.fixture(scope="module")
def farm() -> Iterator[LocalRealFarm]:
    with running_farm("real-portal", portal_backends=3, gateways=0) as local:
        yield local


def _tls(farm: LocalRealFarm) -> ssl.SSLContext:
    assert farm.ca is not None
    return ssl.create_default_context(cafile=str(farm.ca.ca_cert))


def _http(context: ssl.SSLContext) -> aiohttp.ClientSession:
    # unsafe=True: aiohttp's default jar ignores cookies from IP addresses such as 127.0.0.1.
    return aiohttp.ClientSession(
        cookie_jar=aiohttp.CookieJar(unsafe=True), connector=aiohttp.TCPConnector(ssl=context)
    )


def test_tls_is_verified_against_the_run_ca_only(farm: LocalRealFarm) -> None:
    assert farm.tls is not None and farm.ca is not None
    url = farm.tls.url

    async def scenario() -> int:
        async with _http(ssl.create_default_context()) as system_cas:
            with pytest.raises(aiohttp.ClientConnectorCertificateError):
                await system_cas.get(f"{url}/healthz")
        async with _http(_tls(farm)) as trusted, trusted.get(f"{url}/healthz") as r:
            return r.status

    assert run_async(scenario()) == 200
    # The certificate stunnel presents is the run's: issued by the per-run CA, for 127.0.0.1.
    with (
        socket.create_connection((farm.tls.host, farm.tls.port), timeout=5) as raw,
        _tls(farm).wrap_socket(raw, server_hostname=farm.tls.host) as tls,
    ):
        cert = tls.getpeercert()
    issuer = dict(pair[0] for pair in cert["issuer"])
    assert issuer["commonName"].startswith("gateload test CA")
    assert ("IP Address", "127.0.0.1") in cert["subjectAltName"]


def test_haproxy_cookie_pins_each_portal_session_to_one_backend(farm: LocalRealFarm) -> None:
    assert farm.tls is not None and farm.portal_accounts is not None
    url = farm.tls.url
    accounts = read_credentials(farm.portal_accounts)[:6]

    async def one_session(account: object) -> tuple[set[str], set[str], str]:
        async with _http(_tls(farm)) as http:
            csrf = await portal_login(http, url, account)
            seen_lb, seen_backend = set(), set()
            for method, path in (("GET", "/api/apps"), ("POST", "/api/launch"), ("POST", "/logout")):
                kw = {"json": {"app": "desktop"}} if path == "/api/launch" else {}
                async with http.request(method, url + path, headers={"X-CSRF-Token": csrf}, **kw) as r:
                    assert r.status == 200, (path, r.status)
                    seen_lb.add(r.headers[SERVER_HEADER])
                    seen_backend.add(r.headers["X-Gateload-Server"])
            cookie = next(c.value for c in http.cookie_jar if c.key == STICKY_COOKIE)
            return seen_lb, seen_backend, cookie

    async def scenario() -> list[tuple[set[str], set[str], str]]:
        return [await one_session(a) for a in accounts]

    sessions = run_async(scenario())
    for seen_lb, seen_backend, cookie in sessions:
        # One backend per session, named alike by haproxy's header, its cookie and the backend itself.
        assert seen_lb == seen_backend == {cookie}
    assert Counter(cookie for *_, cookie in sessions) == Counter({b: 2 for b in farm.backend_ids})


def test_without_the_sticky_cookie_the_session_is_lost(farm: LocalRealFarm) -> None:
    """The backends share no session state: only haproxy's pinning keeps a logged-on session."""
    assert farm.tls is not None and farm.portal_accounts is not None
    url, account = farm.tls.url, read_credentials(farm.portal_accounts)[0]

    async def scenario() -> tuple[str, int, str]:
        async with _http(_tls(farm)) as http:
            await portal_login(http, url, account)
            pinned = next(c.value for c in http.cookie_jar if c.key == STICKY_COOKIE)
            session = {c.key: c.value for c in http.cookie_jar if c.key != STICKY_COOKIE}
        # same portal session cookie, no SERVERID: round robin sends it to the next backend
        async with _http(_tls(farm)) as fresh, fresh.get(f"{url}/api/apps", cookies=session) as r:
            return pinned, r.status, r.headers[SERVER_HEADER]

    pinned, status, served_by = run_async(scenario())
    assert served_by != pinned
    assert status == 401


def _visits(run: Run) -> int:
    return run.count("HTTP", "POST /logout")


@pytest.mark.parametrize("attribution", ["header", "cookie"])
def test_portal_user_attribution_matches_haproxy_counters(farm: LocalRealFarm, attribution: str) -> None:
    assert farm.portal_lb is not None
    profile = farm.effective_profile(accounts="portal")
    portal = profile.portal
    if attribution == "cookie":  # no header: the sticky cookie alone names the backend
        portal = dataclasses.replace(portal, server_header="")
    workload = dataclasses.replace(profile.workload, think_min_s=0.0, think_max_s=0.01)
    path = farm.write_profile(f"portal-{attribution}", accounts="portal", portal=portal, workload=workload)
    assert load_profile(path).portal.tls_verify

    before = farm.portal_lb.counts(HTTP_BACKEND, "req_tot")
    run = run_users(path, PortalUser, users=USERS, until=lambda r: _visits(r) >= 30, timeout_s=60)
    after = farm.portal_lb.counts(HTTP_BACKEND, "req_tot")

    assert _visits(run) >= 30, run.errors()
    assert run.operations(ok=False) == Counter(), run.errors()
    samples = pd.DataFrame(
        {"server": s["context"]["server"], "name": s["name"]}
        for s in run.samples
        if s["request_type"] == "HTTP"
    )
    assert samples["server"].notna().all()
    per_server = samples.groupby("server").size()
    lb_counts = pd.Series({srv: after[srv] - before[srv] for srv in after})
    assert sorted(per_server.index) == sorted(farm.backend_ids)
    # haproxy saw every sampled request; a request in flight when the users were stopped may have
    # reached haproxy without becoming a sample: at most one per user.
    gap = lb_counts.reindex(per_server.index) - per_server
    assert (gap >= 0).all() and gap.sum() <= USERS, pd.DataFrame(
        {"samples": per_server, "haproxy": lb_counts}
    )
    share = per_server / per_server.sum()
    # Round robin per visit over 3 backends: each takes about a third.
    assert ((share - 1 / 3).abs() < 0.1).all(), share
    print(f"{attribution}: share per backend", share.round(3).to_dict(), "haproxy", lb_counts.to_dict())


def test_portal_user_refuses_a_certificate_from_another_ca(farm: LocalRealFarm) -> None:
    foreign = make_test_ca(farm.state_dir / "foreign-ca")
    profile = farm.effective_profile(accounts="portal")
    portal = dataclasses.replace(profile.portal, ca_file=str(foreign.ca_cert))
    path = farm.write_profile("portal-foreign-ca", accounts="portal", portal=portal)
    run = run_users(path, PortalUser, users=2, until=lambda r: len(r.samples) >= 4, timeout_s=30)
    assert len(run.samples) >= 4
    assert run.operations(ok=True) == Counter()  # nothing got through an untrusted certificate
    assert set(run.errors()) == {"tls_error"}, run.errors()
