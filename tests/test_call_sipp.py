"""Calls end to end: sipp phones register as extensions and call each other through pbxd.

Each callee is a sipp process that REGISTERs (uas_register.xml) and answers pbxd's
INVITE with an out-of-call scenario (uas_*.xml); the caller registers and calls
(uac_call.xml). After each call: one CDR with the right outcome, and no call,
leg, dialog or transaction left.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import pytest_twisted
import re
import sqlite3

from twisted.internet import defer, reactor, task
from twisted.internet.protocol import DatagramProtocol

from call_support import (
    ANSWERED,
    STOPPED_BY_SCENARIO,
    CALLEE_HANGS_UP,
    CALLEE_TAKES_REINVITE,
    DOMAIN,
    CALLER_CANCELS,
    CALLER_HANGS_UP,
    CALLER_WAITS_FOR_BYE,
    WAIT_FOR_BYE,
    callee_answers,
    caller_bye,
    callee,
    callee_ok,
    caller,
    cdrs,
    drained,
    eventually,
    final_and_ack,
    in_dialog,
    NOTIFY_ANSWERED,
    sipfrags,
    pbx_config,
    phone_dir,
    port_of,
    refer,
    reinvite,
    reinvite_refused,
    sip_messages,
    start_pbx,
)
from pbxd.call.call import CallError
from pbxd.call.media import DirectMedia, NotAcceptable
from pbxd.service import PbxService
from pbxd.sip.message import Response, parse_message
from pbxd.sip.refer import Replaces, format_refer_to
from pbxd.sip.transaction import new_branch
from pbxd.sip.uri import SipURI
from sipp_runner import requires_sipp, run_sipp, scenario

pytestmark = [requires_sipp, pytest.mark.sipp]

TRANSPORTS = ["udp", "tcp"]


@pytest_twisted.async_yield_fixture
async def make_pbx(tmp_path: Path):
    started: list[PbxService] = []

    async def make(**sections) -> PbxService:  # type: ignore[no-untyped-def]
        service = await start_pbx(pbx_config(tmp_path / "data", **sections))
        started.append(service)
        return service

    yield make
    for service in started:
        if service.running:
            await service.stopService()


@pytest_twisted.async_yield_fixture
async def pbx(make_pbx):
    yield await make_pbx()


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("who", ["caller", "callee"])
@pytest_twisted.ensureDeferred
async def test_answered_call_hung_up_by_either_side(pbx: PbxService, tmp_path: Path, transport: str,
                                                   who: str) -> None:
    callee_done = await callee(pbx, tmp_path, "1002", transport, "uas_answer.xml",
                               hangup=WAIT_FOR_BYE if who == "caller" else CALLEE_HANGS_UP)
    result = await caller(pbx, tmp_path, "1001", "1002", transport,
                          CALLER_HANGS_UP if who == "caller" else CALLER_WAITS_FOR_BYE)
    assert result.ok, result.explain()
    other = await callee_done
    assert callee_ok(other), other.explain()
    [cdr] = await cdrs(pbx)
    assert (cdr.from_number, cdr.to_number, cdr.direction) == ("1001", "1002", "internal")
    assert cdr.disposition == "answered" and cdr.sip_status == 200
    assert cdr.hangup_cause == "normal_clearing" and cdr.hangup_side == who
    assert cdr.answer_time is not None and cdr.start_time <= cdr.answer_time <= cdr.end_time
    assert cdr.billsec > 0
    await drained(pbx)


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest_twisted.ensureDeferred
async def test_caller_cancels_while_ringing(pbx: PbxService, tmp_path: Path, transport: str) -> None:
    callee_done = await callee(pbx, tmp_path, "1002", transport, "uas_ring.xml")
    result = await caller(pbx, tmp_path, "1001", "1002", transport, CALLER_CANCELS)
    assert result.ok, result.explain()
    other = await callee_done
    assert callee_ok(other), other.explain()  # it saw the CANCEL
    [cdr] = await cdrs(pbx)
    assert cdr.disposition == "cancelled" and cdr.sip_status == 487
    assert (cdr.hangup_cause, cdr.hangup_side) == ("originator_cancel", "caller")
    assert cdr.answer_time is None and cdr.billsec == 0
    await drained(pbx)


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest_twisted.ensureDeferred
async def test_busy_callee(pbx: PbxService, tmp_path: Path, transport: str) -> None:
    callee_done = await callee(pbx, tmp_path, "1002", transport, "uas_busy.xml")
    result = await caller(pbx, tmp_path, "1001", "1002", transport, final_and_ack(486))
    assert result.ok, result.explain()
    assert callee_ok(await callee_done)
    [cdr] = await cdrs(pbx)
    assert (cdr.disposition, cdr.sip_status, cdr.hangup_cause) == ("busy", 486, "user_busy")
    await drained(pbx)


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest_twisted.ensureDeferred
async def test_ring_timeout_cancels_the_callee_and_answers_480(make_pbx, tmp_path: Path, transport: str) -> None:
    pbx = await make_pbx(calls={"max_ring_time": 1.0})
    callee_done = await callee(pbx, tmp_path, "1002", transport, "uas_ring.xml")
    result = await caller(pbx, tmp_path, "1001", "1002", transport, final_and_ack(480, ringing=True))
    assert result.ok, result.explain()
    other = await callee_done
    assert callee_ok(other), other.explain()  # the callee got pbxd's CANCEL
    [cdr] = await cdrs(pbx)
    assert (cdr.disposition, cdr.sip_status, cdr.hangup_cause, cdr.hangup_side) == (
        "no_answer", 480, "no_answer", "system")
    assert 0.9 <= cdr.duration < 5
    await drained(pbx)


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest_twisted.ensureDeferred
async def test_forked_call_answered_by_one_contact_cancels_the_other(pbx: PbxService, tmp_path: Path,
                                                                    transport: str) -> None:
    ringing = await callee(pbx, tmp_path, "1002", transport, "uas_ring.xml", name="ringing")
    answering = await callee(pbx, tmp_path, "1002", transport, "uas_answer.xml", name="answering",
                             hangup=WAIT_FOR_BYE)
    assert len(pbx.registrar.location.lookup_user("1002")) == 2
    result = await caller(pbx, tmp_path, "1001", "1002", transport, CALLER_HANGS_UP)
    assert result.ok, result.explain()
    for phone in (ringing, answering):
        done = await phone
        assert callee_ok(done), done.explain()
    [cdr] = await cdrs(pbx)
    assert cdr.disposition == "answered"
    await drained(pbx)


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest_twisted.ensureDeferred
async def test_hold_and_resume_pass_through(pbx: PbxService, tmp_path: Path, transport: str) -> None:
    """re-INVITEs cross: sendonly reaches the callee, its recvonly comes back; then sendrecv."""
    callee_done = await callee(pbx, tmp_path, "1002", transport, "uas_hold.xml")
    after = ANSWERED + reinvite(3, "sendonly", "recvonly") + reinvite(4, "sendrecv", "sendrecv") + caller_bye(5)
    result = await caller(pbx, tmp_path, "1001", "1002", transport, after)
    assert result.ok, result.explain()
    other = await callee_done
    assert callee_ok(other), other.explain()
    [cdr] = await cdrs(pbx)
    assert cdr.disposition == "answered" and cdr.hangup_side == "caller"
    await drained(pbx)


@pytest.mark.parametrize(("caller_on", "transferee_on", "target_on"), [
    ("udp", "udp", "udp"),
    ("tcp", "tcp", "tcp"),
    ("udp", "tcp", "udp"),  # the B2BUA bridges legs of different transports
], ids=["udp", "tcp", "udp-tcp-udp"])
@pytest_twisted.ensureDeferred
async def test_blind_transfer_by_refer(pbx: PbxService, tmp_path: Path, caller_on: str, transferee_on: str,
                                       target_on: str) -> None:
    """1001 calls 1002 and REFERs it to 1003: NOTIFYs 100, 180, 200 reach 1001, which hangs up;
    1002 is re-INVITEd towards 1003 and the call goes on until 1003 hangs up."""
    transferee = await callee(pbx, tmp_path, "1002", transferee_on, "uas_answer.xml",
                              hangup=CALLEE_TAKES_REINVITE + WAIT_FOR_BYE)
    target = await callee(pbx, tmp_path, "1003", target_on, "uas_answer.xml", hangup=CALLEE_HANGS_UP)
    after = (ANSWERED + refer(3, f"<sip:1003@{DOMAIN}>") + NOTIFY_ANSWERED * 3 + caller_bye(4))
    result = await caller(pbx, tmp_path, "1001", "1002", caller_on, after)
    assert result.ok, result.explain()
    assert sipfrags(result) == [100, 180, 200]
    for phone in (transferee, target):
        done = await phone
        assert callee_ok(done), done.explain()
    [cdr] = await cdrs(pbx)
    assert cdr.disposition == "answered" and (cdr.from_number, cdr.to_number) == ("1001", "1002")
    assert cdr.hangup_side == "callee"
    await drained(pbx)


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest_twisted.ensureDeferred
async def test_attended_transfer_with_replaces_joins_the_two_calls(pbx: PbxService, tmp_path: Path,
                                                                   transport: str) -> None:
    """1001 talks to 1003 (call 2), then REFERs 1002 (call 1) to 1003 with Replaces naming call 2:
    pbxd joins 1002 and 1003 (a re-INVITE each), hangs up 1001's leg of call 2, NOTIFYs 100 and 200."""
    transferee = await callee(pbx, tmp_path, "1002", transport, "uas_answer.xml",
                              hangup=CALLEE_TAKES_REINVITE + WAIT_FOR_BYE)
    target = await callee(pbx, tmp_path, "1003", transport, "uas_answer.xml",
                          hangup=CALLEE_TAKES_REINVITE + CALLEE_HANGS_UP)
    consultation = defer.Deferred.fromCoroutine(
        caller(pbx, tmp_path, "1001", "1003", transport, CALLER_WAITS_FOR_BYE, name="consultation"))
    manager = pbx.calls.manager
    [call2] = await eventually(lambda: [c for c in manager.calls.values() if c.state.value == "answered"])
    dialog = call2.inbound.dialog
    replaces = Replaces(dialog.call_id, to_tag=dialog.local_tag, from_tag=dialog.remote_tag)
    refer_to = format_refer_to(SipURI(DOMAIN, user="1003"), replaces)
    after = ANSWERED + refer(3, refer_to) + NOTIFY_ANSWERED * 2 + caller_bye(4)
    result = await caller(pbx, tmp_path, "1001", "1002", transport, after, register=False)
    assert result.ok, result.explain()
    assert sipfrags(result) == [100, 200]
    consulted = await consultation
    assert consulted.ok, consulted.explain()  # pbxd hung up the replaced dialog
    for phone in (transferee, target):
        done = await phone
        assert callee_ok(done), done.explain()
    first, second = await cdrs(pbx, 2)
    assert (first.to_number, first.hangup_cause) == ("1003", "transferred")
    assert (second.to_number, second.disposition, second.hangup_side) == ("1002", "answered", "callee")
    await drained(pbx)


@pytest_twisted.ensureDeferred
async def test_clean_shutdown_hangs_up_and_writes_the_cdr(make_pbx, tmp_path: Path) -> None:
    pbx = await make_pbx()
    callee_done = await callee(pbx, tmp_path, "1002", "udp", "uas_answer.xml", hangup=WAIT_FOR_BYE)
    calling = defer.Deferred.fromCoroutine(caller(pbx, tmp_path, "1001", "1002", "udp", CALLER_WAITS_FOR_BYE))
    manager = pbx.calls.manager
    await eventually(lambda: [c for c in manager.calls.values() if c.state.value == "answered"])
    await pbx.stopService()
    for phone in (await calling, await callee_done):
        assert phone.exit_code in (0, STOPPED_BY_SCENARIO), phone.explain()  # both got pbxd's BYE
    rows = sqlite3.connect(tmp_path / "data" / "pbxd.sqlite3").execute(
        "SELECT disposition, hangup_cause, hangup_side FROM cdrs").fetchall()
    assert rows == [("answered", "system_shutdown", "system")]


@pytest_twisted.ensureDeferred
async def test_a_dead_session_is_ended_by_its_session_timer(pbx: PbxService, tmp_path: Path) -> None:
    """The caller asks for a 90 s session it refreshes itself, then never does: when the
    interval runs out (RFC 4028 §10) pbxd BYEs both sides. The call layer's clock is a
    task.Clock here, stepped past the interval."""
    clock = task.Clock()
    clock.advance(1_000_000)
    pbx.calls.manager.clock = clock
    callee_done = await callee(pbx, tmp_path, "1002", "udp", "uas_answer.xml", hangup=WAIT_FOR_BYE)
    timed_invite = CALLER_WAITS_FOR_BYE
    calling = defer.Deferred.fromCoroutine(caller(
        pbx, tmp_path, "1001", "1002", "udp", timed_invite,
        headers="Supported: timer\r\n      Session-Expires: 90;refresher=uac"))
    manager = pbx.calls.manager
    # Answered and ACKed: the leg waits for the ACK on the stepped clock too, and
    # stepping it 57 s before the ACK came would end the call for a missing ACK.
    [call] = await eventually(lambda: [c for c in manager.calls.values()
                                       if c.state.value == "answered" and not c.inbound.awaiting_ack])
    clock.pump([1.0] * 57)  # 90 - min(32, 90/3) = 60 s: still alive at 57 s
    assert call.state.value == "answered"
    clock.pump([1.0] * 4)
    for phone in (await calling, await callee_done):
        assert phone.exit_code in (0, STOPPED_BY_SCENARIO), phone.explain()
    [cdr] = await cdrs(pbx)
    assert (cdr.disposition, cdr.hangup_cause, cdr.hangup_side) == ("answered", "session_timer_expired", "system")
    pbx.calls.manager.clock = reactor
    await drained(pbx)


@pytest_twisted.ensureDeferred
async def test_a_session_refresh_due_during_a_hold_goes_out_when_the_hold_is_answered(
        pbx: PbxService, tmp_path: Path) -> None:
    """RFC 4028 with pbxd as the refresher (refresher=uas towards the caller): the refresh
    falls due while pbxd's hold re-INVITE to the callee is unanswered, so it waits
    (§14.1, one INVITE at a time), and goes out once the callee has answered the hold,
    without the session clock moving again. The call layer's clock is a task.Clock."""
    clock = task.Clock()
    clock.advance(1_000_000)
    pbx.calls.manager.clock = clock
    slow_hold = CALLEE_TAKES_REINVITE.replace('<recv request="INVITE"/>',
                                              '<recv request="INVITE"/>\n  <pause milliseconds="1000"/>')
    callee_done = await callee(pbx, tmp_path, "1002", "udp", "uas_answer.xml", hangup=slow_hold + WAIT_FOR_BYE)
    calling = defer.Deferred.fromCoroutine(caller(
        pbx, tmp_path, "1001", "1002", "udp", ANSWERED + CALLEE_TAKES_REINVITE + caller_bye(3),
        headers="Supported: timer\r\n      Session-Expires: 90;refresher=uas"))
    manager = pbx.calls.manager
    [call] = await eventually(lambda: [c for c in manager.calls.values()
                                       if c.state.value == "answered" and not c.inbound.awaiting_ack])
    call.hold()
    assert call.b.sending_invite
    clock.advance(46)  # the refresh was due at 45 s, half the interval
    assert not call.inbound.sending_invite  # it waits for the hold
    result = await calling  # took the refresh, then hung up
    assert result.ok, result.explain()
    assert callee_ok(await callee_done)
    refresh = sip_messages(result, "received", "INVITE ")
    assert len(refresh) == 1 and "Session-Expires: 90;refresher=uac" in refresh[0], refresh
    [cdr] = await cdrs(pbx)
    assert (cdr.hangup_cause, cdr.hangup_side) == ("normal_clearing", "caller")
    pbx.calls.manager.clock = reactor
    await drained(pbx)


@pytest_twisted.ensureDeferred
async def test_invite_with_replaces_takes_over_a_leg(pbx: PbxService, tmp_path: Path) -> None:
    """1001 talks to 1002; 1003 sends an INVITE with Replaces naming pbxd's dialog with 1002:
    1001 is re-INVITEd with 1003's offer, 1003 is answered, 1002 gets BYE; 1003 hangs up later."""
    replaced = await callee(pbx, tmp_path, "1002", "udp", "uas_answer.xml", hangup=WAIT_FOR_BYE)
    first = defer.Deferred.fromCoroutine(caller(
        pbx, tmp_path, "1001", "1002", "udp", ANSWERED + CALLEE_TAKES_REINVITE + WAIT_FOR_BYE))
    manager = pbx.calls.manager
    [call] = await eventually(lambda: [c for c in manager.calls.values() if c.state.value == "answered"])
    dialog = call.b.dialog
    header = f"Replaces: {dialog.call_id};to-tag={dialog.local_tag};from-tag={dialog.remote_tag}"
    result = await caller(pbx, tmp_path, "1003", "1002", "udp", ANSWERED + caller_bye(3), name="replacer",
                          register=False, headers=header)
    assert result.ok, result.explain()
    done = await first
    assert done.ok, done.explain()
    gone = await replaced
    assert callee_ok(gone), gone.explain()
    [cdr] = await cdrs(pbx)
    assert cdr.disposition == "answered" and cdr.to_number == "1002"
    await drained(pbx)


@pytest_twisted.ensureDeferred
async def test_a_vanished_callee_is_torn_down(pbx: PbxService, tmp_path: Path) -> None:
    """The callee's phone is gone after answering; the caller's re-INVITE finds nobody there:
    the caller gets 408 and then pbxd's BYE, and the call is recorded as lost."""
    gone = await callee(pbx, tmp_path, "1002", "udp", "uas_answer.xml", hangup="")
    result = await caller(pbx, tmp_path, "1001", "1002", "udp",
                          ANSWERED + "<pause milliseconds=\"300\"/>" + reinvite_refused(3, 408) + WAIT_FOR_BYE)
    assert result.ok, result.explain()
    assert callee_ok(await gone)
    [cdr] = await cdrs(pbx)
    assert (cdr.disposition, cdr.hangup_cause, cdr.hangup_side) == ("answered", "peer_unreachable", "callee")
    await drained(pbx)


@pytest_twisted.ensureDeferred
async def test_a_second_reinvite_before_the_first_is_answered_gets_500(pbx: PbxService, tmp_path: Path) -> None:
    """§14.2: the caller's second re-INVITE comes before its first, which the callee is slow
    to answer, has its answer: 500 with a Retry-After of 0-10 s (491 is for glare)."""
    slow = CALLEE_TAKES_REINVITE.replace('<recv request="INVITE"/>',
                                         '<recv request="INVITE"/>\n  <pause milliseconds="500"/>')
    callee_done = await callee(pbx, tmp_path, "1002", "udp", "uas_answer.xml", hangup=slow + WAIT_FOR_BYE)
    glare = reinvite_refused(3, 0, wait=False) + reinvite_refused(4, 500) + """
  <recv response="100" optional="true"/>
  <recv response="200"/>
  <send>
    <![CDATA[
      ACK [next_url] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch];rport
      From: <sip:[user]@[domain]>;tag=[pid]SIPpTag09[call_number]
      [last_To:]
      Call-ID: [call_id]
      CSeq: 3 ACK
      Max-Forwards: 70
      Content-Length: 0

    ]]>
  </send>
"""
    result = await caller(pbx, tmp_path, "1001", "1002", "udp", ANSWERED + glare + caller_bye(5))
    assert result.ok, result.explain()
    [refusal] = [m for m in result.messages.split("-" * 47) if "SIP/2.0 500 " in m]
    assert 0 <= int(re.search(r"^Retry-After: (\d+)", refusal, re.M).group(1)) <= 10, refusal  # type: ignore[union-attr]
    done = await callee_done
    assert callee_ok(done), done.explain()
    [cdr] = await cdrs(pbx)
    assert cdr.disposition == "answered" and cdr.hangup_cause == "normal_clearing"
    await drained(pbx)


# The callee, holding pbxd's re-INVITE unanswered, sends its own: glare on that
# dialog (§14.2), so 491, which it ACKs; then it answers pbxd's re-INVITE.
CALLEE_GLARES = """
  <recv request="INVITE">
    <action>
      <ereg regexp=".*" search_in="hdr" header="Via:" check_it="true" assign_to="held_via"/>
      <ereg regexp=".*" search_in="hdr" header="CSeq:" check_it="true" assign_to="held_cseq"/>
    </action>
  </recv>
  <send>
    <![CDATA[
      INVITE [$remote_contact] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch];rport
      From: [$local_uri];tag=[pid]SIPpTag01[call_number]
      To: [$remote_uri];[$remote_tag]
      Call-ID: [call_id]
      CSeq: 1 INVITE
      Contact: <sip:[user]@[local_ip]:[local_port];transport=[transport]>
      Max-Forwards: 70
      Content-Type: application/sdp
      Content-Length: [len]

      v=0
      o=callee 1 2 IN IP[local_ip_type] [local_ip]
      s=-
      c=IN IP[media_ip_type] [media_ip]
      t=0 0
      m=audio [media_port] RTP/AVP 0
      a=rtpmap:0 PCMU/8000
      a=sendonly

    ]]>
  </send>
  <recv response="491"/>
  <send>
    <![CDATA[
      ACK [$remote_contact] SIP/2.0
      [last_Via:]
      From: [$local_uri];tag=[pid]SIPpTag01[call_number]
      To: [$remote_uri];[$remote_tag]
      Call-ID: [call_id]
      CSeq: 1 ACK
      Max-Forwards: 70
      Content-Length: 0

    ]]>
  </send>
  <send>
    <![CDATA[
      SIP/2.0 200 OK
      Via: [$held_via]
      From: [$remote_uri];[$remote_tag]
      To: [$local_uri];tag=[pid]SIPpTag01[call_number]
      Call-ID: [call_id]
      CSeq: [$held_cseq]
      Contact: <sip:[user]@[local_ip]:[local_port];transport=[transport]>
      Content-Type: application/sdp
      Content-Length: [len]

      v=0
      o=callee 1 3 IN IP[local_ip_type] [local_ip]
      s=-
      c=IN IP[media_ip_type] [media_ip]
      t=0 0
      m=audio [media_port] RTP/AVP 0
      a=rtpmap:0 PCMU/8000

    ]]>
  </send>
  <recv request="ACK"/>
"""


@pytest_twisted.ensureDeferred
async def test_glare_on_a_dialog_gets_491(pbx: PbxService, tmp_path: Path) -> None:
    """The caller's re-INVITE is forwarded to the callee, who re-INVITEs pbxd before answering
    it: that dialog has pbxd's INVITE under way, so the callee's gets 491 (§14.2); the first
    re-INVITE then completes on both sides and the call goes on to a normal BYE."""
    callee_done = await callee(pbx, tmp_path, "1002", "udp", "uas_answer.xml", hangup=CALLEE_GLARES + WAIT_FOR_BYE)
    result = await caller(pbx, tmp_path, "1001", "1002", "udp",
                          ANSWERED + reinvite(3, "sendrecv", "rtpmap:0 PCMU/8000") + caller_bye(4))
    assert result.ok, result.explain()
    done = await callee_done
    assert callee_ok(done), done.explain()
    [cdr] = await cdrs(pbx)
    assert cdr.disposition == "answered" and cdr.hangup_cause == "normal_clearing"
    await drained(pbx)


UPDATE_OFFER = """      v=0
      o=caller 1 9 IN IP[local_ip_type] [local_ip]
      s=-
      c=IN IP[media_ip_type] [media_ip]
      t=0 0
      m=audio [media_port] RTP/AVP 0
      a=rtpmap:0 PCMU/8000
      a=inactive
"""

UPDATE_ANSWER = UPDATE_OFFER.replace("caller", "callee").replace("inactive", "inactive")


@pytest_twisted.ensureDeferred
async def test_info_and_update_cross_the_call(pbx: PbxService, tmp_path: Path) -> None:
    middle = (callee_answers("INFO", "Signal=5") + callee_answers("UPDATE", "a=inactive", UPDATE_ANSWER,
                                                                 "application/sdp"))
    callee_done = await callee(pbx, tmp_path, "1002", "udp", "uas_answer.xml", hangup=middle + WAIT_FOR_BYE)
    after = (ANSWERED + in_dialog(3, "INFO", "application/dtmf-relay", "Signal=5\nDuration=160")
             + in_dialog(4, "UPDATE", "application/sdp", UPDATE_OFFER) + caller_bye(5))
    result = await caller(pbx, tmp_path, "1001", "1002", "udp", after)
    assert result.ok, result.explain()
    assert "a=inactive" in result.messages.rsplit("CSeq: 4 UPDATE", 1)[-1]  # the answer came back
    done = await callee_done
    assert callee_ok(done), done.explain()
    await cdrs(pbx)
    await drained(pbx)


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ("Session-Expires: soon", 400),  # malformed (RFC 4028 §4)
        ("Supported: timer\r\n      Session-Expires: 30", 422),  # below Min-SE (§6)
        ("Replaces: nowhere;to-tag=a;from-tag=b", 481),  # RFC 3891 §3: no such dialog
        ("Replaces: broken", 400),  # no tags
    ],
    ids=["bad-session-expires", "session-too-short", "replaces-nothing", "replaces-malformed"],
)
@pytest_twisted.ensureDeferred
async def test_bad_invites_are_refused_after_authentication(pbx: PbxService, tmp_path: Path, headers: str,
                                                            status: int) -> None:
    result = await caller(pbx, tmp_path, "1001", "1002", "udp", final_and_ack(status), register=False,
                          headers=headers)
    assert result.ok, result.explain()
    if status == 422:
        assert re.search(r"^Min-SE: 90", result.messages, re.M)
    await drained(pbx)


@pytest.mark.parametrize("method", ["BYE", "INFO", "UPDATE", "REFER", "NOTIFY"])
@pytest_twisted.ensureDeferred
async def test_requests_outside_any_dialog_get_481(pbx: PbxService, tmp_path: Path, method: str) -> None:
    result = await run_sipp(
        scenario("request_rejected.xml", tmp_path, expect=481, method=method), "127.0.0.1",
        port_of(pbx, "udp"), keys={"user": "1002", "domain": DOMAIN, "cseq_method": method,
                                   "extra": "Subject: x"})
    assert result.ok, result.explain()


class RawPhone(DatagramProtocol):
    """Sends hand-written requests over UDP and hands back the next response."""

    def __init__(self) -> None:
        self.waiting: defer.Deferred[Response] | None = None

    def datagramReceived(self, data: bytes, addr) -> None:  # type: ignore[no-untyped-def]
        message = parse_message(data)
        if isinstance(message, Response) and message.status >= 200 and self.waiting is not None:
            waiting, self.waiting = self.waiting, None
            waiting.callback(message)

    def ask(self, text: str, port: int) -> defer.Deferred[Response]:
        self.waiting = defer.Deferred()
        self.transport.write(text.replace("\n", "\r\n").encode(), ("127.0.0.1", port))
        return self.waiting


@pytest_twisted.ensureDeferred
async def test_in_dialog_requests_for_unknown_or_broken_dialogs(pbx: PbxService, tmp_path: Path) -> None:
    """A tagged request for no dialog of ours gets 481 (§12.2.2); in a live call, a REFER
    without Refer-To gets 400 and the call goes on."""
    phone = RawPhone()
    listening = reactor.listenUDP(0, phone, interface="127.0.0.1")
    try:
        port = port_of(pbx, "udp")
        here = listening.getHost().port

        def request(method: str, call_id: str, from_tag: str, to_tag: str, cseq: int, extra: str = "") -> str:
            return (f"{method} sip:pbxd@127.0.0.1:{port} SIP/2.0\nVia: SIP/2.0/UDP 127.0.0.1:{here};"
                    f"branch={new_branch()}\nFrom: <sip:1001@{DOMAIN}>;tag={from_tag}\n"
                    f"To: <sip:1002@{DOMAIN}>;tag={to_tag}\nCall-ID: {call_id}\nCSeq: {cseq} {method}\n"
                    f"Max-Forwards: 70\nContact: <sip:1001@127.0.0.1:{here}>\n{extra}Content-Length: 0\n\n")

        answer = await phone.ask(request("BYE", "nosuchcall", "a", "b", 1), port)
        assert answer.status == 481
        callee_done = await callee(pbx, tmp_path, "1002", "udp", "uas_answer.xml", hangup=WAIT_FOR_BYE)
        calling = defer.Deferred.fromCoroutine(
            caller(pbx, tmp_path, "1001", "1002", "udp", CALLER_WAITS_FOR_BYE, register=False))
        manager = pbx.calls.manager
        [call] = await eventually(lambda: [c for c in manager.calls.values() if c.state.value == "answered"])
        dialog = call.inbound.dialog
        # A REFER as if from the caller, inside its dialog, without Refer-To.
        answer = await phone.ask(request("REFER", dialog.call_id, dialog.remote_tag, dialog.local_tag,
                                         100), port)
        assert answer.status == 400
        assert call.state.value == "answered"
        call.hangup()
        for phone_result in (await calling, await callee_done):
            assert phone_result.exit_code in (0, STOPPED_BY_SCENARIO), phone_result.explain()
        [cdr] = await cdrs(pbx)
        assert (cdr.hangup_cause, cdr.hangup_side) == ("normal_clearing", "system")
        await drained(pbx)
    finally:
        await listening.stopListening()


@pytest_twisted.ensureDeferred
async def test_hold_unhold_hangup_and_transfer_from_code(pbx: PbxService, tmp_path: Path) -> None:
    """What the REST API will call: hold and unhold re-INVITE the callee (sendonly, then
    sendrecv), transfer() moves the caller to 1003 and hangs up 1002; hangup() ends it."""
    held = await callee(pbx, tmp_path, "1002", "udp", "uas_hold.xml")
    target = await callee(pbx, tmp_path, "1003", "udp", "uas_answer.xml", hangup=WAIT_FOR_BYE)
    calling = defer.Deferred.fromCoroutine(caller(
        pbx, tmp_path, "1001", "1002", "udp", ANSWERED + CALLEE_TAKES_REINVITE + WAIT_FOR_BYE))
    manager = pbx.calls.manager
    [call] = await eventually(lambda: [c for c in manager.calls.values() if c.state.value == "answered"])
    callee_leg = call.b
    call.hold()
    await eventually(lambda: b"a=recvonly" in (callee_leg.remote_sdp or b"") and not callee_leg.sending_invite)
    call.unhold()
    await eventually(lambda: b"a=sendrecv" in (callee_leg.remote_sdp or b"") and not callee_leg.sending_invite)
    with pytest.raises(CallError):
        call.transfer("9999")  # nobody there
    call.transfer("1003", leg=callee_leg)  # 1002 leaves, 1001 talks to 1003
    await eventually(lambda: call.b is not callee_leg and call.b.is_confirmed and not call.a.sending_invite)
    call.hangup()
    for phone in (await calling, await held, await target):
        assert phone.exit_code in (0, STOPPED_BY_SCENARIO), phone.explain()
    [cdr] = await cdrs(pbx)
    assert (cdr.disposition, cdr.hangup_cause, cdr.hangup_side) == ("answered", "normal_clearing", "system")
    await drained(pbx)


@pytest_twisted.ensureDeferred
async def test_a_hold_asked_before_the_callers_ack_goes_out_when_the_ack_comes(pbx: PbxService,
                                                                               tmp_path: Path) -> None:
    """§14.1: while the caller's 2xx waits for its ACK, pbxd's hold re-INVITE waits too,
    and goes out as soon as the ACK comes, not after a glare back-off of seconds: nothing
    refused it. The caller hangs up 1.5 s after its ACK; the callee has been held by then."""
    callee_done = await callee(pbx, tmp_path, "1002", "udp", "uas_answer.xml",
                               hangup=CALLEE_TAKES_REINVITE + WAIT_FOR_BYE)
    manager = pbx.calls.manager
    awaiting_ack = []

    def hold_when_answered(event) -> None:  # type: ignore[no-untyped-def]
        if event.type == "answered":
            call = manager.calls[event.call_id]
            awaiting_ack.append(call.inbound.awaiting_ack)
            call.hold()

    subscription = manager.events.subscribe(hold_when_answered, ["call"])
    try:
        result = await caller(pbx, tmp_path, "1001", "1002", "udp",
                              ANSWERED + '<pause milliseconds="1500"/>' + caller_bye(3))
    finally:
        subscription.cancel()
    assert awaiting_ack == [True]  # the hold was asked for inside the window
    assert result.ok, result.explain()
    done = await callee_done
    assert callee_ok(done), done.explain()
    held = done.messages.split("CSeq: 2 INVITE", 1)
    assert len(held) == 2 and "a=sendonly" in held[1].split("-" * 20)[0], done.messages[-3000:]
    [cdr] = await cdrs(pbx)
    assert (cdr.hangup_cause, cdr.hangup_side) == ("normal_clearing", "caller")
    await drained(pbx)


@pytest_twisted.ensureDeferred
async def test_max_duration_hangs_up_both_sides(make_pbx, tmp_path: Path) -> None:
    pbx = await make_pbx(calls={"max_duration": 1.0})
    callee_done = await callee(pbx, tmp_path, "1002", "udp", "uas_answer.xml", hangup=WAIT_FOR_BYE)
    result = await caller(pbx, tmp_path, "1001", "1002", "udp", CALLER_WAITS_FOR_BYE)
    assert result.ok, result.explain()
    assert callee_ok(await callee_done)
    [cdr] = await cdrs(pbx)
    assert (cdr.hangup_cause, cdr.hangup_side) == ("max_duration", "system") and 0.9 <= cdr.billsec < 3
    await drained(pbx)


LATE_OFFER_ANSWERED = """
  <recv response="100" optional="true"/>
  <recv response="180" optional="true"/>
  <recv response="200" rrs="true">
    <action>
      <ereg regexp="m=audio [1-9][0-9]* RTP/AVP" search_in="body" check_it="true" assign_to="offer"/>
      <log message="offer [$offer]"/>
    </action>
  </recv>
  <send>
    <![CDATA[
      ACK [next_url] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch];rport
      From: <sip:[user]@[domain]>;tag=[pid]SIPpTag09[call_number]
      [last_To:]
      Call-ID: [call_id]
      CSeq: 2 ACK
      Max-Forwards: 70
      Content-Type: application/sdp
      Content-Length: [len]

      v=0
      o=caller 1 1 IN IP[local_ip_type] [local_ip]
      s=-
      c=IN IP[media_ip_type] [media_ip]
      t=0 0
      m=audio [media_port] RTP/AVP 0
      a=rtpmap:0 PCMU/8000

    ]]>
  </send>
"""


@pytest_twisted.ensureDeferred
async def test_late_offer_the_answer_rides_in_the_ack(pbx: PbxService, tmp_path: Path) -> None:
    """An INVITE without SDP: the callee's 2xx carries the offer to the caller, and the
    caller's ACK carries the answer to the callee (pbxd holds the callee's ACK until then)."""
    callee_done = await callee(pbx, tmp_path, "1002", "udp", "uas_late_offer.xml")
    path = scenario("uac_call.xml", phone_dir(tmp_path, "late"), after=LATE_OFFER_ANSWERED + caller_bye(3),
                    headers="Subject: late offer")
    text = path.read_text()
    offer = text[text.index("      Content-Type: application/sdp"):text.index("a=rtpmap:0 PCMU/8000") + 21]
    path.write_text(text.replace(offer, "      Content-Length: 0"))
    port = port_of(pbx, "udp")
    result = await run_sipp(path, "127.0.0.1", port, keys={"user": "1001", "domain": DOMAIN, "callee": "1002"},
                            extra=("-au", "1001", "-ap", "secret-1001", "-auth_uri", f"1002@{DOMAIN}:{port}"))
    assert result.ok, result.explain()
    done = await callee_done
    assert callee_ok(done), done.explain()
    [cdr] = await cdrs(pbx)
    assert cdr.disposition == "answered"
    await drained(pbx)


@pytest_twisted.ensureDeferred
async def test_an_offer_the_media_session_refuses_gets_488(pbx: PbxService, tmp_path: Path) -> None:
    """The media seam: a session that cannot forward the caller's offer (no codec it can relay,
    say) makes the call fail with 488 without ringing anyone."""

    class Refusing(DirectMedia):
        def offer_to(self, leg, sdp):  # type: ignore[no-untyped-def]
            raise NotAcceptable("no common codec")

    sessions: list[Refusing] = []
    pbx.calls.manager.media_factory = lambda request: sessions.append(Refusing()) or sessions[-1]
    callee_done = await callee(pbx, tmp_path, "1002", "udp", "uas_busy.xml", hold_ms=2000)
    result = await caller(pbx, tmp_path, "1001", "1002", "udp", final_and_ack(488), register=False)
    assert result.ok, result.explain()
    assert (await callee_done).exit_code == 0  # never called: its pause ran out
    [session] = sessions
    assert session.closed
    [cdr] = await cdrs(pbx)
    assert (cdr.disposition, cdr.sip_status) == ("failed", 488)
    await drained(pbx)
