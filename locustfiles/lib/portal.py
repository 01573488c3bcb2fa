"""The homeoffice portal: a reusable client for one employee's portal session, and ``PortalUser``.

What is sent is the profile's portal logon flow (``targets/portalflow.py``: ``[portal.flow]`` steps, a
``portal.flow_class``, or the reference portal's flow); this module is its Locust transport. Samples are
fired with Locust ``request_type`` ``"HTTP"`` and the step's name, which says the method and the path
template (``"GET /login"``, ``"GET /documents/[doc]"``), so ``type name`` reads well in the Locust UI and
keys the analysis. Each sample's context carries the backend that answered (``portal.server_header`` or
the balancer cookie ``portal.server_cookie``) and the error class of a failure.

TLS is verified by default against ``portal.ca_file`` (system CAs when empty); ``portal.tls_verify =
false`` is the explicit opt-out.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import gevent.ssl
from locust import FastHttpUser, task
from locust.contrib.fasthttp import FastHttpSession, insecure_ssl_context_factory

from gateload.analysis.catalogue import Catalogue
from gateload.locustfiles.lib.catalogues import portal_catalogue
from gateload.locustfiles.lib.errors import OperationError, RecordedFailure, safe_error
from gateload.locustfiles.lib.runtime import Account, Lease, Target, next_user_id, sample_context, target_for
from gateload.targets.portalflow import (
    Extract,
    Flow,
    Request,
    Response,
    StepFailure,
    Ticket,
    extract,
    make_flow,
    run,
)
from gateload.targets.profile import Profile

__all__ = ["PortalClient", "PortalUser", "Ticket", "http_session", "parse_csrf", "ssl_context_factory"]

HTTP = "HTTP"


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
    """The ``csrf_token`` hidden input's value in the login page (``ValueError`` when there is none)."""
    try:
        return str(extract(Extract(hidden="csrf_token"), Response(200, body=body.encode())))
    except StepFailure:
        raise ValueError("no csrf_token in the login page") from None


class PortalClient:
    """One employee's portal session: logon, apps, launch, documents, logout, as the profile's flow says.

    The flow (``[portal.flow]``, ``portal.flow_class`` or the reference portal's) decides the requests;
    this class sends them through FastHttpSession and fires one sample per request. A failed request
    raises :class:`RecordedFailure` (already recorded), so the caller only decides how to recover.
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
        self.flow: Flow = make_flow(self.profile, account)
        self.server: str | None = None  # the backend that answered last

    def logon(self) -> None:
        """The flow's logon phase (reference: GET /login, POST /login, POST /mfa when asked)."""
        self._run(self.flow.logon())

    def apps(self) -> list[dict[str, Any]]:
        """The flow's apps phase: the apps this employee may launch (empty if the flow lists none)."""
        return self._run(self.flow.apps())  # type: ignore[no-any-return]

    def launch(self) -> Ticket:
        """The flow's launch phase: the gateway credentials (a one-time ticket or the account's own)."""
        return self._run(self.flow.launch())  # type: ignore[no-any-return]

    def document(self, name: str) -> int:
        """The flow's document phase for ``name``; returns the bytes received."""
        return self._run(self.flow.document(name))  # type: ignore[no-any-return]

    def logout(self) -> None:
        """The flow's logout phase."""
        self._run(self.flow.logout())

    def close(self) -> None:
        """Close this session's connections (a new session opens its own, as a new browser would)."""
        self.http.client.close()

    # --- one request, one sample ------------------------------------------------------------------

    def _run(self, phase: Any) -> Any:
        try:
            return run(phase, self._send)
        except StepFailure as failure:
            raise RecordedFailure(failure.error_class, failure.detail) from None

    def _send(self, request: Request) -> Response:
        """Send one request; the sample stays open until the flow has judged the answer (``settle``)."""
        ctx = self.http.request(
            request.method,
            request.path,
            name=request.name,
            data=request.body,  # type: ignore[arg-type]  # bytes work: Locust's hint says str or dict only
            headers=request.headers,
            catch_response=True,
            context=sample_context(self.user_id),
        )
        return _Sample(self, ctx.__enter__())

    def _label(self, resp: Any, failure: OperationError | None) -> None:
        """Set the sample's type, backend and error class, and its outcome."""
        self.server = self._server_of(resp) or self.server
        meta = resp.request_meta
        meta["request_type"] = HTTP
        context = meta["context"]
        context["server"] = self.server
        context["error"] = None if failure is None else failure.error_class  # = classify(failure)
        context["start_time"] = meta["start_time"]
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

    def _cookie(self, name: str) -> str | None:
        for cookie in self.http.cookiejar:
            if cookie.name == name:
                return str(cookie.value)
        return None


class _Sample(Response):
    """One Locust request as the flow sees it; :meth:`settle` labels and closes Locust's sample.

    A method rather than a closure per request, and plain attribute stores rather than the dataclass
    ``__init__``: this runs for every portal request (bench/bench_portal.py measures the cost).
    """

    def __init__(self, client: PortalClient, resp: Any) -> None:
        status = resp.status_code or None
        self._client, self._resp = client, resp
        self._transport = None if status else safe_error(getattr(resp, "error", None))
        headers = getattr(resp, "headers", None)
        self.status = status
        # `is None`, not `or`: truthiness of geventhttpclient's Headers counts every header line
        self.headers = _Headers(headers) if headers is not None else {}
        self.body = (resp.content or b"") if status else b""
        self.cookie = client._cookie
        self.error_class = self._transport.error_class if self._transport else None
        self._parsed = None
        self._parsed_ok = None

    def settle(self, failure: StepFailure | None) -> None:  # type: ignore[override]
        """Label the sample with the step's outcome (a transport error first) and fire it."""
        transport = self._transport
        error = transport or (OperationError(failure.error_class, failure.detail) if failure else None)
        self._client._label(self._resp, error)
        self._resp.__exit__(None, None, None)


class _Headers(Mapping[str, Any]):
    """A response's headers for the flow: case-insensitive ``get``."""

    __slots__ = ("_headers",)

    def __init__(self, headers: Mapping[str, Any]) -> None:
        self._headers = headers

    def __getitem__(self, name: str) -> Any:
        value = self._headers.get(name)
        if value is None:
            raise KeyError(name)
        return value

    def __iter__(self) -> Iterator[str]:
        return iter(self._headers)

    def __len__(self) -> int:
        return len(self._headers)


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
        self.lease: Lease | None = None  # this user's own account while it runs (accounts.py)

    def on_start(self) -> None:
        self.user_id = next_user_id()
        self.lease = self.target.lease(self.environment)

    def on_stop(self) -> None:
        lease, self.lease = self.lease, None
        self.target.release(lease)

    @classmethod
    def operations(cls, profile: Profile) -> Catalogue:
        """The requests of the profile's portal flow (meta.json ``catalogue``)."""
        return portal_catalogue(profile)

    def wait_time(self) -> float:
        w = self.target.profile.workload
        return random.uniform(w.think_min_s, w.think_max_s)

    @task
    def visit(self) -> None:
        """One portal visit; a failed step (already recorded) ends it, as a person would retry later."""
        self.client.cookiejar.clear()
        assert self.lease is not None, "on_start() leases the account"
        portal = PortalClient(self, self.target, self.lease.account, self.user_id, self.client)
        try:
            portal.logon()
            portal.apps()
            portal.launch()
            portal.document(random.choice(self.target.profile.workload.documents))
            portal.logout()
        except RecordedFailure:
            return
