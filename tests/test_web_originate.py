"""Click-to-dial through ``POST /api/call`` with sipp phones: pbxd rings 1001 (late offer),
then 1002 with 1001's offer, and ACKs 1001 with 1002's answer; plus the refusals."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_twisted

from call_support import (
    PASSWORDS, WAIT_FOR_BYE, callee, callee_ok, cdrs, drained, eventually, pbx_config, phone_dir, port_of, start_pbx,
)
from pbxd.call.call import CallState
from pbxd.service import PbxService
from sipp_runner import requires_sipp, run_sipp, scenario
from test_trunk_calls import E164, EXTERNAL, OUTBOUND_ROUTE, carrier_uas, received, trunk_config
from test_trunk_sipp import free_udp_port
from tests.web_support import WebPbx

pytestmark = [requires_sipp, pytest.mark.sipp]


# A number that is no extension: the route rings 1002.
SALES_ROUTE = {"name": "sales", "match": {"request_user": "600"}, "destination": "1002"}


@pytest_twisted.async_yield_fixture
async def pbx(tmp_path: Path) -> AsyncIterator[PbxService]:
    service = await start_pbx(pbx_config(tmp_path / "data", routes=[SALES_ROUTE]))
    yield service
    if service.running:
        await service.stopService()


@pytest_twisted.ensureDeferred
async def test_click_to_dial_rings_from_then_to(pbx: PbxService, tmp_path: Path) -> None:
    web = WebPbx.of(pbx)
    first = await callee(pbx, tmp_path, "1001", "udp", "uas_late_offer.xml")
    second = await callee(pbx, tmp_path, "1002", "udp", "uas_answer.xml", hangup=WAIT_FOR_BYE)

    started = await web.call("POST", "/api/call", json_body={"from": "1001", "to": "1002",
                                                             "caller_id": 'Sales "desk" \\ 2'})
    assert started.status == 200 and started.json["success"] is True, started.json
    call_id = started.json["call_id"]
    manager = pbx.calls.manager
    await eventually(lambda: call_id in manager.calls and manager.calls[call_id].state is CallState.ANSWERED)
    assert (await web.call("GET", "/api/calls")).json == [f"Call {call_id}: 1001 -> 1002 (connected)"]

    hung_up = await web.call("POST", f"/ami/v1/hangup/{call_id}")
    assert (hung_up.status, hung_up.json) == (200, {"success": True, "call_id": call_id})
    for phone in (await first, await second):
        assert callee_ok(phone), phone.explain()  # 1001's ACK carried an answer; both got a BYE
    [cdr] = await cdrs(pbx)
    assert (cdr.from_number, cdr.to_number, cdr.direction, cdr.disposition, cdr.hangup_cause) == (
        "1001", "1002", "internal", "answered", "admin_hangup")
    await drained(pbx)


@pytest_twisted.ensureDeferred
async def test_busy_to_hangs_up_from_with_the_cause(pbx: PbxService, tmp_path: Path) -> None:
    """1002, rung through the route of 600, is busy: 1001's 2xx is ACKed (an answer rejecting its streams) and hung up with
    Reason: SIP;cause=486; the CDR says busy."""
    web = WebPbx.of(pbx)
    bye_with_cause = WAIT_FOR_BYE.replace(
        '<recv request="BYE"/>',
        '<recv request="BYE"><action><ereg regexp="SIP;cause=486" search_in="hdr" header="Reason:"'
        ' check_it="true" assign_to="cause"/><log message="reason [$cause]"/></action></recv>', 1)
    assert bye_with_cause != WAIT_FOR_BYE
    first = await callee(pbx, tmp_path, "1001", "udp", "uas_answer_late.xml", hangup=bye_with_cause)
    second = await callee(pbx, tmp_path, "1002", "udp", "uas_busy.xml")
    started = await web.call("POST", "/api/call", json_body={"from": "1001", "to": "600"})  # the sales route
    assert started.status == 200, started.json
    for phone in (await first, await second):
        assert callee_ok(phone), phone.explain()
    [cdr] = await cdrs(pbx)
    assert (cdr.from_number, cdr.to_number, cdr.sip_status, cdr.disposition) == ("1001", "600", 486, "busy")
    await drained(pbx)


@pytest_twisted.ensureDeferred
async def test_busy_from_is_a_failed_call(pbx: PbxService, tmp_path: Path) -> None:
    """1001 refuses pbxd's INVITE: nobody else is called (here a URI never reached) and
    the CDR, under the id the API answered, says busy on the caller's side."""
    web = WebPbx.of(pbx)
    first = await callee(pbx, tmp_path, "1001", "udp", "uas_busy.xml")
    no_route = await web.call("POST", "/api/call", json_body={"from": "1001", "to": "700"})
    assert no_route.status == 404, no_route.json  # no extension, no route
    nowhere = "sip:nobody@example.invalid"
    started = await web.call("POST", "/api/call", json_body={"from": "1001", "to": nowhere})
    assert started.status == 200, started.json
    assert callee_ok(await first)
    [cdr] = await cdrs(pbx)
    assert (cdr.call_id, cdr.from_number, cdr.to_number, cdr.direction, cdr.sip_status, cdr.disposition,
            cdr.hangup_side) == (started.json["call_id"], "1001", nowhere, "outbound", 486, "busy", "caller")
    await drained(pbx)


@pytest_twisted.ensureDeferred
async def test_from_not_answering_is_cancelled(tmp_path: Path) -> None:
    """1001 rings past calls.max_ring_time: pbxd CANCELs; the CDR says no answer (480)."""
    service = await start_pbx(pbx_config(tmp_path / "data", calls={"max_ring_time": 1.0}))
    try:
        first = await callee(service, tmp_path, "1001", "udp", "uas_ring.xml")
        started = await WebPbx.of(service).call("POST", "/api/call", json_body={"from": "1001", "to": "1002x"})
        assert started.status == 404  # 1002x is no extension, and not registered
        started = await WebPbx.of(service).call("POST", "/api/call",
                                                json_body={"from": "1001", "to": "sip:x@example.invalid"})
        assert started.status == 200, started.json
        assert callee_ok(await first)
        [cdr] = await cdrs(service)
        assert (cdr.sip_status, cdr.disposition, cdr.hangup_cause) == (480, "no_answer", "no_answer")
        await drained(service)
    finally:
        await service.stopService()


@pytest_twisted.ensureDeferred
async def test_click_to_dial_refusals(pbx: PbxService, tmp_path: Path) -> None:
    web = WebPbx.of(pbx)
    for body in ({}, {"from": "1001"}, {"to": "1002"}, {"from": 1001, "to": "1002"},
                 {"from": "", "to": "1002"}, {"from": "1001", "to": " "}, {"from": "1001", "to": "1002", "bogus": 1},
                 {"from": "1001", "to": "1002", "caller_id": 7}, {"from": "1" * 65, "to": "1002"}, [1]):
        assert (await web.call("POST", "/api/call", json_body=body)).status == 400, body
    unknown = await web.call("POST", "/api/call", json_body={"from": "9999", "to": "1002"})
    assert unknown.status == 404
    unregistered = await web.call("POST", "/api/call", json_body={"from": "1001", "to": "1002"})
    assert unregistered.status == 409
    pbx.calls.manager.accepting = False  # as during a graceful shutdown
    assert (await web.call("POST", "/api/call", json_body={"from": "1001", "to": "1002"})).status == 503
    assert (await web.call("GET", "/api/calls")).json == []


async def registered_only(pbx: PbxService, tmp_path: Path, user: str) -> None:
    """``user`` registers once (a binding of 300 s) and answers nothing."""
    result = await run_sipp(
        scenario("register.xml", phone_dir(tmp_path, f"register-{user}"), expect=200,
                 contact="<sip:[user]@[local_ip]:[local_port];transport=[transport]>"),
        "127.0.0.1", port_of(pbx, "udp"), keys={"user": user, "domain": "127.0.0.1", "expires": "300"},
        extra=("-au", user, "-ap", PASSWORDS[user]))
    assert result.ok, result.explain()


@pytest_twisted.ensureDeferred
async def test_click_to_dial_over_a_trunk(tmp_path: Path) -> None:
    """1001 (allow_external) clicks to dial an external number routed to ``trunk:carrier``: 1001 answers, the
    carrier gets the INVITE with the trunk's identity, challenges it, answers; the API hangs up; the CDR is outbound
    over the trunk. 1002 (no allow_external) is refused 403 and no permit of the trunk stays taken."""
    port = free_udp_port()
    carrier = await carrier_uas(tmp_path, port)
    extensions = [{"number": "1001", "password": PASSWORDS["1001"]},
                  {"number": "1002", "password": PASSWORDS["1002"], "allow_external": False}]
    service = await start_pbx(pbx_config(tmp_path / "data", trunks=[trunk_config(port)], routes=[OUTBOUND_ROUTE],
                                         extensions=extensions))
    try:
        web = WebPbx.of(service)
        trunk = service.trunks.registry.trunk("carrier")  # type: ignore[union-attr]
        await registered_only(service, tmp_path, "1002")
        refused = await web.call("POST", "/api/call", json_body={"from": "1002", "to": "9" + EXTERNAL})
        assert refused.status == 403, refused.json
        assert trunk.limits.active == 0

        first = await callee(service, tmp_path, "1001", "udp", "uas_late_offer.xml")
        started = await web.call("POST", "/api/call", json_body={"from": "1001", "to": "9" + EXTERNAL})
        assert started.status == 200, started.json
        call_id = started.json["call_id"]
        manager = service.calls.manager
        await eventually(lambda: call_id in manager.calls and manager.calls[call_id].state is CallState.ANSWERED)
        hung_up = await web.call("POST", f"/ami/v1/hangup/{call_id}")
        assert hung_up.status == 200, hung_up.json
        assert callee_ok(await first)
        carried = await carrier.done
        assert carried.ok, carried.explain()
        first_invite, retry = received(carried, f"INVITE sip:{E164}@127.0.0.1:{port};transport=udp SIP/2.0")
        assert "From: <sip:1001@carrier.test>;tag=" in first_invite and f"To: <sip:{E164}@carrier.test>" in first_invite
        assert "Proxy-Authorization: Digest " in retry
        [cdr] = await cdrs(service)
        assert (cdr.call_id, cdr.trunk, cdr.direction, cdr.from_number, cdr.to_number, cdr.disposition,
                cdr.hangup_cause) == (call_id, "carrier", "outbound", "1001", EXTERNAL, "answered", "admin_hangup")
        await drained(service)
        assert trunk.limits.active == 0
    finally:
        await carrier.stop()
        await service.stopService()
