"""SIP over UDP: the datagram protocol and a port that hears ICMP errors.

On Linux an unconnected UDP socket normally never learns that a datagram hit a
closed port: the kernel drops the ICMP error. With IP_RECVERR / IPV6_RECVERR
set it queues the error, with the original destination, on the socket's error
queue, read by ``recvmsg(MSG_ERRQUEUE)`` (ip(7), ipv6(7)). That is how a
client transaction learns of a transport failure (RFC 3261 §17.1.4) without
waiting 32 seconds for Timer B or F.
"""

from __future__ import annotations

import errno
import socket
import struct
import sys
from typing import TYPE_CHECKING, Any

from twisted.internet import udp
from twisted.internet.interfaces import IHalfCloseableDescriptor
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from pbxd.transport.target import Target

if TYPE_CHECKING:
    from pbxd.transport.layer import SipTransports

log = Logger()

# From <linux/in.h> and <linux/in6.h>; the socket module does not export them.
_IP_RECVERR = 11
_IPV6_RECVERR = 25
_SOL_IPV6 = socket.IPPROTO_IPV6
# struct sock_extended_err: ee_errno, ee_origin, ee_type, ee_code, ee_pad, ee_info, ee_data
_EXTENDED_ERR = struct.Struct("=IBBBBII")
_ORIGIN_ICMP, _ORIGIN_ICMP6 = 2, 3

# Errors a sendto() can return because an earlier ICMP error is pending on the
# socket (the kernel reports it instead of sending); see ErrorQueuePort.write.
_PENDING_ICMP_ERRNOS = frozenset(
    {errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EHOSTDOWN, errno.EPROTO}
)

SOCKET_BUFFER_BYTES = 4 * 1024 * 1024
RECEIVES_ERRORS = sys.platform.startswith("linux")


@implementer(IHalfCloseableDescriptor)
class ErrorQueuePort(udp.Port):
    """A UDP port with large buffers, IPv6-only v6 sockets and ICMP error reporting.

    The protocol gets ``destinationUnreachable(host, port, error_number)`` for
    every ICMP error on the socket's error queue.
    """

    def createInternetSocket(self) -> socket.socket:
        sock = super().createInternetSocket()
        for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            # The kernel caps this at net.core.[rw]mem_max; a bigger buffer
            # rides out bursts (a registration storm) without drops.
            sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER_BYTES)
        if self.addressFamily == socket.AF_INET6:
            # One socket per family: a v6 socket on :: must not also take IPv4
            # (it would report v4-mapped sources and clash with a 0.0.0.0 port).
            sock.setsockopt(_SOL_IPV6, socket.IPV6_V6ONLY, 1)
        if RECEIVES_ERRORS:
            if self.addressFamily == socket.AF_INET6:
                sock.setsockopt(_SOL_IPV6, _IPV6_RECVERR, 1)
            else:
                sock.setsockopt(socket.SOL_IP, _IP_RECVERR, 1)
        return sock

    def doRead(self) -> None:
        self.drain_errors()
        super().doRead()

    def readConnectionLost(self, reason: Failure) -> None:
        """epoll said EPOLLERR without EPOLLIN: only the error queue has something.

        The reactor takes that for a closed descriptor, stops reading and, as we
        are half-closeable, calls this instead of connectionLost. A UDP socket
        is never closed by its peer: read the errors and carry on reading.
        """
        self.drain_errors()
        if self.connected and not self.disconnecting:
            self.startReading()

    def writeConnectionLost(self, reason: Failure) -> None:
        """Part of IHalfCloseableDescriptor; the reactor only half-closes for reading."""

    def write(self, datagram: bytes, addr: tuple[str, int] | None = None) -> Any:
        """Send a datagram; unlike udp.Port.write, errors are raised, not swallowed.

        A pending ICMP error makes the next sendto() fail without sending. Such
        an error belongs to an earlier datagram: collect it and send again.
        """
        try:
            return self.socket.sendto(datagram, addr)
        except OSError as error:
            if not (RECEIVES_ERRORS and error.errno in _PENDING_ICMP_ERRNOS and self.drain_errors()):
                raise
        return self.socket.sendto(datagram, addr)

    def drain_errors(self) -> int:
        """Read the whole error queue, telling the protocol of each unreachable destination."""
        if not RECEIVES_ERRORS:
            return 0
        count = 0
        while True:
            try:
                _, ancillary, _, address = self.socket.recvmsg(0, 512, socket.MSG_ERRQUEUE)
            except OSError:  # EAGAIN: the queue is empty
                return count
            count += 1
            for level, kind, data in ancillary:
                if (level, kind) not in ((socket.SOL_IP, _IP_RECVERR), (_SOL_IPV6, _IPV6_RECVERR)):
                    continue
                if len(data) < _EXTENDED_ERR.size:
                    continue
                error_number, origin = _EXTENDED_ERR.unpack_from(data)[:2]
                if origin in (_ORIGIN_ICMP, _ORIGIN_ICMP6) and address:
                    self.protocol.destinationUnreachable(address[0], address[1], error_number)


class SipDatagramProtocol(DatagramProtocol):
    """Hands every datagram of one UDP port to the transport layer."""

    noisy = False  # the layer logs its own listening line

    def __init__(self, layer: SipTransports) -> None:
        self._layer = layer
        self.local: tuple[str, int] | None = None

    def startProtocol(self) -> None:
        address = self.transport.getHost()
        self.local = (address.host, address.port)

    def datagramReceived(self, data: bytes, addr: tuple[str, int]) -> None:
        self._layer.datagram_received(data, Target("udp", addr[0], addr[1], local=self.local))

    def destinationUnreachable(self, host: str, port: int, error_number: int) -> None:
        self._layer.destination_unreachable(Target("udp", host, port, local=self.local), error_number)
