"""Where recordings are and how the CDR names them: a relative data_dir (or rtp.recording_dir)
is fixed to the directory pbxd started in when the service is built (twistd changes to --rundir
afterwards), and the CDR keeps a recording's path relative to data_dir (absolute outside it)."""

from __future__ import annotations

import os
from pathlib import Path

import attrs
import pytest
import pytest_twisted
from twisted.internet import reactor

from call_support import pbx_config
from pbxd.call.cdr import recording_file
from pbxd.call.media import MediaRequest
from pbxd.service import PbxService
from pbxd.transport import Target

HOST = "127.0.0.1"


@attrs.define
class Direction:
    value: str


@attrs.define(eq=False)
class Leg:
    direction: Direction
    target: Target
    is_ended: bool = False


def sdp(port: int) -> bytes:
    return (f"v=0\r\no=phone 1 1 IN IP4 {HOST}\r\ns=-\r\nc=IN IP4 {HOST}\r\nt=0 0\r\n"
            f"m=audio {port} RTP/AVP 0\r\n").encode()


def test_recording_file_is_relative_to_the_data_dir_inside_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = tmp_path / "data"
    assert recording_file(data / "recordings" / "c.wav", data) == "recordings/c.wav"
    assert recording_file(tmp_path / "elsewhere" / "c.wav", data) == str(tmp_path / "elsewhere" / "c.wav")
    assert recording_file(tmp_path / "data-2" / "c.wav", data) == str(tmp_path / "data-2" / "c.wav")
    assert recording_file(data / "c.wav", None) == str(data / "c.wav")
    monkeypatch.chdir(tmp_path)  # relative paths are from the working directory, on both sides
    assert recording_file(Path("data/recordings/c.wav"), Path("data")) == "recordings/c.wav"


@pytest_twisted.ensureDeferred
async def test_relative_paths_are_fixed_where_pbxd_started(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    started_in, rundir = tmp_path / "started-in", tmp_path / "rundir"
    started_in.mkdir()
    rundir.mkdir()
    monkeypatch.chdir(started_in)
    config = pbx_config(Path("pbxd-data"), rtp={"port_min": 41700, "port_max": 41719, "bind_address": HOST},
                        cdr={"push_url": "http://127.0.0.1:9/cdr"})
    assert not config.data_dir.is_absolute()
    pbx = PbxService(config, reactor)
    assert pbx.config.data_dir == started_in / "pbxd-data"
    os.chdir(rundir)  # what twistd --rundir does between makeService and starting the services
    pbx.privilegedStartService()
    pbx.startService()
    try:
        await pbx.store.when_open()
        assert (started_in / "pbxd-data" / "pbxd.sqlite3").is_file()
        assert not (rundir / "pbxd-data").exists()
        assert pbx.calls.manager.cdr_pusher.recordings_base == str(started_in / "pbxd-data")
        # A recorded call's media: the file lands under the data directory, whatever the
        # working directory is now.
        media = pbx.calls.manager.media_factory(MediaRequest("rec@host", "always", True))
        caller = Leg(Direction("inbound"), Target("udp", HOST, 5060))
        callee = Leg(Direction("outbound"), Target("udp", HOST, 5062))
        media.offer_to(callee, sdp(40000))
        media.answer_to(caller, sdp(40002))
        media.close()
        assert media.recording_path == "recordings/rec_host.wav"  # what the CDR keeps
        recorded = started_in / "pbxd-data" / "recordings" / "rec_host.wav"
        assert recorded.stat().st_size == media.recording_bytes
    finally:
        await pbx.stopService()


def test_a_relative_recording_dir_is_fixed_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    pbx = PbxService(pbx_config(Path("data"), rtp={"recording_dir": "calls"}), reactor)
    assert pbx.config.rtp.recording_dir == tmp_path / "calls"
    # Outside data_dir: the CDR keeps the absolute path.
    media = pbx.calls.manager.media_factory(MediaRequest("out@host", "always", True))
    media.offer_to(Leg(Direction("outbound"), Target("udp", HOST, 5062)), sdp(40000))
    assert media.start_recording() == str(tmp_path / "calls" / "out_host.wav")
    media.close()
