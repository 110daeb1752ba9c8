"""The event bus: topics, order, failing subscribers, (un)subscribing while
publishing, event documents; and registration events from a real location
service on a real store."""

from __future__ import annotations

import json
from pathlib import Path

import attrs
import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import Clock

from pbxd.events import (
    CallEvent,
    EventBus,
    RegistrationEvent,
    TrunkEvent,
    registration_publisher,
    watch_trunks,
)
from pbxd.registrar.location import LocationService
from pbxd.store import Binding, Store

START = 1_700_000_000.0


def trunk_event(type: str = "up") -> TrunkEvent:
    return TrunkEvent(type, START, "carrier")


def test_subscribers_get_their_topics_in_order() -> None:
    bus = EventBus()
    seen: list[tuple[str, str]] = []
    bus.subscribe(lambda e: seen.append(("all", e.type)))
    bus.subscribe(lambda e: seen.append(("trunk", e.type)), ["trunk"])
    bus.subscribe(lambda e: seen.append(("call", e.type)), ["call"])
    bus.publish(trunk_event("down"))
    assert seen == [("all", "down"), ("trunk", "down")]
    assert bus.published["trunk"] == 1 and bus.published["call"] == 0


def test_a_failing_subscriber_breaks_neither_the_others_nor_the_publisher() -> None:
    bus = EventBus()
    seen: list[str] = []

    def broken(event: object) -> None:
        raise RuntimeError("boom")

    bus.subscribe(broken)
    bus.subscribe(lambda e: seen.append(e.type))
    bus.publish(trunk_event())
    bus.publish(trunk_event("down"))
    assert seen == ["up", "down"]
    assert bus.subscriber_errors == 2


def test_cancel_during_publish_takes_effect_from_the_next_event() -> None:
    bus = EventBus()
    seen: list[str] = []
    later = None

    def first(event: TrunkEvent) -> None:
        seen.append("first")
        assert later is not None
        later.cancel()

    bus.subscribe(first)
    later = bus.subscribe(lambda e: seen.append("later"))
    bus.publish(trunk_event())
    bus.publish(trunk_event())
    assert seen == ["first", "later", "first"]
    later.cancel()  # twice is harmless
    assert len(bus) == 1


def test_unknown_topics_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown topics: bogus"):
        EventBus().subscribe(print, ["call", "bogus"])


def test_event_types_are_checked() -> None:
    with pytest.raises(ValueError):
        CallEvent("exploded", START, "c", "1001", "1002", "internal")
    with pytest.raises(ValueError):
        RegistrationEvent("maybe", START, "sip:1@x", "sip:1@y", "udp:y:5060", START)


def test_event_documents_are_json() -> None:
    ended = CallEvent("ended", START, "abc@host", "1001", "1002", "internal",
                      disposition="answered", cause="normal_clearing", status=200)
    document = json.loads(json.dumps(ended.to_json()))
    assert document == {"topic": "call", "type": "ended", "time": START, "call_id": "abc@host",
                        "from": "1001", "to": "1002", "direction": "internal", "trunk": None,
                        "disposition": "answered", "cause": "normal_clearing", "status": 200}
    ringing = CallEvent("ringing", START, "x", "1", "2", "inbound", trunk="carrier").to_json()
    assert "disposition" not in ringing and ringing["trunk"] == "carrier"


def binding(now: float, source_host: str = "192.0.2.10") -> Binding:
    return Binding(aor="sip:1001@pbx.test", contact_uri="sip:1001@192.0.2.10:5062",
                   expires_at=now + 60, call_id="c1", cseq=1, source_transport="udp",
                   source_host=source_host, source_port=5062, received_at=now,
                   user_agent="Yealink T46")


@pytest_twisted.ensureDeferred
async def test_location_events_are_published(tmp_path: Path) -> None:
    store = await Store.open(str(tmp_path / "pbxd.sqlite3"), reactor)
    clock = Clock()
    clock.advance(START)
    location = LocationService(store, clock, domain="pbx.test")
    location.loaded = True
    bus = EventBus()
    location.observers.append(registration_publisher(bus, clock))
    seen: list[dict] = []
    bus.subscribe(lambda e: seen.append(e.to_json()), ["registration"])
    try:
        await location.commit("sip:1001@pbx.test", [binding(START, "2001:db8::5")], [])
        assert seen == [{
            "topic": "registration", "type": "registered", "time": START,
            "aor": "sip:1001@pbx.test", "user": "1001", "contact": "sip:1001@192.0.2.10:5062",
            "source": "udp:[2001:db8::5]:5062", "expires_at": START + 60,
            "user_agent": "Yealink T46",
        }]
        for _ in range(61):
            clock.advance(1)
        assert [e["type"] for e in seen] == ["registered", "offline"]
        assert seen[1]["time"] >= START + 60
    finally:
        location.stop()
        await store.close()


class Observed:
    """What watch_trunks hooks into: an object with observers, for one trunk."""

    def __init__(self, name: str) -> None:
        self.observers: list = []
        self.trunk = Trunk(name)


@attrs.frozen
class Trunk:
    name: str


@attrs.frozen
class Status:
    state: str
    reason: str = ""


@attrs.frozen
class Health:
    up: bool
    reason: str


def test_trunk_registrations_and_health_become_events() -> None:
    bus, clock = EventBus(), Clock()
    registration, checker = Observed("carrier"), Observed("backup")
    watch_trunks(bus, clock, [registration], [checker])
    seen: list[tuple[str, str, str]] = []
    bus.subscribe(lambda e: seen.append((e.trunk, e.type, e.detail)), ["trunk"])
    for state in ("registering", "registered", "registering", "registered", "failed"):
        registration.observers[0](Status(state, f"{state}!"))
    checker.observers[0]("sip:gw.example.com", Health(False, "408 timeout"))
    assert seen == [("carrier", "registered", "registered!"), ("carrier", "failed", "failed!"),
                    ("backup", "down", "sip:gw.example.com: 408 timeout")]
