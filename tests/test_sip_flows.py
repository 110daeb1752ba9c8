"""Stored SIP ladders (the console's sip-flow after the capture's grace and
across restarts): the sip_flows table on a real SQLite file, LadderArchive on
a task.Clock (when a ladder is written, its bounds, flush at close, retention),
and migration 4 on a file at version 3."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet.task import Clock

from pbxd.sip.capture import LadderArchive, SipCapture
from pbxd.sip.message import make_response
from pbxd.store import MIGRATIONS, NotFoundError, SipFlow, Store, StoreError

from test_capture import feed, request

DAY = 86400.0


@pytest_twisted.async_yield_fixture
async def store(tmp_path: Path):
    opened = await Store.open(str(tmp_path / "pbxd.sqlite3"))
    yield opened
    await opened.close()


@pytest.fixture
def clock() -> Clock:
    clock = Clock()
    clock.advance(1_700_000_000)
    return clock


def step(text: str, time: float = 1.0) -> dict:
    return {"time": time, "direction": "in", "from": "udp:192.0.2.1:5060", "to": "udp:127.0.0.1:5060",
            "call_id": "c1", "first_line": text.split("\r\n")[0], "text": text}


def test_a_flow_is_validated() -> None:
    with pytest.raises(ValueError):
        SipFlow(call_id="", ended_at=1.0, messages=())
    with pytest.raises(TypeError):
        SipFlow(call_id="c", ended_at=1.0, messages=[step("x")])  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        SipFlow(call_id="c", ended_at=1.0, messages=(), dropped=-1)
    with pytest.raises(ValueError):
        SipFlow(call_id="c", ended_at=-1.0, messages=())


@pytest_twisted.ensureDeferred
async def test_flows_are_stored_replaced_and_pruned(store: Store, tmp_path: Path) -> None:
    old = SipFlow(call_id="old", ended_at=10.0, messages=(step("INVITE sip:a SIP/2.0\r\nX: é"),), dropped=2)
    new = SipFlow(call_id="new", ended_at=20.0, messages=(step("BYE sip:b SIP/2.0", 2.5),))
    await store.add_sip_flows([old, new])
    assert await store.get_sip_flow("old") == old
    again = SipFlow(call_id="new", ended_at=21.0, messages=(step("ACK sip:b SIP/2.0"),))
    await store.add_sip_flows([again])
    assert await store.get_sip_flow("new") == again
    with pytest.raises(NotFoundError):
        await store.get_sip_flow("nope")
    with pytest.raises(TypeError):
        await store.add_sip_flows(["not a flow"])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="not JSON"):
        await store.add_sip_flows([SipFlow(call_id="c", ended_at=1.0, messages=({"t": float("nan")},))])
    assert await store.prune_sip_flows(10.0) == 0  # strictly before
    assert await store.prune_sip_flows(15.0) == 1
    with pytest.raises(NotFoundError):
        await store.get_sip_flow("old")
    assert (await store.get_sip_flow("new")).messages == again.messages
    # A row no pbxd wrote (not zlib) is an error naming it, not a crash.
    with sqlite3.connect(store.path) as conn:
        conn.execute("INSERT INTO sip_flows VALUES ('junk', 1.0, 0, x'00ff')")
    with pytest.raises(StoreError, match="junk"):
        await store.get_sip_flow("junk")


@pytest_twisted.ensureDeferred
async def test_migration_4_adds_the_table_to_a_version_3_file(tmp_path: Path) -> None:
    path = str(tmp_path / "old.sqlite3")
    await (await Store.open(path, migrations=MIGRATIONS[:3])).close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT count(*) FROM sqlite_master WHERE name = 'sip_flows'").fetchone()[0] == 0
    store = await Store.open(path)
    try:
        await store.add_sip_flows([SipFlow(call_id="c", ended_at=1.0, messages=())])
        assert (await store.get_sip_flow("c")).messages == ()
    finally:
        await store.close()
    with sqlite3.connect(path) as conn:
        with pytest.raises(sqlite3.IntegrityError):  # SQLite itself refuses a negative count
            conn.execute("INSERT INTO sip_flows VALUES ('d', 1.0, -1, x'')")


def a_call(capture: SipCapture, clock: Clock, call_id: str, count: int = 3) -> None:
    invite = request("INVITE", call_id)
    feed(capture, "in", invite)
    for _ in range(count - 1):
        clock.advance(0.1)
        feed(capture, "out", make_response(invite, 180))


@pytest_twisted.ensureDeferred
async def test_a_ladder_is_stored_once_its_call_has_settled(store: Store, clock: Clock) -> None:
    capture = SipCapture(clock, grace=600)
    archive = LadderArchive(capture, clock, settle=32, retention=0)
    capture.call_ended("before-start")  # no store yet: nothing is kept
    archive.start(store)
    a_call(capture, clock, "c1")
    capture.call_ended("c1")
    ended = clock.seconds()
    clock.advance(10)
    a_call(capture, clock, "c2")
    feed(capture, "in", request("BYE", "c1", to_tag="t"))  # after the end, within settle: stored too
    capture.call_ended("c2")
    capture.call_ended("c1")  # twice: written once
    assert archive.written == 0 and len(clock.getDelayedCalls()) == 1
    clock.advance(22)
    await store.add_sip_flows([])  # the next group commit: c1's is in by then
    flow = await store.get_sip_flow("c1")
    assert flow.ended_at == ended and flow.dropped == 0
    assert [m["first_line"] for m in flow.messages] == [
        "INVITE sip:1002@pbx.test SIP/2.0", "SIP/2.0 180 Ringing", "SIP/2.0 180 Ringing",
        "BYE sip:1002@pbx.test SIP/2.0"]
    assert list(flow.messages) == [m.to_json() for m in capture.ladder("c1")]
    with pytest.raises(NotFoundError):
        await store.get_sip_flow("c2")
    clock.advance(10)
    await store.add_sip_flows([])
    assert (await store.get_sip_flow("c2")).messages[0]["call_id"] == "c2"
    assert archive.written == 2 and not clock.getDelayedCalls()
    with pytest.raises(NotFoundError):
        await store.get_sip_flow("before-start")


@pytest_twisted.ensureDeferred
async def test_the_stored_ladder_is_bounded_like_a_capture(store: Store, clock: Clock) -> None:
    capture = SipCapture(clock, max_messages=4)
    archive = LadderArchive(capture, clock, settle=1, retention=0)
    archive.start(store)
    a_call(capture, clock, "main", count=3)
    capture.link("leg", "main")
    a_call(capture, clock, "leg", count=3)  # the leg's own Call-ID: its own 4 in memory
    a_call(capture, clock, "main", count=1)  # a fourth message of main's
    feed(capture, "in", request("BYE", "main", to_tag="t"))  # the fifth: dropped by the capture
    capture.call_ended("main")
    assert len(capture.ladder("main")) == 7 and capture.dropped("main") == 1
    await archive.flush()
    flow = await store.get_sip_flow("main")
    assert len(flow.messages) == 4 and flow.dropped == 1 + 3
    assert list(flow.messages) == [m.to_json() for m in capture.ladder("main")[:4]]

    small = SipCapture(clock, max_bytes=400)  # one INVITE of these, not two
    archive = LadderArchive(small, clock, settle=1, retention=0)
    archive.start(store)
    a_call(small, clock, "big", count=1)
    small.link("big-leg", "big")
    a_call(small, clock, "big-leg", count=1)
    small.call_ended("big")
    await archive.close()
    flow = await store.get_sip_flow("big")
    assert len(flow.messages) == 1 and flow.dropped == 1
    assert not clock.getDelayedCalls()


@pytest_twisted.ensureDeferred
async def test_close_writes_what_is_pending_and_stops(store: Store, clock: Clock) -> None:
    capture = SipCapture(clock)
    archive = LadderArchive(capture, clock, settle=32, retention=30 * DAY)
    archive.start(store)
    a_call(capture, clock, "c1")
    capture.call_ended("c1")
    await archive.close()
    assert (await store.get_sip_flow("c1")).call_id == "c1"
    assert not clock.getDelayedCalls()
    capture.call_ended("c1")  # after close: ignored, no timer
    assert not clock.getDelayedCalls() and archive.written == 1


@pytest_twisted.ensureDeferred
async def test_retention_prunes_at_start_and_every_hour(store: Store, clock: Clock) -> None:
    now = clock.seconds()
    await store.add_sip_flows([
        SipFlow(call_id="ancient", ended_at=now - 31 * DAY, messages=()),
        SipFlow(call_id="recent", ended_at=now - 29 * DAY, messages=()),
    ])
    archive = LadderArchive(SipCapture(clock), clock, settle=1, retention=30 * DAY)
    archive.start(store)
    await eventually_gone(store, "ancient")
    assert (await store.get_sip_flow("recent")).call_id == "recent"
    clock.advance(DAY - 1)  # hourly passes: recent is 30 days old less a second
    await store.add_sip_flows([])
    assert (await store.get_sip_flow("recent")).call_id == "recent"
    clock.advance(LadderArchive.PRUNE_INTERVAL)
    await eventually_gone(store, "recent")
    await archive.close()
    assert not clock.getDelayedCalls()


@pytest_twisted.ensureDeferred
async def test_no_retention_keeps_everything(store: Store, clock: Clock) -> None:
    await store.add_sip_flows([SipFlow(call_id="ancient", ended_at=1.0, messages=())])
    archive = LadderArchive(SipCapture(clock), clock, settle=1, retention=0)
    archive.start(store)
    clock.advance(400 * DAY)
    assert (await store.get_sip_flow("ancient")).call_id == "ancient"
    await archive.close()
    with pytest.raises(ValueError):
        LadderArchive(SipCapture(clock), clock, settle=-1, retention=0)


async def eventually_gone(store: Store, call_id: str) -> None:
    """The prune is one store call in flight: any later call on the one connection runs after it."""
    await store.add_sip_flows([])
    with pytest.raises(NotFoundError):
        await store.get_sip_flow(call_id)


@pytest_twisted.ensureDeferred
async def test_a_ladder_the_capture_evicts_is_stored_at_once(store: Store, clock: Clock) -> None:
    """More calls within ``settle`` than the capture holds: an ended call's ladder is
    written, whole (its leg too), when its room is needed, not lost."""
    capture = SipCapture(clock, max_calls=3)
    archive = LadderArchive(capture, clock, settle=32, retention=0)
    archive.start(store)
    a_call(capture, clock, "c1")
    capture.link("c1-leg", "c1")
    a_call(capture, clock, "c1-leg", count=2)
    capture.call_ended("c1")
    a_call(capture, clock, "live")
    a_call(capture, clock, "c2")  # one too many: c1, the least recently active, goes
    assert capture.ladder("c1") is not None and capture.ladder("c1")[0].call_id == "c1-leg"
    await store.add_sip_flows([])
    flow = await store.get_sip_flow("c1")
    assert [m["call_id"] for m in flow.messages] == ["c1"] * 3 + ["c1-leg"] * 2
    assert archive.written == 1
    clock.advance(32)  # nothing more to write for c1
    await store.add_sip_flows([])
    assert archive.written == 1 and not clock.getDelayedCalls()
    # A settle past the capture's grace would find nothing left: it is cut to the grace.
    assert LadderArchive(SipCapture(clock, grace=10), clock, settle=32, retention=0).settle == 10
