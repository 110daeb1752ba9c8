"""Routing decisions, call facts and static routes (pbxd.call.routing), and the
``routes`` config section they are built from. Pure: no reactor, no sockets."""

from __future__ import annotations

import attrs
import pytest
import yaml

from pbxd.call.routing import (
    BUILTIN_EXTENSIONS_ROUTE,
    CallFacts,
    RouteDecision,
    RouteError,
    RouteTarget,
    StaticRouter,
)
from pbxd.config import ConfigError, parse_config
from pbxd.sip.message import parse_message
from pbxd.transport.target import Target


def facts(**overrides) -> CallFacts:
    fields = dict(
        call_id="call-1",
        from_header="<sip:1001@pbx.test>",
        from_uri="sip:1001@pbx.test",
        from_user="1001",
        to_header="<sip:1002@pbx.test>",
        to_uri="sip:1002@pbx.test",
        to_user="1002",
        request_uri="sip:1002@pbx.test",
        request_user="1002",
        source=Target("udp", "192.0.2.10", 5060),
        direction="internal",
        callee_is_extension=True,
    )
    fields.update(overrides)
    return CallFacts(**fields)


def router(text: str, builtin: bool = True) -> StaticRouter:
    return StaticRouter.from_config(parse_config(yaml.safe_load(text)).routes, builtin=builtin)


def config_error(text: str) -> str:
    with pytest.raises(ConfigError) as caught:
        parse_config(yaml.safe_load(text))
    return str(caught.value)


# --- facts ----------------------------------------------------------------------------

INVITE = (
    "INVITE sip:%2B15551234@pbx.test SIP/2.0\r\n"
    "Via: SIP/2.0/UDP 192.0.2.10:5062;branch=z9hG4bK-1\r\n"
    "From: \"Alice Smith\" <sip:1001@pbx.test>;tag=abc\r\n"
    "To: <tel:+15551234>\r\n"
    "Call-ID: call-42\r\n"
    "CSeq: 1 INVITE\r\n"
    "Max-Forwards: 70\r\n"
    "User-Agent: Yealink T54W\r\n"
    "X-Client-ID: 998877\r\n"
    "Proxy-Authorization: Digest username=\"1001\", response=\"secret\"\r\n"
    "Content-Type: application/sdp\r\n"
    "Content-Length: 10\r\n"
    "\r\n"
    "v=0\r\no=\xe9\r\n"
).encode("latin-1")


def test_facts_from_an_invite() -> None:
    source = Target("udp", "192.0.2.10", 5062)
    result = CallFacts.from_request(parse_message(INVITE), source, direction="outbound",
                                    callee_is_extension=False)
    assert result.call_id == "call-42"
    assert result.from_header == "Alice Smith <sip:1001@pbx.test>"  # no tag
    assert (result.from_uri, result.from_user) == ("sip:1001@pbx.test", "1001")
    assert (result.to_header, result.to_user) == ("<tel:+15551234>", "+15551234")
    # The user part is matched unescaped.
    assert (result.request_uri, result.request_user) == ("sip:%2B15551234@pbx.test", "+15551234")
    assert (result.source, result.direction, result.source_trunk) == (source, "outbound", None)
    assert result.method == "INVITE"
    names = [name for name, _ in result.headers]
    assert "Proxy-Authorization" not in names and "User-Agent" in names
    assert ("X-Client-ID", "998877") in result.headers
    assert result.body == "v=0\r\no=\ufffd\r\n"  # not UTF-8: replaced, not a crash


def test_facts_check_the_direction() -> None:
    with pytest.raises(RouteError):
        facts(direction="sideways")


# --- decisions and targets ---------------------------------------------------------------


@pytest.mark.parametrize(("destination", "kind"), [
    ("1001", "extension"),
    ("trunk:carrier-1", "trunk"),
    ("sip:1001@192.168.1.50:5060", "uri"),
    ("SIPS:bob@example.com", "uri"),
    ("tel:+15551234", "uri"),
])
def test_target_kinds(destination: str, kind: str) -> None:
    assert RouteTarget(destination).kind == kind
    assert RouteTarget(destination).trunk == ("carrier-1" if kind == "trunk" else None)


@pytest.mark.parametrize("destination", [
    "", "10 01", "trunk:", "trunk:bad name", "http://example.com/", "sip:", "sip:a b@c",
    "mailto:x@y", "1001@pbx", "{called}",
])
def test_bad_targets(destination: str) -> None:
    with pytest.raises(RouteError):
        RouteTarget(destination)


def test_bad_target_headers_and_timeouts() -> None:
    for headers in ((("Via", "x"),), (("X-A", "a\r\nVia: x"),), (("bad name", "x"),),
                    (("f", "compact From"),)):
        with pytest.raises(RouteError):
            RouteTarget("1001", headers=headers)
    for timeout in (0, -1, float("nan"), True):
        with pytest.raises(RouteError):
            RouteTarget("1001", timeout=timeout)


def test_decision_rules() -> None:
    with pytest.raises(RouteError, match="at least one target"):
        RouteDecision(action="forward", source="x")
    with pytest.raises(RouteError, match="takes no targets"):
        RouteDecision(action="reject", source="x", status=403, targets=(RouteTarget("1"),))
    with pytest.raises(RouteError, match="need a status"):
        RouteDecision(action="reject", source="x")
    with pytest.raises(RouteError, match="need a status"):
        RouteDecision(action="not_handled", source="x", status=404)
    with pytest.raises(RouteError, match="action"):
        RouteDecision(action="drop", source="x")
    with pytest.raises(RouteError, match="status"):
        RouteDecision.refusal("reject", "x", status=200)
    with pytest.raises(RouteError, match="reason"):
        RouteDecision.refusal("reject", "x", reason="two\r\nlines")
    with pytest.raises(RouteError):
        RouteDecision.refusal("forward", "x")


def test_refusals_default_their_status() -> None:
    assert RouteDecision.refusal("reject", "r").status == 403
    assert RouteDecision.refusal("abort", "r").status == 403
    assert RouteDecision.refusal("spam", "r").status == 603
    assert RouteDecision.refusal("reject", "r", 486, "Busy Here").reason == "Busy Here"


def test_ring_time_of_a_target() -> None:
    decision = RouteDecision(action="forward", source="x", timeout=30.0,
                             targets=(RouteTarget("1001"), RouteTarget("1002", timeout=5)))
    assert [decision.ring_time(t) for t in decision.targets] == [30.0, 5.0]


# --- static routes --------------------------------------------------------------------------


def test_the_builtin_route_forwards_to_a_local_extension() -> None:
    static = StaticRouter.from_config(())
    assert static.routes == (BUILTIN_EXTENSIONS_ROUTE,)
    decision = static.decide(facts())
    assert decision == RouteDecision(action="forward", source="static route extensions",
                                     targets=(RouteTarget("1002"),), called="1002")
    assert decision.targets[0].kind == "extension"
    assert static.decide(facts(callee_is_extension=False)) == RouteDecision.not_handled(
        "static routes")


def test_no_routes_at_all() -> None:
    assert StaticRouter.from_config((), builtin=False).decide(facts()).action == "not_handled"


def test_the_builtin_route_can_be_replaced_or_disabled() -> None:
    replaced = router("""
routes:
  - {name: to-trunk, match: {request_user: '.*'}, destination: "trunk:carrier"}
  - {name: extensions, priority: 500, match: {extension: true, direction: [internal]},
     destination: "{called}", ring_timeout: 20}
""")
    assert [r.name for r in replaced.routes] == ["to-trunk", "extensions"]
    assert replaced.decide(facts()).targets == (RouteTarget("trunk:carrier"),)
    disabled = router("routes: [{name: extensions, enabled: false}]")
    assert disabled.routes == ()
    assert disabled.decide(facts()).action == "not_handled"


ROUTES = """
routes:
  - name: outbound
    priority: 200
    match: {request_user: '9(\\d+)', direction: [outbound]}
    rewrite: {pattern: '9(\\d+)', replacement: '\\1'}
    destination: "trunk:carrier"
    record: true
    max_duration: 3600
  - name: us-numbers
    priority: 200
    match: {request_user: '\\d{10}'}
    rewrite: {pattern: '(\\d{10})', replacement: '+1\\1'}
    destination: "sip:{called}@carrier.example"
  - name: support
    priority: 50
    match: {request_user: '700'}
    destination: ["1001", "1002", "sip:help@desk.example"]
    strategy: sequential
    ring_timeout: 15
    media_proxy: always
    headers: {X-Queue: support}
  - name: blocked
    priority: 10
    match: {from_user: '666.*'}
    action: reject
    status: 486
    reason: Busy Here
  - name: from-carrier
    match: {source_trunk: 'carrier(-\\d)?', to_user: '\\+1555\\d+'}
    destination: "1001"
  - name: lab
    match: {source_ip: [10.0.0.0/8, "2001:db8::/32"]}
    action: reject
"""


def test_routes_are_tried_by_priority_then_config_order() -> None:
    static = router(ROUTES)
    assert [r.name for r in static.routes] == [
        "extensions", "blocked", "support", "from-carrier", "lab", "outbound", "us-numbers"]


def test_rewrite_strips_a_prefix_for_a_trunk() -> None:
    decision = router(ROUTES).decide(facts(request_user="915551234", direction="outbound",
                                           callee_is_extension=False))
    assert decision.source == "static route outbound"
    assert decision.targets == (RouteTarget("trunk:carrier"),)
    assert (decision.called, decision.record, decision.max_duration) == ("15551234", True, 3600.0)
    assert decision.timeout is None and decision.media_proxy == "auto"


def test_rewrite_adds_a_prefix_into_a_uri() -> None:
    decision = router(ROUTES).decide(facts(request_user="5551234567", callee_is_extension=False))
    assert decision.source == "static route us-numbers"
    assert decision.targets == (RouteTarget("sip:+15551234567@carrier.example"),)
    assert decision.called == "+15551234567"


def test_a_list_of_targets_with_everything_a_route_sets() -> None:
    decision = router(ROUTES).decide(facts(request_user="700", callee_is_extension=False))
    assert decision == RouteDecision(
        action="forward", source="static route support", strategy="sequential",
        targets=(RouteTarget("1001"), RouteTarget("1002"), RouteTarget("sip:help@desk.example")),
        timeout=15.0, media_proxy="always", headers=(("X-Queue", "support"),), called="700")


def test_reject_routes() -> None:
    static = router(ROUTES)
    assert static.decide(facts(from_user="6661234", callee_is_extension=False)) == (
        RouteDecision(action="reject", source="static route blocked", status=486,
                      reason="Busy Here"))
    lab = static.decide(facts(source=Target("tcp", "10.1.2.3", 5060), callee_is_extension=False))
    assert (lab.action, lab.status, lab.reason) == ("reject", 403, None)


def test_regexes_match_the_whole_value() -> None:
    static = router(ROUTES)
    # "9" then digits, but with a letter at the end: not a full match.
    assert static.decide(facts(request_user="91234x", direction="outbound",
                               callee_is_extension=False)).action == "not_handled"
    assert static.decide(facts(request_user="7000", callee_is_extension=False)).action == (
        "not_handled")
    # A URI without a user matches as "".
    assert static.decide(facts(request_user=None, callee_is_extension=False)).action == (
        "not_handled")


def test_source_trunk_and_to_user() -> None:
    static = router(ROUTES)
    inbound = dict(direction="inbound", callee_is_extension=False, to_user="+15550100",
                   request_user="+15550100")
    assert static.decide(facts(source_trunk="carrier-2", **inbound)).targets == (
        RouteTarget("1001"),)
    # No trunk (an extension or an unknown peer) never matches a trunk pattern.
    assert static.decide(facts(source_trunk=None, **inbound)).action == "not_handled"
    assert static.decide(facts(source_trunk="carrier-22", **inbound)).action == "not_handled"
    assert static.decide(facts(source_trunk="carrier", **dict(inbound, to_user="+1444"))
                         ).action == "not_handled"


@pytest.mark.parametrize(("host", "matched"), [
    ("10.0.0.1", True),
    ("10.255.255.255", True),
    ("11.0.0.1", False),
    ("2001:db8::5", True),
    ("2001:db9::5", False),
    ("::ffff:10.9.9.9", True),  # an IPv4 peer on a dual-stack socket
    ("pbx.example.com", False),
])
def test_source_ip_networks(host: str, matched: bool) -> None:
    decision = router(ROUTES).decide(facts(source=Target("udp", host, 5060),
                                           callee_is_extension=False))
    assert (decision.source == "static route lab") is matched


def test_extension_false_and_direction() -> None:
    static = router("""
routes:
  - {name: not-local, match: {extension: false, direction: [outbound, inbound]},
     destination: "trunk:carrier"}
""")
    assert static.decide(facts(callee_is_extension=False, direction="outbound")).targets == (
        RouteTarget("trunk:carrier"),)
    assert static.decide(facts(callee_is_extension=False, direction="internal")).action == (
        "not_handled")
    assert static.decide(facts()).source == "static route extensions"


def test_a_number_no_target_can_be_made_of_is_not_found() -> None:
    static = router("routes: [{name: any, match: {request_user: '.*'}, destination: '{called}'}]",
                    builtin=False)
    decision = static.decide(facts(request_user="not a number", callee_is_extension=False))
    assert (decision.action, decision.status, decision.source) == (
        "reject", 404, "static route any")


def test_the_called_number_is_escaped_in_a_sip_uri() -> None:
    static = router("routes: [{name: any, match: {request_user: '.*'}, "
                    "destination: 'sip:{called}@gw.example'}]", builtin=False)
    assert static.decide(facts(request_user="*72#1")).targets == (
        RouteTarget("sip:*72%231@gw.example"),)


def test_a_router_is_an_immutable_value() -> None:
    first = router(ROUTES)
    assert router(ROUTES) == first
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        first.routes = ()  # type: ignore[misc]
    reloaded = router("routes: []")
    assert reloaded != first
    assert first.decide(facts(request_user="700", callee_is_extension=False)).source == (
        "static route support")


# --- the routes config section ---------------------------------------------------------------


def test_route_defaults() -> None:
    [route] = parse_config({"routes": [{"name": "r", "destination": "1001"}]}).routes
    assert (route.priority, route.enabled, route.action, route.strategy) == (
        100, True, "forward", "parallel")
    assert route.destination == ("1001",)
    assert (route.status, route.reason, route.ring_timeout, route.max_duration) == (
        None, None, None, None)
    assert (route.record, route.media_proxy, route.headers) == (False, "auto", ())
    assert attrs.astuple(route.match) == (None, None, None, None, (), (), None)
    assert (route.rewrite.pattern, route.rewrite.replacement) == (None, "")


def test_routes_survive_command_line_overrides() -> None:
    config = parse_config(yaml.safe_load(ROUTES))
    assert config.with_overrides(log_level="debug").routes == config.routes


BAD_ROUTES = [
    ("routes: {name: a}", "routes: must be a list, got a mapping"),
    ("routes: [{destination: '1'}]", "routes[0].name: is required"),
    ("routes: [{name: a}]", "routes[0].destination: is required when action is forward"),
    ("routes: [{name: a, destination: '1'}, {name: a, destination: '2'}]",
     "routes[1].name: 'a' is already the name of routes[0]"),
    ("routes: [{name: a, destination: 1001}]",
     'routes[0].destination: must be a quoted string (write "1001"), got the number 1001'),
    ("routes: [{name: a, destination: {called}}]",
     'routes[0].destination: write "{called}" in quotes (unquoted, YAML reads a mapping)'),
    ("routes: [{name: a, destination: ['1', 'trunk:']}]",
     "routes[0].destination[1]: target 'trunk:': bad trunk name"),
    ("routes: [{name: a, destination: []}]",
     "routes[0].destination: is required when action is forward"),
    ("routes: [{name: a, destination: 'http://x/'}]",
     "routes[0].destination: target 'http://x/' is not a sip:, sips: or tel: URI"),
    ("routes: [{name: a, destination: '{callee}'}]",
     "routes[0].destination: destination '{callee}': the only placeholder is {called}"),
    ("routes: [{name: a, destination: '1', match: {request_user: '9(\\d+'}}]",
     "routes[0].match.request_user: is not a valid regular expression: "
     "missing ), unterminated subpattern at position 1"),
    ("routes: [{name: a, destination: '1', match: {from: '1'}}]",
     "routes[0].match.from: unknown key (did you mean 'from_user'?)"),
    ("routes: [{name: a, destination: '1', match: {source_ip: [10.0.0.0/33]}}]",
     "routes[0].match.source_ip[0]: must be an IP address or network, got '10.0.0.0/33'"),
    ("routes: [{name: a, destination: '1', match: {direction: internal}}]",
     "routes[0].match.direction: must be a list, got 'internal'"),
    ("routes: [{name: a, destination: '1', match: {direction: [up]}}]",
     "routes[0].match.direction[0]: must be one of internal, inbound, outbound, got 'up'"),
    ("routes: [{name: a, destination: '1', rewrite: {pattern: '9(.*)', replacement: '\\2'}}]",
     "routes[0].rewrite.replacement: replacement '\\\\2': invalid group reference 2 "
     "at position 1"),
    ("routes: [{name: a, destination: '1', rewrite: {replacement: '1'}}]",
     "routes[0].rewrite.replacement: is set but pattern is not"),
    ("routes: [{name: a, action: reject, destination: '1'}]",
     "routes[0].destination: is only for action forward"),
    ("routes: [{name: a, destination: '1', status: 486}]",
     "routes[0].status: is only for action reject"),
    ("routes: [{name: a, action: reject, status: 200}]",
     "routes[0].status: must be 400-699, got 200"),
    ("routes: [{name: a, action: abort}]", "routes[0].action: must be one of forward, reject, "
     "got 'abort'"),
    ("routes: [{name: a, action: reject, reason: ''}]",
     "routes[0].reason: must be a non-empty string, got ''"),
    ("routes: [{name: a, destination: '1', strategy: random}]",
     "routes[0].strategy: must be one of parallel, sequential, got 'random'"),
    ("routes: [{name: a, destination: '1', ring_timeout: 0}]",
     "routes[0].ring_timeout: must be greater than 0, got 0"),
    ("routes: [{name: a, destination: '1', media_proxy: sometimes}]",
     "routes[0].media_proxy: must be one of auto, always, none, nat, got 'sometimes'"),
    ("routes: [{name: a, destination: '1', headers: {Call-ID: x}}]",
     "routes[0].headers.Call-ID: header Call-ID is written by pbxd and cannot be injected"),
    ("routes: [{name: a, destination: '1', headers: {'X A': x}}]",
     "routes[0].headers.X A: header name 'X A' is not a SIP token"),
    ("routes: [{name: a, destination: '1', priority: 1.5}]",
     "routes[0].priority: must be an integer, got 1.5"),
    ("routes: [{name: a, destination: '1', record: 1}]",
     "routes[0].record: must be true or false, got 1"),
]


@pytest.mark.parametrize(("text", "message"), BAD_ROUTES, ids=[t for t, _ in BAD_ROUTES])
def test_bad_routes_name_the_key(text: str, message: str) -> None:
    assert config_error(text) == message
