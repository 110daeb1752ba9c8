"""RFC 4733 DTMF: one digit per event whatever the duplicates and losses; packet generation."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pbxd.media.dtmf import DtmfDetector, DtmfDigit, TelephoneEvent, digit_from_info, dtmf_packets
from pbxd.media.rtp import RtpError, parse_rtp


def feed_all(detector: DtmfDetector, packets: list) -> list[DtmfDigit]:
    out = []
    for packet in packets:
        out += detector.feed(packet.timestamp, packet.payload)
    return out


def test_generated_digit_has_marker_growing_durations_and_three_ends() -> None:
    packets = dtmf_packets("5", payload_type=101, ssrc=9, sequence=65534, timestamp=800, duration_ms=100)
    events = [TelephoneEvent.parse(p.payload) for p in packets]
    assert [p.marker for p in packets] == [True] + [False] * 6
    assert [p.sequence for p in packets] == [65534, 65535, 0, 1, 2, 3, 4]
    assert {p.timestamp for p in packets} == {800}
    assert [e.duration for e in events] == [160, 320, 480, 640, 800, 800, 800]
    assert [e.end for e in events] == [False] * 4 + [True] * 3
    assert {e.event for e in events} == {5} and events[0].digit == "5"
    assert parse_rtp(packets[0].to_bytes()) == packets[0]


def test_one_digit_per_event_despite_three_end_packets() -> None:
    detector = DtmfDetector()
    packets = dtmf_packets("#", payload_type=101, ssrc=1, sequence=0, timestamp=0, duration_ms=200)
    packets += dtmf_packets("#", payload_type=101, ssrc=1, sequence=20, timestamp=4000)
    digits = feed_all(detector, packets)
    assert digits == [DtmfDigit("#", 200, 0), DtmfDigit("#", 100, 4000)]
    assert detector.flush() == []


def test_late_duplicate_of_a_reported_event_is_ignored() -> None:
    detector = DtmfDetector()
    first = dtmf_packets("1", payload_type=101, ssrc=1, sequence=0, timestamp=0)
    second = dtmf_packets("2", payload_type=101, ssrc=1, sequence=10, timestamp=1600)
    assert [d.digit for d in feed_all(detector, first + second + first[-1:])] == ["1", "2"]


def test_lost_end_packets_still_give_the_digit() -> None:
    detector = DtmfDetector()
    first = dtmf_packets("7", payload_type=101, ssrc=1, sequence=0, timestamp=0)[:-3]
    second = dtmf_packets("8", payload_type=101, ssrc=1, sequence=10, timestamp=1600)[:2]
    assert feed_all(detector, first) == []
    assert feed_all(detector, second) == [DtmfDigit("7", 0, 0, ended=False)]
    assert detector.flush() == [DtmfDigit("8", 0, 1600, ended=False)]


def test_non_digit_events_are_not_reported_and_letters_are() -> None:
    detector = DtmfDetector()
    assert detector.feed(0, TelephoneEvent(16, True, 10, 800).to_bytes()) == []
    assert [d.digit for d in feed_all(detector, dtmf_packets("d", payload_type=101, ssrc=1, sequence=0,
                                                               timestamp=8000))] == ["D"]


def test_bad_input() -> None:
    with pytest.raises(ValueError):
        dtmf_packets("x", payload_type=101, ssrc=1, sequence=0, timestamp=0)
    with pytest.raises(RtpError):
        DtmfDetector().feed(0, b"\x01\x80")


@given(st.lists(st.tuples(st.integers(0, 2**32 - 1), st.binary(max_size=8)), max_size=30))
def test_arbitrary_payloads_raise_only_rtp_error(packets: list[tuple[int, bytes]]) -> None:
    detector = DtmfDetector()
    for timestamp, payload in packets:
        try:
            detector.feed(timestamp, payload)
        except RtpError:
            pass


@pytest.mark.parametrize(
    ("content_type", "body", "digit"),
    [
        ("application/dtmf-relay", b"Signal=5\r\nDuration=160\r\n", DtmfDigit("5", 160, 0)),
        ("Application/DTMF-Relay; charset=x", b"signal = *\nduration=100", DtmfDigit("*", 100, 0)),
        ("application/dtmf-relay", b"Signal=11\r\nDuration=250\r\n", DtmfDigit("#", 250, 0)),
        ("application/dtmf-relay", b"Signal=d\r\n", DtmfDigit("D", 0, 0)),
        ("application/dtmf", b"7", DtmfDigit("7", 0, 0)),
        ("application/dtmf-relay", b"Signal=16\r\nDuration=100\r\n", None),  # flash
        ("application/dtmf-relay", b"Duration=100", None),
        ("application/dtmf-relay", b"Signal=55\r\nDuration=99999999999", None),
        ("application/dtmf", b"\xff\xfe", None),
        ("text/plain", b"Signal=5", None),
    ],
)
def test_sip_info_bodies(content_type: str, body: bytes, digit: DtmfDigit | None) -> None:
    assert digit_from_info(content_type, body) == digit
