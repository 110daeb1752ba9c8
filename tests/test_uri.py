"""SIP, SIPS, TEL and other URIs (RFC 3261 §19.1, §25.1; RFC 3966)."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pbxd.sip.errors import SipParseError
from pbxd.sip.headers import Address
from pbxd.sip.uri import (
    _URI_CACHE,
    URI_CACHE_SIZE,
    HOSTNAME_PATTERN,
    IPV4_PATTERN,
    PLAIN_SIP_PATTERN,
    AbsoluteURI,
    SipURI,
    TelURI,
    bare_host,
    check_uri,
    parse_uri,
    split_hostport,
    uri_from_match,
    validate_host,
)


def sip(text: str) -> SipURI:
    uri = parse_uri(text)
    assert isinstance(uri, SipURI)
    return uri


# -- SIP and SIPS ------------------------------------------------------------------


def test_all_components() -> None:
    text = "sips:alice:secret@atlanta.example.com:5061;transport=tcp;lr?subject=project%20x&priority=urgent"
    uri = sip(text)
    assert uri.scheme == "sips" and uri.secure
    assert (uri.user, uri.password, uri.host, uri.port) == ("alice", "secret", "atlanta.example.com", 5061)
    assert uri.params == (("transport", "tcp"), ("lr", None))
    assert uri.headers == (("subject", "project%20x"), ("priority", "urgent"))
    assert uri.transport == "tcp" and uri.has_param("LR") and uri.param("lr") is None
    assert str(uri) == text


def test_host_only_and_scheme_case() -> None:
    uri = sip("SIP:Biloxi.Example.COM")
    assert (uri.scheme, uri.user, uri.host, uri.port) == ("sip", None, "Biloxi.Example.COM", None)
    assert str(uri) == "sip:Biloxi.Example.COM"


@pytest.mark.parametrize(
    "text, host, port",
    [
        ("sip:[2001:db8::1]", "[2001:db8::1]", None),
        ("sip:bob@[2001:db8::1]:5060;transport=tcp", "[2001:db8::1]", 5060),
        ("sip:[::ffff:192.0.2.1]:5062", "[::ffff:192.0.2.1]", 5062),
        ("sip:192.0.2.4:5060", "192.0.2.4", 5060),
        ("sip:010.0.0.1", "010.0.0.1", None),
        ("sip:host1", "host1", None),
        ("sip:a-b.example.com.", "a-b.example.com.", None),
        ("sip:1host.example.com", "1host.example.com", None),
        ("sip:u@h:65535", "h", 65535),
    ],
)
def test_hosts_and_ports(text: str, host: str, port: int | None) -> None:
    uri = sip(text)
    assert (uri.host, uri.port) == (host, port)
    assert str(uri) == text


def test_bare_host_strips_ipv6_brackets() -> None:
    assert bare_host("[2001:db8::1]") == "2001:db8::1"
    assert bare_host("example.com") == "example.com"
    assert split_hostport("[2001:db8::1]:5060") == ("[2001:db8::1]", 5060)
    assert split_hostport("example.com") == ("example.com", None)


def test_user_part_characters_and_escapes() -> None:
    # user-unreserved includes ';' '?' '/': the URI is split at '@' first.
    uri = sip("sip:user;par=u%40example.net@example.com")
    assert uri.user == "user;par=u%40example.net"
    assert uri.unescaped_user == "user;par=u@example.net"
    assert sip("sip:%41lice@example.com").unescaped_user == "Alice"
    assert sip("sip:a?b/c@example.com").user == "a?b/c"
    assert sip("sip:%E2%82%AC@example.com").unescaped_user == "€"
    assert sip("sip:+1-212-555-0101@gw.example.com;user=phone").param("user") == "phone"


@pytest.mark.parametrize(
    "text",
    [
        "", ":", "sip", "sip:", "sip:@example.com", "sip:user@", "sip:user@host:", "sip:user@host:port",
        "sip:user@host:0", "sip:user@host:65536", "sip:user@host:123456", "sip:user@host:٥٠٦٠",
        "sip:user@host:5²", "sip:us er@example.com", "sip:user@exa mple.com", "sip:user@ex_ample.com",
        "sip:user@-example.com", "sip:user@example-.com", "sip:user@example.123", "sip:user@256.1.1.1",
        "sip:user@1.2.3", "sip:user@1.2.3.4.5", "sip:a@b@c", "sip:%4@example.com", "sip:%GG@example.com",
        "sip:a\"b@example.com", "sip:a<b@example.com", "sip:user@[2001:db8::1", "sip:user@[2001:db8::g]",
        "sip:user@[2001:db8::1]x", "sip:user@[]", "sip:user@host;", "sip:user@host;;lr", "sip:user@host;=x",
        "sip:user@host;a=", "sip:user@host;a b", "sip:user@host?", "sip:user@host?x", "sip:user@host?=x",
        "sip:user@host?a=b&", "sip:user:pa;ss@host", "sip:user@host\r\n", "sip:user@hos\x00t",
        "1sip:user@host", "s p:x", "sip:user@h\u00e9st",
    ],
)
def test_malformed_sip_uris(text: str) -> None:
    with pytest.raises(SipParseError):
        parse_uri(text)


def test_errors_are_not_cached() -> None:
    for _ in range(2):
        with pytest.raises(SipParseError, match="bad port"):
            parse_uri("sip:user@host:99999")


def test_parsed_uris_are_shared_immutable_values() -> None:
    first = parse_uri("sip:carol@chicago.example.com")
    assert parse_uri("sip:carol@chicago.example.com") == first
    with pytest.raises(AttributeError):
        first.host = "elsewhere"  # type: ignore[misc]


def test_param_helpers() -> None:
    uri = sip("sip:bob@biloxi.example.com;Transport=UDP;maddr=192.0.2.9;lr")
    assert uri.transport == "udp" and uri.maddr == "192.0.2.9"
    changed = uri.with_params(transport="tcp", ob=None)
    assert str(changed) == "sip:bob@biloxi.example.com;maddr=192.0.2.9;lr;transport=tcp;ob"
    assert str(uri.without_params("LR", "maddr")) == "sip:bob@biloxi.example.com;Transport=UDP"
    assert str(uri) == "sip:bob@biloxi.example.com;Transport=UDP;maddr=192.0.2.9;lr"  # unchanged


def test_validate_host() -> None:
    assert validate_host("[::1]") == "[::1]"
    for bad in ("", "::1", "[::1", "a..b", "-a", "a_b"):
        with pytest.raises(SipParseError):
            validate_host(bad)


# -- RFC 3261 §19.1.4 comparison --------------------------------------------------


@pytest.mark.parametrize(
    "a, b",
    [
        ("sip:%61lice@atlanta.com;transport=TCP", "sip:alice@AtLanTa.CoM;Transport=tcp"),
        ("sip:carol@chicago.com", "sip:carol@chicago.com;newparam=5"),
        ("sip:carol@chicago.com", "sip:carol@chicago.com;security=on"),
        ("sip:carol@chicago.com;newparam=5", "sip:carol@chicago.com;security=on"),
        ("sip:biloxi.com;transport=tcp;method=REGISTER?to=sip:bob%40biloxi.com",
         "sip:biloxi.com;method=REGISTER;transport=tcp?to=sip:bob%40biloxi.com"),
        ("sip:alice@atlanta.com?subject=project%20x&priority=urgent",
         "sip:alice@atlanta.com?priority=urgent&subject=project%20x"),
    ],
)
def test_rfc3261_equivalent_uris(a: str, b: str) -> None:
    assert sip(a).equivalent(sip(b)) and sip(b).equivalent(sip(a))


@pytest.mark.parametrize(
    "a, b",
    [
        ("SIP:ALICE@AtLanTa.CoM;Transport=udp", "sip:alice@AtLanTa.CoM;Transport=UDP"),  # user differs
        ("sip:bob@biloxi.com", "sip:bob@biloxi.com:5060"),  # can resolve to different ports
        ("sip:bob@biloxi.com", "sip:bob@biloxi.com;transport=udp"),  # different transports
        ("sip:bob@biloxi.com", "sip:bob@biloxi.com:6000;transport=tcp"),  # port and transport
        ("sip:carol@chicago.com", "sip:carol@chicago.com?Subject=next%20meeting"),  # header component
        ("sip:bob@phone21.boxesbybob.com", "sip:bob@192.0.2.4"),  # even if one resolves to the other
        ("sip:carol@chicago.com;security=on", "sip:carol@chicago.com;security=off"),  # not transitive
        ("sip:alice@atlanta.com", "sips:alice@atlanta.com"),
        ("sip:alice:pw@atlanta.com", "sip:alice@atlanta.com"),
        ("sip:bob@biloxi.com;maddr=192.0.2.1", "sip:bob@biloxi.com"),
        ("sip:bob@biloxi.com;lr;ttl=1", "sip:bob@biloxi.com;lr;ttl=2"),
        ("sip:%FF@example.com", "sip:%FE@example.com"),  # invalid UTF-8 escapes stay distinct
    ],
)
def test_rfc3261_different_uris(a: str, b: str) -> None:
    assert not sip(a).equivalent(sip(b)) and not sip(b).equivalent(sip(a))


def test_equivalent_needs_a_sip_uri() -> None:
    assert not sip("sip:alice@atlanta.com").equivalent("sip:alice@atlanta.com")
    assert not sip("sip:alice@atlanta.com").equivalent(parse_uri("tel:+15555550100"))


# -- TEL and other schemes ----------------------------------------------------------


def test_tel_uris() -> None:
    uri = parse_uri("tel:+1-201-555-0123;ext=1234")
    assert isinstance(uri, TelURI)
    assert (uri.number, uri.is_global, uri.param("ext")) == ("+1-201-555-0123", True, "1234")
    local = parse_uri("TEL:7042;phone-context=example.com")
    assert isinstance(local, TelURI) and not local.is_global
    assert str(local) == "tel:7042;phone-context=example.com"


@pytest.mark.parametrize("text", ["tel:", "tel:+", "tel:+1 555", "tel:abc!", "tel:+1;", "tel:+1;=x", "tel:(-.)"])
def test_malformed_tel_uris(text: str) -> None:
    with pytest.raises(SipParseError):
        parse_uri(text)


def test_absolute_uris() -> None:
    for text in ("http://www.example.com/a?b=c", "urn:service:sos", "isbn:2983792873", "soap.beep://192.0.2.103:3002"):
        uri = parse_uri(text)
        assert isinstance(uri, AbsoluteURI) and str(uri) == text
    assert parse_uri("MAILTO:x@example.com") == AbsoluteURI("mailto", "x@example.com")


@pytest.mark.parametrize("text", ["http:", "http://a b", "urn:<x>", "x-y:caf\u00e9", "ht tp://x", "1a:b", "-:x"])
def test_malformed_absolute_uris(text: str) -> None:
    with pytest.raises(SipParseError):
        parse_uri(text)


def test_uri_cache_stays_bounded_and_errors_are_not_kept() -> None:
    for i in range(URI_CACHE_SIZE + 10):
        parse_uri(f"sip:user{i}@cache.example.com")
    assert len(_URI_CACHE) <= URI_CACHE_SIZE
    with pytest.raises(SipParseError):
        parse_uri("sip:bad host@example.com")
    assert "sip:bad host@example.com" not in _URI_CACHE


def test_name_addr_fast_path_shares_parsed_uris() -> None:
    # The To URI of an initial request is usually its Request-URI too.
    address = Address.parse("Bob <sip:bob-shared@biloxi.example.com>;tag=1")
    assert parse_uri("sip:bob-shared@biloxi.example.com") is address.uri


@pytest.mark.parametrize(
    "text",
    [
        "sip:bob@biloxi.example.com",
        "SIP:bob@192.0.2.4:5060;transport=UDP;lr",
        "sips:registrar.example.com",
        "sip:+15555550100;phone-context=x@gw.example.com;user=phone",
    ],
)
def test_checked_request_uris_build_as_parsed(text: str) -> None:
    # A plain sip: URI is checked while parsing and built when first read.
    _URI_CACHE.clear()
    checked = check_uri(text)
    assert isinstance(checked, re.Match)
    assert check_uri(text) is checked  # a second message finds the check in the cache
    built = uri_from_match(checked)
    _URI_CACHE.clear()
    assert built == parse_uri(text)
    assert parse_uri(text) is parse_uri(text)


def test_check_uri_hands_back_other_uris_parsed_or_refuses_them() -> None:
    assert check_uri("tel:+15555550100") == TelURI("+15555550100")
    assert check_uri("sip:[2001:db8::1]:5060") == parse_uri("sip:[2001:db8::1]:5060")
    for bad in ("sip:bob@example.com:0", "sip:bob@exa mple.com", "sip:"):
        with pytest.raises(SipParseError):
            check_uri(bad)


# -- the fast-path patterns against the grammar ------------------------------------

# RFC 3261 §25.1 as written: domainlabel = alphanum / alphanum *( alphanum / "-" )
# alphanum; toplabel = ALPHA / ALPHA *( alphanum / "-" ) alphanum; each IPv4 part
# 1*3DIGIT at most 255. The module's patterns are written for the regex
# engine's speed (possessive runs, octets reordered) and must accept exactly these.
_RFC_HOSTNAME = re.compile(
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9\-]*[A-Za-z0-9])?\.)*[A-Za-z](?:[A-Za-z0-9\-]*[A-Za-z0-9])?\.?"
)
_RFC_OCTET = r"(?:25[0-5]|2[0-4][0-9]|[01]?[0-9]?[0-9])"
_RFC_IPV4 = re.compile(rf"{_RFC_OCTET}(?:\.{_RFC_OCTET}){{3}}")
# The plain sip: URI as it was before the possessive runs, as the reference.
_RFC_PLAIN_SIP = re.compile(
    r"(?:([A-Za-z0-9\-_.!~*'()&=+$,;?/]+)@)?"
    rf"(?:({_RFC_IPV4.pattern})|({_RFC_HOSTNAME.pattern}))"
    r"(?::([0-9]{1,5}))?"
    r"((?:;[A-Za-z0-9\-_.!~*'()\[\]/:&+$]+(?:=[A-Za-z0-9\-_.!~*'()\[\]/:&+$]+)?)*)"
)


@settings(max_examples=1500, deadline=None)
@given(st.text("aZ09-.", max_size=14) | st.text("0125.9", max_size=16))
def test_host_patterns_accept_what_the_grammar_does(text: str) -> None:
    assert bool(re.fullmatch(HOSTNAME_PATTERN, text)) == bool(_RFC_HOSTNAME.fullmatch(text))
    assert bool(re.fullmatch(IPV4_PATTERN, text)) == bool(_RFC_IPV4.fullmatch(text))


@settings(max_examples=1500, deadline=None)
@given(st.text("a1-.@:;=5%/[]>", max_size=20))
def test_plain_sip_pattern_splits_as_the_grammar_does(text: str) -> None:
    mine, reference = re.fullmatch(PLAIN_SIP_PATTERN, text), _RFC_PLAIN_SIP.fullmatch(text)
    assert (mine and mine.groups()) == (reference and reference.groups())


@pytest.mark.parametrize(
    "host", ["a", "a.b", "a-b.c-d", "a--b.com", "9a.com", "example.com.", "1.2.3.4", "1.2.3.255", "001.02.3.4"]
)
def test_host_patterns_accept(host: str) -> None:
    assert validate_host(host) == host


@pytest.mark.parametrize("host", ["a-.com", "-a.com", "a.-b", "a.9", "a..b", ".a", "1.2.3.256", "1.2.3", "a.b-"])
def test_host_patterns_refuse(host: str) -> None:
    with pytest.raises(SipParseError):
        validate_host(host)
