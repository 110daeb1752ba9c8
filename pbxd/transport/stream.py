"""SIP over TCP and TLS: one protocol instance per connection.

The bytes go through :class:`pbxd.sip.framing.StreamFramer`; complete messages
go up to the transport layer, keepalive pings are answered here, and a
connection that breaks framing, or stays silent past the idle timeout, is
closed.
"""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING

from twisted.internet import tcp
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.protocols.policies import TimeoutMixin
from twisted.python.failure import Failure
from zope.interface import implementer

from pbxd.sip.framing import PONG, FramingError, KeepalivePing, MessageFrame, StreamFramer
from pbxd.transport.target import Target

if TYPE_CHECKING:
    from pbxd.transport.layer import SipTransports

log = Logger()

# closed_by_us for a TLS connection whose handshake did not finish within the
# connect timeout (a peer that accepts TCP and then says nothing).
HANDSHAKE_TIMEOUT = "handshake timeout"


class StreamPort(tcp.Port):
    """A TCP listening port whose IPv6 sockets take IPv6 only.

    Linux makes a socket on :: dual-stack by default; one socket per family
    keeps ``0.0.0.0`` and ``::`` listeners on the same port from clashing.
    """

    def createInternetSocket(self) -> socket.socket:
        sock = super().createInternetSocket()
        if self.addressFamily == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        return sock


@implementer(IHandshakeListener)
class SipStreamConnection(Protocol, TimeoutMixin):
    """One TCP or TLS connection, accepted or opened by pbxd.

    ``target`` names the connection for reuse: the peer's address for an
    accepted connection, the Target that was asked for when pbxd connected.
    """

    def __init__(self, layer: SipTransports, transport_name: str, outbound: Target | None = None) -> None:
        self._layer = layer
        self.transport_name = transport_name
        self.outbound = outbound
        self.target: Target = outbound  # type: ignore[assignment]  # set for accepted ones on connectionMade
        self.framer = StreamFramer(layer.max_message_size, layer.max_header_size)
        self.handshake_done = transport_name != "tls"
        # Why pbxd closed the connection itself (idle, framing, shutdown); None
        # while open or when the peer or the network closed it.
        self.closed_by_us: str | None = None
        self.lost = False
        # Other Targets whose transactions wait on this connection (a request
        # moved from UDP for its size, a response to an earlier connection's
        # peer): they hear of its failure too.
        self.also_report: set[Target] = set()
        self.when_lost: Deferred[None] = Deferred()
        # TimeoutMixin schedules through this: the layer's clock, not the global reactor.
        self.callLater = layer.clock.callLater

    def connectionMade(self) -> None:
        # SIP writes small messages back to back (100 then 180/200): with Nagle's
        # algorithm the second waits for the peer's delayed ACK, which put a ~30 ms
        # median into call set-up over TCP (bench/run.py calls --transport tcp).
        if hasattr(self.transport, "setTcpNoDelay"):
            self.transport.setTcpNoDelay(True)
        if self.outbound is None:
            peer = self.transport.getPeer()
            self.target = Target(self.transport_name, peer.host, peer.port)
        # Until TLS is up the connect timeout applies, then the idle timeout.
        self.setTimeout((self._layer.tcp_idle_timeout if self.handshake_done else self._layer.connect_timeout) or None)
        self._layer.connection_made(self)

    def handshakeCompleted(self) -> None:
        self.handshake_done = True
        self.setTimeout(self._layer.tcp_idle_timeout or None)

    def dataReceived(self, data: bytes) -> None:
        self.resetTimeout()
        for event in self.framer.feed(data):
            if isinstance(event, MessageFrame):
                self._layer.stream_message_received(event.data, self)
            elif isinstance(event, KeepalivePing):
                self.transport.write(PONG)
            elif isinstance(event, FramingError):
                self._layer.framing_failed(self, event)
                self.close(f"framing: {event.reason}")
            if self.closed_by_us:
                return

    def send(self, data: bytes) -> None:
        if self.handshake_done:  # queuing behind a handshake does not extend its deadline
            self.resetTimeout()
        self.transport.write(data)

    def close(self, why: str) -> None:
        """Close from our side; the peer is not told of an error."""
        if self.closed_by_us is None:
            self.closed_by_us = why
        self.setTimeout(None)
        self.transport.loseConnection()

    def timeoutConnection(self) -> None:
        if not self.handshake_done:
            log.info("TLS handshake with {target} took too long", target=self.target)
            self.close(HANDSHAKE_TIMEOUT)
            return
        log.info("closing idle {transport} connection {target}", transport=self.transport_name, target=self.target)
        self.close("idle")

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        self.lost = True
        self.setTimeout(None)
        self._layer.connection_lost(self, reason)
        self.when_lost.callback(None)
