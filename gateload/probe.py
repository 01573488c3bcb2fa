"""``gateload probe PROFILE`` and ``gateload pin HOST[:PORT]``: is a target set up right, before any load?

``probe`` connects once per configured service, as one employee would, and prints one line per check
(a gateway of another protocol than SSH is checked by one session of it: ``sessionprobe.py``):
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
import dataclasses
import ssl
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from gateload.errors import InputError
from gateload.targets.profile import Profile, is_loopback, load_profile

OK, WARN, FAIL, SKIP = "ok", "warn", "FAIL", "skip"
PROBE_COMMAND = "echo gateload-probe"


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``probe`` and ``pin`` commands."""
    from gateload.cli import exit_codes

    p = sub.add_parser(
        "probe",
        help="check a profile's target once per service and say what to fix",
        description="Connects once per configured service (portal logon, gateway host key, "
        "authentication, shell, screen update, exec, SFTP, tunnel) and prints one line per check. "
        "A gateway of another protocol (gateway.protocol: vpn, rdp, openvpn) is checked by one session "
        "that logs on and runs each activity of the workload mix once: one line per operation.",
        **exit_codes(
            "0    every check ok (or explicitly opted out in the profile)",
            "1    a check failed (its line says what to fix)",
            "2    bad input: a usage error, a bad profile, a target beyond loopback",
        ),
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
        'host_key_fingerprint = "SHA256:..." for the profile; with --protocol rdp, the RDP server\'s '
        'TLS certificate (no credential sent) as cert_fingerprint = "AB:CD:...". Check it out of band '
        "before trusting it.",
        **exit_codes(
            "0    fingerprint printed",
            "2    bad input (a usage error, a bad HOST[:PORT], a host beyond loopback) or no key fetched",
        ),
    )
    q.add_argument(
        "target", metavar="HOST[:PORT]", help="the gateway, e.g. 127.0.0.1:2222 (port 22, rdp 3389, if none)"
    )
    q.add_argument("--protocol", choices=("ssh", "rdp"), default="ssh", help="the gateway's (default ssh)")
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
    from gateload.locustfiles.lib.errors import classify

    words = {
        "refused": "connection refused",
        "reset": "connection reset",
        "timeout": "timed out",
        "auth_failed": "authentication refused",
        "host_key_mismatch": "host key not trusted",
        "tls_error": "TLS failed",
        "tunnel_refused": "channel refused",
        "throttled": "turned away before the SSH banner",
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
    """``gateload pin``: print the host key line for [gateway]; 2 when no key could be fetched."""
    host, port = parse_host_port(args.target, 3389 if args.protocol == "rdp" else 22)
    if not (is_loopback(host) or args.allow_remote):
        raise InputError(f"{host} is not on loopback; pass --allow-remote if you mean to contact it")
    if args.timeout <= 0:
        raise InputError(f"--timeout is {args.timeout}; give a number of seconds > 0")
    if args.protocol == "rdp":
        return _pin_rdp(host, port, args.timeout)
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


def _pin_rdp(host: str, port: int, timeout_s: float) -> int:
    """``gateload pin --protocol rdp``: the certificate line for [gateway]."""
    import hashlib

    from gateload.locustfiles.lib.rdp import fetch_certificate
    from gateload.targets.profile import format_cert_sha256

    try:
        der = asyncio.run(fetch_certificate(host, port, timeout_s))
    except Exception as exc:  # every failure is one line, exit 2
        where = f"{host}:{port}"
        print(
            f"gateload: error: no certificate from {where}: {_why(exc)}; is that an RDP port?",
            file=sys.stderr,
        )
        return 2
    print(f"TLS certificate of the RDP server {host}:{port}, fetched in its handshake (no credential sent):")
    print(f'cert_fingerprint = "{format_cert_sha256(hashlib.sha256(der).digest())}"')
    print(
        "Paste that line into the profile's [gateway] section. It was not verified: compare it with "
        "`openssl x509 -noout -fingerprint -sha256 -in CERT` on the server before you trust it."
    )
    return 0


def _pin_hint(exc: BaseException) -> str:
    from gateload.locustfiles.lib.errors import classify

    cls = classify(exc)
    if cls in ("refused", "timeout", "other"):
        return "is the gateway up, and is that its SSH port?"
    return "is that an SSH server's port?"


async def fetch_host_key(
    host: str, port: int, timeout_s: float, algs: tuple[str, ...] = (), sock: Any = None
) -> tuple[Any, str]:
    """The host key the server presents in key exchange, and the address it came from.

    ``algs`` restricts the host key algorithms (to compare with a pinned key of one type); by default
    the client's preference decides, as it does when the load generator connects with a fingerprint.
    ``sock``: a TCP connection to use (the probe's own); else one is opened. It is closed afterwards.
    """
    import asyncssh

    from gateload.locustfiles.lib.sshops import open_stamped_socket

    if sock is None:
        sock = await open_stamped_socket(host, port, timeout_s)
    peer = sock.getpeername()
    options: dict[str, Any] = {"server_host_key_algs": list(algs)} if algs else {}
    try:
        key = await asyncio.wait_for(
            asyncssh.get_server_host_key(sock=sock, config=None, **options), timeout_s
        )
    finally:
        sock.close()  # asyncssh closed it unless the exchange failed early
    if key is None:
        raise asyncssh.KeyExchangeFailed("no host key in the key exchange")
    return key, f"{peer[0]}:{peer[1]}"


# --- probe ----------------------------------------------------------------------------------------


def probe_command(args: argparse.Namespace) -> int:
    """``gateload probe``: 0 when every check is ok (or an explicit opt-out), 1 when one failed."""
    from gateload.campaign import check_reachable

    profile = load_profile(args.profile)
    check_reachable(profile, args.allow_remote)
    if args.timeout < 0:
        raise InputError(f"--timeout is {args.timeout}; give seconds > 0 (or 0 for workload.timeout_s)")
    timeout_s = args.timeout or profile.workload.timeout_s
    report = Report()
    probe = Probe(profile, report, timeout_s)
    asyncio.run(probe.run(args.only))
    if args.only in (None, "gateway") and profile.gateway.protocol != "ssh":
        probe.other_gateway()
    return 1 if report.failed else 0


@dataclass
class GatewayLogin:
    """Who the gateway is asked to let in; ``secret`` is never printed."""

    username: str
    secret: str | None = field(repr=False)
    how: str  # "the portal's ticket", "the account password", "the key credentials.ssh_key"


class Probe:
    """One pass over a profile's services; lines go to ``report``."""

    def __init__(self, profile: Profile, report: Report, timeout_s: float) -> None:
        self.profile = profile
        self.report = report
        self.timeout_s = timeout_s
        self.account: Any = None
        self.accounts: tuple[Any, ...] = ()  # the credentials file's accounts, read once
        self.login: GatewayLogin | None = None  # from the portal's launch, when it hands one out
        self._sock: Any = None  # the gateway TCP connection, between the TCP check and the key exchange

    async def run(self, only: str | None = None) -> None:
        """The portal, then an SSH gateway; another protocol's gateway is :meth:`other_gateway`."""
        self._load_account()
        if only in (None, "portal"):
            await self.portal()
        if only in (None, "gateway") and self.profile.gateway.protocol == "ssh":
            await self.gateway()

    def other_gateway(self) -> None:
        """A gateway of another protocol than SSH: one session of it (outside the asyncio loop)."""
        from gateload.sessionprobe import probe_session

        gw = self.profile.gateway
        login = self.login or self._account_login()
        if login is None:
            self.report.add(SKIP, "gateway", f"{gw.protocol} {gw.host}:{gw.port}: no account to log on with")
            return
        if gw.protocol == "rdp" and not self._rdp_certificate_checked():
            return
        workload = dataclasses.replace(self.profile.workload, timeout_s=self.timeout_s)
        profile = dataclasses.replace(self.profile, workload=workload)
        probe_session(
            profile,
            self.accounts,
            login.username,
            login.secret,
            lambda status, text: self.report.add(status, "gateway", text),
        )

    def _start_hint(self, keys: str) -> str:
        if self.profile.farm is not None:  # the reference farm: gateload starts it
            return f"start it (gateload serve --profile {self.profile.path}) or fix {keys}"
        return f"start it or fix {keys}"

    def _load_account(self) -> None:
        from gateload.locustfiles.lib.runtime import load_accounts

        try:
            accounts = load_accounts(self.profile.credentials_path)
        except InputError as exc:
            self.report.add(FAIL, "account", f"{exc} -> fix [credentials] file (or GATELOAD_CREDENTIALS)")
            return
        self.accounts = tuple(accounts)
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
            self.report.add(FAIL, "portal", f"{where}  {_why(exc)} -> {self._start_hint('portal.url')}")
            return False
        writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await writer.wait_closed()
        if context is None:
            self.report.add(OK, "portal", f"{where}  reachable, plain HTTP (no TLS) ({_ms(t0)})")
        elif not portal.tls_verify:
            self.report.add(WARN, "portal", f"{where}  TLS NOT verified (portal.tls_verify = false)")
        else:
            trust = f"CA {portal.ca_file}" if portal.ca_file else "system CAs"
            self.report.add(OK, "portal", f"{where}  TLS verified ({trust}) ({_ms(t0)})")
        return True

    async def _portal_flow(self, sender: AiohttpSender) -> None:
        """The profile's logon flow, phase by phase (``targets/portalflow.py``, as the Locust users do)."""
        from gateload.targets.portalflow import arun, make_flow

        portal, account = self.profile.portal, self.account
        try:
            flow = make_flow(self.profile, account)
        except (ValueError, ImportError) as exc:  # a flow_class that loaded at profile check but fails now
            self.report.add(FAIL, "portal", f"flow: {type(exc).__name__} -> fix portal.flow_class")
            return
        document = self.profile.workload.documents[0] if self.profile.workload.documents else ""
        t0, before = time.perf_counter(), sender.requests
        phases: list[tuple[str, Callable[[], Any]]] = [
            (f"logon as {account.username}", flow.logon),
            ("apps", flow.apps),
            (f"launch {portal.app}", flow.launch),
        ]
        if document:
            phases.append((f"document {document}", lambda: flow.document(document)))
        phases.append(("logout", flow.logout))
        logged_on = True
        for what, phase in phases:
            if not logged_on:
                self.report.add(SKIP, "portal", f"{what}: logon failed")
                continue
            t0, before = time.perf_counter(), sender.requests
            try:
                result = await arun(phase(), sender)
            except Exception as exc:  # a StepFailure, or a bug in a flow_class: one line either way
                self.report.add(FAIL, "portal", f"{what}: {_flow_failure(exc, sender.last)}")
                logged_on = logged_on and not what.startswith("logon")
                continue
            self.report.add(OK, "portal", f"{what}{self._portal_detail(what, result, sender, t0, before)}")

    def _portal_detail(self, what: str, result: Any, sender: AiohttpSender, t0: float, before: int) -> str:
        n = sender.requests - before
        facts = [f"{n} request{'s' if n != 1 else ''}", _ms(t0)]
        if sender.server:
            facts.append(f"server {sender.server}")
        if what.startswith("apps") and isinstance(result, list):
            return f": {len(result)} app(s) ({', '.join(facts)})"
        if what.startswith("launch") and result is not None:
            own = result.secret == self.account.password
            self.login = GatewayLogin(
                result.username, result.secret, "the account password" if own else "the portal's ticket"
            )
            kind = "the account's own password" if own else "a ticket"
            return f": gateway login {result.username} with {kind} ({', '.join(facts)})"
        if what.startswith("document") and isinstance(result, int):
            facts.insert(0, f"{result} bytes")
        return f" ({', '.join(facts)})"

    # --- gateway ----------------------------------------------------------------------------------

    async def gateway(self) -> None:
        gw = self.profile.gateway
        where = f"{gw.host}:{gw.port}"
        if not await self._gateway_tcp(where):
            self.report.add(
                SKIP, "gateway", "host key, authentication, shell, screen update, exec, SFTP, tunnel"
            )
            return
        if not await self._host_key(where):
            self.report.add(
                SKIP,
                "gateway",
                "authentication, shell, screen update, exec, SFTP, tunnel: host key not trusted",
            )
            return
        login = self.login or self._account_login()
        if login is None:
            self.report.add(
                SKIP, "gateway", "authentication, shell, screen update, exec, SFTP, tunnel: no account"
            )
            return
        await self._session(login)

    async def _gateway_tcp(self, where: str) -> bool:
        """The TCP connection; kept for the key exchange, so the probe connects twice in all (key, login)."""
        from gateload.locustfiles.lib.sshops import open_stamped_socket

        gw = self.profile.gateway
        t0 = time.perf_counter()
        try:
            self._sock = await open_stamped_socket(gw.host, gw.port, self.timeout_s)
        except (OSError, TimeoutError) as exc:
            self.report.add(
                FAIL, "gateway", f"{where}  {_why(exc)} -> {self._start_hint('gateway.host/port')}"
            )
            return False
        self.report.add(OK, "gateway", f"{where}  TCP connect ({_ms(t0)})")
        return True

    def _rdp_certificate_checked(self) -> bool:
        """An RDP server's certificate is pinned, or its check is opted out of (a warn line); else a FAIL
        line, and no session: it would stop at the certificate anyway, before the password."""
        gw = self.profile.gateway
        pin = f"`gateload pin --protocol rdp {gw.host}:{gw.port}`"
        if not gw.verify_host_key:
            self.report.add(
                WARN,
                "gateway",
                "RDP certificate NOT verified (gateway.verify_host_key = false): the password goes to "
                f"whatever answers -> pin it with the line from {pin}",
            )
        elif not gw.cert_fingerprint:
            self.report.add(
                FAIL,
                "gateway",
                f"RDP certificate not pinned (gateway.cert_fingerprint unset) -> check it, then put the line "
                f"from {pin} into the profile's [gateway] section",
            )
            return False
        return True

    async def _host_key(self, where: str) -> bool:
        import asyncssh

        gw = self.profile.gateway
        pinned: Any = None
        if gw.verify_host_key and gw.host_key:
            try:
                pinned = asyncssh.read_public_key(str(self.profile.resolve(gw.host_key)))
            except (OSError, asyncssh.KeyImportError):
                if self._sock is not None:
                    self._sock.close()
                self.report.add(
                    FAIL,
                    "gateway",
                    f"gateway.host_key {gw.host_key} is not a readable public key -> fix the path, or pin "
                    f"by fingerprint: gateload pin {where}",
                )
                return False
        algs = (pinned.get_algorithm(),) if pinned is not None else ()
        sock, self._sock = self._sock, None
        try:
            key, _ = await fetch_host_key(gw.host, gw.port, self.timeout_s, algs, sock)
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

        from gateload.locustfiles.lib.sshops import GatewayConnection, connect_spec

        try:
            spec = connect_spec(self.profile, login.username, login.secret, self.timeout_s)
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
            fix = self._logon_fix(exc)
            self.report.add(FAIL, "gateway", f"authentication as {login.username}: {_why(exc)} -> {fix}")
            self.report.add(SKIP, "gateway", "shell, screen update, exec, SFTP, tunnel: not logged in")
            return
        served = f", server {server}" if server else ""
        self.report.add(
            OK, "gateway", f"authenticated as {login.username} with {login.how} ({_ms(t0)}{served})"
        )
        try:
            if await self._shell(conn):
                await self._screen(conn)
            else:
                self.report.add(SKIP, "gateway", "screen update: no shell")
            await self._exec(conn)
            await self._sftp(conn)
            await self._tunnel(conn)
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), self.timeout_s)
            conn.abort()

    def _logon_fix(self, exc: BaseException) -> str:
        from gateload.locustfiles.lib.errors import classify

        if classify(exc) == "throttled":
            return "the gateway's connection limit (sshd MaxStartups) is full: let logons finish, or raise it"
        if self.login is not None:
            return "the ticket was refused: does the gateway take the portal's tickets?"
        return "check the account in the credentials file (or credentials.ssh_key)"

    async def _shell(self, conn: Any) -> bool:
        t0 = time.perf_counter()
        try:
            await asyncio.wait_for(conn.open_shell(), self.timeout_s)
        except TimeoutError:
            self.report.add(
                FAIL,
                "gateway",
                f"shell: no prompt within {self.timeout_s:g} s -> {_prompt_fix(self.profile)}",
            )
            return False
        except Exception as exc:
            self.report.add(FAIL, "gateway", f"shell: {_why(exc)} -> does the account get a PTY shell?")
            return False
        self.report.add(OK, "gateway", f"PTY shell, prompt seen ({_ms(t0)})")
        return True

    async def _screen(self, conn: Any) -> None:
        """``gateway.screen_command`` in the shell, as the screen activity runs it (small sizes)."""
        from gateload.locustfiles.lib.sshops import screen_line

        bursts, size = 2, 256
        command = self.profile.gateway.screen_command
        line = screen_line(command, bursts, size)
        outcome = await conn.run_line(line, self.timeout_s)
        got = outcome.value or 0
        if not outcome.ok or got < bursts * size:
            why = _why(outcome.error) if outcome.error is not None else f"only {got} bytes came back"
            self.report.add(
                FAIL,
                "gateway",
                f"screen update `{line.decode()}`: {why} -> set gateway.screen_command to a command this "
                "shell has that prints {bursts} lines of {bytes} bytes",
            )
            return
        self.report.add(OK, "gateway", f"screen update ({got} bytes, {outcome.duration_ms:.0f} ms)")

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
    """How to tell the harness what this gateway's shell prompt looks like."""
    gw = profile.gateway
    if gw.prompt:
        return (
            f'the shell never showed gateway.prompt {gw.prompt!r}: set it to its prompt, or "" to detect it'
        )
    return "set gateway.first_prompt to a regex matching the shell's first prompt (or gateway.prompt)"


# --- the portal over aiohttp ----------------------------------------------------------------------


class AiohttpSender:
    """The flow engine's ``send(Request) -> Response`` over one aiohttp session (its own cookie jar)."""

    def __init__(self, http: Any, base_url: str, server_header: str = "", server_cookie: str = "") -> None:
        self.http = http
        self.base_url = base_url.rstrip("/")
        self.server_header, self.server_cookie = server_header, server_cookie
        self.requests = 0
        self.last = ""  # the name of the last request (e.g. "POST /login"): where a phase failed
        self.server: str | None = None  # the backend that answered last, when the portal says

    async def __call__(self, request: Any) -> Any:
        from multidict import CIMultiDict

        from gateload.locustfiles.lib.errors import classify
        from gateload.targets.portalflow import Response

        self.requests += 1
        self.last = request.name
        url = self.base_url + request.path
        try:
            async with self.http.request(
                request.method, url, headers=request.headers, data=request.body
            ) as r:
                body = await r.read()
                status, headers = r.status, CIMultiDict(r.headers)
        except Exception as exc:  # no answer: the engine fails the step with this class
            return Response(None, error_class=classify(exc) or "other")
        if self.server_header and headers.get(self.server_header):
            self.server = headers[self.server_header]
        elif self.server_cookie and self.cookie(self.server_cookie):
            self.server = self.cookie(self.server_cookie)
        return Response(status, headers, body, cookie=self.cookie)

    def cookie(self, name: str) -> str | None:
        """A cookie's value in this session's jar."""
        for cookie in self.http.cookie_jar:
            if cookie.key == name and cookie.value:
                return str(cookie.value)
        return None


def _flow_failure(exc: BaseException, step: str) -> str:
    """What failed and how to fix it, in fixed words (a StepFailure's text never holds a value)."""
    cls = getattr(exc, "error_class", None)
    if cls is None:
        return f"{step}: the flow class raised {type(exc).__name__} -> fix portal.flow_class"
    detail = getattr(exc, "detail", "") or cls
    fixes = {
        "http_401": "check the account's password (and totp_secret) in the credentials file",
        "http_403": "check the account's password (and totp_secret) in the credentials file",
        "http_4xx": "the portal's routes differ from the logon flow: describe its flow in [portal.flow]",
        "http_503": "the portal is overloaded or a backend is down",
        "http_5xx": "the portal failed: see its logs",
        "other": "the answer lacks what the flow expects or extracts: compare [portal.flow] with the portal",
    }
    fix = fixes.get(cls, "is the portal overloaded or down?")
    return f"{step}: {detail} ({cls}) -> {fix}"
