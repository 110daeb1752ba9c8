"""PJSIP phones register to pbxd (the service tree on loopback) over UDP and TCP.

What pbxd keeps is checked where it keeps it: the location service in memory and the
bindings table in the SQLite file. The phones are real PJSIP user agents (see
tests/pjsip_phone.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.logger import globalLogPublisher

pytest.importorskip("pjsua2")

from pbxd.service import PbxService  # noqa: E402
from tests.pjsip_phone import Phone, PjsipError, PjsipStack, pjsip_stack  # noqa: E402
from tests.test_registrar import DOMAIN, pbx_config, port_of, start_pbx, stored_bindings  # noqa: E402

TRANSPORTS = ["udp", "tcp"]
PASSWORDS = {"1001": "secret-1001", "1002": "secret-1002"}


@pytest.fixture(scope="module")
def stack() -> Iterator[PjsipStack]:
    with pjsip_stack(reactor) as stack:
        yield stack


@pytest_twisted.async_yield_fixture
async def phones(stack: PjsipStack):
    """Makes phones; at the end of the test their calls and accounts are gone."""

    def make(user: str, **options: Any) -> Phone:
        return Phone(stack, user, PASSWORDS[user], domain=DOMAIN, **options)

    yield make
    await stack.close_phones()


@pytest_twisted.async_yield_fixture
async def make_pbx(tmp_path: Path):
    started: list[PbxService] = []

    async def make(**sections: Any) -> PbxService:
        service = await start_pbx(pbx_config(tmp_path / "data", **sections))
        started.append(service)
        return service

    yield make
    for service in started:
        if service.running:
            await service.stopService()


def binding_of(pbx: PbxService, user: str) -> Any:
    [contact] = pbx.registrar.location.lookup(f"sip:{user}@{DOMAIN}")
    return contact


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest_twisted.ensureDeferred
async def test_two_phones_register(make_pbx, phones, transport: str) -> None:
    pbx = await make_pbx()
    alice, bob = phones("1001"), phones("1002")
    port = port_of(pbx, transport)
    states = [await alice.register("127.0.0.1", port, transport, expires=120),
              await bob.register("127.0.0.1", port, transport, expires=120)]
    assert [(s.code, s.active, s.expires) for s in states] == [(200, True, 120)] * 2
    rows = {row["aor"]: row for row in stored_bindings(pbx)}
    assert set(rows) == {f"sip:1001@{DOMAIN}", f"sip:1002@{DOMAIN}"}
    for phone in (alice, bob):
        row = rows[f"sip:{phone.user}@{DOMAIN}"]
        contact = binding_of(pbx, phone.user)
        # PJSIP's Contact names the address it sent from: its UDP socket, or
        # the TCP connection it opened; that is also the flow pbxd keeps.
        assert f"@127.0.0.1:{row['source_port']};" in row["contact_uri"]
        assert ("transport=tcp" in row["contact_uri"].lower()) == (transport == "tcp")
        assert (row["source_transport"], row["source_host"]) == (transport, "127.0.0.1")
        assert (contact.flow.transport, contact.flow.host, contact.flow.port) == (
            transport, "127.0.0.1", row["source_port"])
        if transport == "udp":
            assert row["source_port"] == phone.contact_host_port[1]
        assert row["expires_at"] - row["received_at"] == 120
        assert "PJSIP" in row["user_agent"]


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest_twisted.ensureDeferred
async def test_wrong_password_is_refused(make_pbx, phones, transport: str) -> None:
    pbx = await make_pbx()
    phone = phones("1001")
    with pytest.raises(PjsipError) as refused:
        await phone.register("127.0.0.1", port_of(pbx, transport), transport, password="wrong")
    assert [(s.code, s.active) for s in phone.registrations] == [(403, False)], refused.value
    assert stored_bindings(pbx) == []
    assert pbx.registrar.location.lookup(f"sip:1001@{DOMAIN}") == []


@pytest.mark.parametrize(("algorithms", "used"), [
    (["MD5", "SHA-256"], "MD5"),  # pbxd's default order: PJSIP answers the first it knows
    (["SHA-256"], "SHA-256"),     # SHA-256 only (RFC 8760): PJSIP answers it
])
@pytest_twisted.ensureDeferred
async def test_digest_algorithm(make_pbx, phones, algorithms: list[str], used: str) -> None:
    pbx = await make_pbx(auth={"algorithms": algorithms})
    seen: list[str] = []

    def observe(event: dict[str, Any]) -> None:
        if event.get("log_namespace") == "pbxd.registrar.auth" and "algorithm" in event:
            seen.append(event["algorithm"])

    globalLogPublisher.addObserver(observe)
    try:
        state = await phones("1001").register("127.0.0.1", port_of(pbx, "udp"))
    finally:
        globalLogPublisher.removeObserver(observe)
    assert (state.code, state.active) == (200, True)
    assert seen == [used]


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest_twisted.ensureDeferred
async def test_unregister_removes_the_binding(make_pbx, phones, transport: str) -> None:
    pbx = await make_pbx()
    alice, bob = phones("1001"), phones("1002")
    port = port_of(pbx, transport)
    await alice.register("127.0.0.1", port, transport)
    await bob.register("127.0.0.1", port, transport)
    state = await alice.unregister()
    assert (state.code, state.active) == (200, False)
    # Only 1001's binding went, from memory and from the file.
    assert pbx.registrar.location.lookup(f"sip:1001@{DOMAIN}") == []
    assert [row["aor"] for row in stored_bindings(pbx)] == [f"sip:1002@{DOMAIN}"]
    assert binding_of(pbx, "1002").flow.transport == transport
