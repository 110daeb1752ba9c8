"""``+sip.instance`` and ``reg-id`` (RFC 5626 §6, RFC 5627 §4.2) through the
registrar, end to end over real sockets, and what pbxd says about outbound.

pbxd keys a binding with ``+sip.instance`` by the instance and reg-id, not by
the Contact URI (docs/registrar.md, "Each Contact"): a phone that comes back
from another address or port with the same instance and reg-id replaces its
binding; another reg-id of the same instance is a second flow. The 200 lists
every binding with its ``+sip.instance`` and ``reg-id``.

pbxd does not offer the outbound extension (docs/registrar.md): a REGISTER
with ``Require: outbound`` gets ``420`` with ``Unsupported: outbound``
(RFC 3261 §8.2.2.3), and one with ``Supported: outbound`` is registered
without pbxd claiming outbound in its answer (RFC 5626 §6 has a registrar
that does support it say so with ``Require: outbound`` in the 200).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted

from call_support import PASSWORDS, pbx_config, port_of, start_pbx
from pbxd.service import PbxService
from pbxd.sip.headers import Address, unquoted
from pbxd.sip.message import Response, parse_message
from sip_peer import Answer, Peer, UdpPeer, register, tcp_peer, udp_peer

MakePeer = Callable[[], Awaitable[UdpPeer]]

INSTANCE = "<urn:uuid:00000000-0000-1000-8000-000a95a0e128>"
OTHER_INSTANCE = "<urn:uuid:00000000-0000-1000-8000-000a95a0e129>"


@pytest_twisted.async_yield_fixture
async def pbx(tmp_path: Path):
    service = await start_pbx(pbx_config(tmp_path / "data"))
    yield service
    await service.stopService()


@pytest_twisted.async_yield_fixture
async def udp_peers(pbx: PbxService):
    """Make UDP peers (each its own source port); all are closed after the test."""
    ports = []

    async def make() -> UdpPeer:
        peer, port = await udp_peer(port_of(pbx, "udp"))
        ports.append(port)
        return peer

    yield make
    for port in ports:
        await port.stopListening()


def contact(port: int, instance: str, reg_id: int | None, transport: str = "udp") -> str:
    value = f'<sip:1001@127.0.0.1:{port};transport={transport};ob>;+sip.instance="{instance}"'
    return value if reg_id is None else f"{value};reg-id={reg_id}"


def listed(answer: Answer) -> list[tuple[str, str | None, str | None]]:
    """The 200's bindings as (Contact URI, +sip.instance, reg-id), sorted."""
    response = parse_message(answer.raw)
    assert isinstance(response, Response) and response.status == 200, answer.raw
    found: list[tuple[str, str | None, str | None]] = []
    for address in response.contacts:
        assert isinstance(address, Address)
        assert address.param("expires") is not None
        instance = unquoted(address.param("+sip.instance"))
        found.append((str(address.uri), instance, address.param("reg-id")))
    return sorted(found)


def stored(pbx: PbxService) -> list[tuple[str, str | None, int | None, int]]:
    connection = sqlite3.connect(str(pbx.config.data_dir / "pbxd.sqlite3"))
    try:
        return sorted(connection.execute(
            "SELECT contact_uri, instance_id, reg_id, source_port FROM bindings"))
    finally:
        connection.close()


async def register_1001(peer: Peer, call_id: str, contact_value: str, transport: str = "udp",
                        **options: Any) -> Answer:
    return await register(peer, transport, user="1001", password=PASSWORDS["1001"],
                          call_id=call_id, contact=contact_value, **options)


@pytest_twisted.ensureDeferred
async def test_same_instance_and_reg_id_from_another_port_replaces_the_binding(
    pbx: PbxService, udp_peers: MakePeer
) -> None:
    first, second, third = await udp_peers(), await udp_peers(), await udp_peers()
    answer = await register_1001(first, "flow-a", contact(first.port, INSTANCE, 1))
    assert listed(answer) == [(f"sip:1001@127.0.0.1:{first.port};transport=udp;ob", INSTANCE, "1")]
    # The instance goes back as the quoted string it came as (RFC 5626 §4.1).
    assert f'+sip.instance="{INSTANCE}"' in (answer.header("contact") or "")

    # The phone again, from a new source port and Contact, with a new Call-ID
    # (it rebooted, or its NAT binding changed): the same flow, replaced.
    answer = await register_1001(second, "flow-a-again", contact(second.port, INSTANCE, 1))
    assert listed(answer) == [(f"sip:1001@127.0.0.1:{second.port};transport=udp;ob", INSTANCE, "1")]
    [binding] = pbx.registrar.location.lookup_user("1001")
    assert binding.target.port == second.port
    assert stored(pbx) == [
        (f"sip:1001@127.0.0.1:{second.port};transport=udp;ob", INSTANCE, 1, second.port)]

    # reg-id 2 of the same instance is a second flow (RFC 5626 §6): both stay.
    answer = await register_1001(third, "flow-b", contact(third.port, INSTANCE, 2))
    assert listed(answer) == sorted([
        (f"sip:1001@127.0.0.1:{second.port};transport=udp;ob", INSTANCE, "1"),
        (f"sip:1001@127.0.0.1:{third.port};transport=udp;ob", INSTANCE, "2"),
    ])
    assert sorted(c.target.port for c in pbx.registrar.location.lookup_user("1001")) == sorted(
        [second.port, third.port])
    assert sorted(row[2] for row in stored(pbx)) == [1, 2]


@pytest_twisted.ensureDeferred
async def test_flows_over_udp_and_tcp_are_two_bindings(pbx: PbxService, udp_peers: MakePeer) -> None:
    udp = await udp_peers()
    tcp = await tcp_peer(port_of(pbx, "tcp"))
    try:
        await register_1001(udp, "flow-udp", contact(udp.port, INSTANCE, 1))
        answer = await register_1001(tcp, "flow-tcp", contact(tcp.port, INSTANCE, 2, "tcp"),
                                     "tcp")
        pairs = sorted((instance, reg_id) for _, instance, reg_id in listed(answer))
        assert pairs == [(INSTANCE, "1"), (INSTANCE, "2")]
        transports = sorted(c.target.transport for c in pbx.registrar.location.lookup_user("1001"))
        assert transports == ["tcp", "udp"]
    finally:
        tcp.close()


@pytest_twisted.ensureDeferred
async def test_instance_without_reg_id_is_keyed_by_the_instance(pbx: PbxService, udp_peers: MakePeer) -> None:
    """RFC 5627 §4.2: without reg-id the instance alone names the binding; another
    instance is another phone."""
    first, second, third = await udp_peers(), await udp_peers(), await udp_peers()
    await register_1001(first, "gruu-a", contact(first.port, INSTANCE, None))
    answer = await register_1001(second, "gruu-a2", contact(second.port, INSTANCE, None))
    assert listed(answer) == [(f"sip:1001@127.0.0.1:{second.port};transport=udp;ob", INSTANCE, None)]
    answer = await register_1001(third, "gruu-b", contact(third.port, OTHER_INSTANCE, None))
    assert sorted(instance for _, instance, _ in listed(answer)) == sorted([INSTANCE, OTHER_INSTANCE])


@pytest_twisted.ensureDeferred
async def test_unregistering_one_flow_keeps_the_other(pbx: PbxService, udp_peers: MakePeer) -> None:
    first, second = await udp_peers(), await udp_peers()
    await register_1001(first, "flow-1", contact(first.port, INSTANCE, 1))
    await register_1001(second, "flow-2", contact(second.port, INSTANCE, 2))
    # Expires 0 for reg-id 1, sent with whatever Contact URI the phone has now.
    answer = await register_1001(second, "flow-1-off", contact(second.port, INSTANCE, 1), expires=0)
    assert listed(answer) == [(f"sip:1001@127.0.0.1:{second.port};transport=udp;ob", INSTANCE, "2")]
    assert [row[2] for row in stored(pbx)] == [2]


@pytest.mark.parametrize("transport", ["udp", "tcp"])
@pytest_twisted.ensureDeferred
async def test_require_outbound_gets_420(pbx: PbxService, udp_peers: MakePeer,
                                         transport: str) -> None:
    peer: Any = await udp_peers() if transport == "udp" else await tcp_peer(port_of(pbx, "tcp"))
    try:
        answer = await register_1001(peer, f"require-{transport}",
                                     contact(peer.port, INSTANCE, 1, transport), transport,
                                     extra=("Require: outbound", "Supported: path, outbound"))
    finally:
        if transport == "tcp":
            peer.close()
    assert answer.status == 420, answer.raw
    assert answer.header("unsupported") == "outbound"
    assert stored(pbx) == []


@pytest_twisted.ensureDeferred
async def test_supported_outbound_registers_without_pbxd_claiming_outbound(
    pbx: PbxService, udp_peers: MakePeer
) -> None:
    peer = await udp_peers()
    answer = await register_1001(peer, "supported-ob", contact(peer.port, INSTANCE, 1),
                                 extra=("Supported: outbound, path",))
    assert listed(answer) == [(f"sip:1001@127.0.0.1:{peer.port};transport=udp;ob", INSTANCE, "1")]
    tags = {tag.strip() for name in ("require", "supported")
            for line in answer.headers.get(name, []) for tag in line.split(",")}
    assert "outbound" not in tags


@pytest_twisted.ensureDeferred
async def test_reg_id_without_an_instance_does_not_key_the_binding(
    pbx: PbxService, udp_peers: MakePeer
) -> None:
    """RFC 5626 §6: a reg-id without +sip.instance is ignored for the binding;
    the Contact URI keys it (RFC 3261 §10.3), so two Contacts are two bindings."""
    first, second = await udp_peers(), await udp_peers()
    await register_1001(first, "no-instance-1", f"<sip:1001@127.0.0.1:{first.port}>;reg-id=1")
    answer = await register_1001(second, "no-instance-2", f"<sip:1001@127.0.0.1:{second.port}>;reg-id=1")
    assert sorted(uri for uri, _, _ in listed(answer)) == sorted(
        [f"sip:1001@127.0.0.1:{first.port}", f"sip:1001@127.0.0.1:{second.port}"])
    assert len(stored(pbx)) == 2


@pytest_twisted.ensureDeferred
async def test_reg_id_with_a_second_contact_gets_400(pbx: PbxService, udp_peers: MakePeer) -> None:
    """RFC 5626 §6: a REGISTER with a reg-id Contact and another Contact is refused
    with 400, and nothing of it is bound."""
    peer = await udp_peers()
    both = f"{contact(peer.port, INSTANCE, 1)}, <sip:1001@127.0.0.1:{peer.port}>"
    answer = await register_1001(peer, "two-with-reg-id", both)
    response = parse_message(answer.raw)
    assert isinstance(response, Response)
    assert (response.status, response.reason) == (400, "Only One Contact With reg-id")
    assert stored(pbx) == [] and pbx.registrar.location.lookup_user("1001") == []
    # The same phone with its flow alone registers.
    assert listed(await register_1001(peer, "one-with-reg-id", contact(peer.port, INSTANCE, 1)))
