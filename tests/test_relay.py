"""The RTP relay over real UDP sockets on 127.0.0.1: two fake phones, one relay between them."""

from __future__ import annotations

import socket
import wave
from pathlib import Path
from collections.abc import Iterator
from typing import Any

import attrs
import numpy as np
import pytest
import pytest_twisted
from twisted.internet import defer, reactor
from twisted.internet.task import Clock, deferLater

from media_support import CODECS, HOST, WAIT, phones  # noqa: F401  (fixture)
from pbxd.media import g711
from pbxd.media.dtmf import DtmfDetector, dtmf_packets
from pbxd.media.ports import PortPool, PortsExhausted
from pbxd.media.relay import MediaRelay, RelayOptions, Silence, Tone, WavFile, read_wav_8k
from pbxd.media.rtp import ReportBlock, RtcpReport, SenderInfo, parse_rtcp, parse_rtp
from pbxd.sip.sdp import Codec, parse_sdp

@pytest.fixture
def pool() -> Iterator[PortPool]:
    pool = PortPool(41000, 41199)
    yield pool
    assert pool.available == pool.size, "the relay leaked ports"


@pytest.fixture(params=["epoll", "twisted"])
def relays(pool: PortPool, request: Any) -> Iterator[Any]:
    """Relays on the pool, with each way of reading sockets (the shared epoll set, Twisted ports)."""
    opened: list[MediaRelay] = []

    def make(**kwargs: Any) -> MediaRelay:
        options = kwargs.pop("options", RelayOptions(bind_address=HOST, timeout=None))
        relay = MediaRelay.open(reactor, pool, attrs.evolve(options, engine=request.param), **kwargs)
        opened.append(relay)
        return relay

    yield make
    for relay in opened:
        relay.close()


async def until(predicate: Any) -> None:
    """Wait (on the real reactor, bounded) for something only the relay's side can see."""
    for _ in range(int(WAIT / 0.01)):
        if predicate():
            return
        await deferLater(reactor, 0.01)
    raise AssertionError("condition not reached")


def unused_port() -> int:
    """A port nobody listens on: the SDP address of a phone whose NAT rewrites its source port."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


@pytest_twisted.ensureDeferred
async def test_both_ways_and_latching_behind_nat(phones: Any, relays: Any) -> None:
    alice, bob = phones(), phones()
    relay = relays()
    # Alice's SDP names a port she does not send from (her NAT rewrote it).
    relay.a.set_remote((HOST, unused_port()), CODECS)
    relay.b.set_remote(bob.address, CODECS)
    sent = alice.send_audio(relay.a.port, 5)
    await bob.wait_for(5)
    assert [data for data, _ in bob.received] == sent
    assert {source for _, source in bob.received} == {(HOST, relay.b.port)}
    assert relay.a.latched == alice.address and relay.a.destination == alice.address

    back = bob.send_audio(relay.b.port, 5, ssrc=0x2222, payload=b"\x80" * 160)
    await alice.wait_for(5)
    assert [data for data, _ in alice.received] == back
    assert {source for _, source in alice.received} == {(HOST, relay.a.port)}
    stats = relay.stats()
    assert stats["a"]["received"]["packets"] == 5 and stats["a"]["sent"]["packets"] == 5
    assert stats["a"]["received"]["lost"] == 0 and stats["b"]["latched"]
    assert 4.0 < stats["a"]["mos"] <= 4.5


@pytest_twisted.ensureDeferred
async def test_relatch_only_after_a_run_from_the_new_source(phones: Any, relays: Any) -> None:
    alice, moved, bob = phones(), phones(), phones()
    relay = relays(options=RelayOptions(bind_address=HOST, timeout=None, relatch_packets=4))
    relay.a.set_remote(alice.address, CODECS)
    relay.b.set_remote(bob.address, CODECS)
    alice.send_audio(relay.a.port, 2)
    await bob.wait_for(2)
    # An interleaved third party never takes over: Alice's packets reset its count.
    for _ in range(3):
        moved.send_audio(relay.a.port, 2, ssrc=0x3333)
        alice.send_audio(relay.a.port, 1)
    await bob.wait_for(5)
    assert all(parse_rtp(data).ssrc == 0x1111 for data, _ in bob.received)
    # Alice goes quiet and the new source keeps sending: the 4th in a row re-latches.
    moved.send_audio(relay.a.port, 6, ssrc=0x3333)
    await bob.wait_for(8)
    assert [p.ssrc for p in bob.packets()][5:] == [0x3333] * 3
    assert relay.a.latched == moved.address
    bob.send_audio(relay.b.port, 1)
    await moved.wait_for(1)
    # The same description again (a session refresh) keeps the latch ...
    relay.a.set_remote(alice.address, CODECS)
    assert relay.a.latched == moved.address
    # ... a new address unlatches: the next source is followed at once.
    relay.a.set_remote((HOST, unused_port()), CODECS)
    assert relay.a.latched is None
    alice.send_audio(relay.a.port, 1)
    await bob.wait_for(9)
    assert relay.a.latched == alice.address


@pytest_twisted.ensureDeferred
async def test_mute_sends_codec_silence(phones: Any, relays: Any) -> None:
    alice, bob = phones(), phones()
    relay = relays()
    relay.a.set_remote(alice.address, CODECS)
    relay.b.set_remote(bob.address, CODECS)
    relay.a.mute()
    alice.send_audio(relay.a.port, 2, payload_type=0)
    alice.send_audio(relay.a.port, 2, payload_type=8)
    alice.port.write(dtmf_packets("1", payload_type=101, ssrc=1, sequence=0, timestamp=0)[0].to_bytes(),
                     (HOST, relay.a.port))
    alice.send_audio(relay.a.port, 1, payload_type=18)  # G.729: cannot be silenced, so dropped
    relay.b.mute()  # the other direction stays as it is said
    await bob.wait_for(4)
    payloads = [p.payload for p in bob.packets()]
    assert payloads == [b"\xff" * 160] * 2 + [b"\xd5" * 160] * 2
    assert [p.sequence for p in bob.packets()] == [1, 2, 3, 4]
    relay.a.unmute()
    alice.send_audio(relay.a.port, 1)
    await bob.wait_for(5)
    assert bob.packets()[-1].payload == bytes(range(160))
    assert len(bob.received) == 5


@pytest_twisted.ensureDeferred
async def test_dtmf_events_one_digit_each(phones: Any, relays: Any) -> None:
    alice, bob = phones(), phones()
    digits: list[tuple[str, str]] = []
    relay = relays(on_dtmf=lambda leg, digit: digits.append((leg.name, digit.digit)))
    relay.a.set_remote(alice.address, CODECS)
    relay.b.set_remote(bob.address, CODECS)
    packets = dtmf_packets("5", payload_type=101, ssrc=7, sequence=1, timestamp=1000)
    packets += dtmf_packets("#", payload_type=101, ssrc=7, sequence=20, timestamp=3000)
    for packet in packets:
        alice.port.write(packet.to_bytes(), (HOST, relay.a.port))
    await bob.wait_for(len(packets))  # forwarded as they are
    assert digits == [("a", "5"), ("a", "#")]


@pytest_twisted.ensureDeferred
async def test_rtp_timeout_fires_and_not_on_hold(phones: Any, relays: Any) -> None:
    alice, bob = phones(), phones()
    clock = Clock()
    timed_out: list[str] = []
    relay = relays(options=RelayOptions(bind_address=HOST, timeout=2.0), clock=clock,
                   on_timeout=lambda: timed_out.append("a"))
    held = relays(options=RelayOptions(bind_address=HOST, timeout=2.0), clock=clock,
                  on_timeout=lambda: timed_out.append("held"))
    for r in (relay, held):
        r.a.set_remote(alice.address, CODECS)
        r.b.set_remote(bob.address, CODECS)
    held.set_hold(True)
    alice.send_audio(relay.a.port, 1)
    await bob.wait_for(1)
    clock.pump([0.5] * 3)
    assert timed_out == []
    alice.send_audio(relay.a.port, 1)  # media again: the quiet time starts over
    await bob.wait_for(2)
    clock.pump([0.5] * 4)
    assert timed_out == []
    clock.pump([0.5] * 4)
    assert timed_out == ["a"]
    clock.pump([0.5] * 10)
    assert timed_out == ["a"]  # once
    held.set_hold(False)
    clock.pump([0.5] * 5)
    assert timed_out == ["a", "held"]


@pytest_twisted.ensureDeferred
async def test_rtp_timeout_on_the_real_reactor(relays: Any) -> None:
    fired: defer.Deferred[None] = defer.Deferred()
    relays(options=RelayOptions(bind_address=HOST, timeout=0.2), on_timeout=lambda: fired.callback(None))
    await fired.addTimeout(WAIT, reactor)


@pytest_twisted.ensureDeferred
async def test_play_tone_and_silence_paced_on_the_clock(phones: Any, relays: Any) -> None:
    alice, bob = phones(), phones()
    clock = Clock()
    relay = relays(clock=clock)
    relay.a.set_remote(alice.address, CODECS)
    relay.b.set_remote(bob.address, [Codec(8, "PCMA", 8000)])
    done = relay.b.play(Tone((1000.0,), 0.1, amplitude=10000))
    assert relay.b.playing
    clock.pump([0.02] * 10)
    await done
    await bob.wait_for(5)
    packets = bob.packets()
    assert len(packets) == 5 and {p.payload_type for p in packets} == {8} and len({p.ssrc for p in packets}) == 1
    assert [(b.sequence - a.sequence) % 65536 for a, b in zip(packets, packets[1:])] == [1] * 4
    assert [(b.timestamp - a.timestamp) % 2**32 for a, b in zip(packets, packets[1:])] == [160] * 4
    audio = g711.alaw_decode(b"".join(p.payload for p in packets)).astype(float)
    spectrum = np.abs(np.fft.rfft(audio))
    assert np.argmax(spectrum) * 8000 / len(audio) == pytest.approx(1000, abs=10)
    # While playing, the peer's audio is held back; afterwards it flows again.
    done = relay.b.play(Silence(1.0))
    clock.pump([0.02] * 2)
    alice.send_audio(relay.a.port, 3)
    await until(lambda: relay.a.received.packets == 3)
    relay.b.stop_playing()
    await done
    assert not relay.b.playing
    played = relay.b.sent_packets - 5
    assert played >= 1
    alice.send_audio(relay.a.port, 1)
    await bob.wait_for(5 + played + 1)
    later = bob.packets()[5:]
    assert [p.payload for p in later[:played]] == [b"\xd5" * 160] * played
    assert later[played].ssrc == 0x1111 and later[played].sequence == 4
    # the playback timestamps went on from the first playback
    assert (later[0].timestamp - packets[-1].timestamp) % 2**32 >= 160


@pytest_twisted.ensureDeferred
async def test_send_dtmf_into_a_leg(phones: Any, relays: Any) -> None:
    alice, bob = phones(), phones()
    clock = Clock()
    relay = relays(clock=clock)
    relay.a.set_remote(alice.address, CODECS)
    relay.b.set_remote(bob.address, CODECS)
    done = relay.b.send_dtmf("1#", duration_ms=60)
    clock.pump([0.02] * 30)
    await done
    count = 2 * (3 + 2)  # per digit: two growing durations then three end packets
    await bob.wait_for(count)
    detector = DtmfDetector()
    digits = [d.digit for p in bob.packets() for d in detector.feed(p.timestamp, p.payload)]
    assert digits == ["1", "#"]
    assert len({p.sequence for p in bob.packets()}) == count
    with pytest.raises(ValueError):
        relay.b.send_dtmf("x")
    relay.a.set_remote(alice.address, [Codec(0, "PCMU", 8000)])
    with pytest.raises(ValueError):
        relay.a.send_dtmf("1")


@pytest_twisted.ensureDeferred
async def test_rtcp_forwarded_and_reports_kept(phones: Any, relays: Any) -> None:
    alice, alice_rtcp, bob, bob_rtcp = phones(), phones(), phones(), phones()
    relay = relays()
    relay.a.set_remote(alice.address, CODECS, rtcp=alice_rtcp.address)
    relay.b.set_remote(bob.address, CODECS)
    bob_rtcp.port.write(RtcpReport(2).to_bytes(), (HOST, relay.b.port + 1))  # latches Bob's RTCP
    report = RtcpReport(1, (ReportBlock(0x2222, 64, 3, 100, 80, 0, 0),)).to_bytes()
    alice_rtcp.port.write(report, (HOST, relay.a.port + 1))
    await bob_rtcp.wait_for(1)
    assert bob_rtcp.received == [(report, (HOST, relay.b.port + 1))]
    await alice_rtcp.wait_for(1)
    assert parse_rtcp(alice_rtcp.received[0][0]) == [RtcpReport(2)]
    assert relay.a.stats()["rtcp"]["fraction_lost"] == 0.25
    assert relay.a.stats()["rtcp"]["round_trip_ms"] is None
    # Bob's SR goes on to Alice; her RR echoes it (LSR) at once (DLSR 0).
    sr = RtcpReport(2, (), SenderInfo(0x0000123456780000, 0, 1, 160))
    bob_rtcp.port.write(sr.to_bytes(), (HOST, relay.b.port + 1))
    await alice_rtcp.wait_for(2)
    rr = RtcpReport(1, (ReportBlock(2, 0, 0, 10, 8, 0x12345678, 0),))
    alice_rtcp.port.write(rr.to_bytes(), (HOST, relay.a.port + 1))
    await bob_rtcp.wait_for(2)
    round_trip = relay.a.stats()["rtcp"]["round_trip_ms"]
    assert round_trip is not None and 0 < round_trip < 1000


@pytest_twisted.ensureDeferred
async def test_rtcp_mux_from_sdp(phones: Any, relays: Any) -> None:
    alice, bob = phones(), phones()
    relay = relays()
    sdp = parse_sdp(f"v=0\r\no=- 1 1 IN IP4 {HOST}\r\ns=-\r\nc=IN IP4 {HOST}\r\nt=0 0\r\n"
                    f"m=audio {alice.address[1]} RTP/AVP 0 101\r\na=rtpmap:101 telephone-event/8000\r\n"
                    "a=rtcp-mux\r\n")
    relay.a.set_remote_sdp(sdp)
    relay.b.set_remote(bob.address, CODECS)
    assert relay.a.rtcp_mux and relay.a.event_payload == 101 and relay.a.rtcp_port == relay.a.port
    bob.port.write(RtcpReport(2).to_bytes(), (HOST, relay.b.port))  # Bob muxes too, unasked
    await alice.wait_for(1)
    assert alice.received == [(RtcpReport(2).to_bytes(), (HOST, relay.a.port))]


@pytest_twisted.ensureDeferred
async def test_garbage_is_dropped_and_never_latches(phones: Any, relays: Any) -> None:
    alice, mallory, bob = phones(), phones(), phones()
    relay = relays()
    relay.a.set_remote(alice.address, CODECS)
    relay.b.set_remote(bob.address, CODECS)
    for junk in (b"", b"\x00" * 20, b"\x80", b"\x40" * 172, b"\x90\x00" + b"\x00" * 12, b"\xa0\x00" + b"\x00" * 10 + b"\xff"):
        mallory.port.write(junk, (HOST, relay.a.port))
        mallory.port.write(junk, (HOST, relay.a.port + 1))
    alice.send_audio(relay.a.port, 1)
    await bob.wait_for(1)
    assert relay.a.latched == alice.address and relay.a.rtcp_latched is None
    assert len(bob.received) == 1 and parse_rtp(bob.received[0][0]).ssrc == 0x1111


def test_exhaustion_releases_what_was_taken() -> None:
    pool = PortPool(41300, 41301)  # one pair: a relay needs two
    with pytest.raises(PortsExhausted):
        MediaRelay.open(reactor, pool, RelayOptions(bind_address=HOST, timeout=None))
    assert pool.available == pool.size


def test_ports_held_by_someone_else_are_skipped() -> None:
    pool = PortPool(41300, 41307)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as squatter:
        squatter.bind((HOST, 41301))  # the RTCP port of the first pair
        relay = MediaRelay.open(reactor, pool, RelayOptions(bind_address=HOST, timeout=None))
        try:
            assert [leg.port for leg in relay.legs] == [41302, 41304]
        finally:
            relay.close()
    assert pool.available == pool.size


def write_wav(path: Path, samples: np.ndarray, rate: int, channels: int = 1, width: int = 2) -> Path:
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(channels)
        wav.setsampwidth(width)
        wav.setframerate(rate)
        wav.writeframes(samples.astype("<i2").tobytes() if width == 2 else samples.astype(np.uint8).tobytes())
    return path


def test_wav_files_become_8k_mono(tmp_path: Path) -> None:
    t = np.arange(16000 // 5) / 16000  # 0.2 s at 16 kHz
    tone = np.round(8000 * np.sin(2 * np.pi * 500 * t))
    stereo = np.column_stack([tone, tone]).ravel()
    samples = read_wav_8k(write_wav(tmp_path / "prompt.wav", stereo, 16000, channels=2))
    assert len(samples) == 1600 and samples.dtype == np.int16
    spectrum = np.abs(np.fft.rfft(samples.astype(float)))
    assert np.argmax(spectrum) * 8000 / len(samples) == pytest.approx(500, abs=10)
    frames = list(WavFile(tmp_path / "prompt.wav").frames())
    assert len(frames) == 10 and all(len(f) == 160 for f in frames)
    with pytest.raises(ValueError):
        read_wav_8k(write_wav(tmp_path / "8bit.wav", np.zeros(80), 8000, width=1))


@pytest_twisted.ensureDeferred
async def test_play_a_wav_file_in_a_loop(phones: Any, relays: Any, tmp_path: Path) -> None:
    bob = phones()
    clock = Clock()
    relay = relays(clock=clock)
    relay.b.set_remote(bob.address, CODECS)
    path = write_wav(tmp_path / "moh.wav", np.full(240, 4000), 8000)  # 1.5 frames: padded to 2
    done = relay.b.play(WavFile(path), loop=True)
    clock.pump([0.02] * 8)
    assert relay.b.playing
    relay.b.stop_playing()
    await done
    await bob.wait_for(relay.b.sent_packets)
    payloads = [g711.alaw_decode(p.payload) if p.payload_type == 8 else g711.ulaw_decode(p.payload)
                for p in bob.packets()]
    assert len(payloads) >= 6
    # 240 samples: a full frame, then 80 and silence; and again from the start
    assert (payloads[0] > 3000).all() and (payloads[1][:80] > 3000).all() and not payloads[1][80:].any()
    assert (payloads[2] == payloads[0]).all() and (payloads[3] == payloads[1]).all()
