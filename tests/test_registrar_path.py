"""Path (RFC 3327) end to end: an edge proxy registers a phone through pbxd
over a real socket, and a call to that phone comes back through the edge.

The "edge proxy" is a socket of the test's: it sends the REGISTER with the
Path it would add (itself, and a second proxy further out), and it receives
the INVITE pbxd sends to the binding. What is checked:

- the 200 returns the Path, in order (RFC 3327 §5.3: "The registrar copies
  the Path header field values into a Path header field in the successful
  (200 class) REGISTER response"). Without ``Supported: path`` §5.3 leaves the
  registrar the choice of refusing (420, recommended) or accepting; pbxd
  accepts (docs/registrar.md), and then copies the Path just the same;
- the binding keeps the Path, in memory and in SQLite, either way;
- the INVITE to the extension goes to the flow the REGISTER came over with
  one Route per Path entry, in order (§5.3: the Path is the route set
  towards the phone), and the phone's Contact as Request-URI.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import defer

from call_support import PASSWORDS, caller, final_and_ack, pbx_config, port_of, start_pbx
from pbxd.service import PbxService
from pbxd.sip.message import Request, make_response, parse_message
from sip_peer import UdpPeer, register, udp_peer
from sipp_runner import requires_sipp

OUTER = "<sip:outer-proxy.example.net;lr>"
PHONE_CONTACT = "<sip:1001@10.1.2.3:5062;transport=udp>"  # the phone, behind the edge


@pytest_twisted.async_yield_fixture
async def pbx(tmp_path: Path):
    service = await start_pbx(pbx_config(tmp_path / "data"))
    yield service
    await service.stopService()


@pytest_twisted.async_yield_fixture
async def edge(pbx: PbxService):
    peer, port = await udp_peer(port_of(pbx, "udp"))
    yield peer
    await port.stopListening()


def edge_path(edge: UdpPeer) -> list[str]:
    """What the edge and the proxy beyond it put in Path (the nearest to pbxd first)."""
    return [f"<sip:edge@127.0.0.1:{edge.port};lr>", OUTER]


def stored_paths(pbx: PbxService) -> list[list[str]]:
    connection = sqlite3.connect(str(pbx.config.data_dir / "pbxd.sqlite3"))
    try:
        return [json.loads(row[0]) for row in connection.execute("SELECT path FROM bindings")]
    finally:
        connection.close()


@pytest.mark.parametrize("supported", [True, False], ids=["supported-path", "no-supported"])
@pytest_twisted.ensureDeferred
async def test_path_is_kept_and_returned(pbx: PbxService, edge: UdpPeer, supported: bool) -> None:
    path = edge_path(edge)
    extra = tuple(f"Path: {value}" for value in path) + (("Supported: path",) if supported else ())
    answer = await register(edge, "udp", user="1001", password=PASSWORDS["1001"], call_id="path-reg",
                            contact=PHONE_CONTACT, extra=extra)
    assert answer.status == 200, answer.raw
    # §5.3: accepted, and returned as received, in order.
    assert answer.headers.get("path", []) == path
    # The binding keeps it either way: it is how requests reach the phone.
    [contact] = pbx.registrar.location.lookup_user("1001")
    assert list(contact.route) == path
    assert stored_paths(pbx) == [path]


@pytest_twisted.ensureDeferred
async def test_one_path_header_with_two_values_keeps_the_order(pbx: PbxService, edge: UdpPeer) -> None:
    path = edge_path(edge)
    answer = await register(edge, "udp", user="1001", password=PASSWORDS["1001"], call_id="path-comma",
                            contact=PHONE_CONTACT, extra=(f"Path: {', '.join(path)}", "Supported: path"))
    assert answer.status == 200
    returned = [value.strip() for line in answer.headers["path"] for value in line.split(",")]
    assert returned == path
    assert stored_paths(pbx) == [path]


@requires_sipp
@pytest_twisted.ensureDeferred
async def test_a_call_to_the_extension_follows_the_path(pbx: PbxService, edge: UdpPeer,
                                                        tmp_path: Path) -> None:
    path = edge_path(edge)
    answer = await register(edge, "udp", user="1001", password=PASSWORDS["1001"], call_id="path-call",
                            contact=PHONE_CONTACT, extra=(*(f"Path: {v}" for v in path), "Supported: path"))
    assert answer.status == 200
    # 1002 calls 1001 with sipp; the edge gets the INVITE and says busy.
    call = defer.ensureDeferred(caller(pbx, tmp_path, "1002", "1001", "udp", final_and_ack(486)))
    while True:
        arrived = await edge.next(15)
        if arrived.start_line.startswith("INVITE "):
            break
    invite = parse_message(arrived.raw)
    assert isinstance(invite, Request)
    assert str(invite.ruri) == PHONE_CONTACT.strip("<>")
    assert invite.get_all("route") == path
    busy = make_response(invite, 486)
    busy.set("To", str(invite.to_addr.with_param("tag", "edge-busy")))
    edge.send(busy.to_bytes())
    # pbxd's ACK for the 486 comes to the same place (§17.1.1.3).
    while True:
        arrived = await edge.next(15)
        if arrived.start_line.startswith("ACK "):
            break
    # The ACK of a non-2xx carries the INVITE's Route headers (§17.1.1.3).
    assert arrived.headers.get("route") == path
    result = await call
    assert result.ok, result.explain()
