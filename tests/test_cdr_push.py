"""The CDR push: its JSON shape, and delivery to a real Klein receiver on
127.0.0.1 through a real store's spool, including a receiver that is down,
comes back on the same port, and a restart in between."""

from __future__ import annotations

import datetime
import json
from pathlib import Path

import pytest_twisted
from klein import Klein
from twisted.internet import defer, reactor
from twisted.web.server import Site

from pbxd.config import parse_config
from pbxd.hooks.cdr_push import CdrPusher, cdr_json
from pbxd.hooks.client import Delivery, WebhookClient
from pbxd.store import Cdr, Store

START = 1705312800.0  # 2024-01-15T10:00:00Z

ANSWERED = Cdr(
    call_id="call-123",
    from_number="1001",
    to_number="1002",
    direction="internal",
    start_time=START,
    answer_time=START + 5,
    end_time=START + 930.4,
    disposition="answered",
    hangup_cause="normal_clearing",
    hangup_side="caller",
    sip_status=200,
    recording_path="recordings/1001_to_1002_20240115_100000.wav",
    recording_size=1600,
    quality={"mos": 4.3},
    id=7,
)


def test_cdr_json_has_the_rest_shape_and_the_rest_of_the_record() -> None:
    assert cdr_json(ANSWERED) == {
        "id": 7,
        "call_id": "call-123",
        "from_extension": "1001",
        "to_extension": "1002",
        "direction": "internal",
        "start_time": "2024-01-15T10:00:00+00:00",
        "answer_time": "2024-01-15T10:00:05+00:00",
        "end_time": "2024-01-15T10:15:30+00:00",
        "disposition": "answered",
        "duration": 930,
        "billsec": 925,
        "hangup_cause": "normal_clearing",
        "hangup_side": "caller",
        "sip_status": 200,
        "trunk": None,
        "recording_file": "recordings/1001_to_1002_20240115_100000.wav",
        "recording_size": 1600,
        "quality": {"mos": 4.3},
    }


def test_cdr_json_of_an_unanswered_call_in_another_zone() -> None:
    missed = Cdr(call_id="c2", from_number="+15551234", to_number="1002", direction="inbound",
                 start_time=START, end_time=START + 0.5, disposition="no_answer",
                 trunk="carrier", sip_status=480)
    shaped = cdr_json(missed, tz=datetime.timezone(datetime.timedelta(hours=-5)))
    assert shaped["start_time"] == "2024-01-15T05:00:00-05:00"
    assert (shaped["answer_time"], shaped["billsec"], shaped["duration"]) == (None, 0, 1)
    assert (shaped["trunk"], shaped["id"], shaped["recording_file"], shaped["quality"]) == (
        "carrier", None, None, None)
    json.dumps(shaped, allow_nan=False)


class CdrReceiver:
    app = Klein()

    def __init__(self) -> None:
        self.pushes: list[dict] = []
        self.arrived: defer.Deferred[None] = defer.Deferred()

    @app.route("/cdr", methods=["POST"])
    def cdr(self, request):
        request.content.seek(0)
        self.pushes.append({
            "content_type": request.getHeader("content-type"),
            "api_key": request.getHeader("x-api-key"),
            "fields": {k.decode(): v for k, v in request.args.items()},
            "raw": request.content.read(),
        })
        if not self.arrived.called:
            self.arrived.callback(None)
        return b"{}"


def listen(receiver: CdrReceiver, port: int = 0):
    return reactor.listenTCP(port, Site(receiver.app.resource()), interface="127.0.0.1")


@pytest_twisted.async_yield_fixture
async def store(tmp_path: Path):
    spool = await Store.open(str(tmp_path / "pbxd.sqlite"))
    yield spool
    await spool.close()


def make_client(store: Store) -> WebhookClient:
    # Real back-off, shortened: retries after 10 ms, spooled pushes due 50 ms later.
    return WebhookClient(reactor, spool=store, timeout=5.0, retries=1, backoff=0.01,
                         spool_backoff=0.05)


@pytest_twisted.async_yield_fixture
async def client(store: Store):
    webhook_client = make_client(store)
    yield webhook_client
    await webhook_client.stop()


def recording(tmp_path: Path) -> Path:
    audio = tmp_path / "recordings" / "1001_to_1002_20240115_100000.wav"
    audio.parent.mkdir(exist_ok=True)
    audio.write_bytes(b"RIFF" + bytes(range(256)) * 40)
    return audio


@pytest_twisted.ensureDeferred
async def test_push_with_the_recording(tmp_path: Path, client, store) -> None:
    audio = recording(tmp_path)
    receiver = CdrReceiver()
    port = listen(receiver)
    try:
        url = f"http://127.0.0.1:{port.getHost().port}/cdr"
        pusher = CdrPusher(client, url, {"X-API-Key": "k"}, recordings_base=tmp_path)
        assert await pusher.push(ANSWERED) is Delivery.DELIVERED
    finally:
        await port.stopListening()
    [push] = receiver.pushes
    assert push["content_type"].startswith("multipart/form-data; boundary=")
    assert push["api_key"] == "k"
    assert list(push["fields"]) == ["calllog.json", "media_audio-0"]
    assert json.loads(push["fields"]["calllog.json"][0]) == cdr_json(ANSWERED)
    assert push["fields"]["media_audio-0"] == [audio.read_bytes()]
    assert (b'Content-Disposition: form-data; name="media_audio-0"; '
            b'filename="1001_to_1002_20240115_100000.wav"') in push["raw"]
    assert b"Content-Type: audio/wav" in push["raw"]
    assert await store.spool_entries() == []


@pytest_twisted.ensureDeferred
async def test_push_without_a_recording(tmp_path: Path, client) -> None:
    recording(tmp_path)
    receiver = CdrReceiver()
    port = listen(receiver)
    try:
        url = f"http://127.0.0.1:{port.getHost().port}/cdr"
        # Recording off; a CDR without one; a recording file that is gone.
        off = CdrPusher(client, url, include_recording=False, recordings_base=tmp_path)
        assert await off.push(ANSWERED) is Delivery.DELIVERED
        pusher = CdrPusher(client, url, recordings_base=tmp_path)
        missed = Cdr(call_id="c2", from_number="1001", to_number="1002", direction="internal",
                     start_time=START, end_time=START + 3, disposition="busy", sip_status=486)
        assert await pusher.push(missed) is Delivery.DELIVERED
        gone = CdrPusher(client, url, recordings_base=tmp_path / "elsewhere")
        assert await gone.push(ANSWERED) is Delivery.DELIVERED
    finally:
        await port.stopListening()
    assert [list(p["fields"]) for p in receiver.pushes] == [["calllog.json"]] * 3
    assert all(p["content_type"].startswith("multipart/form-data") for p in receiver.pushes)
    assert json.loads(receiver.pushes[1]["fields"]["calllog.json"][0])["call_id"] == "c2"


@pytest_twisted.ensureDeferred
async def test_a_receiver_down_then_up_gets_the_push(tmp_path: Path, client, store) -> None:
    audio = recording(tmp_path)
    receiver = CdrReceiver()
    port = listen(receiver)
    number = port.getHost().port
    await port.stopListening()  # down: connections are refused
    pusher = CdrPusher(client, f"http://127.0.0.1:{number}/cdr", recordings_base=tmp_path)

    assert await pusher.push(ANSWERED) is Delivery.SPOOLED
    [entry] = await store.spool_entries()
    assert (entry.kind, entry.attempts) == ("cdr", 1)

    port = listen(receiver, number)  # up again, on the same port
    try:
        client.start(interval=0.05)  # the redelivery loop the service runs
        await receiver.arrived.addTimeout(10, reactor)
        await client.redeliver()  # joins the round under way: it has finished after this
    finally:
        await client.stop()
        await port.stopListening()
    [push] = receiver.pushes
    assert json.loads(push["fields"]["calllog.json"][0]) == cdr_json(ANSWERED)
    assert push["fields"]["media_audio-0"] == [audio.read_bytes()]
    assert await store.spool_entries() == []
    assert (client.metrics.spooled, client.metrics.redelivered, client.metrics.lost) == (1, 1, 0)


@pytest_twisted.ensureDeferred
async def test_a_push_spooled_before_a_restart_is_sent_after_it(tmp_path: Path) -> None:
    receiver = CdrReceiver()
    port = listen(receiver)
    number = port.getHost().port
    await port.stopListening()
    url = f"http://127.0.0.1:{number}/cdr"
    path = str(tmp_path / "restart.sqlite")

    store = await Store.open(path)
    client = make_client(store)
    assert await CdrPusher(client, url).push(ANSWERED) is Delivery.SPOOLED
    await client.stop()
    await store.close()

    store = await Store.open(path)
    client = make_client(store)
    port = listen(receiver, number)
    try:
        client.start(interval=0.05)
        await receiver.arrived.addTimeout(10, reactor)
        await client.redeliver()
        assert await store.spool_entries() == []
    finally:
        await client.stop()
        await port.stopListening()
        await store.close()
    [push] = receiver.pushes
    assert json.loads(push["fields"]["calllog.json"][0])["call_id"] == "call-123"
    # The recording was not where the pusher looked (cwd): the CDR went without it.
    assert list(push["fields"]) == ["calllog.json"]


def test_pusher_from_config(tmp_path: Path) -> None:
    client = WebhookClient(reactor)
    assert CdrPusher.from_config(parse_config({}).cdr, client, tmp_path) is None
    config = parse_config({"cdr": {"push_url": "https://billing.example/cdr",
                                   "headers": {"X-API-Key": "k"}, "include_recording": False}})
    pusher = CdrPusher.from_config(config.cdr, client, tmp_path)
    assert pusher is not None
    assert (pusher.url, pusher.headers, pusher.include_recording, pusher.recordings_base) == (
        "https://billing.example/cdr", {"X-API-Key": "k"}, False, str(tmp_path))
