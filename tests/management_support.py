"""For the /metrics, /ws and /console tests: a running PbxService's HTTP
port (its HttpService on 127.0.0.1, port 0), tokens, an autobahn WebSocket
client, and the samples of a Prometheus exposition."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import json

import attrs
from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredQueue

from pbxd.service import PbxService
from pbxd.web.app import WebContext, WebRoot

READ_TOKEN = "read-token-0123456789"
ADMIN_TOKEN = "admin-token-0123456789"
TOKENS = [
    {"name": "monitor", "token": READ_TOKEN, "scopes": ["read"]},
    {"name": "ops", "token": ADMIN_TOKEN, "scopes": ["admin"]},
]


@attrs.define
class WebPbx:
    """A started PbxService and its HTTP port (the real HttpService tree)."""

    service: PbxService
    clients: list[Any] = attrs.Factory(list)  # WebSocket clients to abort at the end

    @property
    def web(self) -> WebContext:
        return self.service.http.web

    @property
    def root(self) -> WebRoot:
        return self.service.http.root

    @property
    def port(self) -> int:
        return self.service.http.address[1]

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_base(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def tree(self, prefix: str) -> Any:
        return self.root.tree(prefix)

    async def stop(self) -> None:
        for client in self.clients:
            if client.transport is not None:
                client.transport.abortConnection()
        if self.service.running:
            await self.service.stopService()


def bearer(token: str) -> dict[str, list[str]]:
    return {"Authorization": [f"Bearer {token}"]}


def serving(service: PbxService, config_path: Path | None = None) -> WebPbx:
    """The HTTP side of a started service (its config needs ``http.port: 0``);
    ``config_path`` is the file the console writes routes to, as if pbxd had
    been started with it."""
    if config_path is not None:
        service.http.web.config_path = config_path
    return WebPbx(service)


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample by (name, sorted labels)."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


TIMEOUT = 10.0


class Client(WebSocketClientProtocol):
    """Queues every text message it gets, parsed."""

    def onConnect(self, response: Any) -> None:
        self.factory.connected.callback(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.factory.messages.put(json.loads(payload))

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        if not self.factory.closed.called:
            self.factory.closed.callback((code, reason))
        if not self.factory.connected.called:
            self.factory.connected.errback(ConnectionError(f"closed: {code} {reason}"))


async def connect(url: str, headers: dict[str, str] | None = None) -> tuple[Client, WebSocketClientFactory]:
    factory = WebSocketClientFactory(url, headers=headers or {})
    factory.protocol = Client
    factory.setProtocolOptions(utf8validateIncoming=False)
    factory.connected = Deferred()
    factory.closed = Deferred()
    factory.messages = DeferredQueue()
    reactor.connectTCP("127.0.0.1", factory.port, factory, timeout=TIMEOUT)
    client = await factory.connected.addTimeout(TIMEOUT, reactor)
    return client, factory


def next_message(factory: WebSocketClientFactory) -> Deferred[Any]:
    return factory.messages.get().addTimeout(TIMEOUT, reactor)
