"""SIP over TCP on real loopback sockets (IPv4 and IPv6): framing, keepalives, reuse, limits, failures."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredQueue, maybeDeferred
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint, connectProtocol
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Factory
from twisted.internet.task import Clock

from pbxd.sip.message import Request, Response, make_response, parse_message
from pbxd.transport import REFUSED, RESET, SipTransports, Target
from transport_support import (
    LOOPBACKS,
    Inbox,
    RawStreamPeer,
    answer_200,
    options,
    raw_options,
    within,
)


@pytest.fixture
def connect_raw() -> Iterator:
    """Open plain TCP connections (a foreign UA); all are closed after the test."""
    peers: list[RawStreamPeer] = []

    async def connect(host: str, port: int) -> RawStreamPeer:
        endpoint_type = TCP6ClientEndpoint if ":" in host else TCP4ClientEndpoint
        peer = RawStreamPeer()
        await within(connectProtocol(endpoint_type(reactor, host, port), peer))
        peers.append(peer)
        return peer

    yield connect
    for peer in peers:
        if not peer.closed.called:
            peer.transport.abortConnection()
            pytest_twisted.blockon(peer.closed)


@pytest.fixture
def raw_server() -> Iterator:
    """A plain TCP listener whose accepted connections are queued."""
    ports = []

    def listen(host: str) -> tuple[DeferredQueue, int]:
        accepted: DeferredQueue[RawStreamPeer] = DeferredQueue()

        def build() -> RawStreamPeer:
            peer = RawStreamPeer()
            peer.connected_once.addCallback(lambda _: accepted.put(peer))
            return peer

        port = reactor.listenTCP(0, Factory.forProtocol(build), interface=host)
        ports.append(port)
        return accepted, port.getHost().port

    yield listen
    for port in ports:
        pytest_twisted.blockon(maybeDeferred(port.stopListening))


def spy_on_closes(transports) -> DeferredQueue:  # type: ignore[no-untyped-def]
    """A queue that gets each connection of ``transports`` once it is closed."""
    closed: DeferredQueue = DeferredQueue()
    original = transports.connection_lost

    def connection_lost(connection, reason) -> None:  # type: ignore[no-untyped-def]
        original(connection, reason)
        closed.put(connection)

    transports.connection_lost = connection_lost
    return closed


@pytest.mark.parametrize("host", LOOPBACKS)
@pytest_twisted.ensureDeferred
async def test_requests_and_responses_reuse_one_connection(make_transports, host: str) -> None:
    server, client = make_transports(), make_transports()
    server_inbox, client_inbox = Inbox(), Inbox()
    answer_200(server, server_inbox)
    client.receiver = client_inbox
    port = server.listen("tcp", host, 0).getHost().port
    client.listen("tcp", host, 0)
    target = Target("tcp", host, port)

    first = options(client, target)
    assert client.send(first, target) == target
    received, source = await server_inbox.get()
    assert source.transport == "tcp" and source.host == host and source.port != port
    assert received.via.received == host and received.via.rport == source.port
    response, response_source = await client_inbox.get()
    assert response.status == 200 and response_source == target

    client.send(options(client, target), target)
    _, second_source = await server_inbox.get()
    await client_inbox.get()
    assert second_source == source  # the same connection
    assert server.open_connections == 1 and client.open_connections == 1

    # The server reaches the client over the connection the client opened.
    server.send(options(server, source), source)
    request, request_source = await client_inbox.get()
    assert isinstance(request, Request) and request_source == target
    assert server.open_connections == 1 and client.open_connections == 1


@pytest_twisted.ensureDeferred
async def test_hostname_target(make_transports) -> None:
    """A name is resolved (A and AAAA, happy eyeballs) and the connection keyed by the name."""
    server, client = make_transports(), make_transports()
    server_inbox, client_inbox = Inbox(), Inbox()
    answer_200(server, server_inbox)
    client.receiver = client_inbox
    port = server.listen("tcp", "127.0.0.1", 0).getHost().port
    client.listen("tcp", "127.0.0.1", 0)
    target = Target("tcp", "localhost", port)
    client.send(options(client, target), target)
    _, source = await server_inbox.get()
    assert source.host == "127.0.0.1"
    response, response_source = await client_inbox.get()
    assert response.status == 200 and response_source == target


@pytest_twisted.ensureDeferred
async def test_messages_arriving_in_pieces_and_together(make_transports, connect_raw) -> None:
    server = make_transports()
    inbox = Inbox()
    server.receiver = inbox
    port = server.listen("tcp", "127.0.0.1", 0).getHost().port
    peer = await connect_raw("127.0.0.1", port)
    messages = [raw_options(f"SIP/2.0/TCP 127.0.0.1;branch=z9hG4bK{i}", body=b"x" * i) for i in range(4)]
    stream = b"".join(messages)
    for start in range(0, len(stream), 37):
        peer.transport.write(stream[start : start + 37])
    for i in range(4):
        message, _ = await inbox.get()
        assert message.via.branch == f"z9hG4bK{i}" and message.body == b"x" * i


@pytest_twisted.ensureDeferred
async def test_keepalive_ping_gets_a_pong(make_transports, connect_raw) -> None:
    server = make_transports()
    inbox = Inbox()
    answer_200(server, inbox)
    port = server.listen("tcp", "127.0.0.1", 0).getHost().port
    peer = await connect_raw("127.0.0.1", port)
    # A lone CRLF (a pong, or stray) gets nothing; a double CRLF gets one CRLF.
    peer.transport.write(b"\r\n")
    peer.transport.write(b"\r\n\r\n")
    peer.transport.write(raw_options("SIP/2.0/TCP 127.0.0.1;branch=z9hG4bKafterping"))
    response = await peer.next()
    assert bytes(peer.raw).startswith(b"\r\nSIP/2.0 200 OK\r\n")
    assert parse_message(response).status == 200
    assert server.counters.parse_errors == 0


@pytest_twisted.ensureDeferred
async def test_missing_content_length_gets_400_and_close(make_transports, connect_raw) -> None:
    server = make_transports()
    inbox = Inbox()
    server.receiver = inbox
    port = server.listen("tcp", "127.0.0.1", 0).getHost().port
    peer = await connect_raw("127.0.0.1", port)
    request = raw_options("SIP/2.0/TCP 127.0.0.1;branch=z9hG4bKnolength").replace(b"Content-Length: 0\r\n", b"")
    peer.transport.write(request)
    response = parse_message(await peer.next())
    assert isinstance(response, Response) and response.status == 400
    assert "Content-Length" in response.get("warning", "")
    await within(peer.closed)
    assert peer.close_reason.check(ConnectionDone)
    assert inbox.count == 0 and server.counters.parse_errors == 1


@pytest_twisted.ensureDeferred
async def test_message_over_the_limit_gets_513_and_close(make_transports, connect_raw) -> None:
    server = make_transports(max_message_size=4000)
    port = server.listen("tcp", "127.0.0.1", 0).getHost().port
    peer = await connect_raw("127.0.0.1", port)
    peer.transport.write(raw_options("SIP/2.0/TCP 127.0.0.1;branch=z9hG4bKhuge", body=b"x" * 5000))
    response = parse_message(await peer.next())
    assert response.status == 513
    await within(peer.closed)


@pytest_twisted.ensureDeferred
async def test_endless_header_section_closes_the_connection(make_transports, connect_raw) -> None:
    server = make_transports(max_header_size=2048)
    port = server.listen("tcp", "127.0.0.1", 0).getHost().port
    peer = await connect_raw("127.0.0.1", port)
    peer.transport.write(b"OPTIONS sip:x SIP/2.0\r\n" + b"X-Junk: yyyyyyyyyyyyyyyyyyyyyyyyyyyy\r\n" * 100)
    await within(peer.closed)
    assert peer.raw == b""  # no header section, nothing to answer


@pytest_twisted.ensureDeferred
async def test_malformed_request_gets_400_and_the_connection_stays(make_transports, connect_raw) -> None:
    server = make_transports()
    inbox = Inbox()
    answer_200(server, inbox)
    port = server.listen("tcp", "127.0.0.1", 0).getHost().port
    peer = await connect_raw("127.0.0.1", port)
    bad = raw_options("SIP/2.0/TCP 127.0.0.1;branch=z9hG4bKbad").replace(b"Max-Forwards: 70", b"Max-Forwards: x")
    peer.transport.write(bad + raw_options("SIP/2.0/TCP 127.0.0.1;branch=z9hG4bKgood"))
    assert parse_message(await peer.next()).status == 400
    good = parse_message(await peer.next())
    assert good.status == 200 and good.via.branch == "z9hG4bKgood"
    assert not peer.closed.called


@pytest_twisted.ensureDeferred
async def test_idle_connection_is_closed(connect_raw) -> None:
    clock = Clock()
    server = SipTransports(reactor, tcp_idle_timeout=30.0, clock=clock)
    try:
        answer_200(server)
        port = server.listen("tcp", "127.0.0.1", 0).getHost().port
        peer = await connect_raw("127.0.0.1", port)
        peer.transport.write(raw_options("SIP/2.0/TCP 127.0.0.1;branch=z9hG4bKidle"))
        await peer.next()  # the server has the connection and has answered
        clock.pump([10.0, 10.0, 9.0])
        peer.transport.write(b"\r\n\r\n")  # traffic restarts the idle timer
        await within(_bytes_received(peer, 2))
        clock.pump([10.0, 10.0, 9.0])
        assert server.open_connections == 1 and not peer.closed.called
        clock.pump([1.5])
        await within(peer.closed)
        assert peer.close_reason.check(ConnectionDone)
        assert server.open_connections == 0
    finally:
        await server.stop()


def _bytes_received(peer: RawStreamPeer, extra: int) -> Deferred:
    """Fires once ``extra`` more bytes have arrived at ``peer``."""
    wanted = len(peer.raw) + extra
    done: Deferred = Deferred()
    original = peer.dataReceived

    def data_received(data: bytes) -> None:
        original(data)
        if len(peer.raw) >= wanted and not done.called:
            done.callback(None)

    peer.dataReceived = data_received  # type: ignore[method-assign]
    return done


@pytest_twisted.ensureDeferred
async def test_messages_sent_while_connecting_are_queued(make_transports) -> None:
    server, client = make_transports(), make_transports()
    inbox = Inbox()
    server.receiver = inbox
    port = server.listen("tcp", "127.0.0.1", 0).getHost().port
    client.listen("tcp", "127.0.0.1", 0)
    target = Target("tcp", "127.0.0.1", port)
    branches = []
    for _ in range(5):
        request = options(client, target)
        branches.append(request.via.branch)
        client.send(request, target)
    got = [(await inbox.get()) for _ in branches]
    assert [message.via.branch for message, _ in got] == branches
    assert len({source for _, source in got}) == 1
    assert client.open_connections == 1


@pytest.mark.parametrize("host", LOOPBACKS)
@pytest_twisted.ensureDeferred
async def test_connection_refused_reaches_error_receiver(make_transports, host: str) -> None:
    client = make_transports()
    errors = Inbox()
    client.error_receiver = errors
    client.listen("tcp", host, 0)
    closed = Target("tcp", host, _closed_port(host))
    client.send(options(client, closed), closed)
    assert await errors.get() == (closed, REFUSED)


def _closed_port(host: str) -> int:
    """A port nothing listens on (bound and released at once)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


@pytest_twisted.ensureDeferred
async def test_reset_by_the_peer_reaches_error_receiver(make_transports, raw_server) -> None:
    client = make_transports()
    errors = Inbox()
    client.error_receiver = errors
    client.listen("tcp", "127.0.0.1", 0)
    accepted, port = raw_server("127.0.0.1")
    target = Target("tcp", "127.0.0.1", port)
    client.send(options(client, target), target)
    peer = await within(accepted.get())
    await peer.next()
    peer.transport.abortConnection()  # RST
    assert await errors.get() == (target, RESET)
    assert client.open_connections == 0


@pytest_twisted.ensureDeferred
async def test_response_after_the_connection_closed_opens_a_new_one(make_transports, connect_raw, raw_server) -> None:
    """§18.2.2: connection gone, so connect to received at the sent-by port."""
    server = make_transports()
    inbox = Inbox()
    server.receiver = inbox
    closes = spy_on_closes(server)
    port = server.listen("tcp", "127.0.0.1", 0).getHost().port
    accepted, client_listen_port = raw_server("127.0.0.1")
    peer = await connect_raw("127.0.0.1", port)
    peer.transport.write(raw_options(f"SIP/2.0/TCP client.example.com:{client_listen_port};branch=z9hG4bKgone"))
    request, source = await inbox.get()
    peer.transport.loseConnection()
    await within(closes.get())
    server.send_response(make_response(request, 200), source)
    callback = await within(accepted.get())
    response = parse_message(await callback.next())
    assert response.status == 200 and response.via.branch == "z9hG4bKgone"


@pytest_twisted.ensureDeferred
async def test_stop_closes_connections(make_transports, connect_raw) -> None:
    server = make_transports()
    answer_200(server)
    port = server.listen("tcp", "127.0.0.1", 0).getHost().port
    peer = await connect_raw("127.0.0.1", port)
    peer.transport.write(raw_options("SIP/2.0/TCP 127.0.0.1;branch=z9hG4bKstop"))
    await peer.next()
    await within(server.stop())
    await within(peer.closed)
    assert server.open_connections == 0
