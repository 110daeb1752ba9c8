"""/ws: autobahn WebSocket clients on the reactor against a running PbxService's
HTTP root. A sipp REGISTER reaches the client as a registration event; the
upgrade is authenticated (header, query token, none, wrong); subscribe
messages and bad input; a client that stops reading is dropped."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import pytest_twisted
import treq
from twisted.internet import reactor, task

from pbxd.events import TrunkEvent
from tests.management_support import (
    ADMIN_TOKEN,
    READ_TOKEN,
    TIMEOUT,
    TOKENS,
    bearer,
    connect,
    next_message,
    serving,
)
from tests.sipp_runner import requires_sipp
from tests.test_registrar import pbx_config, sipp_register, start_pbx

@pytest_twisted.async_yield_fixture
async def web(tmp_path: Path):
    service = await start_pbx(pbx_config(tmp_path / "data", http={"port": 0, "tokens": TOKENS}))
    running = serving(service)
    yield running
    await running.stop()


async def open_client(web, query: str = f"?token={READ_TOKEN}", headers=None):  # type: ignore[no-untyped-def]
    client, factory = await connect(f"{web.ws_base}/ws{query}", headers)
    web.clients.append(client)
    return client, factory


@requires_sipp
@pytest.mark.sipp
@pytest_twisted.ensureDeferred
async def test_a_sipp_registration_reaches_the_client(web, tmp_path: Path) -> None:
    _, factory = await open_client(web, "", {"Authorization": f"Bearer {READ_TOKEN}"})
    await sipp_register(web.service, tmp_path, "udp")
    event = await next_message(factory)
    assert event["topic"] == "registration" and event["type"] == "registered"
    assert event["aor"] == "sip:1001@pbx.test" and event["user"] == "1001"
    assert event["contact"].startswith("sip:1001@127.0.0.1:")
    assert event["source"].startswith("udp:127.0.0.1:")
    assert event["user_agent"].startswith("Yealink")


@pytest_twisted.ensureDeferred
async def test_subscribe_narrows_the_topics(web) -> None:
    client, factory = await open_client(web)
    client.sendMessage(json.dumps({"subscribe": ["call"]}).encode())
    assert await next_message(factory) == {"subscribed": ["call"]}
    bus = web.service.events
    bus.publish(TrunkEvent("down", 1.0, "carrier"))  # not wanted now
    client.sendMessage(json.dumps({"subscribe": ["trunk", "call"]}).encode())
    assert await next_message(factory) == {"subscribed": ["call", "trunk"]}
    bus.publish(TrunkEvent("up", 2.0, "carrier", "OPTIONS answered"))
    assert await next_message(factory) == {"topic": "trunk", "type": "up", "time": 2.0,
                                           "trunk": "carrier", "detail": "OPTIONS answered"}


@pytest.mark.parametrize("message, error", [
    (b"not json", "not JSON"),
    (b'{"subscribe": "call"}', "subscribe takes a list"),
    (b'{"subscribe": ["call", "weather"]}', "unknown topics: weather"),
    (b'{"unsubscribe": []}', "expected"),
    (b"[1, 2]", "expected"),
    (b"\xff\xfe", None),  # not UTF-8: the WebSocket layer itself closes
])
@pytest_twisted.ensureDeferred
async def test_bad_client_messages(web, message: bytes, error: str | None) -> None:
    client, factory = await open_client(web)
    if error is None:
        client.sendMessage(message, isBinary=False)
        code, _ = await factory.closed.addTimeout(TIMEOUT, reactor)
        assert code in (1006, 1007)  # autobahn fails the connection (RFC 6455 §8.1)
        return
    client.sendMessage(message)
    answer = await next_message(factory)
    assert error in answer["error"]
    client.sendMessage(b"\x00\x01", isBinary=True)
    assert "send text" in (await next_message(factory))["error"]
    client.sendMessage(json.dumps({"subscribe": ["trunk"]}).encode())  # still open and working
    assert await next_message(factory) == {"subscribed": ["trunk"]}


@pytest_twisted.ensureDeferred
async def test_oversize_client_message_closes(web) -> None:
    client, factory = await open_client(web)
    client.sendMessage(b'{"subscribe": ["' + b"x" * 70_000 + b'"]}')
    code, _ = await factory.closed.addTimeout(TIMEOUT, reactor)
    assert code in (1006, 1009)  # message too big: failed by autobahn


@pytest.mark.parametrize("headers, query, status", [
    ({}, "", 401),
    ({"Authorization": "Bearer wrong"}, "", 401),
    ({}, "?token=wrong", 401),
    ({}, "?token=a&token=b", 400),
])
@pytest_twisted.ensureDeferred
async def test_the_upgrade_needs_credentials(web, headers, query, status) -> None:
    response = await treq.get(f"{web.base}/ws{query}", headers={
        "Upgrade": ["websocket"], "Connection": ["Upgrade"], "Sec-WebSocket-Version": ["13"],
        "Sec-WebSocket-Key": ["dGhlIHNhbXBsZSBub25jZQ=="], **{k: [v] for k, v in headers.items()}})
    assert response.code == status
    assert "error" in await response.json()
    with pytest.raises(ConnectionError):
        await open_client(web, query, headers)


@pytest_twisted.ensureDeferred
async def test_plain_http_and_other_methods(web) -> None:
    response = await treq.get(f"{web.base}/ws", headers=bearer(ADMIN_TOKEN))
    assert response.code == 426
    assert "WebSocket" in (await response.json())["error"]
    response = await treq.post(f"{web.base}/ws", headers=bearer(ADMIN_TOKEN))
    assert response.code == 405
    response = await treq.get(f"{web.base}/ws/deeper", headers=bearer(ADMIN_TOKEN))
    assert response.code == 404


@pytest_twisted.ensureDeferred
async def test_a_client_that_stops_reading_is_dropped(web) -> None:
    factory = web.tree("/ws").factory
    factory.max_queued_bytes = 256 * 1024
    factory.drop_grace = 0.2
    slow, _ = await open_client(web)
    slow.transport.pauseProducing()  # reads nothing more: the kernel buffers fill
    _, fast_factory = await open_client(web)
    bus = web.service.events
    detail = "x" * 16_000  # under the 64 KiB message limit
    published = 0
    # Up to 64 MB, a reactor turn between bursts, until pbxd gives up on the slow one.
    while factory.dropped == 0 and published < 4000:
        for _ in range(5):
            bus.publish(TrunkEvent("up", 0.0, "carrier", detail))
            published += 1
        await task.deferLater(reactor, 0, lambda: None)
    assert factory.dropped == 1
    for _ in range(200):  # the close handshake cannot go out: the connection is aborted
        if len(factory.clients) == 1:
            break
        await task.deferLater(reactor, 0.05, lambda: None)
    assert len(factory.clients) == 1  # the fast client stays
    bus.publish(TrunkEvent("down", 0.0, "carrier"))
    while True:
        event = await next_message(fast_factory)
        if event["type"] == "down":
            break
