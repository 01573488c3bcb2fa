"""Portal logon flows (targets/portalflow.py): templating, extraction, conditions, validation, drivers,
and the JSON API example run by the Locust users against a real portal of that shape on loopback."""

from __future__ import annotations

import asyncio
import csv
import dataclasses
import json
import subprocess
import sys
import textwrap
import tomllib
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import gevent
import pytest
import tomli_w
import users_support  # noqa: F401  (gevent monkey-patching first, as under the locust command)
from users_support import FAST, Run, run_users

from gateload.errors import InputError
from gateload.locustfiles.lib.errors import http_error_class
from gateload.locustfiles.lib.portal import PortalUser
from gateload.locustfiles.lib.runtime import Account
from gateload.locustfiles.lib.session import HomeofficeUser
from gateload.targets.portalflow import (
    REFERENCE_FLOW,
    Extract,
    FlowStep,
    PortalFlow,
    Request,
    Response,
    StepFailure,
    StepFlow,
    Ticket,
    arun,
    extract,
    make_flow,
    render,
    run,
    sample_names,
    status_error_class,
    truthy,
)
from gateload.targets.profile import dump_profile, load_profile

ROOT = Path(__file__).resolve().parents[1]
PROFILES = ROOT / "targets" / "profiles"
EXAMPLE_HTML = PROFILES / "example-html-portal.toml"
EXAMPLE_JSON = PROFILES / "example-json-api-portal.toml"
ACCOUNT = Account("alice", "pw-alice-secret", "JBSWY3DPEHPK3PXPJBSWY3DP")


def _response(status: int | None = 200, body: bytes | str = b"", **kw: Any) -> Response:
    return Response(status, body=body.encode() if isinstance(body, str) else body, **kw)


# --- templates and conditions ---------------------------------------------------------------------


def test_render_fills_values_and_keeps_a_lone_value_typed() -> None:
    values = {"port": 2222, "user": "a b/c", "flag": True}
    assert render("{port}", values.__getitem__) == 2222  # a whole-value template keeps its type
    assert render("host:{port}", values.__getitem__) == "host:2222"
    assert render("{flag}-{{literal}}", values.__getitem__) == "true-{literal}"
    assert render("/files/{user}", values.__getitem__, quote_values=True) == "/files/a%20b/c"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        *[(v, False) for v in (None, False, 0, "", "false", "No", "0")],
        *[(v, True) for v in (True, 1, "true", "yes", "x", [1])],
    ],
)
def test_truthy(value: Any, expected: bool) -> None:
    assert truthy(value) is expected


def test_status_classes_match_the_harness_error_classes() -> None:
    assert all(status_error_class(s) == http_error_class(s) for s in range(100, 600))


# --- extraction -----------------------------------------------------------------------------------

PAGE = '<form><input type="hidden" name="csrf_token" value="tok-1"><input name="other" value="x"></form>'


def test_extractors_read_hidden_json_cookie_regex_and_header() -> None:
    page = _response(body=PAGE, cookie={"gl_session": "s-1"}.get, headers={"X-Request-Id": "r-9"})
    assert extract(Extract(hidden="csrf_token"), page) == "tok-1"
    assert extract(Extract(cookie="gl_session"), page) == "s-1"
    assert extract(Extract(regex=r'name="other" value="(\w+)"'), page) == "x"
    assert extract(Extract(regex=r"(?P<value>tok-\d)"), page) == "tok-1"
    assert extract(Extract(regex=r"tok-\d"), page) == "tok-1"  # no group: the whole match
    assert extract(Extract(header="X-Request-Id"), page) == "r-9"
    doc = _response(body=json.dumps({"data": {"apps": [{"id": "a"}, {"id": "b"}], "n": "7", "ok": False}}))
    assert extract(Extract(json="data.apps.1.id"), doc) == "b"
    assert extract(Extract(json="data.ok"), doc) is False  # JSON keeps its type by default
    assert extract(Extract(json="data.n", type="int"), doc) == 7
    assert extract(Extract(json="data.missing", optional=True), doc) is None


@pytest.mark.parametrize(
    ("ex", "body"),
    [
        (Extract(hidden="csrf_token"), "<p>no form</p>"),
        (Extract(json="data.token"), "not json"),
        (Extract(json="data.token"), '{"data": {}}'),
        (Extract(json="apps.5"), '{"apps": []}'),
        (Extract(json="port", type="int"), '{"port": "twenty"}'),
        (Extract(regex=r"id=(\d+)"), "nothing"),
        (Extract(header="X-Missing"), ""),
        (Extract(cookie="absent"), ""),
    ],
)
def test_a_missing_or_malformed_value_fails_the_step(ex: Extract, body: str) -> None:
    with pytest.raises(StepFailure) as info:
        extract(ex, _response(body=body))
    assert info.value.error_class == "other" and str(info.value) == "other: unexpected response"


# --- the engine and its drivers -------------------------------------------------------------------


class FakePortal:
    """The reference portal's answers in memory; records requests and how each response was settled."""

    def __init__(self, mfa: bool, fail: dict[str, int] | None = None) -> None:
        self.mfa = mfa
        self.fail = fail or {}
        self.requests: list[Request] = []
        self.settled: list[tuple[str, str | None]] = []

    def send(self, req: Request) -> Response:
        self.requests.append(req)
        key = f"{req.method} {req.path}"
        answers = {
            "GET /login": PAGE,
            "POST /login": json.dumps({"mfa_required": self.mfa}),
            "POST /mfa": '{"ok": true}',
            "GET /api/apps": '{"apps": [{"id": "desktop"}]}',
            "POST /api/launch": json.dumps(
                {"ticket": "T-1", "host": "127.0.0.1", "port": 2240, "username": "alice", "expires_at": 9.5}
            ),
            "POST /logout": '{"ok": true}',
        }
        status = self.fail.get(key, 200)
        body = answers.get(key, "x" * 100)

        def settle(failure: StepFailure | None) -> None:
            self.settled.append((req.name, failure.error_class if failure else None))

        return _response(status, body, cookie={"gl_session": "s"}.get, settle=settle)


@pytest.mark.parametrize("mfa", [False, True])
def test_reference_flow_sends_what_the_reference_portal_expects(mfa: bool) -> None:
    portal = FakePortal(mfa)
    flow = StepFlow(REFERENCE_FLOW, ACCOUNT, "desktop", ("127.0.0.1", 2240))
    run(flow.logon(), portal.send)
    assert run(flow.apps(), portal.send) == [{"id": "desktop"}]
    ticket = run(flow.launch(), portal.send)
    assert ticket == Ticket("127.0.0.1", 2240, "alice", "T-1", 9.5)
    assert run(flow.document("q 1.pdf"), portal.send) == 100
    run(flow.logout(), portal.send)
    names = [r.name for r in portal.requests]
    expected = ["GET /login", "POST /login", *(["POST /mfa"] if mfa else [])]
    assert names == [*expected, "GET /api/apps", "POST /api/launch", "GET /documents/[doc]", "POST /logout"]
    assert portal.settled == [(n, None) for n in names], "every response settled once, as a success"
    login = portal.requests[1]
    assert login.headers["X-CSRF-Token"] == "tok-1"
    assert login.headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert login.body == b"username=alice&password=pw-alice-secret&csrf_token=tok-1"
    assert json.loads(portal.requests[-3].body or b"") == {"app": "desktop"}
    assert portal.requests[-2].path == "/documents/q%201.pdf"
    if mfa:
        code = portal.requests[2].body.decode().split("&")[0].removeprefix("code=")  # type: ignore[union-attr]
        import pyotp

        assert pyotp.TOTP(ACCOUNT.totp_secret).verify(code, valid_window=1)


def test_a_bad_status_fails_its_step_and_stops_the_phase() -> None:
    portal = FakePortal(mfa=True, fail={"POST /login": 401})
    flow = StepFlow(REFERENCE_FLOW, ACCOUNT, "desktop", ("127.0.0.1", 2240))
    with pytest.raises(StepFailure) as info:
        run(flow.logon(), portal.send)
    assert info.value.error_class == "http_401"
    assert portal.settled == [("GET /login", None), ("POST /login", "http_401")]


def test_expect_accepts_only_the_listed_statuses() -> None:
    flow = PortalFlow(logout=[FlowStep("/bye", "DELETE", expect=[204])])
    engine = StepFlow(flow, ACCOUNT, "desktop", ("h", 22))
    run(engine.logout(), lambda req: _response(204))
    with pytest.raises(StepFailure) as info:
        run(engine.logout(), lambda req: _response(200))
    assert info.value.error_class == "other" and "200 not expected" in str(info.value)


def test_no_answer_fails_with_the_transport_error_class_before_the_flow_sees_it() -> None:
    settled: list[StepFailure | None] = []
    engine = StepFlow(REFERENCE_FLOW, ACCOUNT, "desktop", ("h", 22))
    with pytest.raises(StepFailure) as info:
        run(engine.logon(), lambda req: Response(None, error_class="timeout", settle=settled.append))
    assert info.value.error_class == "timeout"
    assert len(settled) == 1 and settled[0] is info.value


def test_when_not_runs_a_step_only_if_the_value_is_false() -> None:
    flow = PortalFlow(
        logon=[
            FlowStep("/a", extract={"sso": Extract(json="sso")}),
            FlowStep("/password", "POST", when="not sso"),
            FlowStep("/sso", when="sso"),
        ]
    )
    for sso, expected in ((True, "/sso"), (False, "/password")):
        sent: list[str] = []

        def send(req: Request, sso: bool = sso, sent: list[str] = sent) -> Response:
            sent.append(req.path)
            return _response(200, json.dumps({"sso": sso}))

        run(StepFlow(flow, ACCOUNT, "desktop", ("h", 22)).logon(), send)
        assert sent == ["/a", expected]


def test_ticket_defaults_to_the_account_and_the_profile_gateway() -> None:
    engine = StepFlow(PortalFlow(), ACCOUNT, "desktop", ("127.0.0.7", 2022))
    ticket = run(engine.launch(), lambda req: pytest.fail("no launch request expected"))
    assert ticket == Ticket("127.0.0.7", 2022, "alice", "pw-alice-secret", None)


def test_async_driver_runs_the_same_flow() -> None:
    portal = FakePortal(mfa=True)

    async def send(req: Request) -> Response:
        await asyncio.sleep(0)
        return portal.send(req)

    async def session() -> Ticket:
        engine = StepFlow(REFERENCE_FLOW, ACCOUNT, "desktop", ("h", 22))
        await arun(engine.logon(), send)
        return await arun(engine.launch(), send)  # type: ignore[no-any-return]

    loop = asyncio.new_event_loop()
    try:
        assert loop.run_until_complete(session()).secret == "T-1"
    finally:
        loop.close()
    assert [r.name for r in portal.requests][-2:] == ["POST /mfa", "POST /api/launch"]


def test_secrets_stay_out_of_reprs() -> None:
    portal = FakePortal(mfa=False)
    engine = StepFlow(REFERENCE_FLOW, ACCOUNT, "desktop", ("h", 22))
    run(engine.logon(), portal.send)
    ticket = run(engine.launch(), portal.send)
    shown = repr(engine) + repr(portal.requests) + repr(ticket)
    for secret in ("pw-alice-secret", "tok-1", "T-1", ACCOUNT.totp_secret):
        assert secret not in shown


# --- compiled steps: exactly what the plain render path sends -------------------------------------

TRICKY: list[Any] = [
    "plain",
    "a b/c?d=e&f=g+h",
    "ünï cödé ✓",
    "100%",
    "{braces}",
    "",
    0,
    42,
    2.5,
    True,
    False,
    None,
    ["x", 1],
    {"k": "v"},
]

ODD_STEPS = [  # what the example flows do not show: escapes, quoting, lone values, nested JSON
    FlowStep("/a/{v1}/{{x}}/{v2}.txt", "PUT", headers={"X": "{{v1}}", "Y": "{v1}", "Z": "k={v2};{v1}"}),
    FlowStep("{v1}", form={"q r": "{v1}", "s&t": "lit eral", "u": "pre {v1} {v2} post"}),
    FlowStep("/j", "POST", json={"a": ["{v1}", 3, {"b": "{{c}}", "d": None}], "e": "{v2}", "f": "x{v1}"}),
    FlowStep("/k", "PATCH", json={"same": ["const", 1.5, True]}, headers={"Content-Type": "text/json"}),
    FlowStep("/f", "POST", form={"only": "constant value"}, headers={"content-type": "lower"}),
    FlowStep("/u", "POST", json={"ключ": "ü {v1}", "n": {"deep": ["{v2}", []], "e": {}}, "t": '\t"{{'}),
]


def _plain_request(engine: StepFlow, step: FlowStep, extra: dict[str, Any]) -> Request:
    """The request as the engine built it before steps were compiled: render, urlencode, json.dumps."""
    from urllib.parse import urlencode

    def get(name: str) -> Any:
        return engine.lookup(name, extra)

    def text(value: Any) -> str:
        return (
            "" if value is None else ("true" if value else "false") if isinstance(value, bool) else str(value)
        )

    def fill(value: Any) -> Any:
        if isinstance(value, str):
            return render(value, get)
        if isinstance(value, dict):
            return {k: fill(v) for k, v in value.items()}
        return [fill(v) for v in value] if isinstance(value, list) else value

    headers = {k: text(render(v, get)) for k, v in step.headers.items()}
    body = None
    if step.form:
        body = urlencode({k: text(render(v, get)) for k, v in step.form.items()}).encode()
        headers.setdefault("Content-Type", "application/x-www-form-urlencoded")
    elif step.json:
        body = json.dumps(fill(step.json)).encode()
        headers.setdefault("Content-Type", "application/json")
    path = text(render(step.path, get, quote_values=True))
    return Request(step.method, path, step.sample_name(), headers, body)


def test_compiled_steps_send_exactly_what_the_plain_render_path_sends() -> None:
    import random

    flows = [REFERENCE_FLOW, load_profile(EXAMPLE_HTML).portal.flow, load_profile(EXAMPLE_JSON).portal.flow]
    flows.append(PortalFlow(logon=ODD_STEPS))
    rng = random.Random(20261203)
    compared = 0
    for flow in flows:
        assert flow is not None
        steps = [
            s for phase in ("logon", "apps", "launch", "document", "logout") for s in getattr(flow, phase)
        ]
        names = {n for s in steps for n in s.extract} | {"v1", "v2"}
        for _ in range(40):  # fresh values each round: nothing of one session's values is kept
            engine = StepFlow(flow, ACCOUNT, rng.choice(["desktop", "my app/1"]), ("h", 22))
            engine.values.update({n: rng.choice(TRICKY) for n in names})
            extra = {"document": rng.choice(["q 1.pdf", "a/b.txt", "plain"]), "totp": "123456"}
            for step in steps:
                got, want = engine.request(step, extra), _plain_request(engine, step, extra)
                assert got == want and list(got.headers.items()) == list(want.headers.items()), step
                compared += 1
    assert compared == 40 * (7 + 7 + 5 + len(ODD_STEPS))  # every step of every flow, 40 times


@pytest.mark.parametrize(
    "body",
    [
        b'{"a": [1, "\xc3\xbc"]}',
        b"[1, 2]",
        b"{}",
        b"{",
        b'{"a": 1} trailing',
        b'  {"lead": "space"}',
        b'\xef\xbb\xbf{"bom": 8}',
        '{"u16": 1}'.encode("utf-16"),
        '{"u16le": 1}'.encode("utf-16-le"),
        '[{"u32": 1}]'.encode("utf-32"),
        b'{"bad utf-8": "\xff"}',
        b'"a string"',
        b"",
    ],
)
def test_json_answers_parse_as_json_loads_parses_them(body: bytes) -> None:
    """The engine's UTF-8 shortcut for bodies starting with { or [ agrees with json.loads."""
    try:
        expected: Any = ("ok", json.loads(body))
    except ValueError as exc:
        expected = ("error", type(exc))
    response = _response(body=body)
    if expected[0] == "ok":
        assert response.json_value() == expected[1]
    else:
        with pytest.raises(StepFailure):
            response.json_value()


# --- profiles: examples, validation, flow classes -------------------------------------------------


def test_html_example_spells_out_the_reference_flow_and_json_example_differs_in_shape() -> None:
    html = load_profile(EXAMPLE_HTML)
    assert html.portal.flow == REFERENCE_FLOW
    api = load_profile(EXAMPLE_JSON).portal.flow
    assert api is not None and api.launch == [] and api.ticket.secret == "{password}"
    assert {s.method for s in api.logout} == {"DELETE"}
    assert all("Authorization" in s.headers for s in [*api.apps, *api.document, *api.logout])


def test_sample_names_per_phase_come_from_the_flow(tmp_path: Path) -> None:
    reference = sample_names(load_profile(PROFILES / "reference-before.toml"))
    assert reference == {
        "logon": ["GET /login", "POST /login", "POST /mfa"],
        "apps": ["GET /api/apps"],
        "launch": ["POST /api/launch"],
        "document": ["GET /documents/[doc]"],
        "logout": ["POST /logout"],
    }
    api = sample_names(load_profile(EXAMPLE_JSON))
    assert api["logon"] == ["POST /api/v1/auth", "POST /api/v1/auth/otp"] and api["launch"] == []
    assert api["logout"] == ["DELETE /api/v1/auth"]  # the default name: method and path


def test_a_profile_with_a_flow_survives_a_dump(tmp_path: Path) -> None:
    original = load_profile(EXAMPLE_JSON)
    copy = load_profile(dump_profile(original, tmp_path / "copy.toml"))
    assert copy.portal == original.portal


def _profile_with(tmp_path: Path, portal_extra: str, name: str = "p.toml") -> Path:
    text = EXAMPLE_JSON.read_text()
    head, _, _ = text.partition("\n[[portal.flow.logon]]\n")
    _, _, tail = text.partition("\n[gateway]\n")
    path = tmp_path / name
    path.write_text(head + "\n" + textwrap.dedent(portal_extra) + "\n[gateway]\n" + tail)
    return path


def _error(path: Path) -> str:
    with pytest.raises(InputError) as info:
        load_profile(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    return message


LOGIN = """
[[portal.flow.logon]]
method = "POST"
path = "/api/v1/auth"
extract.token = { json = "data.token" }
"""


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        (LOGIN + 'colour = "red"\n', "unknown key 'portal.flow.logon[0].colour'; remove it"),
        (LOGIN.replace('json = "data.token"', 'jsn = "t"'), "'portal.flow.logon[0].extract.token.jsn'"),
        (LOGIN.replace("POST", "FETCH"), "'portal.flow.logon[0].method' is 'FETCH'; use one of 'GET'"),
        (LOGIN.replace("{ json", '{ header = "X", json'), "needs exactly one of hidden, json, cookie"),
        (LOGIN + "extract.t2 = {}\n", "'portal.flow.logon[0].extract.t2' needs exactly one of"),
        (
            LOGIN + '[[portal.flow.apps]]\npath = "/a"\nheaders = { A = "Bearer {tokn}" }\n',
            "'portal.flow.apps[0].headers.A' uses 'tokn', which no earlier step extracts; extract it in an "
            "earlier step (did you mean 'token'?)",
        ),
        (
            '[[portal.flow.logon]]\npath = "/x"\nheaders = { A = "{later}" }\n'
            + LOGIN.replace("token", "later"),
            "'portal.flow.logon[0].headers.A' uses 'later'",
        ),
        (
            LOGIN + '[[portal.flow.logon]]\npath = "/m"\nwhen = "mfa"\n',
            "'portal.flow.logon[1].when' uses 'mfa'",
        ),
        (LOGIN + '[[portal.flow.logon]]\npath = "/m"\nwhen = "token or x"\n', "write 'NAME' or 'not NAME'"),
        (LOGIN.replace('"/api/v1/auth"', '"https://evil.example/x"'), "'portal.flow.logon[0].path' is"),
        (LOGIN.replace('"/api/v1/auth"', '"/a/{nope"'), "has a lone '{' at 3"),
        (LOGIN + 'name = "GET /{token}"\n', "'portal.flow.logon[0].name' must be literal"),
        (LOGIN + 'form = { a = "b" }\njson = { c = "d" }\n', "are both set; a request has one body"),
        (LOGIN + "expect = [42]\n", "'portal.flow.logon[0].expect' has 42"),
        (LOGIN.replace("extract.token", "extract.password"), "shadows a built-in value"),
        (LOGIN + 'extract.bad = { regex = "(" }\n', "extract.bad.regex' is not a valid regular expression"),
        (LOGIN + "[portal.flow.ticket]\nsecret = '{ticket}'\n", "'portal.flow.ticket.secret' uses 'ticket'"),
        (
            '[[portal.flow.document]]\npath = "/f/{document}"\n'
            '[[portal.flow.logout]]\npath = "/{document}"\n',
            "'portal.flow.logout[0].path' uses 'document'",
        ),
    ],
)
def test_bad_flows_are_refused_in_one_line_naming_key_and_fix(
    tmp_path: Path, extra: str, fragment: str
) -> None:
    assert fragment in _error(_profile_with(tmp_path, extra))


FLOW_CLASS = '''
from gateload.targets.portalflow import Request, StepFailure, Ticket


class TokenFlow:
    """The JSON API example's flow, written in Python."""

    SAMPLE_NAMES = {
        "logon": ["POST /api/v1/auth", "POST /api/v1/auth/otp"],
        "logout": ["DELETE /api/v1/auth"],
    }

    def __init__(self, profile, account):
        self.account, self.gateway, self.token = account, profile.gateway, ""

    def _auth(self):
        return {"Authorization": "Bearer " + self.token}

    def logon(self):
        body = '{"login": {"user": "%s", "secret": "%s"}}' % (self.account.username, self.account.password)
        json_type = {"Content-Type": "application/json"}
        answer = yield Request("POST", "/api/v1/auth", "POST /api/v1/auth", json_type, body.encode())
        if answer.status != 200:
            raise StepFailure("http_401", "HTTP %d" % answer.status)
        data = answer.json_value()["data"]
        self.token = data["token"]
        if data["mfa"]["required"]:
            import pyotp
            otp = '{"otp": "%s"}' % pyotp.TOTP(self.account.totp_secret).now()
            yield Request("POST", "/api/v1/auth/otp", "POST /api/v1/auth/otp",
                          {**self._auth(), "Content-Type": "application/json"}, otp.encode())

    def apps(self):
        answer = yield Request("GET", "/api/v1/apps", "GET /api/v1/apps", self._auth())
        return answer.json_value()["data"]["apps"]

    def launch(self):
        return Ticket(self.gateway.host, self.gateway.port, self.account.username, self.account.password)
        yield  # a generator with no request

    def document(self, name):
        answer = yield Request("GET", "/api/v1/files/" + name, "GET /api/v1/files/[doc]", self._auth())
        return len(answer.body)

    def logout(self):
        answer = yield Request("DELETE", "/api/v1/auth", "DELETE /api/v1/auth", self._auth())
        if answer.status != 204:
            raise StepFailure("other", "unexpected response")
'''


def test_flow_class_is_loaded_beside_the_profile_and_checked(tmp_path: Path) -> None:
    (tmp_path / "flows").mkdir()
    (tmp_path / "flows" / "token_flow.py").write_text(FLOW_CLASS)
    good = _profile_with(tmp_path, 'flow_class = "flows.token_flow:TokenFlow"\n')
    profile = load_profile(good)
    flow = make_flow(profile, ACCOUNT)
    assert type(flow).__name__ == "TokenFlow"
    names = sample_names(profile)
    assert names["logon"] == ["POST /api/v1/auth", "POST /api/v1/auth/otp"] and names["apps"] == []
    # a copy written elsewhere still finds the module
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    assert (
        type(make_flow(load_profile(dump_profile(profile, elsewhere / "c.toml")), ACCOUNT)).__name__
        == "TokenFlow"
    )
    missing = _profile_with(tmp_path, 'flow_class = "flows.nope:TokenFlow"\n', "missing.toml")
    assert "'portal.flow_class' names" in _error(missing) and "does not exist" in _error(missing)
    no_class = _profile_with(tmp_path, 'flow_class = "flows.token_flow:Other"\n', "no_class.toml")
    assert "names 'Other', which token_flow.py does not define" in _error(no_class)
    malformed = _profile_with(tmp_path, 'flow_class = "flows/token_flow.py"\n', "malformed.toml")
    assert "write 'module:Class'" in _error(malformed)
    both = _profile_with(tmp_path, 'flow_class = "flows.token_flow:TokenFlow"\n' + LOGIN, "both.toml")
    assert "'portal.flow' and 'portal.flow_class' are both set" in _error(both)


# --- integration: the JSON API example against a real portal of that shape ------------------------


@dataclasses.dataclass
class JsonPortal:
    url: str

    def stats(self) -> dict[str, int]:
        with urllib.request.urlopen(f"{self.url}/stats", timeout=5) as r:
            return json.loads(r.read())  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def flow_farm(reference_farm: Callable[..., Path]) -> Path:
    """The reference farm for its SSH gateway (it takes account passwords: static_credentials)."""
    mix = {"typing": 1.0, "exec": 1.0, "document": 3.0}
    return reference_farm("reference-before", **FAST, workload__mix=mix)


@pytest.fixture(scope="module")
def json_portal(flow_farm: Path) -> Iterator[JsonPortal]:
    creds = load_profile(flow_farm).credentials_path
    proc = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("json_portal.py")), str(creds)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        with gevent.Timeout(20, RuntimeError("json portal did not start within 20 s")):
            line = proc.stdout.readline() if proc.stdout else ""
        assert line.startswith("ready "), line
        yield JsonPortal(f"http://127.0.0.1:{int(line.split()[1])}")
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _json_profile(
    tmp_path: Path, farm_path: Path, portal: JsonPortal, edit: Callable[[dict], None] | None = None
) -> Path:
    """The JSON API example's flow, pointed at the test portal and the farm's gateway and accounts."""
    farm = load_profile(farm_path)
    data = tomllib.loads(EXAMPLE_JSON.read_text())
    data["target"]["allow_non_loopback"] = False
    data["portal"]["url"] = portal.url
    data["gateway"] = {
        "host": farm.gateway.host,
        "port": farm.gateway.port,
        "host_key": str(farm.resolve(farm.gateway.host_key)),
    }
    data["credentials"] = {"file": str(farm.credentials_path)}
    data["workload"] = dataclasses.asdict(farm.workload)
    if edit is not None:
        edit(data)
    path = tmp_path / "json-api.toml"
    path.write_text(tomli_w.dumps(data))
    return path


def _secrets(profile: Path) -> list[str]:
    with load_profile(profile).credentials_path.open(newline="") as fh:
        return [v for r in csv.DictReader(fh) for k, v in r.items() if k != "username" and v]


def _no_secret_in(run: Run, secrets: list[str]) -> None:
    text = repr([(s["name"], str(s["exception"]), s["context"]) for s in run.samples])
    assert not [s for s in secrets if s in text]


API_NAMES = ["POST /api/v1/auth", "POST /api/v1/auth/otp", "GET /api/v1/apps", "GET /api/v1/files/[doc]"]


def test_portal_users_log_on_to_a_json_api_portal(
    tmp_path: Path, flow_farm: Path, json_portal: JsonPortal
) -> None:
    profile = _json_profile(tmp_path, flow_farm, json_portal)
    before = json_portal.stats()
    run = run_users(
        profile, PortalUser, 4, lambda r: r.count("HTTP", "DELETE /api/v1/auth") >= 8, timeout_s=30
    )
    assert run.count("HTTP", "DELETE /api/v1/auth") >= 8
    assert run.operations(ok=False) == {}, run.errors()
    seen = run.operations()
    assert all(seen[("HTTP", name)] >= 8 for name in API_NAMES), seen
    assert {s["context"]["server"] for s in run.samples} == {"api-1"}
    after = json_portal.stats()
    # every account has a TOTP secret (the farm's mfa = true): one OTP step per logon, no bad token
    logons = after["POST /api/v1/auth"] - before.get("POST /api/v1/auth", 0)
    # Stopping the users may cut a visit between two requests (or after one reached the portal and
    # before its sample fired): each of the 4 users leaves at most one such gap.
    auth, otp = run.count("HTTP", "POST /api/v1/auth"), run.count("HTTP", "POST /api/v1/auth/otp")
    assert 0 <= logons - auth <= 4 and 0 <= auth - otp <= 4
    assert after.get("bad_token", 0) == before.get("bad_token", 0)
    assert after.get("auth_failed", 0) == before.get("auth_failed", 0)
    _no_secret_in(run, _secrets(profile))
    assert run.user_errors == []


def test_a_flow_that_misreads_the_answer_records_the_failed_step(
    tmp_path: Path, flow_farm: Path, json_portal: JsonPortal
) -> None:
    def misread(data: dict) -> None:
        data["portal"]["flow"]["logon"][0]["extract"]["token"]["json"] = "data.tokn"  # a typo

    profile = _json_profile(tmp_path, flow_farm, json_portal, misread)
    run = run_users(profile, PortalUser, 2, lambda r: r.count("HTTP", "POST /api/v1/auth", ok=False) >= 4)
    assert run.count("HTTP", "POST /api/v1/auth", ok=False) >= 4
    assert run.errors() == {"other": sum(run.errors().values())}
    assert run.operations() == {}, "a failed logon step ends the visit"
    assert {str(s["exception"]) for s in run.samples} == {"other: unexpected response"}


def test_homeoffice_sessions_through_the_json_portal_use_the_account_password(
    tmp_path: Path, flow_farm: Path, json_portal: JsonPortal
) -> None:
    profile = _json_profile(tmp_path, flow_farm, json_portal)

    def done(r: Run) -> bool:
        return r.count("SESSION", "session") >= 3 and r.count("HTTP", "GET /api/v1/files/[doc]") >= 2

    run = run_users(profile, HomeofficeUser, 3, done, timeout_s=60)
    assert done(run), run.operations()
    assert run.operations(ok=False) == {}, run.errors()
    seen = run.operations()
    assert seen[("SSH", "connect")] >= 3 and seen[("SSH", "shell")] >= 3
    assert seen[("HTTP", "DELETE /api/v1/auth")] >= 3
    assert not any(name.startswith("POST /api/launch") for _, name in seen), "this portal has no launch step"
    _no_secret_in(run, _secrets(profile))
    assert run.user_errors == []


def test_a_flow_class_drives_portal_users(tmp_path: Path, flow_farm: Path, json_portal: JsonPortal) -> None:
    (tmp_path / "token_flow.py").write_text(FLOW_CLASS)

    def use_class(data: dict) -> None:
        del data["portal"]["flow"]
        data["portal"]["flow_class"] = "token_flow:TokenFlow"

    profile = _json_profile(tmp_path, flow_farm, json_portal, use_class)
    run = run_users(
        profile, PortalUser, 2, lambda r: r.count("HTTP", "DELETE /api/v1/auth") >= 4, timeout_s=30
    )
    assert run.count("HTTP", "DELETE /api/v1/auth") >= 4
    assert run.operations(ok=False) == {}, run.errors()
    auth, otp = run.count("HTTP", "POST /api/v1/auth"), run.count("HTTP", "POST /api/v1/auth/otp")
    assert auth >= 4 and 0 <= auth - otp <= 2  # the class's TOTP step ran (a stop may cut one per user)
