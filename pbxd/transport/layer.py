"""All of pbxd's SIP sockets behind one object: :class:`SipTransports`.

Receiving: bytes are parsed; a request gets received/rport in its top Via
(§18.2.1, RFC 3581); a response must carry our own sent-by (§18.1.2); then
``receiver(message, source)``. A request too broken to process but with a
Via is answered here, statelessly, with the parser's status.

Sending: ``send`` to a Target (reusing or opening a connection for TCP/TLS);
``send_response`` back to where a request came from (§18.2.2). Transport
failures go to ``error_receiver(target, code)`` for §17.1.4.
"""

from __future__ import annotations

import errno
import os
import socket
from typing import Any, Callable, Iterable

import attrs
from OpenSSL import SSL
from service_identity import VerificationError
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import CancelledError, Deferred, DeferredList, maybeDeferred
from twisted.internet.endpoints import HostnameEndpoint, TCP4ClientEndpoint, TCP6ClientEndpoint, wrapClientTLS
from twisted.internet.error import ConnectionDone, ConnectionRefusedError, DNSLookupError, TimeoutError
from twisted.internet.interfaces import IListeningPort, IResolutionReceiver
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from zope.interface import implementer

from pbxd.sip.errors import SipParseError
from pbxd.sip.framing import FramingError
from pbxd.sip.headers import quote
from pbxd.sip.ids import new_tag
from pbxd.sip.message import Request, Response, SipMessage, make_response, parse_message
from pbxd.sip.routing import response_target, stamp_via
from pbxd.transport.stream import HANDSHAKE_TIMEOUT, SipStreamConnection, StreamPort
from pbxd.transport.target import DEFAULT_PORTS, TRANSPORTS, Target, canonical_host, is_ip_literal, is_ipv6
from pbxd.transport.tls import TlsClientPolicy
from pbxd.transport.udp import ErrorQueuePort, SipDatagramProtocol

log = Logger()

# Codes passed to error_receiver; the details go to the log.
UNREACHABLE = "unreachable"  # ICMP unreachable, no route
REFUSED = "refused"  # TCP connection refused (RST to our SYN)
TIMEOUT = "timeout"  # TCP connection or TLS handshake not done within connect_timeout
RESET = "reset"  # an open connection broke
TLS_FAILED = "tls"  # handshake or certificate/hostname verification failed
UNRESOLVABLE = "unresolvable"  # the target's hostname has no address
SEND_FAILED = "send-failed"  # the local stack would not send (no socket for the family, too large)

# After a destination refuses TCP, large requests to it go over UDP for this
# long (§18.1.1: a request moved to TCP for size SHOULD be retried over UDP
# when TCP is refused; the transaction user's retry then takes UDP).
TCP_REFUSED_MEMORY = 300.0

_WILDCARDS = ("", "0.0.0.0", "::")
_UDP_KEEPALIVE_CHARS = b"\r\n\x00 \t"
_STUN_MAGIC_COOKIE = b"\x21\x12\xa4\x42"  # RFC 5389 §6; SIP text never has it at bytes 4-7


@attrs.define
class TransportCounters:
    """Totals since start, for monitoring."""

    messages_in: int = 0  # parsed and handed to the receiver
    messages_out: int = 0
    parse_errors: int = 0  # unparseable messages and broken streams
    dropped: int = 0  # oversized datagrams, responses not for us, full send buffers
    transport_errors: int = 0  # reports to error_receiver


@attrs.frozen
class Listener:
    """One listening socket and the sent-by it stands for."""

    transport: str
    host: str  # the bound address, as given
    port: int  # the real port (listen on 0 picks one)
    sent_by_host: str  # for Via and Contact: IPv6 in brackets
    ipv6: bool
    listening_port: IListeningPort


class SipTransports:
    """Owns every SIP listening socket and connection.

    ``receiver(message, source)`` gets every parsed message; ``error_receiver(
    target, code)`` every transport failure (codes above). The SIP core sets
    both before calling :meth:`listen`.
    """

    def __init__(
        self,
        reactor: Any,
        *,
        max_message_size: int = 65535,
        max_header_size: int = 32768,
        tcp_idle_timeout: float = 300.0,
        connect_timeout: float = 10.0,
        udp_to_tcp_threshold: int = 1300,
        tls_server_context: Any = None,
        tls_client_policy: TlsClientPolicy | None = None,
        advertised_host: str | None = None,
        clock: Any = None,
    ) -> None:
        self.reactor = reactor
        # Timers (idle timeout, refused-TCP memory) run on ``clock``; sockets
        # on ``reactor``. Tests pass a task.Clock to step the timers.
        self.clock = clock if clock is not None else reactor
        self.max_message_size = max_message_size
        self.max_header_size = max_header_size
        self.tcp_idle_timeout = tcp_idle_timeout
        self.connect_timeout = connect_timeout
        self.udp_to_tcp_threshold = udp_to_tcp_threshold
        self.tls_server_context = tls_server_context
        self.tls_client_policy = tls_client_policy
        self.advertised_host = advertised_host
        self.receiver: Callable[[SipMessage, Target], None] = self._no_receiver
        self.error_receiver: Callable[[Target, str], None] = self._no_error_receiver
        # capture(direction "in"/"out", message, peer, bytes): sees every parsed
        # message received and every message sent (pbxd.sip.capture); None: off.
        self.capture: Callable[[str, SipMessage, Target, bytes], None] | None = None
        # source_filter(source) -> bool: asked before anything from ``source``
        # is parsed (each datagram, each accepted connection, each stream
        # message); False drops it, and closes the connection (pbxd.security:
        # ACL and flood bans). None: everyone is heard.
        self.source_filter: Callable[[Target], bool] | None = None
        # Accepted TCP/TLS connections per peer address; 0: no limit.
        self.max_connections_per_ip = 0
        self._accepted_per_host: dict[str, int] = {}
        self.counters = TransportCounters()
        self.listeners: list[Listener] = []
        self._our_sent_by: set[tuple[str, int]] = set()
        self._udp_ports: dict[tuple[str, int], ErrorQueuePort] = {}
        self._udp_by_family: dict[bool, ErrorQueuePort] = {}
        self._open: set[SipStreamConnection] = set()
        # Connections by the Target they serve: the peer of an accepted
        # connection, the destination of one we opened.
        self._connections: dict[Target, SipStreamConnection] = {}
        # Connections being set up, with the messages waiting for them.
        self._connecting: dict[Target, _PendingConnection] = {}
        self._connect_attempts: dict[Target, Deferred[Any]] = {}
        self._tcp_refused_until: dict[tuple[str, int], float] = {}
        self._stopping = False

    # -- listening -----------------------------------------------------------

    def listen(self, transport: str, host: str, port: int) -> IListeningPort:
        """Listen on ``host:port`` (port 0: any free port; see ``getHost().port``)."""
        transport = transport.lower()
        if transport not in TRANSPORTS:
            raise ValueError(f"unknown transport {transport!r}")
        host = host.strip("[]")
        ipv6 = is_ipv6(host)
        listening_port: Any
        if transport == "udp":
            # One byte over the limit, so that an oversized datagram is seen
            # whole enough to be recognised and dropped.
            listening_port = ErrorQueuePort(port, SipDatagramProtocol(self), host, self.max_message_size + 1, self.reactor)
        else:
            factory: Any = _StreamServerFactory(self, transport)
            if transport == "tls":
                if self.tls_server_context is None:
                    raise ValueError("TLS needs a server certificate: pass tls_server_context")
                factory = TLSMemoryBIOFactory(self.tls_server_context, False, factory)
            listening_port = StreamPort(port, factory, 50, host, self.reactor)
        listening_port.startListening()
        real_port = listening_port.getHost().port
        listener = Listener(transport, host, real_port, self._sent_by_host(host, ipv6), ipv6, listening_port)
        self.listeners.append(listener)
        self._our_sent_by.add((canonical_host(listener.sent_by_host), real_port))
        if transport == "udp":
            self._udp_ports[(listening_port.getHost().host, real_port)] = listening_port
            self._udp_by_family.setdefault(ipv6, listening_port)
        log.info("SIP listening on {transport} {host}:{port}", transport=transport, host=host or "*", port=real_port)
        return listening_port

    def sent_by(self, transport: str, destination_host: str | None = None) -> tuple[str, int]:
        """The host (IPv6 in brackets) and port for our Via and Contact on ``transport``.

        With ``destination_host``, a listener of the same address family is
        preferred, so an IPv6 peer is given an IPv6 address to answer.
        """
        transport = transport.lower()
        candidates = [listener for listener in self.listeners if listener.transport == transport]
        if not candidates:
            raise ValueError(f"not listening on {transport}")
        if destination_host is not None and is_ip_literal(canonical_host(destination_host)):
            ipv6 = is_ipv6(destination_host)
            candidates = [c for c in candidates if c.ipv6 == ipv6] or candidates
        return candidates[0].sent_by_host, candidates[0].port

    @property
    def open_connections(self) -> int:
        return len(self._open)

    def _sent_by_host(self, bound_host: str, ipv6: bool) -> str:
        if self.advertised_host:
            host = self.advertised_host
        elif bound_host in _WILDCARDS:
            host = _primary_address(ipv6)
        else:
            host = bound_host
        return f"[{host}]" if is_ipv6(host) and not host.startswith("[") else host

    def _is_ours(self, message: Response) -> bool:
        via = message.via
        port = via.port or DEFAULT_PORTS.get(via.transport.lower(), 5060)
        return (canonical_host(via.host), port) in self._our_sent_by

    # -- receiving -----------------------------------------------------------

    def datagram_received(self, data: bytes, source: Target) -> None:
        if self.source_filter is not None and not self.source_filter(source):
            return
        if len(data) > self.max_message_size:
            self.counters.dropped += 1
            log.warn("dropped a datagram over {limit} bytes from {source}", limit=self.max_message_size, source=source)
            return
        if len(data) <= 8 and not data.strip(_UDP_KEEPALIVE_CHARS):
            return  # a NAT keepalive (CRLFs or NULs): nothing to answer over UDP
        if data[4:8] == _STUN_MAGIC_COOKIE and data[0] < 2:
            # RFC 5626 §4.4.2: SIP outbound clients send STUN keepalives to
            # the SIP port. pbxd does not answer STUN; it drops them quietly
            # rather than logging each as a bad SIP message.
            log.debug("ignored a STUN message from {source}", source=source)
            return
        self._message_received(data, source)

    def stream_message_received(self, data: bytes, connection: SipStreamConnection) -> None:
        if connection.outbound is None and self.source_filter is not None and not self.source_filter(connection.target):
            connection.close("refused by the source filter")
            return
        self._message_received(data, connection.target)

    def _message_received(self, data: bytes, source: Target) -> None:
        try:
            try:
                message = parse_message(data)
            except SipParseError as error:
                self._parse_failed(error, source)
                return
            if isinstance(message, Request):
                stamp_via(message, source)
            elif not self._is_ours(message):
                # §18.1.2: a response whose top Via is not ours was misrouted.
                self.counters.dropped += 1
                log.info("dropped {message!r} from {source}: top Via is not ours", message=message, source=source)
                return
            self.counters.messages_in += 1
            if self.capture is not None:
                self.capture("in", message, source, data)
            self.receiver(message, source)
        except Exception:
            # A bug above must not take the socket or the connection down.
            log.failure("handling a message from {source} failed", source=source)

    def _parse_failed(self, error: SipParseError, source: Target) -> None:
        self.counters.parse_errors += 1
        log.warn("bad SIP message from {source}: {reason}", source=source, reason=error.reason)
        request = error.request
        if error.status is None or not isinstance(request, Request):
            return
        self._answer_statelessly(request, error.status, error.reason, source)

    def framing_failed(self, connection: SipStreamConnection, event: FramingError) -> None:
        """A stream broke framing; answer the request it held if possible (the connection then closes)."""
        self.counters.parse_errors += 1
        log.warn("closing {target}: {reason}", target=connection.target, reason=event.reason)
        if event.header is None:
            return
        message: object
        try:
            message = parse_message(event.header)
        except SipParseError as error:
            # Without its body the header section may not parse (Content-Length
            # exceeds it); the request as read still says whom to answer, and
            # the framing problem is the one to report.
            message = error.request
        if isinstance(message, Request):
            self._answer_statelessly(message, event.status, event.reason, connection.target)

    def _answer_statelessly(self, request: Request, status: int, reason: str, source: Target) -> None:
        """Answer a request the SIP core will never see, if it has a Via to copy."""
        try:
            stamp_via(request, source)
            via_usable = True
        except SipParseError:
            # A Via that is there but broken (RFC 4475 badinv01, badvers' SIP/7.0)
            # cannot route the answer by §18.2.2; the packet's source can, as
            # rport would (RFC 3581). Without any Via there is nothing to copy
            # into a response (§8.2.6.2): no answer.
            if not any(name == "via" for name, _, _ in request.iter_raw()):
                return
            via_usable = False
        response = make_response(request, status)
        warning = " ".join(reason.split())  # no CR/LF into a header
        response.add("Warning", f"399 pbxd {quote(warning)}")
        try:
            to = request.to_addr
        except SipParseError:
            pass
        else:
            if to.tag is None:
                response.set("To", str(to.with_param("tag", new_tag())))
        if via_usable:
            self.send_response(response, source)
        else:  # exactly where it came from: its connection, or its datagram's source
            self._send_back(response, source, None if source.reliable else source)

    # -- sending -------------------------------------------------------------

    def send(self, message: SipMessage, target: Target) -> Target:
        """Send a message to ``target``; returns the Target actually used.

        A request over ``udp_to_tcp_threshold`` bytes headed for UDP goes over
        TCP instead (§18.1.1): its top Via is rewritten in place to TCP (same
        branch, so the client transaction still matches its responses) and
        the TCP Target is returned. The caller should run the transaction on
        that Target (reliable: no retransmissions) and send its CANCEL or ACK
        there too, since they copy this Via.
        """
        data = message.to_bytes()
        if (
            self.udp_to_tcp_threshold
            and target.transport == "udp"
            and len(data) > self.udp_to_tcp_threshold
            and isinstance(message, Request)
            and self._may_move_to_tcp(target)
        ):
            tcp_target = self._move_to_tcp(message, target)
            data = message.to_bytes()
            if self.capture is not None:
                self.capture("out", message, tcp_target, data)
            # Failures are reported for the UDP target as well: a caller that
            # kept it still hears of them.
            self._send_bytes(data, tcp_target, report_as=target)
            return tcp_target
        if self.capture is not None:
            self.capture("out", message, target, data)
        self._send_bytes(data, target)
        return target

    def send_response(self, response: Response, source: Target) -> None:
        """Send a response to the request that came from ``source`` (§18.2.2, RFC 3581)."""
        try:
            via = response.via
        except SipParseError:
            log.error("cannot route {response!r}: no Via", response=response)
            return
        self._send_back(response, source, response_target(via, source))

    def _send_back(self, response: Response, source: Target, fallback: Target | None) -> None:
        """Send ``response`` over the connection its request came on while that is
        open, else to ``fallback`` (None: nowhere else)."""
        data = response.to_bytes()
        if self.capture is not None:
            self.capture("out", response, source, data)
        if source.reliable:
            connection = self._open_connection(source)
            if connection is not None:
                self.counters.messages_out += 1
                connection.send(data)
                return
        if fallback is not None:
            # A failure to reach the fallback address is a failure for the
            # transaction keyed by the request's source too (§17.2.4).
            self._send_bytes(data, fallback, report_as=source)

    def _may_move_to_tcp(self, target: Target) -> bool:
        transports = {listener.transport for listener in self.listeners}
        if not {"udp", "tcp"} <= transports:
            return False  # without a TCP listener our Via could not say TCP truthfully
        refused_until = self._tcp_refused_until.get((target.host, target.port))
        return refused_until is None or refused_until <= self.clock.seconds()

    def _move_to_tcp(self, request: Request, target: Target) -> Target:
        via = request.via
        changed = attrs.evolve(via, transport="TCP")
        if (via.host, via.port) == self.sent_by("udp", target.host):
            host, port = self.sent_by("tcp", target.host)
            changed = attrs.evolve(changed, host=host, port=port)
        request.pop_first("via")
        request.insert("via", str(changed))
        log.debug("request of over {threshold} bytes to {target} goes over TCP", threshold=self.udp_to_tcp_threshold, target=target)
        return Target("tcp", target.host, target.port, server_name=target.server_name)

    def _send_bytes(self, data: bytes, target: Target, report_as: Target | None = None) -> None:
        """Send to ``target``; failures are reported for it and for ``report_as``."""
        self.counters.messages_out += 1
        also = () if report_as is None or report_as == target else (report_as,)
        if target.transport == "udp":
            self._send_datagram(data, target, also)
        else:
            self._send_stream(data, target, also)

    def _send_datagram(self, data: bytes, target: Target, also: tuple[Target, ...] = ()) -> None:
        if not is_ip_literal(target.host):
            resolved = _resolve(self.reactor, target.host, list(self._udp_by_family))
            resolved.addCallbacks(
                lambda address: self._send_datagram(data, attrs.evolve(target, host=address), (target, *also)),
                lambda failure: self._transport_error(target, UNRESOLVABLE, failure.getErrorMessage(), also),
            )
            return
        port = self._udp_port_for(target)
        if port is None:
            self._report_later(target, SEND_FAILED, "no UDP socket for that address family", also)
            return
        try:
            port.write(data, (target.host, target.port))
        except OSError as error:
            if error.errno in (errno.EAGAIN, errno.ENOBUFS):
                # A full send buffer is loss on the wire; retransmission covers it.
                self.counters.dropped += 1
                log.warn("UDP send buffer full, dropped a message to {target}", target=target)
            else:
                code = UNREACHABLE if error.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH) else SEND_FAILED
                self._report_later(target, code, os.strerror(error.errno or 0), also)

    def _udp_port_for(self, target: Target) -> ErrorQueuePort | None:
        if target.local is not None:
            port = self._udp_ports.get(target.local)
            if port is not None:
                return port
        return self._udp_by_family.get(is_ipv6(target.host))

    def _open_connection(self, target: Target) -> SipStreamConnection | None:
        connection = self._connections.get(target)
        if connection is None or connection.closed_by_us:
            return None  # one we are closing takes no more messages
        return connection

    def _send_stream(self, data: bytes, target: Target, also: tuple[Target, ...] = ()) -> None:
        connection = self._open_connection(target)
        if connection is not None:
            connection.also_report.update(also)
            connection.send(data)
            return
        pending = self._connecting.get(target)
        first = pending is None
        if pending is None:
            pending = self._connecting[target] = _PendingConnection()
        pending.messages.append(data)
        pending.also_report.update(also)
        if first:
            self._connect(target)

    def _connect(self, target: Target) -> None:
        host = target.host
        endpoint: Any
        if not is_ip_literal(host):
            endpoint = HostnameEndpoint(self.reactor, host, target.port, timeout=self.connect_timeout)
        elif is_ipv6(host):
            endpoint = TCP6ClientEndpoint(self.reactor, host, target.port, timeout=self.connect_timeout)
        else:
            endpoint = TCP4ClientEndpoint(self.reactor, host, target.port, timeout=self.connect_timeout)
        if target.transport == "tls":
            if self.tls_client_policy is None:
                self.tls_client_policy = TlsClientPolicy()
            endpoint = wrapClientTLS(self.tls_client_policy.creator_for(target.server_name or host), endpoint)
        log.debug("connecting to {target}", target=target)
        attempt = endpoint.connect(_StreamClientFactory(self, target))
        self._connect_attempts[target] = attempt
        attempt.addCallbacks(self._connected, self._connect_failed, callbackArgs=(target,), errbackArgs=(target,))

    def _connected(self, connection: SipStreamConnection, target: Target) -> None:
        self._connect_attempts.pop(target, None)
        pending = self._connecting.pop(target, _PendingConnection())
        connection.also_report.update(pending.also_report)
        if connection.lost:
            return  # connection_lost has reported it
        self._connections[target] = connection
        for data in pending.messages:
            connection.send(data)

    def _connect_failed(self, failure: Failure, target: Target) -> None:
        self._connect_attempts.pop(target, None)
        pending = self._connecting.pop(target, _PendingConnection())
        if failure.check(CancelledError) and self._stopping:
            return
        if failure.check(ConnectionRefusedError):
            code = REFUSED
            now = self.clock.seconds()
            # Refusals are rare; forgetting the expired ones here keeps the table small.
            self._tcp_refused_until = {k: v for k, v in self._tcp_refused_until.items() if v > now}
            self._tcp_refused_until[(target.host, target.port)] = now + TCP_REFUSED_MEMORY
        elif failure.check(TimeoutError):
            code = TIMEOUT
        elif failure.check(DNSLookupError):
            code = UNRESOLVABLE
        else:
            code = UNREACHABLE
        self._transport_error(target, code, failure.getErrorMessage(), pending.also_report)

    # -- connection bookkeeping (called by SipStreamConnection) -------------

    def connection_made(self, connection: SipStreamConnection) -> None:
        self._open.add(connection)
        if connection.outbound is None:
            host = connection.target.host
            accepted = self._accepted_per_host[host] = self._accepted_per_host.get(host, 0) + 1
            if self.source_filter is not None and not self.source_filter(connection.target):
                connection.close("refused by the source filter")
                return
            if self.max_connections_per_ip and accepted > self.max_connections_per_ip:
                self.counters.dropped += 1
                log.warn("refused a connection from {target}: {limit} open from that address already",
                         target=connection.target, limit=self.max_connections_per_ip)
                connection.close("too many connections from one address")
                return
            self._connections[connection.target] = connection
            log.debug("accepted {target}", target=connection.target)

    def connection_lost(self, connection: SipStreamConnection, reason: Failure) -> None:
        self._open.discard(connection)
        if connection.outbound is None:
            host = connection.target.host
            left = self._accepted_per_host.pop(host, 1) - 1
            if left > 0:
                self._accepted_per_host[host] = left
        if self._connections.get(connection.target) is connection:
            del self._connections[connection.target]
        if self._stopping:
            return
        if connection.closed_by_us is not None:
            if connection.closed_by_us == HANDSHAKE_TIMEOUT and connection.outbound is not None:
                self._transport_error(connection.target, TIMEOUT, "TLS handshake took too long", connection.also_report)
            return
        # A TLS alert can come after our side of the handshake is done (TLS 1.3:
        # the server checks the client's certificate last).
        if not connection.handshake_done or reason.check(SSL.Error, VerificationError):
            if connection.outbound is None:
                log.info("TLS with {target} failed: {why}", target=connection.target, why=reason.getErrorMessage())
                return  # nothing of ours was waiting on an incoming connection
            self._transport_error(connection.target, TLS_FAILED, reason.getErrorMessage(), connection.also_report)
        elif reason.check(ConnectionDone):
            log.debug("{target} closed the connection", target=connection.target)
        else:
            self._transport_error(connection.target, RESET, reason.getErrorMessage(), connection.also_report)

    def destination_unreachable(self, target: Target, error_number: int) -> None:
        """An ICMP error for a datagram we sent (see pbxd.transport.udp)."""
        if error_number == errno.EMSGSIZE:
            log.info("path MTU to {target} is smaller than a datagram we sent", target=target)
            return
        self._transport_error(target, UNREACHABLE, os.strerror(error_number))

    def _transport_error(self, target: Target, code: str, detail: str, also: Iterable[Target] = ()) -> None:
        self.counters.transport_errors += 1
        log.warn("SIP transport to {target} failed: {code} ({detail})", target=target, code=code, detail=detail)
        for failed in (target, *also):
            try:
                self.error_receiver(failed, code)
            except Exception:
                log.failure("error_receiver failed for {target}", target=failed)

    def _report_later(self, target: Target, code: str, detail: str, also: Iterable[Target] = ()) -> None:
        # Not from inside send(): the caller may be half-way through a state change.
        self.clock.callLater(0, self._transport_error, target, code, detail, tuple(also))

    # -- shutdown ------------------------------------------------------------

    def stop(self) -> Deferred[Any]:
        """Stop listening, close every connection; fires when all are closed."""
        self._stopping = True
        waits = [maybeDeferred(listener.listening_port.stopListening) for listener in self.listeners]
        self.listeners.clear()
        self._udp_ports.clear()
        self._udp_by_family.clear()
        for attempt in list(self._connect_attempts.values()):
            attempt.cancel()
        for connection in list(self._open):
            waits.append(connection.when_lost)
            connection.close("shutdown")
        return DeferredList(waits, consumeErrors=True)

    @staticmethod
    def _no_receiver(message: SipMessage, source: Target) -> None:
        log.warn("no receiver set; dropped {message!r} from {source}", message=message, source=source)

    @staticmethod
    def _no_error_receiver(target: Target, code: str) -> None:
        pass


@attrs.define
class _PendingConnection:
    messages: list[bytes] = attrs.Factory(list)
    also_report: set[Target] = attrs.Factory(set)


class _StreamServerFactory(Factory):
    noisy = False

    def __init__(self, layer: SipTransports, transport: str) -> None:
        self._layer = layer
        self._transport = transport

    def buildProtocol(self, addr: Any) -> SipStreamConnection:
        return SipStreamConnection(self._layer, self._transport)


class _StreamClientFactory(Factory):
    noisy = False

    def __init__(self, layer: SipTransports, target: Target) -> None:
        self._layer = layer
        self._target = target

    def buildProtocol(self, addr: Any) -> SipStreamConnection:
        return SipStreamConnection(self._layer, self._target.transport, outbound=self._target)


def _primary_address(ipv6: bool) -> str:
    """Our address toward the rest of the network, for a listener bound to all addresses.

    Connecting a UDP socket sends nothing; it only asks the kernel which
    source address its routing table would pick. Without a route, loopback.
    """
    family, probe, fallback = (
        (socket.AF_INET6, "2001:db8::1", "::1") if ipv6 else (socket.AF_INET, "192.0.2.1", "127.0.0.1")
    )
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect((probe, 9))
            return str(sock.getsockname()[0])
        except OSError:
            return fallback


@implementer(IResolutionReceiver)
class _FirstAddress:
    def __init__(self, host: str, result: Deferred[str]) -> None:
        self._host = host
        self._result = result
        self._address: str | None = None

    def resolutionBegan(self, resolution: Any) -> None:
        pass

    def addressResolved(self, address: Any) -> None:
        if self._address is None:
            self._address = address.host

    def resolutionComplete(self) -> None:
        if self._address is None:
            self._result.errback(DNSLookupError(self._host))
        else:
            self._result.callback(self._address)


def _resolve(reactor: Any, host: str, ipv6_choices: list[bool]) -> Deferred[str]:
    """The first address of ``host`` in a family we have a UDP socket for (A/AAAA only;
    RFC 3263 NAPTR/SRV selection is the caller's)."""
    result: Deferred[str] = Deferred()
    types = [IPv6Address if ipv6 else IPv4Address for ipv6 in ipv6_choices]
    reactor.nameResolver.resolveHostName(_FirstAddress(host, result), host, 0, types, "UDP")
    return result
