"""SIP requests and responses: parsing, header access, serialization, make_response (RFC 3261 §7, §8.2.6, §18.3)."""

from __future__ import annotations

import pytest

from pbxd.sip.errors import SipParseError
from pbxd.sip.headers import Address, CSeq
from pbxd.sip.message import Request, Response, make_response, parse_message

INVITE_LINE = "INVITE sip:bob@biloxi.example.com SIP/2.0"
HEADERS = [
    "Via: SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bK776asdhds;rport",
    "Max-Forwards: 70",
    "To: Bob <sip:bob@biloxi.example.com>",
    "From: Alice <sip:alice@atlanta.example.com>;tag=1928301774",
    "Call-ID: a84b4c76e66710@pc33.atlanta.example.com",
    "CSeq: 314159 INVITE",
    "Contact: <sip:alice@pc33.atlanta.example.com>",
]
SDP = b"v=0\r\no=alice 1 1 IN IP4 192.0.2.101\r\ns=-\r\nc=IN IP4 192.0.2.101\r\nt=0 0\r\nm=audio 49172 RTP/AVP 0\r\n"


def wire(start: str, headers: list[str], body: bytes = b"") -> bytes:
    return (start + "\r\n" + "".join(h + "\r\n" for h in headers) + "\r\n").encode() + body


def invite(*extra: str, without: tuple[str, ...] = (), body: bytes = b"", start: str = INVITE_LINE) -> bytes:
    kept = [h for h in HEADERS if h.split(":")[0] not in without]
    return wire(start, kept + list(extra), body)


def response_wire(start: str = "SIP/2.0 180 Ringing", *extra: str, without: tuple[str, ...] = ()) -> bytes:
    kept = [h for h in HEADERS if h.split(":")[0] not in without + ("Max-Forwards",)]
    return wire(start, kept + list(extra))


def refused(data: bytes, reason: str, status: int | None = 400) -> SipParseError:
    with pytest.raises(SipParseError, match=reason) as info:
        parse_message(data)
    assert info.value.status == status
    return info.value


# -- parsing -------------------------------------------------------------------------


def test_request_and_typed_accessors() -> None:
    msg = parse_message(invite(f"Content-Length: {len(SDP)}", "Content-Type: application/sdp", body=SDP))
    assert isinstance(msg, Request)
    assert (msg.method, msg.uri) == ("INVITE", "sip:bob@biloxi.example.com")
    assert str(msg.ruri) == msg.uri
    assert msg.via.branch == "z9hG4bK776asdhds" and len(msg.vias) == 1
    assert msg.cseq == CSeq(314159, "INVITE")
    assert msg.call_id == "a84b4c76e66710@pc33.atlanta.example.com"
    assert msg.from_addr.tag == "1928301774" and msg.to_addr.tag is None
    assert [str(c.uri) for c in msg.contacts] == ["sip:alice@pc33.atlanta.example.com"]
    assert msg.max_forwards == 70 and msg.expires is None
    assert msg.body == SDP


def test_addresses_built_on_first_read_equal_those_parsed_at_once() -> None:
    # From, To and Contact are checked while parsing but built when first read;
    # copies and responses made before that must read the same addresses.
    contacts = ["<sip:alice@192.0.2.1:5070;transport=tcp>;expires=60", '"Al" <sips:al@example.com>;q=0.5']
    data = invite(*[f"Contact: {c}" for c in contacts], without=("Contact",))
    msg = parse_message(data)
    twin = msg.copy()
    answer = make_response(msg, 200)  # type: ignore[arg-type]
    assert msg.contacts == [Address.parse(c) for c in contacts]
    assert twin.contacts == msg.contacts and twin.from_addr == msg.from_addr
    assert answer.from_addr == Address.parse(HEADERS[3].split(": ", 1)[1])
    assert answer.to_addr == msg.to_addr == Address.parse("Bob <sip:bob@biloxi.example.com>")
    # Built once and then kept; the Request-URI, read after the To that has
    # the same URI, is that URI rather than a second copy.
    assert msg.contacts[0] is msg.contacts[0] and msg.from_addr is msg.from_addr
    assert msg.ruri is msg.to_addr.uri  # type: ignore[union-attr]


def test_response() -> None:
    msg = parse_message(response_wire("SIP/2.0 486 Busy Here", "Retry-After: 60"))
    assert isinstance(msg, Response)
    assert (msg.status, msg.reason, msg.is_provisional) == (486, "Busy Here", False)
    assert msg.cseq.method == "INVITE" and msg.max_forwards is None


def test_response_without_reason_phrase_or_its_space() -> None:
    assert parse_message(response_wire("SIP/2.0 100 ")).reason == ""
    msg = parse_message(response_wire("SIP/2.0 183"))  # no SP: accepted liberally
    assert (msg.status, msg.reason) == (183, "")  # type: ignore[union-attr]


def test_leading_crlfs_are_ignored() -> None:
    # §7.5: CRLFs before the start line (keepalives on a stream) are skipped.
    msg = parse_message(b"\r\n\r\n\r\n" + invite())
    assert isinstance(msg, Request) and msg.method == "INVITE"


def test_folded_headers() -> None:
    data = invite(
        "Subject: I know you're there,\r\n  pick up the phone\r\n\tand talk to me!",
        "X-Empty-Then-Folded:\r\n value",
    ).replace(b"CSeq: 314159 INVITE", b"CSeq:\r\n 314159\r\n\tINVITE")
    msg = parse_message(data)
    assert msg.get("Subject") == "I know you're there, pick up the phone and talk to me!"
    assert msg.get("X-Empty-Then-Folded") == "value"
    assert msg.cseq == CSeq(314159, "INVITE")


def test_compact_forms_and_case() -> None:
    data = wire(
        "OPTIONS sip:pbx.example.com SIP/2.0",
        [
            "v: SIP/2.0/UDP 192.0.2.7;branch=z9hG4bKc",
            "t: <sip:pbx.example.com>",
            "f: <sip:a@example.com>;tag=1",
            "i: compact@192.0.2.7",
            "cSeQ: 1 OPTIONS",
            "m: <sip:a@192.0.2.7>",
            "k: timer, 100rel",
            "c: text/plain",
            "e: gzip",
            "s: hello",
            "o: presence",
            "u: presence, dialog",
            "x: 1800;refresher=uac",
            "l: 5",
        ],
        b"hello",
    )
    msg = parse_message(data)
    assert msg.call_id == "compact@192.0.2.7" and msg.via.branch == "z9hG4bKc"
    assert msg.get_all("Supported") == ["timer", "100rel"] and msg.get("k") == "timer, 100rel"
    for long, value in [
        ("Content-Type", "text/plain"), ("Content-Encoding", "gzip"), ("Subject", "hello"),
        ("Event", "presence"), ("Allow-Events", "presence, dialog"), ("Session-Expires", "1800;refresher=uac"),
    ]:
        assert msg.get(long) == value
    assert msg.body == b"hello"
    out = msg.to_bytes()
    assert b"\r\nCall-ID: compact@192.0.2.7\r\n" in out and b"\r\nSession-Expires: 1800;refresher=uac\r\n" in out
    assert b"\r\nCSeq: 1 OPTIONS\r\n" in out


def test_lists_across_lines_and_within_a_line() -> None:
    data = invite(
        "Via: SIP/2.0/UDP p1.example.com;branch=z9hG4bK1, SIP/2.0/TCP p2.example.com:5070;branch=z9hG4bK2",
        "Contact: <sip:a@b.example.com>;q=0.5, \"Second, one\" <sip:c@d.example.com>",
    )
    msg = parse_message(data)
    assert [v.host for v in msg.vias] == ["pc33.atlanta.example.com", "p1.example.com", "p2.example.com"]
    assert [c.display_name for c in msg.contacts] == [None, None, "Second, one"]


def test_utf8_values_round_trip() -> None:
    msg = parse_message(invite("Subject: Grüße, 世界").replace(b"To: Bob", 'To: "Bób Ünïcode"'.encode()))
    assert msg.get("Subject") == "Grüße, 世界"
    assert msg.to_addr.display_name == "Bób Ünïcode"
    assert parse_message(msg.to_bytes()).get("Subject") == "Grüße, 世界"


def test_wildcard_contact() -> None:
    data = wire(
        "REGISTER sip:example.com SIP/2.0",
        [h.replace("INVITE", "REGISTER") for h in HEADERS if not h.startswith("Contact")]
        + ["Contact: *", "Expires: 0"],
    )
    msg = parse_message(data)
    assert msg.is_wildcard_contact and msg.contacts == [] and msg.expires == 0


def test_expires_is_clamped() -> None:
    assert parse_message(invite("Expires: 99999999999999999999999")).expires == 2**32 - 1


def test_request_without_max_forwards_is_accepted() -> None:
    assert parse_message(invite(without=("Max-Forwards",))).max_forwards is None


# -- Content-Length (§18.3, §20.14) ----------------------------------------------


def test_datagram_bytes_past_content_length_are_dropped() -> None:
    msg = parse_message(invite("Content-Length: 3", body=b"abcdef"))
    assert msg.body == b"abc"


def test_no_content_length_takes_the_rest_of_the_datagram() -> None:
    assert parse_message(invite(body=SDP)).body == SDP


def test_content_length_with_leading_zeros_and_lws() -> None:
    assert parse_message(invite("Content-Length:   0004  ", body=b"abcd")).body == b"abcd"


@pytest.mark.parametrize(
    "value, reason",
    [
        ("10", "Content-Length 10 exceeds body of 4 bytes"),
        ("-1", "bad Content-Length"),
        ("4.0", "bad Content-Length"),
        ("", "bad Content-Length"),
        ("٤", "bad Content-Length"),
        ("4²", "bad Content-Length"),
        ("9" * 5000, "Content-Length out of range"),
        ("4294967296", "Content-Length out of range"),
        # Up to 9 digits take a short cut, which must refuse what the long way does.
        ("999999999", "Content-Length 999999999 exceeds body of 4 bytes"),
        ("+4", "bad Content-Length"),
        ("4 4", "bad Content-Length"),
    ],
)
def test_bad_content_length(value: str, reason: str) -> None:
    error = refused(invite(f"Content-Length: {value}", body=b"abcd"), reason)
    assert isinstance(error.request, Request)


# -- refused requests ------------------------------------------------------------------


@pytest.mark.parametrize("name", ["Via", "From", "To", "Call-ID", "CSeq"])
def test_missing_required_header(name: str) -> None:
    error = refused(invite(without=(name,)), f"missing {name} header")
    assert isinstance(error.request, Request) and error.request.method == "INVITE"


@pytest.mark.parametrize(
    "extra",
    [
        "From: <sip:x@example.com>;tag=2",
        "t: <sip:y@example.com>",
        "i: other@example.com",
        "CSeq: 1 INVITE",
        "Max-Forwards: 69",
        "l: 0\r\nContent-Length: 0",
    ],
)
def test_duplicate_single_value_header(extra: str) -> None:
    refused(invite(extra), "more than one")


def test_cseq_method_mismatch() -> None:
    refused(invite(start="OPTIONS sip:bob@biloxi.example.com SIP/2.0"), "CSeq method INVITE does not match OPTIONS")
    refused(invite(start="FROB sip:bob@biloxi.example.com SIP/2.0"), "does not match FROB", status=501)
    # Methods are case-sensitive (§7.1).
    refused(invite(start="invite sip:bob@biloxi.example.com SIP/2.0"), "does not match invite", status=501)


@pytest.mark.parametrize(
    "header, reason",
    [
        ("Call-ID: two words", "bad Call-ID"),
        ("Call-ID:", "bad Call-ID"),
        ("Call-ID: a\x00b", "bad Call-ID"),
        ("CSeq: 1", "bad CSeq"),
        ("CSeq: 4294967296 INVITE", "CSeq number out of range"),
        ("Max-Forwards: 256", "Max-Forwards out of range"),
        ("Max-Forwards: seventy", "bad Max-Forwards"),
        # One and two digits take a short cut, which must refuse what the long way does.
        ("Max-Forwards: \u0667\u0660", "bad Max-Forwards"),
        ("Max-Forwards: \u00b2", "bad Max-Forwards"),
        ("Max-Forwards: -1", "bad Max-Forwards"),
        ("Max-Forwards: +7", "bad Max-Forwards"),
        ("Via:", "empty Via header"),
        ("Via: SIP/2.0/UDP a.example.com,", "empty element"),
        ("CSeq: 1 INVITÉ", "bad CSeq"),
        ("CSeq: \u0661 INVITE", "bad CSeq"),
        ("Via: SIP/2.0/UDP", "bad Via"),
        ("From: Alice <sip:alice@atlanta.example.com", "missing '>'"),
        ("To: Bob, Robert <sip:bob@biloxi.example.com>", "display name"),
        ("Contact: <sip:a@b.example.com>, *", "only Contact"),
        ("Contact: <sip:a@b.example.com>,", "empty element"),
        ("Contact: <sip:a@b.example.com>;q", None),
        ("Contact:", "empty Contact header"),
        ("Contact: *", None),  # wildcard: a REGISTER's business to refuse elsewhere
        ("Max-Forwards: 007", None),
        # Ports are the one check the name-addr pattern leaves to a later step.
        ("Contact: <sip:a@b.example.com:70000>", "bad port"),
        ("From: <sip:a@b.example.com:0>;tag=1", "bad port"),
        ("To: Bob <sip:bob@biloxi.example.com:65536>", "bad port"),
    ],
)
def test_malformed_known_headers(header: str, reason: str | None) -> None:
    name = header.split(":")[0]
    data = invite(header, without=(name,))
    if reason is None:
        parse_message(data)
        return
    error = refused(data, reason)
    assert isinstance(error.request, Request)
    answer = make_response(error.request, 400)
    assert answer.get("Call-ID") == error.request.get("Call-ID")


@pytest.mark.parametrize(
    "start, reason, status",
    [
        ("INVITE sip:bob@biloxi.example.com", "malformed Request-Line", 400),
        ("INVITE  sip:bob@biloxi.example.com SIP/2.0", "malformed Request-Line", 400),
        ("INVITE sip:bob@biloxi.example.com SIP/2.0 ", "malformed Request-Line", 400),
        ("INVITE\tsip:bob@biloxi.example.com SIP/2.0", "malformed Request-Line", 400),
        ("INV(ITE sip:bob@biloxi.example.com SIP/2.0", "bad method", 400),
        ("INVITE sip:bob@biloxi.example.com HTTP/1.1", "malformed Request-Line", 400),
        ("INVITE sip:bob@biloxi.example.com SIP/3.0", "unsupported version", 505),
        ("INVITE sip:bob@biloxi.example.com;x=<y> SIP/2.0", "bad URI", 400),
        ("INVITE sip:bob@biloxi.example.com?Subject=x SIP/2.0", "must not carry headers", 400),
        ("INVITE sip:bob@biloxi.example.com:0 SIP/2.0", "bad port", 400),
        ("INVITE SIP:bob@192.0.2.1:65536 SIP/2.0", "bad port", 400),
    ],
)
def test_bad_request_line_is_answerable(start: str, reason: str, status: int) -> None:
    error = refused(invite(start=start), reason, status)
    assert isinstance(error.request, Request)
    assert make_response(error.request, status).get("Via") == HEADERS[0].split(": ", 1)[1]


def test_lowercase_version_is_accepted() -> None:
    assert parse_message(invite(start="INVITE sip:bob@biloxi.example.com sip/2.0")).method == "INVITE"


@pytest.mark.parametrize(
    "data, reason",
    [
        (invite().replace(b"Max-Forwards: 70\r\n", b"Max-Forwards: 70\n"), "bare CR or LF"),
        (invite().replace(b"Max-Forwards: 70\r\n", b"Max-Forwards: 70\rX: y\r\n"), "bare CR or LF"),
        (invite("Just some text"), "without a colon"),
        (invite(": no name"), "bad header name"),
        (invite("Bad Name: x"), "bad header name"),
        (invite().replace(INVITE_LINE.encode() + b"\r\n", INVITE_LINE.encode() + b"\r\n Via: x\r\n"), "continuation"),
    ],
)
def test_malformed_header_section(data: bytes, reason: str) -> None:
    refused(data, reason)


# -- dropped datagrams ------------------------------------------------------------


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"", "no end of headers"),
        (b"\r\n\r\n", "no end of headers"),
        (b"\r\n" * 10, "no end of headers"),
        (invite()[:-2], "no end of headers"),
        (b"INVITE sip:a@b SIP/2.0\nVia: x\n\n", "no end of headers"),
        (invite().replace(b"Bob", b"B\xffb"), "not UTF-8"),
        (b"\x00\x01\x02\r\n\r\n", "malformed Request-Line"),
    ],
)
def test_not_sip_at_all(data: bytes, reason: str) -> None:
    with pytest.raises(SipParseError, match=reason) as info:
        parse_message(data)
    assert info.value.status is None or not info.value.request or not info.value.request.get("Via")


@pytest.mark.parametrize(
    "data, reason",
    [
        (response_wire("SIP/2.0 99 Too Low"), "bad status code"),
        (response_wire("SIP/2.0 700 Too High"), "bad status code"),
        (response_wire("SIP/2.0 2000 OK"), "bad status code"),
        (response_wire("SIP/2.0 ٢٠٠ OK"), "bad status code"),
        (response_wire("SIP/2.0 OK"), "bad status code"),
        (response_wire("SIP/1.0 200 OK"), "unsupported version"),
        (response_wire("SIP/2.0 200 O\x00K"), "control characters"),
        (response_wire("SIP/2.0 200 OK", without=("CSeq",)), "missing CSeq"),
        (response_wire("SIP/2.0 200 OK", "CSeq: 1 BYE"), "more than one CSeq"),
        (response_wire("SIP/2.0 200 OK", "Content-Length: 10"), "exceeds body"),
    ],
)
def test_malformed_responses_are_dropped(data: bytes, reason: str) -> None:
    error = refused(data, reason, status=None)
    assert error.request is None


# -- header access -----------------------------------------------------------------------


def test_get_and_friends() -> None:
    msg = parse_message(
        invite(
            "Record-Route: <sip:p1.example.com;lr>, <sip:p2.example.com;lr>",
            "Record-Route: <sip:p3.example.com;lr>",
        )
    )
    assert "record-route" in msg and "i" in msg and "X-Nope" not in msg
    assert msg.get("record-route") == "<sip:p1.example.com;lr>, <sip:p2.example.com;lr>"
    assert msg.get("X-Nope") is None and msg.get("X-Nope", "dflt") == "dflt"
    assert msg.get_all("Record-Route") == [
        "<sip:p1.example.com;lr>", "<sip:p2.example.com;lr>", "<sip:p3.example.com;lr>"
    ]
    assert msg.get_all("Call-ID") == ["a84b4c76e66710@pc33.atlanta.example.com"]
    assert msg.pop_first("Record-Route") == "<sip:p1.example.com;lr>"
    assert msg.get_all("Record-Route") == ["<sip:p2.example.com;lr>", "<sip:p3.example.com;lr>"]
    assert msg.pop_first("Record-Route") == "<sip:p2.example.com;lr>"
    assert msg.get("Record-Route") == "<sip:p3.example.com;lr>"
    assert msg.pop_first("X-Nope") is None
    assert [name for name, _ in msg.headers][:2] == ["Via", "Max-Forwards"]
    assert [key for key, _, _ in msg.iter_raw()][-1] == "record-route"


def test_changes_refresh_parsed_values() -> None:
    msg = parse_message(invite())
    assert msg.via.branch == "z9hG4bK776asdhds"
    msg.insert("Via", "SIP/2.0/UDP proxy.example.com;branch=z9hG4bKproxy")
    assert [v.branch for v in msg.vias] == ["z9hG4bKproxy", "z9hG4bK776asdhds"]
    assert msg.get("v") == "SIP/2.0/UDP proxy.example.com;branch=z9hG4bKproxy"
    msg.pop_first("Via")
    assert msg.via.branch == "z9hG4bK776asdhds"
    msg.set("To", "Bob <sip:bob@biloxi.example.com>;tag=x1")
    assert msg.to_addr.tag == "x1"
    msg.add("Contact", "<sip:second@example.com>")
    assert len(msg.contacts) == 2
    msg.remove("Contact")
    assert msg.contacts == [] and "Contact" not in msg
    msg.set("Max-Forwards", "69")
    assert msg.max_forwards == 69
    msg.set_uri("sip:carol@chicago.example.com")
    assert str(msg.ruri) == "sip:carol@chicago.example.com"


def test_set_replaces_all_values_in_place() -> None:
    msg = Request("OPTIONS", "sip:a@b.example.com", [("Alpha", "1"), ("X-Foo", "1"), ("Beta", "2"), ("X-Foo", "2")])
    msg.set("x-foo", "3")
    assert msg.headers == [("Alpha", "1"), ("x-foo", "3"), ("Beta", "2")]
    msg.insert("X-First", "first")
    assert msg.headers[0] == ("X-First", "first")


@pytest.mark.parametrize(
    "name, value", [("X", "a\r\nInjected: yes"), ("X", "a\nb"), ("X", "a\rb"), ("Bad Name", "v"), ("", "v")]
)
def test_header_injection_is_refused(name: str, value: str) -> None:
    msg = Request("OPTIONS", "sip:a@b.example.com")
    for change in (msg.set, msg.add, msg.insert):
        with pytest.raises(ValueError):
            change(name, value)
    with pytest.raises(ValueError):
        Request("OPTIONS", "sip:a@b.example.com", [(name, value)])


# -- serialization -----------------------------------------------------------------------


def test_to_bytes() -> None:
    msg = Request(
        "MESSAGE",
        Address.parse("<sip:bob@biloxi.example.com>").uri,
        [("v", "SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKm"), ("content-length", "999"), ("X-Thing", "1")],
        body=b"hi",
    )
    assert msg.to_bytes() == (
        b"MESSAGE sip:bob@biloxi.example.com SIP/2.0\r\n"
        b"Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKm\r\n"
        b"X-Thing: 1\r\n"
        b"Content-Length: 2\r\n\r\nhi"
    )
    assert bytes(msg) == msg.to_bytes()
    assert Response(404).to_bytes() == b"SIP/2.0 404 Not Found\r\nContent-Length: 0\r\n\r\n"
    assert Response(299).reason == "Unknown" and Response(200, "Fine").reason == "Fine"


def test_parse_serialize_parse_is_stable() -> None:
    data = invite("Subject: folded\r\n  value", "l: 4", body=b"body")
    first = parse_message(data)
    again = parse_message(first.to_bytes())
    assert again.start_line() == first.start_line()
    assert again.headers == first.headers
    assert again.body == first.body == b"body"
    assert parse_message(again.to_bytes()).to_bytes() == again.to_bytes()


def test_copy_is_independent() -> None:
    msg = parse_message(invite())
    assert isinstance(msg, Request)
    twin = msg.copy()
    twin.insert("Via", "SIP/2.0/UDP proxy.example.com;branch=z9hG4bKp")
    twin.set_uri("sip:elsewhere@example.com")
    assert len(twin.vias) == 2 and len(msg.vias) == 1
    assert msg.uri == "sip:bob@biloxi.example.com"
    assert twin.to_bytes() != msg.to_bytes()
    assert parse_message(response_wire()).copy().status == 180  # type: ignore[union-attr]


# -- make_response (§8.2.6) -----------------------------------------------------------


def test_make_response_copies_the_right_headers() -> None:
    request = parse_message(
        invite(
            "Via: SIP/2.0/UDP second.example.com;branch=z9hG4bK2",
            "Timestamp: 54",
            "Record-Route: <sip:p1.example.com;lr>",
            "Content-Type: application/sdp",
            body=SDP,
        )
    )
    assert isinstance(request, Request)
    ringing = make_response(request, 180)
    assert ringing.start_line() == "SIP/2.0 180 Ringing"
    assert ringing.headers == [
        ("Via", HEADERS[0].split(": ", 1)[1]),
        ("To", "Bob <sip:bob@biloxi.example.com>"),
        ("From", "Alice <sip:alice@atlanta.example.com>;tag=1928301774"),
        ("Call-ID", "a84b4c76e66710@pc33.atlanta.example.com"),
        ("CSeq", "314159 INVITE"),
        ("Via", "SIP/2.0/UDP second.example.com;branch=z9hG4bK2"),
    ]
    assert [v.host for v in ringing.vias] == ["pc33.atlanta.example.com", "second.example.com"]
    assert ringing.to_addr == request.to_addr and ringing.body == b""
    assert ringing.to_bytes().endswith(b"Content-Length: 0\r\n\r\n")
    # Only a 100 echoes Timestamp (§8.2.6.1).
    assert make_response(request, 100).get("Timestamp") == "54"
    assert make_response(request, 486, "Busy Now").start_line() == "SIP/2.0 486 Busy Now"
    # The response's headers are its own.
    ringing.set("To", "Bob <sip:bob@biloxi.example.com>;tag=t1")
    ringing.vias.append(ringing.vias[0])
    assert request.to_addr.tag is None and len(request.vias) == 2


def test_make_response_for_an_unparsed_request() -> None:
    request = Request("OPTIONS", "sip:pbx.example.com", [(h.split(": ", 1)[0], h.split(": ", 1)[1]) for h in HEADERS])
    ok = make_response(request, 200)
    assert ok.call_id == "a84b4c76e66710@pc33.atlanta.example.com"
    assert ok.from_addr.tag == "1928301774" and ok.via.branch == "z9hG4bK776asdhds"
