"""The SSL-VPN operations (AnyConnect-compatible, as ocserv speaks it), as asyncio coroutines.

No Python library speaks the protocol, so this module does, over one TLS connection from the bridge's
loop thread and without a tun device on the client:

1. TLS to the gateway, the certificate verified against the profile's CA;
2. the XML login (``POST /`` with ``<config-auth type="init">``, then ``auth-reply`` forms for the
   username and the password, each answering the form the server sent) until ``type="complete"`` and
   the ``webvpn`` cookie;
3. ``CONNECT /CSCOSSLC/tunnel`` with the cookie until ``200`` and the ``X-CSTP-*`` headers;
4. CSTP frames on the same connection: 8-byte header ``STF\\x01``, payload length (big-endian 16 bits),
   packet type, a zero byte. Type 0x00 data, 0x03 DPD request, 0x04 DPD response, 0x05 disconnect,
   0x07 keepalive. A background reader answers the server's DPD requests and notices the end;
5. IP packets through the tunnel (CSTP data frames): :meth:`VPNConnection.ping` sends an ICMP echo
   request from the tunnel address the server gave us to a host behind the server and waits for the
   reply, the round trip of a request through the gateway with no tun device on the client.

How ocserv (1.1, Debian's defaults) turns a client away, as its source says and the tests saw:
``max-same-clients`` answers ``CONNECT`` with ``401 Cookie is not acceptable`` and a TLS
``access_denied`` alert; ``max-clients`` and a ban close the connection right after ``accept`` (the
client sees the TLS handshake end), and at the cap ocserv stops accepting until it is under 90 % of
it, so later connections wait in the kernel's queue (a TLS ``timeout`` when that outlasts
``timeout_s``). The first two are the error class ``throttled``; a wait stays a ``timeout``.

Each operation is timed inside the loop by the caller (:func:`gateload.locustfiles.lib.aiobridge.timed`);
nothing here touches Locust or gevent. No server text, cookie or password ever goes into an exception message.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import itertools
import re
import secrets
import ssl
import struct
import time
from dataclasses import dataclass, field
from xml.sax.saxutils import escape

from gateload.locustfiles.lib.errors import HttpStatusError, OperationError, classify

#: What the client says it is; ocserv treats AnyConnect-compatible clients alike (openconnect sends this).
USER_AGENT = "Open AnyConnect VPN Agent v9.01"
CSTP_MAGIC = b"STF\x01"
CSTP_DATA, CSTP_DPD_REQ, CSTP_DPD_RESP, CSTP_DISCONNECT, CSTP_KEEPALIVE = 0x00, 0x03, 0x04, 0x05, 0x07
#: At most this many forms in one logon (init, username, password, and room for a banner): a server
#: that keeps asking is not a logon that will end.
MAX_FORMS = 6
MAX_HEADER_BYTES = 65536
MAX_BODY_BYTES = 1 << 20
CLOSE_TIMEOUT_S = 2.0
_FORM_RE = re.compile(rb"<form\b[^>]*>(.*?)</form>", re.S)
_INPUT_RE = re.compile(rb"<input\b[^>]*\bname=\"([^\"]+)\"[^>]*>", re.S)
_TYPE_RE = re.compile(rb"<config-auth\b[^>]*\btype=\"([a-z-]+)\"", re.S)
ICMP_ECHO_REPLY, ICMP_ECHO_REQUEST = 0, 8
#: bytes of an echo request's payload (as ``ping`` sends by default)
PING_PAYLOAD_BYTES = 56


@dataclass(frozen=True)
class VPNSpec:
    """Where and how to connect; ``password`` is never logged (repr=False)."""

    host: str
    port: int
    username: str
    password: str | None = field(default=None, repr=False)
    ca_file: str = ""  # PEM bundle that signs the gateway's certificate; "" = the system CAs
    verify: bool = True
    timeout_s: float = 10.0
    source_host: str | None = None  # bind to this local address (one 127.0.0.x per simulated user)


@dataclass
class Response:
    """An HTTP/1.1 response head and body (read whole; bounded)."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes = b""

    def header(self, name: str) -> str | None:
        name = name.lower()
        return next((v for k, v in self.headers if k == name), None)

    def cookies(self) -> dict[str, str]:
        found = {}
        for k, v in self.headers:
            if k == "set-cookie" and "=" in v:
                pair = v.split(";", 1)[0]
                key, _, value = pair.partition("=")
                found[key.strip()] = value.strip()
        return found


_contexts: dict[tuple[str, bool], ssl.SSLContext] = {}


def client_context(ca_file: str, verify: bool = True) -> ssl.SSLContext:
    """A TLS client context trusting ``ca_file`` (or the system CAs), made once per process."""
    key = (ca_file, verify)
    if key not in _contexts:
        ctx = ssl.create_default_context(cafile=ca_file or None)
        if not verify:  # an explicit opt-out in the profile, never a default
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        _contexts[key] = ctx
    return _contexts[key]


def cstp_frame(kind: int, payload: bytes = b"") -> bytes:
    """One CSTP packet: ``STF\\x01``, payload length, type, 0, payload."""
    return CSTP_MAGIC + struct.pack(">HBB", len(payload), kind, 0) + payload


def _config_auth(kind: str, inner: str = "") -> bytes:
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f'<config-auth client="vpn" type="{kind}" aggregate-auth-version="2">'
        '<version who="vpn">v9.01</version><device-id>linux-64</device-id>'
        f"{inner}</config-auth>"
    ).encode()


class VPNConnection:
    """One TLS connection to the gateway: the XML logon, the CSTP tunnel and its keepalives."""

    def __init__(self, spec: VPNSpec) -> None:
        self.spec = spec
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.cookies: dict[str, str] = {}
        self.webvpn: str | None = None  # the session cookie: never logged
        self.tunnel_headers: dict[str, str] = {}
        self.lost: BaseException | None = None  # why the tunnel ended under us
        self.lost_at: float | None = None
        self.closing = False
        self.bytes_in = 0
        self._reader_task: asyncio.Task[None] | None = None
        self._dpd: asyncio.Future[float] | None = None
        self._icmp_id = secrets.randbelow(0x10000)  # tells our echo replies from other traffic
        self._icmp_seq = itertools.count(1)
        self._pings: dict[int, asyncio.Future[int]] = {}  # echo sequence -> its reply's length

    @property
    def up(self) -> bool:
        return self._reader_task is not None and self.lost is None and not self.closing

    @property
    def dropped(self) -> bool:
        """The tunnel ended without us closing it (disconnect packet, reset, EOF)."""
        return self._reader_task is not None and self.lost is not None and not self.closing

    # --- the operations ------------------------------------------------------------------------------

    async def tls(self) -> str:
        """TCP and the TLS handshake (certificate checked); returns the negotiated TLS version."""
        spec = self.spec
        local = (spec.source_host, 0) if spec.source_host else None
        try:
            self.reader, self.writer = await asyncio.open_connection(
                spec.host,
                spec.port,
                ssl=client_context(spec.ca_file, spec.verify),
                server_hostname=spec.host,
                local_addr=local,
                ssl_handshake_timeout=spec.timeout_s,
                limit=MAX_HEADER_BYTES,
            )
        except (ssl.SSLEOFError, ConnectionResetError, asyncio.IncompleteReadError):
            # ocserv closes a connection right after accept() when it is at max-clients or the
            # address is banned: the server's limits, not a missing server (that is ECONNREFUSED)
            raise OperationError("throttled", "closed during the TLS handshake") from None
        obj = self.writer.get_extra_info("ssl_object")
        return obj.version() if obj is not None else ""

    async def logon(self) -> None:
        """The XML logon until ``complete`` and the ``webvpn`` cookie; a rejected password is auth_failed."""
        resp = await self._post("/", _config_auth("init", f"<group-access>{self._base()}</group-access>"))
        asked_password = False
        for _ in range(MAX_FORMS):
            if resp.status != 200:
                raise _status_error(resp.status)
            kind = _match(_TYPE_RE, resp.body)
            cookie = self.cookies.get("webvpn")
            if kind == "complete" and cookie:
                self.webvpn = cookie
                return
            form = _FORM_RE.search(resp.body)
            if form is None:
                raise OperationError("other", "login answer without a form")
            names = [n.decode() for n in _INPUT_RE.findall(form.group(1))]
            if "password" in names and asked_password:
                # The server asks for the password again: the previous one was rejected.
                raise OperationError("auth_failed", "password rejected")
            answers = []
            for name in names:
                if name == "username":
                    answers.append(f"<username>{escape(self.spec.username)}</username>")
                elif name == "password":
                    if self.spec.password is None:
                        raise OperationError("auth_failed", "the server asks for a password")
                    answers.append(f"<password>{escape(self.spec.password)}</password>")
                    asked_password = True
            if not answers:
                raise OperationError("other", "login form without username or password")
            resp = await self._post("/auth", _config_auth("auth-reply", f"<auth>{''.join(answers)}</auth>"))
        raise OperationError("other", "login did not complete")

    async def tunnel_up(self) -> dict[str, str]:
        """``CONNECT /CSCOSSLC/tunnel`` until ``200`` with the X-CSTP headers; starts the frame reader."""
        if not self.webvpn:
            raise OperationError("other", "tunnel without logon")
        lines = [
            "CONNECT /CSCOSSLC/tunnel HTTP/1.1",
            f"Host: {self.spec.host}",
            f"User-Agent: {USER_AGENT}",
            f"Cookie: webvpn={self.webvpn}",
            "X-CSTP-Version: 1",
            "X-CSTP-Hostname: gateload",
            "X-CSTP-Base-MTU: 1500",
            "X-CSTP-MTU: 1406",
            "X-CSTP-Address-Type: IPv4",
            "X-CSTP-Full-IPv6-Capability: false",
        ]
        self._require_writer().write(("\r\n".join(lines) + "\r\n\r\n").encode())
        try:
            resp = await self._read_head()
        except ssl.SSLError as exc:
            if "ACCESS_DENIED" in str(exc):
                # ocserv's alert after refusing a session over max-same-clients (see the 401 below)
                raise OperationError("throttled", "tunnel denied (session limit)") from None
            raise
        if resp.status != 200:
            raise _status_error(resp.status, tunnel=True)
        self.tunnel_headers = {k: v for k, v in resp.headers if k.startswith("x-cstp-")}
        if "x-cstp-address" not in self.tunnel_headers and "x-cstp-address-ip6" not in self.tunnel_headers:
            raise OperationError("tunnel_refused", "no tunnel address")
        self._reader_task = asyncio.get_running_loop().create_task(self._read_frames())
        return self.tunnel_headers

    async def dpd(self) -> float:
        """One DPD request until its response (the tunnel's keepalive round trip); returns the ms."""
        if self.lost is not None:
            raise OperationError(classify(self.lost) or "reset", "tunnel lost")
        if self._dpd is not None and not self._dpd.done():
            raise OperationError("other", "DPD already pending")
        loop = asyncio.get_running_loop()
        self._dpd = loop.create_future()
        t0 = time.perf_counter()
        self._require_writer().write(cstp_frame(CSTP_DPD_REQ))
        await self._dpd
        return (time.perf_counter() - t0) * 1000.0

    @property
    def address(self) -> str:
        """The client's address inside the tunnel (``X-CSTP-Address``), "" before the tunnel is up."""
        return self.tunnel_headers.get("x-cstp-address", "")

    def gateway_address(self) -> str:
        """The first host of the network the server gave us: ocserv's own end of the tunnel."""
        mask = self.tunnel_headers.get("x-cstp-netmask", "255.255.255.255")
        net = ipaddress.IPv4Network(f"{self.address}/{mask}", strict=False)
        return str(net.network_address + 1)

    async def ping(self, dst: str, size: int = PING_PAYLOAD_BYTES) -> int:
        """One ICMP echo request to ``dst`` through the tunnel until its reply; returns the bytes sent.

        The packet goes in a CSTP data frame from our tunnel address; the server routes it to ``dst``
        (its own tunnel end, or a host behind it) and the reply comes back as a data frame.
        """
        if self.lost is not None:
            raise OperationError(classify(self.lost) or "reset", "tunnel lost")
        if not self.address:
            raise OperationError("other", "no tunnel address")
        seq = next(self._icmp_seq) & 0xFFFF
        packet = echo_request(self.address, dst, self._icmp_id, seq, size)
        reply = self._pings[seq] = asyncio.get_running_loop().create_future()
        try:
            self._require_writer().write(cstp_frame(CSTP_DATA, packet))
            await reply
        finally:
            self._pings.pop(seq, None)
        return len(packet)

    async def close(self) -> None:
        """Send the CSTP disconnect (when the tunnel is up) and close the TLS connection (bounded)."""
        self.closing = True
        writer, self.writer = self.writer, None
        if writer is None:
            return
        with contextlib.suppress(Exception):
            async with asyncio.timeout(CLOSE_TIMEOUT_S):
                if self._reader_task is not None:
                    writer.write(cstp_frame(CSTP_DISCONNECT, b"\xb0"))  # 0xb0: "user requested"
                    await writer.drain()
                writer.close()
                await writer.wait_closed()
        writer.transport.abort()
        self._stop_reader()

    def abort(self) -> None:
        """Drop the connection at once (loop thread; no waiting)."""
        self.closing = True
        writer, self.writer = self.writer, None
        if writer is not None:
            writer.transport.abort()
        self._stop_reader()

    # --- helpers -------------------------------------------------------------------------------------

    def _base(self) -> str:
        return f"https://{self.spec.host}:{self.spec.port}/"

    def _require_writer(self) -> asyncio.StreamWriter:
        if self.writer is None or self.reader is None:
            raise OperationError("reset", "not connected")
        return self.writer

    async def _post(self, path: str, body: bytes) -> Response:
        head = [
            f"POST {path} HTTP/1.1",
            f"Host: {self.spec.host}",
            f"User-Agent: {USER_AGENT}",
            "Accept: */*",
            "X-Transcend-Version: 1",
            "X-Aggregate-Auth: 1",
            "X-Support-HTTP-Auth: true",
            "Content-Type: application/x-www-form-urlencoded",
            f"Content-Length: {len(body)}",
        ]
        if self.cookies:
            head.append("Cookie: " + "; ".join(f"{k}={v}" for k, v in self.cookies.items()))
        writer = self._require_writer()
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + body)
        resp = await self._read_head()
        length = int(resp.header("content-length") or 0)
        if length > MAX_BODY_BYTES:
            raise OperationError("other", "login answer too large")
        assert self.reader is not None
        resp.body = await self.reader.readexactly(length) if length else b""
        for k, v in resp.cookies().items():
            if v:
                self.cookies[k] = v
            else:
                self.cookies.pop(k, None)
        return resp

    async def _read_head(self) -> Response:
        if self.reader is None:
            raise OperationError("reset", "not connected")
        try:
            raw = await self.reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            raise ConnectionResetError("closed before an answer") from None
        except asyncio.LimitOverrunError:
            raise OperationError("other", "answer head too large") from None
        lines = raw.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
            raise OperationError("other", "not an HTTP answer")
        headers = []
        for line in lines[1:]:
            if ":" in line:
                k, _, v = line.partition(":")
                headers.append((k.strip().lower(), v.strip()))
        return Response(int(parts[1]), headers)

    async def _read_frames(self) -> None:
        """Read CSTP frames until the end: answer DPD requests, resolve our DPD, note the end."""
        reader, writer = self.reader, self.writer
        assert reader is not None and writer is not None
        try:
            while True:
                head = await reader.readexactly(8)
                if head[:4] != CSTP_MAGIC:
                    raise OperationError("other", "bad CSTP frame")
                length, kind = struct.unpack(">HB", head[4:7])
                payload = await reader.readexactly(length) if length else b""
                self.bytes_in += 8 + length
                if kind == CSTP_DPD_REQ:
                    writer.write(cstp_frame(CSTP_DPD_RESP, payload))
                elif kind == CSTP_DPD_RESP:
                    if self._dpd is not None and not self._dpd.done():
                        self._dpd.set_result(time.perf_counter())
                elif kind == CSTP_DISCONNECT:
                    raise OperationError("reset", "gateway disconnected the tunnel")
                elif kind == CSTP_DATA and self._pings:
                    self._echo_reply(payload)
                # other data and keepalive packets: nothing to answer
        except asyncio.CancelledError:
            raise
        except asyncio.IncompleteReadError:
            self._lose(ConnectionResetError("tunnel closed"))
        except Exception as exc:
            self._lose(exc)

    def _echo_reply(self, packet: bytes) -> None:
        """Resolve the ping this IPv4 packet answers (an ICMP echo reply with our id), if any."""
        ihl = (packet[0] & 0x0F) * 4 if packet else 0
        if len(packet) < ihl + 8 or packet[0] >> 4 != 4 or packet[9] != 1:  # IPv4, ICMP
            return
        kind, _code, _sum, ident, seq = struct.unpack(">BBHHH", packet[ihl : ihl + 8])
        if kind == ICMP_ECHO_REPLY and ident == self._icmp_id:
            waiter = self._pings.get(seq)
            if waiter is not None and not waiter.done():
                waiter.set_result(len(packet))

    def _lose(self, exc: BaseException) -> None:
        if self.lost is None:
            self.lost, self.lost_at = exc, time.time()
        if self._dpd is not None and not self._dpd.done():
            self._dpd.set_exception(exc)
        for waiter in self._pings.values():
            if not waiter.done():
                waiter.set_exception(exc)

    def _stop_reader(self) -> None:
        # The task stays referenced: ``closing`` (set first) already tells a close from a drop.
        task = self._reader_task
        if task is not None and not task.done():
            task.cancel()
        # an error, not a cancellation: an operation waiting on it ends as a failed operation
        for waiter in (self._dpd, *self._pings.values()):
            if waiter is not None and not waiter.done():
                waiter.set_exception(OperationError("reset", "tunnel closed"))


def _match(pattern: re.Pattern[bytes], body: bytes) -> str | None:
    found = pattern.search(body)
    return found.group(1).decode(errors="replace") if found else None


def checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071) of ``data``."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f">{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def echo_request(src: str, dst: str, ident: int, seq: int, size: int = PING_PAYLOAD_BYTES) -> bytes:
    """An IPv4 packet holding one ICMP echo request of ``size`` payload bytes."""
    payload = (b"gateload" * (size // 8 + 1))[:size]
    icmp = struct.pack(">BBHHH", ICMP_ECHO_REQUEST, 0, 0, ident, seq) + payload
    icmp = icmp[:2] + struct.pack(">H", checksum(icmp)) + icmp[4:]
    total = 20 + len(icmp)
    head = struct.pack(
        ">BBHHHBBH4s4s",
        0x45,  # IPv4, 20-byte header
        0,
        total,
        seq,  # identification
        0x4000,  # don't fragment
        64,  # TTL
        1,  # ICMP
        0,
        ipaddress.IPv4Address(src).packed,
        ipaddress.IPv4Address(dst).packed,
    )
    head = head[:10] + struct.pack(">H", checksum(head)) + head[12:]
    return head + icmp


def _status_error(status: int, tunnel: bool = False) -> OperationError:
    """An HTTP error status of the login or CONNECT as an error class (fixed words)."""
    if status == 401:
        # At CONNECT the logon has just succeeded: ocserv refuses the fresh cookie ("401 Cookie is not
        # acceptable") when the account is over max-same-clients, its per-user session limit.
        if tunnel:
            return OperationError("throttled", "HTTP 401 at CONNECT (session limit)")
        return OperationError("auth_failed")
    if tunnel and status in (403, 404):
        return OperationError("tunnel_refused", f"HTTP {status}")
    return HttpStatusError(status)
