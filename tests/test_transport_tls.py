"""SIP over TLS on loopback: a Python ``ssl`` client, pbxd to pbxd, and every way verification fails."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.threads import deferToThread

from pbxd.sip.message import Request, Response, parse_message
from pbxd.transport import TIMEOUT, TLS_FAILED, SipTransports, Target, TlsClientPolicy, TlsConfigError, server_tls_options
from certs import Pki, make_pki, python_tls_exchange
from transport_support import (
    LOOPBACKS,
    Inbox,
    answer_200,
    options,
    raw_options,
    within,
)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def tls_server(make_transports, pki: Pki, host: str = "127.0.0.1", **context_options):  # type: ignore[no-untyped-def]
    server = make_transports(tls_server_context=server_tls_options(pki.server_cert, pki.server_key, **context_options))
    inbox = Inbox()
    answer_200(server, inbox)
    port = server.listen("tls", host, 0).getHost().port
    return server, inbox, port


@pytest.mark.parametrize("host", LOOPBACKS)
@pytest.mark.parametrize("name", ["localhost", "address"])
@pytest_twisted.ensureDeferred
async def test_python_ssl_client_gets_an_answer(make_transports, pki: Pki, host: str, name: str) -> None:
    server, inbox, port = tls_server(make_transports, pki, host)
    server_hostname = host if name == "address" else "localhost"
    via_host = f"[{host}]" if ":" in host else host
    request = raw_options(f"SIP/2.0/TLS {via_host}:5061;rport;branch=z9hG4bKpytls")
    data = await within(deferToThread(python_tls_exchange, host, port, request, pki.ca, server_hostname))
    response = parse_message(data)
    assert isinstance(response, Response) and response.status == 200
    assert response.via.branch == "z9hG4bKpytls"
    _, source = await inbox.get()
    assert source.transport == "tls" and source.host == host


@pytest_twisted.ensureDeferred
async def test_pbxd_client_to_pbxd_server(make_transports, pki: Pki) -> None:
    server, server_inbox, port = tls_server(make_transports, pki)
    client = make_transports(tls_client_policy=TlsClientPolicy.from_files(ca_file=pki.ca))
    client_inbox, errors = Inbox(), Inbox()
    client.receiver, client.error_receiver = client_inbox, errors
    client.listen("tcp", "127.0.0.1", 0)  # pbxd needs no TLS listener of its own to be a TLS client
    client.tls_server_context = server.tls_server_context
    client.listen("tls", "127.0.0.1", 0)
    for target in (Target("tls", "127.0.0.1", port), Target("tls", "127.0.0.1", port, server_name="localhost")):
        request = options(client, target)
        client.send(request, target)
        received, source = await server_inbox.get()
        assert isinstance(received, Request) and received.via.transport == "TLS"
        response, response_source = await client_inbox.get()
        assert response.status == 200 and response_source == target
    assert client.open_connections == 1  # the two Targets are equal: one connection
    assert errors.count == 0


async def _client_fails(make_transports, pki: Pki, target: Target, policy: TlsClientPolicy) -> tuple:  # type: ignore[no-untyped-def]
    client = make_transports(tls_client_policy=policy, tls_server_context=server_tls_options(pki.server_cert, pki.server_key))
    errors = Inbox()
    client.error_receiver = errors
    client.listen("tls", "127.0.0.1", 0)
    client.send(options(client, target), target)
    return await errors.get()


@pytest_twisted.ensureDeferred
async def test_wrong_hostname_fails(make_transports, pki: Pki) -> None:
    server, inbox, port = tls_server(make_transports, pki)
    target = Target("tls", "127.0.0.1", port, server_name="sip.example.com")
    failed = await _client_fails(make_transports, pki, target, TlsClientPolicy.from_files(ca_file=pki.ca))
    assert failed == (target, TLS_FAILED)
    assert inbox.count == 0


@pytest_twisted.ensureDeferred
async def test_untrusted_ca_fails(make_transports, pki: Pki) -> None:
    rogue = make_transports(tls_server_context=server_tls_options(pki.rogue_server_cert, pki.rogue_server_key))
    inbox = Inbox()
    rogue.receiver = inbox
    port = rogue.listen("tls", "127.0.0.1", 0).getHost().port
    target = Target("tls", "127.0.0.1", port)
    failed = await _client_fails(make_transports, pki, target, TlsClientPolicy.from_files(ca_file=pki.ca))
    assert failed == (target, TLS_FAILED)
    assert inbox.count == 0


@pytest_twisted.ensureDeferred
async def test_required_client_certificate(make_transports, pki: Pki) -> None:
    server, inbox, port = tls_server(make_transports, pki, client_ca_file=pki.ca)
    request = raw_options("SIP/2.0/TLS 127.0.0.1:5061;rport;branch=z9hG4bKmtls")

    # A Python client without a certificate: the server refuses the handshake.
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        await within(deferToThread(python_tls_exchange, "127.0.0.1", port, request, pki.ca, "localhost"))

    # With one signed by the CA it gets through.
    data = await within(
        deferToThread(python_tls_exchange, "127.0.0.1", port, request, pki.ca, "localhost", pki.client_cert, pki.client_key)
    )
    assert parse_message(data).status == 200

    # pbxd as the client: without a certificate it fails, with one it gets through.
    target = Target("tls", "127.0.0.1", port)
    failed = await _client_fails(make_transports, pki, target, TlsClientPolicy.from_files(ca_file=pki.ca))
    assert failed == (target, TLS_FAILED)
    policy = TlsClientPolicy.from_files(ca_file=pki.ca, cert_file=pki.client_cert, key_file=pki.client_key)
    client = make_transports(tls_client_policy=policy, tls_server_context=server_tls_options(pki.server_cert, pki.server_key))
    client_inbox = Inbox()
    client.receiver = client_inbox
    client.listen("tls", "127.0.0.1", 0)
    client.send(options(client, target), target)
    response, _ = await client_inbox.get()
    assert response.status == 200
    assert inbox.count == 2  # the Python client with a certificate, and pbxd with one


def test_unusable_certificate_files(pki: Pki, tmp_path: Path) -> None:
    with pytest.raises(TlsConfigError, match="server.key"):
        server_tls_options(pki.server_cert, tmp_path / "server.key")
    with pytest.raises(TlsConfigError, match="does not match"):
        server_tls_options(pki.server_cert, pki.client_key)  # the key of another certificate
    (tmp_path / "garbage.key").write_text("-----BEGIN PRIVATE KEY-----\nnonsense\n-----END PRIVATE KEY-----\n")
    with pytest.raises(TlsConfigError, match="bad private key"):
        server_tls_options(pki.server_cert, tmp_path / "garbage.key")
    (tmp_path / "empty.pem").write_text("nothing here\n")
    with pytest.raises(TlsConfigError, match="no PEM certificate"):
        server_tls_options(tmp_path / "empty.pem", pki.server_key)
    with pytest.raises(TlsConfigError, match="both"):
        TlsClientPolicy.from_files(cert_file=pki.client_cert)


def test_tls_listener_needs_a_certificate(make_transports) -> None:
    with pytest.raises(ValueError, match="certificate"):
        make_transports().listen("tls", "127.0.0.1", 0)


@pytest_twisted.ensureDeferred
async def test_server_that_never_handshakes_times_out(pki: Pki) -> None:
    """A peer that takes the TCP connection and then says nothing: TIMEOUT after connect_timeout."""
    silent = Factory.forProtocol(Protocol)
    silent_port = reactor.listenTCP(0, silent, interface="127.0.0.1")
    clock = Clock()
    client = SipTransports(
        reactor, clock=clock, connect_timeout=5.0, tls_client_policy=TlsClientPolicy.from_files(ca_file=pki.ca)
    )
    try:
        errors = Inbox()
        client.error_receiver = errors
        client.tls_server_context = server_tls_options(pki.server_cert, pki.server_key)
        client.listen("tls", "127.0.0.1", 0)
        target = Target("tls", "127.0.0.1", silent_port.getHost().port)
        client.send(options(client, target), target)
        await within(_connection_opened(client))
        clock.pump([1.0] * 4)
        assert errors.count == 0
        clock.pump([1.5])
        assert await errors.get() == (target, TIMEOUT)
    finally:
        await client.stop()
        await silent_port.stopListening()


def _connection_opened(transports: SipTransports) -> Deferred:
    """Fires when ``transports`` has an open connection."""
    opened: Deferred = Deferred()
    original = transports.connection_made

    def connection_made(connection) -> None:  # type: ignore[no-untyped-def]
        original(connection)
        if not opened.called:
            opened.callback(None)

    transports.connection_made = connection_made  # type: ignore[method-assign]
    return opened
