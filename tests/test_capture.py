"""SIP capture: which messages are kept, the per-call and global bounds, the
grace period after a call ends, legs linked to their call, broken messages;
and the capture hook of SipTransports over real UDP sockets on loopback."""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import defer, reactor
from twisted.internet.task import Clock

from pbxd.sip.capture import SipCapture
from pbxd.sip.ids import new_tag
from pbxd.sip.message import Request, make_response
from pbxd.sip.transaction import new_branch
from pbxd.transport import Target

from transport_support import Inbox, RawUdpPeer, within

PHONE = Target("udp", "192.0.2.10", 5062, local=("127.0.0.1", 5060))


def request(method: str, call_id: str, to_tag: str | None = None, body: bytes = b"") -> Request:
    to = "<sip:1002@pbx.test>" + (f";tag={to_tag}" if to_tag else "")
    return Request(method, "sip:1002@pbx.test", [
        ("Via", f"SIP/2.0/UDP 192.0.2.10:5062;branch={new_branch()}"),
        ("Max-Forwards", "70"),
        ("From", f"<sip:1001@pbx.test>;tag={new_tag()}"),
        ("To", to),
        ("Call-ID", call_id),
        ("CSeq", f"1 {method}"),
    ], body)


def feed(capture: SipCapture, direction: str, message, peer: Target = PHONE) -> None:
    capture(direction, message, peer, message.to_bytes())


@pytest.fixture
def clock() -> Clock:
    clock = Clock()
    clock.advance(1000)
    return clock


def test_only_calls_are_captured(clock: Clock) -> None:
    capture = SipCapture(clock)
    feed(capture, "in", request("REGISTER", "reg-1"))
    feed(capture, "in", request("OPTIONS", "opt-1"))
    feed(capture, "in", request("BYE", "stray", to_tag="x"))
    feed(capture, "in", request("INVITE", "reinvite", to_tag="x"))  # in-dialog: not a new call
    assert len(capture) == 0
    invite = request("INVITE", "call-1")
    feed(capture, "in", invite)
    clock.advance(0.5)
    feed(capture, "out", make_response(invite, 180))
    feed(capture, "in", request("BYE", "call-1", to_tag="t"))
    ladder = capture.ladder("call-1")
    assert [m.first_line for m in ladder] == [
        "INVITE sip:1002@pbx.test SIP/2.0", "SIP/2.0 180 Ringing", "BYE sip:1002@pbx.test SIP/2.0"]
    steps = [m.to_json() for m in ladder]
    assert steps[0]["from"] == "udp:192.0.2.10:5062" and steps[0]["to"] == "udp:127.0.0.1:5060"
    assert steps[1]["from"] == "udp:127.0.0.1:5060" and steps[1]["to"] == "udp:192.0.2.10:5062"
    assert steps[1]["time"] == steps[0]["time"] + 0.5
    assert steps[0]["text"].startswith("INVITE ") and "Call-ID: call-1" in steps[0]["text"]
    assert capture.ladder("reg-1") is None


def test_per_call_bounds(clock: Clock) -> None:
    capture = SipCapture(clock, max_messages=3, max_bytes=10_000)
    feed(capture, "in", request("INVITE", "c"))
    for _ in range(5):
        feed(capture, "in", request("INFO", "c", to_tag="t"))
    assert len(capture.ladder("c")) == 3 and capture.dropped("c") == 3
    small = SipCapture(clock, max_bytes=600)
    feed(small, "in", request("INVITE", "d", body=b"v=0\r\n" * 120))  # over the limit alone
    assert small.ladder("d") == [] and small.dropped("d") == 1


def test_least_recent_calls_go_first(clock: Clock) -> None:
    capture = SipCapture(clock, max_calls=2)
    for call_id in ("a", "b"):
        feed(capture, "in", request("INVITE", call_id))
    feed(capture, "in", request("ACK", "a", to_tag="t"))  # a is now the most recent
    feed(capture, "in", request("INVITE", "c"))
    assert capture.ladder("b") is None and capture.ladder("a") and capture.ladder("c")
    assert capture.evicted == 1


def test_ended_calls_stay_for_the_grace_period_with_their_legs(clock: Clock) -> None:
    capture = SipCapture(clock, grace=60)
    feed(capture, "in", request("INVITE", "call"))
    capture.link("leg-b", "call")
    clock.advance(0.1)
    feed(capture, "out", request("INVITE", "leg-b"), Target("udp", "192.0.2.20", 5060))
    feed(capture, "in", request("INVITE", "other"))
    assert [m.call_id for m in capture.ladder("call")] == ["call", "leg-b"]
    capture.call_ended("call")
    clock.advance(59)
    assert len(capture.ladder("call")) == 2
    clock.advance(1)
    assert capture.ladder("call") is None and capture.ladder("leg-b") is None
    assert capture.ladder("other") is not None


def test_a_leg_evicted_or_relinked_leaves_its_call_ladder(clock: Clock) -> None:
    # The call -> legs index must follow evictions and re-links, and never grow past
    # what is held (it replaced a walk over every captured call).
    capture = SipCapture(clock, max_calls=3)
    feed(capture, "in", request("INVITE", "call"))
    capture.link("leg-b", "call")
    capture.link("leg-c", "call")
    capture.link("leg-c", "other")  # moved: only "other" shows it
    feed(capture, "out", request("INVITE", "leg-b"), Target("udp", "192.0.2.20", 5060))
    feed(capture, "out", request("INVITE", "leg-c"), Target("udp", "192.0.2.21", 5060))
    assert [m.call_id for m in capture.ladder("call")] == ["call", "leg-b"]
    assert [m.call_id for m in capture.ladder("other")] == ["leg-c"]
    feed(capture, "in", request("INVITE", "new"))  # evicts "call", the least recent
    feed(capture, "in", request("INVITE", "newer"))  # evicts "leg-b"
    assert capture.ladder("call") is None
    assert [m.call_id for m in capture.ladder("other")] == ["leg-c"]
    for number in range(10):
        feed(capture, "in", request("INVITE", f"later-{number}"))
    assert capture.ladder("other") is None and capture._legs == {}


def test_local_sockets_are_named_right_past_the_name_cache(clock: Clock) -> None:
    # pbxd's socket text is cached per socket; outgoing TCP connections each have their
    # own port, so the cache is bounded and cleared, and must still name each one right.
    capture = SipCapture(clock)
    feed(capture, "in", request("INVITE", "call"))
    for port in range(40000, 40300):
        capture("out", request("BYE", "call", to_tag="t"),
                Target("tcp", "192.0.2.20", 5060, local=("127.0.0.1", port)), b"BYE x\r\n")
    ladder = capture.ladder("call")
    assert ladder[0].local == "udp:127.0.0.1:5060"
    assert [m.local for m in ladder[1:]] == [f"tcp:127.0.0.1:{port}" for port in range(40000, 40099)]
    assert ladder[1].first_line == "BYE x" and len(capture._local_texts) <= 256


def test_peers_and_call_ids_are_shared_strings_and_stay_right(clock: Clock) -> None:
    # A held call keeps a dozen messages: the peer's text and the Call-ID are one
    # string each, not one per message; the first line is derived from the text.
    capture = SipCapture(clock)
    feed(capture, "in", request("INVITE", "call"))
    feed(capture, "in", request("ACK", "call", to_tag="t"))
    capture("out", request("BYE", "call", to_tag="t"), Target("udp", "192.0.2.30", 5070), b"no line end")
    first, second, third = capture.ladder("call")
    assert first.peer is second.peer and first.peer == "udp:192.0.2.10:5062"
    assert first.call_id is second.call_id is third.call_id
    assert third.peer == "udp:192.0.2.30:5070" and third.first_line == "no line end"
    assert first.first_line == "INVITE sip:1002@pbx.test SIP/2.0"


def test_broken_messages_and_peers_never_raise(clock: Clock) -> None:
    capture = SipCapture(clock)
    broken = request("INVITE", "x")
    broken.remove("call-id")
    feed(capture, "in", broken)
    capture("in", request("INVITE", "y"), object(), b"\xff\xfe not utf-8")
    assert capture.ladder("y")[0].local == "pbxd"
    with pytest.raises(ValueError):
        SipCapture(clock, max_calls=0)


@pytest_twisted.ensureDeferred
async def test_the_transport_hook_sees_both_directions(make_transports) -> None:
    transports = make_transports()
    capture = SipCapture(reactor)
    transports.capture = capture
    inbox = Inbox()
    transports.receiver = inbox
    port = transports.listen("udp", "127.0.0.1", 0).getHost().port
    peer = RawUdpPeer()
    peer_port = reactor.listenUDP(0, peer, interface="127.0.0.1")
    try:
        invite = request("INVITE", "hooked")
        invite.set("Via", f"SIP/2.0/UDP 127.0.0.1:{peer_port.getHost().port};branch={new_branch()}")
        peer_port.write(invite.to_bytes(), ("127.0.0.1", port))
        received, source = await inbox.get()
        transports.send_response(make_response(received, 486), source)
        await peer.next()
        ladder = [m.to_json() for m in capture.ladder("hooked")]
        assert [step["direction"] for step in ladder] == ["in", "out"]
        assert ladder[0]["to"] == f"udp:127.0.0.1:{port}"
        assert ladder[0]["from"] == f"udp:127.0.0.1:{peer_port.getHost().port}"
        assert ladder[1]["first_line"] == "SIP/2.0 486 Busy Here"
    finally:
        await within(defer.maybeDeferred(peer_port.stopListening))
