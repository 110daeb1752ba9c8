"""Calls through pbxd between PJSIP phones (tests/pjsip_phone.py): 1001 dials 1002.

pbxd is a B2BUA with direct media: the SIP goes through pbxd, the RTP flows
between the two PJSIP endpoints, and PJSIP's stream statistics show it arrives.
Answered call with hang-up from either side, CANCEL and busy, hold and resume by
re-INVITE, blind transfer by REFER, attended transfer by REFER with Replaces, a
call with SHA-256 digest, and the CDR pbxd writes for each call; after each call,
pbxd holds no call, leg, dialog or transaction.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor

pytest.importorskip("pjsua2")

from call_support import DOMAIN, PASSWORDS, cdrs, drained, pbx_config, port_of, start_pbx  # noqa: E402
from pbxd.service import PbxService  # noqa: E402
from tests.pjsip_phone import Phone, PhoneCall, PjsipStack, pjsip_stack  # noqa: E402


@pytest.fixture(scope="module")
def stack() -> Iterator[PjsipStack]:
    with pjsip_stack(reactor) as stack:
        yield stack


@pytest_twisted.async_yield_fixture
async def pbx(tmp_path: Path):
    service = await start_pbx(pbx_config(tmp_path / "data"))
    yield service
    if service.running:
        await service.stopService()


@pytest_twisted.async_yield_fixture
async def phones(stack: PjsipStack, pbx: PbxService):
    """``await phones(transport, "1001", "1002", ...)``: registered phones; at the end
    of the test their calls are hung up and their accounts deleted (before pbxd stops)."""

    async def make(transport: str, *numbers: str, **options: Any) -> list[Phone]:
        made = []
        for number in numbers:
            phone = Phone(stack, number, PASSWORDS[number], domain=DOMAIN, **options)
            await phone.register("127.0.0.1", port_of(pbx, transport), transport)
            made.append(phone)
        return made

    yield make
    await stack.close_phones()


async def answered_call(caller: Phone, callee: Phone, number: str) -> tuple[PhoneCall, PhoneCall]:
    """``caller`` dials ``number``; ``callee`` rings, then answers; both confirmed, media up."""
    outgoing = caller.dial(number)
    await outgoing.reached("early")  # fails at once if pbxd refuses the call
    assert outgoing.status == 180
    incoming = await callee.next_incoming()
    incoming.answer()
    for call in (outgoing, incoming):
        await call.reached("confirmed")
        await call.media_is("active")
    return outgoing, incoming


@pytest.mark.parametrize(("transport", "hangs_up"), [("udp", "caller"), ("tcp", "callee")])
@pytest_twisted.ensureDeferred
async def test_answered_call(pbx: PbxService, phones, transport: str, hangs_up: str) -> None:
    alice, bob = await phones(transport, "1001", "1002")
    outgoing, incoming = await answered_call(alice, bob, "1002")
    assert "1001" in incoming.remote_uri
    # Direct media: each PJSIP stream receives the other's RTP.
    await outgoing.receives_rtp(10)
    await incoming.receives_rtp(10)
    ending, other = (outgoing, incoming) if hangs_up == "caller" else (incoming, outgoing)
    ending.hangup()
    await other.reached("disconnected")
    await ending.reached("disconnected")
    [cdr] = await cdrs(pbx, 1)
    assert (cdr.from_number, cdr.to_number, cdr.direction) == ("1001", "1002", "internal")
    assert (cdr.disposition, cdr.hangup_side) == ("answered", hangs_up)
    assert cdr.answer_time is not None and cdr.billsec >= 0
    await drained(pbx)


@pytest.mark.parametrize(("transport", "ending", "status", "disposition"), [
    ("udp", "caller cancels", 487, "cancelled"),
    ("tcp", "callee is busy", 486, "busy"),
])
@pytest_twisted.ensureDeferred
async def test_unanswered_call(pbx: PbxService, phones, transport: str, ending: str,
                               status: int, disposition: str) -> None:
    alice, bob = await phones(transport, "1001", "1002")
    outgoing = alice.dial("1002")
    await outgoing.reached("early")
    incoming = await bob.next_incoming()
    if ending == "caller cancels":
        outgoing.hangup()  # CANCEL while it rings
        await incoming.reached("disconnected")
        assert incoming.status == 487
    else:
        incoming.answer(486)
    await outgoing.reached("disconnected")
    if ending == "callee is busy":
        assert outgoing.status == 486
    [cdr] = await cdrs(pbx, 1)
    assert (cdr.disposition, cdr.answer_time, cdr.billsec) == (disposition, None, 0)
    assert cdr.sip_status == status
    await drained(pbx)


@pytest.mark.parametrize("transport", ["udp", "tcp"])
@pytest_twisted.ensureDeferred
async def test_hold_and_resume(pbx: PbxService, phones, transport: str) -> None:
    alice, bob = await phones(transport, "1001", "1002")
    outgoing, incoming = await answered_call(alice, bob, "1002")
    # 1001 holds: 1002 gets a re-INVITE whose offer is sendonly (RFC 3264 §8.4)
    # and its stream is on remote hold; 1001's is on local hold.
    outgoing.hold()
    await incoming.media_is("remote_hold")
    await outgoing.media_is("local_hold")
    assert any("a=sendonly" in offer for offer in incoming.reinvite_offers), incoming.reinvite_offers
    # 1001 resumes: sendrecv on both sides, and RTP flows both ways again.
    outgoing.unhold()
    await incoming.media_is("active")
    await outgoing.media_is("active")
    assert "a=sendonly" not in incoming.reinvite_offers[-1]
    await outgoing.receives_rtp(10)
    await incoming.receives_rtp(10)
    assert (outgoing.state, incoming.state) == ("confirmed", "confirmed")
    outgoing.hangup()
    await incoming.reached("disconnected")
    [cdr] = await cdrs(pbx, 1)
    assert cdr.disposition == "answered"
    await drained(pbx)


@pytest.mark.parametrize("transport", ["udp", "tcp"])
@pytest_twisted.ensureDeferred
async def test_blind_transfer(pbx: PbxService, phones, transport: str) -> None:
    alice, bob = await phones(transport, "1001", "1002")
    [carol] = await phones(transport, "1003", auto_answer=True)
    outgoing, incoming = await answered_call(alice, bob, "1002")
    # 1002 transfers 1001 to 1003 (REFER, RFC 3515).
    incoming.transfer(f"sip:1003@{DOMAIN}")
    to_carol = await carol.next_incoming()
    await to_carol.reached("confirmed")
    await to_carol.media_is("active")
    # 1002's call ends (pbxd's BYE, or 1002's own once the NOTIFY says 200).
    await incoming.reached("disconnected")
    assert any(status == 200 and final for status, final in incoming.transfer_statuses) or \
        not incoming.transfer_statuses, incoming.describe()

    # 1001 ends up in one confirmed call, and its audio reaches 1003 and back.
    def alice_in_one_call() -> PhoneCall | None:
        live = [c for c in alice.calls if c.state == "confirmed" and c.media == "active"]
        return live[0] if len(live) == 1 and len(alice.live_calls()) == 1 else None

    alice_now = await alice.until(alice_in_one_call, "1001 in one call with 1003")
    await to_carol.receives_rtp(10)
    await alice_now.receives_rtp(10)
    alice_now.hangup()
    await to_carol.reached("disconnected")
    await drained(pbx)
    # One call, transferred: its record is the answered call 1001 made to 1002.
    records = await cdrs(pbx, 1)
    assert [(r.from_number, r.to_number, r.disposition) for r in records] == [
        ("1001", "1002", "answered")], records


@pytest.mark.parametrize("transport", ["udp", "tcp"])
@pytest_twisted.ensureDeferred
async def test_attended_transfer(pbx: PbxService, phones, transport: str) -> None:
    alice, bob = await phones(transport, "1001", "1002")
    [carol] = await phones(transport, "1003")
    to_bob, from_alice = await answered_call(alice, bob, "1002")
    # 1002 holds 1001, calls 1003, talks, then transfers 1001 to 1003 (REFER with
    # Replaces naming the 1002-1003 call).
    from_alice.hold()
    await to_bob.media_is("remote_hold")
    to_carol, from_bob = await answered_call(bob, carol, "1003")
    from_alice.transfer_to_call(to_carol)
    # 1002's calls both end; 1001 and 1003 end up in one confirmed call each, with
    # audio both ways (whether pbxd joins its own legs or passes the Replaces on).
    for call in (from_alice, to_carol):
        await call.reached("disconnected")

    def in_one_call(phone: Phone) -> Callable[[], PhoneCall | None]:
        def check() -> PhoneCall | None:
            live = phone.live_calls()
            if len(live) == 1 and live[0].state == "confirmed" and live[0].media == "active":
                return live[0]
            return None
        return check

    alice_now = await alice.until(in_one_call(alice), "1001 in one call")
    carol_now = await carol.until(in_one_call(carol), "1003 in one call")
    await alice_now.receives_rtp(10)
    await carol_now.receives_rtp(10)
    assert not bob.live_calls()
    alice_now.hangup()
    await carol_now.reached("disconnected")
    await drained(pbx)
    records = await cdrs(pbx, 2)
    assert {(r.from_number, r.to_number) for r in records} >= {("1001", "1002"), ("1002", "1003")}, records


@pytest.mark.parametrize("transport", ["udp", "tcp"])
@pytest_twisted.ensureDeferred
async def test_call_with_sha256_digest(tmp_path: Path, stack: PjsipStack, transport: str) -> None:
    """With SHA-256 as the only digest algorithm (RFC 8760), PJSIP registers, answers the
    INVITE's 407 with SHA-256 credentials, and the call goes through."""
    pbx = await start_pbx(pbx_config(tmp_path / "data", auth={"algorithms": ["SHA-256"]}))
    try:
        alice, bob = (Phone(stack, n, PASSWORDS[n], domain=DOMAIN) for n in ("1001", "1002"))
        for phone in (alice, bob):
            await phone.register("127.0.0.1", port_of(pbx, transport), transport)
        outgoing, incoming = await answered_call(alice, bob, "1002")
        incoming.hangup()
        await outgoing.reached("disconnected")
        [cdr] = await cdrs(pbx, 1)
        assert (cdr.from_number, cdr.disposition, cdr.hangup_side) == ("1001", "answered", "callee")
    finally:
        await stack.close_phones()
        await pbx.stopService()
