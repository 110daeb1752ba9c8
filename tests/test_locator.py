"""The locator webhook against a real Klein receiver on loopback, and its payload shape."""

from __future__ import annotations

import json

import pytest
import pytest_twisted
from klein import Klein
from twisted.internet import defer, reactor, task
from twisted.web.server import Site

from pbxd.hooks.client import WebhookClient
from pbxd.hooks.locator import LOCATOR_EVENTS, LocatorNotifier, locator_payload
from pbxd.store import Binding


def binding(**overrides) -> Binding:
    fields = dict(
        aor="sip:1001@pbx.com",
        contact_uri="sip:1001@192.168.1.50:5060;transport=tls",
        expires_at=1708204834.0,
        call_id="reg-1",
        cseq=7,
        source_transport="tls",
        source_host="1.2.3.4",
        source_port=12345,
        received_at=1708201234.0,
        user_agent="MicroSIP/3.21.3",
    )
    fields.update(overrides)
    return Binding(**fields)


class EventReceiver:
    app = Klein()

    def __init__(self, failures: int = 0) -> None:
        self.failures = failures  # answer 503 this many times first
        self.events: list[dict] = []
        self.headers: list[str | None] = []

    @app.route("/events", methods=["POST"])
    def events(self, request):
        self.headers.append(request.getHeader("x-api-key"))
        if self.failures:
            self.failures -= 1
            request.setResponseCode(503)
            return b""
        self.events.append(json.loads(request.content.read()))
        return b""


@pytest_twisted.async_yield_fixture
async def client():
    webhook_client = WebhookClient(reactor)
    yield webhook_client
    await webhook_client.stop()


async def serve(receiver: EventReceiver):
    port = reactor.listenTCP(0, Site(receiver.app.resource()), interface="127.0.0.1")
    return port, f"http://127.0.0.1:{port.getHost().port}/events"


def test_payload_has_the_seed_shape() -> None:
    assert locator_payload("registered", binding(), now=1708201234.0) == {
        "event": "registered",
        "timestamp": 1708201234,
        "location": {
            "aor": "sip:1001@pbx.com",
            "destination": "1.2.3.4:12345",
            "transport": "TLS",
            "user_agent": "MicroSIP/3.21.3",
            "expires": 3600,
            "contact": "sip:1001@192.168.1.50:5060;transport=tls",
        },
    }


def test_payload_of_a_gone_binding_and_an_ipv6_flow() -> None:
    assert locator_payload("registered", binding(), now=1708201234.9)["timestamp"] == 1708201234
    gone = locator_payload("offline", binding(source_host="2001:db8::7", source_transport="udp"),
                           now=1708201300.0)
    assert gone["location"]["destination"] == "[2001:db8::7]:12345"
    assert gone["location"]["transport"] == "UDP"
    assert gone["location"]["expires"] == 0
    assert locator_payload("registered", binding(), now=1708209999.0)["location"]["expires"] == 0


@pytest_twisted.ensureDeferred
async def test_events_reach_the_receiver(client) -> None:
    receiver = EventReceiver()
    port, url = await serve(receiver)
    try:
        notifier = LocatorNotifier(client, url, headers={"X-API-Key": "k"})
        current = binding(expires_at=reactor.seconds() + 3600)
        pending = [notifier.notify(event, current) for event in LOCATOR_EVENTS]
        assert not any(d.called for d in pending)  # the caller did not wait
        assert await defer.gatherResults(pending) == [True, True, True]
    finally:
        await port.stopListening()
    assert [e["event"] for e in receiver.events] == list(LOCATOR_EVENTS)
    registered = receiver.events[0]
    assert set(registered) == {"event", "timestamp", "location"}
    assert set(registered["location"]) == {"aor", "destination", "transport", "user_agent",
                                           "expires", "contact"}
    assert registered["location"]["destination"] == "1.2.3.4:12345"
    assert 0 < registered["location"]["expires"] and isinstance(registered["timestamp"], int)
    assert receiver.headers == ["k", "k", "k"]


@pytest_twisted.ensureDeferred
async def test_events_not_configured_are_not_sent(client) -> None:
    receiver = EventReceiver()
    port, url = await serve(receiver)
    try:
        notifier = LocatorNotifier(client, url, events=["offline"])
        assert await notifier.notify("registered", binding()) is False
        assert await notifier.notify("offline", binding()) is True
    finally:
        await port.stopListening()
    assert [e["event"] for e in receiver.events] == ["offline"]


@pytest_twisted.ensureDeferred
async def test_failures_are_retried_with_back_off(client) -> None:
    receiver = EventReceiver(failures=2)
    port, url = await serve(receiver)
    try:
        notifier = LocatorNotifier(client, url, retries=3, backoff=0.01)
        first = notifier.notify("registered", binding())
        # Queued behind the retried "registered" of the same AOR, not overtaking it.
        second = notifier.notify("unregistered", binding())
        assert await defer.gatherResults([first, second]) == [True, True]
    finally:
        await port.stopListening()
    assert len(receiver.headers) == 4
    assert [e["event"] for e in receiver.events] == ["registered", "unregistered"]
    assert notifier._tails == {}


@pytest_twisted.ensureDeferred
async def test_a_receiver_that_is_down_costs_the_caller_nothing(client) -> None:
    port, url = await serve(EventReceiver())
    await port.stopListening()
    notifier = LocatorNotifier(client, url, retries=1, backoff=0.01)
    d = notifier.notify("unregistered", binding())
    assert not d.called
    assert await d is False  # logged, not raised
    assert client.metrics.failed == 1


def test_a_refusal_is_not_retried_and_reported_false() -> None:
    from treq.testing import StubTreq
    from twisted.web.resource import Resource

    class Refuse(Resource):
        isLeaf = True
        calls = 0

        def render_POST(self, request):
            Refuse.calls += 1
            request.setResponseCode(400)
            return b""

    client = WebhookClient(task.Clock(), treq_client=StubTreq(Refuse()))
    results: list = []
    LocatorNotifier(client, "http://hooks.test/events").notify("registered",
                                                               binding()).addBoth(results.append)
    assert results == [False] and Refuse.calls == 1


def test_unknown_events_are_programming_errors() -> None:
    client = WebhookClient(task.Clock(), treq_client=object())
    with pytest.raises(ValueError):
        LocatorNotifier(client, "http://x/events", events=["registered", "moved"])
    with pytest.raises(ValueError):
        LocatorNotifier(client, "http://x/events").notify("moved", binding())
