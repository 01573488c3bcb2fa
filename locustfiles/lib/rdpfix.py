"""Small fixes that let PyPI ``aardwolf`` (0.2.16) complete an RDP logon with xrdp 0.9 and stay bounded.

Each fix is one override or one function patched once (idempotent, :func:`apply`), says what breaks
without it, and is written so it can be offered upstream as it stands. Found against Debian 12's
xrdp 0.9.21 with the xorgxrdp back end, TLS security (xrdp's ``security_layer=negotiate``):

1. **MCS user channel join** (:meth:`FixedRDPConnection._RDPConnection__join_channels`): join the user
   channel first. Without: xrdp fails the connection at the first data PDU ("DomainMCSPDU choice index
   expected 14, received 25").
2. **Unknown capability sets** (:func:`_tolerant_caps_from_buffer`): skip a capability set type the
   enum does not know. Without: xrdp's Demand Active carries type 6 and parsing it raises
   ``ValueError: 6 is not a valid CAPSTYPE``, so the logon fails.
3. **Share data header length** (:class:`_ShareDataHeader`): ``totalLength`` counted 24 header bytes
   where the share control + share data headers are 18 (MS-RDPBCGR 2.2.8.1.1.1.2).
4. **Finalization order** (:meth:`FixedRDPConnection._send_finalization`): send Synchronize, Control
   and Font List right after Confirm Active. Without: aardwolf waits for the server's Synchronize, xrdp
   waits for the client's Font List; the logon hangs until the timeout.
5. **Auto-logon** (``INFO_FLAG.AUTOLOGON`` on the Info PDU when a password is sent). Without: xrdp
   ignores the credentials and shows its own login dialog; no session starts.
6. **Bulk-compressed slow-path lengths** (:class:`_TolerantDecompressor`): xrdp declares
   ``uncompressedLength`` with the whole 18-byte header, aardwolf expects 4. Without: the first
   compressed slow-path update raises "Decompressed packet length does not match its declaration
   (9970 != 9984)" and the connection ends.
7. **Slow-path bitmaps, bounded** (:meth:`FixedRDPConnection._slow_path`): after logon xrdp sends
   bitmap updates as slow-path Update PDUs; aardwolf put every slow-path PDU into the MCS channel's
   unbounded queue that nobody reads after logon (memory grows with every frame, no frame is seen).
   They are decoded like fast-path bitmaps; other PDUs are kept for aardwolf up to
   :data:`MCS_QUEUE_SIZE`, then dropped. ``ext_out_queue`` is bounded too
   (:data:`OUT_QUEUE_SIZE`): a slow reader slows the connection instead of growing memory.
8. **ASN.1 specs compiled once** (:func:`_cached_compile`): aardwolf compiled the T.125/T.124 specs
   on every connection (~0.4 s CPU each here). Compiled once per process, per (spec, codec);
   :func:`warm` compiles them before any load.
9. **One TLS context per process** (:class:`_OneContextSSL`): asysocks made a new default context (the
   system CA bundle loaded, then verification turned off) for every connection: 17-77 ms of CPU
   each with 10 connecting at once here. aardwolf verifies no certificate (``CERT_NONE``); fix 10
   checks one against a pin instead.
10. **The server's certificate, pinned** (:attr:`FixedRDPConnection.on_certificate`): called with the
   certificate (DER) right after the TLS handshake, before any credential is sent; it raises to refuse
   the server. Set, a server that chooses RDP's own encryption instead of TLS is refused as well (its
   certificate could not be checked). Without it aardwolf sends the password to whatever answers.

A screen-update counter (:attr:`FixedRDPConnection.update_bytes`, :attr:`frames`) and a listener for
frames (:attr:`FixedRDPConnection.on_frame`) serve the load generator; nothing here touches Locust.
"""

from __future__ import annotations

import asyncio
import functools
import ssl
from collections.abc import Callable
from typing import Any

import aardwolf.connection as _conn
import asn1tools as _asn1tools
import asysocks.unicomm.common.connection as _uniconn
from aardwolf.commons.queuedata import RDPDATATYPE
from aardwolf.commons.queuedata.constants import VIDEO_FORMAT
from aardwolf.commons.queuedata.video import RDP_VIDEO
from aardwolf.connection import RDPConnection
from aardwolf.protocol.compression import BulkCompressionError, BulkDecompressor
from aardwolf.protocol.fastpath.bitmap import TS_BITMAP_FLAG, TS_UPDATE_BITMAP_DATA
from aardwolf.protocol.pdu.capabilities import CAPSTYPE, TS_CAPS_SET
from aardwolf.protocol.T125.infopacket import INFO_FLAG, TS_INFO_PACKET
from aardwolf.protocol.T128.controlpdu import CTRLACTION, TS_CONTROL_PDU
from aardwolf.protocol.T128.fontlistpdu import TS_FONT_LIST_PDU
from aardwolf.protocol.T128.security import SEC_HDR_FLAG, TS_SECURITY_HEADER
from aardwolf.protocol.T128.share import PDUTYPE, PDUTYPE2, STREAM_TYPE, TS_SHAREDATAHEADER
from aardwolf.protocol.T128.synchronizepdu import TS_SYNCHRONIZE_PDU
from aardwolf.protocol.x224.constants import SUPP_PROTOCOLS
from aardwolf.utils.rectconvert import rectconvert

#: frames waiting for the reader at most (fast- and slow-path alike); then the connection waits
OUT_QUEUE_SIZE = 64
#: slow-path PDUs other than bitmaps kept for aardwolf after logon at most; later ones are dropped
MCS_QUEUE_SIZE = 8
SHARE_CONTROL_HEADER = 6
SHARE_DATA_HEADER = 18
UPDATETYPE_BITMAP = 0x0001
_FINALIZE_TYPES = (TS_SYNCHRONIZE_PDU, TS_CONTROL_PDU, TS_FONT_LIST_PDU)


# --- fix 8: ASN.1 specs compiled once per process ---------------------------------------------------------


@functools.cache
def _cached_compile(spec: str, codec: str) -> Any:
    """``asn1tools.compile_string`` memoized: the specs are constants and the compiled codecs stateless."""
    return _asn1tools.compile_string(spec, codec)


class _CachingASN1:
    """Stands in for the ``asn1tools`` module inside ``aardwolf.connection`` (only compile_string differs)."""

    def __getattr__(self, name: str) -> Any:
        return getattr(_asn1tools, name)

    @staticmethod
    def compile_string(spec: str, codec: str = "ber") -> Any:
        return _cached_compile(spec, codec)


# --- fix 2: unknown capability sets skipped --------------------------------------------------------------

_KNOWN_CAPS = frozenset(c.value for c in CAPSTYPE)


def _tolerant_caps_from_buffer(buff: Any) -> TS_CAPS_SET:
    """``TS_CAPS_SET.from_buffer`` that keeps an unknown capability set as raw bytes (MS-RDPBCGR 2.2.1.13.1:
    a receiver ignores capability sets it does not understand) instead of raising ``ValueError``."""
    start = buff.tell()
    kind = int.from_bytes(buff.read(2), "little")
    if kind in _KNOWN_CAPS:
        buff.seek(start)
        return _orig_caps_from_buffer(buff)
    caps = TS_CAPS_SET()
    caps.lengthCapability = int.from_bytes(buff.read(2), "little")
    caps.capabilitySetType = kind  # a plain int: compares unequal to every CAPSTYPE member
    caps.capabilityData = buff.read(max(0, caps.lengthCapability - 4))
    return caps


_orig_caps_from_buffer = getattr(TS_CAPS_SET.from_buffer, "__wrapped__", TS_CAPS_SET.from_buffer)
_tolerant_caps_from_buffer.__wrapped__ = _orig_caps_from_buffer  # type: ignore[attr-defined]


# --- fix 9: one TLS context per process ---------------------------------------------------------------


class _OneContextSSL:
    """Stands in for ``ssl`` inside ``asysocks.unicomm.common.connection``: ``create_default_context()``
    without arguments returns one context per process. Its only caller there (``wrap_ssl``) turns
    hostname checks and verification off right away, so every connection gets the same settings."""

    def __getattr__(self, name: str) -> Any:
        return getattr(ssl, name)

    @staticmethod
    def create_default_context(*args: Any, **kwargs: Any) -> ssl.SSLContext:
        if args or kwargs:
            return ssl.create_default_context(*args, **kwargs)
        return _unverified_context()


@functools.cache
def _unverified_context() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def warm() -> None:
    """Compile the specs aardwolf's ``connect()`` compiles (fix 8's cache), so the first connection of a
    process does not pay for it inside its timed logon (~0.4-1.9 s CPU here)."""
    apply()
    from aardwolf.protocol.T124.GCCPDU import GCCPDU
    from aardwolf.protocol.T125.MCSPDU_ver_2 import MCSPDU_ver_2

    for spec, codec in ((MCSPDU_ver_2, "ber"), (MCSPDU_ver_2, "per"), (GCCPDU, "per")):
        _cached_compile(spec, codec)


def apply() -> None:
    """Install the module-level fixes (2, 8 and 9); idempotent. The others live in the subclass."""
    if not isinstance(_conn.asn1tools, _CachingASN1):
        _conn.asn1tools = _CachingASN1()
    if not isinstance(_uniconn.ssl, _OneContextSSL):
        _uniconn.ssl = _OneContextSSL()
    TS_CAPS_SET.from_buffer = staticmethod(_tolerant_caps_from_buffer)


# --- fix 3: share data header lengths --------------------------------------------------------------------


class _ShareDataHeader(TS_SHAREDATAHEADER):
    """The share data header with the lengths MS-RDPBCGR 2.2.8.1.1.1.2 gives."""

    def to_bytes(self) -> bytes:
        # aardwolf's handle_out_data sets totalLength = payload + 24; the two headers are 18 bytes, and
        # uncompressedLength counts from pduType2 on (payload + 4), as aardwolf itself reads it.
        payload = self.shareControlHeader.totalLength - 24
        self.shareControlHeader.totalLength = payload + SHARE_DATA_HEADER
        self.uncompressedLength = payload + 4
        return bytes(super().to_bytes())


# --- fix 6: xrdp's uncompressedLength --------------------------------------------------------------------


class _TolerantDecompressor(BulkDecompressor):
    """Accepts the decompressed size either as aardwolf counts it or as xrdp declares it (14 bytes more:
    xrdp's ``uncompressedLength`` includes the share control and data headers); anything else still fails."""

    def decompress(self, data: bytes, flags: int, expected_size: int | None = None) -> bytes:
        out = bytes(self._native.decompress(data, int(flags), None))
        if expected_size is not None and len(out) not in (
            expected_size,
            expected_size - (SHARE_DATA_HEADER - 4),
        ):
            raise BulkCompressionError(
                f"Decompressed packet length does not match its declaration ({len(out)} != {expected_size})"
            )
        return out


#: the security protocols that start with TLS (MS-RDPBCGR 2.2.1.1.1): a certificate to check
_TLS_PROTOCOLS = (SUPP_PROTOCOLS.SSL, SUPP_PROTOCOLS.HYBRID, SUPP_PROTOCOLS.HYBRID_EX)


class FixedRDPConnection(RDPConnection):
    """aardwolf's :class:`RDPConnection` with fixes 1, 3-7 and 10, plus frame and byte counters."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        apply()
        #: fix 10: called with the server's certificate (DER) after the TLS handshake, before any
        #: credential goes out; raises to refuse it. Set, a server that chooses no TLS is refused.
        self.on_certificate: Callable[[bytes], None] | None = None
        super().__init__(*args, **kwargs)
        self.ext_out_queue: asyncio.Queue[Any] = _FrameQueue(self, OUT_QUEUE_SIZE)  # fix 7
        shipped: BulkDecompressor | None = getattr(self, "bulk_decompressor", None)
        if shipped is not None:  # fix 6
            self.bulk_decompressor = _TolerantDecompressor(
                shipped.max_compression_type, self.iosettings.fastpath_max_request_size
            )
        self._finalize_sent = 0  # client finalization PDUs already sent early, to drop from aardwolf's
        #: screen-update payload bytes received (fast and slow path, after bulk decompression)
        self.update_bytes = 0
        #: bitmap rectangles received after logon
        self.frames = 0
        #: slow-path bitmap rectangles that did not decode (skipped)
        self.bad_frames = 0
        #: called in the loop thread for each bitmap rectangle as it arrives (set by the load generator)
        self.on_frame: Callable[[int], None] | None = None

    # --- fix 10 ------------------------------------------------------------------------------------------

    @property
    def x224_protocol(self) -> Any:
        return self.__dict__.get("_x224_protocol")

    @x224_protocol.setter
    def x224_protocol(self, selected: Any) -> None:
        """aardwolf records here the security protocol the server chose, after the X.224 negotiation and
        before TLS starts or a credential is sent: the one place to refuse a server, or to hook the
        handshake of this connection, and nothing else's."""
        self.__dict__["_x224_protocol"] = selected
        check = self.on_certificate
        if selected is None or check is None:
            return
        if not any(p in selected for p in _TLS_PROTOCOLS):
            raise ssl.SSLError(
                f"the server chose {SUPP_PROTOCOLS(selected)!r}, no TLS: its certificate cannot be checked"
            )
        uni = self._RDPConnection__connection
        handshake = uni.wrap_ssl

        async def handshake_then_check(*args: Any, **kwargs: Any) -> None:
            await handshake(*args, **kwargs)
            check(uni.get_peer_certificate())

        uni.wrap_ssl = handshake_then_check

    # --- fix 1 -------------------------------------------------------------------------------------------

    async def _RDPConnection__join_channels(self) -> tuple[Any, Exception | None]:
        """Join the MCS user channel, then the I/O and static channels as aardwolf does.

        MS-RDPBCGR 1.3.1.1 (Channel Connection): the client joins the user channel (its own initiator
        id), then the I/O channel, then each static channel. xrdp counts the join requests.
        """
        try:
            request = self._t125_per_codec.encode(
                "DomainMCSPDU",
                ("channelJoinRequest", {"initiator": self._initiator, "channelId": self._initiator}),
            )
            await self._x224net.write(bytes(request))
            response = await self._x224net.read()
            if response is None:
                raise ConnectionResetError("connection closed at the user channel join")
            kind, body = self._t125_per_codec.decode("DomainMCSPDU", response.data)
            if kind != "channelJoinConfirm" or body.get("result") != "rt-successful":
                raise ConnectionError(f"user channel join refused: {kind}")
        except Exception as exc:
            return None, exc
        return await super()._RDPConnection__join_channels()

    # --- fixes 3, 4, 5 -----------------------------------------------------------------------------------

    async def handle_out_data(
        self,
        dataobj: Any,
        sec_hdr: Any,
        datacontrol_hdr: Any,
        sharecontrol_hdr: Any,
        channel_id: int,
        is_fastpath: bool,
    ) -> tuple[Any, Exception | None]:
        """Fix 3 on every data PDU, fix 5 on the Info PDU, fix 4 after Confirm Active."""
        if isinstance(dataobj, TS_INFO_PACKET) and dataobj.Password:
            dataobj.flags |= INFO_FLAG.AUTOLOGON  # fix 5
        if datacontrol_hdr is not None and type(datacontrol_hdr) is TS_SHAREDATAHEADER:
            if self._finalize_sent and isinstance(dataobj, _FINALIZE_TYPES):
                self._finalize_sent -= 1  # fix 4: already sent right after Confirm Active
                return True, None
            fixed = _ShareDataHeader()
            fixed.__dict__.update(datacontrol_hdr.__dict__)
            datacontrol_hdr = fixed
        result = await super().handle_out_data(
            dataobj, sec_hdr, datacontrol_hdr, sharecontrol_hdr, channel_id, is_fastpath
        )
        confirm = sharecontrol_hdr is not None and sharecontrol_hdr.pduType == PDUTYPE.CONFIRMACTIVEPDU
        if confirm and result[1] is None:
            return await self._send_finalization(channel_id)
        return result

    async def _send_finalization(self, channel_id: int) -> tuple[Any, Exception | None]:
        """Fix 4: Synchronize, Control (cooperate, request control) and Font List right after Confirm
        Active, in the order of MS-RDPBCGR 1.3.1.1, without waiting for the server's Synchronize."""
        sync = TS_SYNCHRONIZE_PDU()
        sync.targetUser = channel_id
        cooperate, request = TS_CONTROL_PDU(), TS_CONTROL_PDU()
        cooperate.action, request.action = CTRLACTION.COOPERATE, CTRLACTION.REQUEST_CONTROL
        for pdu in (cooperate, request):
            pdu.grantId, pdu.controlId = 0, 0
        steps = (
            (sync, PDUTYPE2.SYNCHRONIZE),
            (cooperate, PDUTYPE2.CONTROL),
            (request, PDUTYPE2.CONTROL),
            (TS_FONT_LIST_PDU(), PDUTYPE2.FONTLIST),
        )
        for pdu, kind in steps:
            hdr = TS_SHAREDATAHEADER()
            hdr.shareID, hdr.streamID, hdr.pduType2 = 0x103EA, STREAM_TYPE.MED, kind
            sec = None
            if self.cryptolayer is not None:
                sec = TS_SECURITY_HEADER()
                sec.flags, sec.flagsHi = SEC_HDR_FLAG.ENCRYPT, 0
            _, err = await self.handle_out_data(pdu, sec, hdr, None, channel_id, False)
            if err is not None:
                return None, err
        self._finalize_sent = len(steps)
        return True, None

    # --- fix 7 and the counters ----------------------------------------------------------------------------

    async def connect(self, auth_only: bool = False) -> tuple[Any, Exception | None]:
        """aardwolf's connect; then slow-path PDUs go to :meth:`_slow_path` instead of an unread queue."""
        ok, err = await super().connect(auth_only)
        if err is None and not auth_only:
            mcs = self._RDPConnection__joined_channels["MCS"]
            # the server's finalization PDUs, read by nobody: taken out first, since _slow_path
            # puts PDUs other than bitmaps back (bounded)
            pending = [mcs.out_queue.get_nowait()[0] for _ in range(mcs.out_queue.qsize())]
            mcs.process_channel_data = self._slow_path
            for data in pending:
                await self._slow_path(data)
        return ok, err

    async def _RDPConnection__process_fastpath(self, fpdu: Any) -> None:
        """aardwolf's fast-path handling, counting the update bytes."""
        self.update_bytes += sum(len(u.updateData or b"") for u in fpdu.fpOutputUpdates)
        await super()._RDPConnection__process_fastpath(fpdu)

    async def _slow_path(self, data: bytes | None) -> None:
        """A slow-path PDU after logon: bitmap updates decoded onto the desktop, everything else dropped."""
        if not data:
            return
        self.update_bytes += len(data)
        offset = 4 if self._slow_path_offset() else 0
        if len(data) < offset + SHARE_DATA_HEADER + 4:
            return
        hdr = TS_SHAREDATAHEADER.from_bytes(data[offset:])
        body = data[offset + SHARE_DATA_HEADER :]
        if hdr.pduType2 != PDUTYPE2.UPDATE or int.from_bytes(body[:2], "little") != UPDATETYPE_BITMAP:
            # other PDUs (e.g. the answer to terminate()'s Shutdown Request) for aardwolf, a few at most
            mcs = self._RDPConnection__joined_channels["MCS"]
            if mcs.out_queue.qsize() < MCS_QUEUE_SIZE:
                mcs.out_queue.put_nowait((data, None))
            return
        for rect in TS_UPDATE_BITMAP_DATA.from_bytes(body).rectangles:
            await self._paint(rect)

    def _slow_path_offset(self) -> bool:
        # an empty 4-byte security header precedes the share PDU when encryptionLevel is 1 (see connect())
        pdu = self._RDPConnection__server_connect_pdu
        return bool(pdu[_conn.TS_UD_TYPE.SC_SECURITY].encryptionLevel == 1)

    async def _paint(self, rect: Any) -> None:
        """Decode one bitmap rectangle onto the desktop buffer and hand it to ``ext_out_queue``.

        Decoded at the bitmap's own ``width`` x ``height`` and cropped to the destination: the bitmap
        width is padded to a multiple of 4 (MS-RDPBCGR 2.2.9.1.1.3.1.2.2), and aardwolf's
        ``RDP_VIDEO.from_bitmapdata`` decodes at the destination size, which fails ("decoded more pixels
        than width*height") for every rectangle whose width is not a multiple of 4.
        """
        res = RDP_VIDEO()
        res.type = RDPDATATYPE.VIDEO
        res.x, res.y = rect.destLeft, rect.destTop
        res.width = rect.destRight - rect.destLeft + 1
        res.height = rect.destBottom - rect.destTop + 1
        res.bitsPerPixel = rect.bitsPerPixel
        res.is_compressed = TS_BITMAP_FLAG.BITMAP_COMPRESSION in rect.flags
        try:
            image = rectconvert(
                rect.width, rect.height, rect.bitsPerPixel, res.is_compressed, rect.bitmapDataStream
            )
        except ValueError:
            self.bad_frames += (
                1  # one broken rectangle is not a broken connection (aardwolf's fast path agrees)
            )
            return
        if image.size != (res.width, res.height):
            image = image.crop((0, 0, res.width, res.height))
        res.data = image if self.iosettings.video_out_format == VIDEO_FORMAT.PIL else image.tobytes()
        buffer = self._RDPConnection__desktop_buffer
        if buffer is not None:
            buffer.paste(image, [res.x, res.y, res.x + res.width, res.y + res.height])
        self.desktop_buffer_has_data = True
        await self.ext_out_queue.put(res)


class _FrameQueue(asyncio.Queue):
    """``ext_out_queue``, bounded, counting the bitmap rectangles put into it (fast and slow path)."""

    def __init__(self, conn: FixedRDPConnection, maxsize: int) -> None:
        super().__init__(maxsize)
        self._conn = conn

    async def put(self, item: Any) -> None:
        if isinstance(item, RDP_VIDEO):
            self._conn.frames += 1
            if self._conn.on_frame is not None:
                self._conn.on_frame(1)
        await super().put(item)
