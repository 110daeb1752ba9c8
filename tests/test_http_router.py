"""The HTTP router webhook and the Router fallback rules, against a real Klein
receiver on 127.0.0.1, plus the answer parser on malformed input."""

from __future__ import annotations

import json
from typing import Any

import attrs
import pytest
import pytest_twisted
from hypothesis import given
from hypothesis import strategies as st
from klein import Klein
from twisted.internet import defer, reactor
from twisted.web.server import Site

from pbxd.call.routing import (
    CallFacts,
    RouteDecision,
    RouteError,
    RouteTarget,
    StaticRouter,
)
from pbxd.config import parse_config
from pbxd.hooks.client import WebhookClient
from pbxd.hooks.http_router import (
    HttpRouter,
    Router,
    RouterFailure,
    parse_router_answer,
    router_request,
)
from pbxd.transport.target import Target

FACTS = CallFacts(
    call_id="ab39-551-229",
    from_header="<sip:1001@pbx.com>",
    from_uri="sip:1001@pbx.com",
    from_user="1001",
    to_header="<sip:200@pbx.com>",
    to_uri="sip:200@pbx.com",
    to_user="200",
    request_uri="sip:200@pbx.com",
    request_user="200",
    source=Target("udp", "1.2.3.4", 5060),
    direction="inbound",
    source_trunk="carrier",
    headers=(("User-Agent", "Yealink T54W"), ("X-Client-ID", "998877"),
             ("Supported", "replaces"), ("Supported", "timer")),
    body="v=0\r\n",
)

# What the static routes decide for FACTS: a route on the called number.
STATIC = StaticRouter.from_config(parse_config({"routes": [
    {"name": "two-hundred", "match": {"request_user": "200"}, "destination": "1002"}]}).routes)
STATIC_DECISION = RouteDecision(action="forward", source="static route two-hundred",
                                targets=(RouteTarget("1002"),), called="200")
UNAVAILABLE = RouteDecision(action="reject", source="http router", status=503,
                            reason="Service Unavailable")

# The router's timeout where a test waits for it to expire; the others allow a
# loaded machine's answer time (0.3 s failed answered requests under load).
TIMEOUT = 0.3
ANSWER_TIMEOUT = 5.0


class RouterReceiver:
    """Answers every POST with ``answer`` (status, body); ``hold`` leaves the
    request unanswered instead. Records what it got."""

    app = Klein()

    def __init__(self) -> None:
        self.answer: tuple[int, bytes] = (200, b"{}")
        self.hold = False
        self.requests: list[dict[str, Any]] = []
        self.arrived: defer.Deferred[None] = defer.Deferred()

    @app.route("/route", methods=["POST"])
    def route(self, request):
        self.requests.append({
            "headers": {k.decode().lower(): v[-1].decode()
                        for k, v in request.requestHeaders.getAllRawHeaders()},
            "body": json.loads(request.content.read()),
        })
        if not self.arrived.called:
            self.arrived.callback(None)
        if self.hold:
            return defer.Deferred()  # never answered
        status, body = self.answer
        request.setResponseCode(status)
        request.setHeader("content-type", "application/json")
        return body

    def answer_json(self, payload: Any, status: int = 200) -> None:
        self.answer = (status, json.dumps(payload).encode())


@pytest_twisted.async_yield_fixture
async def receiver():
    receiver = RouterReceiver()
    port = reactor.listenTCP(0, Site(receiver.app.resource()), interface="127.0.0.1")
    receiver.url = f"http://127.0.0.1:{port.getHost().port}/route"
    yield receiver
    await port.stopListening()


@pytest_twisted.async_yield_fixture
async def client():
    webhook_client = WebhookClient(reactor)
    yield webhook_client
    await webhook_client.stop()


def http_router(client: WebhookClient, url: str, fallback: bool = True,
                timeout: float = ANSWER_TIMEOUT) -> HttpRouter:
    return HttpRouter(client, url, headers={"X-API-Key": "secret-token"}, timeout=timeout,
                      fallback_to_static=fallback)


# --- the request ------------------------------------------------------------------------


def test_request_has_the_seed_shape() -> None:
    assert router_request(FACTS) == {
        "call_id": "ab39-551-229",
        "from": "<sip:1001@pbx.com>",
        "to": "<sip:200@pbx.com>",
        "source_addr": "1.2.3.4:5060",
        "direction": "inbound",
        "method": "INVITE",
        "uri": "sip:200@pbx.com",
        "headers": {"User-Agent": "Yealink T54W", "X-Client-ID": "998877",
                    "Supported": "replaces, timer"},
        "body": "v=0\r\n",
        "transport": "udp",
        "source_trunk": "carrier",
    }


def test_an_ipv6_source_is_bracketed() -> None:
    facts = attrs.evolve(FACTS, source=Target("tcp", "2001:db8::1", 5062))
    assert router_request(facts)["source_addr"] == "[2001:db8::1]:5062"


# --- every action, against a real receiver -----------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_forward_parallel_with_everything(receiver, client) -> None:
    receiver.answer_json({
        "action": "forward",
        "targets": ["sip:1001@192.168.1.50:5060", "sip:1002@192.168.1.51:5060"],
        "strategy": "parallel",
        "record": True,
        "timeout": 30,
        "max_ring_time": 45,
        "max_duration": 7200,
        "media_proxy": "nat",
        "headers": {"X-Call-Reason": "support-ticket-123"},
    })
    d = Router(STATIC, http_router(client, receiver.url)).decide(FACTS)
    assert not d.called  # the reactor goes on while the router thinks
    decision = await d
    assert decision == RouteDecision(
        action="forward", source="http router", strategy="parallel",
        targets=(RouteTarget("sip:1001@192.168.1.50:5060"),
                 RouteTarget("sip:1002@192.168.1.51:5060")),
        record=True, timeout=30.0, max_ring_time=45.0, max_duration=7200.0, media_proxy="nat",
        headers=(("X-Call-Reason", "support-ticket-123"),))
    [request] = receiver.requests
    assert request["body"] == router_request(FACTS)
    assert request["headers"]["x-api-key"] == "secret-token"
    assert request["headers"]["content-type"] == "application/json"


@pytest_twisted.ensureDeferred
async def test_forward_sequential_with_target_objects(receiver, client) -> None:
    receiver.answer_json({
        "action": "forward",
        "targets": [{"target": "1001", "timeout": 10, "headers": {"X-Step": "1"}},
                    "trunk:carrier", {"target": "tel:+15551234"}],
        "strategy": "sequential",
    })
    decision = await http_router(client, receiver.url).route(FACTS)
    assert decision == RouteDecision(
        action="forward", source="http router", strategy="sequential",
        targets=(RouteTarget("1001", headers=(("X-Step", "1"),), timeout=10.0),
                 RouteTarget("trunk:carrier"), RouteTarget("tel:+15551234")))
    assert [t.kind for t in decision.targets] == ["extension", "trunk", "uri"]
    # Left out: the defaults.
    assert (decision.record, decision.timeout, decision.media_proxy) == (False, None, "auto")


@pytest.mark.parametrize(("answer", "status", "reason"), [
    ({"action": "reject"}, 403, None),
    ({"action": "reject", "status": 486, "reason": "Busy Here"}, 486, "Busy Here"),
    ({"action": "abort", "status": 480}, 480, None),
    ({"action": "abort"}, 403, None),
    ({"action": "spam"}, 603, None),
    ({"action": "spam", "status": 608, "reason": "Rejected"}, 608, "Rejected"),
    ({"action": "reject", "status": None, "reason": None}, 403, None),
])
@pytest_twisted.ensureDeferred
async def test_refusals(receiver, client, answer, status, reason) -> None:
    receiver.answer_json(answer)
    decision = await Router(STATIC, http_router(client, receiver.url, fallback=True)).decide(FACTS)
    assert decision == RouteDecision(action=answer["action"], source="http router",
                                     status=status, reason=reason)


@pytest.mark.parametrize("fallback", [True, False])
@pytest_twisted.ensureDeferred
async def test_not_handled_goes_to_the_static_routes(receiver, client, fallback) -> None:
    receiver.answer_json({"action": "not_handled"})
    http = http_router(client, receiver.url, fallback)
    assert await http.route(FACTS) == RouteDecision.not_handled("http router")
    assert await Router(STATIC, http).decide(FACTS) == STATIC_DECISION
    # And when no static route matches either, nobody handles it.
    none = await Router(StaticRouter(), http).decide(FACTS)
    assert none.action == "not_handled"


@pytest_twisted.ensureDeferred
async def test_without_an_http_router_the_static_routes_decide_at_once() -> None:
    d = Router(STATIC).decide(FACTS)
    assert d.called and await d == STATIC_DECISION


@pytest_twisted.ensureDeferred
async def test_a_reload_swaps_the_static_routes(receiver, client) -> None:
    receiver.answer_json({"action": "not_handled"})
    router = Router(STATIC, http_router(client, receiver.url))
    router.static = StaticRouter()
    assert (await router.decide(FACTS)).action == "not_handled"


# --- every failure, with and without fallback ----------------------------------------------------

GARBAGE = [
    ("http 500", 500, b'{"action": "forward", "targets": ["1001"]}', "HTTP 500"),
    ("http 503", 503, b"", "HTTP 503"),
    ("http 404", 404, b'{"action": "not_handled"}', "HTTP 404"),
    ("http 302", 302, b"", "HTTP 302"),
    ("no content", 204, b"", "unusable answer"),
    ("not json", 200, b"<html>oops</html>", "unusable answer"),
    ("not utf-8", 200, b'{"action": "\xff"}', "unusable answer"),
    ("truncated json", 200, b'{"action": "forw', "unusable answer"),
    ("json array", 200, b'["forward"]', "not a JSON object"),
    ("json string", 200, b'"forward"', "not a JSON object"),
    ("no action", 200, b'{"targets": ["1001"]}', "action must be one of"),
    ("unknown action", 200, b'{"action": "transfer"}', "action must be one of"),
    ("action not a string", 200, b'{"action": ["forward"]}', "action must be one of"),
    ("unknown key", 200, b'{"action": "forward", "targets": ["1"], "recrod": true}',
     "unknown keys ['recrod']"),
    ("forward without targets", 200, b'{"action": "forward"}', "non-empty list of targets"),
    ("forward with empty targets", 200, b'{"action": "forward", "targets": []}',
     "non-empty list of targets"),
    ("targets not a list", 200, b'{"action": "forward", "targets": "1001"}',
     "non-empty list of targets"),
    ("target a number", 200, b'{"action": "forward", "targets": [1001]}',
     "must be a string or an object"),
    ("target not a target", 200, b'{"action": "forward", "targets": ["http://x/"]}',
     "not a sip:, sips: or tel: URI"),
    ("target object without target", 200, b'{"action": "forward", "targets": [{"timeout": 5}]}',
     "must be a string"),
    ("target object unknown key", 200,
     b'{"action": "forward", "targets": [{"target": "1", "uri": "x"}]}', "unknown target keys"),
    ("strategy unknown", 200, b'{"action": "forward", "targets": ["1"], "strategy": "random"}',
     "strategy must be one of"),
    ("record a string", 200, b'{"action": "forward", "targets": ["1"], "record": "yes"}',
     "record"),
    ("timeout a string", 200, b'{"action": "forward", "targets": ["1"], "timeout": "30"}',
     "timeout must be a number"),
    ("timeout negative", 200, b'{"action": "forward", "targets": ["1"], "timeout": -1}',
     "timeout must be greater than 0"),
    ("timeout NaN", 200, b'{"action": "forward", "targets": ["1"], "timeout": NaN}',
     "timeout must be greater than 0"),
    ("timeout a bool", 200, b'{"action": "forward", "targets": ["1"], "timeout": true}',
     "timeout must be a number"),
    ("max_ring_time zero", 200, b'{"action": "forward", "targets": ["1"], "max_ring_time": 0}',
     "max_ring_time must be greater than 0"),
    ("media_proxy unknown", 200,
     b'{"action": "forward", "targets": ["1"], "media_proxy": "sometimes"}',
     "media_proxy must be one of"),
    ("headers a list", 200, b'{"action": "forward", "targets": ["1"], "headers": ["X: y"]}',
     "headers must be an object"),
    ("header value a number", 200,
     b'{"action": "forward", "targets": ["1"], "headers": {"X-A": 1}}', "string value"),
    ("header injection", 200,
     b'{"action": "forward", "targets": ["1"], "headers": {"X-A": "a\\r\\nVia: evil"}}',
     "line break"),
    ("protected header", 200,
     b'{"action": "forward", "targets": ["1"], "headers": {"Contact": "<sip:evil>"}}',
     "written by pbxd"),
    ("reject status 200", 200, b'{"action": "reject", "status": 200}', "status must be"),
    ("reject status a string", 200, b'{"action": "reject", "status": "486"}', "status must be"),
    ("reject reason two lines", 200, b'{"action": "reject", "reason": "a\\r\\nb"}',
     "reason must be one line"),
]


@pytest.mark.parametrize("fallback", [True, False], ids=["fallback", "no-fallback"])
@pytest.mark.parametrize(("status", "body", "why"), [g[1:] for g in GARBAGE],
                         ids=[g[0] for g in GARBAGE])
@pytest_twisted.ensureDeferred
async def test_a_bad_answer_is_a_failure(receiver, client, status, body, why, fallback) -> None:
    receiver.answer = (status, body)
    http = http_router(client, receiver.url, fallback)
    failure = await http.route(FACTS)
    assert isinstance(failure, RouterFailure), failure
    assert why in failure.reason
    assert failure.http_status == status
    decision = await Router(STATIC, http).decide(FACTS)
    assert decision == (STATIC_DECISION if fallback else UNAVAILABLE)
    assert len(receiver.requests) == 2  # one attempt each: no retry on the INVITE path


@pytest.mark.parametrize("fallback", [True, False], ids=["fallback", "no-fallback"])
@pytest_twisted.ensureDeferred
async def test_a_slow_router_times_out(receiver, client, fallback) -> None:
    receiver.hold = True
    http = http_router(client, receiver.url, fallback, timeout=TIMEOUT)
    started = reactor.seconds()
    decision = await Router(STATIC, http).decide(FACTS)
    waited = reactor.seconds() - started
    assert decision == (STATIC_DECISION if fallback else UNAVAILABLE)
    assert TIMEOUT <= waited < TIMEOUT + 2.0
    assert len(receiver.requests) == 1


@pytest.mark.parametrize("fallback", [True, False], ids=["fallback", "no-fallback"])
@pytest_twisted.ensureDeferred
async def test_a_router_that_is_down(client, fallback) -> None:
    port = reactor.listenTCP(0, Site(RouterReceiver().app.resource()), interface="127.0.0.1")
    number = port.getHost().port
    await port.stopListening()  # connections to it are refused now
    # Twisted's HostnameEndpoint takes its 0.3 s attempt delay to report a refusal.
    http = http_router(client, f"http://127.0.0.1:{number}/route", fallback)
    failure = await http.route(FACTS)
    assert isinstance(failure, RouterFailure) and failure.http_status is None
    assert "refused" in failure.reason.lower()
    assert await Router(STATIC, http).decide(FACTS) == (
        STATIC_DECISION if fallback else UNAVAILABLE)


@pytest_twisted.ensureDeferred
async def test_cancelling_a_decision_cancels_the_request(receiver, client) -> None:
    receiver.hold = True
    d = Router(STATIC, http_router(client, receiver.url, fallback=True)).decide(FACTS)
    await receiver.arrived
    d.cancel()
    with pytest.raises(defer.CancelledError):
        await d


def test_router_from_config() -> None:
    config = parse_config({"routes": [{"name": "r", "destination": "1"}],
                           "http_router": {"url": "http://127.0.0.1:9/route", "timeout": 1.5,
                                           "headers": {"X-API-Key": "k"},
                                           "fallback_to_static": False}})
    with pytest.raises(ValueError):
        Router.from_config(config.routes, config.http_router, None)
    client = WebhookClient(reactor)
    router = Router.from_config(config.routes, config.http_router, client)
    assert router.static == StaticRouter.from_config(config.routes)
    assert router.http is not None
    assert (router.http.url, router.http.headers, router.http.timeout,
            router.http.fallback_to_static) == ("http://127.0.0.1:9/route", {"X-API-Key": "k"},
                                                1.5, False)
    assert Router.from_config((), parse_config({}).http_router, None).http is None


# --- the parser alone -----------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(st.sampled_from(["action", "targets", "strategy", "status", "reason",
                                       "record", "timeout", "max_ring_time", "media_proxy",
                                       "headers", "target"]) | st.text(max_size=6),
                      children, max_size=5),
    max_leaves=12,
)
actions = st.sampled_from(["forward", "reject", "abort", "spam", "not_handled"])


@given(st.dictionaries(st.just("action"), actions) | json_values,
       st.dictionaries(st.sampled_from(["targets", "strategy", "status", "reason", "record",
                                        "timeout", "media_proxy", "headers"]), json_values))
def test_any_answer_gives_a_decision_or_an_error(answer: Any, extra: dict) -> None:
    if isinstance(answer, dict):
        answer = {**extra, **answer}
    try:
        decision = parse_router_answer(answer)
    except (RouteError, TypeError):
        return
    assert isinstance(decision, RouteDecision)
