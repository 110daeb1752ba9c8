"""A recording started again on its file continues it: the earlier audio is kept, the stopped
time is silence (same process) or the audio follows on (a file from an earlier run), and a
file that is not a recording in the same format is refused, never overwritten. A later
answer (hold, a session refresh) does not restart a recording the operator stopped."""

from __future__ import annotations

import gc
import wave
from pathlib import Path

import attrs
import numpy as np
import pytest
from twisted.internet import reactor
from twisted.internet.task import Clock

from pbxd.call.media import MediaRequest
from pbxd.config import RtpConfig
from pbxd.media import g711
from pbxd.media.recorder import Recorder, wav_header
from pbxd.media.rtp import RtpPacket
from pbxd.media.session import relay_media_factory
from pbxd.transport import Target

RATE = 8000
HOST = "127.0.0.1"


def speak(recorder: Recorder, clock: Clock, channel: str, level: int, seconds: float, ssrc: int) -> None:
    """``seconds`` of a constant level on ``channel``, a packet every 20 ms, the clock moving."""
    payload = g711.ulaw_encode(np.full(160, level, dtype=np.int16)).tobytes()
    for index in range(round(seconds * 50)):
        if index:
            clock.advance(0.02)
        recorder.add(channel, index * 160, ssrc, RtpPacket(0, index, index * 160, ssrc, payload).to_bytes(), "pcmu")
    clock.advance(0.02)


def decoded_level(level: int) -> int:
    return int(g711.ulaw_decode(g711.ulaw_encode(np.full(1, level, dtype=np.int16)))[0])


def frames_of(path: Path) -> np.ndarray:
    with wave.open(str(path), "rb") as wav:
        channels = wav.getnchannels()
        data = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2")
    return data.reshape(-1, channels)


def test_stop_then_start_keeps_the_first_part_and_the_stopped_time_is_silence(tmp_path: Path) -> None:
    clock = Clock()
    path = tmp_path / "call.wav"
    first = Recorder.start(path, clock)
    speak(first, clock, "a", 3000, 1.0, 1)  # 0 .. 1.0 s on the left
    first.stop()
    assert len(frames_of(path)) == RATE
    clock.advance(0.5)  # stopped for half a second
    second = Recorder.start(path, clock)
    speak(second, clock, "b", -2000, 1.0, 2)  # 1.5 .. 2.5 s on the right
    second.stop()

    frames = frames_of(path)
    assert len(frames) == round(2.5 * RATE)
    assert second.size == path.stat().st_size == 44 + 4 * len(frames)
    left, right = frames[:, 0], frames[:, 1]
    assert (left[:RATE] == decoded_level(3000)).all()  # the first part is still there
    assert (left[RATE:] == 0).all()
    assert (right[:round(1.5 * RATE)] == 0).all()  # silence while stopped: the timeline holds
    assert (right[round(1.5 * RATE):] == decoded_level(-2000)).all()


def test_a_file_of_an_earlier_run_continues_right_after_its_audio(tmp_path: Path) -> None:
    path = tmp_path / "call.wav"
    clock = Clock()
    first = Recorder.start(path, clock, mode="mono")
    speak(first, clock, "a", 1000, 0.4, 1)
    first.stop()
    with path.open("ab") as file:  # a write torn by a crash, after the last header patch
        file.write(b"\x01\x02\x03")
    del first
    gc.collect()  # that recorder is gone: nothing in this process knows the file's timeline
    later = Clock()
    later.advance(1000.0)
    second = Recorder.start(path, later, mode="mono")
    speak(second, later, "a", 2000, 0.4, 7)
    second.stop()
    mono = frames_of(path)[:, 0]
    assert len(mono) == round(0.8 * RATE) and path.stat().st_size == 44 + 2 * len(mono)
    assert (mono[:round(0.4 * RATE)] == decoded_level(1000)).all()
    assert (mono[round(0.4 * RATE):] == decoded_level(2000)).all()


def test_a_file_that_is_not_a_recording_of_the_same_format_is_refused_untouched(tmp_path: Path) -> None:
    clock = Clock()
    other = tmp_path / "notes.wav"
    other.write_bytes(b"not a wave file at all, but somebody's bytes" * 3)
    stereo = tmp_path / "stereo.wav"
    stereo.write_bytes(wav_header(2, 4) + b"\x00\x01\x00\x02")
    for path, mode in ((other, "stereo"), (stereo, "mono")):
        before = path.read_bytes()
        with pytest.raises(FileExistsError):
            Recorder.start(path, clock, mode=mode)
        assert path.read_bytes() == before


def test_a_bad_mode_touches_no_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        Recorder.start(tmp_path / "x.wav", Clock(), mode="surround")
    assert not (tmp_path / "x.wav").exists()


def test_a_file_being_recorded_is_not_started_twice(tmp_path: Path) -> None:
    clock = Clock()
    path = tmp_path / "call.wav"
    running = Recorder.start(path, clock)
    with pytest.raises(FileExistsError):
        Recorder.start(path, clock)
    running.stop()
    Recorder.start(path, clock).stop()  # once stopped, it may continue


# --- through RelayMedia: what restarts a recording --------------------------------------------------

@attrs.define
class Direction:
    value: str


@attrs.define(eq=False)
class Leg:
    direction: Direction
    target: Target
    is_ended: bool = False


def sdp(port: int, direction: str = "sendrecv") -> bytes:
    return (f"v=0\r\no=phone 1 1 IN IP4 {HOST}\r\ns=-\r\nc=IN IP4 {HOST}\r\nt=0 0\r\n"
            f"m=audio {port} RTP/AVP 0\r\na={direction}\r\n").encode()


def test_a_reinvite_does_not_restart_a_recording_the_operator_stopped(tmp_path: Path) -> None:
    factory = relay_media_factory(reactor, RtpConfig(41720, 41739, bind_address=HOST), tmp_path)
    media = factory(MediaRequest("stopped@host", "always", True))  # record: true
    caller = Leg(Direction("inbound"), Target("udp", HOST, 5060))
    callee = Leg(Direction("outbound"), Target("udp", HOST, 5062))
    try:
        media.offer_to(callee, sdp(40000))
        media.answer_to(caller, sdp(40002))
        relay = media.relay
        assert relay is not None and relay.recorder is not None  # recording from the answer
        media.stop_recording()  # the operator (/console stop_recording)
        # The callee puts the call on hold and takes it off again: two more answers.
        for direction, answer in (("sendonly", "recvonly"), ("sendrecv", "sendrecv")):
            media.offer_to(caller, sdp(40002, direction))
            media.answer_to(callee, sdp(40000, answer))
            assert relay.recorder is None, "an answer restarted a recording the operator stopped"
        media.start_recording()  # the operator again: the same file goes on
        assert relay.recorder is not None and relay.recorder.path == tmp_path / "recordings" / "stopped_host.wav"
    finally:
        media.close()
