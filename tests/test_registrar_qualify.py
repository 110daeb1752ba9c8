"""Qualify on a task.Clock: OPTIONS through the real SIP core and transaction layer
(the transport only records), the location service on a real SQLite store."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import Clock

from pbxd.core import LocalDomains, SipCore
from pbxd.registrar.location import OFFLINE, REGISTERED, BoundContact, LocationService
from pbxd.registrar.qualify import Qualifier
from pbxd.sip.message import Request, make_response, parse_message
from pbxd.sip.timers import TimerSettings
from pbxd.store import Binding, Store
from pbxd.transport import Target
from tests.transaction_support import RecordingTransport

START = 1_700_000_000.0
INTERVAL = 30.0


class Transport(RecordingTransport):
    def sent_by(self, transport: str, destination_host: str | None = None) -> tuple[str, int]:
        return "203.0.113.1", 5060


class Rig:
    def __init__(self, store: Store) -> None:
        self.clock = Clock()
        self.clock.advance(START)
        self.transport = Transport(self.clock)
        self.core = SipCore(self.clock, self.transport, LocalDomains(["pbx.test"], []),
                            timers=TimerSettings(t1=0.5))
        self.transport.layer = self.core.layer
        self.location = LocationService(store, self.clock, domain="pbx.test")
        self.events: list[tuple[str, str]] = []
        self.location.observers.append(lambda event, c: self.events.append((event, c.aor)))
        self.qualifier = Qualifier(self.core, self.location, self.clock, INTERVAL,
                                   batch=50, rng=random.Random(7))

    async def bind(self, user: str, path: tuple[str, ...] = ()) -> BoundContact:
        aor = self.location.aor(user)
        now = self.clock.seconds()
        binding = Binding(aor=aor, contact_uri=f"sip:{user}@10.0.0.9:5062", expires_at=now + 3600,
                          call_id="c", cseq=1, source_transport="udp", source_host="198.51.100.9",
                          source_port=40000 + int(user) % 1000, received_at=now,
                          local_host="203.0.113.1", local_port=5060, path=path)
        [contact] = await self.location.commit(aor, [binding], [])
        return contact

    def options(self) -> list[tuple[float, Request, Target]]:
        """Each OPTIONS sent, retransmissions (Timer E) left out."""
        first: dict[str, tuple[float, Request, Target]] = {}
        for sent in self.transport.sent:
            message = sent.message
            if isinstance(message, Request) and message.method == "OPTIONS":
                first.setdefault(message.call_id, (sent.at, message, sent.target))
        return list(first.values())

    def pump(self, seconds: float, step: float = 0.1) -> None:
        end = self.clock.seconds() + seconds
        while self.clock.seconds() < end:
            self.clock.advance(min(step, end - self.clock.seconds()))

    def answer(self, request: Request, status: int) -> None:
        response = make_response(request, status)
        response.set("To", str(request.to_addr.with_param("tag", "ph")))
        self.core.layer.receive(parse_message(response.to_bytes()), Target("udp", "198.51.100.9", 1))


@pytest_twisted.async_yield_fixture
async def rig(tmp_path: Path):
    store = await Store.open(str(tmp_path / "pbxd.sqlite3"), reactor)
    made = Rig(store)
    yield made
    made.qualifier.stop()
    made.location.stop()
    made.core.layer.close()
    await store.close()


@pytest_twisted.ensureDeferred
async def test_first_checks_are_spread_over_the_interval(rig: Rig) -> None:
    for user in range(1000, 1200):
        await rig.bind(str(user))
    rig.qualifier.start()
    rig.pump(INTERVAL)
    times = sorted(at - START for at, _, _ in rig.options())
    assert len(times) == 200
    assert times[0] < 2 and times[-1] > INTERVAL - 2
    per_second = [sum(1 for t in times if s <= t < s + 1) for s in range(int(INTERVAL))]
    assert max(per_second) <= 25  # about 7 a second, never all at once


@pytest_twisted.ensureDeferred
async def test_options_go_to_the_flow(rig: Rig) -> None:
    contact = await rig.bind("1001", path=("<sip:edge.pbx.test;lr>",))
    rig.qualifier.start()
    rig.pump(INTERVAL)
    [(_, request, target)] = rig.options()
    assert request.uri == contact.request_uri == "sip:1001@10.0.0.9:5062"
    assert request.to_addr.uri == request.ruri and request.from_addr.tag
    assert request.via.branch.startswith("z9hG4bK") and request.via.host == "203.0.113.1"
    assert request.get_all("Route") == ["<sip:edge.pbx.test;lr>"]
    assert target == Target("udp", "198.51.100.9", 40001)
    assert target.local == ("203.0.113.1", 5060)


@pytest_twisted.ensureDeferred
async def test_silence_makes_offline_and_an_answer_online(rig: Rig) -> None:
    contact = await rig.bind("1001")
    rig.qualifier.start()
    rig.pump(INTERVAL)
    assert len(rig.options()) == 1
    rig.pump(64 * 0.5)  # Timer F
    assert rig.events[-1] == (OFFLINE, contact.aor)
    assert rig.location.lookup(contact.aor) == [] and rig.qualifier.failed == 1
    for _ in range(int(INTERVAL * 2 / 0.1)):  # the next check comes within two intervals
        if len(rig.options()) == 2:
            break
        rig.pump(0.1)
    assert len(rig.options()) == 2
    request = rig.options()[-1][1]
    rig.answer(request, 200)
    assert rig.events[-1] == (REGISTERED, contact.aor)
    assert len(rig.location.lookup(contact.aor)) == 1


@pytest.mark.parametrize(("status", "online"), [(200, True), (404, True), (503, True),
                                                 (408, False)])
@pytest_twisted.ensureDeferred
async def test_any_answer_but_408_means_alive(rig: Rig, status: int, online: bool) -> None:
    contact = await rig.bind("1001")
    rig.qualifier.start()
    rig.pump(INTERVAL)
    rig.answer(rig.options()[-1][1], status)
    assert bool(rig.location.lookup(contact.aor)) is online


@pytest_twisted.ensureDeferred
async def test_one_question_at_a_time_and_none_for_gone_bindings(rig: Rig) -> None:
    contact = await rig.bind("1001")
    rig.qualifier.start()
    rig.pump(INTERVAL * 1.2)
    asked = len(rig.options())
    assert asked == 1  # the first is still unanswered (Timer F is 32 s): no second one
    await rig.location.commit(contact.aor, [], [contact.key])
    rig.pump(INTERVAL * 3)
    assert len(rig.options()) == asked


@pytest_twisted.ensureDeferred
async def test_new_bindings_join_and_stop_ends_it(rig: Rig) -> None:
    rig.qualifier.start()
    await rig.bind("1002")
    rig.pump(INTERVAL)
    assert len(rig.options()) == 1
    rig.qualifier.stop()
    rig.core.layer.close()
    # What is left is the location service's expiry timer.
    assert [call.func for call in rig.clock.getDelayedCalls()] == [rig.location._expire]


def test_interval_must_be_positive() -> None:
    with pytest.raises(ValueError):
        Qualifier(None, None, Clock(), 0)  # type: ignore[arg-type]
