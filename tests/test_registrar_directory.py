"""The extension directory as the ``static`` user backend: answers from memory, as the
store-backed backend would, and follows every change the store commits; end to end,
a REGISTER sees a password changed a moment before."""

from __future__ import annotations

from pathlib import Path

import pytest_twisted

from pbxd.hooks.user_backend import LookupStatus, StaticBackend
from pbxd.registrar.directory import ExtensionDirectory
from pbxd.service import PbxService
from pbxd.sip.digest import ha1
from pbxd.store import ExtensionSpec, Store
from tests.test_registrar import UdpPhone, make_pbx, phone, pbx, stored_bindings  # noqa: F401

REALM = "pbx.example.com"


@pytest_twisted.async_yield_fixture
async def store(tmp_path: Path):
    opened = await Store.open(str(tmp_path / "pbxd.sqlite"))
    await opened.add_extension(ExtensionSpec(number="2001", password="pw2001", name="Alice", max_calls=1,
                                             dial_patterns=["1.*"]), REALM)
    await opened.add_extension(ExtensionSpec(number="2002", password="pw2002", enabled=False),
                               REALM)
    yield opened
    if not opened._closed:
        await opened.close()


def outcome(lookup):  # type: ignore[no-untyped-def]
    user = lookup.user
    return (lookup.status, lookup.reason, lookup.backend,
            None if user is None else (user.username, user.display_name, user.ha1_for("MD5"),
                                       user.ha1_for("SHA-256"), user.allow_external, user.max_calls,
                                       user.dial_patterns))


@pytest_twisted.ensureDeferred
async def test_it_answers_as_the_store_backend_does(store: Store) -> None:
    directory = ExtensionDirectory(store)
    await directory.refresh()
    static = StaticBackend(store)
    for username, realm in [("2001", REALM), ("2002", REALM), ("9999", REALM),
                            ("2001", "other.example.com"), ("", REALM)]:
        assert outcome(await directory.lookup(username, realm)) == outcome(
            await static.lookup(username, realm)), (username, realm)
    found = await directory.lookup("2001", REALM)
    assert found.user.ha1_for("MD5") == ha1("2001", REALM, "pw2001", "MD5")


@pytest_twisted.ensureDeferred
async def test_lookups_do_not_touch_the_store(store: Store) -> None:
    directory = ExtensionDirectory(store)
    await directory.refresh()
    await store.close()  # a store read now would fail (UNAVAILABLE)
    d = directory.lookup("2001", REALM)
    assert d.called  # answered synchronously, from memory
    assert (await d).status is LookupStatus.FOUND
    assert (await directory.lookup("nobody", REALM)).status is LookupStatus.NOT_FOUND


@pytest_twisted.ensureDeferred
async def test_it_follows_every_change_the_store_commits(store: Store) -> None:
    directory = ExtensionDirectory(store)
    await directory.refresh()
    before = await directory.lookup("2001", REALM)  # cached from here on
    await store.update_extension("2001", password="changed")
    after = await directory.lookup("2001", REALM)
    assert after.user.ha1_for("MD5") == ha1("2001", REALM, "changed", "MD5") != before.user.ha1_for("MD5")

    await store.update_extension("2001", max_calls=2, dial_patterns=["00.*"])
    guarded = (await directory.lookup("2001", REALM)).user
    assert (guarded.max_calls, guarded.dial_patterns) == (2, ("00.*",))
    assert guarded.may_dial("0044123") and not guarded.may_dial("900")

    await store.update_extension("2001", enabled=False)
    assert (await directory.lookup("2001", REALM)).status is LookupStatus.FORBIDDEN
    assert not directory.has_user("2001")
    await store.update_extension("2002", enabled=True)
    assert (await directory.lookup("2002", REALM)).status is LookupStatus.FOUND
    assert directory.has_user("2002") and len(directory) == 1

    await store.add_extension(ExtensionSpec(number="2003", password="pw"), REALM)
    await store.seed_extensions([{"number": "2004", "password": "pw"}], REALM)
    assert {n for n in ("2003", "2004") if directory.has_user(n)} == {"2003", "2004"}
    await store.delete_extension("2002")
    assert (await directory.lookup("2002", REALM)).status is LookupStatus.NOT_FOUND
    assert not directory.has_user("2002")
    # A refresh reads the same as the changes built up.
    numbers = {n for n in ("2001", "2002", "2003", "2004") if directory.has_user(n)}
    await directory.refresh()
    assert {n for n in ("2001", "2002", "2003", "2004") if directory.has_user(n)} == numbers


@pytest_twisted.ensureDeferred
async def test_unknown_names_are_not_remembered(store: Store) -> None:
    directory = ExtensionDirectory(store)
    await directory.refresh()
    for number in range(1000):
        await directory.lookup(f"guess-{number}", REALM)
    assert len(directory._answers) == 0
    await directory.lookup("2001", REALM)
    assert len(directory._answers) == 1


@pytest_twisted.ensureDeferred
async def test_a_register_sees_a_password_changed_just_before(pbx: PbxService,
                                                              phone: UdpPhone) -> None:
    answer, _ = await phone.login()
    assert answer.status == 200
    store = pbx.store.store
    assert store is not None
    await store.update_extension("1001", password="new-secret")
    refused, _ = await phone.login(password="secret-1001")
    assert refused.status == 403
    accepted, _ = await phone.login(password="new-secret")
    assert accepted.status == 200
    await store.update_extension("1001", enabled=False)
    disabled, _ = await phone.login(password="new-secret")
    assert disabled.status == 403
    assert len(stored_bindings(pbx)) == 1
