"""RTP and RTCP packets (RFC 3550), parsed and built without I/O.

``parse_rtp`` and ``parse_rtcp`` raise ``RtpError`` (a ``ValueError``) and
nothing else for any input; the relay drops such datagrams. ``is_rtcp`` tells
the two apart on a port that carries both (rtcp-mux, RFC 5761 §4).

The relay's hot path does not build these objects: it forwards the datagram
as it came and reads the few header fields it needs with ``HEADER``.
"""

from __future__ import annotations

import struct

import attrs

RTP_VERSION = 2
# V P X CC | M PT | sequence | timestamp | SSRC (RFC 3550 §5.1)
HEADER = struct.Struct("!BBHII")
HEADER_SIZE = HEADER.size
_EXTENSION = struct.Struct("!HH")
_RTCP_HEADER = struct.Struct("!BBH")
_SENDER_INFO = struct.Struct("!IIIII")  # NTP msw, NTP lsw, RTP timestamp, packets, octets
_REPORT_BLOCK = struct.Struct("!IB3sIIII")

RTCP_SR, RTCP_RR, RTCP_SDES, RTCP_BYE, RTCP_APP = 200, 201, 202, 203, 204


class RtpError(ValueError):
    """A datagram that is not a well-formed RTP or RTCP packet."""


@attrs.frozen
class RtpPacket:
    """One RTP packet (RFC 3550 §5.1). ``extension`` is (profile, data) when the X bit is set."""

    payload_type: int
    sequence: int
    timestamp: int
    ssrc: int
    payload: bytes = b""
    marker: bool = False
    csrcs: tuple[int, ...] = ()
    extension: tuple[int, bytes] | None = None
    padding: int = 0  # how many padding octets follow the payload (the P bit when > 0)

    def to_bytes(self) -> bytes:
        if not 0 <= self.payload_type <= 127 or len(self.csrcs) > 15:
            raise RtpError("payload type above 127 or more than 15 CSRCs")
        first = RTP_VERSION << 6 | (0x20 if self.padding else 0) | (0x10 if self.extension else 0) | len(self.csrcs)
        parts = [
            HEADER.pack(first, self.marker << 7 | self.payload_type, self.sequence & 0xFFFF,
                        self.timestamp & 0xFFFFFFFF, self.ssrc & 0xFFFFFFFF),
            *(struct.pack("!I", csrc) for csrc in self.csrcs),
        ]
        if self.extension is not None:
            profile, data = self.extension
            if len(data) % 4:
                raise RtpError("an RTP header extension is a whole number of 32-bit words")
            parts += [_EXTENSION.pack(profile, len(data) // 4), data]
        parts.append(self.payload)
        if self.padding:
            if not 0 < self.padding <= 255:
                raise RtpError("padding must be 1-255 octets")
            parts.append(bytes(self.padding - 1) + bytes([self.padding]))
        return b"".join(parts)


def payload_offset(data: bytes) -> int:
    """Where the payload starts in an RTP datagram (after CSRCs and the header extension)."""
    if len(data) < HEADER_SIZE:
        raise RtpError(f"{len(data)} octets is shorter than an RTP header")
    first = data[0]
    if first >> 6 != RTP_VERSION:
        raise RtpError(f"RTP version {first >> 6}")
    offset = HEADER_SIZE + 4 * (first & 0x0F)
    if first & 0x10:
        if len(data) < offset + 4:
            raise RtpError("header extension cut short")
        _, words = _EXTENSION.unpack_from(data, offset)
        offset += 4 + 4 * words
    if offset > len(data):
        raise RtpError("header longer than the datagram")
    return offset


def payload_bounds(data: bytes) -> tuple[int, int]:
    """(start, end) of the payload in an RTP datagram: after the header, before any padding."""
    start = payload_offset(data)
    end = len(data)
    if data[0] & 0x20:
        padding = data[-1]
        if padding == 0 or start + padding > end:
            raise RtpError(f"bad padding count {padding}")
        end -= padding
    return start, end


def parse_rtp(data: bytes) -> RtpPacket:
    """Parse one RTP datagram (RFC 3550 §5.1, §5.3.1)."""
    offset, end = payload_bounds(data)
    first, second, sequence, timestamp, ssrc = HEADER.unpack_from(data)
    count = first & 0x0F
    csrcs = struct.unpack_from(f"!{count}I", data, HEADER_SIZE) if count else ()
    extension = None
    if first & 0x10:
        at = HEADER_SIZE + 4 * count
        profile, words = _EXTENSION.unpack_from(data, at)
        extension = (profile, bytes(data[at + 4:at + 4 + 4 * words]))
    padding = len(data) - end
    return RtpPacket(second & 0x7F, sequence, timestamp, ssrc, bytes(data[offset:end]),
                     bool(second & 0x80), tuple(csrcs), extension, padding)


def is_rtcp(data: bytes) -> bool:
    """Whether a datagram on a multiplexed port is RTCP: its second octet is 192-223 (RFC 5761 §4)."""
    return len(data) >= 2 and 192 <= data[1] <= 223


# -- RTCP -----------------------------------------------------------------------------------------


@attrs.frozen
class ReportBlock:
    """A reception report (RFC 3550 §6.4.1) about the source ``ssrc``.

    ``jitter`` is in RTP timestamp units; ``last_sr`` is the middle 32 bits of
    the NTP time of the last SR received from that source, ``delay_since_last_sr``
    in units of 1/65536 s.
    """

    ssrc: int
    fraction_lost: int  # of 256
    cumulative_lost: int  # signed 24 bits: duplicates can make it negative
    highest_sequence: int  # extended: cycles << 16 | sequence
    jitter: int
    last_sr: int
    delay_since_last_sr: int

    def to_bytes(self) -> bytes:
        lost = (self.cumulative_lost & 0xFFFFFF).to_bytes(3, "big")
        return _REPORT_BLOCK.pack(self.ssrc, self.fraction_lost, lost, self.highest_sequence,
                                  self.jitter, self.last_sr, self.delay_since_last_sr)


@attrs.frozen
class SenderInfo:
    ntp_timestamp: int  # 64-bit NTP format
    rtp_timestamp: int
    packet_count: int
    octet_count: int

    @property
    def ntp_middle(self) -> int:
        """The middle 32 bits of the NTP time: what a report block's ``last_sr`` echoes."""
        return (self.ntp_timestamp >> 16) & 0xFFFFFFFF


@attrs.frozen
class RtcpReport:
    """An SR (``sender`` set) or RR (``sender`` None) from ``ssrc`` (RFC 3550 §6.4)."""

    ssrc: int
    blocks: tuple[ReportBlock, ...] = ()
    sender: SenderInfo | None = None

    def to_bytes(self) -> bytes:
        if len(self.blocks) > 31:
            raise RtpError("at most 31 report blocks per packet")
        body = struct.pack("!I", self.ssrc)
        if self.sender is not None:
            s = self.sender
            body += _SENDER_INFO.pack(s.ntp_timestamp >> 32, s.ntp_timestamp & 0xFFFFFFFF,
                                      s.rtp_timestamp, s.packet_count, s.octet_count)
        body += b"".join(block.to_bytes() for block in self.blocks)
        kind = RTCP_SR if self.sender is not None else RTCP_RR
        return _RTCP_HEADER.pack(RTP_VERSION << 6 | len(self.blocks), kind, len(body) // 4) + body


@attrs.frozen
class RtcpOther:
    """An RTCP packet pbxd does not interpret (SDES, BYE, APP, feedback ...), kept as its type and body."""

    packet_type: int
    count: int
    body: bytes


RtcpPacket = RtcpReport | RtcpOther


def parse_rtcp(data: bytes) -> list[RtcpPacket]:
    """Parse a compound RTCP datagram (RFC 3550 §6.1) into its packets."""
    if len(data) < 4:
        raise RtpError("RTCP datagram shorter than a header")
    packets: list[RtcpPacket] = []
    offset = 0
    while offset < len(data):
        if len(data) - offset < 4:
            raise RtpError("trailing octets after the last RTCP packet")
        first, packet_type, words = _RTCP_HEADER.unpack_from(data, offset)
        if first >> 6 != RTP_VERSION:
            raise RtpError(f"RTCP version {first >> 6}")
        end = offset + 4 + 4 * words
        if end > len(data):
            raise RtpError("RTCP length beyond the datagram")
        body = data[offset + 4:end]
        if first & 0x20:  # padding: only the last packet may have it (§6.4.1)
            if end != len(data) or not body or not 0 < body[-1] <= len(body):
                raise RtpError("bad RTCP padding")
            body = body[:-body[-1]]
        count = first & 0x1F
        if packet_type in (RTCP_SR, RTCP_RR):
            packets.append(_parse_report(packet_type, count, bytes(body)))
        else:
            packets.append(RtcpOther(packet_type, count, bytes(body)))
        offset = end
    return packets


def _parse_report(packet_type: int, count: int, body: bytes) -> RtcpReport:
    sender_size = _SENDER_INFO.size if packet_type == RTCP_SR else 0
    if len(body) < 4 + sender_size + count * _REPORT_BLOCK.size:
        raise RtpError(f"RTCP {'SR' if sender_size else 'RR'} shorter than its {count} report blocks")
    (ssrc,) = struct.unpack_from("!I", body)
    sender = None
    if sender_size:
        msw, lsw, rtp_timestamp, packets, octets = _SENDER_INFO.unpack_from(body, 4)
        sender = SenderInfo(msw << 32 | lsw, rtp_timestamp, packets, octets)
    blocks = []
    for index in range(count):
        source, fraction, lost, highest, jitter, last_sr, delay = _REPORT_BLOCK.unpack_from(
            body, 4 + sender_size + index * _REPORT_BLOCK.size)
        cumulative = int.from_bytes(lost, "big", signed=True)
        blocks.append(ReportBlock(source, fraction, cumulative, highest, jitter, last_sr, delay))
    return RtcpReport(ssrc, tuple(blocks), sender)
