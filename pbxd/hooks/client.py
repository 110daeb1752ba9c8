"""The one HTTP client every outbound webhook goes through (treq).

Every request has a timeout (a ``callLater`` on the injected reactor that
cancels it, aborting the connection) and is retried with exponential back-off
on what may pass: connection errors, timeouts, 5xx, 408 and 429. Any other
answer is the receiver's word and is returned as it is, 4xx included; the
caller decides what a 403 means. Nothing here blocks the reactor: the body is
read as it arrives, files are streamed from disk.

:meth:`WebhookClient.send_durable` is for deliveries that must not be lost
(CDRs): the request is written to the store's ``webhook_spool`` first, then
sent; it leaves the spool only when the receiver has taken it (2xx) or
refused it for good (any other final answer, logged as an error).
:meth:`redeliver`, driven by a LoopingCall once :meth:`start` is called,
sends what is due.
Delivery is at least once: a receiver should de-duplicate (by call_id).
"""

from __future__ import annotations

import contextlib
import enum
import json
import uuid
from typing import Any, Callable, Mapping

import attrs
from twisted.internet import defer, error, task
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import (
    Agent,
    FileBodyProducer,
    HTTPConnectionPool,
    RequestTransmissionFailed,
    ResponseDone,
    ResponseFailed,
    ResponseNeverReceived,
)
from twisted.web.http import PotentialDataLoss
from treq.multipart import MultiPartProducer

import pbxd
from pbxd.store import SpoolEntry, Store, StoreError

log = Logger()

USER_AGENT = f"pbxd/{pbxd.__version__}"

# Statuses that say "try again later" rather than "no" (RFC 9110 §15.5.9,
# RFC 6585 §4, and every 5xx).
_RETRY_STATUSES = frozenset({408, 429})

_TRANSIENT = (
    error.ConnectError,
    error.ConnectionClosed,
    error.DNSLookupError,
    ResponseFailed,
    ResponseNeverReceived,
    RequestTransmissionFailed,
)


def retryable_status(status: int) -> bool:
    return status >= 500 or status in _RETRY_STATUSES


class WebhookError(Exception):
    """A request that got no usable answer after all its attempts.

    ``status`` is the last HTTP status when there was one (a 5xx, 408 or
    429), None for a timeout or a connection failure.
    """

    def __init__(self, url: str, reason: str, attempts: int, status: int | None = None) -> None:
        super().__init__(f"{url}: {reason} (after {attempts} attempt{'s' * (attempts != 1)})")
        self.url = url
        self.reason = reason
        self.attempts = attempts
        self.status = status


class ResponseTooLarge(Exception):
    """The receiver sent more body than a webhook answer may have."""


@attrs.frozen
class WebhookResponse:
    """A receiver's answer: status, headers (lower-case names, last value wins), body."""

    status: int
    headers: Mapping[str, str] = attrs.field(hash=False)
    body: bytes

    def json(self) -> Any:
        """The body as JSON; ValueError if it is not."""
        return json.loads(self.body.decode("utf-8"))


@attrs.frozen
class FilePart:
    """A multipart file part streamed from ``path`` when the request is sent."""

    path: str
    filename: str
    content_type: str = "application/octet-stream"


class Delivery(enum.Enum):
    """How a durable send ended."""

    DELIVERED = "delivered"  # the receiver answered 2xx
    SPOOLED = "spooled"  # not yet: it waits in the spool for redeliver()
    # The receiver answered something final that is not 2xx (a 4xx, or a
    # redirect, which is not followed), or the entry cannot be sent at all;
    # logged as an error and dropped.
    REJECTED = "rejected"
    LOST = "lost"  # failed and could not be spooled (no spool, or the store failed); logged


@attrs.define
class WebhookMetrics:
    """Counters for /metrics. ``sent`` counts requests the receiver answered."""

    sent: int = 0
    failed: int = 0
    retried: int = 0
    spooled: int = 0
    redelivered: int = 0
    rejected: int = 0
    lost: int = 0
    latency_sum: float = 0.0
    latency_count: int = 0


class _Timeout(Exception):
    pass


def _cancelled(exc: BaseException) -> bool:
    """Whether a request failed because its Deferred was cancelled (the Agent
    wraps the CancelledError in ResponseNeverReceived/ResponseFailed)."""
    if isinstance(exc, defer.CancelledError):
        return True
    reasons = getattr(exc, "reasons", None) or []
    return any(isinstance(r, Failure) and r.check(defer.CancelledError) for r in reasons)


class _BodyReader(Protocol):
    """Collects a response body up to ``limit`` bytes; cancelling it stops the
    transfer (the connection is closed rather than left to finish)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.chunks: list[bytes] = []
        self.size = 0
        self.done: defer.Deferred[bytes] = defer.Deferred(self._stop)

    def _stop(self, _: object = None) -> None:
        if self.transport is not None:
            self.transport.stopProducing()

    def dataReceived(self, data: bytes) -> None:
        if self.done.called:
            return
        self.size += len(data)
        if self.size > self.limit:
            self._stop()
            self.done.errback(ResponseTooLarge(f"response body over {self.limit} bytes"))
            return
        self.chunks.append(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.done.called:
            return
        if reason.check(ResponseDone, PotentialDataLoss):
            self.done.callback(b"".join(self.chunks))
        else:
            self.done.errback(reason)


def _check_url(url: object) -> None:
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise ValueError(f"webhook URL must be http:// or https://, not {url!r}")


def _envelope_headers(headers: Mapping[str, str] | None) -> dict[str, str]:
    if headers is None:
        return {}
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in headers.items()):
        raise TypeError("headers must map str to str")
    return dict(headers)


# A function that gives the request's keyword arguments for one attempt and
# registers what must be closed after it (files opened for streaming).
_Build = Callable[[contextlib.ExitStack], dict[str, Any]]


class WebhookClient:
    """HTTP for webhooks: timeouts, retries with back-off, metrics, a durable spool.

    ``reactor`` provides time (callLater/seconds; a ``task.Clock`` in unit
    tests) and, when no ``treq_client`` is given, the TCP connections of the
    default one. ``spool`` is the Store whose ``webhook_spool`` keeps durable
    deliveries. ``timeout``, ``retries`` and ``backoff`` are the defaults of
    each call: attempt n+1 waits ``backoff * 2**(n-1)`` seconds, at most
    ``max_backoff``. A spooled delivery is tried again after
    ``spool_backoff * 2**(rounds-1)`` seconds, at most ``spool_max_backoff``.
    """

    def __init__(
        self,
        reactor: IReactorTime,
        treq_client: Any = None,
        spool: Store | None = None,
        *,
        timeout: float = 5.0,
        retries: int = 2,
        backoff: float = 0.5,
        max_backoff: float = 30.0,
        spool_backoff: float = 30.0,
        spool_max_backoff: float = 900.0,
        max_response_bytes: int = 1 << 20,
        redeliver_batch: int = 100,
    ) -> None:
        self.reactor = reactor
        self._connection_pool: HTTPConnectionPool | None = None
        if treq_client is None:
            from treq.client import HTTPClient

            self._connection_pool = HTTPConnectionPool(reactor, persistent=True)
            treq_client = HTTPClient(Agent(reactor, pool=self._connection_pool))
        self._http = treq_client
        self.spool = spool
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.spool_backoff = spool_backoff
        self.spool_max_backoff = spool_max_backoff
        self.max_response_bytes = max_response_bytes
        self.redeliver_batch = redeliver_batch
        self.metrics = WebhookMetrics()
        self._in_flight: set[int] = set()  # spool ids being sent right now
        # Durable sends and redelivery rounds under way: stop() cancels them, so a
        # receiver that hangs does not hold up a shutdown (what is spooled stays).
        self._sending: set[defer.Deferred[Any]] = set()
        # The callers waiting for the redelivery round under way, if one is.
        self._round_waiters: list[defer.Deferred[int]] | None = None
        self._loop: task.LoopingCall | None = None
        self._stopped = False

    # -- plain requests -----------------------------------------------------

    def post_json(
        self,
        url: str,
        payload: Any,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
        retries: int | None = None,
        backoff: float | None = None,
    ) -> defer.Deferred[WebhookResponse]:
        """POST ``payload`` as JSON. Fires with the answer (any status that is
        not retried), or fails with WebhookError."""
        try:
            body = json.dumps(payload, separators=(",", ":"), allow_nan=False).encode("utf-8")
        except (TypeError, ValueError) as e:
            return defer.fail(e)
        return self._call("POST", url, headers, timeout, retries, backoff,
                          lambda files: {"data": body}, "application/json")

    def post_form(
        self,
        url: str,
        data: Mapping[str, str],
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
        retries: int | None = None,
        backoff: float | None = None,
    ) -> defer.Deferred[WebhookResponse]:
        """POST ``data`` as application/x-www-form-urlencoded."""
        form = dict(data)
        return self._call("POST", url, headers, timeout, retries, backoff,
                          lambda files: {"data": form}, None)

    def get(
        self,
        url: str,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
        retries: int | None = None,
        backoff: float | None = None,
    ) -> defer.Deferred[WebhookResponse]:
        """GET with ``params`` added to the query string."""
        query = dict(params or {})
        return self._call("GET", url, headers, timeout, retries, backoff,
                          lambda files: {"params": query}, None)

    def post_multipart(
        self,
        url: str,
        fields: Mapping[str, str],
        files: Mapping[str, FilePart] | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
        retries: int | None = None,
        backoff: float | None = None,
    ) -> defer.Deferred[WebhookResponse]:
        """POST multipart/form-data: text ``fields`` (``calllog.json`` for the
        CDR push) and file parts streamed from disk, reopened for each attempt.
        A missing file fails at once with OSError (no retry can help)."""
        field_items = dict(fields)
        file_items = dict(files or {})
        if not all(isinstance(v, str) for v in field_items.values()):
            return defer.fail(TypeError("multipart fields must be str"))
        if not all(isinstance(v, FilePart) for v in file_items.values()):
            return defer.fail(TypeError("multipart files must be FilePart"))

        # One boundary for every attempt: the body is rebuilt, the header kept.
        boundary = uuid.uuid4().hex

        def build(stack: contextlib.ExitStack) -> dict[str, Any]:
            parts: list[tuple[str, Any]] = list(field_items.items())
            for name, part in file_items.items():
                stream = stack.enter_context(open(part.path, "rb"))
                parts.append((name, (part.filename, part.content_type, FileBodyProducer(stream))))
            # Built here rather than by treq's files= so that a push without
            # a file part is still multipart/form-data.
            return {"data": MultiPartProducer(parts, boundary=boundary)}

        return self._call("POST", url, headers, timeout, retries, backoff, build,
                          f"multipart/form-data; boundary={boundary}")

    def _call(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str] | None,
        timeout: float | None,
        retries: int | None,
        backoff: float | None,
        build: _Build,
        content_type: str | None,
    ) -> defer.Deferred[WebhookResponse]:
        try:
            _check_url(url)
            request_headers = {"User-Agent": USER_AGENT, **_envelope_headers(headers)}
        except (TypeError, ValueError) as e:
            return defer.fail(e)
        if content_type is not None:
            request_headers["Content-Type"] = content_type
        return defer.Deferred.fromCoroutine(self._request(
            method, url, request_headers,
            self.timeout if timeout is None else timeout,
            self.retries if retries is None else retries,
            self.backoff if backoff is None else backoff,
            build,
        ))

    async def _request(
        self,
        method: str,
        url: str,
        headers: dict[str, str],
        timeout: float,
        retries: int,
        backoff: float,
        build: _Build,
    ) -> WebhookResponse:
        attempt = 0
        while True:
            attempt += 1
            status: int | None = None
            try:
                response = await self._attempt(method, url, headers, timeout, build)
            except _Timeout:
                reason = f"no answer in {timeout:g} s"
            except _TRANSIENT as e:
                # stop() cancelling a connection attempt can surface as another
                # error (a cancelled name lookup is a DNSLookupError): no retry then.
                if _cancelled(e) or self._stopped:
                    raise defer.CancelledError() from e
                reason = _describe(e)
            except ResponseTooLarge as e:
                reason = str(e)
            else:
                if not retryable_status(response.status):
                    return response
                status = response.status
                reason = f"HTTP {status}"
            if attempt > retries:
                self.metrics.failed += 1
                log.warn("webhook {method} {url} failed: {reason}, attempt {attempt}, giving up",
                         method=method, url=url, reason=reason, attempt=attempt)
                raise WebhookError(url, reason, attempt, status)
            delay = min(self.max_backoff, backoff * 2 ** (attempt - 1))
            self.metrics.retried += 1
            log.info("webhook {method} {url}: {reason}, retry in {delay:g} s",
                     method=method, url=url, reason=reason, delay=delay)
            await task.deferLater(self.reactor, delay)

    async def _attempt(
        self, method: str, url: str, headers: dict[str, str], timeout: float, build: _Build
    ) -> WebhookResponse:
        started = self.reactor.seconds()
        with contextlib.ExitStack() as stack:
            kwargs = build(stack)
            d = self._http.request(method, url, headers=headers, unbuffered=True,
                                   allow_redirects=False, **kwargs)
            d.addCallback(self._read)
            timed_out = []

            def expire() -> None:
                timed_out.append(True)
                d.cancel()

            timer = self.reactor.callLater(timeout, expire)
            try:
                response = await d
            except Exception as e:
                if timed_out:
                    raise _Timeout() from e
                raise
            finally:
                if timer.active():
                    timer.cancel()
        self.metrics.sent += 1
        self.metrics.latency_sum += self.reactor.seconds() - started
        self.metrics.latency_count += 1
        return response

    def _read(self, response: Any) -> defer.Deferred[WebhookResponse]:
        reader = _BodyReader(self.max_response_bytes)
        response.deliverBody(reader)
        headers = {
            name.decode("latin-1").lower(): values[-1].decode("latin-1")
            for name, values in response.headers.getAllRawHeaders()
        }
        return reader.done.addCallback(
            lambda body: WebhookResponse(status=response.code, headers=headers, body=body))

    # -- durable delivery ------------------------------------------------------

    def send_durable(
        self,
        kind: str,
        url: str,
        payload: Any,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
        retries: int | None = None,
        backoff: float | None = None,
    ) -> defer.Deferred[Delivery]:
        """POST ``payload`` as JSON, spooled first so that it survives a
        receiver that is down and a restart. The Delivery says how it ended
        (anything but DELIVERED is logged); it fails only, at once, for a
        URL, payload or headers that cannot be sent at all."""
        return self._send_durable(kind, url, {"format": "json", "body": payload},
                                  headers, timeout, retries, backoff)

    def send_durable_multipart(
        self,
        kind: str,
        url: str,
        fields: Mapping[str, str],
        files: Mapping[str, FilePart] | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
        retries: int | None = None,
        backoff: float | None = None,
        spooled: defer.Deferred[None] | None = None,
    ) -> defer.Deferred[Delivery]:
        """Like :meth:`send_durable` for multipart; the spool keeps the file
        paths (not the files), so the files must stay until delivered.
        ``spooled``, when given, fires once the request is in the spool (or,
        when it cannot be spooled, once it was sent or lost): what a caller
        that must not lose it waits for, rather than the receiver."""
        envelope = {
            "format": "multipart",
            "fields": dict(fields),
            "files": {name: attrs.asdict(part) for name, part in (files or {}).items()},
        }
        return self._send_durable(kind, url, envelope, headers, timeout, retries, backoff, spooled)

    def _send_durable(self, kind: str, url: str, envelope: dict[str, Any],
                      headers: Mapping[str, str] | None, timeout: float | None,
                      retries: int | None, backoff: float | None,
                      spooled: defer.Deferred[None] | None = None) -> defer.Deferred[Delivery]:
        try:
            _check_url(url)
            envelope["headers"] = _envelope_headers(headers)
            blob = json.dumps(envelope, separators=(",", ":"), allow_nan=False).encode("utf-8")
        except (TypeError, ValueError) as e:
            if spooled is not None:
                spooled.callback(None)
            return defer.fail(e)
        delivery = self._tracked(defer.Deferred.fromCoroutine(
            self._durable(kind, url, envelope, blob, timeout, retries, backoff, spooled)))
        if spooled is not None:
            def settled(result: Any) -> Any:
                # Ended before the spool took it (not spooled, or failed): nothing to wait for.
                if not spooled.called:
                    spooled.callback(None)
                return result
            delivery.addBoth(settled)
        return delivery

    async def _durable(self, kind: str, url: str, envelope: dict[str, Any], blob: bytes,
                       timeout: float | None, retries: int | None,
                       backoff: float | None, spooled: defer.Deferred[None] | None = None) -> Delivery:
        entry: SpoolEntry | None = None
        if self.spool is not None:
            try:
                entry = await self.spool.spool_add(kind, url, blob)
            except StoreError as e:
                log.error("webhook {kind} to {url}: cannot spool ({error}); sending unspooled",
                          kind=kind, url=url, error=e)
        if entry is not None and spooled is not None:
            spooled.callback(None)
        if entry is None:
            try:
                response = await self._send_envelope(url, envelope, timeout, retries, backoff)
            except (WebhookError, OSError, defer.CancelledError) as e:
                self.metrics.lost += 1
                log.error("webhook {kind} to {url} LOST: {error}", kind=kind, url=url,
                          error=e if not isinstance(e, defer.CancelledError) else "pbxd stopped")
                return Delivery.LOST
            return self._judge(kind, url, response)

        self._in_flight.add(entry.id)
        try:
            outcome = await self._deliver_entry(entry, envelope, timeout, retries, backoff)
        except defer.CancelledError:
            log.info("webhook {kind} to {url}: pbxd stopped while sending; it stays spooled",
                     kind=kind, url=url)
            outcome = Delivery.SPOOLED
        finally:
            self._in_flight.discard(entry.id)
        if outcome is Delivery.SPOOLED:
            self.metrics.spooled += 1
        return outcome

    def _send_envelope(self, url: str, envelope: Mapping[str, Any], timeout: float | None,
                       retries: int | None, backoff: float | None) -> defer.Deferred[WebhookResponse]:
        headers = envelope.get("headers") or {}
        if envelope.get("format") == "json":
            return self.post_json(url, envelope["body"], headers, timeout, retries, backoff)
        if envelope.get("format") == "multipart":
            files = {name: FilePart(**part) for name, part in envelope["files"].items()}
            return self.post_multipart(url, envelope["fields"], files, headers, timeout, retries,
                                       backoff)
        raise ValueError(f"unknown spool format {envelope.get('format')!r}")

    def _judge(self, kind: str, url: str, response: WebhookResponse) -> Delivery:
        if 200 <= response.status < 300:
            return Delivery.DELIVERED
        self.metrics.rejected += 1
        log.error("webhook {kind} to {url} REJECTED with HTTP {status}: {body}", kind=kind,
                  url=url, status=response.status, body=response.body[:200])
        return Delivery.REJECTED

    async def _deliver_entry(self, entry: SpoolEntry, envelope: Mapping[str, Any] | None,
                             timeout: float | None = None, retries: int | None = None,
                             backoff: float | None = None) -> Delivery:
        """One delivery round of a spooled entry; the spool is updated to match."""
        try:
            if envelope is None:
                envelope = json.loads(entry.payload.decode("utf-8"))
            response = await self._send_envelope(entry.url, envelope, timeout, retries, backoff)
        except WebhookError as e:
            rounds = entry.attempts + 1
            delay = min(self.spool_max_backoff, self.spool_backoff * 2 ** (rounds - 1))
            try:
                await self.spool.spool_reschedule(entry.id, rounds,  # type: ignore[union-attr]
                                                  self.reactor.seconds() + delay, e.reason)
            except StoreError as store_error:
                log.error("webhook spool: cannot reschedule {id}: {error}", id=entry.id,
                          error=store_error)
            log.warn("webhook {kind} to {url} spooled (round {rounds}, next in {delay:g} s):"
                     " {reason}", kind=entry.kind, url=entry.url, rounds=rounds, delay=delay,
                     reason=e.reason)
            return Delivery.SPOOLED
        except (ValueError, TypeError, KeyError, OSError) as e:
            # A row that can never be sent (corrupt, or its file is gone): keep
            # it out of the loop, loudly.
            response = None
            log.error("webhook {kind} to {url}: spool entry {id} cannot be sent and is dropped:"
                      " {error}", kind=entry.kind, url=entry.url, id=entry.id, error=e)
            outcome = Delivery.REJECTED
            self.metrics.rejected += 1
        if response is not None:
            outcome = self._judge(entry.kind, entry.url, response)
        try:
            await self.spool.spool_delete(entry.id)  # type: ignore[union-attr]
        except StoreError as store_error:
            # It stays, so it will be sent again: at least once, never lost.
            log.error("webhook spool: cannot remove {id}: {error}", id=entry.id,
                      error=store_error)
        return outcome

    def redeliver(self) -> defer.Deferred[int]:
        """Send the spooled deliveries that are due, one attempt each; fires
        with how many were delivered. After a failure the other entries for
        the same URL wait for the next round. A call while a round runs does
        not start another: it fires with that round's count when it ends."""
        if self.spool is None:
            return defer.succeed(0)
        waiter: defer.Deferred[int] = defer.Deferred()
        if self._round_waiters is not None:
            self._round_waiters.append(waiter)
            return waiter
        self._round_waiters = [waiter]

        def finished(result: Any) -> None:
            waiters, self._round_waiters = self._round_waiters or [], None
            if isinstance(result, Failure) and result.check(defer.CancelledError):
                result = 0  # stopped: the round's entries stay spooled
            for each in waiters:
                each.callback(result)

        self._tracked(defer.Deferred.fromCoroutine(self._redeliver())).addBoth(finished)
        return waiter

    def _tracked(self, sending: defer.Deferred[Any]) -> defer.Deferred[Any]:
        """``sending`` in the set that stop() cancels, until it ends."""
        if not sending.called:
            self._sending.add(sending)

            def ended(result: Any) -> Any:
                self._sending.discard(sending)
                return result
            sending.addBoth(ended)
        return sending

    async def _redeliver(self) -> int:
        assert self.spool is not None
        try:
            due = await self.spool.spool_due(self.reactor.seconds(), self.redeliver_batch)
        except StoreError as e:
            log.error("webhook spool: cannot read it: {error}", error=e)
            return 0
        delivered = 0
        failing_urls: set[str] = set()
        for entry in due:
            if entry.id in self._in_flight or entry.url in failing_urls:
                continue
            self._in_flight.add(entry.id)
            try:
                outcome = await self._deliver_entry(entry, None, retries=0)
            except defer.CancelledError:
                raise  # stop(): the rest of the round waits in the spool
            except Exception:
                log.failure("webhook spool: entry {id} failed unexpectedly", id=entry.id)
                continue
            finally:
                self._in_flight.discard(entry.id)
            if outcome is Delivery.DELIVERED:
                delivered += 1
                self.metrics.redelivered += 1
                log.info("webhook {kind} to {url}: spooled entry {id} delivered",
                         kind=entry.kind, url=entry.url, id=entry.id)
            elif outcome is Delivery.SPOOLED:
                failing_urls.add(entry.url)
        return delivered

    # -- life cycle ------------------------------------------------------------------

    def start(self, interval: float = 30.0) -> None:
        """Run :meth:`redeliver` now and every ``interval`` seconds."""
        self._stopped = False
        if self._loop is None and self.spool is not None:
            self._loop = task.LoopingCall(self.redeliver)
            self._loop.clock = self.reactor
            self._loop.start(interval, now=True).addErrback(
                lambda f: log.failure("webhook spool loop stopped", f))

    def stop(self) -> defer.Deferred[None]:
        """Stop redelivering, give up the sends under way, and close idle
        connections (what is spooled stays, for the next start). Fires once
        the cancelled sends have ended, their spool updates written."""
        self._stopped = True
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        under_way = [_ended(sending) for sending in self._sending]
        for sending in list(self._sending):
            sending.cancel()
        settled = defer.DeferredList(under_way)
        if self._connection_pool is not None:
            pool = self._connection_pool
            settled.addCallback(lambda _: pool.closeCachedConnections())
        return settled.addCallback(lambda _: None)


def _ended(sending: defer.Deferred[Any]) -> defer.Deferred[None]:
    """A Deferred that fires, with None, once ``sending`` has run its callbacks."""
    ended: defer.Deferred[None] = defer.Deferred()

    def fire(result: Any) -> Any:
        ended.callback(None)
        return result
    sending.addBoth(fire)
    return ended


def _describe(exc: BaseException) -> str:
    reasons = getattr(exc, "reasons", None)
    if reasons:
        return "; ".join(str(r.value) for r in reasons if isinstance(r, Failure)) or repr(exc)
    return str(exc) or type(exc).__name__


__all__ = [
    "Delivery",
    "FilePart",
    "ResponseTooLarge",
    "USER_AGENT",
    "WebhookClient",
    "WebhookError",
    "WebhookMetrics",
    "WebhookResponse",
    "retryable_status",
]
