"""Shared pieces for the transport tests: receivers that fire Deferreds, raw peers, requests.

Everything waits on events with generous timeouts; nothing sleeps.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest
import pytest_twisted

from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredQueue
from twisted.internet.protocol import DatagramProtocol, Protocol

from pbxd.sip.framing import MessageFrame, StreamFramer
from pbxd.sip.ids import new_call_id, new_tag
from pbxd.sip.message import Request, SipMessage, make_response
from pbxd.sip.transaction import new_branch
from pbxd.transport import SipTransports, Target

TIMEOUT = 10.0


def ipv6_loopback_available() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


LOOPBACKS = ["127.0.0.1", "::1"] if ipv6_loopback_available() else ["127.0.0.1"]


@pytest.fixture
def make_transports() -> Iterator:
    """Make SipTransports on the real reactor; all are stopped after the test."""
    made: list[SipTransports] = []

    def make(**options: Any) -> SipTransports:
        transports = SipTransports(reactor, **options)
        made.append(transports)
        return transports

    yield make
    for transports in made:
        pytest_twisted.blockon(transports.stop())


def within(d: Deferred[Any], timeout: float = TIMEOUT) -> Deferred[Any]:
    return d.addTimeout(timeout, reactor)


class Inbox:
    """A receiver (or error receiver) that queues what it is given."""

    def __init__(self) -> None:
        self._queue: DeferredQueue[tuple[Any, ...]] = DeferredQueue()
        self.count = 0

    def __call__(self, *args: Any) -> None:
        self.count += 1
        self._queue.put(args)

    def get(self, timeout: float = TIMEOUT) -> Deferred[tuple[Any, ...]]:
        return within(self._queue.get(), timeout)

    @property
    def pending(self) -> int:
        return len(self._queue.pending)


def answer_200(transports: SipTransports, inbox: Inbox | None = None) -> None:
    """Make ``transports`` answer every request with 200 (and queue what arrives)."""

    def receive(message: SipMessage, source: Target) -> None:
        if inbox is not None:
            inbox(message, source)
        if isinstance(message, Request) and message.method != "ACK":
            transports.send_response(make_response(message, 200), source)

    transports.receiver = receive


def options(transports: SipTransports, target: Target, body: bytes = b"", rport: bool = True) -> Request:
    """An OPTIONS from ``transports`` to ``target`` with a proper top Via."""
    host, port = transports.sent_by(target.transport, target.host)
    via = f"SIP/2.0/{target.via_transport} {host}:{port};branch={new_branch()}" + (";rport" if rport else "")
    return Request(
        "OPTIONS",
        f"sip:{target.hostport}",
        [
            ("Via", via),
            ("Max-Forwards", "70"),
            ("From", f"<sip:test@{host}>;tag={new_tag()}"),
            ("To", f"<sip:{target.hostport}>"),
            ("Call-ID", new_call_id(host)),
            ("CSeq", "1 OPTIONS"),
        ],
        body,
    )


def raw_options(via: str, body: bytes = b"", extra: str = "") -> bytes:
    """OPTIONS bytes with a Via of the caller's choosing (as a foreign UA would write it)."""
    return (
        "OPTIONS sip:pbx.example.com SIP/2.0\r\n"
        f"Via: {via}\r\n"
        "Max-Forwards: 70\r\n"
        "From: <sip:raw@example.com>;tag=raw1\r\n"
        "To: <sip:pbx.example.com>\r\n"
        f"Call-ID: {new_call_id('example.com')}\r\n"
        "CSeq: 7 OPTIONS\r\n"
        f"{extra}"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


class RawUdpPeer(DatagramProtocol):
    """A plain UDP socket: sends bytes, queues the datagrams it gets."""

    def __init__(self) -> None:
        self.received: DeferredQueue[tuple[bytes, tuple[str, int]]] = DeferredQueue()

    def datagramReceived(self, data: bytes, addr: tuple[str, int]) -> None:
        self.received.put((data, addr))

    def next(self, timeout: float = TIMEOUT) -> Deferred[tuple[bytes, tuple[str, int]]]:
        return within(self.received.get(), timeout)


class RawStreamPeer(Protocol):
    """A plain TCP (or TLS) client: writes bytes, queues the messages and pongs it reads."""

    def __init__(self) -> None:
        self.framer = StreamFramer()
        self.messages: DeferredQueue[bytes] = DeferredQueue()
        self.raw = bytearray()
        self.connected_once: Deferred[None] = Deferred()
        self.closed: Deferred[None] = Deferred()
        self.close_reason: Any = None

    def connectionMade(self) -> None:
        self.connected_once.callback(None)

    def dataReceived(self, data: bytes) -> None:
        self.raw += data
        for event in self.framer.feed(data):
            if isinstance(event, MessageFrame):
                self.messages.put(event.data)

    def connectionLost(self, reason: Any) -> None:
        self.close_reason = reason
        self.closed.callback(None)

    def next(self, timeout: float = TIMEOUT) -> Deferred[bytes]:
        return within(self.messages.get(), timeout)


def port_free_for_udp_and_tcp(host: str) -> int:
    """A port number free for both UDP and TCP on ``host`` (a listener then binds it)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for _ in range(50):
        with socket.socket(family, socket.SOCK_DGRAM) as udp, socket.socket(family, socket.SOCK_STREAM) as tcp:
            udp.bind((host, 0))
            port = udp.getsockname()[1]
            try:
                tcp.bind((host, port))
            except OSError:
                continue
        return port
    raise RuntimeError("no port free for both UDP and TCP")
