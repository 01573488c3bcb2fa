"""``gateload probe PROFILE`` and ``gateload pin HOST[:PORT]``: is a target set up right, before any load?

``probe`` connects once per configured service, as one employee would, and prints one line per check:
what works (``ok``), what is knowingly relaxed (``warn``: an explicit opt-out in the profile), what
fails and how to fix it (``FAIL ... -> fix``), and what could not be tried after an earlier failure
(``skip``). Exit code 0 when nothing failed, 1 when something did, 2 for bad input.

``pin`` fetches a gateway's host key during key exchange (no authentication) and prints the line to
paste into the profile's ``[gateway]`` section. It cannot know whether the key is the right one: check
the fingerprint out of band (``ssh-keygen -lf`` on the gateway) before trusting it.

Neither imports Locust (it monkey-patches the interpreter): they run on a plain asyncio loop, use the
load generator's own SSH code (``locustfiles/lib/sshops.py`` ``GatewayConnection``) and the portal logon
over aiohttp. No secret (password, ticket, TOTP, key) is ever printed; error texts are built from the
error class and fixed words, never from what a server sent. The probe goes straight to the target:
a ``[link]`` emulation is not put in between.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import ssl
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

from gateload.errors import InputError
from targets.profile import Profile, is_loopback, load_profile

OK, WARN, FAIL, SKIP = "ok", "warn", "FAIL", "skip"
PROBE_COMMAND = "echo gateload-probe"
_CSRF_INPUT = re.compile(r"<input\b[^>]*\bname=[\"']csrf_token[\"'][^>]*>", re.IGNORECASE)
_VALUE = re.compile(r"\bvalue=[\"']([^\"']*)[\"']", re.IGNORECASE)


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``probe`` and ``pin`` commands."""
    p = sub.add_parser(
        "probe",
        help="check a profile's target once per service and say what to fix",
        description="Connects once per configured service (portal logon, gateway host key, "
        "authentication, shell, exec, SFTP, tunnel) and prints one line per check. "
        "Exit code 0 all ok, 1 something failed, 2 bad input.",
    )
    p.add_argument("profile", type=Path, help="target profile (TOML)")
    p.add_argument(
        "--only", choices=("portal", "gateway"), help="check one service (e.g. a gateway-only target)"
    )
    p.add_argument("--timeout", type=float, default=0.0, help="seconds per step (default workload.timeout_s)")
    p.add_argument("--allow-remote", action="store_true", help="allow a target outside loopback")
    p.set_defaults(func=probe_command)

    q = sub.add_parser(
        "pin",
        help="print a gateway's host key fingerprint for the profile's [gateway] section",
        description="Fetches the SSH host key during key exchange (no login) and prints "
        'host_key_fingerprint = "SHA256:..." for the profile. Check it out of band before trusting it.',
    )
    q.add_argument("target", metavar="HOST[:PORT]", help="the gateway, e.g. 127.0.0.1:2222 (port 22 if none)")
    q.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the key (default 10)")
    q.add_argument("--allow-remote", action="store_true", help="allow a host outside loopback")
    q.set_defaults(func=pin_command)


# --- output ---------------------------------------------------------------------------------------


@dataclass
class Report:
    """The probe's lines, printed as they come (a slow check shows where it is)."""

    out: Any = field(default_factory=lambda: sys.stdout)
    lines: list[tuple[str, str, str]] = field(default_factory=list)

    def add(self, status: str, service: str, text: str) -> None:
        self.lines.append((status, service, text))
        print(f"{status:5} {service:7} {text}", file=self.out, flush=True)

    @property
    def failed(self) -> bool:
        return any(status == FAIL for status, _, _ in self.lines)


def _ms(t0: float) -> str:
    return f"{(time.perf_counter() - t0) * 1000:.0f} ms"


def _why(exc: BaseException) -> str:
    """A short, fixed description of an error (never a server's text, which may echo anything)."""
    from locustfiles.lib.errors import classify

    words = {
        "refused": "connection refused",
        "reset": "connection reset",
        "timeout": "timed out",
        "auth_failed": "authentication refused",
        "host_key_mismatch": "host key not trusted",
        "tls_error": "TLS failed",
        "tunnel_refused": "channel refused",
        "sftp_error": "SFTP error",
        "ssh_error": "SSH error",
    }
    cls = classify(exc) or "other"
    return words.get(cls, f"{cls} ({type(exc).__name__})")


# --- pin ------------------------------------------------------------------------------------------


def parse_host_port(text: str, default_port: int = 22) -> tuple[str, int]:
    """``HOST``, ``HOST:PORT``, ``[IPV6]:PORT`` or a bare IPv6 address -> (host, port)."""
    host, port = text.strip(), str(default_port)
    if host.startswith("["):
        inner, sep, rest = host[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise InputError(f"{text!r} is not HOST[:PORT]; write an IPv6 address as [::1]:22")
        host, port = inner, rest[1:] or port
    elif host.count(":") == 1:
        host, port = host.split(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InputError(f"{text!r} is not HOST[:PORT]; give e.g. 127.0.0.1:2222 (port 1..65535)")
    return host, int(port)


def pin_command(args: argparse.Namespace) -> int:
    host, port = parse_host_port(args.target)
    if not (is_loopback(host) or args.allow_remote):
        raise InputError(f"{host} is not on loopback; pass --allow-remote if you mean to contact it")
    if args.timeout <= 0:
        raise InputError(f"--timeout is {args.timeout}; give a number of seconds > 0")
    try:
        key, peer = asyncio.run(fetch_host_key(host, port, args.timeout))
    except Exception as exc:  # every failure is one line, exit 2
        print(
            f"gateload: error: no host key from {host}:{port}: {_why(exc)}; {_pin_hint(exc)}", file=sys.stderr
        )
        return 2
    print(f"{key.get_algorithm()} host key of {host}:{port} (address {peer}), fetched during key exchange:")
    print(f'host_key_fingerprint = "{key.get_fingerprint("sha256")}"')
    print(
        "Paste that line into the profile's [gateway] section (and leave host_key empty). It was not "
        "verified: compare it with `ssh-keygen -lf` of the key on the gateway before you trust it."
    )
    return 0


def _pin_hint(exc: BaseException) -> str:
    from locustfiles.lib.errors import classify

    cls = classify(exc)
    if cls in ("refused", "timeout", "other"):
        return "is the gateway up, and is that its SSH port?"
    return "is that an SSH server's port?"


async def fetch_host_key(
    host: str, port: int, timeout_s: float, algs: tuple[str, ...] = ()
) -> tuple[Any, str]:
    """The host key the server presents in key exchange, and the address it came from.

    ``algs`` restricts the host key algorithms (to compare with a pinned key of one type); by default
    the client's preference decides, as it does when the load generator connects with a fingerprint.
    """
    import asyncssh

    from locustfiles.lib.sshops import open_stamped_socket

    sock = await open_stamped_socket(host, port, timeout_s)
    peer = sock.getpeername()
    options: dict[str, Any] = {"server_host_key_algs": list(algs)} if algs else {}
    key = await asyncio.wait_for(asyncssh.get_server_host_key(sock=sock, config=None, **options), timeout_s)
    if key is None:
        raise asyncssh.KeyExchangeFailed("no host key in the key exchange")
    return key, f"{peer[0]}:{peer[1]}"


# --- probe ----------------------------------------------------------------------------------------


def probe_command(args: argparse.Namespace) -> int:
    from gateload.campaign import check_reachable

    profile = load_profile(args.profile)
    check_reachable(profile, args.allow_remote)
    if args.timeout < 0:
        raise InputError(f"--timeout is {args.timeout}; give a number of seconds > 0")
    timeout_s = args.timeout or profile.workload.timeout_s
    report = Report()
    asyncio.run(Probe(profile, report, timeout_s).run(args.only))
    return 1 if report.failed else 0


@dataclass
class GatewayLogin:
    """Who the gateway is asked to let in; ``secret`` is never printed."""

    username: str
    secret: str | None = field(repr=False)
    how: str  # "the portal's ticket", "the account password", "the key credentials.ssh_key"


@dataclass
class HttpAnswer:
    """What a portal request returned (the transport-neutral response of ``send``)."""

    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode(errors="replace")

    def json(self) -> Any:
        return json.loads(self.body or b"null")


Send = Callable[[str, str, dict[str, str], bytes | None], Awaitable[HttpAnswer]]


class StepFailed(Exception):
    """A portal step did not give what the flow needs; ``str()`` is safe to print."""

    def __init__(self, step: str, problem: str, fix: str) -> None:
        super().__init__(f"{step}: {problem}")
        self.step, self.problem, self.fix = step, problem, fix


class Probe:
    """One pass over a profile's services; lines go to ``report``."""

    def __init__(self, profile: Profile, report: Report, timeout_s: float) -> None:
        self.profile = profile
        self.report = report
        self.timeout_s = timeout_s
        self.account: Any = None
        self.login: GatewayLogin | None = None  # from the portal's launch, when it hands one out

    async def run(self, only: str | None = None) -> None:
        self._load_account()
        if only in (None, "portal"):
            await self.portal()
        if only in (None, "gateway"):
            await self.gateway()

    def _load_account(self) -> None:
        from locustfiles.lib.runtime import load_accounts

        try:
            accounts = load_accounts(self.profile.credentials_path)
        except InputError as exc:
            self.report.add(FAIL, "account", f"{exc} -> fix [credentials] file (or GATELOAD_CREDENTIALS)")
            return
        self.account = accounts[0]

    # --- portal -----------------------------------------------------------------------------------

    async def portal(self) -> None:
        portal = self.profile.portal
        url = urlsplit(portal.url)
        where = portal.url.rstrip("/")
        context = self._tls_context() if url.scheme == "https" else None
        if not await self._portal_transport(where, url.hostname or "", url.port or 0, context):
            self.report.add(SKIP, "portal", "logon, launch, document, logout: portal not reachable")
            return
        if self.account is None:
            self.report.add(SKIP, "portal", "logon: no account to log on with")
            return
        import aiohttp

        timeout = aiohttp.ClientTimeout(total=self.timeout_s)
        # unsafe=True: keep cookies from an IP-address host (aiohttp's default jar drops them).
        jar = aiohttp.CookieJar(unsafe=True)
        connector = aiohttp.TCPConnector(ssl=context if context is not None else False)
        async with aiohttp.ClientSession(timeout=timeout, cookie_jar=jar, connector=connector) as http:
            sender = AiohttpSender(http, where, portal.server_header, portal.server_cookie)
            await self._portal_flow(sender)

    def _tls_context(self) -> ssl.SSLContext:
        portal = self.profile.portal
        if not portal.tls_verify:
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            return ctx
        ca = str(self.profile.resolve(portal.ca_file)) if portal.ca_file else None
        try:
            return ssl.create_default_context(cafile=ca)
        except (OSError, ssl.SSLError):
            # Reported by _portal_transport with the fix; an unverifiable context makes every step fail.
            return ssl.create_default_context()

    async def _portal_transport(
        self, where: str, host: str, port: int, context: ssl.SSLContext | None
    ) -> bool:
        portal = self.profile.portal
        if context is not None and portal.tls_verify and portal.ca_file:
            ca = self.profile.resolve(portal.ca_file)
            if not ca.is_file():
                self.report.add(FAIL, "portal", f"CA file {portal.ca_file} not found -> fix portal.ca_file")
                return False
        t0 = time.perf_counter()
        try:
            _, writer = await asyncio.wait_for(
                asyncio.open_connection(host, port, ssl=context, server_hostname=host if context else None),
                self.timeout_s,
            )
        except ssl.SSLCertVerificationError as exc:
            self.report.add(
                FAIL,
                "portal",
                f"{where}  TLS certificate not verified ({exc.verify_message}) -> set portal.ca_file to "
                "the CA that signs it (tls_verify = false is the recorded opt-out)",
            )
            return False
        except (OSError, TimeoutError) as exc:
            self.report.add(FAIL, "portal", f"{where}  {_why(exc)} -> start the portal or fix portal.url")
            return False
        writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await writer.wait_closed()
        if context is None:
            self.report.add(OK, "portal", f"{where}  reachable, plain HTTP (no TLS) ({_ms(t0)})")
        elif not portal.tls_verify:
            self.report.add(WARN, "portal", f"{where}  TLS NOT verified (portal.tls_verify = false)")
        else:
            ca = f"CA {portal.ca_file}" if portal.ca_file else "system CAs"
            self.report.add(OK, "portal", f"{where}  TLS verified ({ca}) ({_ms(t0)})")
        return True

    async def _portal_flow(self, sender: AiohttpSender) -> None:
        username = self.account.username
        t0 = time.perf_counter()
        try:
            ticket = await reference_logon(sender, self.account, self.profile.portal.app)
        except StepFailed as exc:
            self.report.add(FAIL, "portal", f"logon as {username}: {exc} -> {exc.fix}")
            return
        served = f", server {sender.server}" if sender.server else ""
        self.report.add(OK, "portal", f"logon as {username} ({sender.requests} requests, {_ms(t0)}{served})")
        if ticket is not None:
            self.login = ticket
            self.report.add(
                OK, "portal", f"launch {self.profile.portal.app}: gateway login for {ticket.username}"
            )
        document = self.profile.workload.documents[0] if self.profile.workload.documents else ""
        steps: list[tuple[str, Callable[[], Awaitable[str]]]] = []
        if document:
            steps.append((f"document {document}", lambda: reference_document(sender, document)))
        steps.append(("logout", lambda: reference_logout(sender)))
        for what, step in steps:
            try:
                detail = await step()
            except StepFailed as exc:
                self.report.add(FAIL, "portal", f"{what}: {exc} -> {exc.fix}")
                continue
            self.report.add(OK, "portal", f"{what}{detail}")

    # --- gateway ----------------------------------------------------------------------------------

    async def gateway(self) -> None:
        gw = self.profile.gateway
        where = f"{gw.host}:{gw.port}"
        if not await self._gateway_tcp(where):
            self.report.add(SKIP, "gateway", "host key, authentication, shell, exec, SFTP, tunnel")
            return
        if not await self._host_key(where):
            self.report.add(
                SKIP, "gateway", "authentication, shell, exec, SFTP, tunnel: host key not trusted"
            )
            return
        login = self.login or self._account_login()
        if login is None:
            self.report.add(SKIP, "gateway", "authentication, shell, exec, SFTP, tunnel: no account")
            return
        await self._session(login)

    async def _gateway_tcp(self, where: str) -> bool:
        gw = self.profile.gateway
        t0 = time.perf_counter()
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(gw.host, gw.port), self.timeout_s)
        except (OSError, TimeoutError) as exc:
            self.report.add(
                FAIL, "gateway", f"{where}  {_why(exc)} -> start the gateway or fix gateway.host/port"
            )
            return False
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        self.report.add(OK, "gateway", f"{where}  TCP connect ({_ms(t0)})")
        return True

    async def _host_key(self, where: str) -> bool:
        import asyncssh

        gw = self.profile.gateway
        pinned: Any = None
        if gw.verify_host_key and gw.host_key:
            try:
                pinned = asyncssh.read_public_key(str(self.profile.resolve(gw.host_key)))
            except (OSError, asyncssh.KeyImportError):
                self.report.add(
                    FAIL,
                    "gateway",
                    f"gateway.host_key {gw.host_key} is not a readable public key -> fix the path, or pin "
                    f"by fingerprint: gateload pin {where}",
                )
                return False
        algs = (pinned.get_algorithm(),) if pinned is not None else ()
        try:
            key, _ = await fetch_host_key(gw.host, gw.port, self.timeout_s, algs)
        except Exception as exc:  # whatever it is, the line says so
            self.report.add(
                FAIL, "gateway", f"{where}  no SSH key exchange ({_why(exc)}) -> is gateway.port an SSH port?"
            )
            return False
        seen = key.get_fingerprint("sha256")
        if not gw.verify_host_key:
            self.report.add(
                WARN, "gateway", f"host key NOT verified (gateway.verify_host_key = false); it is {seen}"
            )
            return True
        want = pinned.get_fingerprint("sha256") if pinned is not None else gw.host_key_fingerprint
        how = f"pinned by file {gw.host_key}" if pinned is not None else "pinned"
        if not want:
            self.report.add(
                FAIL,
                "gateway",
                f"host key {seen} is not pinned -> check it, then put the line from `gateload pin {where}` "
                "into [gateway]",
            )
            return False
        if seen != want:
            self.report.add(
                FAIL,
                "gateway",
                f"host key {seen} does not match the pin {want} -> if the gateway's key changed on purpose, "
                f"run `gateload pin {where}` and update the profile's [gateway] pin; else do not connect",
            )
            return False
        self.report.add(OK, "gateway", f"{where} host key {how} {seen} matches")
        return True

    def _account_login(self) -> GatewayLogin | None:
        if self.account is None:
            return None
        if self.profile.credentials.ssh_key:
            return GatewayLogin(self.account.username, None, "the key credentials.ssh_key")
        return GatewayLogin(self.account.username, self.account.password, "the account password")

    async def _session(self, login: GatewayLogin) -> None:
        import asyncssh

        from locustfiles.lib.sshops import GatewayConnection

        try:
            spec = connect_spec(self.profile, login, self.timeout_s)
        except (OSError, asyncssh.KeyImportError):
            path = self.profile.credentials.ssh_key
            self.report.add(
                FAIL, "gateway", f"credentials.ssh_key {path} is not a readable private key -> fix it"
            )
            return
        conn = GatewayConnection(spec)
        t0 = time.perf_counter()
        try:
            server = await asyncio.wait_for(conn.connect(), self.timeout_s)
        except Exception as exc:
            conn.abort()
            fix = (
                "the ticket was refused: does the gateway take the portal's tickets?"
                if self.login is not None
                else "check the account in the credentials file (or credentials.ssh_key)"
            )
            self.report.add(FAIL, "gateway", f"authentication as {login.username}: {_why(exc)} -> {fix}")
            self.report.add(SKIP, "gateway", "shell, exec, SFTP, tunnel: not logged in")
            return
        served = f", server {server}" if server else ""
        self.report.add(
            OK, "gateway", f"authenticated as {login.username} with {login.how} ({_ms(t0)}{served})"
        )
        try:
            await self._shell(conn)
            await self._exec(conn)
            await self._sftp(conn)
            await self._tunnel(conn)
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), self.timeout_s)
            conn.abort()

    async def _shell(self, conn: Any) -> None:
        t0 = time.perf_counter()
        try:
            await asyncio.wait_for(conn.open_shell(), self.timeout_s)
        except TimeoutError:
            self.report.add(
                FAIL,
                "gateway",
                f"shell: no prompt within {self.timeout_s:g} s -> {_prompt_fix(self.profile)}",
            )
            return
        except Exception as exc:
            self.report.add(FAIL, "gateway", f"shell: {_why(exc)} -> does the account get a PTY shell?")
            return
        self.report.add(OK, "gateway", f"PTY shell, prompt seen ({_ms(t0)})")

    async def _exec(self, conn: Any) -> None:
        t0 = time.perf_counter()
        try:
            size = await asyncio.wait_for(conn.exec(PROBE_COMMAND), self.timeout_s)
        except Exception as exc:
            self.report.add(
                FAIL,
                "gateway",
                f"exec `{PROBE_COMMAND}`: {_why(exc)} -> does the gateway allow exec channels?",
            )
            return
        self.report.add(OK, "gateway", f"exec `{PROBE_COMMAND}` ({size} bytes, {_ms(t0)})")

    async def _sftp(self, conn: Any) -> None:
        documents = self.profile.workload.documents
        t0 = time.perf_counter()
        try:
            sftp = await asyncio.wait_for(conn.sftp_client(), self.timeout_s)
        except Exception as exc:
            self.report.add(FAIL, "gateway", f"SFTP: {_why(exc)} -> enable the sftp subsystem on the gateway")
            return
        if not documents:
            names = await asyncio.wait_for(sftp.listdir("."), self.timeout_s)
            self.report.add(OK, "gateway", f"SFTP list . ({len(names)} entries, {_ms(t0)})")
            return
        name = documents[0]
        try:
            attrs = await asyncio.wait_for(sftp.stat(name), self.timeout_s)
        except Exception as exc:
            self.report.add(
                FAIL,
                "gateway",
                f"SFTP stat {name}: {_why(exc)} -> put {name} in the account's SFTP folder or fix "
                "workload.documents",
            )
            return
        self.report.add(OK, "gateway", f"SFTP stat {name} ({attrs.size} bytes, {_ms(t0)})")

    async def _tunnel(self, conn: Any) -> None:
        gw = self.profile.gateway
        t0 = time.perf_counter()
        what = f"tunnel to {gw.tunnel_target} GET {gw.tunnel_path}"
        try:
            status, size, _ = await asyncio.wait_for(
                conn.tunnel_http(gw.tunnel_target, gw.tunnel_path), self.timeout_s
            )
        except Exception as exc:
            self.report.add(
                FAIL,
                "gateway",
                f"{what}: {_why(exc)} -> set gateway.tunnel_target to a host:port the gateway forwards to "
                "(sshd: PermitOpen)",
            )
            return
        if status >= 400:
            self.report.add(FAIL, "gateway", f"{what}: HTTP {status} -> fix gateway.tunnel_path")
            return
        self.report.add(OK, "gateway", f"{what}: HTTP {status} ({size} bytes, {_ms(t0)})")


def _prompt_fix(profile: Profile) -> str:
    """How to tell the harness what this gateway's prompt looks like (the key A's prompt work adds)."""
    keys = [name for name in vars(profile.gateway) if "prompt" in name]
    if keys:
        return f"set gateway.{keys[0]} to match the shell's first prompt"
    return "the shell must print a prompt ending in '$ ', '# ', '% ' or '> '"


def connect_spec(profile: Profile, login: GatewayLogin, timeout_s: float) -> Any:
    """How to reach, verify and log on to the profile's gateway (as ``gateway.connect_spec``, no Locust)."""
    import asyncssh

    from locustfiles.lib.sshops import ConnectSpec

    gw = profile.gateway
    trusted = (asyncssh.read_public_key(str(profile.resolve(gw.host_key))),) if gw.host_key else ()
    client_keys: tuple[Any, ...] = ()
    if login.secret is None and profile.credentials.ssh_key:
        client_keys = (asyncssh.read_private_key(str(profile.resolve(profile.credentials.ssh_key))),)
    return ConnectSpec(
        host=gw.host,
        port=gw.port,
        username=login.username,
        password=login.secret,
        client_keys=client_keys,
        trusted_host_keys=trusted,
        host_key_fingerprint=gw.host_key_fingerprint,
        verify_host_key=gw.verify_host_key,
        banner_prefix=gw.server_banner_prefix,
        keepalive_s=gw.keepalive_s,
        timeout_s=timeout_s,
    )


# --- the portal over aiohttp ----------------------------------------------------------------------


class AiohttpSender:
    """``send(method, path, headers, body) -> HttpAnswer`` over one aiohttp session (its own cookies)."""

    def __init__(self, http: Any, base_url: str, server_header: str = "", server_cookie: str = "") -> None:
        self.http = http
        self.base_url = base_url.rstrip("/")
        self.server_header, self.server_cookie = server_header, server_cookie
        self.requests = 0
        self.server: str | None = None  # the backend that answered last, when the portal says

    async def __call__(
        self, method: str, path: str, headers: dict[str, str] | None = None, body: bytes | None = None
    ) -> HttpAnswer:
        self.requests += 1
        async with self.http.request(method, self.base_url + path, headers=headers or {}, data=body) as resp:
            data = await resp.read()
            answer = HttpAnswer(resp.status, {k: v for k, v in resp.headers.items()}, data)
        self.server = self._server_of(answer) or self.server
        return answer

    def _server_of(self, answer: HttpAnswer) -> str | None:
        if self.server_header:
            for name, value in answer.headers.items():
                if name.lower() == self.server_header.lower() and value:
                    return value
        if self.server_cookie:
            for cookie in self.http.cookie_jar:
                if cookie.key == self.server_cookie and cookie.value:
                    return cookie.value
        return None


async def _step(send: Any, step: str, method: str, path: str, **kw: Any) -> HttpAnswer:
    """One request of the flow; a transport error or an error status is a :class:`StepFailed`."""
    headers = dict(kw.get("headers") or {})
    body: bytes | None = None
    if "form" in kw:
        body = urlencode(kw["form"]).encode()
        headers["Content-Type"] = "application/x-www-form-urlencoded"
    if "json_body" in kw:
        body = json.dumps(kw["json_body"]).encode()
        headers["Content-Type"] = "application/json"
    try:
        answer = await send(method, path, headers, body)
    except Exception as exc:
        raise StepFailed(step, _why(exc), "is the portal overloaded or down?") from None
    if answer.status >= 400:
        raise StepFailed(step, f"HTTP {answer.status}", _status_fix(answer.status))
    return answer


def _status_fix(status: int) -> str:
    if status in (401, 403):
        return "check the account's password (and totp_secret) in the credentials file"
    if status in (404, 405):
        return "the portal's routes differ from this logon flow: describe its flow in the profile"
    if status >= 500:
        return "the portal failed: see its logs"
    return "the portal rejected the request: compare its logon flow with the profile's"


async def reference_logon(send: Send, account: Any, app: str) -> GatewayLogin | None:
    """The reference portal's logon: login page (CSRF), password, MFA if asked, apps, launch."""
    page = await _step(send, "GET /login", "GET", "/login")
    tag = _CSRF_INPUT.search(page.text)
    value = _VALUE.search(tag.group(0)) if tag else None
    if value is None:
        raise StepFailed(
            "GET /login", "no csrf_token in the login page", "describe the portal's flow in the profile"
        )
    csrf = value.group(1)
    send.csrf = csrf  # type: ignore[attr-defined]  (later POSTs carry it in a header)
    form = {"username": account.username, "password": account.password, "csrf_token": csrf}
    answer = await _step(send, "POST /login", "POST", "/login", form=form, headers={"X-CSRF-Token": csrf})
    if _json_object(answer, "POST /login").get("mfa_required"):
        if not account.totp_secret:
            raise StepFailed("POST /mfa", "the portal asks for MFA", "add the account's totp_secret column")
        import pyotp

        code = pyotp.TOTP(account.totp_secret).now()
        await _step(send, "POST /mfa", "POST", "/mfa", form={"code": code, "csrf_token": csrf})
    await _step(send, "GET /api/apps", "GET", "/api/apps")
    launch = await _step(
        send,
        "POST /api/launch",
        "POST",
        "/api/launch",
        json_body={"app": app},
        headers={"X-CSRF-Token": csrf},
    )
    data = _json_object(launch, "POST /api/launch")
    if "ticket" not in data or "username" not in data:
        return None  # a portal that hands out no ticket: the gateway takes the account's own credentials
    return GatewayLogin(str(data["username"]), str(data["ticket"]), "the portal's ticket")


async def reference_document(send: Send, name: str) -> str:
    answer = await _step(send, f"GET /documents/{name}", "GET", f"/documents/{quote(name)}")
    return f" ({len(answer.body)} bytes)"


async def reference_logout(send: Send) -> str:
    csrf = getattr(send, "csrf", "")
    await _step(send, "POST /logout", "POST", "/logout", headers={"X-CSRF-Token": csrf} if csrf else {})
    return ""


def _json_object(answer: HttpAnswer, step: str) -> dict[str, Any]:
    try:
        value = answer.json()
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise StepFailed(step, "the answer is not a JSON object", "describe the portal's flow in the profile")
    return value
