"""Fuzzing (issue 9): mutated SIP messages fed to the parser, the stream
framer, and the whole receive path (SipTransports -> firewall -> transaction
layer -> SipCore) on a task.Clock with the socket edge replaced by a recorder.

No exception escapes (the transports catch and log a handler's crash, so a
logged failure counts as one), and nothing is left behind: once the clock
has run past every timer there is no transaction and no pending call.
"""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher

from pbxd.config import parse_config
from pbxd.core import LocalDomains, SipCore
from pbxd.security import SipFirewall
from pbxd.sip.errors import SipParseError
from pbxd.sip.framing import StreamFramer
from pbxd.sip.message import Request, parse_message
from pbxd.sip.transaction import ServerTransaction
from pbxd.transport.layer import SipTransports
from pbxd.transport.target import Target

SOURCE = Target("udp", "192.0.2.7", 5060)
HEADERS = (
    "Via: SIP/2.0/UDP 192.0.2.7:5060;branch=z9hG4bK-{n};rport\r\n"
    "From: \"A\" <sip:1001@127.0.0.1>;tag=f{n}\r\n"
    "To: <sip:1002@127.0.0.1>{to_tag}\r\n"
    "Call-ID: fuzz-{n}@192.0.2.7\r\n"
    "CSeq: {cseq} {method}\r\n"
    "Max-Forwards: 70\r\n"
    "Contact: <sip:1001@192.0.2.7:5060>;expires=60\r\n"
    "User-Agent: Yealink\r\n"
)
SDP = "v=0\r\no=- 1 1 IN IP4 192.0.2.7\r\ns=-\r\nc=IN IP4 192.0.2.7\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0 8\r\n"


def seed(method: str, n: int, to_tag: str = "", body: str = "", cseq: int = 1) -> bytes:
    head = f"{method} sip:1002@127.0.0.1 SIP/2.0\r\n" + HEADERS.format(
        n=n, to_tag=to_tag, cseq=cseq, method=method)
    extra = "Content-Type: application/sdp\r\n" if body else ""
    return (head + extra + f"Content-Length: {len(body.encode())}\r\n\r\n" + body).encode()


SEEDS = [
    seed("INVITE", 1, body=SDP),
    seed("ACK", 1, to_tag=";tag=t1"),
    seed("CANCEL", 1),
    seed("OPTIONS", 2),
    seed("REGISTER", 3),
    seed("BYE", 4, to_tag=";tag=t4", cseq=2),
    seed("INFO", 5),
    b"SIP/2.0 200 OK\r\n" + HEADERS.format(n=6, to_tag=";tag=x", cseq=1, method="OPTIONS").encode()
    + b"Content-Length: 0\r\n\r\n",
]

# One edit of a message: (kind, position as a fraction of the length, bytes).
EDIT = st.tuples(
    st.sampled_from(["flip", "insert", "delete", "truncate", "duplicate_line", "replace"]),
    st.floats(min_value=0, max_value=1, allow_nan=False),
    st.binary(min_size=1, max_size=12) | st.sampled_from(
        [b"\r\n", b":", b";", b",", b"<", b">", b"\"", b" ", b"\x00", b"\xff", b"%", b"sip:", b"99999999999",
         b"\r\n\r\n", b"Content-Length: 9999\r\n", b"Via: ", b"tag=", b"branch=", b"SIP/2.0", b"\t"]),
)


def mutate(data: bytes, edits: list[tuple[str, float, bytes]]) -> bytes:
    for kind, where, chunk in edits:
        at = int(where * len(data))
        if kind == "flip" and data:
            at = min(at, len(data) - 1)
            data = data[:at] + bytes([data[at] ^ (chunk[0] or 1)]) + data[at + 1:]
        elif kind == "insert":
            data = data[:at] + chunk + data[at:]
        elif kind == "delete":
            data = data[:at] + data[at + len(chunk):]
        elif kind == "truncate":
            data = data[:at]
        elif kind == "duplicate_line":
            start = data.rfind(b"\r\n", 0, at) + 2
            end = data.find(b"\r\n", at)
            if 0 < start < end:
                data = data[:end + 2] + data[start:end + 2] + data[end + 2:]
        else:
            data = data[:at] + chunk + data[at + len(chunk):]
    return data


MESSAGES = st.builds(mutate, st.sampled_from(SEEDS), st.lists(EDIT, max_size=6))


@settings(max_examples=400, deadline=None)
@given(MESSAGES)
def test_the_parser_raises_only_sip_parse_errors(data: bytes) -> None:
    try:
        message = parse_message(data)
    except SipParseError:
        return
    message.to_bytes()  # whatever parsed can be written out again


@settings(max_examples=150, deadline=None)
@given(MESSAGES, st.lists(st.integers(min_value=1, max_value=64), min_size=1, max_size=8))
def test_the_framer_never_raises(data: bytes, cuts: list[int]) -> None:
    framer = StreamFramer(4096, 2048)
    stream = data * 2
    at = 0
    for size in cuts * 50:
        if at >= len(stream):
            break
        framer.feed(stream[at:at + size])
        at += size


class _Busy:
    """An INVITE handler that rings and then refuses, so that INVITE transactions see ACKs and CANCELs."""

    def __init__(self, core: SipCore) -> None:
        self.core = core

    def handle_request(self, txn: ServerTransaction, request: Request) -> None:
        if request.method == "INVITE":
            self.core.reply(txn, 180)
        self.core.reply(txn, 486)

    def handle_cancel(self, invite_txn: ServerTransaction, cancel: Request) -> None:
        self.core.reply(invite_txn, 487)


class _Stack:
    def __init__(self) -> None:
        self.clock = Clock()
        self.transports = SipTransports(self.clock, clock=self.clock)
        self.sent: list[bytes] = []
        # The socket edge: what would go on the wire is recorded instead.
        self.transports._send_bytes = self._record  # type: ignore[method-assign]
        self.core = SipCore(self.clock, self.transports, LocalDomains(["127.0.0.1"], ["127.0.0.1"]))
        busy = _Busy(self.core)
        for method in ("INVITE", "BYE", "INFO", "REGISTER"):
            self.core.register(method, busy)
        self.firewall = SipFirewall(self.clock, parse_config({"security": {"limits": {"max_headers": 30}}}))
        self.firewall.install(self.transports, self.core.layer)

    def _record(self, data: bytes, target: Target, report_as: Any = None) -> None:
        self.sent.append(data)

    def drain(self) -> None:
        """Run the clock past every timer, in steps (retransmissions count)."""
        for _ in range(2000):
            calls = self.clock.getDelayedCalls()
            if not calls:
                return
            self.clock.advance(max(min(c.getTime() for c in calls) - self.clock.seconds(), 0.0) + 0.001)
        raise AssertionError("timers never ran out")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(MESSAGES | st.sampled_from(SEEDS), min_size=1, max_size=12))
def test_the_receive_path_survives_and_leaves_nothing_behind(datagrams: list[bytes]) -> None:
    failures: list[dict] = []

    def observe(event: dict) -> None:
        if "log_failure" in event:
            failures.append(event)

    stack = _Stack()
    globalLogPublisher.addObserver(observe)
    try:
        for data in datagrams:
            stack.transports.datagram_received(data, SOURCE)
            stack.clock.advance(0.01)
        stack.drain()
    finally:
        globalLogPublisher.removeObserver(observe)
    assert failures == [], [event["log_failure"].getTraceback() for event in failures]
    assert len(stack.core.layer.transactions) == 0
    assert stack.clock.getDelayedCalls() == []


def test_the_seeds_reach_the_core_and_leave_nothing_behind() -> None:
    stack = _Stack()
    for data in SEEDS:
        stack.transports.datagram_received(data, SOURCE)
    statuses = sorted(parse_message(data).status for data in stack.sent)  # type: ignore[union-attr]
    # INVITE: 180 and 486; CANCEL: 200 (its INVITE is answered already: no 487);
    # OPTIONS 200; REGISTER 486; BYE 486; INFO 486.
    assert statuses == [180, 200, 200, 486, 486, 486, 486]
    stack.drain()
    assert len(stack.core.layer.transactions) == 0
