"""``/ws``: pbxd's events as JSON over a WebSocket (autobahn on Twisted Web).

The upgrade request is authenticated like the REST trees (pbxd.web.auth:
a Bearer token in the Authorization header, or a ``token`` query parameter,
or the console's session cookie) and needs the read scope; without it the
answer is 401/403 JSON and no upgrade. Then :class:`EventsResource` hands
the connection to autobahn's ``WebSocketResource``, which does the
handshake and framing.

Protocol (docs/events.md): the server sends one text message per event,
the event's JSON document (``{"topic": "registration", "type":
"registered", ...}``). A new connection receives every topic; a client may
narrow (or widen) that at any time by sending ``{"subscribe": ["call",
"registration"]}``, answered ``{"subscribed": [...]}``. Anything else it
sends is answered ``{"error": "..."}`` and the connection stays up.

Slow clients are bounded: the connection registers as a push producer with
its transport, so once the kernel and Twisted's buffer stop draining it is
paused; while paused, events queue up to ``max_queued_bytes``; past that the
client is dropped with close code 4008 ("too slow"), so one stalled browser
never holds pbxd's memory.
"""

from __future__ import annotations

import json
from collections import deque
from typing import Any

from autobahn.twisted.resource import WebSocketResource
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from twisted.web.iweb import IRequest
from twisted.web.resource import Resource
from zope.interface import implementer

from pbxd.events import TOPICS, EventBus, Subscription
from pbxd.web.auth import READ, principal_of, remember, require
from pbxd.web.errors import error_body, json_bytes, query_text

log = Logger(namespace="pbxd.web.ws")

# Close code for a client dropped for not reading: in the range RFC 6455
# §7.4.2 leaves to applications (4000-4999), mirroring 1008 "policy violation".
TOO_SLOW = 4008

# Both ways: a subscribe message is tiny, an event a few hundred bytes.
MAX_MESSAGE = 65536
DEFAULT_MAX_QUEUED_BYTES = 1024 * 1024


@implementer(IPushProducer)
class EventsProtocol(WebSocketServerProtocol):
    """One /ws client: events out, subscribe requests in."""

    factory: EventsFactory

    def __init__(self) -> None:
        super().__init__()
        self.subscription: Subscription | None = None
        self.paused = False
        self.queued: deque[bytes] = deque()
        self.queued_bytes = 0
        self.dropped = False

    # -- WebSocket life cycle ------------------------------------------------------

    def onOpen(self) -> None:
        # Twisted Web's channel was the transport's producer; the connection
        # is ours now, and so is the back-pressure.
        self.transport.unregisterProducer()
        self.transport.registerProducer(self, True)
        self._subscribe(TOPICS)
        self.factory.clients.add(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        if isBinary:
            self._reply({"error": "send text: a JSON object like {\"subscribe\": [\"call\"]}"})
            return
        try:
            message = json.loads(payload.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
            self._reply({"error": "not JSON"})
            return
        if not isinstance(message, dict) or set(message) != {"subscribe"}:
            self._reply({"error": "expected {\"subscribe\": [topics]}"})
            return
        topics = message["subscribe"]
        if not isinstance(topics, list) or not all(isinstance(t, str) for t in topics):
            self._reply({"error": "subscribe takes a list of topic names"})
            return
        unknown = sorted(set(topics) - set(TOPICS))
        if unknown:
            self._reply({"error": f"unknown topics: {', '.join(unknown)} (known: {', '.join(TOPICS)})"})
            return
        self._subscribe(topics)
        self._reply({"subscribed": sorted(set(topics))})

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        if self.subscription is not None:
            self.subscription.cancel()
            self.subscription = None
        self.queued.clear()
        self.queued_bytes = 0
        self.factory.clients.discard(self)

    # -- events out ----------------------------------------------------------------

    def _subscribe(self, topics: Any) -> None:
        if self.subscription is not None:
            self.subscription.cancel()
        self.subscription = self.factory.bus.subscribe(self._event, topics)

    def _event(self, event: Any) -> None:
        self._send(json_bytes(event.to_json()))

    def _reply(self, document: dict[str, Any]) -> None:
        self._send(json_bytes(document))

    def _send(self, data: bytes) -> None:
        if self.dropped:
            return
        if not self.paused:
            self.sendMessage(data)
            return
        if self.queued_bytes + len(data) > self.factory.max_queued_bytes:
            self._drop()
            return
        self.queued.append(data)
        self.queued_bytes += len(data)

    def _drop(self) -> None:
        self.dropped = True
        self.factory.dropped += 1
        if self.subscription is not None:
            self.subscription.cancel()
            self.subscription = None
        self.queued.clear()
        self.queued_bytes = 0
        log.warn("dropped a /ws client {peer}: it does not read its events", peer=self.peer)
        # The close frame may sit behind the full buffer; abort if it never gets out.
        self.sendClose(TOO_SLOW, "too slow")
        self.transport.unregisterProducer()
        self.factory.clock.callLater(self.factory.drop_grace, self._abort_if_open)

    def _abort_if_open(self) -> None:
        if self.transport is not None and self.state != self.STATE_CLOSED:
            self.transport.abortConnection()

    # -- IPushProducer: the transport's back-pressure ---------------------------------

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        while self.queued and not self.paused and not self.dropped:
            data = self.queued.popleft()
            self.queued_bytes -= len(data)
            self.sendMessage(data)

    def stopProducing(self) -> None:
        self.paused = True


class EventsFactory(WebSocketServerFactory):
    protocol = EventsProtocol

    def __init__(self, bus: EventBus, clock: Any, max_queued_bytes: int) -> None:
        super().__init__()
        self.bus = bus
        self.clock = clock
        self.max_queued_bytes = max_queued_bytes
        self.clients: set[EventsProtocol] = set()
        self.dropped = 0  # clients dropped for being too slow
        # How long a dropped client's close handshake may take before the
        # connection is aborted (its buffer is full: the close may never go out).
        self.drop_grace = 5.0
        self.setProtocolOptions(
            maxFramePayloadSize=MAX_MESSAGE,
            maxMessagePayloadSize=MAX_MESSAGE,
            autoPingInterval=30,
            autoPingTimeout=10,
        )


class EventsResource(Resource):
    """The /ws resource: check the principal (read scope), then hand over to autobahn.

    Mounted on :class:`pbxd.web.app.WebRoot`, which has authenticated the
    request already; a ``token`` query parameter stands for the Bearer token
    of clients that cannot set headers (a browser's ``new WebSocket``).
    """

    isLeaf = True
    methods = ("GET",)

    def __init__(self, web: Any, *, max_queued_bytes: int = DEFAULT_MAX_QUEUED_BYTES) -> None:
        super().__init__()
        self.web = web
        self.factory = EventsFactory(web.pbx.events, web.reactor, max_queued_bytes)
        self._websocket = WebSocketResource(self.factory)

    def render(self, request: IRequest) -> Any:
        if request.method != b"GET":
            return error_body(request, 405, "/ws takes a WebSocket upgrade (GET)", {"Allow": "GET"})
        if request.postpath not in ([], [b""]):
            return error_body(request, 404, "no such resource")
        token = query_text(request, "token")
        if token is not None and principal_of(request) is None:
            request.requestHeaders.setRawHeaders(b"authorization", [b"Bearer " + token.encode("utf-8")])
            remember(request, self.web.auth.authenticate(request))
        require(request, READ)
        upgrade = (request.getHeader(b"upgrade") or b"").lower()
        if upgrade != b"websocket":
            return error_body(request, 426, "/ws is a WebSocket: send Upgrade: websocket",
                              {"Upgrade": "websocket"})
        return self._websocket.render(request)


__all__ = ["EventsFactory", "EventsProtocol", "EventsResource"]
