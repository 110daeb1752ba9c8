"""The SQLite store on real files: CRUD, migrations, persistence, and the ways it fails."""

from __future__ import annotations

import datetime
import os
import sqlite3
from pathlib import Path

import attrs
import pytest
import pytest_twisted

from pbxd.sip.digest import ha1
from pbxd.store import (
    MIGRATIONS,
    Binding,
    Cdr,
    DuplicateError,
    ExtensionSpec,
    NotFoundError,
    SchemaError,
    Store,
    StoreError,
    binding_key,
)

REALM = "pbx.example.com"


@pytest_twisted.async_yield_fixture
async def store(tmp_path: Path):
    opened = await Store.open(str(tmp_path / "pbxd.sqlite"))
    yield opened
    await opened.close()


def binding(**overrides) -> Binding:
    fields = dict(
        aor="sip:1001@pbx.example.com",
        contact_uri="sip:1001@192.168.1.50:5060",
        expires_at=2000.0,
        call_id="reg-1@192.168.1.50",
        cseq=1,
        source_transport="udp",
        source_host="203.0.113.7",
        source_port=40312,
        received_at=1000.0,
    )
    fields.update(overrides)
    return Binding(**fields)


def cdr(**overrides) -> Cdr:
    fields = dict(
        call_id="call-1",
        from_number="1001",
        to_number="1002",
        direction="internal",
        start_time=1705312800.0,  # 2024-01-15T10:00:00Z
        answer_time=1705312805.0,
        end_time=1705313730.0,
        disposition="answered",
    )
    fields.update(overrides)
    return Cdr(**fields)


def raw(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(path, isolation_level=None)


# -- opening, schema, migrations ------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_new_file_is_wal_at_the_latest_version(tmp_path: Path) -> None:
    path = tmp_path / "new.sqlite"
    opened = await Store.open(str(path))
    await opened.close()
    with raw(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        versions = [v for (v,) in conn.execute("SELECT version FROM schema_version ORDER BY 1")]
        assert versions == list(range(1, len(MIGRATIONS) + 1))


@pytest_twisted.ensureDeferred
async def test_an_empty_existing_file_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "empty.sqlite"
    path.write_bytes(b"")
    opened = await Store.open(str(path))
    await opened.add_extension(ExtensionSpec(number="1001", password="pw"), REALM)
    await opened.close()


@pytest_twisted.ensureDeferred
async def test_a_file_one_version_old_is_migrated_and_keeps_its_rows(tmp_path: Path) -> None:
    # Version 2 is the file before the extensions' toll-fraud guards (migration 3):
    # its extension row is written as the pbxd of that version wrote it.
    path = str(tmp_path / "old.sqlite")
    old = await Store.open(path, migrations=MIGRATIONS[:2])
    await old.upsert_binding(binding())
    await old.add_cdr(cdr())
    await old.close()
    with raw(Path(path)) as conn:
        assert conn.execute("SELECT max(version) FROM schema_version").fetchone()[0] == 2
        conn.execute(
            "INSERT INTO extensions (number, name, email, enabled, allow_external, voicemail_pin,"
            " ha1_md5, ha1_sha256, realm, created_at, updated_at)"
            " VALUES ('1001', 'Old', '', 1, 0, NULL, ?, ?, ?, 10.0, 10.0)",
            (ha1("1001", REALM, "pw", "MD5"), ha1("1001", REALM, "pw", "SHA-256"), REALM))

    current = await Store.open(path)
    try:
        kept = await current.get_extension("1001")
        assert (kept.name, kept.allow_external, kept.ha1_md5) == ("Old", False, ha1("1001", REALM, "pw"))
        # The columns of migration 3 exist, with "no limit" and "any number" for the old rows.
        assert (kept.max_calls, kept.dial_patterns) == (0, ())
        guarded = await current.update_extension("1001", max_calls=2, dial_patterns=[r"\+1\d{10}"])
        assert await current.get_extension("1001") == guarded
        assert (guarded.max_calls, guarded.dial_patterns) == (2, (r"\+1\d{10}",))
        assert await current.bindings_for("sip:1001@pbx.example.com") == [binding()]
        assert [c.call_id for c in await current.list_cdrs()] == ["call-1"]
    finally:
        await current.close()
    with raw(Path(path)) as conn:
        assert conn.execute("SELECT max(version) FROM schema_version").fetchone()[0] == len(MIGRATIONS)


@pytest_twisted.ensureDeferred
async def test_a_newer_schema_is_refused_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "newer.sqlite"
    await (await Store.open(str(path))).close()
    with raw(path) as conn:
        conn.execute("INSERT INTO schema_version VALUES (?, 0)", (len(MIGRATIONS) + 1,))
    with pytest.raises(SchemaError, match="newer"):
        await Store.open(str(path))
    with raw(path) as conn:
        assert conn.execute("SELECT max(version) FROM schema_version").fetchone()[0] == len(
            MIGRATIONS) + 1


@pytest_twisted.ensureDeferred
async def test_a_failing_migration_is_rolled_back(tmp_path: Path) -> None:
    path = tmp_path / "broken.sqlite"
    broken = (*MIGRATIONS, "CREATE TABLE extra (x TEXT) STRICT;\nCREATE TABLE extensions (x);")
    with pytest.raises(SchemaError, match=f"migration to {len(MIGRATIONS) + 1}"):
        await Store.open(str(path), migrations=broken)
    with raw(path) as conn:
        assert conn.execute("SELECT max(version) FROM schema_version").fetchone()[0] == len(
            MIGRATIONS)
        tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master")}
        assert "extra" not in tables


@pytest_twisted.ensureDeferred
async def test_a_directory_is_not_a_database(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="cannot open"):
        await Store.open(str(tmp_path))


@pytest_twisted.ensureDeferred
async def test_a_file_that_is_not_sqlite_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "garbage.sqlite"
    path.write_bytes(b"this is not a database, just text that is long enough" * 100)
    with pytest.raises(StoreError, match="not a database"):
        await Store.open(str(path))


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes to read-only directories")
@pytest_twisted.ensureDeferred
async def test_a_read_only_directory_is_refused(tmp_path: Path) -> None:
    directory = tmp_path / "ro"
    directory.mkdir()
    directory.chmod(0o500)
    try:
        with pytest.raises(StoreError):
            await Store.open(str(directory / "pbxd.sqlite"))
    finally:
        directory.chmod(0o700)


@pytest_twisted.ensureDeferred
async def test_a_file_locked_by_another_process_fails_with_the_reason(tmp_path: Path) -> None:
    path = tmp_path / "locked.sqlite"
    opened = await Store.open(str(path), busy_timeout=0.05)
    other = raw(path)
    try:
        other.execute("BEGIN EXCLUSIVE")
        with pytest.raises(StoreError, match="locked"):
            await opened.add_extension(ExtensionSpec(number="1001", password="pw"), REALM)
        other.execute("ROLLBACK")
        # The lock gone, the same store writes again.
        await opened.add_extension(ExtensionSpec(number="1001", password="pw"), REALM)
    finally:
        other.close()
        await opened.close()


@pytest_twisted.ensureDeferred
async def test_a_closed_store_refuses_calls_and_close_waits_for_writes(tmp_path: Path) -> None:
    path = str(tmp_path / "closing.sqlite")
    opened = await Store.open(path)
    writes = [opened.add_cdr(cdr(call_id=f"c{i}")) for i in range(20)]
    await opened.close()
    assert all(d.called for d in writes)
    with pytest.raises(StoreError, match="closed"):
        await opened.list_cdrs()
    reopened = await Store.open(path)
    try:
        assert len(await reopened.list_cdrs()) == 20
    finally:
        await reopened.close()


# -- extensions -------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_extension_crud(store: Store) -> None:
    added = await store.add_extension(
        ExtensionSpec(number="1001", password="s3cret", name="Alice", email="a@example.com",
                      voicemail_pin="1234"),
        REALM,
    )
    assert added.ha1_md5 == ha1("1001", REALM, "s3cret", "MD5")
    assert added.ha1_sha256 == ha1("1001", REALM, "s3cret", "SHA-256")
    assert added.enabled and added.allow_external
    assert await store.get_extension("1001") == added

    await store.add_extension(ExtensionSpec(number="1000", password="x"), REALM)
    assert [e.number for e in await store.list_extensions()] == ["1000", "1001"]

    renamed = await store.update_extension("1001", name="Alice B", allow_external=False)
    assert (renamed.name, renamed.allow_external, renamed.ha1_md5) == ("Alice B", False,
                                                                       added.ha1_md5)
    assert renamed.updated_at >= added.updated_at and renamed.created_at == added.created_at

    repassed = await store.update_extension("1001", password="new")
    assert repassed.ha1_md5 == ha1("1001", REALM, "new", "MD5")
    assert repassed.name == "Alice B"

    moved = await store.update_extension("1001", password="new", realm="other.example.com")
    assert moved.realm == "other.example.com"
    assert moved.ha1_sha256 == ha1("1001", "other.example.com", "new", "SHA-256")

    await store.delete_extension("1001")
    with pytest.raises(NotFoundError):
        await store.get_extension("1001")


@pytest_twisted.ensureDeferred
async def test_extension_errors(store: Store) -> None:
    await store.add_extension(ExtensionSpec(number="1001", password="pw"), REALM)
    with pytest.raises(DuplicateError):
        await store.add_extension(ExtensionSpec(number="1001", password="other"), REALM)
    for call in (
        lambda: store.update_extension("2000", name="x"),
        lambda: store.delete_extension("2000"),
        lambda: store.get_extension("2000"),
    ):
        with pytest.raises(NotFoundError):
            await call()
    with pytest.raises(ValueError, match="realm"):
        await store.update_extension("1001", realm="elsewhere")
    with pytest.raises(ValueError, match="password"):
        await store.update_extension("1001", password="")


def test_extension_spec_rejects_malformed_values() -> None:
    with pytest.raises(TypeError):
        ExtensionSpec(number="1001", password="pw", enabled="yes")
    with pytest.raises(TypeError):
        ExtensionSpec(number=1001, password="pw")
    with pytest.raises(ValueError):
        ExtensionSpec(number="10 01", password="pw")
    with pytest.raises(ValueError):
        ExtensionSpec(number="1001", password="")
    with pytest.raises(ValueError):
        ExtensionSpec(number="1001", password="pw", voicemail_pin="12ab")
    with pytest.raises(ValueError):
        ExtensionSpec(number="1001", password="pw", email="not an address")


@pytest_twisted.ensureDeferred
async def test_malformed_updates_write_nothing(store: Store) -> None:
    before = await store.add_extension(ExtensionSpec(number="1001", password="pw"), REALM)
    with pytest.raises(TypeError):
        await store.update_extension("1001", enabled=1)
    with pytest.raises(TypeError):
        await store.update_extension("1001", name=None)
    with pytest.raises(ValueError):
        await store.update_extension("1001", voicemail_pin="pin")
    assert await store.get_extension("1001") == before


@pytest_twisted.ensureDeferred
async def test_toll_fraud_guards_round_trip(store: Store) -> None:
    added = await store.add_extension(
        ExtensionSpec(number="1001", password="pw", max_calls=2, dial_patterns=["1[0-9]{3}", r"\+44\d+"]),
        REALM)
    assert (added.max_calls, added.dial_patterns) == (2, ("1[0-9]{3}", r"\+44\d+"))
    assert await store.get_extension("1001") == added
    assert await store.list_extensions() == [added]
    unlimited = await store.update_extension("1001", max_calls=0, dial_patterns=[])
    assert (unlimited.max_calls, unlimited.dial_patterns) == (0, ())
    assert await store.get_extension("1001") == unlimited
    await store.seed_extensions([{"number": "1002", "password": "pw", "max_calls": 1,
                                  "dial_patterns": ["9.*"]}], REALM)
    seeded = await store.get_extension("1002")
    assert (seeded.max_calls, seeded.dial_patterns) == (1, ("9.*",))


@pytest.mark.parametrize("fields, error", [
    ({"max_calls": -1}, ValueError),
    ({"max_calls": 10001}, ValueError),
    ({"max_calls": True}, TypeError),
    ({"max_calls": "2"}, TypeError),
    ({"dial_patterns": "1.*"}, TypeError),
    ({"dial_patterns": [1]}, TypeError),
    ({"dial_patterns": ["("]}, ValueError),
    ({"dial_patterns": [""]}, ValueError),
    ({"dial_patterns": ["x" * 201]}, ValueError),
    ({"dial_patterns": ["1"] * 51}, ValueError),
])
def test_malformed_toll_fraud_guards_are_refused(fields: dict, error: type) -> None:
    with pytest.raises(error):
        ExtensionSpec(number="1001", password="pw", **fields)


@pytest_twisted.ensureDeferred
async def test_a_malformed_guard_update_writes_nothing(store: Store) -> None:
    before = await store.add_extension(ExtensionSpec(number="1001", password="pw", max_calls=1), REALM)
    with pytest.raises(ValueError, match="max_calls"):
        await store.update_extension("1001", max_calls=-1)
    with pytest.raises(ValueError, match=r"dial_patterns\[1\]"):
        await store.update_extension("1001", dial_patterns=["1.*", "[0-9"])
    assert await store.get_extension("1001") == before
    # Nor can a write past the models store what the call layer could not read.
    with raw(Path(store.path)) as conn:
        for column, value in (("max_calls", -1), ("dial_patterns", "not json"), ("dial_patterns", '{"a": 1}')):
            with pytest.raises(sqlite3.IntegrityError):
                conn.execute(f"UPDATE extensions SET {column} = ? WHERE number = '1001'", (value,))


@pytest_twisted.ensureDeferred
async def test_the_database_itself_refuses_wrong_types(store: Store) -> None:
    # STRICT tables: even a write that bypasses the models cannot store text as a time.
    with raw(Path(store.path)) as conn, pytest.raises(sqlite3.IntegrityError):
        conn.execute(
            "INSERT INTO extensions (number, ha1_md5, ha1_sha256, realm, created_at, updated_at)"
            " VALUES ('1', ?, ?, 'r', 'yesterday', 0)", ("0" * 32, "0" * 64))


@pytest_twisted.ensureDeferred
async def test_passwords_are_not_stored_in_plain_text(store: Store) -> None:
    await store.add_extension(ExtensionSpec(number="1001", password="PlainTextPassword42"), REALM)
    await store.update_extension("1001", password="AnotherPlainPassword43")
    await store.close()
    files = [Path(store.path), Path(store.path + "-wal")]
    data = b"".join(f.read_bytes() for f in files if f.exists())
    assert b"PlainTextPassword42" not in data and b"AnotherPlainPassword43" not in data
    assert b"1001" in data


@pytest_twisted.ensureDeferred
async def test_seeding_inserts_only_what_is_missing(store: Store) -> None:
    await store.add_extension(ExtensionSpec(number="1001", password="changed-by-api"), REALM)
    inserted = await store.seed_extensions(
        [
            {"number": "1001", "password": "from-config", "name": "Config name"},
            ExtensionSpec(number="1002", password="two", allow_external=False),
            {"number": "1003", "password": "three", "voicemail_pin": "9999"},
        ],
        REALM,
    )
    assert inserted == ["1002", "1003"]
    kept = await store.get_extension("1001")
    assert kept.ha1_md5 == ha1("1001", REALM, "changed-by-api") and kept.name == ""
    assert (await store.get_extension("1002")).allow_external is False
    assert await store.seed_extensions([{"number": "1002", "password": "two"}], REALM) == []


@pytest_twisted.ensureDeferred
async def test_seeding_with_a_bad_entry_writes_nothing(store: Store) -> None:
    with pytest.raises(TypeError):
        await store.seed_extensions([{"number": "1001", "password": "pw"},
                                     {"number": "1002", "passwd": "typo"}], REALM)
    assert await store.list_extensions() == []


# -- bindings -------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_binding_upsert_replace_and_order(store: Store) -> None:
    aor = "sip:1001@pbx.example.com"
    first = binding(q=0.5, path=("<sip:edge1.example.com;lr>", "<sip:edge2.example.com;lr>"))
    second = binding(contact_uri="sip:1001@10.0.0.9:5062", q=0.9, source_transport="tcp")
    await store.upsert_binding(first)
    await store.upsert_binding(second)
    assert await store.bindings_for(aor) == [second, first]

    refreshed = attrs.evolve(first, cseq=2, expires_at=3000.0, user_agent="Yealink SIP-T46S")
    await store.upsert_binding(refreshed)
    assert await store.bindings_for(aor) == [second, refreshed]
    assert await store.bindings_for("sip:nobody@pbx.example.com") == []


@pytest_twisted.ensureDeferred
async def test_outbound_bindings_are_keyed_by_instance_and_reg_id(store: Store) -> None:
    instance = "<urn:uuid:00000000-0000-1000-8000-001565123456>"
    before_nat_rebind = binding(instance_id=instance, reg_id=1)
    after = binding(instance_id=instance, reg_id=1, contact_uri="sip:1001@192.168.1.50:6000")
    other_flow = binding(instance_id=instance, reg_id=2, contact_uri="sip:1001@192.168.1.50:6001")
    for b in (before_nat_rebind, after, other_flow):
        await store.upsert_binding(b)
    assert await store.bindings_for(before_nat_rebind.aor) == [after, other_flow]
    assert after.key == binding_key("anything", instance, 1)


@pytest_twisted.ensureDeferred
async def test_binding_removal_and_expiry(store: Store) -> None:
    aor, other = "sip:1001@pbx.example.com", "sip:1002@pbx.example.com"
    a = binding(expires_at=100.0)
    b = binding(contact_uri="sip:1001@10.0.0.2", expires_at=200.0)
    c = binding(aor=other, expires_at=150.0)
    for x in (a, b, c):
        await store.upsert_binding(x)

    assert await store.purge_expired(now=150.0) == [a, c]
    assert await store.all_bindings() == [b]
    assert await store.remove_binding(aor, b.key) == b
    assert await store.remove_binding(aor, b.key) is None

    await store.upsert_binding(a)
    await store.upsert_binding(b)
    assert sorted(x.contact_uri for x in await store.remove_all_bindings(aor)) == sorted(
        [a.contact_uri, b.contact_uri])
    assert await store.all_bindings() == []


def test_binding_rejects_malformed_values() -> None:
    with pytest.raises(ValueError):
        binding(source_port=70000)
    with pytest.raises(ValueError):
        binding(source_transport="sctp")
    with pytest.raises(TypeError):
        binding(cseq="1")
    with pytest.raises(TypeError):
        binding(path=["<sip:edge>"])
    with pytest.raises(ValueError):
        binding(q=1.5)
    with pytest.raises(ValueError):
        binding(expires_at=float("nan"))
    with pytest.raises(ValueError):
        binding(aor="")


@pytest_twisted.ensureDeferred
async def test_upsert_binding_takes_only_bindings(store: Store) -> None:
    with pytest.raises(TypeError):
        await store.upsert_binding({"aor": "sip:1001@pbx.example.com"})


@pytest_twisted.ensureDeferred
async def test_everything_survives_a_restart(tmp_path: Path) -> None:
    path = str(tmp_path / "restart.sqlite")
    first = await Store.open(path)
    await first.add_extension(ExtensionSpec(number="1001", password="pw"), REALM)
    await first.upsert_binding(binding(path=("<sip:edge;lr>",), instance_id="<urn:x>", reg_id=1))
    await first.upsert_phone(extension="1001", ip="192.168.1.50", mac="00:15:65:12:34:56",
                             seen_at=10.0)
    await first.add_cdr(cdr())
    await first.spool_add("cdr", "http://127.0.0.1:1/cdr", b"\x00payload")
    await first.close()

    second = await Store.open(path)
    try:
        assert (await second.get_extension("1001")).realm == REALM
        assert await second.all_bindings() == [
            binding(path=("<sip:edge;lr>",), instance_id="<urn:x>", reg_id=1)]
        assert [p.mac for p in await second.all_phones()] == ["001565123456"]
        assert [c.call_id for c in await second.list_cdrs()] == ["call-1"]
        assert [e.payload for e in await second.spool_entries()] == [b"\x00payload"]
    finally:
        await second.close()


# -- registered phones ------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_phone_tracking(store: Store) -> None:
    yealink = await store.upsert_phone(
        extension="1001", ip="192.168.1.100", mac="00-15-65-12-34-56",
        contact_uri="<sip:1001@192.168.1.100:5060>", user_agent="Yealink SIP-T46S 66.85.0.5",
        vendor="yealink", model="t46s", seen_at=100.0)
    assert (yealink.mac, yealink.first_registered, yealink.last_registered) == (
        "001565123456", 100.0, 100.0)

    moved = await store.upsert_phone(extension="1001", ip="192.168.1.120", mac="001565123456",
                                     contact_uri="<sip:1001@192.168.1.120:5060>", seen_at=200.0)
    assert moved.id == yealink.id
    assert (moved.ip, moved.first_registered, moved.last_registered) == ("192.168.1.120", 100.0,
                                                                         200.0)
    assert (moved.vendor, moved.model) == ("yealink", "t46s")  # kept when not re-derived

    # The same device as a second line, and a phone that gives no MAC.
    await store.upsert_phone(extension="1002", ip="192.168.1.120", mac="00:15:65:12:34:56",
                             seen_at=210.0)
    generic = await store.upsert_phone(extension="1003", ip="192.168.1.101",
                                       contact_uri="<sip:1003@192.168.1.101>", seen_at=220.0)
    again = await store.upsert_phone(extension="1003", ip="192.168.1.101",
                                     contact_uri="<sip:1003@192.168.1.101>", seen_at=230.0)
    assert again.id == generic.id and again.mac is None

    assert [p.extension for p in await store.phones_by_mac("00:15:65:12:34:56")] == ["1001",
                                                                                     "1002"]
    assert [p.extension for p in await store.phones_by_ip("192.168.1.120")] == ["1001", "1002"]
    assert [p.id for p in await store.phones_for_extension("1003")] == [generic.id]
    assert len(await store.all_phones()) == 3


@pytest_twisted.ensureDeferred
async def test_phone_tracking_rejects_malformed_values(store: Store) -> None:
    with pytest.raises(ValueError):
        await store.upsert_phone(extension="1001", ip="10.0.0.1", mac="00:15:65:12:34")
    with pytest.raises(ValueError):
        await store.phones_by_mac("zz:15:65:12:34:56")
    with pytest.raises(TypeError):
        await store.upsert_phone(extension="1001", ip=None)
    assert await store.all_phones() == []


# -- CDRs ---------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_cdr_round_trip(store: Store) -> None:
    record = cdr(hangup_cause="normal_clearing", hangup_side="caller", sip_status=200,
                 trunk="carrier-a", recording_path="recordings/call-1.wav",
                 recording_size=48044, quality={"mos": 4.3, "loss": 0.01, "jitter_ms": 3})
    assert (record.duration, record.billsec) == (930.0, 925.0)
    added = await store.add_cdr(record)
    assert added.id is not None
    assert await store.get_cdr(added.id) == added
    with pytest.raises(NotFoundError):
        await store.get_cdr(added.id + 1)


@pytest_twisted.ensureDeferred
async def test_cdr_listing_by_day_newest_first(store: Store) -> None:
    day = 1705276800.0  # 2024-01-15T00:00:00Z
    times = [day - 1, day, day + 3600, day + 86399, day + 86400]
    for i, start in enumerate(times):
        await store.add_cdr(cdr(call_id=f"c{i}", start_time=start, answer_time=None,
                                end_time=start + 10, disposition="no_answer"))
    listed = await store.list_cdrs(date="2024-01-15")
    assert [c.call_id for c in listed] == ["c3", "c2", "c1"]
    assert listed[0].billsec == 0 and listed[0].duration == 10
    assert [c.call_id for c in await store.list_cdrs(date=datetime.date(2024, 1, 15), limit=2,
                                                     offset=1)] == ["c2", "c1"]
    assert [c.call_id for c in await store.list_cdrs(limit=2)] == ["c4", "c3"]
    plus_one = datetime.timezone(datetime.timedelta(hours=1))
    assert [c.call_id for c in await store.list_cdrs(date="2024-01-15", tz=plus_one)] == [
        "c2", "c1", "c0"]


@pytest_twisted.ensureDeferred
async def test_cdr_listing_rejects_bad_arguments(store: Store) -> None:
    for kwargs in ({"date": "15/01/2024"}, {"limit": 0}, {"limit": "10"}, {"offset": -1}):
        with pytest.raises(ValueError):
            await store.list_cdrs(**kwargs)
    with pytest.raises(TypeError):
        await store.list_cdrs(date=20240115)


def test_cdr_rejects_impossible_records() -> None:
    with pytest.raises(ValueError):
        cdr(end_time=1705312700.0)  # before the start
    with pytest.raises(ValueError):
        cdr(answer_time=None)  # answered without an answer time
    with pytest.raises(ValueError):
        cdr(disposition="busy")  # an answer time on an unanswered call
    with pytest.raises(ValueError):
        cdr(direction="sideways")
    with pytest.raises(ValueError):
        cdr(sip_status=99)
    with pytest.raises(ValueError):
        cdr(quality={"mos": float("nan")})
    with pytest.raises(TypeError):
        cdr(start_time="2024-01-15T10:00:00")


@pytest_twisted.ensureDeferred
async def test_add_cdr_refuses_a_record_with_an_id(store: Store) -> None:
    with pytest.raises(ValueError):
        await store.add_cdr(cdr(id=5))
    with pytest.raises(TypeError):
        await store.add_cdr({"call_id": "x"})


# -- webhook spool --------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_spool_life_cycle(store: Store) -> None:
    first = await store.spool_add("locator", "http://127.0.0.1:9/a", b"{}", next_attempt_at=50.0)
    second = await store.spool_add("cdr", "http://127.0.0.1:9/b", b"[]", next_attempt_at=10.0)
    assert [e.id for e in await store.spool_due(now=60.0)] == [second.id, first.id]
    assert [e.id for e in await store.spool_due(now=20.0)] == [second.id]

    await store.spool_reschedule(second.id, attempts=1, next_attempt_at=100.0,
                                 last_error="HTTP 503")
    assert [e.id for e in await store.spool_due(now=60.0)] == [first.id]
    [entry] = [e for e in await store.spool_entries() if e.id == second.id]
    assert (entry.attempts, entry.last_error) == (1, "HTTP 503")

    await store.spool_delete(first.id)
    await store.spool_delete(second.id)
    assert await store.spool_entries() == []
    with pytest.raises(TypeError):
        await store.spool_add("cdr", "http://x", "text, not bytes")
