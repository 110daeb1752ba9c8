"""Static routes deciding real calls (issue 4's RustPBX-style routes): sipp phones call
through pbxd, whose routes match on the From and Request-URI users, rewrite the called
number, inject headers, or reject with their own status."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import pytest_twisted

from call_support import (
    CALLER_HANGS_UP,
    WAIT_FOR_BYE,
    callee,
    callee_ok,
    caller,
    cdrs,
    drained,
    final_and_ack,
    pbx_config,
    sip_messages,
    start_pbx,
)
from sipp_runner import requires_sipp

pytestmark = [requires_sipp, pytest.mark.sipp]

ROUTES = [
    # 1001 dials 8 + an extension: the 8 goes, the call is marked.
    {"name": "prefixed", "match": {"from_user": "1001", "request_user": r"8(\d{4})"},
     "rewrite": {"pattern": r"8(\d{4})", "replacement": r"\1"}, "destination": "{called}",
     "headers": {"X-Route": "prefixed"}},
    {"name": "premium", "match": {"request_user": r"900\d*"}, "action": "reject", "status": 403,
     "reason": "Premium Numbers Barred"},
]


@pytest_twisted.async_yield_fixture
async def pbx(tmp_path: Path):
    service = await start_pbx(pbx_config(tmp_path / "data", routes=ROUTES))
    yield service
    await service.stopService()


@pytest_twisted.ensureDeferred
async def test_a_route_rewrites_the_called_number_and_adds_headers(pbx, tmp_path: Path) -> None:
    phone = await callee(pbx, tmp_path, "1002", "udp", "uas_answer.xml", hangup=WAIT_FOR_BYE)
    result = await caller(pbx, tmp_path, "1001", "81002", "udp", CALLER_HANGS_UP, register=False)
    assert result.ok, result.explain()
    done = await phone
    assert callee_ok(done), done.explain()
    [invite] = sip_messages(done, "received", "INVITE ")
    assert re.match(r"INVITE sip:1002@", invite) and re.search(r"^X-Route: prefixed\s*$", invite, re.M)
    [cdr] = await cdrs(pbx)
    assert (cdr.from_number, cdr.to_number, cdr.disposition) == ("1001", "1002", "answered")
    await drained(pbx)


@pytest_twisted.ensureDeferred
async def test_a_route_matches_on_the_caller(pbx, tmp_path: Path) -> None:
    """1003 dialling 81002 matches no route: nobody routes it (404)."""
    result = await caller(pbx, tmp_path, "1003", "81002", "udp", final_and_ack(404), register=False)
    assert result.ok, result.explain()
    [cdr] = await cdrs(pbx)
    assert (cdr.from_number, cdr.sip_status, cdr.disposition) == ("1003", 404, "failed")
    await drained(pbx)


@pytest_twisted.ensureDeferred
async def test_a_reject_route_answers_its_status_and_reason(pbx, tmp_path: Path) -> None:
    result = await caller(pbx, tmp_path, "1001", "9001234", "udp", final_and_ack(403), register=False)
    assert result.ok, result.explain()
    assert re.search(r"^SIP/2.0 403 Premium Numbers Barred", result.messages, re.M)
    [cdr] = await cdrs(pbx)
    assert (cdr.to_number, cdr.sip_status, cdr.disposition, cdr.hangup_cause, cdr.hangup_side) == (
        "9001234", 403, "failed", "call_rejected", "system")
    await drained(pbx)
