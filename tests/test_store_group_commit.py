"""Group commit of the store's REGISTER-path writes, on real SQLite files: writes made
together share a transaction, each fires only once it is committed (another
connection sees it), a failed commit fails them all, a write's own error fails
it alone, and the store's calls keep their order."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer, reactor
from twisted.internet.task import deferLater

from pbxd.store import Binding, Extension, ExtensionSpec, Store, StoreError
from pbxd.store.store import GROUP_WINDOW

REALM = "pbx.example.com"


def binding(user: str, **overrides: Any) -> Binding:
    fields: dict[str, Any] = dict(
        aor=f"sip:{user}@{REALM}",
        contact_uri=f"sip:{user}@192.168.1.50:5060",
        expires_at=2000.0,
        call_id=f"reg-{user}@192.168.1.50",
        cseq=1,
        source_transport="udp",
        source_host="203.0.113.7",
        source_port=40312,
        received_at=1000.0,
    )
    fields.update(overrides)
    return Binding(**fields)


def committed_aors(path: Path) -> set[str]:
    """The AORs another connection sees: only what was committed (WAL)."""
    connection = sqlite3.connect(path)
    try:
        return {row[0] for row in connection.execute("SELECT aor FROM bindings")}
    finally:
        connection.close()


@pytest_twisted.async_yield_fixture
async def store_file(tmp_path: Path):
    path = tmp_path / "pbxd.sqlite"
    opened = await Store.open(str(path))
    yield opened, path
    await opened.close()


@pytest_twisted.ensureDeferred
async def test_writes_made_together_share_few_commits_and_fire_after_theirs(store_file) -> None:
    store, path = store_file
    seen_when_fired: dict[str, bool] = {}

    def fired(_: object, aor: str) -> None:
        seen_when_fired[aor] = aor in committed_aors(path)

    writes = []
    for number in range(100):
        b = binding(str(1000 + number))
        writes.append(store.apply_bindings(b.aor, [b], []).addCallback(fired, b.aor))
        writes.append(store.upsert_phone(extension=str(1000 + number), ip="203.0.113.7",
                                         seen_at=1000.0))
    await defer.gatherResults(writes)
    assert store.group_commits == 1  # all made within one window
    assert store.grouped_writes == 200
    assert len(seen_when_fired) == 100 and all(seen_when_fired.values())
    assert len(committed_aors(path)) == 100
    assert len(await store.all_phones()) == 100


@pytest_twisted.ensureDeferred
async def test_writes_that_arrive_while_a_group_is_written_make_the_next_group(store_file) -> None:
    store, path = store_file
    first = binding("1001")
    writing = store.apply_bindings(first.aor, [first], [])
    reading = store.all_bindings()  # a read sends the queued write to the thread at once
    later = [store.apply_bindings(b.aor, [b], []) for b in (binding(str(n)) for n in range(50))]
    await defer.gatherResults([writing, reading, *later])
    assert (store.group_commits, store.grouped_writes) == (2, 51)
    assert len(committed_aors(path)) == 51


@pytest_twisted.ensureDeferred
async def test_writes_a_window_apart_go_alone(store_file) -> None:
    store, path = store_file
    for number in range(3):
        b = binding(str(number))
        await store.apply_bindings(b.aor, [b], [])
    assert (store.group_commits, store.grouped_writes) == (3, 3)


@pytest_twisted.ensureDeferred
async def test_a_failed_commit_fails_every_write_of_the_group_and_keeps_none(tmp_path: Path) -> None:
    path = tmp_path / "locked.sqlite"
    store = await Store.open(str(path), busy_timeout=0.05)
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
        writes = [store.apply_bindings(b.aor, [b], [])
                  for b in (binding(str(number)) for number in range(30))]
        results = await defer.DeferredList(writes, consumeErrors=True)
        assert all(not ok for ok, _ in results)
        for _, failure in results:
            assert failure.check(StoreError)
            assert "apply_bindings" in str(failure.value) and "locked" in str(failure.value)
        assert store.group_commits == 0
        assert store.errors == 30  # each write failed, as it would have alone
        other.execute("ROLLBACK")
        assert committed_aors(path) == set()
        # The lock gone, the same store writes again.
        b = binding("1001")
        await store.apply_bindings(b.aor, [b], [])
        assert committed_aors(path) == {b.aor}
    finally:
        other.close()
        await store.close()


@pytest_twisted.ensureDeferred
async def test_a_write_that_fails_on_its_own_fails_alone(store_file) -> None:
    store, path = store_file

    def bad_port(cursor: Any) -> None:
        # The schema's CHECK on the port: an IntegrityError of this write only.
        cursor.execute("INSERT INTO bindings (aor, binding_key, contact_uri, path, call_id, cseq,"
                       " expires_at, source_transport, source_host, source_port, received_at)"
                       " VALUES ('sip:bad@x', 'k', 'sip:bad@x', '[]', 'c', 1, 2000, 'udp',"
                       " '203.0.113.7', 70000, 1000)")

    first, second = binding("1001"), binding("1002")
    writes = [
        store.apply_bindings(first.aor, [first], []),  # the four share one transaction
        store.apply_bindings(second.aor, [second], []),
        store._grouped("bad_port", bad_port),
        store.upsert_phone(extension="1002", ip="203.0.113.7", seen_at=1000.0),
    ]
    results = await defer.DeferredList(writes, consumeErrors=True)
    assert [ok for ok, _ in results] == [True, True, False, True]
    assert results[2][1].check(StoreError) and "bad_port" in str(results[2][1].value)
    assert store.errors == 1
    assert committed_aors(path) == {first.aor, second.aor}


@pytest_twisted.ensureDeferred
async def test_calls_after_queued_writes_see_them(store_file) -> None:
    store, _ = store_file
    a, b = binding("1001"), binding("1002", aor=f"sip:1001@{REALM}",
                                    contact_uri="sip:1001@192.168.1.51:5060")
    writing = store.apply_bindings(a.aor, [a], [])
    await store.all_bindings()  # sends the first write to the thread
    queued = store.apply_bindings(b.aor, [b], [])  # waiting for its window
    listed = await store.bindings_for(a.aor)  # asked after both: sees both
    assert {x.contact_uri for x in listed} == {a.contact_uri, b.contact_uri}
    await defer.gatherResults([writing, queued])


@pytest_twisted.ensureDeferred
async def test_close_waits_for_queued_writes(tmp_path: Path) -> None:
    path = tmp_path / "closing.sqlite"
    store = await Store.open(str(path))
    writes = [store.apply_bindings(b.aor, [b], []) for b in (binding(str(n)) for n in range(20))]
    await store.close()
    assert all(d.called for d in writes)
    assert len(committed_aors(path)) == 20
    with pytest.raises(StoreError, match="closed"):
        late = binding("late")
        await store.apply_bindings(late.aor, [late], [])


@pytest_twisted.ensureDeferred
async def test_extension_listeners_hear_committed_changes(store_file) -> None:
    store, _ = store_file
    heard: list[tuple[str, Extension | None]] = []
    store.extension_listeners.append(lambda number, extension: heard.append((number, extension)))

    def broken(number: str, extension: Extension | None) -> None:
        raise RuntimeError("a listener that fails does not fail the change")

    store.extension_listeners.append(broken)
    await store.seed_extensions([{"number": "1001", "password": "pw"}], REALM)
    await store.seed_extensions([{"number": "1001", "password": "other"},
                                 {"number": "1002", "password": "pw"}], REALM)
    await store.add_extension(ExtensionSpec(number="1003", password="pw"), REALM)
    await store.update_extension("1003", enabled=False)
    with pytest.raises(StoreError):
        await store.update_extension("1004", enabled=False)  # not found: nothing heard
    await store.delete_extension("1001")
    assert [(number, None if e is None else e.enabled) for number, e in heard] == [
        ("1001", True), ("1002", True), ("1003", True), ("1003", False), ("1001", None)]


@pytest_twisted.ensureDeferred
async def test_a_read_in_the_same_turn_as_a_write_sees_it(store_file) -> None:
    store, _ = store_file
    b = binding("1001")
    written = store.apply_bindings(b.aor, [b], [])  # waiting for the end of the turn
    assert [x.contact_uri for x in await store.bindings_for(b.aor)] == [b.contact_uri]
    assert written.called


@pytest_twisted.ensureDeferred
async def test_writes_within_the_window_share_a_commit(store_file) -> None:
    store, path = store_file
    first, second = binding("1001"), binding("1002")
    writes = [store.apply_bindings(first.aor, [first], [])]
    # Later in the window: the reactor runs this before the window's end, however loaded.
    await deferLater(reactor, GROUP_WINDOW / 5, lambda: None)
    assert not writes[0].called
    writes.append(store.apply_bindings(second.aor, [second], []))
    await defer.gatherResults(writes)
    assert (store.group_commits, store.grouped_writes) == (1, 2)
    assert committed_aors(path) == {first.aor, second.aor}
