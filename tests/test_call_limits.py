"""Ring time and call duration set per static route (issue 4: "configurable per route and
per call"; per call, from the HTTP router: tests/test_call_router_e2e.py). The global
calls.max_ring_time and calls.max_duration stay at their defaults (60 s, none), so only
the route's short values can end these calls."""

from __future__ import annotations

from pathlib import Path

import pytest
import pytest_twisted

from call_support import (
    CALLER_WAITS_FOR_BYE,
    WAIT_FOR_BYE,
    callee,
    callee_ok,
    caller,
    cdrs,
    drained,
    final_and_ack,
    pbx_config,
    start_pbx,
)
from pbxd.service import PbxService
from sipp_runner import requires_sipp

pytestmark = [requires_sipp, pytest.mark.sipp]


def route(**limits: float) -> dict:
    # Ahead of the built-in "extensions" route (priority 0), which would take 1002 itself.
    return {"name": "limited", "priority": -1, "match": {"request_user": "1002"}, "destination": "1002", **limits}


@pytest_twisted.async_yield_fixture
async def make_pbx(tmp_path: Path):
    started: list[PbxService] = []

    async def make(**limits: float) -> PbxService:
        pbx = await start_pbx(pbx_config(tmp_path / "data", routes=[route(**limits)]))
        assert (pbx.config.calls.max_ring_time, pbx.config.calls.max_duration) == (60, 0)
        started.append(pbx)
        return pbx

    yield make
    for pbx in started:
        if pbx.running:
            await pbx.stopService()


@pytest_twisted.ensureDeferred
async def test_a_routes_ring_timeout_ends_the_ringing(make_pbx, tmp_path: Path) -> None:
    pbx = await make_pbx(ring_timeout=1)
    phone = await callee(pbx, tmp_path, "1002", "udp", "uas_ring.xml")
    result = await caller(pbx, tmp_path, "1001", "1002", "udp", final_and_ack(480, ringing=True), register=False)
    assert result.ok, result.explain()
    done = await phone
    assert callee_ok(done), done.explain()  # it got pbxd's CANCEL
    [cdr] = await cdrs(pbx)
    assert (cdr.disposition, cdr.sip_status, cdr.hangup_cause, cdr.hangup_side) == (
        "no_answer", 480, "no_answer", "system")
    assert 0.9 <= cdr.duration < 3
    await drained(pbx)


@pytest_twisted.ensureDeferred
async def test_a_routes_max_duration_hangs_up_both_sides(make_pbx, tmp_path: Path) -> None:
    pbx = await make_pbx(max_duration=1)
    phone = await callee(pbx, tmp_path, "1002", "udp", "uas_answer.xml", hangup=WAIT_FOR_BYE)
    result = await caller(pbx, tmp_path, "1001", "1002", "udp", CALLER_WAITS_FOR_BYE)
    assert result.ok, result.explain()  # it got pbxd's BYE
    assert callee_ok(await phone)  # so did the callee
    [cdr] = await cdrs(pbx)
    assert (cdr.disposition, cdr.hangup_cause, cdr.hangup_side) == ("answered", "max_duration", "system")
    assert 0.9 <= cdr.billsec < 3
    await drained(pbx)
