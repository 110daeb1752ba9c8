"""The location service on a real SQLite store, with time from a task.Clock:
commits (store first), lookups, events, expiry in bounded batches, loading after a
restart, NAT detection and the online state qualify sets."""

from __future__ import annotations

from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import defer, reactor
from twisted.internet.task import Clock

from pbxd.registrar.location import (
    OFFLINE,
    REGISTERED,
    UNREGISTERED,
    BoundContact,
    LocationService,
    behind_nat,
    flow_of,
)
from pbxd.store import Binding, Store, StoreError
from pbxd.transport import Target

AOR = "sip:1001@pbx.test"
START = 1_700_000_000.0


class Notifier:
    """Stands in for LocatorNotifier: records what it is told."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []

    def notify(self, event: str, binding: Binding) -> defer.Deferred[bool]:
        self.events.append((event, binding.contact_uri))
        return defer.succeed(True)


@pytest_twisted.async_yield_fixture
async def store(tmp_path: Path):
    opened = await Store.open(str(tmp_path / "pbxd.sqlite3"), reactor)
    yield opened
    await opened.close()


@pytest.fixture
def clock() -> Clock:
    clock = Clock()
    clock.advance(START)
    return clock


@pytest.fixture
def notifier() -> Notifier:
    return Notifier()


@pytest.fixture
def location(store: Store, clock: Clock, notifier: Notifier) -> LocationService:
    service = LocationService(store, clock, notifier, domain="pbx.test")
    service.loaded = True
    yield service
    service.stop()


def binding(clock: Clock, contact: str = "sip:1001@192.0.2.10:5060", *, expires: float = 60,
            q: float | None = None, source: tuple[str, str, int] = ("udp", "192.0.2.10", 5060),
            aor: str = AOR, cseq: int = 1) -> Binding:
    transport, host, port = source
    now = clock.seconds()
    return Binding(aor=aor, contact_uri=contact, expires_at=now + expires, call_id="c1",
                   cseq=cseq, source_transport=transport, source_host=host, source_port=port,
                   received_at=now, local_host="127.0.0.1", local_port=5060, q=q)


@pytest_twisted.ensureDeferred
async def test_commit_writes_the_store_then_memory(location, store, clock, notifier) -> None:
    new = binding(clock)
    current = await location.commit(AOR, [new], [])
    assert [c.binding for c in current] == [new]
    assert await store.bindings_for(AOR) == [new]
    assert location.lookup(AOR)[0].binding == new
    assert location.lookup_user("1001") == location.lookup(AOR)
    assert location.has_user("1001") and not location.has_user("1002")
    assert notifier.events == [(REGISTERED, new.contact_uri)]
    assert len(location) == 1


@pytest_twisted.ensureDeferred
async def test_lookup_prefers_high_q_then_the_latest(location, clock) -> None:
    low = binding(clock, "sip:a@192.0.2.1", q=0.1)
    plain = binding(clock, "sip:b@192.0.2.2")  # no q: 1.0
    clock.advance(1)
    later = binding(clock, "sip:c@192.0.2.3", q=1.0)
    middle = binding(clock, "sip:d@192.0.2.4", q=0.5)
    await location.commit(AOR, [low, plain, later, middle], [])
    assert [c.request_uri for c in location.lookup(AOR)] == [
        "sip:c@192.0.2.3", "sip:b@192.0.2.2", "sip:d@192.0.2.4", "sip:a@192.0.2.1"]


@pytest_twisted.ensureDeferred
async def test_a_refresh_is_no_event_but_a_new_flow_is(location, clock, notifier) -> None:
    await location.commit(AOR, [binding(clock)], [])
    clock.advance(10)
    await location.commit(AOR, [binding(clock, cseq=2)], [])
    assert [e for e, _ in notifier.events] == [REGISTERED]
    await location.commit(AOR, [binding(clock, cseq=3, source=("udp", "203.0.113.5", 40000))], [])
    assert [e for e, _ in notifier.events] == [REGISTERED, REGISTERED]
    assert location.lookup(AOR)[0].target == Target("udp", "203.0.113.5", 40000)


@pytest_twisted.ensureDeferred
async def test_removal(location, store, clock, notifier) -> None:
    kept, gone = binding(clock, "sip:a@192.0.2.1"), binding(clock, "sip:b@192.0.2.2")
    await location.commit(AOR, [kept, gone], [])
    current = await location.commit(AOR, [], [gone.key, "contact:sip:never@there"])
    assert [c.binding for c in current] == [kept]
    assert await store.bindings_for(AOR) == [kept]
    assert notifier.events[-1] == (UNREGISTERED, gone.contact_uri)


@pytest_twisted.ensureDeferred
async def test_bindings_expire_on_time(location, store, clock, notifier) -> None:
    await location.commit(AOR, [binding(clock, "sip:a@192.0.2.1", expires=30),
                                binding(clock, "sip:b@192.0.2.2", expires=90)], [])
    clock.advance(29.9)
    assert len(location.lookup(AOR)) == 2
    clock.advance(0.1)
    assert [c.request_uri for c in location.lookup(AOR)] == ["sip:b@192.0.2.2"]
    assert notifier.events[-1] == (OFFLINE, "sip:a@192.0.2.1")
    assert [b.contact_uri for b in await store.bindings_for(AOR)] == ["sip:b@192.0.2.2"]
    clock.advance(60)
    assert location.lookup(AOR) == [] and len(location) == 0
    assert await store.all_bindings() == []
    assert clock.getDelayedCalls() == []


@pytest_twisted.ensureDeferred
async def test_a_refreshed_binding_outlives_its_first_expiry(location, clock) -> None:
    await location.commit(AOR, [binding(clock, expires=30)], [])
    clock.advance(20)
    await location.commit(AOR, [binding(clock, expires=30, cseq=2)], [])
    clock.advance(15)
    assert len(location.lookup(AOR)) == 1
    clock.advance(15)
    assert location.lookup(AOR) == []


class TickCountingClock(Clock):
    """A Clock that notes, for each call scheduled without delay, how far the
    expiry had got (task.Clock runs such calls within the same advance)."""

    def __init__(self, notifier: Notifier) -> None:
        super().__init__()
        self.notifier = notifier
        self.immediate: list[int] = []

    def callLater(self, delay, f, *args, **kw):  # type: ignore[no-untyped-def]
        if delay == 0:
            self.immediate.append(len(self.notifier.events))
        return super().callLater(delay, f, *args, **kw)


@pytest_twisted.ensureDeferred
async def test_a_mass_expiry_runs_in_bounded_ticks(store, notifier) -> None:
    clock = TickCountingClock(notifier)
    clock.advance(START)
    location = LocationService(store, clock, notifier, domain="pbx.test", expiry_batch=100)
    for user in range(250):
        aor = f"sip:{user}@pbx.test"
        await location.commit(aor, [binding(clock, f"sip:{user}@192.0.2.1", aor=aor)], [])
    notifier.events.clear()
    clock.advance(60)
    # Three ticks: 100 removed, back at once; 100 more, back at once; the last 50.
    assert clock.immediate == [100, 200]
    assert len(notifier.events) == 250 and len(location) == 0
    assert {event for event, _ in notifier.events} == {OFFLINE}
    assert clock.getDelayedCalls() == []
    assert await store.all_bindings() == []


@pytest_twisted.ensureDeferred
async def test_refreshes_do_not_grow_the_expiry_heap_without_bound(location, clock) -> None:
    for cseq in range(1, 3000):
        await location.commit(AOR, [binding(clock, expires=3600, cseq=cseq)], [])
    assert len(location._expiries) < 2 * len(location) + 1100


@pytest_twisted.ensureDeferred
async def test_load_after_a_restart(store, clock, notifier) -> None:
    first = LocationService(store, clock, notifier, domain="pbx.test")
    await first.commit(AOR, [binding(clock, "sip:a@192.0.2.1", expires=30),
                             binding(clock, "sip:b@192.0.2.2", expires=300)], [])
    first.stop()
    clock.advance(60)  # pbxd was down meanwhile
    notifier.events.clear()
    second = LocationService(store, clock, notifier, domain="pbx.test")
    assert not second.loaded
    assert await second.load() == 1
    assert second.loaded
    assert [c.request_uri for c in second.lookup(AOR)] == ["sip:b@192.0.2.2"]
    assert notifier.events == [(OFFLINE, "sip:a@192.0.2.1")]
    clock.advance(240)
    assert second.lookup(AOR) == [] and notifier.events[-1] == (OFFLINE, "sip:b@192.0.2.2")
    second.stop()


@pytest_twisted.ensureDeferred
async def test_a_failed_write_changes_nothing(location, store, clock) -> None:
    await store.close()
    with pytest.raises(StoreError):
        await location.commit(AOR, [binding(clock)], [])
    assert location.lookup(AOR) == [] and len(location) == 0


@pytest_twisted.ensureDeferred
async def test_offline_bindings_are_kept_but_not_looked_up(location, clock, notifier) -> None:
    await location.commit(AOR, [binding(clock)], [])
    contact = location.lookup(AOR)[0]
    assert location.set_online(contact, False)
    assert not location.set_online(contact, False)  # no change, no event
    assert location.lookup(AOR) == [] and len(location.bindings(AOR)) == 1
    assert location.set_online(location.bindings(AOR)[0], True)
    assert [e for e, _ in notifier.events] == [REGISTERED, OFFLINE, REGISTERED]
    # A REGISTER brings an offline binding back as well.
    location.set_online(location.bindings(AOR)[0], False)
    await location.commit(AOR, [binding(clock, cseq=2)], [])
    assert location.lookup(AOR)[0].online and notifier.events[-1][0] == REGISTERED


@pytest_twisted.ensureDeferred
async def test_changes_to_one_aor_are_serialized(location) -> None:
    order: list[str] = []
    gate: defer.Deferred[None] = defer.Deferred()

    async def first() -> None:
        async with location.serialized(AOR):
            order.append("first in")
            await gate
            order.append("first out")

    async def second() -> None:
        async with location.serialized(AOR):
            order.append("second")

    one = defer.Deferred.fromCoroutine(first())
    two = defer.Deferred.fromCoroutine(second())
    async with location.serialized("sip:other@pbx.test"):
        order.append("other")  # another AOR does not wait
    gate.callback(None)
    await defer.gatherResults([one, two])
    assert order == ["first in", "other", "first out", "second"]
    assert location._locks == {}


def test_an_observer_that_raises_does_not_stop_the_others(clock) -> None:
    location = LocationService(None, clock)  # type: ignore[arg-type]
    seen: list[str] = []

    def broken(event: str, contact: BoundContact) -> None:
        raise RuntimeError("observer bug")

    location.observers += [broken, lambda event, contact: seen.append(event)]
    location._emit(REGISTERED, BoundContact.of(binding(clock)))
    assert seen == [REGISTERED]


@pytest.mark.parametrize(
    ("contact", "source", "nat"),
    [
        ("sip:1001@192.0.2.10:5060", ("udp", "192.0.2.10", 5060), False),
        ("sip:1001@192.0.2.10", ("udp", "192.0.2.10", 5060), False),  # default port
        ("sip:1001@192.168.1.20:5060", ("udp", "203.0.113.9", 5060), True),  # private from public
        ("sip:1001@192.0.2.10:5060", ("udp", "192.0.2.10", 61000), True),  # port rewritten
        ("sip:1001@192.0.2.10:5060;transport=tcp", ("udp", "192.0.2.10", 5060), True),
        ("sip:1001@192.0.2.10:5060;transport=tcp", ("tcp", "192.0.2.10", 49152), False),
        ("sip:1001@[2001:db8::1]:5060", ("udp", "2001:db8::1", 5060), False),
        ("sip:1001@phone.example.com", ("udp", "192.0.2.10", 5060), True),  # a name to resolve
        ("tel:+15551234", ("udp", "192.0.2.10", 5060), True),
        ("not a uri", ("udp", "192.0.2.10", 5060), True),
    ],
)
def test_behind_nat(contact: str, source: tuple[str, str, int], nat: bool) -> None:
    assert behind_nat(contact, Target(*source)) is nat


def test_the_flow_keeps_the_local_socket(clock) -> None:
    flow = flow_of(binding(clock))
    assert flow == Target("udp", "192.0.2.10", 5060) and flow.local == ("127.0.0.1", 5060)
    contact = BoundContact.of(binding(clock))
    assert contact.target is contact.flow and contact.route == ()
    assert contact.request_uri == "sip:1001@192.0.2.10:5060" and contact.q == 1.0
