"""Call control through the HTTP API on live sipp calls: list, hold and resume, transfer,
hang up, dialogs, and a graceful shutdown with a call up — checking the SIP each phone sees."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import defer

from call_support import (
    CALLEE_HANGS_UP,
    CALLEE_TAKES_REINVITE,
    CALLER_WAITS_FOR_BYE,
    DOMAIN,
    PASSWORDS,
    WAIT_FOR_BYE,
    callee,
    callee_ok,
    caller,
    cdrs,
    drained,
    eventually,
    pbx_config,
    port_of,
    start_pbx,
)
from pbxd.call.call import CallState
from pbxd.service import PbxService
from sipp_runner import requires_sipp, run_sipp, scenario
from tests.web_support import WebPbx

pytestmark = [requires_sipp, pytest.mark.sipp]


def callee_takes_reinvite_with(direction: str) -> str:
    """The callee answers a re-INVITE whose offer has ``a=<direction>`` (sipp fails otherwise)."""
    return CALLEE_TAKES_REINVITE.replace(
        '<recv request="INVITE"/>',
        f'<recv request="INVITE"><action><ereg regexp="a={direction}" search_in="body" check_it="true"'
        f' assign_to="offer_{direction}"/><log message="offer: [$offer_{direction}]"/></action></recv>', 1)


@pytest_twisted.async_yield_fixture
async def pbx(tmp_path: Path) -> AsyncIterator[PbxService]:
    service = await start_pbx(pbx_config(tmp_path / "data"))
    yield service
    if service.running:
        await service.stopService()


async def answered_call(pbx: PbxService) -> str:
    manager = pbx.calls.manager
    [call] = await eventually(lambda: [c for c in manager.calls.values() if c.state is CallState.ANSWERED])
    return str(call.id)


async def reinvites_done(pbx: PbxService) -> None:
    """No INVITE client transaction left (a re-INVITE was answered)."""
    await eventually(lambda: not [t for t in pbx.sip.core.layer.transactions.client
                                  if t.request.method == "INVITE"])


@pytest_twisted.ensureDeferred
async def test_list_hold_resume_dialogs_and_hang_up(pbx: PbxService, tmp_path: Path) -> None:
    web = WebPbx.of(pbx)
    callee_done = await callee(pbx, tmp_path, "1002", "udp", "uas_answer.xml",
                               hangup=callee_takes_reinvite_with("sendonly")
                               + callee_takes_reinvite_with("sendrecv") + WAIT_FOR_BYE)
    calling = defer.Deferred.fromCoroutine(caller(pbx, tmp_path, "1001", "1002", "udp", CALLER_WAITS_FOR_BYE))
    call_id = await answered_call(pbx)

    assert (await web.call("GET", "/api/calls")).json == [f"Call {call_id}: 1001 -> 1002 (connected)"]
    dialogs = (await web.call("GET", "/ami/v1/dialogs")).json
    assert dialogs["total"] == 2
    assert {d["role"] for d in dialogs["dialogs"]} == {"uac", "uas"}
    assert all(d["call"] == call_id and d["state"] == "confirmed" for d in dialogs["dialogs"])

    held = await web.call("POST", "/api/call/hold", json_body={"call_id": call_id})
    assert (held.status, held.json) == (200, {"success": True})
    await reinvites_done(pbx)
    resumed = await web.call("POST", "/api/call/resume", json_body={"call_id": call_id})
    assert (resumed.status, resumed.json) == (200, {"success": True})
    await reinvites_done(pbx)

    hung_up = await web.call("POST", f"/ami/v1/hangup/{call_id}")
    assert (hung_up.status, hung_up.json) == (200, {"success": True, "call_id": call_id})
    result = await calling
    assert result.ok, result.explain()  # the caller got pbxd's BYE
    other = await callee_done
    assert callee_ok(other), other.explain()  # sendonly, then sendrecv, then BYE
    [cdr] = await cdrs(pbx)
    assert (cdr.hangup_cause, cdr.hangup_side, cdr.disposition) == ("admin_hangup", "system", "answered")
    await drained(pbx)
    assert (await web.call("GET", "/api/calls")).json == []
    assert (await web.call("POST", f"/ami/v1/hangup/{call_id}")).status == 404
    assert (await web.call("POST", "/api/call/hold", json_body={"call_id": call_id})).status == 404


@pytest_twisted.ensureDeferred
async def test_transfer_through_the_api(pbx: PbxService, tmp_path: Path) -> None:
    """1001 talks to 1002; the API transfers the call to 1003: 1001 gets a BYE, 1002 is
    re-INVITEd towards 1003, which answers and later hangs up."""
    web = WebPbx.of(pbx)
    transferee = await callee(pbx, tmp_path, "1002", "udp", "uas_answer.xml",
                              hangup=CALLEE_TAKES_REINVITE + WAIT_FOR_BYE)
    target = await callee(pbx, tmp_path, "1003", "udp", "uas_answer.xml", hangup=CALLEE_HANGS_UP)
    calling = defer.Deferred.fromCoroutine(caller(pbx, tmp_path, "1001", "1002", "udp", CALLER_WAITS_FOR_BYE))
    call_id = await answered_call(pbx)
    bad = await web.call("POST", "/api/call/transfer", json_body={"call_id": call_id})
    assert bad.status == 400
    nowhere = await web.call("POST", "/api/call/transfer", json_body={"call_id": call_id, "destination": "sip:x@"})
    assert nowhere.status == 409
    moved = await web.call("POST", "/api/call/transfer", json_body={"call_id": call_id, "destination": "1003"})
    assert (moved.status, moved.json) == (200, {"success": True})
    result = await calling
    assert result.ok, result.explain()
    for phone in (transferee, target):
        done = await phone
        assert callee_ok(done), done.explain()
    [cdr] = await cdrs(pbx)
    assert (cdr.from_number, cdr.to_number, cdr.disposition) == ("1001", "1002", "answered")
    await drained(pbx)


@pytest_twisted.ensureDeferred
async def test_call_control_errors(tmp_path: Path) -> None:
    service = await start_pbx(pbx_config(tmp_path / "data", http={
        "tokens": [{"name": "reader", "token": "read-token-0123456789abcdef", "scopes": ["read"]}]}))
    web = WebPbx.of(service)
    try:
        assert (await web.call("GET", "/api/calls", token="read")).json == []
        assert (await web.call("POST", "/api/call/hold", token="read",
                               json_body={"call_id": "x"})).status == 403
        for path in ("/api/call/hold", "/api/call/resume", "/api/call/transfer"):
            assert (await web.call("POST", path, token="read", json_body={"call_id": 1})).status == 403
        assert (await web.call("GET", "/api/call/hold", token="read")).status == 405
    finally:
        await service.stopService()


@pytest_twisted.ensureDeferred
async def test_graceful_shutdown_with_a_call_up(pbx: PbxService, tmp_path: Path) -> None:
    """POST /ami/v1/shutdown with a call up: a new INVITE gets 503 while registrations go on;
    the call goes on until it ends (here: hung up through the AMI); then pbxd stops."""
    web = WebPbx.of(pbx)
    stops: list[str] = []
    pbx.http.operations.stop = lambda: stops.append("stop")
    callee_done = await callee(pbx, tmp_path, "1002", "udp", "uas_answer.xml", hangup=WAIT_FOR_BYE)
    calling = defer.Deferred.fromCoroutine(caller(pbx, tmp_path, "1001", "1002", "udp", CALLER_WAITS_FOR_BYE))
    call_id = await answered_call(pbx)

    draining = await web.call("POST", "/ami/v1/shutdown")
    assert (draining.status, draining.json["active_calls"]) == (202, 1)
    refused = await run_sipp(scenario("invite_rejected.xml", tmp_path, expect=503), "127.0.0.1",
                             port_of(pbx, "udp"), keys={"user": "1002", "domain": DOMAIN, "maxfwd": "70"})
    assert refused.ok, refused.explain()
    # Registrations continue: 1003 registers while pbxd drains.
    registration = await run_sipp(
        scenario("register.xml", tmp_path, expect=200, contact="<sip:[user]@[local_ip]:[local_port]>"),
        "127.0.0.1", port_of(pbx, "udp"), keys={"user": "1003", "domain": "127.0.0.1", "expires": "300"},
        extra=("-au", "1003", "-ap", PASSWORDS["1003"]))
    assert registration.ok, registration.explain()
    assert stops == []  # the call is still up

    assert (await web.call("POST", f"/ami/v1/hangup/{call_id}")).status == 200
    for phone in (await calling, await callee_done):
        assert phone.ok or callee_ok(phone), phone.explain()
    await eventually(lambda: stops == ["stop"])
