"""Header names, lists, quoted strings, parameters, Via, name-addr and CSeq (RFC 3261 §7.3, §20, §25)."""

from __future__ import annotations

import attrs
import pytest

from pbxd.sip.errors import SipParseError
from pbxd.sip.headers import (
    _PLAIN_SIP_NAME_ADDR,
    Address,
    _parse_address_general,
    CSeq,
    Via,
    canonical_name,
    header_key,
    is_token,
    parse_params,
    quote,
    read_quoted,
    split_list,
    unquoted,
    wire_name,
)
from pbxd.sip.uri import AbsoluteURI, SipURI, TelURI, parse_uri

# -- names -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "compact, key, name",
    [
        ("i", "call-id", "Call-ID"), ("m", "contact", "Contact"), ("v", "via", "Via"),
        ("f", "from", "From"), ("t", "to", "To"), ("l", "content-length", "Content-Length"),
        ("c", "content-type", "Content-Type"), ("k", "supported", "Supported"), ("s", "subject", "Subject"),
        ("e", "content-encoding", "Content-Encoding"), ("o", "event", "Event"),
        ("u", "allow-events", "Allow-Events"), ("x", "session-expires", "Session-Expires"),
        ("r", "refer-to", "Refer-To"), ("b", "referred-by", "Referred-By"),
    ],
)
def test_compact_forms(compact: str, key: str, name: str) -> None:
    for spelling in (compact, compact.upper()):
        assert header_key(spelling) == key
        assert canonical_name(spelling) == name
        assert wire_name(spelling) == (key, name)
    assert header_key(name.upper()) == key


def test_names_keep_their_spelling_when_unknown() -> None:
    assert canonical_name("X-Custom-Thing") == "X-Custom-Thing"
    assert header_key("X-Custom-Thing") == "x-custom-thing"
    assert canonical_name("cSeQ") == "CSeq" and canonical_name("www-authenticate") == "WWW-Authenticate"


def test_wire_names() -> None:
    assert wire_name("Via  ") == ("via", "Via")  # LWS before the colon
    assert wire_name("extensionHeader-!.%*+_`'~") == ("extensionheader-!.%*+_`'~", "extensionHeader-!.%*+_`'~")
    for bad in ("", " Via", "Vi a", "Via\t:", "Via/", "Viä", "X(y)", "a\x00"):
        with pytest.raises(SipParseError, match="bad header name"):
            wire_name(bad)


def test_is_token() -> None:
    assert is_token("INVITE") and is_token("!interesting-Method0123456789_*+`.%indeed'~")
    assert not is_token("") and not is_token("a b") and not is_token("a,b") and not is_token("é")


# -- comma lists -------------------------------------------------------------------


def test_split_list() -> None:
    assert split_list("INVITE, ACK ,BYE") == ["INVITE", "ACK", "BYE"]
    assert split_list("  single  ") == ["single"]
    assert split_list("") == [] and split_list(" \t") == []
    assert split_list('"Doe, John" <sip:j@example.com>, <sip:a@b;x=1,2>') == [
        '"Doe, John" <sip:j@example.com>',
        "<sip:a@b;x=1,2>",
    ]
    assert split_list(r'"a \", b", c') == [r'"a \", b"', "c"]
    assert split_list('399 example.com "text, with comma"') == ['399 example.com "text, with comma"']


@pytest.mark.parametrize("value", ["a,,b", "a,", ",a", " , ", '"open, a', '"x" <sip:a@b>, '])
def test_split_list_malformed(value: str) -> None:
    with pytest.raises(SipParseError):
        split_list(value)


# -- quoted strings ------------------------------------------------------------------


def test_read_quoted() -> None:
    assert read_quoted('"plain" rest', 0) == ("plain", 7)
    assert read_quoted(r'x "a \"b\" \\ c"', 2) == ('a "b" \\ c', 16)
    assert read_quoted('"\\\x00\\\x7f"', 0) == ("\x00\x7f", 6)  # quoted-pair takes %x00-7F
    assert read_quoted('"héllo wörld"', 0) == ("héllo wörld", 13)


@pytest.mark.parametrize("text", ['"open', '"ends in backslash\\', '"\\\r\n"', '"a\\"'])
def test_read_quoted_malformed(text: str) -> None:
    with pytest.raises(SipParseError, match="unterminated"):
        read_quoted(text, 0)


def test_quote_round_trips() -> None:
    for text in ("", "plain", 'a "b" c', "back\\slash", "üñí"):
        quoted = quote(text)
        assert read_quoted(quoted, 0) == (text, len(quoted))
        assert unquoted(quoted) == text
    assert unquoted("token") == "token" and unquoted(None) is None


# -- parameters ----------------------------------------------------------------------


def test_parse_params() -> None:
    assert parse_params("") == ()
    assert parse_params(";tag=1928301774;lr") == (("tag", "1928301774"), ("lr", None))
    assert parse_params("  ;  tag  =  x ; q = 0.33 ;flag ") == (("tag", "x"), ("q", "0.33"), ("flag", None))
    assert parse_params(';text="a;b \\"c\\"";x=y') == (("text", '"a;b \\"c\\""'), ("x", "y"))
    assert parse_params(";received=[2001:db8::1]") == (("received", "[2001:db8::1]"),)
    assert parse_params(";received=2001:db8::1") == (("received", "2001:db8::1"),)


@pytest.mark.parametrize(
    "text", [";", ";;", "tag=1", ";=x", ";a=", ";a b", ';a="open', ";a=<x>", ";a=b c", ";a=é", ";a=,", ";a@b"]
)
def test_parse_params_malformed(text: str) -> None:
    with pytest.raises(SipParseError):
        parse_params(text)


# -- Via -------------------------------------------------------------------------------


def test_via_plain() -> None:
    via = Via.parse("SIP/2.0/UDP pc33.atlanta.example.com:5060;branch=z9hG4bK776asdhds;rport")
    assert (via.protocol, via.transport, via.host, via.port) == ("SIP/2.0", "UDP", "pc33.atlanta.example.com", 5060)
    assert via.branch == "z9hG4bK776asdhds" and via.has_param("rport") and via.rport is None
    assert via.sent_by == ("pc33.atlanta.example.com", 5060)
    assert str(via) == "SIP/2.0/UDP pc33.atlanta.example.com:5060;branch=z9hG4bK776asdhds;rport"


def test_via_received_rport_maddr_ttl() -> None:
    via = Via.parse("SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKx;received=203.0.113.9;rport=40001;maddr=224.2.0.1;ttl=16")
    assert (via.received, via.rport, via.maddr, via.param("TTL")) == ("203.0.113.9", 40001, "224.2.0.1", "16")


def test_via_ipv6() -> None:
    via = Via.parse("SIP/2.0/TCP [2001:db8::9]:5070;branch=z9hG4bKv6;received=2001:db8::77;rport=5080")
    assert (via.host, via.port, via.received, via.rport) == ("[2001:db8::9]", 5070, "2001:db8::77", 5080)
    assert Via.parse("SIP/2.0/UDP [::1];branch=z9hG4bK1").sent_by == ("[::1]", None)


def test_via_with_lws_and_odd_case() -> None:
    via = Via.parse("sip / 2.0 / tls  proxy.example.com : 5061 ; branch = z9hG4bKlws ; rport")
    assert (via.transport, via.host, via.port, via.branch) == ("TLS", "proxy.example.com", 5061, "z9hG4bKlws")
    assert via.has_param("rport")


def test_via_quoted_extension_param() -> None:
    via = Via.parse('SIP/2.0/UDP h.example.com;branch=z9hG4bK1;x-note="a;b"')
    assert via.param("x-note") == '"a;b"' and unquoted(via.param("x-note")) == "a;b"


def test_via_with_param() -> None:
    via = Via.parse("SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK1;rport")
    stamped = via.with_param("received", "198.51.100.7").with_param("rport", "5062")
    assert str(stamped) == "SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK1;rport=5062;received=198.51.100.7"
    assert stamped.rport == 5062 and via.rport is None


@pytest.mark.parametrize(
    "text",
    [
        "", "SIP/2.0/UDP", "SIP/2.0/UDP ", "SIP/2.0 host", "SIP/3.0/UDP host", "HTTP/2.0/UDP host",
        "SIP/2.0/UDP host:0", "SIP/2.0/UDP host:65536", "SIP/2.0/UDP host:abc", "SIP/2.0/UDP ho st",
        "SIP/2.0/UDP host;", "SIP/2.0/UDP host;;branch=x", "SIP/2.0/UDP host;rport=abc",
        "SIP/2.0/UDP host;rport=70000", "SIP/2.0/UDP host;rport=0", "SIP/2.0/UDP host;rport=٥", "SIP/2.0/UD P host",
        "SIP/2.0/UDP [2001:db8::1", "SIP/2.0/UDP 300.1.1.1", "SIP/2.0/UDP host;branch=\"open",
    ],
)
def test_via_malformed(text: str) -> None:
    with pytest.raises(SipParseError):
        Via.parse(text)


# -- name-addr and addr-spec -----------------------------------------------------


def test_name_addr_parameters_belong_to_the_header() -> None:
    addr = Address.parse('"Alice" <sip:alice@atlanta.example.com;transport=tcp>;tag=88sja8x;x=1')
    assert addr.display_name == "Alice"
    assert addr.params == (("tag", "88sja8x"), ("x", "1")) and addr.tag == "88sja8x"
    assert isinstance(addr.uri, SipURI) and addr.uri.params == (("transport", "tcp"),)
    assert addr.sip_uri is addr.uri


def test_addr_spec_parameters_belong_to_the_header() -> None:
    # §20.10: without <>, everything after the URI's first ';' is a header parameter.
    addr = Address.parse("sip:alice@atlanta.example.com;transport=tcp;tag=88sja8x")
    assert addr.display_name is None
    assert addr.params == (("transport", "tcp"), ("tag", "88sja8x"))
    assert addr.uri == parse_uri("sip:alice@atlanta.example.com")
    assert str(addr) == "<sip:alice@atlanta.example.com>;transport=tcp;tag=88sja8x"


@pytest.mark.parametrize(
    "text, display",
    [
        ('"Bob" <sip:bob@b.example.com>', "Bob"),
        ('"Bob \\"the builder\\" \\\\o/" <sip:bob@b.example.com>', 'Bob "the builder" \\o/'),
        ('"" <sip:bob@b.example.com>', ""),
        ('"Zoë Ångström"<sip:bob@b.example.com>', "Zoë Ångström"),
        ("Bob  the\tBuilder <sip:bob@b.example.com>", "Bob the Builder"),
        ("caller<sip:bob@b.example.com>", "caller"),
        ("<sip:bob@b.example.com>", None),
        ("  <sip:bob@b.example.com>  ", None),
        ("sip:bob@b.example.com", None),
    ],
)
def test_display_names(text: str, display: str | None) -> None:
    addr = Address.parse(text)
    assert addr.display_name == display
    assert str(addr.uri) == "sip:bob@b.example.com"


def test_other_uri_schemes_in_addresses() -> None:
    assert isinstance(Address.parse("<tel:+15555550100>;tag=t").uri, TelURI)
    assert Address.parse("tel:+15555550100;tag=t").params == (("tag", "t"),)
    assert Address.parse("<urn:service:sos>").uri == AbsoluteURI("urn", "service:sos")


def test_address_params_with_lws_and_quotes() -> None:
    addr = Address.parse('<sip:a@b.example.com> ; q = 0.7 ; +sip.instance="<urn:uuid:0000-1000-8000>"')
    assert addr.param("q") == "0.7"
    assert unquoted(addr.param("+sip.instance")) == "<urn:uuid:0000-1000-8000>"


def test_address_output_and_helpers() -> None:
    addr = Address.parse("Bob <sip:bob@b.example.com>")
    tagged = addr.with_param("tag", "abc")
    assert str(tagged) == "Bob <sip:bob@b.example.com>;tag=abc"
    assert str(tagged.with_param("TAG", "def")) == "Bob <sip:bob@b.example.com>;TAG=def"
    assert str(tagged.without_param("Tag")) == "Bob <sip:bob@b.example.com>"
    assert str(Address(parse_uri("sip:a@b.example.com"), 'Doe, "J"')) == '"Doe, \\"J\\"" <sip:a@b.example.com>'
    assert str(Address(parse_uri("sip:a@b.example.com"), "a  b")) == '"a  b" <sip:a@b.example.com>'
    assert str(Address(parse_uri("sip:a@b.example.com"), "")) == "<sip:a@b.example.com>"
    for text in ('"A \\"B\\"" <sip:a@b.example.com>;tag=1', "A B <sip:a@b.example.com>", "<sip:a@b.example.com>;lr"):
        assert Address.parse(str(Address.parse(text))) == Address.parse(text)


@pytest.mark.parametrize(
    "text, reason",
    [
        ('"Mr. J. User <sip:j.user@example.com>', "unterminated"),
        ('"Bob" sip:bob@b.example.com', "without <URI>"),
        ("Bell, Alexander <sip:a.g.bell@example.com>", "display name"),
        ("Bob (the builder) <sip:bob@b.example.com>", "display name"),
        ("<sip:bob@b.example.com", "missing '>'"),
        ("< sip:t.watson@example.org >", "whitespace inside URI"),
        ("<sip:a@b.example.com>x", "expected ';'"),
        ("sip:user@example.com?Route=%3Csip:sip.example.com%3E", "must be in <>"),
        ("sip:a@b.example.com, sip:c@d.example.com", "must be in <>"),
        ("sip:a @b.example.com", "whitespace inside URI"),
        ("", "bad URI"),
        ("<>", "bad URI"),
        ("<sip:bob@b.example.com>;tag", None),
    ],
)
def test_address_malformed(text: str, reason: str | None) -> None:
    if reason is None:  # a flag parameter is fine
        assert Address.parse(text).has_param("tag")
        return
    with pytest.raises(SipParseError, match=reason):
        Address.parse(text)


# -- CSeq ------------------------------------------------------------------------------


def test_cseq() -> None:
    assert CSeq.parse("314159 INVITE") == CSeq(314159, "INVITE")
    assert CSeq.parse("  0009 \t INVITE ") == CSeq(9, "INVITE")
    assert CSeq.parse("2147483647 X-NEW") == CSeq(2**31 - 1, "X-NEW")
    assert str(CSeq(1, "BYE")) == "1 BYE"


@pytest.mark.parametrize(
    "text", ["", "1", "INVITE", "1 ", "-1 INVITE", "2147483648 INVITE", "36893488147419103232 REGISTER",
             "1 IN VITE", "1 INVITE extra", "x1 INVITE", "١ INVITE", "1\u00a0INVITE", "1 INVITÉ",
             # The shape of the str-methods fast path, with what it must not let by.
             "12345678901 INVITE", "1 ", " 1", "1 INVITE\r\n", "¹ INVITE", "1 ΙNVITE", "1 INVITE;"],
)
def test_cseq_malformed(text: str) -> None:
    with pytest.raises(SipParseError):
        CSeq.parse(text)


def test_angle_bracket_in_a_quoted_parameter_of_an_addr_spec() -> None:
    # Found by hypothesis: the '<' is part of a parameter value, not a name-addr.
    addr = Address.parse('tel:+1;x="<";tag=0')
    assert addr.display_name is None and str(addr.uri) == "tel:+1"
    assert addr.params == (("x", '"<"'), ("tag", "0"))


def test_via_rport_is_checked_whatever_its_case() -> None:
    with pytest.raises(SipParseError, match="bad rport"):
        Via.parse("SIP/2.0/UDP h.example.com;branch=z9hG4bK1;RPORT=x")
    assert Via.parse("SIP/2.0/UDP h.example.com;branch=z9hG4bK1;RPort=5062").rport == 5062


@pytest.mark.parametrize(
    "text",
    [
        "<sip:alice@atlanta.example.com>",
        "Alice <sip:alice@atlanta.example.com>;tag=1928301774",
        '"Alice Liddell" <SIP:alice@192.0.2.1:5070;transport=TCP;lr>;expires=60;q=0.5',
        "Bob\t Smith  <sips:bob@biloxi.example.com.>",
        "<sip:192.0.2.4:5060;transport=udp>;expires=3600",
        "<sip:bob;x=y@example.com>;+sip.instance=x",
        "<sip:bob@example.com:0>",
        "<sip:bob@example.com:65536>",
        "<sip:bob@example.com:065535>",
    ],
)
def test_name_addr_fast_path_agrees_with_the_general_parser(text: str) -> None:
    # The one-regex path for <sip:...> must give what the careful path gives,
    # errors included (a port out of range fits the pattern but is refused).
    try:
        expected = _parse_address_general(text)
    except SipParseError:
        with pytest.raises(SipParseError, match="bad port"):
            Address.parse(text)
        return
    assert _PLAIN_SIP_NAME_ADDR.fullmatch(text) is not None
    assert Address.parse(text) == expected


@pytest.mark.parametrize(
    "sent_by, host, port",
    [
        ("192.0.2.101:5060", "192.0.2.101", 5060),
        ("10.0.0.1", "10.0.0.1", None),
        ("1.2.3.4.example.com:5070", "1.2.3.4.example.com", 5070),
        ("255.255.255.255", "255.255.255.255", None),
        ("pc33.atlanta.example.com", "pc33.atlanta.example.com", None),
    ],
)
def test_via_fast_path_hosts(sent_by: str, host: str, port: int | None) -> None:
    # The fast path tries IPv4 before hostnames; a name that starts like an
    # address must still come out whole.
    via = Via.parse(f"SIP/2.0/UDP {sent_by};branch=z9hG4bK1;rport")
    assert (via.host, via.port, via.params) == (host, port, (("branch", "z9hG4bK1"), ("rport", None)))
    address = Address.parse(f"<sip:u@{sent_by}>;tag=1")
    assert (address.uri.host, address.uri.port) == (host, port)  # type: ignore[union-attr]


@pytest.mark.parametrize("sent_by", ["1.2.3.256", "1.2.3.4:0", "1.2.3.4:65536", "1.2.3"])
def test_via_fast_path_refuses_what_the_careful_path_refuses(sent_by: str) -> None:
    with pytest.raises(SipParseError):
        Via.parse(f"SIP/2.0/UDP {sent_by};branch=z9hG4bK1")


def test_via_rport_value_is_checked_in_any_case_on_the_fast_path() -> None:
    assert Via.parse("SIP/2.0/UDP 192.0.2.1;RPort=5060;branch=z9hG4bK1").rport == 5060
    with pytest.raises(SipParseError, match="bad rport"):
        Via.parse("SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK1;RPORT=0")


# -- the value classes ------------------------------------------------------------------


@pytest.mark.parametrize(
    "value, field, changed",
    [
        (Via.parse("SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK1"), "host", "192.0.2.2"),
        (Address.parse("Bob <sip:bob@biloxi.example.com>;tag=1"), "display_name", "Robert"),
        (CSeq.parse("1 INVITE"), "seq", 2),
        (parse_uri("sip:bob@biloxi.example.com"), "user", "carol"),
    ],
)
def test_parsed_values_are_immutable_and_compare_by_value(value: object, field: str, changed: object) -> None:
    # Parsed values are shared through caches and between a request and its
    # responses: no field may be set, and equal values hash alike.
    with pytest.raises(AttributeError):
        setattr(value, field, changed)
    twin = attrs.evolve(value, **{field: getattr(value, field)})  # type: ignore[misc]
    assert twin == value and hash(twin) == hash(value) and twin is not value
    other = attrs.evolve(value, **{field: changed})  # type: ignore[misc]
    assert getattr(other, field) == changed and other != value
    assert f"{field}={changed!r}" in repr(other) and "_" + field not in repr(other)


def test_value_classes_take_their_public_field_names() -> None:
    via = Via(transport="UDP", host="192.0.2.1", port=5060, params=(("branch", "z9hG4bK1"),))
    assert str(via) == "SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK1"
    assert repr(CSeq(seq=1, method="BYE")) == "CSeq(seq=1, method='BYE')"
    address = Address(uri=SipURI(host="h", user="u"), display_name="A", params=(("tag", "1"),))
    assert str(address) == "A <sip:u@h>;tag=1" and address.tag == "1"
