"""Fake phones for the media tests: UDP sockets on 127.0.0.1 that send RTP and can be awaited."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from twisted.internet import defer, reactor
from twisted.internet.protocol import DatagramProtocol

from pbxd.media.rtp import RtpPacket, parse_rtp
from pbxd.sip.sdp import Codec

HOST = "127.0.0.1"
CODECS = [Codec(0, "PCMU", 8000), Codec(8, "PCMA", 8000), Codec(101, "telephone-event", 8000)]
WAIT = 5.0


class Phone(DatagramProtocol):
    """A fake phone: a UDP socket that keeps what it receives and can be awaited."""

    def __init__(self) -> None:
        self.received: list[tuple[bytes, tuple[str, int]]] = []
        self._waiters: list[tuple[int, defer.Deferred[None]]] = []
        self.port: Any = None
        self.sequence = 0

    @property
    def address(self) -> tuple[str, int]:
        return (HOST, self.port.getHost().port)

    def datagramReceived(self, data: bytes, addr: tuple[str, int]) -> None:
        self.received.append((data, addr))
        for waiter in [w for w in self._waiters if len(self.received) >= w[0]]:
            self._waiters.remove(waiter)
            waiter[1].callback(None)

    def wait_for(self, count: int) -> defer.Deferred[None]:
        if len(self.received) >= count:
            return defer.succeed(None)
        waiter: defer.Deferred[None] = defer.Deferred()
        self._waiters.append((count, waiter))
        return waiter.addTimeout(WAIT, reactor)

    def send_audio(self, port: int, count: int, payload_type: int = 0, ssrc: int = 0x1111,
                   payload: bytes = bytes(range(160))) -> list[bytes]:
        sent = []
        for _ in range(count):
            self.sequence += 1
            data = RtpPacket(payload_type, self.sequence, self.sequence * 160, ssrc, payload).to_bytes()
            self.port.write(data, (HOST, port))
            sent.append(data)
        return sent

    def packets(self) -> list[RtpPacket]:
        return [parse_rtp(data) for data, _ in self.received]


@pytest.fixture
def phones() -> Iterator[Any]:
    ports = []

    def make() -> Phone:
        phone = Phone()
        phone.port = reactor.listenUDP(0, phone, interface=HOST)
        ports.append(phone.port)
        return phone

    yield make
    for port in ports:  # closed on the next reactor turn; nothing waits on them
        port.stopListening()
