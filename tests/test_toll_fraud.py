"""The toll-fraud guards of an extension end to end: pbxd on loopback, sipp phones, sipp as the carrier.

``dial_patterns``: a number outside them is refused 403 and the carrier never
sees it; the patterns judge the number the carrier would get (after the
route's rewrite and the trunk's normalisation), not what the phone dialled.
``max_calls``: with a limit of 1 a second call while the first is up is
refused 403, and the slot comes back when a call ends, however it ends
(hung up, CANCELled, refused by the callee). Each refusal is counted for
/metrics.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest_twisted
from prometheus_client import generate_latest
from twisted.internet import defer

from call_support import (
    ANSWERED, CALLER_CANCELS, CALLER_HANGS_UP, PASSWORDS, WAIT_FOR_BYE, callee, callee_ok, caller, cdrs, drained,
    eventually, final_and_ack, pbx_config, start_pbx,
)
from management_support import samples
from pbxd.call.call import CallState
from pbxd.metrics import build_registry
from pbxd.service import PbxService
from sipp_runner import requires_sipp
from test_trunk_calls import E164, EXTERNAL, OUTBOUND_ROUTE, carrier_uas, received, trunk_config
from test_trunk_sipp import free_udp_port

pytestmark = requires_sipp

PREMIUM = "0900123456"  # dialled as 9 + this; the trunk makes it +49900123456


def extensions(**guards: dict[str, Any]) -> list[dict[str, Any]]:
    """Every test extension, with the guards given per number."""
    return [{"number": n, "password": p, **guards.get(n, {})} for n, p in PASSWORDS.items()]


def refusals(pbx: PbxService) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The toll-fraud counters as /metrics shows them."""
    registry, collector = build_registry(pbx, pbx.events)
    try:
        scraped = samples(generate_latest(registry).decode())
    finally:
        collector.close()
    return {key: value for key, value in scraped.items() if key[0] == "pbxd_calls_refused_toll_fraud_total"}


def refused(reason: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    return ("pbxd_calls_refused_toll_fraud_total", (("reason", reason),))


@pytest_twisted.ensureDeferred
async def test_a_number_outside_the_dial_patterns_is_403_and_never_reaches_the_carrier(tmp_path: Path) -> None:
    port = free_udp_port()
    carrier = await carrier_uas(tmp_path, port)
    # Berlin numbers only, written as the carrier gets them (E.164): the phone
    # dials 9 0301234567, the route drops the 9, the trunk makes it +49301234567.
    guarded = extensions(**{"1001": {"dial_patterns": [r"\+4930\d+"]}})
    pbx = await start_pbx(pbx_config(tmp_path / "data", trunks=[trunk_config(port)], routes=[OUTBOUND_ROUTE],
                                     extensions=guarded))
    try:
        premium = await caller(pbx, tmp_path, "1001", "9" + PREMIUM, "udp", final_and_ack(403))
        assert premium.ok, premium.explain()
        assert "SIP/2.0 403 Number Not Allowed" in premium.messages
        assert pbx.trunks.registry.trunk("carrier").limits.active == 0  # type: ignore[union-attr]

        allowed = await caller(pbx, tmp_path, "1001", "9" + EXTERNAL, "udp", CALLER_HANGS_UP, name="allowed",
                               register=False)
        assert allowed.ok, allowed.explain()
        carried = await carrier.done
        assert carried.ok, carried.explain()
        assert len(received(carried, f"INVITE sip:{E164}@")) == 2  # the INVITE and its retry with credentials
        assert not received(carried, "INVITE sip:+49900")
        assert "+49900" not in carried.messages
        # The refused attempt leaves a record too (an authenticated extension tried it).
        refused_cdr, cdr = await cdrs(pbx, 2)
        assert (refused_cdr.sip_status, refused_cdr.disposition, refused_cdr.answer_time) == (403, "failed", None)
        assert (cdr.to_number, cdr.trunk) == (EXTERNAL, "carrier")
        counted = refusals(pbx)
        assert (counted[refused("dial_pattern")], counted[refused("call_limit")]) == (1, 0)
        await drained(pbx)
    finally:
        await carrier.stop()
        await pbx.stopService()


@pytest_twisted.ensureDeferred
async def test_without_dial_patterns_any_number_goes_out(tmp_path: Path) -> None:
    port = free_udp_port()
    carrier = await carrier_uas(tmp_path, port)
    pbx = await start_pbx(pbx_config(tmp_path / "data", trunks=[trunk_config(port)], routes=[OUTBOUND_ROUTE],
                                     extensions=extensions()))
    try:
        result = await caller(pbx, tmp_path, "1001", "9" + EXTERNAL, "udp", CALLER_HANGS_UP)
        assert result.ok, result.explain()
        carried = await carrier.done
        assert carried.ok, carried.explain()
        assert refusals(pbx)[refused("dial_pattern")] == 0
        await drained(pbx)
    finally:
        await carrier.stop()
        await pbx.stopService()


CALLER_WAITS_FOR_BYE = ANSWERED + WAIT_FOR_BYE


@pytest_twisted.ensureDeferred
async def test_max_calls_refuses_a_second_call_while_the_first_is_up_and_never_leaks(tmp_path: Path) -> None:
    pbx = await start_pbx(pbx_config(tmp_path / "data", extensions=extensions(**{"1001": {"max_calls": 1}})))
    manager = pbx.calls.manager
    try:
        answering = await callee(pbx, tmp_path, "1002", "udp", "uas_answer.xml", hangup=WAIT_FOR_BYE)
        first = defer.Deferred.fromCoroutine(caller(pbx, tmp_path, "1001", "1002", "udp", CALLER_WAITS_FOR_BYE))

        def answered() -> bool:
            """the first call is up"""
            return any(call.state is CallState.ANSWERED for call in manager.calls.values())

        await eventually(answered)
        assert manager.placing == {"1001": 1}
        second = await caller(pbx, tmp_path, "1001", "1003", "udp", final_and_ack(403), name="second",
                              register=False)
        assert second.ok, second.explain()
        assert "SIP/2.0 403 Call Limit Reached" in second.messages
        assert manager.placing == {"1001": 1}  # the refused call held no slot

        [call] = manager.calls.values()
        call.hangup()  # the first call ends: 1001 may call again at once
        hung_up = await first
        assert hung_up.ok, hung_up.explain()
        assert callee_ok(await answering)
        assert manager.placing == {}

        # Ended by a CANCEL, then by the callee's refusal: each gives the slot back.
        ringing = await callee(pbx, tmp_path, "1003", "udp", "uas_ring.xml")
        cancelled = await caller(pbx, tmp_path, "1001", "1003", "udp", CALLER_CANCELS, name="third", register=False)
        assert cancelled.ok, cancelled.explain()
        assert callee_ok(await ringing)
        assert manager.placing == {}
        busy = await callee(pbx, tmp_path, "1004", "udp", "uas_busy.xml")
        refused_by_callee = await caller(pbx, tmp_path, "1001", "1004", "udp", final_and_ack(486), name="fourth",
                                         register=False)
        assert refused_by_callee.ok, refused_by_callee.explain()
        assert callee_ok(await busy)
        assert manager.placing == {}

        # The refused second call is recorded too (CDRs come in order of their start).
        assert [c.sip_status for c in await cdrs(pbx, 4)] == [200, 403, 487, 486]
        counted = refusals(pbx)
        assert (counted[refused("call_limit")], counted[refused("dial_pattern")]) == (1, 0)
        await drained(pbx)
    finally:
        await pbx.stopService()
