"""Properties of the SIP message parser, checked with hypothesis.

- A generated valid message parses to what it was built from, and
  parse(serialize(parse(m))) equals parse(m) in start line, headers (names and
  values, in order) and body.
- Arbitrary bytes, and valid messages with bytes flipped, cut off or inserted
  (CR, LF, NUL, quotes, <>, separators), never raise anything but
  SipParseError; whatever is accepted serializes back into the same message.
"""

from __future__ import annotations

import string
from dataclasses import dataclass

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from pbxd.sip.errors import SipParseError
from pbxd.sip.headers import canonical_name, header_key, quote
from pbxd.sip.message import Request, Response, SipMessage, parse_message

# No deadline: CI machines stall; example counts keep this file to a few seconds.
VALID = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])

TOKEN_CHARS = string.ascii_letters + string.digits + "-.!%*_+`'~"
UNRESERVED = string.ascii_letters + string.digits + "-_.!~*'()"
USER_CHARS = UNRESERVED + "&=+$,;?/"
PARAM_CHARS = UNRESERVED + "[]/:&+$"
WORD_CHARS = TOKEN_CHARS + "()<>:\\\"/[]?{}"
# Header names the generator must not produce by chance, because the parser
# checks them (a second "f:" would be a second From).
CHECKED = {"via", "from", "to", "call-id", "cseq", "max-forwards", "content-length", "contact"}

tokens = st.text(TOKEN_CHARS, min_size=1, max_size=10)
hex_escape = st.integers(0, 255).map(lambda b: f"%{b:02X}")


def escaped_text(chars: str, min_size: int = 1) -> st.SearchStrategy[str]:
    """Text of the given characters, sometimes with a %HH escape in it."""
    return st.builds(
        lambda text, escape, at: text[:at] + escape + text[at:],
        st.text(chars, min_size=min_size, max_size=6),
        st.one_of(st.just(""), hex_escape),
        st.integers(0, 6),
    )


ALNUM = string.ascii_lowercase + string.digits
labels = st.builds(
    lambda head, tail: head + ("-" + tail if tail else ""),
    st.text(ALNUM, min_size=1, max_size=5),
    st.text(ALNUM, max_size=3),
)
hostnames = st.builds(
    lambda ls, first, top: ".".join([*ls, first + top]),
    st.lists(labels, max_size=2),
    st.sampled_from(string.ascii_lowercase),  # a toplabel starts with a letter
    st.text(ALNUM, max_size=4),
)
hosts = st.one_of(
    hostnames,
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(lambda a: f"[{a}]"),
)
ports = st.one_of(st.none(), st.integers(1, 65535))


@st.composite
def sip_uris(draw: st.DrawFn) -> str:
    user = draw(st.one_of(st.none(), escaped_text(USER_CHARS)))
    password = draw(st.one_of(st.none(), escaped_text(UNRESERVED + "&=+$,", min_size=0))) if user else None
    host, port = draw(hosts), draw(ports)
    param = st.tuples(escaped_text(PARAM_CHARS), st.one_of(st.none(), escaped_text(PARAM_CHARS)))
    params = draw(st.lists(param, max_size=2))
    text = draw(st.sampled_from(["sip:", "sips:", "SIP:"]))
    if user is not None:
        text += user + (f":{password}" if password is not None else "") + "@"
    text += host + (f":{port}" if port else "")
    return text + "".join(f";{k}" if v is None else f";{k}={v}" for k, v in params)


uris = st.one_of(
    sip_uris(),
    st.integers(0, 10**12).map(lambda n: f"tel:+{n}"),
    st.text(ALNUM + ".", min_size=1, max_size=8).map(lambda nss: f"urn:x-test:{nss}"),
)
gen_values = st.one_of(
    st.text(TOKEN_CHARS + ":[]", min_size=1, max_size=10),
    st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\r\n"), max_size=10).map(quote),
)
header_params = st.lists(st.tuples(tokens, st.one_of(st.none(), gen_values)), max_size=2).map(
    lambda ps: "".join(f";{k}" if v is None else f";{k}={v}" for k, v in ps)
)
display_names = st.one_of(
    st.none(),
    st.lists(tokens, min_size=1, max_size=3).map(" ".join),
    st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\r\n"), max_size=12).map(quote),
)


@st.composite
def addresses(draw: st.DrawFn, tag: bool = False) -> str:
    display, uri = draw(display_names), draw(uris)
    params = draw(header_params) + (f";tag={draw(tokens)}" if tag else "")
    if display is None and draw(st.booleans()) and not any(c in uri for c in ";?,"):
        return uri + params  # addr-spec: the parameters are the header's
    return (f"{display} " if display is not None else "") + f"<{uri}>{params}"


@st.composite
def vias(draw: st.DrawFn) -> str:
    transport = draw(st.one_of(st.sampled_from(["UDP", "TCP", "TLS", "SCTP", "WS"]), tokens))
    port = draw(ports)
    text = f"SIP/2.0/{transport} {draw(hosts)}" + (f":{port}" if port else "")
    text += f";branch=z9hG4bK{draw(tokens)}"
    text += draw(st.sampled_from(["", ";rport", ";rport=5060", ";received=192.0.2.1"]))
    return text


header_text = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\r\n"), max_size=20).map(
    lambda s: s.strip(" \t")
)
extension_headers = st.tuples(
    tokens.filter(lambda n: header_key(n) not in CHECKED),
    header_text,
)


@dataclass
class Built:
    data: bytes
    start_line: str
    headers: list[tuple[str, str]]  # as the parser should report them
    body: bytes


def fold(value: str, data: st.DataObject) -> str:
    """Maybe break the value at a single SP into a continuation line (§7.3.1)."""
    spots = [
        i for i in range(1, len(value) - 1)
        if value[i] == " " and value[i - 1] not in " \t" and value[i + 1] not in " \t"
    ]
    if not spots or not data.draw(st.booleans()):
        return value
    i = data.draw(st.sampled_from(spots))
    return value[:i] + "\r\n" + data.draw(st.sampled_from([" ", "\t", "  "])) + value[i + 1 :]


@st.composite
def messages(draw: st.DrawFn) -> Built:
    data = draw(st.data())
    method = draw(st.one_of(st.sampled_from(["INVITE", "REGISTER", "OPTIONS", "BYE", "MESSAGE"]), tokens))
    is_request = draw(st.booleans())
    if is_request:
        start = f"{method} {draw(sip_uris())} SIP/2.0"
    else:
        reason = draw(st.text(st.characters(exclude_categories=["Cs", "Cc"]), max_size=20))
        start = f"SIP/2.0 {draw(st.integers(100, 699))} {reason}"
    headers = [("Via", v) for v in draw(st.lists(vias(), min_size=1, max_size=2))]
    headers += [
        ("From", draw(addresses(tag=True))),
        ("To", draw(addresses(tag=not is_request))),
        ("Call-ID", draw(st.text(WORD_CHARS, min_size=1, max_size=12)) + draw(st.sampled_from(["", "@a.b"]))),
        ("CSeq", f"{draw(st.integers(0, 2**31 - 1))} {method}"),
    ]
    if is_request and draw(st.booleans()):
        headers.append(("Max-Forwards", str(draw(st.integers(0, 255)))))
    if draw(st.booleans()):
        headers.append(("Contact", draw(addresses())))
    headers += draw(st.lists(extension_headers, max_size=3))
    headers = draw(st.permutations(headers))
    body = draw(st.binary(max_size=64))
    with_length = draw(st.booleans()) or not body
    wire_names = [draw(st.sampled_from([name, name.lower(), name.upper()])) for name, _ in headers]
    lines = [
        f"{name}:{draw(st.sampled_from([' ', '', '  ', chr(9)]))}{fold(value, data)}"
        for name, (_, value) in zip(wire_names, headers)
    ]
    expected = [(canonical_name(name), value) for name, (_, value) in zip(wire_names, headers)]
    if with_length:
        lines.append(f"Content-Length: {len(body)}")
        expected.append(("Content-Length", str(len(body))))
    raw = (start + "\r\n" + "".join(line + "\r\n" for line in lines) + "\r\n").encode() + body
    return Built(raw, start, expected, body)


def same_message(a: SipMessage, b: SipMessage) -> None:
    assert type(a) is type(b)
    assert a.start_line() == b.start_line()
    assert a.headers == b.headers
    assert a.body == b.body


def without_length(headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
    return [(n, v) for n, v in headers if n != "Content-Length"]


@VALID
@given(messages())
def test_generated_messages_parse_as_built_and_round_trip(built: Built) -> None:
    msg = parse_message(built.data)
    assert msg.start_line() == built.start_line
    assert msg.headers == built.headers
    assert msg.body == built.body
    assert isinstance(msg, Request) == (not built.start_line.startswith("SIP/2.0 "))
    # The typed accessors were filled in while parsing and agree with the text.
    assert len(msg.vias) == len([v for n, v in built.headers if n == "Via"])
    assert msg.call_id == dict(built.headers)["Call-ID"]
    if isinstance(msg, Response):
        assert msg.status == int(built.start_line.split(" ")[1])
    # parse(serialize(parse(m))) == parse(m), and serializing again changes nothing.
    again = parse_message(msg.to_bytes())
    same_message(again, _with_length(msg))
    assert parse_message(again.to_bytes()).to_bytes() == again.to_bytes()


def _with_length(msg: SipMessage) -> SipMessage:
    """The message as serialization writes it: one Content-Length, last."""
    twin = msg.copy()
    twin.remove("Content-Length")
    twin.add("Content-Length", str(len(msg.body)))
    return twin


def parses_or_refuses(data: bytes) -> None:
    try:
        msg = parse_message(data)
    except SipParseError as error:
        assert error.status in (None, 400, 501, 505)
        assert error.request is None or isinstance(error.request, Request)
        return
    # Whatever is accepted serializes into something that parses the same.
    same_message(parse_message(msg.to_bytes()), _with_length(msg))


@FUZZ
@given(st.binary(max_size=300))
def test_arbitrary_bytes_only_raise_sip_parse_error(data: bytes) -> None:
    parses_or_refuses(data)


SIGNIFICANT = "\r\n \t:;,<>\"\\@=?/[]%*0123456789abcSIP/2.0zZ\x00é"


@FUZZ
@given(
    st.sampled_from(["INVITE sip:a@b.example.com SIP/2.0", "SIP/2.0 200 OK", "REGISTER sip:x SIP/2.0"]),
    st.lists(st.tuples(st.text(SIGNIFICANT, max_size=12), st.text(SIGNIFICANT, max_size=40)), max_size=8),
    st.binary(max_size=20),
)
def test_header_shaped_noise_only_raises_sip_parse_error(
    start: str, headers: list[tuple[str, str]], body: bytes
) -> None:
    head = start + "\r\n" + "".join(f"{name}:{value}\r\n" for name, value in headers)
    parses_or_refuses(head.encode() + b"\r\n" + body)


INSERTIONS = [
    b"\r", b"\n", b"\r\n", b"\r\n ", b"\x00", b'"', b"<", b">", b"\\",
    b";", b",", b":", b" ", b"\t", b"%", b"\xff", b"\xc3",
]


@VALID
@given(messages(), st.data())
def test_mutated_messages_only_raise_sip_parse_error(built: Built, data: st.DataObject) -> None:
    raw = bytearray(built.data)
    for _ in range(data.draw(st.integers(1, 3))):
        kind = data.draw(st.sampled_from(["flip", "cut", "insert", "delete"]))
        at = data.draw(st.integers(0, max(len(raw) - 1, 0)))
        if kind == "flip" and raw:
            raw[at] ^= data.draw(st.integers(1, 255))
        elif kind == "cut":
            del raw[at:]
        elif kind == "insert":
            raw[at:at] = data.draw(st.sampled_from(INSERTIONS))
        elif raw:
            del raw[at : at + data.draw(st.integers(1, 8))]
    assume(bytes(raw) != built.data)
    parses_or_refuses(bytes(raw))
