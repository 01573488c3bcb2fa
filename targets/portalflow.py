"""Portal logon flows: how a portal is logged on to, as data in the profile, and the engine that runs it.

A portal session has five phases, each a list of HTTP steps: ``logon``, ``apps``, ``launch`` (whose
extracted values, mapped by ``[portal.flow.ticket]``, become the gateway credentials), ``document``
and ``logout``. A step says what to send (method, path, form or JSON body, headers, all templated),
when (``when``: only if an earlier value is true), what answer it expects, and what to extract from
the answer. Templates name account fields (``{username}``, ``{password}``, ``{totp}``), ``{app}``,
``{document}`` (document steps) and values extracted by earlier steps. A profile without a flow gets
:data:`REFERENCE_FLOW`, the reference portal's.

Why here and not under ``locustfiles/``: the flow is profile schema (``targets/profile.py`` validates
it at load, and ``targets`` never imports the load generator), and the engine is transport-neutral
(stdlib only, no Locust, no gevent), so the Locust users (``locustfiles/lib/portal.py``) and a plain
asyncio probe run the same flow. The engine is sans-I/O: a phase is a generator that yields
:class:`Request` objects and receives :class:`Response` objects; :func:`run` and :func:`arun` drive it
with a blocking or an async ``send``. A Python class named by ``portal.flow_class`` implements the
same five generator methods (see :class:`Flow`).
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import importlib.util
import json as _json
import re
import sys
from collections.abc import Awaitable, Callable, Generator, Iterator, Mapping
from dataclasses import dataclass, field
from json.encoder import encode_basestring_ascii as _json_str  # json.dumps's string writer
from pathlib import Path
from typing import Any, Literal, Protocol
from urllib.parse import quote, quote_plus

PHASES = ("logon", "apps", "launch", "document", "logout")
METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS")
EXTRACTORS = ("hidden", "json", "cookie", "regex", "header")
ACCOUNT_VALUES = ("username", "password", "totp", "app")  # always available to templates
DOCUMENT_VALUE = "document"  # only in document steps
_FALSE = frozenset({"", "0", "false", "no", "off"})


# --- schema (read from [portal.flow] by targets/profile.py) --------------------------------------


@dataclass(frozen=True)
class Extract:
    """What to take from an answer: exactly one of the extractors, optionally converted."""

    hidden: str = ""  # value of the <input name="..."> in an HTML page (a hidden CSRF field)
    json: str = ""  # dotted path into a JSON answer: "ticket", "data.token", "apps.0.id"
    cookie: str = ""  # the cookie's value in the client's jar after this answer
    regex: str = ""  # first match in the body: the group named "value", else group 1, else the match
    header: str = ""  # a response header (case-insensitive)
    type: Literal["auto", "str", "int", "float", "bool"] = "auto"  # auto: JSON keeps its type, else str
    optional: bool = False  # missing -> the value is null (false in `when`, "" in text); else the step fails

    @property
    def kind(self) -> str:
        """The extractor used (validated to be exactly one)."""
        return next(k for k in EXTRACTORS if getattr(self, k))


@dataclass(frozen=True)
class FlowStep:
    """One HTTP request of a phase; one sample named ``name``."""

    path: str  # starts with "/", relative to portal.url; templated (values URL-quoted)
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"] = "GET"
    name: str = ""  # sample name; default "METHOD /path" with each {value} shown as [value]
    form: dict[str, str] = field(default_factory=dict)  # urlencoded form body; values templated
    json: dict[str, Any] = field(default_factory=dict)  # JSON body; strings templated
    headers: dict[str, str] = field(default_factory=dict)  # values templated
    expect: list[int] = field(default_factory=list)  # accepted statuses; empty = any status < 400
    when: str = ""  # "NAME" or "not NAME": run only if that value is (not) true
    extract: dict[str, Extract] = field(default_factory=dict)  # value name -> extractor

    def sample_name(self) -> str:
        """The sample name: ``name``, else the method and the path with placeholders as ``[value]``."""
        if self.name:
            return self.name
        return f"{self.method} " + "".join(
            p if isinstance(p, str) else f"[{p.name}]" for p in _parts(self.path)
        )


@dataclass(frozen=True)
class TicketSpec:
    """How the gateway credentials are made from values (templates); defaults: the account's own."""

    username: str = "{username}"
    secret: str = "{password}"  # the SSH password: a one-time ticket, or the account password
    host: str = ""  # "" = gateway.host of the profile
    port: str = ""  # "" = gateway.port of the profile
    expires_at: str = ""  # epoch seconds; "" = unknown


@dataclass(frozen=True)
class PortalFlow:
    """A portal's logon flow (``[portal.flow]``); phases run in the order of :data:`PHASES`."""

    logon: list[FlowStep] = field(default_factory=list)
    apps: list[FlowStep] = field(default_factory=list)
    launch: list[FlowStep] = field(default_factory=list)
    ticket: TicketSpec = field(default_factory=TicketSpec)
    document: list[FlowStep] = field(default_factory=list)
    logout: list[FlowStep] = field(default_factory=list)


def _reference_flow() -> PortalFlow:
    post = {"X-CSRF-Token": "{csrf}"}
    return PortalFlow(
        logon=[
            FlowStep(
                "/login",
                extract={"csrf": Extract(hidden="csrf_token"), "session": Extract(cookie="gl_session")},
            ),
            FlowStep(
                "/login",
                "POST",
                form={"username": "{username}", "password": "{password}", "csrf_token": "{csrf}"},
                headers=post,
                extract={"mfa": Extract(json="mfa_required", optional=True)},
            ),
            FlowStep(
                "/mfa", "POST", form={"code": "{totp}", "csrf_token": "{csrf}"}, headers=post, when="mfa"
            ),
        ],
        apps=[FlowStep("/api/apps", extract={"apps": Extract(json="apps")})],
        launch=[
            FlowStep(
                "/api/launch",
                "POST",
                json={"app": "{app}"},
                headers=post,
                extract={
                    "gw_host": Extract(json="host", type="str"),
                    "gw_port": Extract(json="port", type="int"),
                    "gw_user": Extract(json="username", type="str"),
                    "ticket": Extract(json="ticket", type="str"),
                    "expires_at": Extract(json="expires_at", type="float", optional=True),
                },
            )
        ],
        ticket=TicketSpec(
            username="{gw_user}",
            secret="{ticket}",
            host="{gw_host}",
            port="{gw_port}",
            expires_at="{expires_at}",
        ),
        document=[FlowStep("/documents/{document}", name="GET /documents/[doc]")],
        logout=[FlowStep("/logout", "POST", headers=post)],
    )


#: The reference portal's flow (targets/README.md), used when a profile describes none.
#: ``targets/profiles/example-html-portal.toml`` spells out the same flow as TOML.
REFERENCE_FLOW = _reference_flow()


# --- templates ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Ref:
    name: str


_TOKEN = re.compile(r"\{\{|\}\}|\{([A-Za-z_][A-Za-z0-9_]*)\}|[{}]")


@functools.lru_cache(maxsize=4096)
def _parts(text: str) -> tuple[str | _Ref, ...]:
    """A template as literal strings and value references; ``{{``/``}}`` are literal braces."""
    parts: list[str | _Ref] = []
    pos = 0
    for m in _TOKEN.finditer(text):
        if m.start() > pos:
            parts.append(text[pos : m.start()])
        token = m.group(0)
        if m.group(1):
            parts.append(_Ref(m.group(1)))
        elif token in ("{{", "}}"):
            parts.append(token[0])
        else:
            raise ValueError(
                f"has a lone '{token}' at {m.start()}; "
                "write a value as {name} and a literal brace as {{ or }}"
            )
        pos = m.end()
    if pos < len(text):
        parts.append(text[pos:])
    return tuple(parts)


def template_names(text: str) -> list[str]:
    """The value names a template uses (raises ``ValueError`` on a malformed template)."""
    return [p.name for p in _parts(text) if isinstance(p, _Ref)]


def render(text: str, lookup: Callable[[str], Any], quote_values: bool = False) -> Any:
    """Fill a template. A template that is exactly one ``{name}`` gives the value itself (any type)."""
    parts = _parts(text)
    if len(parts) == 1 and isinstance(parts[0], _Ref):
        return lookup(parts[0].name)
    out = []
    for p in parts:
        if isinstance(p, str):
            out.append(p)
        else:
            value = _text(lookup(p.name))
            out.append(quote(value, safe="/") if quote_values else value)
    return "".join(out)


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def truthy(value: Any) -> bool:
    """A value's truth in ``when``: null, false, 0, "", "false", "no", "off" and "0" are false."""
    if isinstance(value, str):
        return value.strip().lower() not in _FALSE
    return bool(value)


def _condition(when: str) -> tuple[bool, str]:
    """``"NAME"`` -> (False, NAME); ``"not NAME"`` -> (True, NAME)."""
    words = when.split()
    if len(words) == 2 and words[0] == "not":
        return True, words[1]
    if len(words) == 1:
        return False, words[0]
    raise ValueError(when)


# --- validation at profile load -------------------------------------------------------------------


def check_flow(flow: PortalFlow, bad: Callable[[str, str], Exception], where: str = "portal.flow") -> None:
    """Raise ``bad(key, problem)`` for the first problem of a flow, naming the key and the fix."""
    known: list[str] = list(ACCOUNT_VALUES)
    for phase in PHASES:
        steps: list[FlowStep] = getattr(flow, phase)
        for i, step in enumerate(steps):
            key = f"{where}.{phase}[{i}]"
            available = [*known, DOCUMENT_VALUE] if phase == "document" else known
            _check_step(step, key, available, bad)
            for name in step.extract:
                if name in ACCOUNT_VALUES or name == DOCUMENT_VALUE:
                    raise bad(f"{key}.extract.{name}", "shadows a built-in value; give it another name")
                if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
                    raise bad(f"{key}.extract.{name}", "is not a valid name; use letters, digits and _")
                known.append(name)
        if phase == "launch":
            for tfield in dataclasses.fields(TicketSpec):
                _check_template(
                    getattr(flow.ticket, tfield.name), f"{where}.ticket.{tfield.name}", known, bad
                )


def _check_step(step: FlowStep, key: str, available: list[str], bad: Callable[[str, str], Exception]) -> None:
    if not step.path.startswith("/") or step.path.startswith("//"):
        raise bad(f"{key}.path", f"is {step.path!r}; write a path on the portal such as '/login'")
    if "{" in step.name or "}" in step.name:
        raise bad(
            f"{key}.name", "must be literal (a sample name, no {value}); write e.g. 'GET /documents/[doc]'"
        )
    if step.form and step.json:
        raise bad(f"{key}.form", "and 'json' are both set; a request has one body, keep one")
    for status in step.expect:
        if not 100 <= status <= 599:
            raise bad(f"{key}.expect", f"has {status}; HTTP statuses are 100..599")
    templates = {f"{key}.path": step.path}
    templates.update({f"{key}.form.{k}": v for k, v in step.form.items()})
    templates.update({f"{key}.headers.{k}": v for k, v in step.headers.items()})
    templates.update(_json_strings(step.json, f"{key}.json"))
    for tkey, text in templates.items():
        _check_template(text, tkey, available, bad)
    if step.when:
        try:
            _, name = _condition(step.when)
        except ValueError:
            raise bad(f"{key}.when", f"is {step.when!r}; write 'NAME' or 'not NAME'") from None
        _check_name(name, f"{key}.when", available, bad)
    for name, ex in step.extract.items():
        ekey = f"{key}.extract.{name}"
        used = [k for k in EXTRACTORS if getattr(ex, k)]
        if len(used) != 1:
            raise bad(ekey, f"needs exactly one of {', '.join(EXTRACTORS)} (it has {len(used)})")
        if ex.regex:
            try:
                re.compile(ex.regex)
            except re.error as exc:
                raise bad(f"{ekey}.regex", f"is not a valid regular expression ({exc}); fix it") from None


def _json_strings(value: Any, key: str) -> Iterator[tuple[str, str]]:
    if isinstance(value, str):
        yield key, value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _json_strings(v, f"{key}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _json_strings(v, f"{key}[{i}]")


def _check_template(text: str, key: str, available: list[str], bad: Callable[[str, str], Exception]) -> None:
    try:
        names = template_names(text)
    except ValueError as exc:
        raise bad(key, str(exc)) from None
    for name in names:
        _check_name(name, key, available, bad)


def _check_name(name: str, key: str, available: list[str], bad: Callable[[str, str], Exception]) -> None:
    if name in available:
        return
    close = difflib.get_close_matches(name, available, n=1)
    hint = f"did you mean '{close[0]}'?" if close else f"available here: {', '.join(available)}"
    raise bad(key, f"uses '{name}', which no earlier step extracts; extract it in an earlier step ({hint})")


# --- flow classes named by the profile -----------------------------------------------------------


def load_flow_class(spec: str, base: Path) -> type:
    """The class ``"module:Class"`` (``module.py`` beside the profile) or ``"path/file.py:Class"``.

    Raises ``ValueError`` with a one-line problem and fix.
    """
    module, sep, cls_name = spec.partition(":")
    if not sep or not module or not cls_name.isidentifier():
        raise ValueError(f"is {spec!r}; write 'module:Class' (module.py beside the profile)")
    rel = module if module.endswith(".py") else module.replace(".", "/") + ".py"
    path = Path(rel) if Path(rel).is_absolute() else (base / rel).resolve()
    if not path.is_file():
        raise ValueError(f"names {path}, which does not exist; put the module beside the profile")
    mod_name = f"gateload_flow_{abs(hash(str(path)))}"
    module_obj = sys.modules.get(mod_name)
    if module_obj is None:
        loader_spec = importlib.util.spec_from_file_location(mod_name, path)
        assert loader_spec is not None and loader_spec.loader is not None
        module_obj = importlib.util.module_from_spec(loader_spec)
        try:
            loader_spec.loader.exec_module(module_obj)
        except Exception as exc:  # the user's module: any error is bad input, said in one line
            raise ValueError(
                f"could not be imported ({type(exc).__name__}: {exc}); fix {path.name}"
            ) from None
        sys.modules[mod_name] = module_obj
    cls = getattr(module_obj, cls_name, None)
    if not isinstance(cls, type):
        raise ValueError(f"names '{cls_name}', which {path.name} does not define; define the class there")
    missing = [m for m in PHASES if not callable(getattr(cls, m, None))]
    if missing:
        raise ValueError(f"names {cls_name}, which lacks {', '.join(missing)}; implement every phase")
    return cls


def absolute_flow_class(spec: str, base: Path) -> str:
    """``spec`` with its module path made absolute (for a copy of the profile written elsewhere)."""
    module, _, cls_name = spec.partition(":")
    rel = module if module.endswith(".py") else module.replace(".", "/") + ".py"
    path = Path(rel) if Path(rel).is_absolute() else (base / rel).resolve()
    return f"{path}:{cls_name}"


# --- the engine (transport-neutral, sans-I/O) -----------------------------------------------------


@dataclass(frozen=True)
class Request:
    """One HTTP request to the portal; ``path`` is relative to ``portal.url``."""

    method: str
    path: str
    name: str  # the sample name
    headers: dict[str, str] = field(default_factory=dict, repr=False)  # may carry a token
    body: bytes | None = field(default=None, repr=False)  # may carry a password


@dataclass
class Response:
    """The answer as the engine sees it; a transport adapter fills it in.

    ``status`` is None when no answer came (then ``error_class`` says why: timeout, refused ...).
    ``headers`` must look names up case-insensitively; ``cookie(name)`` reads the client's jar.
    ``settle(failure)`` (optional) is called once the step is judged, so an adapter that records
    one sample per request (Locust) closes it with the right outcome.
    """

    status: int | None
    headers: Mapping[str, Any] = field(default_factory=dict)
    body: bytes = b""
    cookie: Callable[[str], str | None] = lambda _name: None
    error_class: str | None = None
    settle: Callable[[StepFailure | None], None] | None = None
    _parsed: Any = field(default=None, repr=False)
    _parsed_ok: bool | None = field(default=None, repr=False)

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def json_value(self) -> Any:
        """The body as JSON (parsed once); raises :class:`StepFailure` when it is not JSON."""
        if self._parsed_ok is None:
            try:
                self._parsed, self._parsed_ok = _loads(self.body), True
            except ValueError:
                self._parsed_ok = False
        if not self._parsed_ok:
            raise StepFailure("other", "unexpected response")
        return self._parsed

    def header(self, name: str) -> str | None:
        """A header's value (the last one when repeated), None when absent."""
        value = self.headers.get(name)
        if isinstance(value, list):
            value = value[-1] if value else None
        return None if value is None else str(value)


_DECODE_JSON = _json.JSONDecoder().decode  # what json.loads uses when given no options


def _loads(body: bytes) -> Any:
    """``json.loads(body)``. A body starting with ``{`` or ``[`` and no NUL after it is UTF-8 (what
    ``json.detect_encoding`` answers), so it is decoded as json.loads would, without the detection."""
    if body[:1] in (b"{", b"[") and body[1:2] != b"\x00":
        return _DECODE_JSON(body.decode("utf-8", "surrogatepass"))
    return _json.loads(body)


class StepFailure(Exception):
    """A failed step. ``error_class`` is one of the results schema's classes; ``str()`` is safe to log
    (fixed words only: never a value, a body or a URL)."""

    def __init__(self, error_class: str, detail: str = "") -> None:
        self.error_class = error_class
        self.detail = detail
        super().__init__(f"{error_class}: {detail}" if detail else error_class)


def status_error_class(status: int) -> str | None:
    """An error status's class, as ``gateload.locustfiles.lib.errors.http_error_class`` names it (tested
    equal)."""
    if status < 400:
        return None
    if status in (401, 403, 503):
        return f"http_{status}"
    return "http_5xx" if status >= 500 else "http_4xx"


@dataclass(frozen=True)
class Ticket:
    """Gateway credentials from the launch phase: a one-time ticket, or the account's own password."""

    host: str
    port: int
    username: str
    secret: str = field(repr=False)
    expires_at: float | None = None


class AccountLike(Protocol):
    """What a flow reads of an account (read-only: accounts are frozen dataclasses)."""

    @property
    def username(self) -> str: ...

    @property
    def password(self) -> str: ...

    @property
    def totp_secret(self) -> str: ...


Phase = Generator[Request, Response, Any]


class Flow(Protocol):
    """What a flow implements (a ``flow_class`` too): each phase is a generator of requests.

    ``cls(profile, account)`` makes one per portal session. A phase yields :class:`Request` objects,
    receives each :class:`Response` (an answer came; a missing answer fails the step before the flow
    sees it), raises :class:`StepFailure` to fail the step just answered, and returns its result.
    """

    def logon(self) -> Phase: ...
    def apps(self) -> Phase: ...  # returns a list of apps (may be empty)
    def launch(self) -> Phase: ...  # returns a Ticket
    def document(self, name: str) -> Phase: ...  # returns the bytes received
    def logout(self) -> Phase: ...


class StepFlow:
    """A :class:`PortalFlow` description run for one account (one portal session).

    Steps are compiled once per process (:func:`_compiled`), so a request costs only its values'
    lookups; the flow's steps are treated as immutable once run (``FlowStep`` is frozen).
    """

    def __init__(self, flow: PortalFlow, account: AccountLike, app: str, gateway: tuple[str, int]) -> None:
        self.flow = flow
        self.account = account
        self.gateway = gateway
        self._builtins: dict[str, Any] = {
            "username": account.username,
            "password": account.password,
            "app": app,
        }
        self.values: dict[str, Any] = {}  # extracted so far; holds secrets, never logged

    def __repr__(self) -> str:
        return f"StepFlow(user={self.account.username!r}, values={sorted(self.values)})"

    # Each phase returns the steps' generator itself (no ``yield from`` layer per request).

    def logon(self) -> Phase:
        return self._run(self.flow.logon)

    def apps(self) -> Phase:
        return self._run(self.flow.apps, None, self._apps_result)

    def launch(self) -> Phase:
        return self._run(self.flow.launch, None, self._launch_result)

    def document(self, name: str) -> Phase:
        return self._run(self.flow.document, {DOCUMENT_VALUE: name}, _document_result)

    def logout(self) -> Phase:
        return self._run(self.flow.logout)

    def _apps_result(self, _last: Response | None) -> list[Any]:
        apps = self.values.get("apps")
        return apps if isinstance(apps, list) else []

    def _launch_result(self, _last: Response | None) -> Ticket:
        return self._ticket()

    # --- steps ------------------------------------------------------------------------------------

    def _run(
        self,
        steps: list[FlowStep],
        extra: dict[str, Any] | None = None,
        result: Callable[[Response | None], Any] | None = None,
    ) -> Generator[Request, Response, Any]:
        """The phase's requests in order; returns ``result(last response)`` (None without ``result``)."""
        get = self.lookup if extra is None else functools.partial(self.lookup, extra=extra)
        values = self.values
        last = None
        cache = _COMPILED
        for step in steps:
            compiled = cache.get(id(step)) or _compiled(step)
            if compiled.when is not None:
                negate, name = compiled.when
                if truthy(values.get(name)) == negate:
                    continue
            response = yield compiled.request(get)
            compiled.judge(response, values)
            last = response
        return None if result is None else result(last)

    def lookup(self, name: str, extra: dict[str, Any] | None = None) -> Any:
        """A value by name: extracted, the step's extras, or an account field (``totp`` computed now)."""
        if extra and name in extra:
            return extra[name]
        if name in self.values:
            return self.values[name]
        if name == "totp":
            return self._totp()
        if name in self._builtins:
            return self._builtins[name]
        # validated at load; reachable only when the step that extracts it was skipped by `when`
        raise StepFailure("other", f"flow value {name} missing")

    def request(self, step: FlowStep, extra: dict[str, Any] | None = None) -> Request:
        """The request of a step, templates filled."""
        get = self.lookup if extra is None else functools.partial(self.lookup, extra=extra)
        return _compiled(step).request(get)

    def judge(self, step: FlowStep, response: Response) -> None:
        """Check the status and extract the step's values; :class:`StepFailure` on a bad answer."""
        _compiled(step).judge(response, self.values)

    def _ticket(self) -> Ticket:
        spec = self.flow.ticket
        host, port, username, secret, expires_at = _compiled_ticket(spec)
        get = self.lookup
        try:
            host_value = _text(host(get)) if host is not None else self.gateway[0]
            port_value = int(port(get)) if port is not None else self.gateway[1]
            expires: Any = expires_at(get) if expires_at is not None else None
            return Ticket(
                host=host_value,
                port=port_value,
                username=_text(username(get)),
                secret=_text(secret(get)),
                expires_at=float(expires) if expires not in (None, "") else None,
            )
        except (TypeError, ValueError):
            raise StepFailure("other", "unexpected response") from None

    def _totp(self) -> str:
        if not self.account.totp_secret:
            return ""  # the portal answers 401, recorded as such: this account has no TOTP secret
        import pyotp

        return str(pyotp.TOTP(self.account.totp_secret).now())


def _document_result(last: Response | None) -> int:
    return len(last.body) if last is not None else 0


@functools.lru_cache(maxsize=256)
def _input_pattern(name: str) -> re.Pattern[str]:
    return re.compile(rf"<input\b[^>]*\bname=[\"']{re.escape(name)}[\"'][^>]*>", re.IGNORECASE)


_VALUE = re.compile(r"\bvalue=[\"']([^\"']*)[\"']", re.IGNORECASE)


@functools.lru_cache(maxsize=256)
def _regex(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


def extract(ex: Extract, response: Response) -> Any:
    """One value from an answer; :class:`StepFailure` when it is missing (unless optional) or malformed."""
    return _extractor(ex)(response)


@functools.lru_cache(maxsize=1024)
def _extractor(ex: Extract) -> Callable[[Response], Any]:
    """:func:`extract` for one extractor, its pattern and path worked out once."""
    find = _finder(ex)
    kind, optional = ex.type, ex.optional

    def get(response: Response) -> Any:
        value = find(response)
        if value is None:
            if optional:
                return None
            raise StepFailure("other", "unexpected response")
        return value if kind == "auto" else _convert(value, kind)

    return get


def _finder(ex: Extract) -> Callable[[Response], Any]:
    """The raw value the extractor finds in an answer, None when absent."""
    if ex.hidden:
        tag_pattern = _input_pattern(ex.hidden)

        def hidden(response: Response) -> Any:
            tag = tag_pattern.search(response.text)
            found = _VALUE.search(tag.group(0)) if tag else None
            return found.group(1) if found else None

        return hidden
    if ex.json:
        path = tuple(ex.json.split("."))

        def json_path(response: Response) -> Any:
            value = response.json_value()
            for part in path:
                if isinstance(value, dict):
                    value = value.get(part)
                elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
                    value = value[int(part)]
                else:
                    value = None
                if value is None:
                    break
            return value

        return json_path
    if ex.cookie:
        cookie = ex.cookie
        return lambda response: response.cookie(cookie)
    if ex.regex:
        try:
            pattern = _regex(ex.regex)
        except re.error:  # validated at load; a hand-made flow fails when the step is judged, as before
            source = ex.regex
            return lambda _response: _regex(source)
        group: int | str = "value" if "value" in pattern.groupindex else (1 if pattern.groups else 0)

        def regex(response: Response) -> Any:
            m = pattern.search(response.text)
            return m.group(group) if m is not None else None

        return regex
    if ex.header:
        header = ex.header
        return lambda response: response.header(header)
    return lambda _response: None


def _convert(value: Any, kind: str) -> Any:
    try:
        if kind == "str":
            return _text(value)
        if kind == "int":
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError(value)
            return int(value)
        if kind == "float":
            if isinstance(value, bool):
                raise ValueError(value)
            return float(value)
        if kind == "bool":
            return truthy(value)
    except (TypeError, ValueError):
        raise StepFailure("other", "unexpected response") from None
    return value


# --- compiled steps: what a step sends, worked out once per process -------------------------------
#
# A load generator runs the same few steps hundreds of thousands of times, so everything that does
# not depend on the session's values (sample name, condition, constant paths, headers and bodies,
# quoted form keys, extractors) is done once per step; a template becomes a constant or a closure
# that only looks its values up. The output is exactly what render()/urlencode()/json.dumps() give
# (tests/test_portal_flow.py compares both for every example flow).

_Getter = Callable[[str], Any]
_Fill = Callable[[_Getter], Any]

# The characters quote() leaves alone (urllib.parse._ALWAYS_SAFE): a value made only of them is
# returned as it is, so the common case skips the library's byte-level quoting.
_PLUS_SAFE = re.compile(r"[A-Za-z0-9_.~-]*").fullmatch
_PATH_SAFE = re.compile(r"[A-Za-z0-9_.~/-]*").fullmatch


def _quote_plus(text: str) -> str:
    """``quote_plus(text)`` (as ``urlencode`` quotes a form value)."""
    return text if _PLUS_SAFE(text) else quote_plus(text)


def _quote_path(text: str) -> str:
    """``quote(text, safe="/")`` (as ``render(..., quote_values=True)`` quotes a path value)."""
    return text if _PATH_SAFE(text) else quote(text, safe="/")


def _str(value: Any) -> str:
    return value if value.__class__ is str else _text(value)


def _constant(text: str) -> str | None:
    """The template's text when it names no value (braces unescaped), else None."""
    parts = _parts(text)
    if any(isinstance(p, _Ref) for p in parts):
        return None
    return "".join(parts)  # type: ignore[arg-type]


def _value_fill(text: str) -> _Fill:
    """``lambda get: render(text, get)``: a lone ``{name}`` keeps the value's type."""
    parts = _parts(text)
    if len(parts) == 1 and isinstance(parts[0], _Ref):
        name = parts[0].name
        return lambda get: get(name)
    return _text_fill(text)


def _text_fill(text: str, quoter: Callable[[str], str] | None = None) -> _Fill:
    """``lambda get: _text(render(text, get, quote_values=quoter is not None))``."""
    parts = _parts(text)
    constant = _constant(text)
    if constant is not None:
        return lambda _get: constant
    if len(parts) == 1:  # a lone value: render gives it unquoted, whatever quote_values says
        name = parts[0].name  # type: ignore[union-attr]

        def lone(get: _Getter) -> str:
            value = get(name)
            return value if value.__class__ is str else _text(value)

        return lone
    refs = [i for i, p in enumerate(parts) if isinstance(p, _Ref)]
    if len(refs) == 1:  # "Bearer {token}", "/documents/{document}": literal, value, literal
        i = refs[0]
        head, name, tail = "".join(parts[:i]), parts[i].name, "".join(parts[i + 1 :])  # type: ignore
        if quoter is None:

            def framed(get: _Getter) -> str:
                value = get(name)
                return head + (value if value.__class__ is str else _text(value)) + tail

            return framed
        return lambda get: head + quoter(_str(get(name))) + tail
    q = quoter or _str

    def fill(get: _Getter) -> str:
        return "".join([p if p.__class__ is str else q(_str(get(p.name))) for p in parts])  # type: ignore

    return fill


def _json_fill(value: Any) -> _Fill | None:
    """``lambda get: _fill_json(value, get)``, or None when the value holds no template."""
    if isinstance(value, str):  # unchanged only without values and without {{ }} escapes
        return None if _constant(value) == value else _value_fill(value)
    if isinstance(value, dict):
        items = [(k, v, _json_fill(v)) for k, v in value.items()]
        if all(f is None for _, _, f in items):
            return None
        return lambda get: {k: v if f is None else f(get) for k, v, f in items}
    if isinstance(value, list):
        elements = [(v, _json_fill(v)) for v in value]
        if all(f is None for _, f in elements):
            return None
        return lambda get: [v if f is None else f(get) for v, f in elements]
    return None


def _json_text(fill: _Fill) -> _Fill:
    """The filled value as ``json.dumps`` writes it (a string straight through its C encoder)."""

    def encoded(get: _Getter) -> str:
        value = fill(get)
        return _json_str(value) if value.__class__ is str else _json.dumps(value)

    return encoded


def _json_pieces(value: Any) -> list[str | _Fill]:
    """``json.dumps(filled value)`` as pieces: constant text written once, a fill per value.

    json.dumps with its defaults (no indent, ", " and ": ") writes a nested value exactly as it
    writes it alone, so a template's text is its constant parts around each value's own dumps.
    """
    fill = _json_fill(value)
    if fill is None:
        return [_json.dumps(value)]
    if isinstance(value, str):
        return [_json_text(fill)]
    pieces: list[str | _Fill] = []
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        pieces.append("{")
        for i, (k, v) in enumerate(value.items()):
            pieces.append((", " if i else "") + _json_str(k) + ": ")
            pieces.extend(_json_pieces(v))
        pieces.append("}")
    elif isinstance(value, list):
        pieces.append("[")
        for i, v in enumerate(value):
            if i:
                pieces.append(", ")
            pieces.extend(_json_pieces(v))
        pieces.append("]")
    else:  # keys that are not strings: json.dumps converts them, let it
        return [lambda get: _json.dumps(fill(get))]
    merged: list[str | _Fill] = []
    for piece in pieces:
        if isinstance(piece, str) and merged and isinstance(merged[-1], str):
            merged[-1] += piece
        else:
            merged.append(piece)
    return merged


class _CompiledStep:
    """A :class:`FlowStep` ready to run: see :func:`_compiled`."""

    __slots__ = ("body", "expect", "extract", "headers", "method", "name", "path", "step", "when")

    def __init__(self, step: FlowStep) -> None:
        self.step = step  # held so its id() is not reused while it is cached
        self.method = step.method
        self.name = step.sample_name()
        self.when = _condition(step.when) if step.when else None
        self.expect = tuple(step.expect)
        self.extract = tuple((name, _extractor(ex)) for name, ex in step.extract.items())
        content_type = ""
        self.body: bytes | _Fill | None = None
        if step.form:
            content_type = "application/x-www-form-urlencoded"
            self.body = self._form(step.form)
        elif step.json:
            content_type = "application/json"
            pieces = tuple(_json_pieces(step.json))
            if len(pieces) == 1 and isinstance(pieces[0], str):
                self.body = pieces[0].encode()
            else:

                def json_body(get: _Getter) -> bytes:
                    return "".join([p if p.__class__ is str else p(get) for p in pieces]).encode()  # type: ignore

                self.body = json_body
        headers: list[tuple[str, str | None, _Fill | None]] = [
            (k, _constant(v), _text_fill(v)) for k, v in step.headers.items()
        ]
        if content_type and "Content-Type" not in step.headers:
            headers.append(("Content-Type", content_type, None))
        # all constant: a dict to copy (the transport may add to it); else (key, constant, fill) triples
        self.headers: dict[str, str] | tuple[tuple[str, str | None, _Fill | None], ...]
        if all(c is not None for _, c, _ in headers):
            self.headers = {k: c for k, c, _ in headers}  # type: ignore[misc]
        else:
            self.headers = tuple((k, c, None if c is not None else f) for k, c, f in headers)
        constant_path = _constant(step.path)
        self.path: str | _Fill = (
            constant_path if constant_path is not None else _text_fill(step.path, _quote_path)
        )

    @staticmethod
    def _form(form: dict[str, str]) -> bytes | _Fill:
        """The urlencoded body: constant bytes, or a fill giving them."""
        items = [(quote_plus(k) + "=", _constant(v), _text_fill(v)) for k, v in form.items()]
        if all(c is not None for _, c, _ in items):
            return "&".join(k + quote_plus(c) for k, c, _ in items).encode()  # type: ignore[arg-type]
        pieces = tuple((k, None if c is None else quote_plus(c), f) for k, c, f in items)

        def fill(get: _Getter) -> bytes:
            return "&".join(
                [k + (c if c is not None else _quote_plus(f(get))) for k, c, f in pieces]
            ).encode()

        return fill

    def request(self, get: _Getter) -> Request:
        """The request with the session's values (headers, then body, then path: render's order)."""
        headers = self.headers
        if headers.__class__ is dict:
            filled = dict(headers)
        else:
            # the __class__ test is the hot path's; mypy cannot narrow the union by it
            filled = {k: c if c is not None else f(get) for k, c, f in headers}  # type: ignore[str-unpack,operator,misc]
        body = self.body
        if body is not None and body.__class__ is not bytes:
            body = body(get)  # type: ignore[operator]
        path = self.path
        if path.__class__ is not str:
            path = path(get)  # type: ignore[operator]
        return Request(self.method, path, self.name, filled, body)  # type: ignore[arg-type]

    def judge(self, response: Response, values: dict[str, Any]) -> None:
        """Check the status and store the extracted values; :class:`StepFailure` on a bad answer."""
        status = response.status or 0
        if self.expect:
            if status not in self.expect:
                raise StepFailure(status_error_class(status) or "other", f"HTTP {status} not expected")
        elif status >= 400:
            raise StepFailure(status_error_class(status) or "other", f"HTTP {status}")
        for name, get in self.extract:
            values[name] = get(response)


_COMPILED: dict[int, _CompiledStep] = {}
_COMPILED_MAX = 4096  # steps live as long as their profile: a handful per process


def _compiled(step: FlowStep) -> _CompiledStep:
    """The step compiled, cached by identity (``FlowStep`` holds dicts, so it is not hashable)."""
    # An entry holds its step, so while it is cached no other object can have the step's id().
    compiled = _COMPILED.get(id(step))
    if compiled is not None:
        return compiled
    if len(_COMPILED) >= _COMPILED_MAX:
        _COMPILED.clear()  # many throwaway flows (tests, a long-lived tool): start again
    compiled = _COMPILED[id(step)] = _CompiledStep(step)
    return compiled


_COMPILED_TICKETS: dict[int, tuple[TicketSpec, tuple[Any, ...]]] = {}


def _compiled_ticket(spec: TicketSpec) -> tuple[Any, ...]:
    """The ticket's templates as fills (None for an empty one: the profile's default applies)."""
    entry = _COMPILED_TICKETS.get(id(spec))  # holds the spec: see _compiled
    if entry is not None:
        return entry[1]
    if len(_COMPILED_TICKETS) >= _COMPILED_MAX:
        _COMPILED_TICKETS.clear()
    optional = (spec.host, spec.port, spec.expires_at)
    host, port, expires_at = (_value_fill(t) if t else None for t in optional)
    fills = (host, port, _value_fill(spec.username), _value_fill(spec.secret), expires_at)
    _COMPILED_TICKETS[id(spec)] = (spec, fills)
    return fills


# --- drivers --------------------------------------------------------------------------------------


def _finish(response: Response, failure: StepFailure | None) -> None:
    if response.settle is not None:
        response.settle(failure)


def _no_answer(response: Response) -> StepFailure:
    return StepFailure(response.error_class or "other", "no answer")


def run(phase: Phase, send: Callable[[Request], Response]) -> Any:
    """Run a phase with a blocking ``send``; its result, or :class:`StepFailure` from the failed step.

    Every response is settled exactly once: with the step's failure, or with None when it passed.
    """
    try:
        request = next(phase)
    except StopIteration as stop:
        return stop.value
    while True:
        response = send(request)
        request_or_done = _advance(phase, response)
        if isinstance(request_or_done, _Done):
            return request_or_done.value
        request = request_or_done


async def arun(phase: Phase, send: Callable[[Request], Awaitable[Response]]) -> Any:
    """:func:`run` with an async ``send`` (aiohttp, a probe without Locust)."""
    try:
        request = next(phase)
    except StopIteration as stop:
        return stop.value
    while True:
        response = await send(request)
        request_or_done = _advance(phase, response)
        if isinstance(request_or_done, _Done):
            return request_or_done.value
        request = request_or_done


class _Done:
    """A phase's result (a plain slotted class: one is made per phase run)."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


def _advance(phase: Phase, response: Response) -> Request | _Done:
    """Hand the response to the phase and settle it: the next request, or the phase's result."""
    if response.status is None:
        failure = _no_answer(response)
        _finish(response, failure)
        phase.close()
        raise failure
    try:
        request = phase.send(response)
    except StopIteration as stop:
        _finish(response, None)
        return _Done(stop.value)
    except StepFailure as failure:
        _finish(response, failure)
        raise
    except BaseException:
        # a bug in a flow class: close the sample as failed, then let the bug show
        _finish(response, StepFailure("other", "flow error"))
        raise
    if response.settle is not None:  # _finish(response, None), inline: this is every request
        response.settle(None)
    return request


def sample_names(profile: Any) -> dict[str, list[str]]:
    """The sample names each phase may fire, in order (for operation catalogues and the web UI).

    A ``flow_class`` declares them as a class attribute ``SAMPLE_NAMES = {"logon": [...], ...}``;
    without it, its phases are unknown here (empty lists).
    """
    portal = profile.portal
    if portal.flow_class:
        declared = getattr(load_flow_class(portal.flow_class, profile.path.parent), "SAMPLE_NAMES", {})
        return {phase: list(declared.get(phase, [])) for phase in PHASES}
    flow = portal.flow or REFERENCE_FLOW
    return {phase: list(dict.fromkeys(s.sample_name() for s in getattr(flow, phase))) for phase in PHASES}


def make_flow(profile: Any, account: AccountLike) -> Flow:
    """The flow of a profile for one account: ``flow_class``, ``[portal.flow]`` or the reference one."""
    portal = profile.portal
    if portal.flow_class:
        cls = load_flow_class(portal.flow_class, profile.path.parent)
        return cls(profile, account)  # type: ignore[no-any-return]
    return StepFlow(
        portal.flow or REFERENCE_FLOW, account, portal.app, (profile.gateway.host, profile.gateway.port)
    )
