"""/console commands on live sipp calls, checked by what the phones get:
an attended transfer joins the far parties of two calls (each re-INVITEd, the
transferors BYEd); a muted track's RTP reaches the other phone as G.711
silence, and the relay's Prometheus counters do not fall when the call ends."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import treq
from twisted.internet import defer

from call_support import (
    CALLEE_HANGS_UP,
    CALLEE_TAKES_REINVITE,
    CALLER_WAITS_FOR_BYE,
    WAIT_FOR_BYE,
    callee,
    callee_ok,
    caller,
    cdrs,
    drained,
    eventually,
)
from media_support import phones  # noqa: F401  (the fixture)
from sipp_runner import requires_sipp
from tests.management_support import READ_TOKEN, bearer, samples
from tests.test_console import call, console, relay_every_call  # noqa: F401  (the fixture)

pytestmark = [requires_sipp, pytest.mark.sipp]

PCMU_SILENCE = b"\xff" * 160


def answered(pbx: Any, caller_number: str) -> list[Any]:
    """the answered, ACKed call of that caller"""
    return [c for c in pbx.calls.manager.calls.values() if c.from_number == caller_number
            and c.state.value == "answered" and not c.inbound.awaiting_ack]


@pytest_twisted.ensureDeferred
async def test_attended_transfer_from_the_console(console, tmp_path: Path) -> None:  # noqa: F811
    """1001 talks to 1002 (call 1), 1004 to 1003 (call 2). The console transfers call 1,
    attended, to call 2: 1002 and 1003 are re-INVITEd and talk, 1001 and 1004 get pbxd's
    BYE; call 2 ends as transferred, call 1 goes on until 1003 hangs up."""
    pbx = console.service
    transferee = await callee(pbx, tmp_path, "1002", "udp", "uas_answer.xml",
                              hangup=CALLEE_TAKES_REINVITE + WAIT_FOR_BYE)
    target = await callee(pbx, tmp_path, "1003", "udp", "uas_answer.xml",
                          hangup=CALLEE_TAKES_REINVITE + CALLEE_HANGS_UP)
    first = defer.Deferred.fromCoroutine(caller(pbx, tmp_path, "1001", "1002", "udp", CALLER_WAITS_FOR_BYE))
    [call1] = await eventually(lambda: answered(pbx, "1001"))
    second = defer.Deferred.fromCoroutine(caller(pbx, tmp_path, "1004", "1003", "udp", CALLER_WAITS_FOR_BYE))
    [call2] = await eventually(lambda: answered(pbx, "1004"))
    commands = console.base + f"/console/calls/active/{call1.id}/commands"
    for payload, expected, words in [
        ({"action": "transfer", "target": "no-such-call", "attended": True}, 409, "no answered call"),
        ({"action": "transfer", "target": call1.id, "attended": True}, 409, "no answered call"),  # itself
        ({"action": "transfer", "target": call2.id, "attended": "yes"}, 400, "attended"),
    ]:
        status, body, _ = await call("POST", commands, payload)
        assert status == expected and words in body["error"], (payload, body)
    status, body, _ = await call("POST", commands, {"action": "transfer", "target": call2.id, "attended": True})
    assert status == 200 and body["success"] is True, body
    for phone in (await first, await second):  # the transferors: pbxd's BYE
        assert phone.ok, phone.explain()
    for phone in (await transferee, await target):  # one re-INVITE each, then 1003 hangs up
        assert callee_ok(phone), phone.explain()
    records = {record.call_id: record for record in await cdrs(pbx, 2)}
    assert records[call2.id].hangup_cause == "transferred"
    joined = records[call1.id]
    assert (joined.from_number, joined.to_number, joined.disposition, joined.hangup_side) == (
        "1001", "1002", "answered", "callee")
    # The ladders show one re-INVITE from pbxd to each far party (1002 in call 1, 1003 in call 2).
    for live in (call1, call2):
        sent = [m for m in pbx.sip.capture.ladder(live.id) or [] if m.direction == "out"]
        reinvites = [m for m in sent if m.first_line.startswith("INVITE ")
                     and ";tag=" in m.text.split("\r\nTo: ", 1)[1].split("\r\n")[0]]
        assert len(reinvites) == 1, live.id
    await drained(pbx)


@pytest_twisted.ensureDeferred
async def test_a_muted_track_is_heard_as_silence(console, tmp_path: Path, phones) -> None:  # noqa: F811
    """Two test phones stand in for the sipp phones' media: each sends RTP to its relay leg.
    With the callee's track muted from the console, what the callee says reaches the caller
    as µ-law silence (0xFF), same sequence numbers and timestamps; the caller is still heard."""
    pbx = console.service
    relay_every_call(pbx)
    callee_done = await callee(pbx, tmp_path, "1002", "udp", "uas_answer.xml", hangup=WAIT_FOR_BYE)
    caller_done = defer.Deferred.fromCoroutine(
        caller(pbx, tmp_path, "1001", "1002", "udp", CALLER_WAITS_FOR_BYE))
    [live] = await eventually(lambda: answered(pbx, "1001"))
    caller_leg, callee_leg = live.media.leg_for(live.a), live.media.leg_for(live.b)
    alice, bob = phones(), phones()  # the caller's and the callee's audio
    # Each phone's first packet latches its leg to it (symmetric RTP); alice's goes on to
    # the address of the callee's SDP (sipp's, which drops it) as bob's leg has not latched yet.
    alice.send_audio(caller_leg.port, 1, ssrc=0xA)
    await eventually(lambda: caller_leg.latched == alice.address)
    bob.send_audio(callee_leg.port, 1, ssrc=0xB)
    await alice.wait_for(1)
    alice.send_audio(caller_leg.port, 1, ssrc=0xA)
    await bob.wait_for(1)
    assert bob.packets()[0].payload == alice.packets()[0].payload == bytes(range(160))

    status, active, _ = await call("GET", console.base + f"/console/calls/active/{live.id}")
    callee_track = active["tracks"][1]["track_id"]
    commands = console.base + f"/console/calls/active/{live.id}/commands"
    assert (await call("POST", commands, {"action": "mute", "track_id": callee_track}))[0] == 200
    bob.send_audio(callee_leg.port, 5, ssrc=0xB)
    alice.send_audio(caller_leg.port, 5, ssrc=0xA)
    await alice.wait_for(6)
    await bob.wait_for(6)
    heard = alice.packets()[1:]
    assert [p.payload for p in heard] == [PCMU_SILENCE] * 5
    assert [(p.sequence, p.timestamp, p.payload_type) for p in heard] == [(n, n * 160, 0) for n in range(2, 7)]
    assert [p.payload for p in bob.packets()[1:]] == [bytes(range(160))] * 5  # the caller is not muted
    assert (await call("POST", commands, {"action": "unmute", "track_id": callee_track}))[0] == 200
    bob.send_audio(callee_leg.port, 1, ssrc=0xB)
    await alice.wait_for(7)
    assert alice.packets()[6].payload == bytes(range(160))

    async def relay_counters() -> dict[str, float]:
        response = await treq.get(console.base + "/metrics", headers=bearer(READ_TOKEN))
        found = samples((await treq.content(response)).decode())
        return {name + str(labels): value for (name, labels), value in found.items() if name.startswith("pbxd_relay_")}

    during = await relay_counters()
    assert during["pbxd_relay_packets_total(('direction', 'in'),)"] == 14
    assert during["pbxd_relay_packets_total(('direction', 'out'),)"] == 14
    assert (await call("POST", commands, {"action": "hangup"}))[0] == 200
    result = await caller_done
    assert result.ok, result.explain()
    other = await callee_done
    assert callee_ok(other), other.explain()
    await cdrs(pbx)
    after = await relay_counters()
    assert after == during  # the ended call's figures stay in the totals
    await drained(pbx)
