"""What the transaction tests share: a recording transport and TU, message builders, clock stepping.

The transport and TU here are the collaborators of the thing under test (the
transaction layer): they only record what the layer asks of them.
"""

from __future__ import annotations

from typing import Callable

import attrs
import pytest
from twisted.internet.task import Clock

from pbxd.sip.message import Request, Response, SipMessage, make_response, parse_message
from pbxd.sip.timers import TimerSettings
from pbxd.sip.transaction import ClientTransaction, ServerTransaction, TransactionLayer, new_branch
from pbxd.transport.target import Target

UDP_PEER = Target("udp", "192.0.2.10", 5060)
TCP_PEER = Target("tcp", "192.0.2.10", 5070)
TLS_PEER = Target("tls", "192.0.2.10", 5061)
OTHER_PEER = Target("udp", "192.0.2.99", 5060)


@attrs.frozen
class Sent:
    at: float
    kind: str  # "send" or "send_response"
    message: SipMessage
    target: Target


class RecordingTransport:
    """Records every send.

    ``fail_next`` makes the next send report a transport error at once;
    ``divert_next`` makes the next send say it went to another target, as a
    large request moved from UDP to TCP does (§18.1.1).
    """

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.sent: list[Sent] = []
        self.layer: TransactionLayer | None = None
        self.fail_next: str | None = None
        self.divert_next: Target | None = None

    def send(self, message: SipMessage, target: Target) -> Target | None:
        used, self.divert_next = self.divert_next, None
        self._record("send", message, used or target)
        return used

    def send_response(self, response: Response, source: Target) -> None:
        self._record("send_response", response, source)

    def _record(self, kind: str, message: SipMessage, target: Target) -> None:
        self.sent.append(Sent(self.clock.seconds(), kind, message, target))
        if self.fail_next is not None:
            reason, self.fail_next = self.fail_next, None
            assert self.layer is not None
            self.layer.transport_error(target, reason)

    def times(self, predicate: Callable[[SipMessage], bool] = lambda m: True) -> list[float]:
        return [s.at for s in self.sent if predicate(s.message)]

    def messages(self) -> list[SipMessage]:
        return [s.message for s in self.sent]


class RecordingTU:
    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.requests: list[tuple[ServerTransaction, Request]] = []
        self.acks: list[tuple[Request, Target]] = []
        self.strays: list[tuple[Response, Target]] = []
        self.terminations: list[tuple[float, ServerTransaction, str]] = []
        # Called with each new server transaction; tests set it to answer at once.
        self.answer: Callable[[ServerTransaction, Request], None] | None = None

    def request_received(self, txn: ServerTransaction, request: Request) -> None:
        self.requests.append((txn, request))
        txn.on_terminated = lambda reason: self.terminations.append((self.clock.seconds(), txn, reason))
        if self.answer is not None:
            self.answer(txn, request)

    def ack_received(self, request: Request, source: Target) -> None:
        self.acks.append((request, source))

    def stray_response(self, response: Response, source: Target) -> None:
        self.strays.append((response, source))


class ClientRecorder:
    """The on_response / on_failure pair a TU passes to send_request."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.responses: list[tuple[float, Response]] = []
        self.failures: list[tuple[float, str]] = []
        self.txn: ClientTransaction | None = None

    def on_response(self, response: Response) -> None:
        self.responses.append((self.clock.seconds(), response))

    def on_failure(self, reason: str) -> None:
        self.failures.append((self.clock.seconds(), reason))

    @property
    def statuses(self) -> list[int]:
        return [r.status for _, r in self.responses]


class Env:
    def __init__(self, settings: TimerSettings) -> None:
        self.clock = Clock()
        self.transport = RecordingTransport(self.clock)
        self.tu = RecordingTU(self.clock)
        self.layer = TransactionLayer(self.clock, self.transport, self.tu, settings)
        self.transport.layer = self.layer

    def pump_to(self, when: float, step: float = 0.05) -> None:
        """Step the clock to ``when`` in small steps, landing exactly on every deadline on the way."""
        clock = self.clock
        while clock.seconds() < when:
            calls = clock.getDelayedCalls()
            target = min([clock.seconds() + step, when] + [c.getTime() for c in calls])
            clock.advance(max(target - clock.seconds(), 0.0))

    def pump(self, seconds: float, step: float = 0.05) -> None:
        self.pump_to(self.clock.seconds() + seconds, step)

    def send(self, request: Request, target: Target = UDP_PEER) -> ClientRecorder:
        recorder = ClientRecorder(self.clock)
        recorder.txn = self.layer.send_request(request, target, recorder.on_response, recorder.on_failure)
        return recorder

    def assert_clean(self) -> None:
        assert self.clock.getDelayedCalls() == [], "a timer was left behind"
        assert len(self.layer.transactions) == 0, f"transactions left: {list(self.layer.transactions)}"


@pytest.fixture
def make_env():
    """Make an Env with given timer settings; every Env must end with no timers and no transactions."""
    envs: list[Env] = []

    def make(**settings: float) -> Env:
        env = Env(TimerSettings(**settings))
        envs.append(env)
        return env

    yield make
    for env in envs:
        env.assert_clean()


@pytest.fixture
def env(make_env) -> Env:  # type: ignore[no-untyped-def]
    return make_env()


def request(
    method: str = "INVITE",
    *,
    branch: str | None = "fresh",
    transport: str = "UDP",
    sent_by: str = "192.0.2.10:5060",
    uri: str = "sip:bob@example.com",
    from_tag: str = "a1",
    to_tag: str | None = None,
    call_id: str = "c1@192.0.2.10",
    cseq: int = 1,
    cseq_method: str | None = None,
    extra: str = "",
) -> Request:
    """A request as it comes off the wire. ``branch="fresh"`` mints a new RFC 3261 branch; None leaves it out."""
    if branch == "fresh":
        branch = new_branch()
    via = f"Via: SIP/2.0/{transport} {sent_by}" + (f";branch={branch}" if branch is not None else "")
    to = "To: Bob <sip:bob@example.com>" + (f";tag={to_tag}" if to_tag else "")
    text = (
        f"{method} {uri} SIP/2.0\r\n"
        f"{via}\r\n"
        "Route: <sip:proxy.example.com;lr>\r\n"
        "Max-Forwards: 70\r\n"
        f"From: Alice <sip:alice@example.com>;tag={from_tag}\r\n"
        f"{to}\r\n"
        f"Call-ID: {call_id}\r\n"
        f"CSeq: {cseq} {cseq_method or method}\r\n"
        "Contact: <sip:alice@192.0.2.10>\r\n"
        "Timestamp: 54\r\n"
        f"{extra}"
        "Content-Length: 0\r\n\r\n"
    )
    return parse_message(text.encode())  # type: ignore[return-value]


def response(req: Request, status: int, to_tag: str | None = "b1") -> Response:
    """A response to ``req`` as it comes off the wire (parsed from bytes)."""
    built = make_response(req, status)
    if to_tag is not None and req.to_addr.tag is None:
        built.set("To", str(req.to_addr.with_param("tag", to_tag)))
    return parse_message(built.to_bytes())  # type: ignore[return-value]


def answer(txn: ServerTransaction, status: int, to_tag: str = "srv") -> Response:
    """The TU answering a server transaction: a response with a To tag (but for 100), sent through it."""
    built = make_response(txn.request, status)
    if status > 100 and txn.request.to_addr.tag is None:
        built.set("To", str(txn.request.to_addr.with_param("tag", to_tag)))
    txn.respond(built)
    return built


def ack_for(invite: Request, final: Response, *, branch: str | None = None, uri: str | None = None) -> Request:
    """An ACK as a UAC sends it: same branch for non-2xx (``branch=None``), or a new one for 2xx."""
    via = invite.vias[0] if branch is None else invite.vias[0].with_param("branch", branch)
    text = (
        f"ACK {uri or invite.uri} SIP/2.0\r\n"
        f"Via: {via}\r\n"
        "Max-Forwards: 70\r\n"
        f"From: {invite.get('from')}\r\n"
        f"To: {final.get('to')}\r\n"
        f"Call-ID: {invite.call_id}\r\n"
        f"CSeq: {invite.cseq.seq} ACK\r\n"
        "Content-Length: 0\r\n\r\n"
    )
    return parse_message(text.encode())  # type: ignore[return-value]


def status_of(message: SipMessage) -> int | None:
    return message.status if isinstance(message, Response) else None
