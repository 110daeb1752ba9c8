"""The CDR push wired into pbxd (seed §1.4): sipp phones make a real call through a pbxd
whose ``cdr.push_url`` is a Klein receiver on loopback; the receiver gets the
multipart/form-data push whose ``calllog.json`` is the CDR row, with the recording when
the route records. A receiver that is down when the call ends gets the spooled push when
it is back, whether pbxd kept running or was restarted in between."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor, task
from twisted.internet.protocol import Factory, Protocol

from call_support import (
    CALLER_HANGS_UP,
    WAIT_FOR_BYE,
    callee,
    callee_ok,
    caller,
    cdrs,
    drained,
    eventually,
    pbx_config,
    start_pbx,
)
from pbxd.hooks.cdr_push import cdr_json
from pbxd.service import PbxService
from sipp_runner import requires_sipp
from test_cdr_push import CdrReceiver, listen

pytestmark = [requires_sipp, pytest.mark.sipp]

# Before the built-in "extensions" route (priority 0), which would take 1002 unrecorded.
RECORDED = {"name": "recorded", "priority": -1, "match": {"request_user": "1002"}, "destination": "1002",
            "record": True}


@pytest_twisted.async_yield_fixture
async def make_pbx(tmp_path: Path):
    started: list[PbxService] = []

    async def make(url: str, **sections: Any) -> PbxService:
        pbx = await start_pbx(pbx_config(tmp_path / "data", cdr={"push_url": url, "headers": {"X-API-Key": "k"}},
                                         **sections))
        started.append(pbx)
        return pbx

    yield make
    for pbx in started:
        if pbx.running:
            await pbx.stopService()


async def answered_call(pbx: PbxService, tmp_path: Path) -> None:
    phone = await callee(pbx, tmp_path, "1002", "udp", "uas_answer.xml", hangup=WAIT_FOR_BYE)
    result = await caller(pbx, tmp_path, "1001", "1002", "udp", CALLER_HANGS_UP)
    assert result.ok, result.explain()
    assert callee_ok(await phone)


def shorten_spool_backoff(pbx: PbxService) -> None:
    """One attempt per push, a spooled push due again after 50 ms (the service's are
    2 retries and 30 s: real back-off, shortened)."""
    webhooks = pbx.calls.webhooks
    assert webhooks is not None
    webhooks.retries, webhooks.backoff, webhooks.spool_backoff = 0, 0.01, 0.05


@pytest_twisted.ensureDeferred
async def test_a_call_through_pbxd_is_pushed_with_its_recording(make_pbx, tmp_path: Path) -> None:
    receiver = CdrReceiver()
    port = listen(receiver)
    try:
        pbx = await make_pbx(f"http://127.0.0.1:{port.getHost().port}/cdr", routes=[RECORDED])
        await answered_call(pbx, tmp_path)
        [cdr] = await cdrs(pbx)
        await receiver.arrived.addTimeout(10, reactor)
        await drained(pbx)
    finally:
        await port.stopListening()
    [push] = receiver.pushes
    assert push["content_type"].startswith("multipart/form-data; boundary=")
    assert push["api_key"] == "k"
    assert list(push["fields"]) == ["calllog.json", "media_audio-0"]
    calllog = json.loads(push["fields"]["calllog.json"][0])
    assert calllog == cdr_json(cdr)  # the row as stored, id included
    assert (calllog["disposition"], calllog["from_extension"], calllog["to_extension"]) == (
        "answered", "1001", "1002")
    assert cdr.recording_path
    audio = Path(tmp_path / "data", cdr.recording_path)  # a relative path is under the data directory
    assert push["fields"]["media_audio-0"] == [audio.read_bytes()]
    assert f'filename="{os.path.basename(cdr.recording_path)}"'.encode() in push["raw"]
    assert await pbx.store.store.spool_entries() == []


@pytest_twisted.ensureDeferred
async def test_a_receiver_down_during_the_call_gets_the_push_when_it_is_back(make_pbx, tmp_path: Path) -> None:
    receiver = CdrReceiver()
    port = listen(receiver)
    number = port.getHost().port
    await port.stopListening()  # down: connections are refused
    pbx = await make_pbx(f"http://127.0.0.1:{number}/cdr")
    shorten_spool_backoff(pbx)
    webhooks = pbx.calls.webhooks
    await answered_call(pbx, tmp_path)
    [cdr] = await cdrs(pbx)
    await eventually(lambda: webhooks.metrics.spooled == 1)
    [entry] = await pbx.store.store.spool_entries()
    assert entry.kind == "cdr"

    port = listen(receiver, number)  # up again, on the same port
    try:
        webhooks.stop()
        webhooks.start(interval=0.05)  # the service's loop, run more often
        await receiver.arrived.addTimeout(10, reactor)
        await webhooks.redeliver()  # joins the round under way: it has finished after this
        await drained(pbx)
    finally:
        await port.stopListening()
    [push] = receiver.pushes
    assert json.loads(push["fields"]["calllog.json"][0]) == cdr_json(cdr)
    assert await pbx.store.store.spool_entries() == []
    assert (webhooks.metrics.redelivered, webhooks.metrics.lost) == (1, 0)


@pytest_twisted.ensureDeferred
async def test_a_push_spooled_before_a_restart_is_sent_by_the_next_pbxd(make_pbx, tmp_path: Path) -> None:
    receiver = CdrReceiver()
    port = listen(receiver)
    number = port.getHost().port
    await port.stopListening()
    url = f"http://127.0.0.1:{number}/cdr"
    pbx = await make_pbx(url)
    shorten_spool_backoff(pbx)
    await answered_call(pbx, tmp_path)
    [cdr] = await cdrs(pbx)
    await eventually(lambda: pbx.calls.webhooks.metrics.spooled == 1)
    await pbx.stopService()
    # Past the entry's next attempt (50 ms after its failure): due when the next pbxd starts,
    # whose loop sends what is due at once and then every 30 s.
    await task.deferLater(reactor, 0.2, lambda: None)

    port = listen(receiver, number)
    try:
        again = await make_pbx(url)  # same data directory: same store, same spool
        await receiver.arrived.addTimeout(10, reactor)  # sent at start, no call needed
        await eventually(lambda: again.calls.webhooks.metrics.redelivered == 1)
    finally:
        await port.stopListening()
    [push] = receiver.pushes
    assert json.loads(push["fields"]["calllog.json"][0]) == cdr_json(cdr)
    assert await again.store.store.spool_entries() == []


@pytest_twisted.ensureDeferred
async def test_a_clean_stop_waits_for_the_spool_not_for_a_receiver_that_hangs(make_pbx, tmp_path: Path) -> None:
    """The receiver takes the connection and never answers. pbxd's stop does not sit out the
    webhook's timeouts and retries: the CDR is safe once spooled, and the next pbxd sends it."""
    hanging = reactor.listenTCP(0, Factory.forProtocol(Protocol), interface="127.0.0.1")
    number = hanging.getHost().port
    url = f"http://127.0.0.1:{number}/cdr"
    try:
        pbx = await make_pbx(url)
        await answered_call(pbx, tmp_path)
        [cdr] = await cdrs(pbx)
        webhooks = pbx.calls.webhooks
        await eventually(lambda: webhooks._in_flight)  # spooled, and being sent to the receiver
        stopping = reactor.seconds()
        await pbx.stopService()
        # Before, 3 attempts of 5 s and their back-off: about 16 s.
        assert reactor.seconds() - stopping < 2.0
        assert (webhooks.metrics.lost, webhooks._sending) == (0, set())
    finally:
        await hanging.stopListening()

    receiver = CdrReceiver()
    port = listen(receiver, number)
    try:
        again = await make_pbx(url)  # same store: the spooled push is due at once
        await receiver.arrived.addTimeout(10, reactor)
        await eventually(lambda: again.calls.webhooks.metrics.redelivered == 1)
    finally:
        await port.stopListening()
    [push] = receiver.pushes
    assert json.loads(push["fields"]["calllog.json"][0]) == cdr_json(cdr)
