"""The Trunk model: destinations and health, targets, identity, credentials, headers, state."""

from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted
from twisted.internet.task import Clock

from pbxd.config import parse_config
from pbxd.sip.digest import AuthOutcome, DigestAuthenticator, NonceManager, find_credentials, ha1
from pbxd.sip.message import Request, make_response, parse_message
from pbxd.transport import Target
from pbxd.trunks.dns import Locator
from pbxd.trunks.trunk import ANONYMOUS_FROM, Caller, Destination, Trunk, TrunkRegistry


def trunk(clock: Clock | None = None, **settings: Any) -> Trunk:
    clock = clock or Clock()
    config = parse_config({"trunks": [{
        "name": "carrier", "destination": {"host": "192.0.2.10", "port": 5060, "transport": "udp"},
        "backups": [{"host": "192.0.2.20"}, {"host": "2001:db8::20", "port": 5070, "transport": "tcp"}],
        **settings,
    }]}).trunks[0]
    return Trunk(config, clock, Locator(resolver=object(), clock=clock))


def invite() -> Request:
    return parse_message(
        b"INVITE sip:+4930123@192.0.2.10 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.200;branch=z9hG4bKq\r\n"
        b"From: <sip:1001@pbx.test>;tag=a\r\nTo: <sip:+4930123@192.0.2.10>\r\nCall-ID: c1\r\n"
        b"CSeq: 1 INVITE\r\nMax-Forwards: 70\r\nContent-Type: application/sdp\r\nContent-Length: 4\r\n\r\nv=0\n"
    )  # type: ignore[return-value]


def test_destinations_are_ordered_and_down_ones_skipped() -> None:
    clock = Clock()
    t = trunk(clock)
    primary, first_backup, second_backup = t.all_destinations()
    assert [str(d) for d in t.all_destinations()] == [
        "sip:192.0.2.10:5060;transport=udp", "sip:192.0.2.20", "sip:[2001:db8::20]:5070;transport=tcp"]
    assert t.destinations() == [primary, first_backup, second_backup]
    clock.advance(5)
    assert t.set_health(primary, False, "timeout") is True
    assert t.set_health(primary, False, "timeout again") is False
    assert t.health(primary).since == 5 and t.health(primary).reason == "timeout again"
    assert t.destinations() == [first_backup, second_backup] and t.next_destination() == first_backup
    t.set_health(first_backup, False, "503 Service Unavailable", 503)
    t.set_health(second_backup, False, "transport")
    assert t.destinations() == [primary, first_backup, second_backup]  # all down: try them all anyway
    t.set_health(second_backup, True, "200 OK", 200)
    assert t.destinations() == [second_backup]


@pytest_twisted.ensureDeferred
async def test_targets_follow_live_destinations_or_the_outbound_proxy() -> None:
    t = trunk()
    t.set_health(t.primary, False, "timeout")
    assert await t.targets() == [Target("udp", "192.0.2.20", 5060), Target("tcp", "2001:db8::20", 5070)]
    proxied = trunk(outbound_proxy="sip:192.0.2.99:5080;transport=tcp;lr")
    assert await proxied.targets() == [Target("tcp", "192.0.2.99", 5080)]
    assert proxied.route() == ("<sip:192.0.2.99:5080;transport=tcp;lr>",)
    assert t.route() == ()


def test_request_uri_escapes_the_number() -> None:
    t = trunk()
    assert t.request_uri("+4930 123") == "sip:+4930%20123@192.0.2.10:5060;transport=udp"
    assert t.request_uri("100", Destination("gw.example", None, None)) == "sip:100@gw.example"


@pytest.mark.parametrize(("settings", "caller", "from_address", "headers"), [
    ({}, Caller("+4930111", "Alice"), '"Alice" <sip:+4930111@192.0.2.10>', ()),
    ({"from_user": "acc", "from_domain": "carrier.test", "caller_id": {"pai": True}},
     Caller("+4930111"), "<sip:acc@carrier.test>",
     (("P-Asserted-Identity", "<sip:+4930111@carrier.test>"),)),
    ({"caller_id": {"pai": True, "rpid": True}}, Caller("+4930111", 'Bob "B"', private=True), ANONYMOUS_FROM,
     (("P-Asserted-Identity", '"Bob \\"B\\"" <sip:+4930111@192.0.2.10>'),
      ("Remote-Party-ID", '"Bob \\"B\\"" <sip:+4930111@192.0.2.10>;party=calling;screen=yes;privacy=full'),
      ("Privacy", "id"))),
    ({"caller_id": {"privacy": "never", "rpid": True}}, Caller("+4930111", private=True),
     "<sip:+4930111@192.0.2.10>",
     (("Remote-Party-ID", "<sip:+4930111@192.0.2.10>;party=calling;screen=yes;privacy=off"),)),
    ({"caller_id": {"privacy": "always"}}, Caller("+4930111"), ANONYMOUS_FROM, (("Privacy", "id"),)),
    ({"username": "acc", "password": "pw"}, Caller(None), "<sip:acc@192.0.2.10>", ()),
    ({}, Caller(None), "<sip:anonymous@192.0.2.10>", ()),
])
def test_identity_headers(settings: dict[str, Any], caller: Caller, from_address: str,
                          headers: tuple[tuple[str, str], ...]) -> None:
    identity = trunk(**settings).identity_headers(caller)
    assert identity.from_address == from_address
    assert identity.headers == headers


EXTENSION_DIDS = [{"pattern": r"0(\d+)", "replacement": r"+49\1"},
                  {"pattern": r"(1\d{3})", "replacement": r"+4930123\1"}]


@pytest.mark.parametrize(("settings", "number", "from_address", "asserted"), [
    # An extension's number becomes its DID by the trunk's rules, in From and PAI.
    ({}, "1001", "<sip:+49301231001@carrier.test>", "<sip:+49301231001@carrier.test>"),
    ({}, "030 555-12", "<sip:+493055512@carrier.test>", "<sip:+493055512@carrier.test>"),
    # from_user stays the From identity; PAI still says who calls.
    ({"from_user": "4930123"}, "1001", "<sip:4930123@carrier.test>", "<sip:+49301231001@carrier.test>"),
    # No rule matches: the number as it is; a name is no number and is not touched.
    ({}, "+4930999", "<sip:+4930999@carrier.test>", "<sip:+4930999@carrier.test>"),
    ({}, "alice.smith", "<sip:alice.smith@carrier.test>", "<sip:alice.smith@carrier.test>"),
])
def test_the_callers_number_is_presented_as_the_trunks_rules_make_it(
        settings: dict[str, Any], number: str, from_address: str, asserted: str) -> None:
    t = trunk(normalize=EXTENSION_DIDS, from_domain="carrier.test", caller_id={"pai": True, "rpid": True}, **settings)
    identity = t.identity_headers(Caller(number))
    assert identity.from_address == from_address
    assert identity.headers == (("P-Asserted-Identity", asserted),
                                ("Remote-Party-ID", f"{asserted};party=calling;screen=yes;privacy=off"))


def test_a_withheld_caller_is_still_asserted_with_its_normalised_number() -> None:
    t = trunk(normalize=EXTENSION_DIDS, from_domain="carrier.test", caller_id={"pai": True})
    identity = t.identity_headers(Caller("1001", private=True))
    assert identity.from_address == ANONYMOUS_FROM
    assert identity.headers == (("P-Asserted-Identity", "<sip:+49301231001@carrier.test>"), ("Privacy", "id"))


def test_credentials_answer_an_invite_challenge_with_the_right_header() -> None:
    clock = Clock()
    t = trunk(clock, username="acc", password="pw", auth_realm="carrier.test")
    assert t.credentials is not None and "pw" not in repr(t.credentials)
    server = DigestAuthenticator(NonceManager(b"s" * 32, clock, 60), "carrier.test", ("MD5", "SHA-256"))
    request = invite()
    challenge = make_response(request, 407)
    for value in server.challenge():
        challenge.add("Proxy-Authenticate", value)
    retry = request.copy()
    assert t.credentials.authorize(retry, challenge)
    credentials = find_credentials(retry, "carrier.test", proxy=True)
    assert credentials is not None and credentials.algorithm == "SHA-256"
    lookup = lambda user, realm, algorithm: ha1(user, realm, "pw", algorithm)  # noqa: E731
    assert server.verify(retry, credentials, lookup).outcome == AuthOutcome.OK
    # Another realm, another status, or nothing to answer: no credentials.
    other = DigestAuthenticator(NonceManager(b"s" * 32, clock, 60), "elsewhere", ("MD5",))
    foreign = make_response(request, 401)
    foreign.add("WWW-Authenticate", other.challenge()[0])
    assert not t.credentials.authorize(request.copy(), foreign)
    assert not t.credentials.authorize(request.copy(), make_response(request, 403))
    broken = make_response(request, 401)
    broken.add("WWW-Authenticate", "Digest nonsense")
    assert not t.credentials.authorize(request.copy(), broken)
    assert trunk().credentials is None


def test_passed_headers_keep_only_the_listed_ones() -> None:
    t = trunk(pass_headers=["X-Account", "P-Charge-Info"])
    headers = [("x-account", "7"), ("X-Other", "no"), ("P-Charge-Info", "<sip:1@x>"), ("Via", "SIP/2.0/UDP x")]
    assert t.passed_headers(headers) == [("x-account", "7"), ("P-Charge-Info", "<sip:1@x>")]


def test_status_for_the_api() -> None:
    t = trunk(max_calls=3, max_cps=2)
    permit = t.limits.acquire()
    status = t.status()
    assert status["name"] == "carrier" and status["registration"] is None
    assert status["active_calls"] == 1 and status["max_calls"] == 3 and status["max_cps"] == 2
    assert [d["primary"] for d in status["destinations"]] == [True, False, False]
    assert status["destinations"][0]["up"] is True
    permit.release()  # type: ignore[union-attr]
    assert t.status()["active_calls"] == 0


def test_registry_finds_trunks_by_name() -> None:
    clock = Clock()
    configs = parse_config({"trunks": [{"name": "a", "destination": {"host": "192.0.2.1"}},
                                       {"name": "b", "destination": {"host": "192.0.2.2"}}]}).trunks
    registry = TrunkRegistry.from_config(configs, clock, Locator(resolver=object(), clock=clock))
    assert [t.name for t in registry] == ["a", "b"] and len(registry) == 2
    assert registry.trunk("b") is not None and registry.trunk("c") is None


def test_an_ipv6_carrier_domain_is_bracketed() -> None:
    clock = Clock()
    config = parse_config({"trunks": [{"name": "v6", "destination": {"host": "2001:db8::5"}}]}).trunks[0]
    t = Trunk(config, clock, Locator(resolver=object(), clock=clock))
    assert t.domain == "[2001:db8::5]"
    assert t.identity_headers(Caller("+1")).from_address == "<sip:+1@[2001:db8::5]>"
    assert t.request_uri("+1") == "sip:+1@[2001:db8::5]"


@pytest_twisted.ensureDeferred
async def test_hops_pair_each_address_with_its_request_uri() -> None:
    t = trunk()
    d = t.hops("+4930123")
    assert d.called  # IP destinations need no DNS
    hops = await d
    assert [(h.request_uri, h.target, h.route) for h in hops] == [
        ("sip:+4930123@192.0.2.10:5060;transport=udp", Target("udp", "192.0.2.10", 5060), ()),
        ("sip:+4930123@192.0.2.20", Target("udp", "192.0.2.20", 5060), ()),
        ("sip:+4930123@[2001:db8::20]:5070;transport=tcp", Target("tcp", "2001:db8::20", 5070), ()),
    ]
    proxied = trunk(outbound_proxy="sip:192.0.2.99;lr")
    proxied.set_health(proxied.primary, False, "timeout")
    hops = await proxied.hops("100")
    assert [(h.request_uri, h.target) for h in hops] == [
        ("sip:100@192.0.2.20", Target("udp", "192.0.2.99", 5060)),
        ("sip:100@[2001:db8::20]:5070;transport=tcp", Target("udp", "192.0.2.99", 5060)),
    ]
    assert all(h.route == ("<sip:192.0.2.99;lr>",) for h in hops)
