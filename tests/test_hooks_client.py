"""WebhookClient: retries, back-off, timeouts and metrics on a task.Clock with treq's
StubTreq; multipart and durable delivery over real HTTP on loopback with a real store."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import pytest_twisted
from klein import Klein
from treq.testing import StubTreq
from twisted.internet import defer, reactor, task
from twisted.internet.error import DNSLookupError
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

from pbxd.hooks.client import (
    USER_AGENT,
    Delivery,
    FilePart,
    WebhookClient,
    WebhookError,
    retryable_status,
)
from pbxd.store import Store


class ScriptedReceiver(Resource):
    """Answers each request with the next (status, body) of a script; None
    leaves the request open forever. The last answer repeats."""

    isLeaf = True

    def __init__(self, *answers: tuple[int, bytes] | None) -> None:
        super().__init__()
        self.answers = list(answers)
        self.requests: list[dict] = []
        self.open_requests: list = []

    def render(self, request):
        self.requests.append({
            "method": request.method.decode(),
            "uri": request.uri.decode(),
            "headers": {k.decode().lower(): v[-1].decode()
                        for k, v in request.requestHeaders.getAllRawHeaders()},
            "body": request.content.read(),
        })
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if answer is None:
            self.open_requests.append(request)
            return NOT_DONE_YET
        status, body = answer
        request.setResponseCode(status)
        return body


def stub_client(receiver: Resource, **kwargs) -> tuple[WebhookClient, task.Clock]:
    clock = task.Clock()
    return WebhookClient(clock, treq_client=StubTreq(receiver), **kwargs), clock


def result_of(d: defer.Deferred):
    """The result of a Deferred that must have fired (StubTreq is synchronous)."""
    results: list = []
    d.addBoth(results.append)
    assert results, "the Deferred has not fired"
    if hasattr(results[0], "raiseException"):
        results[0].raiseException()
    return results[0]


def test_post_json_sends_the_payload_and_returns_the_answer() -> None:
    receiver = ScriptedReceiver((200, b'{"action": "forward"}'))
    client, _ = stub_client(receiver)
    response = result_of(client.post_json("http://hooks.test/route", {"call_id": "a1", "n": 1},
                                          headers={"X-API-Key": "secret"}))
    assert response.status == 200 and response.json() == {"action": "forward"}
    [request] = receiver.requests
    assert request["method"] == "POST" and request["uri"] == "/route"
    assert json.loads(request["body"]) == {"call_id": "a1", "n": 1}
    assert request["headers"]["content-type"] == "application/json"
    assert request["headers"]["x-api-key"] == "secret"
    assert request["headers"]["user-agent"] == USER_AGENT
    assert (client.metrics.sent, client.metrics.latency_count) == (1, 1)


def test_get_puts_params_in_the_query_and_post_form_in_the_body() -> None:
    receiver = ScriptedReceiver((200, b"{}"))
    client, _ = stub_client(receiver)
    result_of(client.get("http://hooks.test/auth", {"u": "1001", "r": "pbx.com"}))
    result_of(client.post_form("http://hooks.test/auth", {"u": "1001", "r": "pbx com"}))
    assert receiver.requests[0]["uri"] == "/auth?u=1001&r=pbx.com"
    assert receiver.requests[1]["body"] == b"u=1001&r=pbx+com"
    assert receiver.requests[1]["headers"]["content-type"] == "application/x-www-form-urlencoded"


def test_5xx_is_retried_with_exponential_back_off() -> None:
    receiver = ScriptedReceiver((503, b""), (502, b""), (500, b""), (200, b"ok"))
    client, clock = stub_client(receiver, backoff=1.0)
    d = client.post_json("http://hooks.test/x", {}, retries=3)
    # Attempts at t=0, 1, 1+2, 1+2+4.
    for t, expected in ((0.0, 1), (0.99, 1), (1.0, 2), (2.99, 2), (3.0, 3), (6.99, 3), (7.0, 4)):
        clock.advance(t - clock.seconds())
        assert len(receiver.requests) == expected, t
    assert result_of(d).body == b"ok"
    assert (client.metrics.retried, client.metrics.failed) == (3, 0)
    assert clock.getDelayedCalls() == []


def test_back_off_is_capped() -> None:
    receiver = ScriptedReceiver((503, b""))
    client, clock = stub_client(receiver, backoff=10.0, max_backoff=15.0)
    d = client.post_json("http://hooks.test/x", {}, retries=3)
    clock.pump([10.0, 15.0, 15.0])
    with pytest.raises(WebhookError) as info:
        result_of(d)
    assert (info.value.status, info.value.attempts) == (503, 4)
    assert len(receiver.requests) == 4


@pytest.mark.parametrize("status", [400, 401, 403, 404, 409, 422])
def test_a_definitive_4xx_is_returned_without_retry(status: int) -> None:
    receiver = ScriptedReceiver((status, b'{"reason": "no"}'))
    client, _ = stub_client(receiver)
    assert result_of(client.post_json("http://hooks.test/x", {}, retries=5)).status == status
    assert len(receiver.requests) == 1 and client.metrics.retried == 0


@pytest.mark.parametrize("status", [408, 429, 500, 503, 599])
def test_retryable_statuses(status: int) -> None:
    assert retryable_status(status)


def test_exhausted_retries_fail_with_the_last_status() -> None:
    receiver = ScriptedReceiver((503, b"busy"))
    client, clock = stub_client(receiver, backoff=0.5)
    d = client.post_json("http://hooks.test/x", {}, retries=2)
    clock.pump([0.5, 1.0])
    with pytest.raises(WebhookError, match="HTTP 503") as info:
        result_of(d)
    assert info.value.attempts == 3 and client.metrics.failed == 1


def test_a_silent_receiver_times_out_and_its_request_is_cancelled() -> None:
    receiver = ScriptedReceiver(None)
    client, clock = stub_client(receiver)
    d = client.post_json("http://hooks.test/slow", {}, timeout=2.0, retries=1, backoff=1.0)
    clock.pump([0.5] * 4)  # the first attempt times out at t=2
    assert not d.called and len(receiver.requests) == 1
    clock.pump([0.5] * 2)  # back-off 1 s, second attempt
    assert len(receiver.requests) == 2
    clock.pump([0.5] * 4)
    with pytest.raises(WebhookError, match="no answer in 2 s") as info:
        result_of(d)
    assert info.value.status is None and info.value.attempts == 2
    assert clock.getDelayedCalls() == []


def test_a_caller_cancel_stops_the_retries() -> None:
    receiver = ScriptedReceiver((503, b""))
    client, clock = stub_client(receiver, backoff=1.0)
    d = client.post_json("http://hooks.test/x", {}, retries=5)
    d.cancel()
    with pytest.raises(defer.CancelledError):
        result_of(d)
    clock.pump([1.0] * 10)
    assert len(receiver.requests) == 1
    assert clock.getDelayedCalls() == []


def test_an_oversized_answer_is_an_error() -> None:
    receiver = ScriptedReceiver((200, b"x" * 2000))
    client, _ = stub_client(receiver, max_response_bytes=1000)
    with pytest.raises(WebhookError, match="over 1000 bytes"):
        result_of(client.post_json("http://hooks.test/x", {}, retries=0))


@pytest.mark.parametrize("url", ["ftp://hooks.test/x", "hooks.test/x", "", None])
def test_a_bad_url_fails_at_once(url) -> None:
    client, _ = stub_client(ScriptedReceiver((200, b"")))
    with pytest.raises(ValueError):
        result_of(client.post_json(url, {}))


def test_bad_payloads_and_headers_fail_at_once() -> None:
    client, _ = stub_client(ScriptedReceiver((200, b"")))
    with pytest.raises(TypeError):
        result_of(client.post_json("http://hooks.test/x", {"when": object()}))
    with pytest.raises(ValueError):
        result_of(client.post_json("http://hooks.test/x", {"mos": float("nan")}))
    with pytest.raises(TypeError):
        result_of(client.post_json("http://hooks.test/x", {}, headers={"X-N": 5}))
    with pytest.raises(TypeError):
        result_of(client.post_multipart("http://hooks.test/x", {"calllog.json": b"bytes"}))


# -- real HTTP on loopback -----------------------------------------------------------------


class CdrReceiver:
    """A Klein receiver for pushes; ``up`` answers 200, otherwise 503."""

    app = Klein()

    def __init__(self) -> None:
        self.received: list[dict] = []

    @app.route("/json", methods=["POST"])
    def json_push(self, request):
        self.received.append(json.loads(request.content.read()))
        return self._answer(request)

    @app.route("/multipart", methods=["POST"])
    def multipart_push(self, request):
        self.received.append({
            "content_type": request.getHeader("content-type"),
            "args": {k.decode(): v for k, v in request.args.items()},
        })
        return self._answer(request)

    @app.route("/reject", methods=["POST"])
    def reject(self, request):
        request.setResponseCode(400)
        return b'{"error": "malformed"}'

    def _answer(self, request):
        request.setHeader("content-type", "application/json")
        return b'{"ok": true}'


async def listen(receiver: CdrReceiver, port: int = 0):
    return reactor.listenTCP(port, Site(receiver.app.resource()), interface="127.0.0.1")


@pytest_twisted.async_yield_fixture
async def spool(tmp_path: Path):
    store = await Store.open(str(tmp_path / "spool.sqlite"))
    yield store
    await store.close()


@pytest_twisted.async_yield_fixture
async def real_client(spool: Store):
    client = WebhookClient(reactor, spool=spool, timeout=5.0, backoff=0.05, spool_backoff=0.0)
    yield client
    await client.stop()


@pytest_twisted.ensureDeferred
async def test_multipart_streams_the_cdr_and_its_recording(tmp_path: Path, real_client) -> None:
    receiver = CdrReceiver()
    port = await listen(receiver)
    try:
        audio = tmp_path / "call-1.wav"
        audio.write_bytes(b"RIFF" + bytes(range(256)) * 400)
        calllog = json.dumps({"call_id": "call-1", "billsec": 925})
        url = f"http://127.0.0.1:{port.getHost().port}/multipart"
        response = await real_client.post_multipart(
            url, {"calllog.json": calllog},
            {"media_audio-0": FilePart(str(audio), "call-1.wav", "audio/wav")})
        assert response.status == 200
        # Without a recording it is still multipart/form-data.
        await real_client.post_multipart(url, {"calllog.json": calllog})
    finally:
        await port.stopListening()
    with_file, without = receiver.received
    assert with_file["content_type"].startswith("multipart/form-data; boundary=")
    assert json.loads(with_file["args"]["calllog.json"][0]) == {"call_id": "call-1",
                                                               "billsec": 925}
    assert with_file["args"]["media_audio-0"][0] == audio.read_bytes()
    assert without["content_type"].startswith("multipart/form-data; boundary=")
    assert list(without["args"]) == ["calllog.json"]


@pytest_twisted.ensureDeferred
async def test_a_missing_recording_fails_without_retrying(real_client, tmp_path: Path) -> None:
    with pytest.raises(OSError):
        await real_client.post_multipart("http://127.0.0.1:9/x", {"calllog.json": "{}"},
                                         {"f": FilePart(str(tmp_path / "gone.wav"), "g.wav")})
    assert real_client.metrics.retried == 0


@pytest_twisted.ensureDeferred
async def test_durable_delivery_survives_a_receiver_that_is_down(real_client, spool) -> None:
    receiver = CdrReceiver()
    port = await listen(receiver)
    number = port.getHost().port
    await port.stopListening()  # down: connections to it are refused
    url = f"http://127.0.0.1:{number}/json"

    outcome = await real_client.send_durable("cdr", url, {"call_id": "call-7"},
                                             headers={"X-API-Key": "k"}, retries=1)
    assert outcome is Delivery.SPOOLED
    [entry] = await spool.spool_entries()
    assert (entry.kind, entry.url, entry.attempts) == ("cdr", url, 1)
    assert "refused" in entry.last_error.lower()
    assert await real_client.redeliver() == 0  # still down
    assert (await spool.spool_entries())[0].attempts == 2

    port = await listen(receiver, number)  # up again on the same port
    try:
        assert await real_client.redeliver() == 1
    finally:
        await port.stopListening()
    assert receiver.received == [{"call_id": "call-7"}]
    assert await spool.spool_entries() == []
    metrics = real_client.metrics
    assert (metrics.spooled, metrics.redelivered, metrics.lost) == (1, 1, 0)


@pytest_twisted.ensureDeferred
async def test_the_spool_survives_a_restart(tmp_path: Path) -> None:
    path = str(tmp_path / "restart.sqlite")
    store = await Store.open(path)
    client = WebhookClient(reactor, spool=store, backoff=0.01, spool_backoff=0.0)
    files = tmp_path / "rec.wav"
    files.write_bytes(b"RIFFdata")
    receiver = CdrReceiver()
    port = await listen(receiver)
    number = port.getHost().port
    await port.stopListening()
    url = f"http://127.0.0.1:{number}/multipart"
    assert await client.send_durable_multipart(
        "cdr", url, {"calllog.json": '{"call_id": "c9"}'},
        {"media_audio-0": FilePart(str(files), "rec.wav", "audio/wav")},
        retries=0) is Delivery.SPOOLED
    await client.stop()
    await store.close()

    store = await Store.open(path)
    client = WebhookClient(reactor, spool=store, spool_backoff=0.0)
    port = await listen(receiver, number)
    try:
        client.start(interval=60.0)  # the first round runs at once
        assert await client.redeliver() == 1  # joins that round
        await client.stop()
        assert await store.spool_entries() == []
    finally:
        await port.stopListening()
        await store.close()
    [pushed] = receiver.received
    assert pushed["args"]["media_audio-0"] == [b"RIFFdata"]


@pytest_twisted.ensureDeferred
async def test_a_rejected_durable_delivery_is_dropped_loudly(real_client, spool) -> None:
    receiver = CdrReceiver()
    port = await listen(receiver)
    try:
        url = f"http://127.0.0.1:{port.getHost().port}/reject"
        assert await real_client.send_durable("cdr", url, {"x": 1}) is Delivery.REJECTED
    finally:
        await port.stopListening()
    assert await spool.spool_entries() == []
    assert real_client.metrics.rejected == 1


@pytest_twisted.ensureDeferred
async def test_delivered_at_once_leaves_nothing_in_the_spool(real_client, spool) -> None:
    receiver = CdrReceiver()
    port = await listen(receiver)
    try:
        url = f"http://127.0.0.1:{port.getHost().port}/json"
        assert await real_client.send_durable("cdr", url, {"call_id": "a"}) is Delivery.DELIVERED
    finally:
        await port.stopListening()
    assert await spool.spool_entries() == []


@pytest_twisted.ensureDeferred
async def test_without_a_spool_a_failed_durable_send_is_lost_and_says_so() -> None:
    client = WebhookClient(reactor, backoff=0.01)
    receiver = CdrReceiver()
    port = await listen(receiver)
    number = port.getHost().port
    await port.stopListening()
    try:
        outcome = await client.send_durable("cdr", f"http://127.0.0.1:{number}/json", {},
                                            retries=1)
    finally:
        await client.stop()
    assert outcome is Delivery.LOST and client.metrics.lost == 1


class ResolvingForever:
    """An HTTP client whose requests are still resolving the host name: a cancel
    surfaces as the DNSLookupError that Twisted's HostnameEndpoint gives then."""

    def __init__(self) -> None:
        self.requests = 0

    def request(self, *args, **kwargs) -> defer.Deferred:
        self.requests += 1
        return defer.Deferred(
            lambda d: d.errback(DNSLookupError("Couldn't find the hostname '127.0.0.1'")))


@pytest_twisted.ensureDeferred
async def test_stop_while_connecting_ends_the_send_and_keeps_it_spooled(spool) -> None:
    http = ResolvingForever()
    client = WebhookClient(reactor, treq_client=http, spool=spool, backoff=30.0)
    delivery = client.send_durable("cdr", "http://127.0.0.1:9/json", {"call_id": "c"},
                                   retries=3)
    while not client._in_flight:  # spooled, and its first request under way
        await task.deferLater(reactor, 0.001)
    await client.stop()  # fires only once the send has ended: no retry 30 s later
    assert delivery.called and await delivery is Delivery.SPOOLED
    assert http.requests == 1 and client.metrics.retried == 0
    [entry] = await spool.spool_entries()
    assert entry.attempts == 0  # a stop is not a failed round


@pytest_twisted.ensureDeferred
async def test_a_corrupt_spool_row_is_dropped_not_retried_forever(real_client, spool) -> None:
    await spool.spool_add("cdr", "http://127.0.0.1:9/x", b"not json")
    assert await real_client.redeliver() == 0
    assert await spool.spool_entries() == []
    assert real_client.metrics.rejected == 1
