"""Response routing (RFC 3261 §18.2.2, RFC 3581 §4) and Via stamping (§18.2.1)."""

from __future__ import annotations

import pytest

from pbxd.sip.errors import SipParseError
from pbxd.sip.headers import Via
from pbxd.sip.message import Request, parse_message
from pbxd.sip.routing import response_target, same_address, stamp_via
from pbxd.transport.target import Target


def request_with_via(via: str, extra_via: str | None = None) -> Request:
    lines = [
        "OPTIONS sip:pbx.example.com SIP/2.0",
        f"Via: {via}",
        *([f"Via: {extra_via}"] if extra_via else []),
        "From: <sip:alice@example.com>;tag=1",
        "To: <sip:pbx.example.com>",
        "Call-ID: routing-test",
        "CSeq: 1 OPTIONS",
        "Content-Length: 0",
    ]
    message = parse_message(("\r\n".join(lines) + "\r\n\r\n").encode())
    assert isinstance(message, Request)
    return message


# (Via as received, source of the request, top Via after stamping)
STAMP_CASES = [
    # sent-by equals the source address: nothing to add (§18.2.1)
    ("SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK1", Target("udp", "192.0.2.1", 5060),
     "SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK1"),
    # different address: received=
    ("SIP/2.0/UDP 10.0.0.5:5060;branch=z9hG4bK1", Target("udp", "192.0.2.1", 5060),
     "SIP/2.0/UDP 10.0.0.5:5060;branch=z9hG4bK1;received=192.0.2.1"),
    # a hostname always gets received=
    ("SIP/2.0/TCP alice.example.com;branch=z9hG4bK1", Target("tcp", "192.0.2.1", 40000),
     "SIP/2.0/TCP alice.example.com;branch=z9hG4bK1;received=192.0.2.1"),
    # rport flag: filled with the source port, received= added even if equal (RFC 3581 §4)
    ("SIP/2.0/UDP 192.0.2.1:5060;rport;branch=z9hG4bK1", Target("udp", "192.0.2.1", 5060),
     "SIP/2.0/UDP 192.0.2.1:5060;rport=5060;branch=z9hG4bK1;received=192.0.2.1"),
    ("SIP/2.0/UDP 10.0.0.5:5060;branch=z9hG4bK1;rport", Target("udp", "203.0.113.9", 61000),
     "SIP/2.0/UDP 10.0.0.5:5060;branch=z9hG4bK1;rport=61000;received=203.0.113.9"),
    # rport already carrying a value is left alone
    ("SIP/2.0/UDP 192.0.2.1:5060;rport=7000;branch=z9hG4bK1", Target("udp", "192.0.2.1", 5060),
     "SIP/2.0/UDP 192.0.2.1:5060;rport=7000;branch=z9hG4bK1"),
    # a forged received= is replaced by the real source
    ("SIP/2.0/UDP 10.0.0.5;received=1.2.3.4;branch=z9hG4bK1", Target("udp", "192.0.2.1", 5060),
     "SIP/2.0/UDP 10.0.0.5;received=192.0.2.1;branch=z9hG4bK1"),
    # IPv6: the same address spelled differently is the same; received= has no brackets
    ("SIP/2.0/UDP [0:0::1]:5060;branch=z9hG4bK1", Target("udp", "::1", 5060),
     "SIP/2.0/UDP [0:0::1]:5060;branch=z9hG4bK1"),
    ("SIP/2.0/UDP [2001:db8::5]:5060;rport;branch=z9hG4bK1", Target("udp", "::1", 5099),
     "SIP/2.0/UDP [2001:db8::5]:5060;rport=5099;branch=z9hG4bK1;received=::1"),
]


@pytest.mark.parametrize(("via", "source", "expected"), STAMP_CASES)
def test_stamp_via(via: str, source: Target, expected: str) -> None:
    request = request_with_via(via, extra_via="SIP/2.0/UDP 198.51.100.7;branch=z9hG4bKlower")
    stamp_via(request, source)
    assert request.get_all("via") == [expected, "SIP/2.0/UDP 198.51.100.7;branch=z9hG4bKlower"]
    assert request.via.branch == "z9hG4bK1"


def test_stamp_via_on_a_shared_via_line() -> None:
    request = request_with_via("SIP/2.0/UDP h.example.com;branch=z9hG4bKa, SIP/2.0/UDP 198.51.100.7;branch=z9hG4bKb")
    stamp_via(request, Target("udp", "192.0.2.1", 5060))
    assert [str(v) for v in request.vias] == [
        "SIP/2.0/UDP h.example.com;branch=z9hG4bKa;received=192.0.2.1",
        "SIP/2.0/UDP 198.51.100.7;branch=z9hG4bKb",
    ]


def test_stamped_via_parses_back() -> None:
    request = request_with_via("SIP/2.0/UDP [2001:db8::5];rport;branch=z9hG4bK1")
    stamp_via(request, Target("udp", "2001:db8::9", 5062))
    again = parse_message(request.to_bytes())
    assert again.via.received == "2001:db8::9" and again.via.rport == 5062


UDP_SOURCE = Target("udp", "203.0.113.9", 61000, local=("0.0.0.0", 5060))
TCP_SOURCE = Target("tcp", "203.0.113.9", 61000)
TLS_SOURCE = Target("tls", "203.0.113.9", 61000)

# (top Via of the response, source of the request, where the response goes)
ROUTE_CASES = [
    # reliable, connection gone: received at the sent-by port
    ("SIP/2.0/TCP 10.0.0.5:5070;branch=z9hG4bK1;received=203.0.113.9", TCP_SOURCE,
     Target("tcp", "203.0.113.9", 5070)),
    # reliable without received: the sent-by host, default port
    ("SIP/2.0/TCP 203.0.113.9;branch=z9hG4bK1", TCP_SOURCE, Target("tcp", "203.0.113.9", 5060)),
    ("SIP/2.0/TLS 203.0.113.9;branch=z9hG4bK1", TLS_SOURCE, Target("tls", "203.0.113.9", 5061)),
    # reliable ignores rport (RFC 3581 covers unreliable transports only)
    ("SIP/2.0/TCP 10.0.0.5;rport=61000;received=203.0.113.9;branch=z9hG4bK1", TCP_SOURCE,
     Target("tcp", "203.0.113.9", 5060)),
    # maddr: that address with the sent-by port or 5060
    ("SIP/2.0/UDP 10.0.0.5:5080;maddr=239.255.255.1;ttl=1;received=203.0.113.9;branch=z9hG4bK1", UDP_SOURCE,
     Target("udp", "239.255.255.1", 5080)),
    ("SIP/2.0/UDP 10.0.0.5;maddr=198.51.100.1;branch=z9hG4bK1", UDP_SOURCE, Target("udp", "198.51.100.1", 5060)),
    # unreliable with rport: received at rport (NAT traversal)
    ("SIP/2.0/UDP 10.0.0.5:5060;rport=61000;received=203.0.113.9;branch=z9hG4bK1", UDP_SOURCE,
     Target("udp", "203.0.113.9", 61000)),
    # unreliable with received only: received at the sent-by port, or 5060
    ("SIP/2.0/UDP 10.0.0.5:5070;received=203.0.113.9;branch=z9hG4bK1", UDP_SOURCE,
     Target("udp", "203.0.113.9", 5070)),
    ("SIP/2.0/UDP 10.0.0.5;received=203.0.113.9;branch=z9hG4bK1", UDP_SOURCE, Target("udp", "203.0.113.9", 5060)),
    # neither: the sent-by itself (a name is kept for resolution)
    ("SIP/2.0/UDP 203.0.113.9:5062;branch=z9hG4bK1", UDP_SOURCE, Target("udp", "203.0.113.9", 5062)),
    ("SIP/2.0/UDP Alice.Example.COM;branch=z9hG4bK1", UDP_SOURCE, Target("udp", "alice.example.com", 5060)),
    # IPv6 sent-by and received
    ("SIP/2.0/UDP [2001:db8::5]:5062;branch=z9hG4bK1", UDP_SOURCE, Target("udp", "2001:db8::5", 5062)),
    ("SIP/2.0/UDP [2001:db8::5];rport=4000;received=2001:db8::9;branch=z9hG4bK1", UDP_SOURCE,
     Target("udp", "2001:db8::9", 4000)),
    ("SIP/2.0/UDP [2001:db8::5];received=[2001:db8::9];branch=z9hG4bK1", UDP_SOURCE,
     Target("udp", "2001:db8::9", 5060)),
]


@pytest.mark.parametrize(("via", "source", "expected"), ROUTE_CASES)
def test_response_target(via: str, source: Target, expected: Target) -> None:
    target = response_target(Via.parse(via), source)
    assert target == expected
    assert target.local == source.local


def test_same_address() -> None:
    assert same_address("192.0.2.1", "192.0.2.1")
    assert same_address("[::1]", "::1")
    assert same_address("[0:0:0:0:0:0:0:1]", "::1")
    assert not same_address("192.0.2.1", "192.0.2.2")
    assert not same_address("localhost", "127.0.0.1")


def test_stamp_via_needs_a_via() -> None:
    request = Request("OPTIONS", "sip:x.example.com")
    with pytest.raises(SipParseError):
        stamp_via(request, UDP_SOURCE)


def test_target_spellings() -> None:
    assert Target("UDP", "[::1]", 5060) == Target("udp", "0:0::1", 5060)
    assert Target("tls", "PBX.example.com", 5061).host == "pbx.example.com"
    assert Target("udp", "::1", 5060).hostport == "[::1]:5060"
    assert str(Target("tls", "::1", 5061)) == "tls:[::1]:5061"
    assert Target("tcp", "192.0.2.1", 5060).reliable and not Target("udp", "192.0.2.1", 5060).reliable
    # local and server_name ride along without changing identity
    assert Target("udp", "192.0.2.1", 5060, local=("0.0.0.0", 5060)) == Target("udp", "192.0.2.1", 5060)
    assert len({Target("tls", "192.0.2.1", 5061, server_name="a"), Target("tls", "192.0.2.1", 5061)}) == 1
    with pytest.raises(ValueError):
        Target("sctp", "192.0.2.1", 5060)
