"""Session descriptions (RFC 4566) and the offer/answer rules pbxd applies (RFC 3264).

A description is kept as its lines, in order, so that whatever pbxd does not
interpret leaves exactly as it came. Typed views (origin, connection, codecs,
direction, ...) are read from the lines when asked for, and the helpers that
change a description return a new one with only the lines they own replaced:
the media relay rewrites addresses and ports with ``rewrite_media`` and
``with_origin`` and touches nothing else. The one normalized line is m=,
rebuilt from its fields (single spaces).

Errors: a body that is not well-formed SDP raises ``SdpError``, a
``SipParseError`` with status 400 (RFC 3261 §21.4.1: the message is
malformed). 488 Not Acceptable Here (§21.4.26) is for well-formed offers pbxd
cannot take, such as no codec in common (``common_codecs``): the caller's call.

Strict where the RFC is: v=0 first, exactly one o= and s=, only the RFC 4566
type letters (§5: a parser must refuse a description with a type it does not
know), only i= c= b= k= a= inside a media section, and a c= for every stream
that is not rejected (§5.7). The lines pbxd reads (o= c= b= t= m= and the
attributes rtpmap fmtp ptime maxptime rtcp and the directions) are checked
when the description is parsed, so their accessors never fail later.
Lenient where phones are: LF line ends as well as CRLF, session-level lines
in any order, an empty s=, no t= at all.
"""

from __future__ import annotations

import enum
import ipaddress
import re
from typing import Callable, Iterable, Sequence

import attrs

from pbxd.sip.errors import SipParseError

Line = tuple[str, str]

SDP_CONTENT_TYPE = "application/sdp"


class SdpError(SipParseError):
    """A session description that is not well-formed (answered 400, see the module docstring)."""

    def __init__(self, reason: str, status: int | None = 400) -> None:
        super().__init__(f"malformed SDP: {reason}", status)


# token-char of RFC 4566 §9: printable ASCII but for space and "()",/:;<=>?@[\]
_TOKEN = r"[!#$%&'*+\-.0-9A-Z^_`a-z{|}~]+"
_TOKEN_RE = re.compile(_TOKEN)
# proto = token *("/" token)
_PROTO_RE = re.compile(rf"{_TOKEN}(?:/{_TOKEN})*")
_DIGITS = re.compile(r"[0-9]{1,20}")
_BANDWIDTH = re.compile(rf"({_TOKEN}):([0-9]{{1,20}})")
_RTPMAP = re.compile(r"([0-9]{1,3}) ([^\s/]+)/([0-9]{1,10})(?:/(\S+))?\s*")
_FMTP = re.compile(r"(\S+)(?: (.*))?")
_PACKET_TIME = re.compile(r"[0-9]{1,10}(?:\.[0-9]{1,10})?")
_RTCP = re.compile(r"([0-9]{1,5})(?: (\S+) (\S+) (\S+))?")
_CAPABILITY = re.compile(r"([^\s/]+)(?:/([0-9]{1,10})(?:/([0-9]{1,3}))?)?")

_SESSION_TYPES = frozenset("vosiuepcbtrzka")
_MEDIA_TYPES = frozenset("icbka")
# RFC 4566 §5 order of the session part: c= goes after these and before b= t= ...
_BEFORE_CONNECTION = frozenset("vosiuep")

# RFC 3551 Tables 4 and 5: payload types with a fixed encoding, usable without a=rtpmap.
STATIC_PAYLOAD_TYPES: dict[int, tuple[str, int, int]] = {
    0: ("PCMU", 8000, 1), 3: ("GSM", 8000, 1), 4: ("G723", 8000, 1), 5: ("DVI4", 8000, 1),
    6: ("DVI4", 16000, 1), 7: ("LPC", 8000, 1), 8: ("PCMA", 8000, 1), 9: ("G722", 8000, 1),
    10: ("L16", 44100, 2), 11: ("L16", 44100, 1), 12: ("QCELP", 8000, 1), 13: ("CN", 8000, 1),
    14: ("MPA", 90000, 1), 15: ("G728", 8000, 1), 16: ("DVI4", 11025, 1), 17: ("DVI4", 22050, 1),
    18: ("G729", 8000, 1), 25: ("CelB", 90000, 1), 26: ("JPEG", 90000, 1), 28: ("nv", 90000, 1),
    31: ("H261", 90000, 1), 32: ("MPV", 90000, 1), 33: ("MP2T", 90000, 1), 34: ("H263", 90000, 1),
}

# Formats that ride along with a codec but carry no media of their own: DTMF
# (RFC 4733), comfort noise (RFC 3389), redundancy and FEC (RFC 2198, 5109),
# retransmission (RFC 4588). An offer whose only common formats are these has
# no codec in common.
AUXILIARY_ENCODINGS = frozenset({"telephone-event", "cn", "red", "ulpfec", "flexfec", "rtx"})

# RFC 8839 §5: the attributes of ICE, dropped when pbxd relays the media.
_ICE_ATTRIBUTES = frozenset({"candidate", "remote-candidates", "end-of-candidates"})


class Direction(enum.Enum):
    """The direction attributes of RFC 4566 §6 / RFC 3264 §5.1, from the describing side."""

    SENDRECV = "sendrecv"
    SENDONLY = "sendonly"
    RECVONLY = "recvonly"
    INACTIVE = "inactive"

    @property
    def sends(self) -> bool:
        return self in (Direction.SENDRECV, Direction.SENDONLY)

    @property
    def receives(self) -> bool:
        return self in (Direction.SENDRECV, Direction.RECVONLY)

    @classmethod
    def of(cls, sends: bool, receives: bool) -> Direction:
        if sends:
            return cls.SENDRECV if receives else cls.SENDONLY
        return cls.RECVONLY if receives else cls.INACTIVE


_DIRECTIONS = frozenset(d.value for d in Direction)


# -- the typed lines --------------------------------------------------------------------------------


@attrs.frozen
class Origin:
    """o=<username> <sess-id> <sess-version> <nettype> <addrtype> <unicast-address> (RFC 4566 §5.2)."""

    username: str
    session_id: str
    version: int
    address: str
    addrtype: str = "IP4"
    nettype: str = "IN"

    @classmethod
    def parse(cls, value: str) -> Origin:
        parts = value.split()
        if len(parts) != 6 or not _is_version(parts[2]):
            raise SdpError(f"bad o= line {value[:80]!r}")
        username, session_id, version, nettype, addrtype, address = parts
        return cls(username, session_id, int(version), address, addrtype, nettype)

    def __str__(self) -> str:
        return f"{self.username} {self.session_id} {self.version} {self.nettype} {self.addrtype} {self.address}"


def _is_version(text: str) -> bool:
    # Session versions are often NTP timestamps; up to 64 digits is generous
    # and still a number int() converts at once.
    return 0 < len(text) <= 64 and text.isascii() and text.isdigit()


@attrs.frozen
class Connection:
    """c=<nettype> <addrtype> <connection-address> (RFC 4566 §5.7).

    ``address`` is as written, with any multicast /ttl/count suffix; ``host``
    is the address alone.
    """

    address: str
    addrtype: str = "IP4"
    nettype: str = "IN"

    @classmethod
    def parse(cls, value: str) -> Connection:
        parts = value.split()
        if len(parts) != 3:
            raise SdpError(f"bad c= line {value[:80]!r}")
        nettype, addrtype, address = parts
        return cls(address, addrtype, nettype)

    @classmethod
    def for_address(cls, address: str) -> Connection:
        """The c= for a unicast address: IP6 for an IPv6 literal (brackets dropped), else IP4."""
        bare = address[1:-1] if address.startswith("[") and address.endswith("]") else address
        try:
            version = ipaddress.ip_address(bare).version
        except ValueError:
            version = 4  # a host name: RFC 4566 allows an FQDN, IP4 is the usual type
        return cls(bare, "IP6" if version == 6 else "IP4")

    @property
    def host(self) -> str:
        return self.address.partition("/")[0]

    def __str__(self) -> str:
        return f"{self.nettype} {self.addrtype} {self.address}"


@attrs.frozen
class RtpMap:
    """a=rtpmap:<payload type> <encoding name>/<clock rate>[/<encoding parameters>]."""

    payload: int
    encoding: str
    clock_rate: int
    parameters: str | None = None

    @classmethod
    def parse(cls, value: str) -> RtpMap:
        match = _RTPMAP.fullmatch(value)
        if match is None or int(match.group(1)) > 127:
            raise SdpError(f"bad rtpmap {value[:80]!r}")
        payload, encoding, rate, parameters = match.groups()
        return cls(int(payload), encoding, int(rate), parameters)

    def __str__(self) -> str:
        tail = "" if self.parameters is None else f"/{self.parameters}"
        return f"{self.payload} {self.encoding}/{self.clock_rate}{tail}"


@attrs.frozen
class Codec:
    """One RTP payload format of a media section: its number, encoding and fmtp."""

    payload: int
    name: str
    clock_rate: int
    channels: int = 1
    fmtp: str | None = None

    @property
    def is_auxiliary(self) -> bool:
        """DTMF, comfort noise, redundancy, FEC or retransmission: no media of its own."""
        return self.name.lower() in AUXILIARY_ENCODINGS

    @property
    def key(self) -> tuple[str, int, int]:
        """What two sides compare to decide they mean the same codec (payload numbers may differ)."""
        return (self.name.lower(), self.clock_rate, self.channels)


@attrs.frozen
class Rtcp:
    """a=rtcp:<port> [<nettype> <addrtype> <address>] (RFC 3605)."""

    port: int
    connection: Connection | None = None


def _split_attribute(value: str) -> tuple[str, str | None]:
    name, colon, rest = value.partition(":")
    return name, rest if colon else None


def _check_attribute(value: str) -> None:
    name, rest = _split_attribute(value)
    if not _TOKEN_RE.fullmatch(name):
        raise SdpError(f"bad attribute name in a={value[:80]!r}")
    if name in _DIRECTIONS:
        if rest is not None:
            raise SdpError(f"a={name} takes no value")
        return
    if rest is None:
        if name in ("rtpmap", "fmtp", "ptime", "maxptime", "rtcp"):
            raise SdpError(f"a={name} needs a value")
        return
    if name == "rtpmap":
        RtpMap.parse(rest)
    elif name == "fmtp":
        if not _FMTP.fullmatch(rest):
            raise SdpError(f"bad fmtp {rest[:80]!r}")
    elif name in ("ptime", "maxptime"):
        if not _PACKET_TIME.fullmatch(rest):
            raise SdpError(f"bad {name} {rest[:80]!r}")
    elif name == "rtcp":
        match = _RTCP.fullmatch(rest)
        if match is None or int(match.group(1)) > 65535:
            raise SdpError(f"bad rtcp {rest[:80]!r}")


def _check_line(kind: str, value: str) -> None:
    if kind == "v":
        if value != "0":
            raise SdpError(f"unsupported version v={value[:20]}")
    elif kind == "o":
        Origin.parse(value)
    elif kind == "c":
        Connection.parse(value)
    elif kind == "b":
        if not _BANDWIDTH.fullmatch(value):
            raise SdpError(f"bad b= line {value[:80]!r}")
    elif kind == "t":
        times = value.split()
        if len(times) != 2 or not all(_DIGITS.fullmatch(t) for t in times):
            raise SdpError(f"bad t= line {value[:80]!r}")
    elif kind == "a":
        _check_attribute(value)


# -- sections ------------------------------------------------------------------------------------------


class _Section:
    """What the session part and a media section share: their lines and the views over them."""

    __slots__ = ()
    lines: tuple[Line, ...]

    def values(self, kind: str) -> list[str]:
        """The values of every line of one type letter, in order."""
        return [value for k, value in self.lines if k == kind]

    @property
    def attributes(self) -> list[tuple[str, str | None]]:
        """(name, value) of every a= line; flags have the value None."""
        return [_split_attribute(value) for kind, value in self.lines if kind == "a"]

    def has_attribute(self, name: str) -> bool:
        return any(n == name for n, _ in self.attributes)

    def attribute(self, name: str) -> str | None:
        """The value of the first a=name:value, or None (absent, or a flag)."""
        for n, value in self.attributes:
            if n == name:
                return value
        return None

    def attribute_values(self, name: str) -> list[str]:
        return [value for n, value in self.attributes if n == name and value is not None]

    @property
    def connection(self) -> Connection | None:
        """The c= of this level, if it has one."""
        values = self.values("c")
        return Connection.parse(values[0]) if values else None

    @property
    def bandwidths(self) -> list[tuple[str, int]]:
        return [(m.group(1), int(m.group(2))) for m in map(_BANDWIDTH.fullmatch, self.values("b")) if m]

    @property
    def direction(self) -> Direction | None:
        """The direction attribute written at this level, if any (see ``direction_of``)."""
        for name, _ in self.attributes:
            if name in _DIRECTIONS:
                return Direction(name)
        return None


@attrs.frozen
class Media(_Section):
    """A media section: the m= line's fields and the lines after it.

    m=<kind> <port>[/<port_count>] <proto> <format> ... (RFC 4566 §5.14).
    """

    kind: str
    port: int
    proto: str
    formats: tuple[str, ...]
    lines: tuple[Line, ...] = ()
    port_count: int | None = None

    @property
    def is_rejected(self) -> bool:
        """Port 0: the stream is refused or removed (RFC 3264 §6, §8.2)."""
        return self.port == 0

    @property
    def is_rtp(self) -> bool:
        return "RTP/" in self.proto.upper()

    def m_line(self) -> str:
        port = str(self.port) if self.port_count is None else f"{self.port}/{self.port_count}"
        return " ".join([self.kind, port, self.proto, *self.formats])

    @property
    def rtpmaps(self) -> dict[int, RtpMap]:
        maps: dict[int, RtpMap] = {}
        for value in self.attribute_values("rtpmap"):
            rtpmap = RtpMap.parse(value)
            maps.setdefault(rtpmap.payload, rtpmap)
        return maps

    @property
    def fmtps(self) -> dict[str, str]:
        """Format -> the parameters of its a=fmtp (the first one, if repeated)."""
        params: dict[str, str] = {}
        for value in self.attribute_values("fmtp"):
            fmt, _, parameters = value.partition(" ")
            params.setdefault(fmt, parameters)
        return params

    def fmtp(self, fmt: int | str) -> str | None:
        """The parameters of a=fmtp for one format, or None."""
        return self.fmtps.get(str(fmt))

    @property
    def codecs(self) -> tuple[Codec, ...]:
        """The RTP payload formats in the m= line's order (preference order, RFC 3264 §5.1).

        Static payload types need no rtpmap (RFC 3551); a dynamic one without
        an rtpmap names no known codec and is left out. Empty for a section
        that is not RTP.
        """
        if not self.is_rtp:
            return ()
        maps = self.rtpmaps
        fmtps = self.fmtps
        codecs = []
        for fmt in self.formats:
            payload = int(fmt)
            rtpmap = maps.get(payload)
            if rtpmap is not None:
                params = rtpmap.parameters
                channels = int(params) if params is not None and _DIGITS.fullmatch(params) else 1
                name, rate = rtpmap.encoding, rtpmap.clock_rate
            elif payload in STATIC_PAYLOAD_TYPES:
                name, rate, channels = STATIC_PAYLOAD_TYPES[payload]
            else:
                continue
            codecs.append(Codec(payload, name, rate, channels, fmtps.get(fmt)))
        return tuple(codecs)

    @property
    def telephone_events(self) -> tuple[Codec, ...]:
        """The RFC 4733 telephone-event formats (one per clock rate offered)."""
        return tuple(c for c in self.codecs if c.name.lower() == "telephone-event")

    @property
    def ptime(self) -> float | None:
        value = self.attribute("ptime")
        return float(value) if value is not None else None

    @property
    def rtcp(self) -> Rtcp | None:
        value = self.attribute("rtcp")
        if value is None:
            return None
        match = _RTCP.fullmatch(value)
        assert match is not None  # checked when parsed
        port, nettype, addrtype, address = match.groups()
        return Rtcp(int(port), Connection(address, addrtype, nettype) if address else None)

    @property
    def rtcp_mux(self) -> bool:
        """RTP and RTCP on one port (RFC 5761)."""
        return self.has_attribute("rtcp-mux")


@attrs.frozen
class SessionDescription(_Section):
    """A whole SDP body: the session-level lines (v= first) and the media sections."""

    lines: tuple[Line, ...]
    media: tuple[Media, ...] = ()

    @property
    def origin(self) -> Origin:
        return Origin.parse(self.values("o")[0])

    @property
    def name(self) -> str:
        return self.values("s")[0]

    def __str__(self) -> str:
        out = [f"{kind}={value}\r\n" for kind, value in self.lines]
        for media in self.media:
            out.append(f"m={media.m_line()}\r\n")
            out += [f"{kind}={value}\r\n" for kind, value in media.lines]
        return "".join(out)

    def to_bytes(self) -> bytes:
        return str(self).encode("utf-8")

    def __bytes__(self) -> bytes:
        return self.to_bytes()


# -- parsing -------------------------------------------------------------------------------------------


def parse_sdp(data: bytes | str) -> SessionDescription:
    """Parse an SDP body. Raises ``SdpError`` (400) and nothing else for malformed input."""
    if isinstance(data, bytes):
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as error:
            raise SdpError(f"not UTF-8 ({error.reason})") from None
    else:
        text = data
    raw_lines = text.split("\n")
    while raw_lines and raw_lines[-1] in ("", "\r"):
        raw_lines.pop()  # the line end of the last line, and blank lines after it
    if not raw_lines:
        raise SdpError("empty body")
    session: list[Line] = []
    sections: list[tuple[tuple[str, int, int | None, str, tuple[str, ...]], list[Line]]] = []
    current = session
    for number, raw in enumerate(raw_lines, 1):
        line = raw[:-1] if raw.endswith("\r") else raw
        kind, value = line[:1], line[2:]
        if line[1:2] != "=" or not "a" <= kind <= "z":
            raise SdpError(f"line {number} is not <type>=<value>: {line[:40]!r}")
        if "\r" in value or "\x00" in value:
            raise SdpError(f"line {number} holds a CR or NUL")
        if kind == "m":
            current = []
            sections.append((_parse_m_line(value), current))
            continue
        allowed = _MEDIA_TYPES if sections else _SESSION_TYPES
        if kind not in allowed:
            where = "a media section" if sections else "the session part"
            raise SdpError(f"line {number}: {kind}= does not belong in {where}")
        _check_line(kind, value)
        current.append((kind, value))
    media = tuple(
        Media(kind, port, proto, formats, tuple(lines), port_count)
        for (kind, port, port_count, proto, formats), lines in sections
    )
    sdp = SessionDescription(tuple(session), media)
    _check_structure(sdp)
    return sdp


def _parse_m_line(value: str) -> tuple[str, int, int | None, str, tuple[str, ...]]:
    parts = value.split()
    if len(parts) < 3:
        raise SdpError(f"bad m= line {value[:80]!r}")
    kind, port_text, proto, *formats = parts
    port_text, slash, count_text = port_text.partition("/")
    if not _TOKEN_RE.fullmatch(kind) or not _PROTO_RE.fullmatch(proto):
        raise SdpError(f"bad m= line {value[:80]!r}")
    if not _DIGITS.fullmatch(port_text) or int(port_text) > 65535:
        raise SdpError(f"bad port in m= line {value[:80]!r}")
    port = int(port_text)
    port_count = None
    if slash:
        if not _DIGITS.fullmatch(count_text) or not 0 < int(count_text) <= 65535:
            raise SdpError(f"bad port count in m= line {value[:80]!r}")
        port_count = int(count_text)
    if not formats and port != 0:
        raise SdpError(f"m= line without formats {value[:80]!r}")
    rtp = "RTP/" in proto.upper()
    for fmt in formats:
        if not _TOKEN_RE.fullmatch(fmt) or rtp and not (fmt.isdigit() and len(fmt) <= 3 and int(fmt) <= 127):
            raise SdpError(f"bad format {fmt[:20]!r} in m= line")
    return kind, port, port_count, proto, tuple(formats)


def _check_structure(sdp: SessionDescription) -> None:
    if sdp.lines[:1] != (("v", "0"),):
        raise SdpError("the first line must be v=0")
    for kind in "vos":
        count = len(sdp.values(kind))
        if count != 1:
            raise SdpError(f"{count} {kind}= lines; the session part needs exactly one")
    if sdp.connection is None:
        for index, media in enumerate(sdp.media):
            if not media.is_rejected and media.connection is None:
                raise SdpError(f"no c= for media section {index} and none for the session")


# -- offer/answer helpers --------------------------------------------------------------------------------


def direction_of(sdp: SessionDescription, media: Media) -> Direction:
    """The direction in force for a stream: its own, else the session's, else sendrecv (RFC 3264 §5.1)."""
    return media.direction or sdp.direction or Direction.SENDRECV


def connection_of(sdp: SessionDescription, media: Media) -> Connection | None:
    """The c= in force for a stream: its own, else the session's (RFC 4566 §5.7)."""
    return media.connection or sdp.connection


def is_hold(sdp: SessionDescription) -> bool:
    """Whether the describing side holds the call (RFC 3264 §8.4).

    True when there is a stream that is not rejected and every such stream is
    sendonly or inactive, or has the connection address 0.0.0.0 of RFC 2543
    style hold. Under ICE 0.0.0.0 only means "no candidate yet" (Trickle
    ICE, RFC 8838), so it does not count where ICE credentials are present.
    """
    active = [m for m in sdp.media if not m.is_rejected]
    return bool(active) and all(_is_held(sdp, m) for m in active)


def _is_held(sdp: SessionDescription, media: Media) -> bool:
    if not direction_of(sdp, media).receives:
        return True
    connection = connection_of(sdp, media)
    if connection is None or connection.host != "0.0.0.0":
        return False
    return not (media.has_attribute("ice-ufrag") or sdp.has_attribute("ice-ufrag"))


def answer_direction(offer: Direction, want: Direction = Direction.SENDRECV) -> Direction:
    """The direction to answer an offered stream with (RFC 3264 §6.1).

    The answerer sends only what the offerer will receive and receives only
    what it sends; ``want`` is what the answerer would like on its own
    (sendonly when it puts the call on hold, for instance).
    """
    return Direction.of(sends=want.sends and offer.receives, receives=want.receives and offer.sends)


def with_direction(sdp: SessionDescription, direction: Direction) -> SessionDescription:
    """The description with ``direction`` on every media section and none at session level.

    An existing direction line is replaced where it stood; otherwise the
    attribute is added at the end of the section.
    """
    line = ("a", direction.value)
    media = tuple(attrs.evolve(m, lines=_replace_lines(m.lines, _is_direction, [line], append=True)) for m in sdp.media)
    return SessionDescription(_replace_lines(sdp.lines, _is_direction, []), media)


def with_origin(sdp: SessionDescription, origin: Origin) -> SessionDescription:
    """The description with another o= line (a B2BUA keeps one origin per leg, RFC 3264 §8)."""
    return attrs.evolve(sdp, lines=tuple(("o", str(origin)) if k == "o" else (k, v) for k, v in sdp.lines))


def bump_version(sdp: SessionDescription) -> SessionDescription:
    """The description with the o= version one higher, as every changed offer needs (RFC 3264 §8)."""
    origin = sdp.origin
    return with_origin(sdp, attrs.evolve(origin, version=origin.version + 1))


def rewrite_media(sdp: SessionDescription, address: str, ports: Sequence[int]) -> SessionDescription:
    """Point every stream at ``address`` and ``ports[i]`` (the media relay's), keeping the rest.

    The session c= is replaced (or added), and so is the c= of each section
    that has one; IPv6 literals get IP6. Codecs, their order and the other
    attributes stay. A rejected stream keeps port 0, and a port of 0 rejects
    one. a=rtcp lines are dropped: they name the old endpoint, and the relay's
    RTCP is on port + 1 (RFC 3550 §11) unless rtcp-mux is agreed.
    """
    if len(ports) != len(sdp.media):
        raise ValueError(f"{len(ports)} ports for {len(sdp.media)} media sections")
    for port in ports:
        if not 0 <= port <= 65535:
            raise ValueError(f"bad port {port}")
    connection = ("c", str(Connection.for_address(address)))
    session = sdp.lines
    if sdp.connection is None:
        at = next((i for i, (kind, _) in enumerate(session) if kind not in _BEFORE_CONNECTION), len(session))
        session = session[:at] + (connection,) + session[at:]
    else:
        session = _replace_lines(session, _is_connection, [connection])
    media = []
    for section, port in zip(sdp.media, ports):
        lines = _replace_lines(section.lines, _is_rtcp, [])
        if section.connection is not None:
            lines = _replace_lines(lines, _is_connection, [connection])
        media.append(attrs.evolve(section, port=0 if section.is_rejected else port, lines=lines))
    return SessionDescription(session, tuple(media))


def rejecting_answer(offer: bytes) -> bytes:
    """An answer to ``offer`` that rejects each of its streams (port 0), or b"" if it cannot be read."""
    try:
        sdp = parse_sdp(offer)
        return rewrite_media(sdp, "0.0.0.0", [0] * len(sdp.media)).to_bytes()
    except (SdpError, ValueError):
        return b""


def strip_ice(sdp: SessionDescription) -> SessionDescription:
    """The description without ICE attributes (RFC 8839), for media pbxd relays itself."""
    media = tuple(attrs.evolve(m, lines=_replace_lines(m.lines, _is_ice, [])) for m in sdp.media)
    return SessionDescription(_replace_lines(sdp.lines, _is_ice, []), media)


def common_codecs(offer: Media, supported: Media | Iterable[Codec | str]) -> list[Codec]:
    """The offered codecs the other side has, in the offer's order.

    ``supported`` is the other side's media section (an answer, or the offer
    of the other leg) or a list of capabilities: ``Codec`` objects or strings
    ``name[/rate[/channels]]`` such as ``"PCMU"`` or ``"opus/48000/2"``.
    Codecs match by encoding name (any case), clock rate and channels, not by
    payload number; fmtp parameters are not compared. An empty result, or
    one with only auxiliary formats (``Codec.is_auxiliary``), means 488.
    """
    if isinstance(supported, Media):
        wanted = [c.key for c in supported.codecs]
    else:
        wanted = [c.key if isinstance(c, Codec) else _capability(c) for c in supported]
    return [codec for codec in offer.codecs if any(_codec_matches(codec.key, w) for w in wanted)]


def restrict_codecs(sdp: SessionDescription, wanted: Sequence[str]) -> SessionDescription | None:
    """The description with only the ``wanted`` codecs in its audio streams, in ``wanted``'s order.

    For an offer pbxd sends on (to a trunk, say) that may carry only certain
    codecs. ``wanted`` holds capabilities as for ``common_codecs``
    (``name[/rate[/channels]]``, the name in any case); a static payload type
    without an rtpmap has its RFC 3551 name. In every audio RTP stream that is
    not rejected, the formats that match no entry are dropped with their
    rtpmap, fmtp and rtcp-fb lines, and the rest are listed in the order of
    ``wanted`` (RFC 3264 §5.1: an offer lists formats by preference; whoever
    wrote ``wanted`` chose it), those matching one entry in their own order.
    A dynamic payload type without an rtpmap names nothing and goes. Other
    streams (video, image, not RTP) are left as they are.

    A stream left without a voice codec (nothing, or only DTMF or comfort
    noise) is rejected with port 0 (RFC 3264 §8.2). None when no audio
    stream keeps a voice codec: nothing in common, a 488 (RFC 3264 §6). A
    description without an audio stream in use, or an empty ``wanted``,
    comes back unchanged.
    """
    capabilities = [_capability(text) for text in wanted]
    if not capabilities:
        return sdp
    media: list[Media] = []
    audio = kept = 0
    for section in sdp.media:
        if section.kind != "audio" or not section.is_rtp or section.is_rejected:
            media.append(section)
            continue
        audio += 1
        codecs = section.codecs
        formats = [str(codec.payload) for capability in capabilities
                   for codec in codecs if _codec_matches(codec.key, capability)]
        voice = any(not codec.is_auxiliary and str(codec.payload) in formats for codec in codecs)
        if not voice:
            media.append(attrs.evolve(section, port=0))
            continue
        kept += 1
        formats = list(dict.fromkeys(formats))
        dropped = set(section.formats) - set(formats)
        lines = tuple(line for line in section.lines if not _is_format_line(line, dropped))
        media.append(attrs.evolve(section, formats=tuple(formats), lines=lines))
    if audio and not kept:
        return None
    return SessionDescription(sdp.lines, tuple(media))


def _capability(text: str) -> tuple[str, int | None, int | None]:
    match = _CAPABILITY.fullmatch(text)
    if match is None:
        raise ValueError(f"bad codec capability {text!r} (name[/rate[/channels]])")
    name, rate, channels = match.groups()
    return name.lower(), int(rate) if rate else None, int(channels) if channels else None


def _codec_matches(key: tuple[str, int, int], wanted: tuple[str, int | None, int | None]) -> bool:
    return all(w is None or k == w for k, w in zip(key, wanted))


# -- line editing ------------------------------------------------------------------------------------------


def _attribute_name(line: Line) -> str | None:
    return line[1].partition(":")[0] if line[0] == "a" else None


def _is_direction(line: Line) -> bool:
    return _attribute_name(line) in _DIRECTIONS


def _is_rtcp(line: Line) -> bool:
    return _attribute_name(line) == "rtcp"


def _is_ice(line: Line) -> bool:
    name = _attribute_name(line)
    return name is not None and (name.startswith("ice-") or name in _ICE_ATTRIBUTES)


def _is_format_line(line: Line, formats: set[str]) -> bool:
    """An rtpmap, fmtp or rtcp-fb line of one of ``formats`` (payload type numbers)."""
    name = _attribute_name(line)
    return name in ("rtpmap", "fmtp", "rtcp-fb") and line[1].partition(":")[2].split(" ", 1)[0] in formats


def _is_connection(line: Line) -> bool:
    return line[0] == "c"


def _replace_lines(
    lines: tuple[Line, ...], matches: Callable[[Line], bool], new: list[Line], append: bool = False
) -> tuple[Line, ...]:
    """Drop the lines ``matches`` picks, putting ``new`` where the first of them stood.

    With none to replace, ``new`` goes at the end if ``append``, else nowhere.
    """
    out: list[Line] = []
    placed = False
    for line in lines:
        if matches(line):
            if not placed:
                out += new
                placed = True
        else:
            out.append(line)
    if not placed and append:
        out += new
    return tuple(out)
