"""Raw SIP peers on loopback for tests that must write the bytes themselves.

A peer sends whatever bytes it is given (broken ones included) and queues
what comes back as raw messages, so that a test can look at answers pbxd's
own parser might refuse (a 400 that copies a broken Via). Waits are bounded
and event-driven: ``next()`` fires when a message arrives.
"""

from __future__ import annotations

import re
import typing
from typing import Any

import attrs
from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import DatagramProtocol, Protocol
from twisted.python.failure import Failure

from pbxd.sip.framing import MessageFrame, StreamFramer

TIMEOUT = 10.0


@attrs.frozen
class Answer:
    """A message as received: its start line and headers by lower-case long name."""

    raw: bytes
    start_line: str
    headers: dict[str, list[str]]

    @property
    def status(self) -> int | None:
        match = re.match(r"SIP/2\.0 (\d{3}) ", self.start_line)
        return int(match.group(1)) if match else None

    @property
    def reason(self) -> str:
        return self.start_line.split(" ", 2)[2] if self.status is not None else ""

    def header(self, name: str) -> str | None:
        values = self.headers.get(name.lower())
        return values[0] if values else None

    @property
    def call_id(self) -> str | None:
        return self.header("call-id")


_COMPACT = {"i": "call-id", "v": "via", "f": "from", "t": "to", "m": "contact", "l": "content-length",
            "c": "content-type", "k": "supported", "s": "subject", "e": "content-encoding"}


def read_answer(raw: bytes) -> Answer:
    """Split a message into start line and headers without judging its syntax."""
    head = raw.split(b"\r\n\r\n", 1)[0].decode("utf-8", "replace")
    head = re.sub(r"\r\n[ \t]+", " ", head)
    start, *lines = head.split("\r\n")
    headers: dict[str, list[str]] = {}
    for line in lines:
        name, _, value = line.partition(":")
        key = name.strip().lower()
        headers.setdefault(_COMPACT.get(key, key), []).append(value.strip())
    return Answer(raw, start, headers)


class _Inbox:
    def __init__(self) -> None:
        self.queue: defer.DeferredQueue[Answer] = defer.DeferredQueue()

    def next(self, timeout: float = TIMEOUT) -> defer.Deferred[Answer]:
        return self.queue.get().addTimeout(timeout, reactor)

    async def until(self, call_id: str, timeout: float = TIMEOUT) -> list[Answer]:
        """Every message up to and including the first with ``call_id``."""
        seen: list[Answer] = []
        while not seen or seen[-1].call_id != call_id:
            seen.append(await self.next(timeout))
        return seen


class UdpPeer(DatagramProtocol, _Inbox):
    """A UDP socket on 127.0.0.1 that sends to one pbxd port."""

    def __init__(self, pbx_port: int) -> None:
        _Inbox.__init__(self)
        self.pbx_port = pbx_port

    @property
    def port(self) -> int:
        return self.transport.getHost().port  # type: ignore[no-any-return,union-attr]

    def send(self, data: bytes) -> None:
        self.transport.write(data, ("127.0.0.1", self.pbx_port))  # type: ignore[union-attr]

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        self.queue.put(read_answer(data))


class TcpPeer(Protocol, _Inbox):
    """One TCP connection to pbxd; ``closed`` fires when it ends."""

    def __init__(self) -> None:
        _Inbox.__init__(self)
        self.framer = StreamFramer()
        self.closed: defer.Deferred[None] = defer.Deferred()

    @property
    def port(self) -> int:
        return self.transport.getHost().port  # type: ignore[no-any-return,union-attr]

    def send(self, data: bytes) -> None:
        self.transport.write(data)  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        for event in self.framer.feed(data):
            if isinstance(event, MessageFrame):
                self.queue.put(read_answer(event.data))

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        self.closed.callback(None)

    def close(self) -> None:
        if not self.closed.called:
            self.transport.loseConnection()  # type: ignore[union-attr]


async def udp_peer(pbx_port: int) -> tuple[UdpPeer, Any]:
    """A peer and its listening port (stop it with ``port.stopListening()``)."""
    peer = UdpPeer(pbx_port)
    return peer, reactor.listenUDP(0, peer, interface="127.0.0.1")


async def tcp_peer(pbx_port: int) -> TcpPeer:
    peer = TcpPeer()
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", pbx_port, timeout=TIMEOUT)
    await connectProtocol(endpoint, peer)
    return peer


def options(peer_port: int, transport: str, call_id: str, ruri: str = "sip:127.0.0.1") -> bytes:
    """A valid OPTIONS to pbxd itself, whose answer comes back to ``peer_port``."""
    return (
        f"OPTIONS {ruri} SIP/2.0\r\n"
        f"Via: SIP/2.0/{transport.upper()} 127.0.0.1:{peer_port};branch=z9hG4bK-{call_id};rport\r\n"
        "Max-Forwards: 70\r\n"
        f"From: <sip:probe@127.0.0.1>;tag=probe-{call_id}\r\n"
        f"To: <{ruri}>\r\n"
        f"Call-ID: {call_id}\r\n"
        "CSeq: 1 OPTIONS\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


_TOP_VIA = re.compile(rb"^((?:via|v)[ \t]*:[ \t]*SIP[ \t]*/[ \t]*[\d.]+[ \t]*/[ \t]*[A-Za-z]+[ \t]+)[^;,\s]+",
                      re.IGNORECASE | re.MULTILINE)


def from_peer(message: bytes, peer_port: int) -> bytes:
    """``message`` with its top Via's sent-by made 127.0.0.1:``peer_port``.

    §18.2.2 sends a UDP response to the Via's sent-by (with received=), so a
    message from the RFCs, whose Via names a documentation address, would be
    answered to nobody; only the host[:port] changes, the rest stays as written.
    """
    changed, count = _TOP_VIA.subn(rb"\g<1>127.0.0.1:" + str(peer_port).encode(), message, count=1)
    assert count == 1, message[:200]
    return changed


class Peer(typing.Protocol):
    """What UdpPeer and TcpPeer have in common, for the helpers below."""

    @property
    def port(self) -> int: ...

    def send(self, data: bytes) -> None: ...

    def next(self, timeout: float = TIMEOUT) -> defer.Deferred[Answer]: ...


def register_bytes(peer_port: int, transport: str, *, user: str, call_id: str, cseq: int, contact: str,
                   ruri: str = "sip:127.0.0.1", expires: int = 300, extra: tuple[str, ...] = ()) -> bytes:
    """A REGISTER of ``user`` from a peer at 127.0.0.1:``peer_port``."""
    lines = [
        f"REGISTER {ruri} SIP/2.0",
        f"Via: SIP/2.0/{transport.upper()} 127.0.0.1:{peer_port};branch=z9hG4bK-{call_id}-{cseq};rport",
        "Max-Forwards: 70",
        f"From: <sip:{user}@127.0.0.1>;tag=from-{call_id}",
        f"To: <sip:{user}@127.0.0.1>",
        f"Call-ID: {call_id}",
        f"CSeq: {cseq} REGISTER",
        f"Contact: {contact}",
        f"Expires: {expires}",
        *extra,
        "Content-Length: 0",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def final_answer(peer: Peer, call_id: str, timeout: float = TIMEOUT) -> Answer:
    """The next final response of ``call_id`` (provisional ones and others skipped)."""
    while True:
        answer = await peer.next(timeout)
        if answer.call_id == call_id and (answer.status or 0) >= 200:
            return answer


async def register(peer: Peer, transport: str, *, user: str, password: str, call_id: str, contact: str,
                   cseq: int = 1, ruri: str = "sip:127.0.0.1", expires: int = 300,
                   extra: tuple[str, ...] = ()) -> Answer:
    """REGISTER, answer the first 401's first challenge, and return the final answer
    to the request with credentials (or the first answer if it is not a 401)."""
    from pbxd.sip.digest import answer_challenge

    def send(cseq: int, more: tuple[str, ...]) -> None:
        peer.send(register_bytes(peer.port, transport, user=user, call_id=call_id, cseq=cseq, contact=contact,
                                 ruri=ruri, expires=expires, extra=extra + more))

    send(cseq, ())
    challenge = await final_answer(peer, call_id)
    if challenge.status != 401:
        return challenge
    offered = challenge.headers["www-authenticate"][0]
    credentials = answer_challenge(offered, "REGISTER", ruri, user, password)
    send(cseq + 1, (f"Authorization: {credentials}",))
    return await final_answer(peer, call_id)
