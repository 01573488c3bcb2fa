"""The homeoffice portal: a reusable client for one employee's portal session, and ``PortalUser``.

Samples are fired with Locust ``request_type`` ``"HTTP"`` and names that say the method and the path
template (``"GET /login"``, ``"GET /documents/[doc]"``), so ``type name`` reads well in the Locust UI and
keys the analysis. Each sample's context carries the backend that answered (``portal.server_header`` or
the balancer cookie ``portal.server_cookie``) and the error class of a failure.

TLS is verified by default against ``portal.ca_file`` (system CAs when empty); ``portal.tls_verify =
false`` is the explicit opt-out.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import quote, urlencode

import gevent.ssl
from locust import FastHttpUser, task
from locust.contrib.fasthttp import FastHttpSession, FastResponse, insecure_ssl_context_factory

from locustfiles.lib.errors import OperationError, RecordedFailure, classify, safe_error
from locustfiles.lib.runtime import Account, Target, next_user_id, sample_context, target_for
from targets.profile import Profile

T = TypeVar("T")

HTTP = "HTTP"
_CSRF_INPUT = re.compile(r"<input\b[^>]*\bname=[\"']csrf_token[\"'][^>]*>", re.IGNORECASE)
_VALUE = re.compile(r"\bvalue=[\"']([^\"']*)[\"']", re.IGNORECASE)
_FORM = {"Content-Type": "application/x-www-form-urlencoded"}


@dataclass(frozen=True)
class Ticket:
    """A one-time gateway ticket from ``POST /api/launch``; the secret is the SSH password."""

    host: str
    port: int
    username: str
    secret: str = field(repr=False)
    expires_at: float | None = None


def ssl_context_factory(profile: Profile) -> Callable[..., Any]:
    """A TLS context factory: verifying against ``portal.ca_file`` unless ``tls_verify`` is false."""
    if not profile.portal.tls_verify:
        return insecure_ssl_context_factory
    ca_file = str(profile.resolve(profile.portal.ca_file)) if profile.portal.ca_file else None

    def factory(**_: Any) -> gevent.ssl.SSLContext:
        # geventhttpclient offers its own CA bundle as cafile; the profile's CA (or the system's) wins.
        return gevent.ssl.create_default_context(cafile=ca_file)

    return factory


def http_session(user: Any, profile: Profile) -> FastHttpSession:
    """A fresh FastHttp session (own cookies and connections) to the portal, as a new browser has."""
    timeout = profile.workload.timeout_s
    return FastHttpSession(
        base_url=profile.portal.url.rstrip("/"),
        request_event=user.environment.events.request,
        user=user,
        insecure=not profile.portal.tls_verify,
        ssl_context_factory=ssl_context_factory(profile),
        network_timeout=timeout,
        connection_timeout=timeout,
        max_retries=0,
    )


def parse_csrf(body: str) -> str:
    """The ``csrf_token`` hidden input's value in the login page."""
    tag = _CSRF_INPUT.search(body)
    value = _VALUE.search(tag.group(0)) if tag else None
    if value is None:
        raise ValueError("no csrf_token in the login page")
    return value.group(1)


class PortalClient:
    """One employee's portal session: logon (with MFA), apps, launch, documents, logout.

    Every request fires one sample. A failed request raises :class:`RecordedFailure` (already
    recorded), so the caller only decides how to recover.
    """

    def __init__(
        self,
        user: Any,
        target: Target,
        account: Account,
        user_id: int,
        session: FastHttpSession | None = None,
    ) -> None:
        self.profile = target.profile
        self.account = account
        self.user_id = user_id
        self.http = session if session is not None else http_session(user, self.profile)
        self.csrf = ""
        self.server: str | None = None  # the backend that answered last

    def logon(self) -> None:
        """GET /login, POST /login, and POST /mfa when the portal asks for it."""
        self.csrf = self._request("GET", "/login", "GET /login", parse=lambda r: parse_csrf(r.text or ""))
        form = {"username": self.account.username, "password": self.account.password, "csrf_token": self.csrf}
        answer = self._request("POST", "/login", "POST /login", data=form, parse=_json)
        if answer.get("mfa_required"):
            self._request("POST", "/mfa", "POST /mfa", data={"code": self._totp(), "csrf_token": self.csrf})

    def apps(self) -> list[dict[str, Any]]:
        """GET /api/apps: the apps this employee may launch."""
        return self._request("GET", "/api/apps", "GET /api/apps", parse=lambda r: _json(r)["apps"])

    def launch(self) -> Ticket:
        """POST /api/launch: a one-time gateway ticket for the profile's app."""
        return self._request(
            "POST",
            "/api/launch",
            "POST /api/launch",
            json_body={"app": self.profile.portal.app},
            parse=_ticket,
        )

    def document(self, name: str) -> int:
        """GET /documents/{name}; returns the bytes received."""
        return self._request(
            "GET", f"/documents/{quote(name)}", "GET /documents/[doc]", parse=lambda r: len(r.content or b"")
        )

    def logout(self) -> None:
        """POST /logout."""
        self._request("POST", "/logout", "POST /logout")

    def close(self) -> None:
        """Close this session's connections (a new session opens its own, as a new browser would)."""
        self.http.client.close()

    # --- one request, one sample ------------------------------------------------------------------

    def _request(
        self,
        method: str,
        path: str,
        name: str,
        *,
        data: dict[str, str] | None = None,
        json_body: Any = None,
        parse: Callable[[FastResponse], T] | None = None,
    ) -> T:
        headers = {"X-CSRF-Token": self.csrf} if self.csrf and method == "POST" else {}
        body = None
        if data is not None:
            body = urlencode(data)
            headers.update(_FORM)
        if json_body is not None:
            body = json.dumps(json_body)
            headers["Content-Type"] = "application/json"
        value: Any = None
        failure: OperationError | None = None
        with self.http.request(
            method,
            path,
            name=name,
            data=body,
            headers=headers,
            catch_response=True,
            context=sample_context(self.user_id),
        ) as resp:
            status = resp.status_code or None
            failure = safe_error(None if status else getattr(resp, "error", None), status)
            if failure is None and parse is not None:
                try:
                    value = parse(resp)
                except (ValueError, KeyError, TypeError):
                    failure = OperationError("other", "unexpected response")
            self._label(resp, failure)
        if failure is not None:
            raise RecordedFailure(failure.error_class, failure.detail)
        return value

    def _label(self, resp: Any, failure: OperationError | None) -> None:
        """Set the sample's type, backend and error class, and its outcome."""
        self.server = self._server_of(resp) or self.server
        meta = resp.request_meta
        meta["request_type"] = HTTP
        meta["context"].update(server=self.server, error=classify(failure), start_time=meta["start_time"])
        if failure is None:
            resp.success()
        else:
            resp.failure(failure)

    def _server_of(self, resp: Any) -> str | None:
        portal = self.profile.portal
        headers = getattr(resp, "headers", None)
        if portal.server_header and headers is not None:
            value = headers.get(portal.server_header)
            if value:
                return value[-1] if isinstance(value, list) else str(value)
        if portal.server_cookie:
            for cookie in self.http.cookiejar:
                if cookie.name == portal.server_cookie and cookie.value:
                    return cookie.value
        return None

    def _totp(self) -> str:
        if not self.account.totp_secret:
            return ""  # the portal answers 401, recorded as such: this account has no TOTP secret
        import pyotp

        return pyotp.TOTP(self.account.totp_secret).now()


def _json(resp: FastResponse) -> Any:
    value = json.loads(resp.content or b"")
    if not isinstance(value, dict):
        raise ValueError("expected a JSON object")
    return value


def _ticket(resp: FastResponse) -> Ticket:
    data = _json(resp)
    expires = data.get("expires_at")
    return Ticket(
        host=str(data["host"]),
        port=int(data["port"]),
        username=str(data["username"]),
        secret=str(data["ticket"]),
        expires_at=float(expires) if expires is not None else None,
    )


class PortalUser(FastHttpUser):
    """Portal-only load: each task is one visit (logon, apps, launch, a document, logout).

    The host is the profile's ``portal.url`` unless ``--host`` says otherwise; TLS follows the profile.
    """

    abstract = False

    def __init__(self, environment: Any) -> None:
        self.target = target_for(environment)
        profile = self.target.profile
        # FastHttpUser.__init__ reads these: set them from the profile first.
        if not self.host:
            self.host = profile.portal.url.rstrip("/")
        self.insecure = not profile.portal.tls_verify
        self.ssl_context_factory = ssl_context_factory(profile)
        self.network_timeout = self.connection_timeout = profile.workload.timeout_s
        self.max_retries = 0
        super().__init__(environment)
        self.user_id = 0

    def on_start(self) -> None:
        self.user_id = next_user_id()

    def wait_time(self) -> float:
        w = self.target.profile.workload
        return random.uniform(w.think_min_s, w.think_max_s)

    @task
    def visit(self) -> None:
        """One portal visit; a failed step (already recorded) ends it, as a person would retry later."""
        self.client.cookiejar.clear()
        portal = PortalClient(
            self, self.target, self.target.account_for(self.user_id), self.user_id, self.client
        )
        try:
            portal.logon()
            portal.apps()
            portal.launch()
            portal.document(random.choice(self.target.profile.workload.documents))
            portal.logout()
        except RecordedFailure:
            return
