"""SIP over UDP on real loopback sockets (IPv4 and IPv6): receive, respond, ICMP, size limits."""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import maybeDeferred
from twisted.logger import globalLogPublisher

from pbxd.sip.message import Response, parse_message
from pbxd.transport import REFUSED, UNREACHABLE, Target
from pbxd.transport.udp import RECEIVES_ERRORS
from transport_support import (
    LOOPBACKS,
    Inbox,
    RawUdpPeer,
    answer_200,
    options,
    port_free_for_udp_and_tcp,
    raw_options,
)


@pytest.fixture
def raw_peer() -> Iterator:
    peers = []

    def make(host: str) -> tuple[RawUdpPeer, int]:
        peer = RawUdpPeer()
        port = reactor.listenUDP(0, peer, interface=host)
        peers.append(port)
        return peer, port.getHost().port

    yield make
    for port in peers:
        pytest_twisted.blockon(maybeDeferred(port.stopListening))


def hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@pytest.mark.parametrize("host", LOOPBACKS)
@pytest_twisted.ensureDeferred
async def test_request_and_response_between_two_pbxd(make_transports, host: str) -> None:
    server, client = make_transports(), make_transports()
    server_inbox, client_inbox = Inbox(), Inbox()
    answer_200(server, server_inbox)
    client.receiver = client_inbox
    server_port = server.listen("udp", host, 0).getHost().port
    client_port = client.listen("udp", host, 0).getHost().port
    target = Target("udp", host, server_port)
    request = options(client, target)
    assert client.send(request, target) == target

    received, source = await server_inbox.get()
    assert source == Target("udp", host, client_port)
    assert source.local == (host, server_port)
    assert received.via.rport == client_port and received.via.received == host
    assert received.via.branch == request.via.branch

    response, response_source = await client_inbox.get()
    assert isinstance(response, Response) and response.status == 200
    assert response.via.branch == request.via.branch
    assert response_source == Target("udp", host, server_port)
    assert server.counters.messages_in == 1 and server.counters.messages_out == 1
    assert client.counters.messages_in == 1 and client.counters.messages_out == 1


@pytest.mark.parametrize("host", LOOPBACKS)
@pytest_twisted.ensureDeferred
async def test_rport_sends_the_response_to_the_real_source(make_transports, raw_peer, host: str) -> None:
    """RFC 3581: a UA behind NAT writes an address it cannot be reached at; rport fixes that."""
    server = make_transports()
    answer_200(server)
    server_port = server.listen("udp", host, 0).getHost().port
    peer, peer_port = raw_peer(host)
    unreachable = "[2001:db8::99]:5099" if ":" in host else "10.255.255.1:5099"
    peer.transport.write(raw_options(f"SIP/2.0/UDP {unreachable};rport;branch=z9hG4bKnat"), (host, server_port))
    data, addr = await peer.next()
    assert addr[1] == server_port  # RFC 3581 §4: sent from the port the request came in on
    response = parse_message(data)
    assert isinstance(response, Response) and response.status == 200
    assert response.via.rport == peer_port and response.via.received == host


@pytest_twisted.ensureDeferred
async def test_response_without_rport_goes_to_received_and_sent_by_port(make_transports, raw_peer) -> None:
    server = make_transports()
    answer_200(server)
    server_port = server.listen("udp", "127.0.0.1", 0).getHost().port
    sender, _ = raw_peer("127.0.0.1")
    listener, listener_port = raw_peer("127.0.0.1")
    # sent-by names a host that is not the source: received= is added and the
    # response goes to received at the sent-by port, not back to the sender.
    sender.transport.write(
        raw_options(f"SIP/2.0/UDP somewhere.example.com:{listener_port};branch=z9hG4bKsentby"),
        ("127.0.0.1", server_port),
    )
    data, _ = await listener.next()
    assert parse_message(data).via.received == "127.0.0.1"
    assert sender.received.pending == []


@pytest_twisted.ensureDeferred
async def test_malformed_request_gets_400_with_warning(make_transports, raw_peer) -> None:
    server = make_transports()
    inbox = Inbox()
    server.receiver = inbox
    server_port = server.listen("udp", "127.0.0.1", 0).getHost().port
    peer, peer_port = raw_peer("127.0.0.1")
    bad = raw_options("SIP/2.0/UDP 127.0.0.1;rport;branch=z9hG4bKbad").replace(b"Max-Forwards: 70", b"Max-Forwards: seventy")
    peer.transport.write(bad, ("127.0.0.1", server_port))
    data, _ = await peer.next()
    response = parse_message(data)
    assert isinstance(response, Response) and (response.status, response.reason) == (400, "Bad Request")
    assert response.get("warning", "").startswith('399 pbxd "')
    assert "Max-Forwards" in response.get("warning", "")
    assert response.to_addr.tag  # §8.2.6.2
    assert response.via.rport == peer_port
    assert server.counters.parse_errors == 1 and inbox.count == 0


@pytest_twisted.ensureDeferred
async def test_wrong_version_gets_505(make_transports, raw_peer) -> None:
    server = make_transports()
    server_port = server.listen("udp", "127.0.0.1", 0).getHost().port
    peer, _ = raw_peer("127.0.0.1")
    bad = raw_options("SIP/2.0/UDP 127.0.0.1;rport;branch=z9hG4bKv").replace(b"SIP/2.0\r\n", b"SIP/7.0\r\n", 1)
    peer.transport.write(bad, ("127.0.0.1", server_port))
    data, _ = await peer.next()
    assert parse_message(data).status == 505


@pytest_twisted.ensureDeferred
async def test_garbage_keepalives_bad_and_foreign_responses_are_dropped(make_transports, raw_peer) -> None:
    server = make_transports()
    inbox = Inbox()
    server.receiver = inbox
    server_port = server.listen("udp", "127.0.0.1", 0).getHost().port
    peer, _ = raw_peer("127.0.0.1")
    destination = ("127.0.0.1", server_port)
    foreign = (
        b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 192.0.2.50:5060;branch=z9hG4bKx\r\n"
        b"From: <sip:a@example.com>;tag=1\r\nTo: <sip:b@example.com>;tag=2\r\n"
        b"Call-ID: foreign\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    )
    stun_binding = b"\x00\x01\x00\x00\x21\x12\xa4\x42" + bytes(12)  # RFC 5626 §4.4.2 keepalive
    for junk in (
        b"\x00\xff" * 40,
        b"SIP/2.0 200 OK\r\nVia: nonsense\r\n\r\n",
        foreign,
        b"\r\n\r\n",
        b"\x00\x00\x00\x00",
        stun_binding,
    ):
        peer.transport.write(junk, destination)
    # Loopback UDP keeps order: once this arrives, the others were handled.
    peer.transport.write(raw_options("SIP/2.0/UDP 127.0.0.1;branch=z9hG4bKlast"), destination)
    message, _ = await inbox.get()
    assert message.via.branch == "z9hG4bKlast"
    assert inbox.count == 1
    assert server.counters.parse_errors == 2  # the binary junk and the bad response
    assert server.counters.dropped == 1  # the response whose Via is not ours
    assert peer.received.pending == []  # nothing answered


@pytest_twisted.ensureDeferred
async def test_datagram_over_the_size_limit_is_dropped(make_transports, raw_peer) -> None:
    server = make_transports(max_message_size=2000)
    inbox = Inbox()
    server.receiver = inbox
    server_port = server.listen("udp", "127.0.0.1", 0).getHost().port
    peer, _ = raw_peer("127.0.0.1")
    destination = ("127.0.0.1", server_port)
    peer.transport.write(raw_options("SIP/2.0/UDP 127.0.0.1;branch=z9hG4bKbig", body=b"x" * 2500), destination)
    peer.transport.write(raw_options("SIP/2.0/UDP 127.0.0.1;branch=z9hG4bKsmall", body=b"x" * 1500), destination)
    message, _ = await inbox.get()
    assert message.via.branch == "z9hG4bKsmall" and len(message.body) == 1500
    assert server.counters.dropped == 1


@pytest_twisted.ensureDeferred
async def test_a_failing_receiver_does_not_stop_the_port(make_transports, raw_peer) -> None:
    server = make_transports()
    inbox = Inbox()

    def receiver(message, source) -> None:  # type: ignore[no-untyped-def]
        inbox(message, source)
        if inbox.count == 1:
            raise RuntimeError("a bug in the SIP core")

    server.receiver = receiver
    server_port = server.listen("udp", "127.0.0.1", 0).getHost().port
    peer, _ = raw_peer("127.0.0.1")
    logged: list[dict] = []
    globalLogPublisher.addObserver(logged.append)
    try:
        for branch in ("z9hG4bKone", "z9hG4bKtwo"):
            peer.transport.write(raw_options(f"SIP/2.0/UDP 127.0.0.1;branch={branch}"), ("127.0.0.1", server_port))
        assert (await inbox.get())[0].via.branch == "z9hG4bKone"
        assert (await inbox.get())[0].via.branch == "z9hG4bKtwo"
    finally:
        globalLogPublisher.removeObserver(logged.append)
    failures = [event for event in logged if "log_failure" in event]
    assert len(failures) == 1 and failures[0]["log_failure"].check(RuntimeError)


@pytest.mark.skipif(not RECEIVES_ERRORS, reason="IP_RECVERR is Linux-only")
@pytest.mark.parametrize("host", LOOPBACKS)
@pytest_twisted.ensureDeferred
async def test_icmp_port_unreachable_reaches_error_receiver(make_transports, raw_peer, host: str) -> None:
    client, server = make_transports(), make_transports()
    errors, server_inbox = Inbox(), Inbox()
    client.error_receiver = errors
    server.receiver = server_inbox
    client.listen("udp", host, 0)
    live_port = server.listen("udp", host, 0).getHost().port
    closed_peer, closed_port = raw_peer(host)
    await closed_peer.transport.stopListening()

    closed = Target("udp", host, closed_port)
    client.send(options(client, closed), closed)
    target, code = await errors.get()
    assert (target, code) == (closed, UNREACHABLE)

    # The socket survives the error (the reactor saw EPOLLERR) and still sends and receives.
    live = Target("udp", host, live_port)
    client.send(options(client, live), live)
    await server_inbox.get()
    # An ICMP error pending when we send is collected, and the datagram still goes out.
    client.send(options(client, closed), closed)
    client.send(options(client, closed), closed)
    client.send(options(client, live), live)
    await server_inbox.get()
    for _ in range(2):
        assert await errors.get() == (closed, UNREACHABLE)


@pytest_twisted.ensureDeferred
async def test_large_request_moves_to_tcp(make_transports) -> None:
    """§18.1.1: a request over 1300 bytes goes over TCP; the Via says so, the branch stays."""
    server, client = make_transports(), make_transports()
    server_inbox, client_inbox = Inbox(), Inbox()
    answer_200(server, server_inbox)
    client.receiver = client_inbox
    port = port_free_for_udp_and_tcp("127.0.0.1")
    server.listen("udp", "127.0.0.1", port)
    server.listen("tcp", "127.0.0.1", port)
    client.listen("udp", "127.0.0.1", 0)
    client_tcp_port = client.listen("tcp", "127.0.0.1", 0).getHost().port
    udp_target = Target("udp", "127.0.0.1", port)

    request = options(client, udp_target, body=b"v" * 1400)
    branch = request.via.branch
    used = client.send(request, udp_target)
    assert used == Target("tcp", "127.0.0.1", port)
    assert request.via.transport == "TCP" and request.via.port == client_tcp_port and request.via.branch == branch

    received, source = await server_inbox.get()
    assert source.transport == "tcp" and received.via.transport == "TCP" and received.via.branch == branch
    response, response_source = await client_inbox.get()
    assert response.status == 200 and response_source == used

    # Small requests and responses stay on UDP.
    small = options(client, udp_target)
    assert client.send(small, udp_target) == udp_target
    _, source = await server_inbox.get()
    assert source.transport == "udp"


@pytest_twisted.ensureDeferred
async def test_threshold_zero_keeps_large_requests_on_udp(make_transports) -> None:
    server, client = make_transports(), make_transports(udp_to_tcp_threshold=0)
    server_inbox = Inbox()
    server.receiver = server_inbox
    port = server.listen("udp", "127.0.0.1", 0).getHost().port
    client.listen("udp", "127.0.0.1", 0)
    client.listen("tcp", "127.0.0.1", 0)
    target = Target("udp", "127.0.0.1", port)
    assert client.send(options(client, target, body=b"v" * 3000), target) == target
    received, source = await server_inbox.get()
    assert source.transport == "udp" and len(received.body) == 3000


@pytest_twisted.ensureDeferred
async def test_tcp_refused_for_a_large_request_then_udp(make_transports) -> None:
    """A UDP-only peer refuses TCP: the failure is reported (for both targets) and the
    next large request to it goes over UDP (§18.1.1's retry over UDP)."""
    server, client = make_transports(), make_transports()
    server_inbox, errors = Inbox(), Inbox()
    server.receiver = server_inbox
    client.error_receiver = errors
    port = port_free_for_udp_and_tcp("127.0.0.1")
    server.listen("udp", "127.0.0.1", port)
    client.listen("udp", "127.0.0.1", 0)
    client.listen("tcp", "127.0.0.1", 0)
    udp_target = Target("udp", "127.0.0.1", port)

    tcp_target = client.send(options(client, udp_target, body=b"v" * 1400), udp_target)
    assert tcp_target.transport == "tcp"
    reported = {await errors.get(), await errors.get()}
    assert reported == {(tcp_target, REFUSED), (udp_target, REFUSED)}

    retry = options(client, udp_target, body=b"v" * 1400)
    assert client.send(retry, udp_target) == udp_target
    received, source = await server_inbox.get()
    assert source.transport == "udp" and received.via.transport == "UDP"


@pytest_twisted.ensureDeferred
async def test_hostname_target_is_resolved(make_transports) -> None:
    server, client = make_transports(), make_transports()
    server_inbox = Inbox()
    server.receiver = server_inbox
    port = server.listen("udp", "127.0.0.1", 0).getHost().port
    client.listen("udp", "127.0.0.1", 0)  # IPv4 only, so localhost resolves to 127.0.0.1
    target = Target("udp", "localhost", port)
    client.send(options(client, target), target)
    received, source = await server_inbox.get()
    assert source.host == "127.0.0.1"


def test_sent_by(make_transports) -> None:
    transports = make_transports()
    with pytest.raises(ValueError):
        transports.sent_by("udp")
    v4 = transports.listen("udp", "127.0.0.1", 0).getHost().port
    assert transports.sent_by("udp") == ("127.0.0.1", v4)
    if "::1" in LOOPBACKS:
        v6 = transports.listen("udp", "::1", 0).getHost().port
        assert transports.sent_by("udp", "::1") == ("[::1]", v6)
        assert transports.sent_by("udp", "192.0.2.1") == ("127.0.0.1", v4)
    wildcard = make_transports()
    wildcard.listen("udp", "0.0.0.0", 0)
    assert wildcard.sent_by("udp")[0] not in ("0.0.0.0", "")
    advertised = make_transports(advertised_host="pbx.example.com")
    port = advertised.listen("udp", "127.0.0.1", 0).getHost().port
    assert advertised.sent_by("udp") == ("pbx.example.com", port)


def test_no_reactor_import_for_target() -> None:
    """The sans-IO layers import Target (and routing) without pulling in Twisted."""
    import subprocess

    code = "import sys, pbxd.sip.routing, pbxd.transport; print('twisted' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
