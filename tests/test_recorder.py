"""WAV recording: decoded, aligned (gaps are silence), written incrementally, start/stop/pause/resume."""

from __future__ import annotations

import wave
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import Clock

from pbxd.media import g711
from pbxd.media.ports import PortPool
from pbxd.media.recorder import Recorder
from pbxd.media.relay import MediaRelay, RelayOptions
from pbxd.media.rtp import RtpPacket
from pbxd.sip.sdp import Codec
from media_support import CODECS, HOST, phones  # noqa: F401  (fixture)

RATE = 8000


def tone(frequency: float, seconds: float, amplitude: int = 6000) -> np.ndarray:
    t = np.arange(round(seconds * RATE)) / RATE
    return np.round(amplitude * np.sin(2 * np.pi * frequency * t)).astype(np.int16)


def packets(samples: np.ndarray, payload_type: int, ssrc: int, timestamp: int = 1000) -> list[bytes]:
    encode = g711.ulaw_encode if payload_type == 0 else g711.alaw_encode
    out = []
    for index in range(0, len(samples), 160):
        payload = encode(samples[index:index + 160]).tobytes()
        out.append(RtpPacket(payload_type, index // 160, timestamp + index, ssrc, payload).to_bytes())
    return out


def read(path: Path) -> tuple[Any, np.ndarray]:
    with wave.open(str(path), "rb") as wav:
        params = wav.getparams()
        data = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2")
    return params, data.reshape(-1, params.nchannels)


def decoded(samples: np.ndarray, law: str = "pcmu") -> np.ndarray:
    decode, encode, _ = g711.CODECS[law]
    return decode(encode(samples))


def test_stereo_aligned_with_gaps_and_written_as_it_goes(tmp_path: Path) -> None:
    clock = Clock()
    path = tmp_path / "rec" / "call.wav"
    recorder = Recorder.start(path, clock, mode="stereo", channels=("a", "b"))
    left, right = tone(440, 1.0), tone(1000, 0.6)
    left_packets = packets(left, 0, 1)
    # a: 0.5 s of tone, 0.3 s of nothing (timestamps skip too), the rest; b: PCMA from 0.2 s to 0.5 s
    for index, packet in enumerate(left_packets):
        at = index * 0.02 + (0.3 if index >= 25 else 0.0)
        clock.advance(at - clock.seconds())
        skipped = packet if index < 25 else packets(left[index * 160:index * 160 + 160], 0, 1, 1000 + index * 160 + 2400)[0]
        recorder.add("a", int.from_bytes(skipped[4:8], "big"), 1, skipped, "pcmu")
        if 10 <= index < 25:
            b = packets(right, 8, 2)[index - 10]
            recorder.add("b", int.from_bytes(b[4:8], "big"), 2, b, "pcma")
    clock.advance(0.3)  # t = 1.6: one flush has run at 1.0
    # Readable while recording: the header already counts what was flushed.
    params, frames = read(path)
    assert (params.nchannels, params.sampwidth, params.framerate) == (2, 2, 8000)
    assert 0.7 * RATE <= len(frames) <= 1.0 * RATE
    assert path.stat().st_size == 44 + 4 * len(frames) == recorder.size
    recorder.stop()
    recorder.stop()  # idempotent
    params, frames = read(path)
    assert len(frames) == round(1.58 * RATE)  # the clock when it stopped
    a, b = frames[:, 0], frames[:, 1]
    expected_a = np.zeros(len(frames), dtype=np.int16)
    expected_a[:4000] = decoded(left[:4000])
    expected_a[6400:10400] = decoded(left[4000:])
    assert (a == expected_a).all()
    expected_b = np.zeros(len(frames), dtype=np.int16)
    expected_b[1600:4000] = decoded(right, "pcma")[:2400]
    assert (b == expected_b).all()


def test_mono_mix_pause_resume_and_new_ssrc(tmp_path: Path) -> None:
    clock = Clock()
    path = tmp_path / "mono.wav"
    recorder = Recorder.start(path, clock, mode="mono")
    sound = np.full(160, 1000, dtype=np.int16)
    level = int(decoded(sound)[0])
    for index in range(50):  # one second from both sides, paused from 0.4 s to 0.6 s
        clock.advance(0.02 if index else 0)
        if index == 20:
            recorder.pause()
        if index == 30:
            recorder.resume()
        ssrc = 5 if index < 40 else 6  # a new stream at 0.8 s, its timestamps unrelated
        timestamp = index * 160 if ssrc == 5 else 99999 + index * 160
        for channel in ("a", "b"):
            recorder.add(channel, timestamp, ssrc, packets(sound, 0, ssrc, timestamp)[0], "pcmu")
    recorder.add("a", 0, 5, b"\x80", "pcmu")  # malformed: ignored
    recorder.add("a", 0, 5, packets(sound, 0, 5)[0], "g729")  # cannot decode: silence
    clock.advance(0.02)
    recorder.stop()
    params, frames = read(path)
    assert params.nchannels == 1
    mono = frames[:, 0]
    assert len(mono) == round(1.0 * RATE)
    assert (mono[:3200] == 2 * level).all()
    assert (mono[3200:4800] == 0).all()
    assert (mono[4800:8000] == 2 * level).all()
    assert recorder.duration == len(mono) / RATE


def test_bad_mode_and_mixing_clips(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        Recorder.start(tmp_path / "x.wav", Clock(), mode="surround")
    clock = Clock()
    recorder = Recorder.start(tmp_path / "loud.wav", clock, mode="mono")
    loud = np.full(160, 30000, dtype=np.int16)
    for channel in ("a", "b"):
        recorder.add(channel, 0, 1, packets(loud, 0, 1, 0)[0], "pcmu")
    recorder.stop()
    _, frames = read(tmp_path / "loud.wav")
    assert (frames[:160, 0] == 32767).all()


@pytest_twisted.ensureDeferred
async def test_recording_through_the_relay(tmp_path: Path, phones: Any) -> None:  # noqa: F811
    alice, bob = phones(), phones()
    clock = Clock()
    pool = PortPool(41400, 41420)
    relay = MediaRelay.open(reactor, pool, RelayOptions(bind_address=HOST, timeout=None), clock=clock)
    try:
        relay.a.set_remote(alice.address, CODECS)
        relay.b.set_remote(bob.address, [Codec(8, "PCMA", 8000)])
        recorder = relay.start_recording(tmp_path / "call.wav")
        with pytest.raises(ValueError):
            relay.start_recording(tmp_path / "again.wav")
        hello, answer = tone(440, 0.4), tone(1200, 0.4)
        # Alice: 0.2 s, a 0.2 s gap (timestamps skip), 0.2 s; Bob: 0.4 s of PCMA
        said = packets(hello[:1600], 0, 11) + packets(hello[1600:], 0, 11, 1000 + 3200)
        for data in said:
            alice.port.write(data, (HOST, relay.a.port))
        for data in packets(answer, 8, 22):
            bob.port.write(data, (HOST, relay.b.port))
        await bob.wait_for(len(said))
        await alice.wait_for(20)
        assert relay.stop_recording() is recorder and recorder.stopped
        params, frames = read(tmp_path / "call.wav")
        assert params.nchannels == 2 and len(frames) == 4800
        left = np.zeros(4800, dtype=np.int16)
        left[:1600] = decoded(hello[:1600])
        left[3200:4800] = decoded(hello[1600:])
        assert (frames[:, 0] == left).all()
        assert (frames[:3200, 1] == decoded(answer, "pcma")).all() and (frames[3200:, 1] == 0).all()
    finally:
        await relay.close()
    assert pool.available == pool.size


def test_late_packets_within_the_hold_back_are_placed(tmp_path: Path) -> None:
    clock = Clock()
    recorder = Recorder.start(tmp_path / "late.wav", clock, mode="mono", channels=("a", "b"))
    sound = np.full(160, 2000, dtype=np.int16)
    level = int(decoded(sound)[0])
    said = packets(np.tile(sound, 60), 0, 1, 0)  # 1.2 s
    order = list(range(60))
    order[10], order[11] = order[11], order[10]  # reordered by the network
    late = order.pop(30)  # arrives 0.1 s late: still placed
    lost = order.pop(40)  # arrives after its second was written: dropped
    for step, index in enumerate(order):
        clock.advance(0.02 if step else 0)
        recorder.add("a", index * 160, 1, said[index], "pcmu")
        if index == 34:
            recorder.add("a", late * 160, 1, said[late], "pcmu")
    clock.advance(1.0)  # the flush at 2.0 s wrote up to 1.8 s: packet 41 (0.82 s) is too late
    recorder.add("a", lost * 160, 1, said[lost], "pcmu")
    recorder.stop()
    _, frames = read(tmp_path / "late.wav")
    mono = frames[:, 0]
    expected = np.full(len(mono), 0, dtype=np.int16)
    expected[: 60 * 160] = level
    expected[lost * 160:(lost + 1) * 160] = 0
    assert (mono[: 60 * 160] == expected[: 60 * 160]).all()
