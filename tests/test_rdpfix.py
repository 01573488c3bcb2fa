"""Each fix of :mod:`gateload.locustfiles.lib.rdpfix` alone, without a server (the logon they make possible is
tested against a real xrdp in tests/test_rdp_xrdp.py)."""

from __future__ import annotations

from typing import Any

import aardwolf.connection as aardwolf_connection
import pytest
from aardwolf.channels import MCSChannel
from aardwolf.commons.factory import RDPConnectionFactory
from aardwolf.commons.iosettings import RDPIOSettings
from aardwolf.protocol.compression import BulkCompressionError
from aardwolf.protocol.pdu.capabilities import CAPSTYPE
from aardwolf.protocol.T125.infopacket import INFO_FLAG, TS_INFO_PACKET
from aardwolf.protocol.T128.clientconfirmactivepdu import TS_CONFIRM_ACTIVE_PDU
from aardwolf.protocol.T128.serverdemandactivepdu import TS_DEMAND_ACTIVE_PDU
from aardwolf.protocol.T128.share import (
    PDUTYPE,
    PDUTYPE2,
    STREAM_TYPE,
    TS_SHARECONTROLHEADER,
    TS_SHAREDATAHEADER,
)
from aardwolf.protocol.T128.synchronizepdu import TS_SYNCHRONIZE_PDU
from real_support import run_async

from gateload.locustfiles.lib import rdpfix

CHANNEL = 1003  # the MCS I/O channel xrdp gives
INITIATOR = 1007


class FakeNet:
    """Stands in for aardwolf's X224Network: records what is written, answers from a list."""

    def __init__(self, replies: list[bytes] | None = None) -> None:
        self.writes: list[bytes] = []
        self.replies = list(replies or [])

    async def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))

    async def read(self) -> Any:
        if not self.replies:
            return None  # "connection closed"
        return type("Packet", (), {"data": self.replies.pop(0)})()


def connection(net: FakeNet | None = None) -> rdpfix.FixedRDPConnection:
    io = RDPIOSettings()
    io.channels = []
    factory = RDPConnectionFactory.from_url("rdp+plain://127.0.0.1:3389", io)
    conn = rdpfix.FixedRDPConnection(factory.get_target(), factory.get_credential(), io)
    conn._x224net = net or FakeNet()
    conn._t125_per_codec = rdpfix._cached_compile(aardwolf_connection.MCSPDU_ver_2, "per")
    conn._initiator = INITIATOR
    return conn


def sent(conn: rdpfix.FixedRDPConnection) -> list[tuple[str, dict[str, Any]]]:
    """The MCS PDUs written, decoded."""
    return [conn._t125_per_codec.decode("DomainMCSPDU", w) for w in conn._x224net.writes]


def data_pdu(kind: PDUTYPE2, body: bytes = b"") -> tuple[Any, TS_SHAREDATAHEADER]:
    """A share data header as aardwolf's own code fills it before handle_out_data."""
    hdr = TS_SHAREDATAHEADER()
    hdr.shareID, hdr.streamID, hdr.pduType2 = 0x103EA, STREAM_TYPE.MED, kind
    sync = TS_SYNCHRONIZE_PDU()
    sync.targetUser = CHANNEL
    return sync, hdr


# --- fix 1 --------------------------------------------------------------------------------------------


def test_the_user_channel_is_joined_first() -> None:
    codec = rdpfix._cached_compile(aardwolf_connection.MCSPDU_ver_2, "per")
    confirm = codec.encode(
        "DomainMCSPDU",
        (
            "channelJoinConfirm",
            {
                "result": "rt-successful",
                "initiator": INITIATOR,
                "requested": INITIATOR,
                "channelId": INITIATOR,
            },
        ),
    )
    conn = connection(FakeNet([bytes(confirm)]))  # then "closed": aardwolf's own join fails, as intended
    mcs = MCSChannel()
    mcs.channel_id = CHANNEL
    conn._RDPConnection__joined_channels["MCS"] = mcs

    _, err = run_async(conn._RDPConnection__join_channels())

    (kind, body), (kind2, body2) = sent(conn)
    assert kind == "channelJoinRequest" and body["channelId"] == INITIATOR == body["initiator"]
    assert kind2 == "channelJoinRequest" and body2["channelId"] == CHANNEL  # then aardwolf's own joins
    assert err is not None  # the I/O channel's join met the closed fake


def test_a_refused_user_channel_join_is_an_error_not_a_hang() -> None:
    conn = connection(FakeNet([]))
    _, err = run_async(conn._RDPConnection__join_channels())
    assert isinstance(err, ConnectionResetError)


# --- fix 2 --------------------------------------------------------------------------------------------


def _caps(kind: int, body: bytes) -> bytes:
    return kind.to_bytes(2, "little") + (len(body) + 4).to_bytes(2, "little") + body


def test_an_unknown_capability_set_is_skipped() -> None:
    rdpfix.apply()
    share = (
        (0x0009).to_bytes(2, "little") + (8).to_bytes(2, "little") + CHANNEL.to_bytes(2, "little") + b"\0\0"
    )
    caps = share + _caps(6, b"\x00") + _caps(0x000A, b"\x06\x00\x00\x00")  # xrdp's type 6, then color cache
    body = (0x103EA).to_bytes(4, "little") + (4).to_bytes(2, "little") + (len(caps) + 4).to_bytes(2, "little")
    body += b"RDP\x00" + (3).to_bytes(2, "little") + b"\0\0" + caps + (0).to_bytes(4, "little")
    head = TS_SHARECONTROLHEADER()
    head.totalLength, head.pduType, head.pduVersion, head.pduSource = (
        len(body) + 6,
        PDUTYPE.DEMANDACTIVEPDU,
        1,
        1002,
    )

    pdu = TS_DEMAND_ACTIVE_PDU.from_bytes(head.to_bytes() + body)

    kinds = [c.capabilitySetType for c in pdu.capabilitySets]
    assert kinds == [CAPSTYPE.SHARE, 6, CAPSTYPE.COLORCACHE] and pdu.sessionId == 0


def test_apply_is_idempotent() -> None:
    rdpfix.apply()
    first = (aardwolf_connection.asn1tools, TS_DEMAND_ACTIVE_PDU.from_bytes)
    rdpfix.apply()
    assert (aardwolf_connection.asn1tools, TS_DEMAND_ACTIVE_PDU.from_bytes) == first
    from aardwolf.protocol.pdu.capabilities import TS_CAPS_SET

    assert TS_CAPS_SET.from_buffer.__wrapped__ is rdpfix._orig_caps_from_buffer  # wrapped once, not twice


# --- fixes 3 and 4 -------------------------------------------------------------------------------------


def test_share_data_headers_count_18_header_bytes() -> None:
    conn = connection()
    pdu, hdr = data_pdu(PDUTYPE2.SYNCHRONIZE)
    run_async(conn.handle_out_data(pdu, None, hdr, None, CHANNEL, False))
    user_data = sent(conn)[0][1]["userData"]
    head = TS_SHAREDATAHEADER.from_bytes(user_data)
    assert head.shareControlHeader.totalLength == len(user_data) == 18 + len(pdu.to_bytes())
    assert head.uncompressedLength == len(pdu.to_bytes()) + 4


def test_finalization_follows_confirm_active_at_once_and_is_sent_once() -> None:
    conn = connection()
    confirm = TS_CONFIRM_ACTIVE_PDU()
    confirm.shareID, confirm.originatorID = 0x103EA, 1002
    share = TS_SHARECONTROLHEADER()
    share.pduType, share.pduVersion, share.pduSource = PDUTYPE.CONFIRMACTIVEPDU, 1, CHANNEL
    run_async(conn.handle_out_data(confirm, None, None, share, CHANNEL, False))
    # aardwolf's own sequence, later: its Synchronize must not go out a second time
    pdu, hdr = data_pdu(PDUTYPE2.SYNCHRONIZE)
    run_async(conn.handle_out_data(pdu, None, hdr, None, CHANNEL, False))

    datas = [body["userData"] for _, body in sent(conn)]
    assert TS_SHARECONTROLHEADER.from_bytes(datas[0]).pduType == PDUTYPE.CONFIRMACTIVEPDU
    kinds = [TS_SHAREDATAHEADER.from_bytes(d).pduType2 for d in datas[1:]]
    assert kinds == [PDUTYPE2.SYNCHRONIZE, PDUTYPE2.CONTROL, PDUTYPE2.CONTROL, PDUTYPE2.FONTLIST]


# --- fix 5 --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("password", "autologon"), [("s3cret", True), ("", False)])
def test_auto_logon_is_asked_for_when_a_password_is_sent(password: str, autologon: bool) -> None:
    conn = connection()
    info = TS_INFO_PACKET()
    info.CodePage, info.flags = 0, INFO_FLAG.UNICODE | INFO_FLAG.MOUSE
    info.Domain, info.UserName, info.Password, info.AlternateShell, info.WorkingDir = (
        "",
        "u",
        password,
        "",
        "",
    )
    info.extrainfo = None
    run_async(conn.handle_out_data(info, None, None, None, CHANNEL, False))
    flags = int.from_bytes(sent(conn)[0][1]["userData"][4:8], "little")
    assert bool(flags & INFO_FLAG.AUTOLOGON) is autologon


# --- fix 6 --------------------------------------------------------------------------------------------


def test_xrdps_uncompressed_length_is_accepted_and_others_still_fail() -> None:
    dec = rdpfix._TolerantDecompressor()
    data = b"x" * 100  # flags 0: not compressed, the data comes back as it is
    assert dec.decompress(data, 0, 100) == data  # aardwolf's count
    assert dec.decompress(data, 0, 114) == data  # xrdp's (the 14 header bytes more)
    with pytest.raises(BulkCompressionError):
        dec.decompress(data, 0, 107)


# --- fix 7 --------------------------------------------------------------------------------------------


def _slow_pdu(kind: PDUTYPE2, body: bytes) -> bytes:
    """A slow-path share data PDU as xrdp sends it after logon (TLS: no security header)."""
    hdr = TS_SHAREDATAHEADER()
    hdr.shareControlHeader = TS_SHARECONTROLHEADER()
    hdr.shareControlHeader.pduType, hdr.shareControlHeader.pduSource = PDUTYPE.DATAPDU, CHANNEL
    hdr.shareControlHeader.totalLength = 18 + len(body)
    hdr.shareID, hdr.streamID, hdr.pduType2 = 0x103EA, STREAM_TYPE.MED, kind
    hdr.uncompressedLength, hdr.compressedType, hdr.compressedLength = len(body) + 4, 0, 0
    return bytes(hdr.to_bytes()) + body


def _slow_bitmap(x: int, y: int, w: int, h: int) -> bytes:
    """A bitmap update (one uncompressed 16 bpp rectangle; rows padded to 4 pixels as the spec says)."""
    padded = (w + 3) // 4 * 4
    pixels = b"\x1f\x00" * (padded * h)
    fields = (x, y, x + w - 1, y + h - 1, padded, h, 16, 0, len(pixels))
    rect = b"".join(v.to_bytes(2, "little") for v in fields)
    return _slow_pdu(PDUTYPE2.UPDATE, (1).to_bytes(2, "little") + (1).to_bytes(2, "little") + rect + pixels)


def test_slow_path_bitmaps_are_decoded_and_nothing_queues_without_bound() -> None:
    from aardwolf.protocol.T124.userdata.constants import TS_UD_TYPE

    conn = connection()
    mcs = MCSChannel()
    conn._RDPConnection__joined_channels["MCS"] = mcs
    security = type("Sec", (), {"encryptionLevel": 0})()
    conn._RDPConnection__server_connect_pdu = {TS_UD_TYPE.SC_SECURITY: security}
    seen: list[int] = []
    conn.on_frame = seen.append

    async def feed() -> None:
        other = _slow_pdu(PDUTYPE2.SET_ERROR_INFO_PDU, (0).to_bytes(4, "little"))  # not a bitmap
        for _ in range(50):
            await conn._slow_path(other)
        for i in range(rdpfix.OUT_QUEUE_SIZE):
            await conn._slow_path(_slow_bitmap(i, 0, 6, 3))  # width 6: padded rows decode too

    run_async(feed())
    assert mcs.out_queue.qsize() == rdpfix.MCS_QUEUE_SIZE  # 50 non-bitmap PDUs, 8 kept
    assert conn.frames == rdpfix.OUT_QUEUE_SIZE == conn.ext_out_queue.qsize() and len(seen) == conn.frames
    assert conn.ext_out_queue.maxsize == rdpfix.OUT_QUEUE_SIZE and conn.bad_frames == 0
    first = conn.ext_out_queue.get_nowait()
    assert (first.x, first.y, first.width, first.height) == (0, 0, 6, 3)


# --- fix 8 --------------------------------------------------------------------------------------------


def test_asn1_specs_are_compiled_once_per_process() -> None:
    rdpfix.apply()
    spec = aardwolf_connection.MCSPDU_ver_2
    assert aardwolf_connection.asn1tools.compile_string(
        spec, "per"
    ) is aardwolf_connection.asn1tools.compile_string(spec, "per")
    assert isinstance(aardwolf_connection.asn1tools, rdpfix._CachingASN1)


# --- fix 9 --------------------------------------------------------------------------------------------


def test_one_tls_context_per_process_for_asysocks_and_only_there() -> None:
    import ssl

    import asysocks.unicomm.common.connection as uniconn

    rdpfix.apply()
    first, second = uniconn.ssl.create_default_context(), uniconn.ssl.create_default_context()
    assert first is second and first.verify_mode == ssl.CERT_NONE  # what wrap_ssl sets anyway
    assert ssl.create_default_context() is not first  # the real module is untouched
    assert ssl.create_default_context().verify_mode == ssl.CERT_REQUIRED
    assert uniconn.ssl.PROTOCOL_TLS_CLIENT == ssl.PROTOCOL_TLS_CLIENT  # the rest passes through


# --- fix 10 -------------------------------------------------------------------------------------------


def test_with_a_certificate_hook_a_server_choosing_no_tls_is_refused_before_any_credential() -> None:
    import ssl

    from aardwolf.protocol.x224.constants import SUPP_PROTOCOLS

    plain = connection()
    plain.x224_protocol = SUPP_PROTOCOLS.RDP  # no hook: aardwolf's own behaviour
    assert plain.x224_protocol == SUPP_PROTOCOLS.RDP
    pinned = connection()
    pinned.on_certificate = lambda der: None
    with pytest.raises(ssl.SSLError, match="no TLS"):
        pinned.x224_protocol = SUPP_PROTOCOLS.RDP  # RDP's own encryption: nothing to check
    assert pinned._x224net.writes == []  # nothing was sent after the negotiation
