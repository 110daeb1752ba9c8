"""Faults (issue 9): a full disk under a recording costs the recording, never
the call (a clear log line, a count for /metrics, the call goes on); a
locked database gets a REGISTER 503 with Retry-After, not 500, and pbxd
registers again once the lock is gone."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher

from pbxd.call.media import MediaRequest
from pbxd.config import RtpConfig
from pbxd.media.ports import PortPool
from pbxd.media.recorder import Recorder
from pbxd.media.session import relay_media_factory
from pbxd.transport import Target
from media_support import HOST
from sipp_runner import requires_sipp
from test_media_session import FakeDirection, FakeLeg, offer
from test_recorder import packets
from test_registrar import pbx_config, sipp_register, start_pbx

pytestmark = pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")


class LogLines:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def __call__(self, event: dict[str, Any]) -> None:
        self.events.append(event)

    def errors(self) -> list[str]:
        from twisted.logger import LogLevel, formatEvent

        return [formatEvent(e) for e in self.events if e.get("log_level") == LogLevel.error]


@pytest.fixture
def logged() -> Any:
    lines = LogLines()
    globalLogPublisher.addObserver(lines)
    yield lines
    globalLogPublisher.removeObserver(lines)


def test_a_disk_that_fills_mid_call_ends_the_recording_only(logged: LogLines) -> None:
    clock = Clock()
    before = Recorder.failures
    # /dev/full: every write fails with ENOSPC, as on a full disk.
    recorder = Recorder(Path("/dev/full"), open("/dev/full", "wb"), clock, "stereo", ("a", "b"), 0.2)
    tone = (np.sin(np.arange(8000) / 8000 * 2 * np.pi * 440) * 6000).astype(np.int16)
    for packet in packets(tone, 0, ssrc=7)[:50]:
        recorder.add("a", *_rtp_fields(packet), "pcmu")
        clock.advance(0.02)
    recorder.flush()  # the flusher's tick: must not raise into the reactor
    assert recorder.failed == "No space left on device" and recorder.stopped
    assert Recorder.failures == before + 1
    recorder.add("a", 0, 7, packets(tone, 0, ssrc=7)[0], "pcmu")  # ignored from now on
    recorder.stop()  # the call's teardown: quiet
    assert logged.errors() == ["recording /dev/full stopped: No space left on device; the call goes on unrecorded"]


def test_a_recording_that_cannot_start_does_not_stop_the_answer(logged: LogLines) -> None:
    before = Recorder.failures
    with pytest.raises(OSError):
        Recorder.start(Path("/dev/full"), Clock())
    # A call set to be recorded, with a recording directory that cannot be
    # made: the answer still goes through, unrecorded.
    pool = PortPool(41600, 41619)
    factory = relay_media_factory(reactor, RtpConfig(41600, 41619, bind_address=HOST), Path("/dev/full"), pool)
    session = factory(MediaRequest("call/2@host", "always", True))
    try:
        caller = FakeLeg(FakeDirection("inbound"), Target("udp", HOST, 5060))
        callee = FakeLeg(FakeDirection("outbound"), Target("udp", HOST, 5062))
        session.offer_to(callee, offer(40000))
        assert session.answer_to(caller, offer(40002))
        assert session.relay is not None and session.relay.recorder is None
    finally:
        session.close()
    assert Recorder.failures == before + 1
    assert any("call call/2@host: cannot record" in line for line in logged.errors())
    assert pool.available == pool.size


def _rtp_fields(packet: bytes) -> tuple[int, int, bytes]:
    timestamp = int.from_bytes(packet[4:8], "big")
    ssrc = int.from_bytes(packet[8:12], "big")
    return timestamp, ssrc, packet



@requires_sipp
@pytest_twisted.ensureDeferred
async def test_a_locked_database_gets_503_and_registering_works_again_after(tmp_path: Path, logged: LogLines) -> None:
    pbx = await start_pbx(pbx_config(tmp_path / "data"))
    database = sqlite3.connect(tmp_path / "data" / "pbxd.sqlite3", isolation_level=None)
    try:
        database.execute("BEGIN IMMEDIATE")  # another process holds the write lock
        result = await sipp_register(pbx, tmp_path, "udp", expect=503)  # after the store's busy timeout
        assert "Retry-After: 5" in result.messages
        assert any("the store failed" in line and "answered 503" in line for line in logged.errors())
        database.execute("ROLLBACK")
        await sipp_register(pbx, tmp_path, "udp", expect=200)
    finally:
        database.close()
        await pbx.stopService()
