"""Stream framing: Content-Length, keepalives, limits (RFC 3261 §18.3, RFC 5626 §3.5.1)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pbxd.sip.framing import FramingError, KeepalivePing, MessageFrame, StreamFramer
from pbxd.sip.message import parse_message


def options(body: bytes = b"", length: str | None = None, name: str = "Content-Length") -> bytes:
    header = (
        "OPTIONS sip:pbx.example.com SIP/2.0\r\n"
        "Via: SIP/2.0/TCP 192.0.2.1:5060;branch=z9hG4bK-frame\r\n"
        "From: <sip:alice@example.com>;tag=1\r\n"
        "To: <sip:pbx.example.com>\r\n"
        "Call-ID: frame-test\r\n"
        "CSeq: 1 OPTIONS\r\n"
        "Max-Forwards: 70\r\n"
    )
    if length is not None or name:
        header += f"{name}: {len(body) if length is None else length}\r\n"
    return header.encode() + b"\r\n" + body


def frames(events: list) -> list[bytes]:
    return [e.data for e in events if isinstance(e, MessageFrame)]


def test_one_message_in_one_piece() -> None:
    message = options(b"hello")
    events = StreamFramer().feed(message)
    assert events == [MessageFrame(message)]
    assert parse_message(events[0].data).body == b"hello"


def test_byte_at_a_time() -> None:
    message = options(b"v=0\r\n")
    framer = StreamFramer()
    events = []
    for i in range(len(message)):
        events += framer.feed(message[i : i + 1])
    assert events == [MessageFrame(message)]
    assert framer.buffered == 0


def test_several_messages_in_one_read_and_a_partial_tail() -> None:
    first, second, third = options(b"a"), options(b"bb"), options(b"ccc")
    framer = StreamFramer()
    events = framer.feed(first + second + third[:10])
    assert frames(events) == [first, second]
    assert frames(framer.feed(third[10:])) == [third]


def test_body_containing_blank_lines_is_taken_by_length() -> None:
    body = b"line\r\n\r\nmore\r\n\r\n"
    message = options(body)
    assert frames(StreamFramer().feed(message + options())) == [message, options()]


def test_compact_and_lowercase_content_length() -> None:
    for name in ("l", "content-length", "CONTENT-LENGTH"):
        message = options(b"xyz", name=name)
        assert frames(StreamFramer().feed(message)) == [message]


def test_folded_content_length_value() -> None:
    message = options(b"", name="").replace(b"\r\n\r\n", b"\r\nContent-Length:\r\n 4\r\n\r\n") + b"abcd"
    assert frames(StreamFramer().feed(message)) == [message]


def test_double_crlf_is_a_ping_single_crlf_ignored() -> None:
    framer = StreamFramer()
    assert framer.feed(b"\r\n\r\n") == [KeepalivePing()]
    message = options()
    # A single CRLF between messages (e.g. a pong) is skipped, not a ping.
    assert framer.feed(b"\r\n" + message) == [MessageFrame(message)]
    assert framer.feed(b"\r\n\r\n\r\n\r\n") == [KeepalivePing(), KeepalivePing()]


def test_ping_split_across_reads_is_still_one_ping() -> None:
    framer = StreamFramer()
    assert framer.feed(b"\r\n") == []
    assert framer.feed(b"\r") == []
    assert framer.feed(b"\n") == [KeepalivePing()]


def test_lone_crlf_then_message_is_not_a_ping() -> None:
    framer = StreamFramer()
    assert framer.feed(b"\r\n") == []
    message = options()
    assert framer.feed(message) == [MessageFrame(message)]


def test_missing_content_length_is_an_error_with_the_header() -> None:
    message = options(name="")
    events = StreamFramer().feed(message)
    assert len(events) == 1 and isinstance(events[0], FramingError)
    assert "Content-Length" in events[0].reason
    assert events[0].header == message


@pytest.mark.parametrize("value", ["abc", "-1", "1.5", "99999999999", ""])
def test_bad_content_length(value: str) -> None:
    events = StreamFramer().feed(options(length=value))
    assert isinstance(events[-1], FramingError)


def test_conflicting_content_lengths() -> None:
    message = options(b"ab").replace(b"\r\n\r\n", b"\r\nl: 5\r\n\r\n")
    events = StreamFramer().feed(message)
    assert isinstance(events[0], FramingError) and "conflicting" in events[0].reason


def test_message_over_the_size_limit() -> None:
    framer = StreamFramer(max_message_size=600)
    events = framer.feed(options(b"x" * 500))
    assert isinstance(events[0], FramingError) and "over 600" in events[0].reason
    assert events[0].status == 513 and events[0].header is not None


def test_endless_header_section_is_cut_off() -> None:
    framer = StreamFramer(max_header_size=1024)
    events: list = []
    for _ in range(100):
        events += framer.feed(b"X-Filler: " + b"y" * 50 + b"\r\n")
        if events:
            break
    assert isinstance(events[0], FramingError) and "header section" in events[0].reason


def test_after_an_error_the_framer_stays_closed() -> None:
    framer = StreamFramer()
    framer.feed(options(name=""))
    assert framer.failed
    assert framer.feed(options()) == []


def test_message_exactly_at_the_limit_is_accepted() -> None:
    message = options(b"")
    framer = StreamFramer(max_message_size=len(message))
    assert frames(framer.feed(message)) == [message]


@given(st.lists(st.integers(min_value=1, max_value=40), max_size=30))
def test_any_split_gives_the_same_frames(cuts: list[int]) -> None:
    stream = b"\r\n\r\n" + options(b"abc") + b"\r\n" + options(b"\r\n\r\n") + b"\r\n\r\n" + options()
    framer = StreamFramer()
    events: list = []
    position = 0
    for cut in cuts:
        events += framer.feed(stream[position : position + cut])
        position += cut
    events += framer.feed(stream[position:])
    assert events == [
        KeepalivePing(),
        MessageFrame(options(b"abc")),
        MessageFrame(options(b"\r\n\r\n")),
        KeepalivePing(),
        MessageFrame(options()),
    ]


@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_raise(data: bytes) -> None:
    framer = StreamFramer(max_message_size=200)
    for event in framer.feed(data) + framer.feed(data):
        assert isinstance(event, (MessageFrame, KeepalivePing, FramingError))
