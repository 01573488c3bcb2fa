"""Target profiles: what is tested, as typed data loaded strictly from TOML.

The profile schema is one of the two things the load generator and the system under test share (the
other is the results schema in ``analysis/schema.py``). Loading is strict: an unknown key, a wrong type
or a missing field is an :class:`~gateload.errors.InputError` naming the file, the key and the fix.

Relative paths in a profile are relative to the profile file's folder.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import os
import re
import socket
import tomllib
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from gateload.errors import InputError
from gateload.targets.portalflow import PortalFlow, absolute_flow_class, check_flow, load_flow_class

CREDENTIALS_ENV = "GATELOAD_CREDENTIALS"
# A shell's own first prompt: matched against the end of its output, escape sequences removed.
DEFAULT_FIRST_PROMPT = r"[$#%>] $"
# N lines of B printable bytes with POSIX tools only; the output holds no "$", "#" or "%".
DEFAULT_SCREEN_COMMAND = r"printf '%0{bytes}d\n' $(seq {bursts}) | tr 0-9 a-j"
SCREEN_PLACEHOLDERS = ("bursts", "bytes")


@dataclass(frozen=True)
class TargetInfo:
    name: str
    kind: Literal["reference", "real"]
    description: str = ""
    # A target outside 127.0.0.0/8 and ::1 is refused unless this (or --allow-remote) says yes.
    allow_non_loopback: bool = False


@dataclass(frozen=True)
class PortalTarget:
    url: str  # base URL, http:// or https://
    server_header: str = "X-Gateload-Server"  # response header naming the backend; "" if none
    server_cookie: str = ""  # or a load-balancer cookie naming it (e.g. haproxy's SERVERID)
    tls_verify: bool = True  # explicit opt-out; recorded in meta.json
    ca_file: str = ""  # PEM bundle that signs the portal certificate; "" = system CAs
    app: str = "desktop"  # the app launched to get a gateway ticket
    # How users log on (targets/portalflow.py): [portal.flow] steps, or a Python class "module:Class"
    # beside the profile; neither = the reference portal's flow.
    flow: PortalFlow | None = None
    flow_class: str = ""


@dataclass(frozen=True)
class GatewayTarget:
    host: str
    port: int
    # The remote-access protocol users speak to it (locustfiles/lib/remote.py registers them).
    protocol: str = "ssh"
    host_key: str = ""  # path to the pinned host public key (OpenSSH format)
    host_key_fingerprint: str = ""  # or its "SHA256:..." fingerprint
    verify_host_key: bool = True  # explicit opt-out; recorded in meta.json
    server_banner_prefix: str = "gateload-server: "  # auth-banner line naming the backend
    tunnel_target: str = "intranet:80"  # host:port reached through direct-tcpip
    tunnel_path: str = "/"
    keepalive_s: float = 15.0
    # The PTY shell: its fixed prompt if it has one ("gw$ " on the reference farm); "" = wait for the
    # first prompt (first_prompt regex, or a quiet period), then set a unique prompt per connection.
    prompt: str = ""
    first_prompt: str = DEFAULT_FIRST_PROMPT
    # The command of a screen activity, with {bursts} and {bytes} from [workload].
    screen_command: str = DEFAULT_SCREEN_COMMAND
    # TLS protocols (vpn): the PEM bundle that signs the gateway certificate; "" = portal.ca_file,
    # else the system CAs.
    ca_file: str = ""
    # rdp: the server certificate's SHA-256 fingerprint, "AB:CD:..." as `openssl x509 -noout
    # -fingerprint -sha256` prints it (an RDP server's certificate is self-signed, so it is pinned);
    # "" = not pinned: every connection stops after the TLS handshake, before the password, unless
    # verify_host_key = false opts out of verifying it.
    cert_fingerprint: str = ""
    # One source address per simulated user, so per-address limits (ocserv's bans and rate limit,
    # xrdp's pending connections) see many clients: "127.0.0.2-127.0.0.254" or "a, b, c"; "" = the
    # system picks. Any 127.0.0.0/8 address works on lo without setup. Used by the vpn protocol.
    source_addresses: str = ""
    # vpn: the IPv4 host inside the VPN that the tunnel activity pings (ICMP echo through the
    # tunnel); "" = the server's own end of the tunnel (the first host of the network it hands out).
    tunnel_ping: str = ""


@dataclass(frozen=True)
class Credentials:
    # CSV with a header: username,password[,totp_secret]. GATELOAD_CREDENTIALS overrides the path.
    # Secrets never go in the profile itself.
    file: str
    ssh_key: str = ""  # private key for public-key auth; "" = password/ticket auth only


@dataclass(frozen=True)
class Workload:
    """One homeoffice employee's session."""

    activities_per_session: int = 20
    think_min_s: float = 1.0
    think_max_s: float = 3.0
    typing_interval_ms: float = 150.0  # human typing pace: planned gap between keystrokes
    burst_keys: int = 12  # keystrokes per typing burst
    screen_bursts: int = 4  # screen updates per screen activity
    screen_bytes: int = 4096  # bytes per screen update
    documents: list[str] = field(default_factory=lambda: ["memo.pdf"])  # portal and SFTP documents
    timeout_s: float = 10.0  # per operation
    # Relative weights of the activities in a session.
    mix: dict[str, float] = field(
        default_factory=lambda: {
            "typing": 6.0,
            "screen": 2.0,
            "sftp_get": 1.0,
            "sftp_put": 0.5,
            "tunnel": 1.0,
            "document": 0.5,
            "exec": 1.0,
        }
    )


ACTIVITIES = ("typing", "screen", "sftp_get", "sftp_put", "tunnel", "document", "exec")


@dataclass(frozen=True)
class Link:
    """Homeoffice link emulated by a delay proxy between users and target (no netem here)."""

    preset: Literal["none", "dsl", "lte", "fibre", "custom"] = "none"
    delay_ms: float = 0.0  # one-way
    jitter_ms: float = 0.0
    bandwidth_kbit: float = 0.0  # 0 = unlimited
    loss_reset_pct: float = 0.0  # connections reset, as loss shows to TCP users


@dataclass(frozen=True)
class ServerGroup:
    name: str  # servers are named <name>-01, <name>-02, ...
    count: int
    workers: int  # concurrent operations a server works on; the rest queue
    max_sessions: int  # concurrent gateway sessions a server accepts
    queue_limit: int  # queued operations beyond which it answers 503 / refuses sessions
    speed: float = 1.0  # divides every service time: 1.25 = 25% faster hardware


@dataclass(frozen=True)
class ServiceTimes:
    """Mean service time per operation on a speed-1.0 server."""

    distribution: Literal["exponential", "lognormal", "constant"] = "exponential"
    portal_page_ms: float = 2.0
    portal_login_ms: float = 8.0
    portal_launch_ms: float = 5.0
    ssh_auth_ms: float = 10.0
    keystroke_ms: float = 1.0
    screen_update_ms: float = 3.0
    tunnel_request_ms: float = 3.0
    sftp_mb_per_s: float = 50.0  # per transfer


FAULT_KINDS = ("reset", "stall", "auth_fail", "http_503", "down", "slow_sftp")
ALL_SERVERS = "*"


@dataclass(frozen=True)
class Fault:
    """One fault of the reference farm (``targets/reference/faults.py``); it ends by itself."""

    # reset: open SSH connections are reset; stall: operations wait until the fault ends; auth_fail:
    # logins refused; http_503: portal answers 503; down: the server dies and comes back; slow_sftp
    kind: Literal["reset", "stall", "auth_fail", "http_503", "down", "slow_sftp"]
    duration_s: float
    server: str = ALL_SERVERS  # a server id such as "old-02", or "*" for every server
    start_s: float = 0.0  # after the farm started (profile) or after the request (admin endpoint)
    percent: float = 100.0  # auth_fail, http_503: share of logins / requests hit
    factor: float = 10.0  # slow_sftp: transfers take this many times longer
    every_s: float = 0.0  # reset: reset again every this many seconds while active; 0 = once


def fault_problem(fault: Fault, server_ids: list[str]) -> str | None:
    """What is wrong with a fault (``"'key' problem"``), or None; shared by the profile and admin checks."""
    if fault.server != ALL_SERVERS and fault.server not in server_ids:
        return f"'server' is {fault.server!r}; use '*' or one of {', '.join(server_ids)}"
    if not 0 < fault.duration_s <= 86400:
        return "'duration_s' must be > 0 and at most 86400 (a fault ends by itself)"
    if fault.start_s < 0:
        return "'start_s' must be >= 0"
    if not 0 < fault.percent <= 100:
        return "'percent' must be > 0 and <= 100"
    if fault.factor < 1:
        return "'factor' must be >= 1"
    if fault.every_s < 0 or 0 < fault.every_s < 0.1:
        return "'every_s' must be 0 (once) or at least 0.1"
    return None


@dataclass(frozen=True)
class Farm:
    """The embedded reference farm (kind = "reference" only). Ports come from [portal] and [gateway]."""

    servers: list[ServerGroup]
    service: ServiceTimes = field(default_factory=ServiceTimes)
    state_dir: str = "../../.gateload/reference"  # host key, credentials, SFTP sandboxes
    bind: str = "127.0.0.1"
    balancer: Literal["round-robin", "least-connections"] = "round-robin"
    accounts: int = 200  # test users generated into the credentials file
    # concurrent SSH sessions one account may hold (pam_limits maxlogins, ocserv max-same-clients); 0 = any
    max_sessions_per_account: int = 0
    mfa: bool = False  # TOTP step after the password
    ticket_ttl_s: float = 30.0
    static_credentials: bool = False  # also accept account passwords on the gateway
    intranet_port: int = 0  # the internal HTTP service reached through tunnels; 0 = free port
    tunnel_allow: list[str] = field(default_factory=lambda: ["intranet:80"])
    documents: dict[str, int] = field(default_factory=lambda: {"memo.pdf": 65536})  # name -> bytes
    # loopback-only admin endpoint (faults at runtime, token in <state_dir>/admin_token); 0 = free port
    admin_port: int = 0
    faults: list[Fault] = field(default_factory=list)  # [[farm.faults]]: a schedule from farm start


@dataclass(frozen=True)
class Profile:
    target: TargetInfo
    portal: PortalTarget
    gateway: GatewayTarget
    credentials: Credentials
    workload: Workload = field(default_factory=Workload)
    link: Link = field(default_factory=Link)
    farm: Farm | None = None
    path: Path = field(default=Path("."), compare=False)  # the file it came from (not a TOML key)

    def resolve(self, relative: str) -> Path:
        """A path from the profile, made absolute against the profile's folder."""
        p = Path(os.path.expanduser(relative))
        return p if p.is_absolute() else (self.path.parent / p).resolve()

    def gateway_ca_file(self) -> str:
        """The CA bundle that verifies a TLS gateway (VPN): ``gateway.ca_file``, else ``portal.ca_file``."""
        path = self.gateway.ca_file or self.portal.ca_file
        return str(self.resolve(path)) if path else ""

    @property
    def server_ids(self) -> list[str]:
        """Backend ids of the reference farm, in order; empty for a real target."""
        if self.farm is None:
            return []
        return [f"{g.name}-{i:02d}" for g in self.farm.servers for i in range(1, g.count + 1)]

    @property
    def credentials_path(self) -> Path:
        return (
            Path(os.environ[CREDENTIALS_ENV])
            if os.environ.get(CREDENTIALS_ENV)
            else self.resolve(self.credentials.file)
        )

    def hosts(self) -> list[str]:
        """Every host the load generator will send traffic to."""
        return [urlsplit(self.portal.url).hostname or "", self.gateway.host]


def load_profile(path: str | os.PathLike[str]) -> Profile:
    """Load and validate a profile TOML file."""
    p = Path(path)
    if not p.is_file():
        raise InputError(
            f"{p}: profile not found; pass the path of a TOML file such as "
            "targets/profiles/reference-before.toml"
        )
    try:
        data = tomllib.loads(p.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{p}: not valid TOML ({exc}); fix the syntax at that line") from None
    profile = _build(Profile, data, p, "")
    profile = dataclasses.replace(profile, path=p.resolve())
    _check(profile, p)
    return profile


def profile_to_dict(profile: Profile) -> dict[str, Any]:
    """The profile as TOML-ready data (no ``path``; ``None`` sections left out)."""
    data = dataclasses.asdict(profile)
    data.pop("path")
    if data["portal"]["flow"] is None:
        del data["portal"]["flow"]  # TOML has no null
    if profile.portal.flow_class:  # a copy written elsewhere still finds the module
        data["portal"]["flow_class"] = absolute_flow_class(profile.portal.flow_class, profile.path.parent)
    return {k: v for k, v in data.items() if v is not None}


def dump_profile(profile: Profile, path: str | os.PathLike[str]) -> Path:
    """Write a profile as TOML; relative paths are rewritten absolute so the copy works anywhere."""
    import tomli_w

    data = profile_to_dict(profile)
    data["credentials"]["file"] = str(profile.resolve(profile.credentials.file))
    for section, key in (
        ("credentials", "ssh_key"),
        ("gateway", "host_key"),
        ("gateway", "ca_file"),
        ("portal", "ca_file"),
    ):
        if data[section][key]:
            data[section][key] = str(profile.resolve(data[section][key]))
    if data.get("farm") and profile.farm is not None:
        data["farm"]["state_dir"] = str(profile.resolve(profile.farm.state_dir))
    out = Path(path)
    out.write_text(tomli_w.dumps(data))
    return out


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and names that resolve only to them."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(i[4][0]).is_loopback for i in infos)


# --- strict, typed construction -------------------------------------------------------------------


def _build(cls: type, data: Any, path: Path, where: str) -> Any:
    if not isinstance(data, dict):
        raise InputError(f"{path}: [{where or 'top level'}] must be a table; write it as [{where}]")
    hints = typing.get_type_hints(cls)
    # Profile.path is where the file came from, not a key (a flow step's "path" is one)
    fields = {f.name: f for f in dataclasses.fields(cls) if not (cls is Profile and f.name == "path")}
    for key in data:
        if key not in fields:
            close = difflib.get_close_matches(key, list(fields), n=1)
            hint = f"did you mean '{close[0]}'?" if close else f"allowed keys: {', '.join(fields)}"
            raise InputError(f"{path}: unknown key '{_join(where, key)}'; remove it ({hint})")
    kwargs = {}
    for name, f in fields.items():
        key = _join(where, name)
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise InputError(f"{path}: missing key '{key}'; add it ({_describe(hints[name])})")
            continue
        kwargs[name] = _convert(hints[name], data[name], path, key)
    return cls(**kwargs)


def _convert(tp: Any, value: Any, path: Path, key: str) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return _build(tp, value, path, key)
    if origin in (typing.Union, types.UnionType):
        inner = next(a for a in args if a is not type(None))
        return _convert(inner, value, path, key)
    if origin is Literal:
        if value not in args:
            raise InputError(f"{path}: '{key}' is {value!r}; use one of {', '.join(map(repr, args))}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise _type_error(path, key, tp, value)
        return [_convert(args[0], v, path, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise _type_error(path, key, tp, value)
        return {k: _convert(args[1], v, path, f"{key}.{k}") for k, v in value.items()}
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float, str, bool) and (type(value) is not tp):
        raise _type_error(path, key, tp, value)
    return value


def _type_error(path: Path, key: str, tp: Any, value: Any) -> InputError:
    return InputError(f"{path}: '{key}' is {type(value).__name__} {value!r}; it must be {_describe(tp)}")


def _describe(tp: Any) -> str:
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return f"a table [{tp.__name__}]"
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return "one of " + ", ".join(map(repr, args))
    if origin is list:
        return f"a list of {_describe(args[0])}"
    if origin is dict:
        return f"a table of {_describe(args[1])}"
    if origin in (typing.Union, types.UnionType):
        return _describe(next(a for a in args if a is not type(None)))
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(tp, str(tp))


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


# --- checks across fields -------------------------------------------------------------------------


_CERT_FINGERPRINT = re.compile(r"[0-9A-Fa-f]{2}(?::[0-9A-Fa-f]{2}){31}")


def cert_sha256(fingerprint: str) -> bytes:
    """The SHA-256 digest that a ``gateway.cert_fingerprint`` ("AB:CD:...") names."""
    return bytes.fromhex(fingerprint.replace(":", ""))


def format_cert_sha256(digest: bytes) -> str:
    """A SHA-256 digest as ``gateway.cert_fingerprint`` and ``openssl x509 -fingerprint`` write it."""
    return digest.hex(":").upper()


def _check_cert_fingerprint(gw: GatewayTarget, bad: Callable[[str, str], InputError]) -> None:
    if not gw.cert_fingerprint:
        return
    if gw.protocol != "rdp":
        raise bad("gateway.cert_fingerprint", "is for protocol rdp; vpn verifies by gateway.ca_file")
    if not _CERT_FINGERPRINT.fullmatch(gw.cert_fingerprint):
        raise bad(
            "gateway.cert_fingerprint",
            "must be 32 hex bytes with colons, as `openssl x509 -noout -fingerprint -sha256 -in CERT` "
            "prints it (or `gateload pin --protocol rdp HOST:PORT`)",
        )


def _check(profile: Profile, path: Path) -> None:
    def bad(key: str, problem: str) -> InputError:
        return InputError(f"{path}: '{key}' {problem}")

    url = urlsplit(profile.portal.url)
    if url.scheme not in ("http", "https") or not url.hostname or url.port is None:
        raise bad("portal.url", f"is {profile.portal.url!r}; write it as http(s)://HOST:PORT")
    if not 0 <= profile.gateway.port <= 65535:
        raise bad("gateway.port", "must be between 0 and 65535")
    if not re.fullmatch(r"[a-z][a-z0-9_]*", profile.gateway.protocol):
        raise bad("gateway.protocol", 'must be a protocol name in lower case, such as "ssh"')
    _check_portal_flow(profile, bad)
    if profile.gateway.host_key and profile.gateway.host_key_fingerprint:
        raise bad("gateway.host_key", "and 'gateway.host_key_fingerprint' are both set; keep one")
    pin = profile.gateway.host_key_fingerprint
    if pin and not pin.startswith("SHA256:"):
        raise bad("gateway.host_key_fingerprint", "must start with 'SHA256:' (ssh-keygen -lf KEY prints it)")
    _check_cert_fingerprint(profile.gateway, bad)
    w = profile.workload
    for name, weight in w.mix.items():
        if name not in ACTIVITIES:
            raise bad(f"workload.mix.{name}", f"is not an activity; use {', '.join(ACTIVITIES)}")
        if weight < 0:
            raise bad(f"workload.mix.{name}", "must be >= 0")
    if not any(w.mix.values()):
        raise bad("workload.mix", "has no positive weight; give at least one activity a weight > 0")
    if w.think_min_s < 0 or w.think_max_s < w.think_min_s:
        raise bad("workload.think_max_s", "must be >= workload.think_min_s >= 0")
    for key in ("activities_per_session", "burst_keys", "screen_bursts", "screen_bytes"):
        if getattr(w, key) < 1:
            raise bad(f"workload.{key}", "must be >= 1")
    if w.timeout_s <= 0:
        raise bad("workload.timeout_s", "must be > 0")
    if w.typing_interval_ms < 0:
        raise bad("workload.typing_interval_ms", "must be >= 0")
    if profile.gateway.keepalive_s < 0:
        raise bad("gateway.keepalive_s", "must be >= 0 (0 = no keepalive)")
    _check_shell(profile.gateway, bad)
    _check_sources(profile.gateway, bad)
    if (profile.target.kind == "reference") != (profile.farm is not None):
        raise bad("farm", "is required when target.kind = 'reference' and not allowed otherwise")
    if profile.farm is not None:
        _check_farm(profile, bad)


def _check_portal_flow(profile: Profile, bad: Any) -> None:
    portal = profile.portal
    if portal.flow is not None and portal.flow_class:
        raise bad("portal.flow", "and 'portal.flow_class' are both set; keep one")
    if portal.flow is not None:
        check_flow(portal.flow, bad)
    if portal.flow_class:
        try:
            load_flow_class(portal.flow_class, profile.path.parent)
        except ValueError as exc:
            raise bad("portal.flow_class", str(exc)) from None


def _check_shell(gw: GatewayTarget, bad: Any) -> None:
    if gw.prompt and not gw.prompt.strip():
        raise bad("gateway.prompt", 'is only blanks; give the shell\'s fixed prompt, or "" to detect it')
    try:
        re.compile(gw.first_prompt)
    except re.error as exc:
        raise bad("gateway.first_prompt", f"is not a regular expression ({exc}); fix it") from None
    if not gw.screen_command.strip():
        raise bad("gateway.screen_command", "is empty; give a command such as 'screen {bursts} {bytes}'")
    for name in re.findall(r"\{(\w*)\}", gw.screen_command):
        if name not in SCREEN_PLACEHOLDERS:
            raise bad(
                "gateway.screen_command", f"has {{{name}}}; the placeholders are {{bursts}} and {{bytes}}"
            )


MAX_SOURCE_ADDRESSES = 65536


def source_addresses(spec: str) -> list[str]:
    """The addresses of ``gateway.source_addresses`` ("a-b" ranges and single addresses, commas
    between), in order; a :class:`ValueError` says what is wrong."""
    found: list[str] = []
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            raise ValueError("has an empty entry; write addresses or ranges separated by commas")
        first, sep, last = (x.strip() for x in part.partition("-"))
        try:
            lo = ipaddress.ip_address(first)
            hi = ipaddress.ip_address(last) if sep else lo
        except ValueError:
            raise ValueError(f"has {part!r}, not an IP address or a range a-b of them") from None
        if lo.version != hi.version or int(hi) < int(lo):
            raise ValueError(f"has the range {part!r}; write it low-high, both IPv4 or both IPv6")
        if len(found) + int(hi) - int(lo) + 1 > MAX_SOURCE_ADDRESSES:
            raise ValueError(f"names more than {MAX_SOURCE_ADDRESSES} addresses; give a shorter range")
        found.extend(str(ipaddress.ip_address(a)) for a in range(int(lo), int(hi) + 1))
    return found


def _check_sources(gw: GatewayTarget, bad: Any) -> None:
    if gw.tunnel_ping:
        try:
            ipaddress.IPv4Address(gw.tunnel_ping)
        except ValueError:
            raise bad(
                "gateway.tunnel_ping", 'must be an IPv4 address inside the VPN, or "" for its gateway'
            ) from None
    if not gw.source_addresses:
        return
    try:
        addresses = source_addresses(gw.source_addresses)
    except ValueError as exc:
        raise bad("gateway.source_addresses", str(exc)) from None
    loopback = is_loopback(gw.host)
    odd = next((a for a in addresses if ipaddress.ip_address(a).is_loopback != loopback), None)
    if odd is not None:
        where = "a loopback" if loopback else "a non-loopback"
        raise bad(
            "gateway.source_addresses",
            f"has {odd}, which cannot reach {where} gateway.host {gw.host}; use addresses like "
            + ("127.0.0.2-127.0.0.254" if loopback else "the load generator's own interface addresses"),
        )


def _check_farm(profile: Profile, bad: Any) -> None:
    farm = profile.farm
    assert farm is not None
    if not farm.servers:
        raise bad("farm.servers", "is empty; add at least one [[farm.servers]] group")
    names = [g.name for g in farm.servers]
    if len(set(names)) != len(names):
        raise bad("farm.servers", f"has duplicate group names {names}; name each group once")
    for i, g in enumerate(farm.servers):
        for key in ("count", "workers", "max_sessions"):
            if getattr(g, key) < 1:
                raise bad(f"farm.servers[{i}].{key}", "must be >= 1")
        if g.queue_limit < 0 or g.speed <= 0:
            raise bad(f"farm.servers[{i}]", "needs queue_limit >= 0 and speed > 0")
    for key, value in dataclasses.asdict(farm.service).items():
        if key != "distribution" and value <= 0:
            raise bad(f"farm.service.{key}", "must be > 0")
    for doc in profile.workload.documents:
        if doc not in farm.documents:
            raise bad("workload.documents", f"names '{doc}', which is not in farm.documents; add it there")
    if farm.accounts < 1:
        raise bad("farm.accounts", "must be >= 1")
    if farm.ticket_ttl_s <= 0:
        raise bad("farm.ticket_ttl_s", "must be > 0")
    for key in ("intranet_port", "admin_port"):
        if not 0 <= getattr(farm, key) <= 65535:
            raise bad(f"farm.{key}", "must be between 0 and 65535 (0 = a free port)")
    for i, fault in enumerate(farm.faults):
        problem = fault_problem(fault, profile.server_ids)
        if problem:
            key, _, rest = problem.partition("' ")
            raise bad(f"farm.faults[{i}].{key.strip(chr(39))}", rest)
