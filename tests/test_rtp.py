"""RTP/RTCP packets: round trips, known layouts, malformed input (RFC 3550)."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pbxd.media.rtp import (
    ReportBlock, RtcpOther, RtcpReport, RtpError, RtpPacket, SenderInfo, is_rtcp, parse_rtcp, parse_rtp,
    payload_offset,
)


def test_known_header_layout() -> None:
    data = bytes.fromhex("80e0 0102 00000a00 deadbeef") + b"\xff" * 160
    packet = parse_rtp(data)
    assert packet == RtpPacket(96, 0x0102, 0xA00, 0xDEADBEEF, b"\xff" * 160, marker=True)
    assert packet.to_bytes() == data


def test_csrcs_extension_and_padding_round_trip() -> None:
    packet = RtpPacket(0, 65535, 2**32 - 1, 7, b"abc", csrcs=(1, 2), extension=(0xBEDE, b"\x10\x01\x00\x00"), padding=3)
    data = packet.to_bytes()
    assert data[0] == 0x80 | 0x20 | 0x10 | 2
    assert payload_offset(data) == 12 + 8 + 8
    assert parse_rtp(data) == packet


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x80\x00",
        bytes.fromhex("40000001 00000000 00000001"),  # version 1
        bytes.fromhex("8f000001 00000000 00000001"),  # 15 CSRCs that are not there
        bytes.fromhex("90000001 00000000 00000001 bede"),  # extension header cut short
        bytes.fromhex("90000001 00000000 00000001 bede0004"),  # extension longer than data
        bytes.fromhex("a0000001 00000000 00000001 00"),  # padding count 0
        bytes.fromhex("a0000001 00000000 00000001 0009"),  # padding beyond the payload
    ],
)
def test_malformed_rtp(data: bytes) -> None:
    with pytest.raises(RtpError):
        parse_rtp(data)


def test_building_refuses_impossible_packets() -> None:
    with pytest.raises(RtpError):
        RtpPacket(128, 0, 0, 0).to_bytes()
    with pytest.raises(RtpError):
        RtpPacket(0, 0, 0, 0, extension=(1, b"abc")).to_bytes()


@given(st.binary(max_size=200))
def test_arbitrary_bytes_raise_only_rtp_error(data: bytes) -> None:
    for parse in (parse_rtp, parse_rtcp):
        try:
            parse(data)
        except RtpError:
            pass


@given(st.builds(RtpPacket, st.integers(0, 127), st.integers(0, 65535), st.integers(0, 2**32 - 1),
                 st.integers(0, 2**32 - 1), st.binary(max_size=64), st.booleans(),
                 st.lists(st.integers(0, 2**32 - 1), max_size=15).map(tuple),
                 st.none() | st.tuples(st.integers(0, 65535), st.binary(max_size=12).map(lambda b: b[: len(b) // 4 * 4])),
                 st.integers(0, 255)))
def test_rtp_round_trip(packet: RtpPacket) -> None:
    assert parse_rtp(packet.to_bytes()) == packet


def test_sender_and_receiver_reports_round_trip() -> None:
    block = ReportBlock(0x1234, 25, -3, (2 << 16) | 17, 80, 0xAABBCCDD, 65536)
    sr = RtcpReport(0x99, (block,), SenderInfo(0x0102030405060708, 160, 10, 1600))
    rr = RtcpReport(0x98, (block, block))
    sdes = RtcpOther(202, 1, struct.pack("!IBB", 0x99, 1, 2) + b"ab" + b"\x00" * 4)
    compound = sr.to_bytes() + rr.to_bytes() + struct.pack("!BBH", 0x81, 202, 3) + sdes.body
    packets = parse_rtcp(compound)
    assert packets == [sr, rr, sdes]
    assert sr.sender is not None and sr.sender.ntp_middle == 0x03040506
    assert is_rtcp(compound) and not is_rtcp(RtpPacket(0, 1, 2, 3).to_bytes())
    assert not is_rtcp(RtpPacket(96, 1, 2, 3, marker=True).to_bytes())  # 224: RTP with M bit


@pytest.mark.parametrize(
    "data",
    [
        b"\x80\xc9\x00",
        bytes.fromhex("40c90001 00000001"),  # version 1
        bytes.fromhex("80c90005 00000001"),  # length beyond the datagram
        bytes.fromhex("81c90001 00000001"),  # one report block announced, none there
        bytes.fromhex("80c80001 00000001"),  # SR without sender info
        bytes.fromhex("80c90001 00000001 00"),  # trailing octets
        bytes.fromhex("a0c90001 00000000"),  # padding count 0
    ],
)
def test_malformed_rtcp(data: bytes) -> None:
    with pytest.raises(RtpError):
        parse_rtcp(data)
