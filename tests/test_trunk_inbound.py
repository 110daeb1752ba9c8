"""Recognising the trunk of an incoming request (addresses, CIDRs, the registration
flow) and its DID (numbers normalised by the trunk's rules)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.task import Clock

from pbxd.config import parse_config
from pbxd.sip.message import Request, parse_message
from pbxd.transport import Target
from pbxd.trunks.dns import Locator
from pbxd.trunks.inbound import BY_ADDRESS, BY_DID, BY_REGISTRATION, InboundCall, InboundRefusal
from pbxd.trunks.numbers import NumberRules, strip_separators
from pbxd.trunks.trunk import TrunkRegistry

GERMANY = [{"pattern": r"00(\d+)", "replacement": r"+\1"}, {"pattern": r"0(\d+)", "replacement": r"+49\1"}]


def registry(*trunks: dict[str, Any]) -> TrunkRegistry:
    config = parse_config({"trunks": list(trunks)})
    return TrunkRegistry.from_config(config.trunks, Clock(), Locator(resolver=object(), clock=Clock()))


def invite(ruri: str, to: str = "sip:someone@pbx.test", from_: str = "sip:+4940111@carrier.test") -> Request:
    return parse_message(
        f"INVITE {ruri} SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKx\r\n"
        f"From: <{from_}>;tag=a\r\nTo: <{to}>\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\nMax-Forwards: 70\r\n"
        "Content-Length: 0\r\n\r\n".encode()
    )  # type: ignore[return-value]


def source(host: str) -> Target:
    return Target("udp", host, 5060)


TRUNKS = (
    {"name": "berlin", "destination": {"host": "192.0.2.10"}, "inbound_hosts": ["192.0.2.0/28", "2001:db8::/32"],
     "dids": ["+4930123456", "+49301239*"], "normalize": GERMANY},
    {"name": "open", "destination": {"host": "198.51.100.1"}, "dids": ["+4989000"], "accept_unknown_sources": True},
    {"name": "closed", "destination": {"host": "198.51.100.2"}, "dids": ["+4940555"],
     "username": "acc", "password": "pw", "register": {"enabled": True}},
)


def test_source_in_a_cidr_with_a_normalised_did() -> None:
    trunks = registry(*TRUNKS)
    match = trunks.match_inbound(invite("sip:030123456@pbx.test", from_="sip:040-111@c"), source("192.0.2.3"))
    assert isinstance(match, InboundCall)
    assert (match.trunk.name, match.called, match.did, match.caller, match.how) == (
        "berlin", "+4930123456", "+4930123456", "+4940111", BY_ADDRESS)


def test_did_blocks_ipv6_and_mapped_ipv4_sources() -> None:
    trunks = registry(*TRUNKS)
    match = trunks.match_inbound(invite("sip:0049301239%2077@pbx.test"), source("2001:db8::5"))
    assert isinstance(match, InboundCall) and match.did == "+49301239*" and match.called == "+493012397" + "7"
    mapped = trunks.match_inbound(invite("sip:030123456@pbx.test"), source("::ffff:192.0.2.9"))
    assert isinstance(mapped, InboundCall) and mapped.trunk.name == "berlin"


def test_a_trunk_source_calling_no_did_is_still_the_trunks() -> None:
    match = registry(*TRUNKS).match_inbound(invite("sip:999@pbx.test"), source("192.0.2.1"))
    assert isinstance(match, InboundCall) and match.did is None and match.called == "999"


def test_to_user_is_tried_after_the_request_uri() -> None:
    match = registry(*TRUNKS).match_inbound(invite("sip:pbx.test", to="tel:030123456"), source("192.0.2.1"))
    assert isinstance(match, InboundCall) and match.did == "+4930123456"


def test_unknown_source_to_a_did_is_refused_unless_the_trunk_accepts_it() -> None:
    trunks = registry(*TRUNKS)
    refused = trunks.match_inbound(invite("sip:030123456@pbx.test"), source("203.0.113.9"))
    assert isinstance(refused, InboundRefusal)
    assert (refused.trunk.name, refused.did) == ("berlin", "+4930123456")
    accepted = trunks.match_inbound(invite("sip:+4989000@pbx.test"), source("203.0.113.9"))
    assert isinstance(accepted, InboundCall) and accepted.how == BY_DID and accepted.trunk.name == "open"
    # The To user does not make an unknown source a DID call.
    assert trunks.match_inbound(invite("sip:1001@pbx.test", to="sip:+4989000@x"), source("203.0.113.9")) is None


def test_unknown_source_to_no_did_is_no_trunks() -> None:
    assert registry(*TRUNKS).match_inbound(invite("sip:1001@pbx.test"), source("203.0.113.9")) is None
    assert registry().match_inbound(invite("sip:1001@pbx.test"), source("192.0.2.1")) is None


def test_the_registration_flow_by_line_token_and_by_address() -> None:
    trunks = registry(*TRUNKS)
    closed = trunks.trunk("closed")
    assert closed is not None
    line = closed.line
    match = trunks.match_inbound(invite(f"sip:acc@192.0.2.200:5060;line={line}", to="sip:+4940555@x"),
                                 source("203.0.113.50"))
    assert isinstance(match, InboundCall) and match.how == BY_REGISTRATION
    assert (match.trunk.name, match.did, match.called) == ("closed", "+4940555", "+4940555")
    # A wrong token is nobody's: the number is a DID from an unknown source.
    wrong = trunks.match_inbound(invite("sip:acc@192.0.2.200;line=0000", to="sip:+4940555@x"), source("203.0.113.50"))
    assert wrong is None
    closed.registered_hosts = frozenset({"203.0.113.50"})
    by_flow = trunks.match_inbound(invite("sip:+4940555@pbx.test"), source("203.0.113.50"))
    assert isinstance(by_flow, InboundCall) and by_flow.how == BY_REGISTRATION and by_flow.did == "+4940555"


def test_line_tokens_are_stable_and_differ_by_account() -> None:
    one = registry(*TRUNKS).trunk("closed")
    again = registry(*TRUNKS).trunk("closed")
    other = registry({**TRUNKS[2], "password": "other"}).trunk("closed")
    assert one is not None and again is not None and other is not None
    assert one.line == again.line != other.line


def test_malformed_requests_match_nothing() -> None:
    request = invite("sip:030123456@pbx.test")
    request.set("From", "<<<")
    assert registry(*TRUNKS).match_inbound(request, source("192.0.2.1")) is None


@pytest.mark.parametrize(("number", "expected"), [
    ("030 123-456", "+4930123456"),
    ("(030) 123.456", "+4930123456"),
    ("0044 20 7946 0000", "+442079460000"),
    ("+4930123456", "+4930123456"),
    ("112", "112"),
    ("", ""),
])
def test_number_rules_first_match_wins(number: str, expected: str) -> None:
    rules = NumberRules.from_config(parse_config({"trunks": [
        {"name": "t", "destination": {"host": "192.0.2.1"}, "normalize": GERMANY}]}).trunks[0].normalize)
    assert rules.normalize(number) == expected


def test_strip_separators() -> None:
    assert strip_separators(" +1 (555) 010-9999 ") == "+15550109999"


@given(st.text(max_size=40))
def test_any_number_normalises_without_error(number: str) -> None:
    rules = NumberRules.from_config(parse_config({"trunks": [
        {"name": "t", "destination": {"host": "192.0.2.1"}, "normalize": GERMANY}]}).trunks[0].normalize)
    normalized = rules.normalize(number)
    assert isinstance(normalized, str)
    trunk = registry(*TRUNKS).trunk("berlin")
    assert trunk is not None
    trunk.did_for(normalized)


@given(st.text(alphabet="sip:+0123456789@.;=[]<>% abc-", max_size=40))
def test_any_request_uri_matches_or_not_without_error(uri: str) -> None:
    request = invite("sip:x@pbx.test")
    request.set_uri(uri)
    registry(*TRUNKS).match_inbound(request, source("192.0.2.1"))
