"""Resource limits (issue 9): server transactions, calls, TCP connections per
address, header fields. Over a limit: 503, a closed connection or a drop,
never a table that grows without end."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest_twisted
from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol

from pbxd.config import parse_config
from pbxd.service import PbxService
from sipp_runner import requires_sipp, run_sipp, scenario
from transaction_support import Env, UDP_PEER, answer, request, status_of

# -- server transactions (sans-IO) -----------------------------------------------------


def test_new_requests_over_the_transaction_limit_get_a_stateless_503(env: Env) -> None:
    env.layer.max_server_transactions = 3
    first = request("OPTIONS")
    for req in (first, request("OPTIONS"), request("OPTIONS"), request("OPTIONS"), request("INVITE")):
        env.layer.receive(req, UDP_PEER)
    assert len(env.tu.requests) == 3 and len(env.layer.transactions) == 3
    refused = env.transport.messages()
    assert [status_of(m) for m in refused] == [503, 503]
    assert all(m.get("retry-after") == "5" and m.to_addr.tag for m in refused)
    assert env.layer.refused_over_limit == 2
    env.layer.receive(first, UDP_PEER)  # a retransmission still finds its transaction
    assert len(env.transport.sent) == 2 and len(env.tu.requests) == 3
    for txn, _ in env.tu.requests:
        answer(txn, 200)
    env.pump(40)  # Timer J: the table empties and takes new requests again
    assert len(env.layer.transactions) == 0
    env.layer.receive(request("OPTIONS"), UDP_PEER)
    assert len(env.tu.requests) == 4
    answer(env.tu.requests[-1][0], 200)
    env.pump(40)


# -- the service ------------------------------------------------------------------------


def _config(tmp_path: Path, **security: Any):  # type: ignore[no-untyped-def]
    return parse_config({
        "data_dir": str(tmp_path / "data"),
        "sip": {"listen": [{"transport": "udp", "host": "127.0.0.1", "port": 0},
                           {"transport": "tcp", "host": "127.0.0.1", "port": 0}]},
        "http": {"port": 0},
        "security": security,
    })


@pytest_twisted.async_yield_fixture
async def make_pbx():
    started: list[PbxService] = []

    async def make(config) -> PbxService:  # type: ignore[no-untyped-def]
        service = PbxService(config, reactor)
        service.privilegedStartService()
        service.startService()
        await service.registrar.when_ready()
        started.append(service)
        return service

    yield make
    for service in started:
        await service.stopService()


def port_of(service: PbxService, transport: str) -> int:
    return next(listener.port for listener in service.sip.transports.listeners if listener.transport == transport)


@requires_sipp
@pytest_twisted.ensureDeferred
async def test_an_invite_over_the_call_limit_gets_503(make_pbx, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    pbx = await make_pbx(_config(tmp_path, limits={"max_dialogs": 1}))
    manager = pbx.calls.manager
    assert manager.max_calls == 1
    manager.calls["held-by-the-test"] = object()  # one call up: the limit is reached
    try:
        result = await run_sipp(scenario("invite_rejected.xml", tmp_path, expect=503), "127.0.0.1",
                                port_of(pbx, "udp"), keys={"user": "1001", "domain": "127.0.0.1", "maxfwd": "70"})
    finally:
        del manager.calls["held-by-the-test"]
    assert result.ok, result.explain()
    assert "Too Many Calls" in result.messages


class _Recorder(Protocol):
    def __init__(self) -> None:
        self.lost: defer.Deferred[None] = defer.Deferred()

    def connectionLost(self, reason: Any) -> None:  # type: ignore[override]
        self.lost.callback(None)


@pytest_twisted.ensureDeferred
async def test_connections_over_the_per_address_limit_are_closed(make_pbx, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    pbx = await make_pbx(_config(tmp_path, limits={"max_connections_per_ip": 2}))
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port_of(pbx, "tcp"))
    kept = [await connectProtocol(endpoint, _Recorder()) for _ in range(2)]
    extra = await connectProtocol(endpoint, _Recorder())
    await extra.lost.addTimeout(10, reactor)  # closed by pbxd
    assert pbx.sip.transports.open_connections == 2
    for protocol in kept:
        assert not protocol.lost.called
        protocol.transport.loseConnection()
        await protocol.lost.addTimeout(10, reactor)
    # The count went down with them: a new connection is taken again.
    again = await connectProtocol(endpoint, _Recorder())
    await _until(lambda: pbx.sip.transports.open_connections == 1)
    assert not again.lost.called
    again.transport.loseConnection()
    await again.lost


async def _until(condition, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    """Wait for ``condition`` on the reactor's clock, bounded."""
    waited = 0.0
    while not condition():
        assert waited < timeout, "condition not reached in time"
        await _sleep(0.02)
        waited += 0.02


def _sleep(seconds: float) -> defer.Deferred[None]:
    from twisted.internet.task import deferLater

    return deferLater(reactor, seconds, lambda: None)


def _options(headers: int) -> bytes:
    filler = "".join(f"X-Filler-{n}: {n}\r\n" for n in range(headers))
    return (
        "OPTIONS sip:127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:9;rport;branch=z9hG4bK-h{n}\r\n"
        "From: <sip:x@127.0.0.1>;tag=1\r\nTo: <sip:127.0.0.1>\r\nCall-ID: h{n}\r\nCSeq: 1 OPTIONS\r\n"
        "Max-Forwards: 70\r\n" + filler + "Content-Length: 0\r\n\r\n"
    ).replace("{n}", str(headers)).encode()


@pytest_twisted.ensureDeferred
async def test_a_message_with_too_many_header_fields_is_dropped(make_pbx, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    pbx = await make_pbx(_config(tmp_path, limits={"max_headers": 50}))
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.bind(("127.0.0.1", 0))
    client.setblocking(False)
    try:
        address = ("127.0.0.1", port_of(pbx, "udp"))
        client.sendto(_options(100), address)
        client.sendto(_options(10), address)
        answers: list[bytes] = []

        def answered() -> bool:
            try:
                answers.append(client.recv(65535))
            except BlockingIOError:
                pass
            return bool(answers)

        await _until(answered)
        assert answers[0].startswith(b"SIP/2.0 200 ") and b"Call-ID: h10" in answers[0]
        assert pbx.security.counts["headers"] == 1
        assert pbx.sip.transports.counters.messages_in == 2  # parsed both, passed one on
    finally:
        client.close()


@pytest_twisted.ensureDeferred
async def test_a_flood_over_tcp_closes_the_connection(make_pbx, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    pbx = await make_pbx(_config(tmp_path, trust_loopback=False, flood={"burst": 5, "requests_per_second": 1}))
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port_of(pbx, "tcp"))
    flooder = await connectProtocol(endpoint, _Recorder())
    flooder.transport.write(b"".join(_options(n).replace(b"SIP/2.0/UDP", b"SIP/2.0/TCP") for n in range(20)))
    await flooder.lost.addTimeout(10, reactor)  # the connection (one token) and 4 messages, then the ban
    assert pbx.security.flood.banned("127.0.0.1")
    assert pbx.sip.transports.counters.messages_in == 4
    refused = await connectProtocol(endpoint, _Recorder())  # banned: a new connection is closed at once
    await refused.lost.addTimeout(10, reactor)
    await _until(lambda: pbx.sip.transports.open_connections == 0)
