"""RelayMedia: the call layer's media seam over a real relay on 127.0.0.1."""

from __future__ import annotations

import wave
from pathlib import Path
from typing import Any

import attrs
import pytest
import pytest_twisted
from twisted.internet import reactor

from pbxd.call.media import MediaRequest, NotAcceptable
from pbxd.config import RtpConfig
from pbxd.media.ports import PortPool
from pbxd.media.session import NoRelayPorts, RelayMedia, relay_media_factory
from pbxd.sip.sdp import Direction, direction_of, parse_sdp
from pbxd.transport import Target
from media_support import HOST, phones  # noqa: F401  (fixture)


@attrs.define
class FakeDirection:
    value: str


@attrs.define(eq=False)
class FakeLeg:
    """What RelayMedia reads of a call leg: its direction, its flow and whether it ended."""

    direction: FakeDirection
    target: Target
    is_ended: bool = False


def offer(port: int, host: str = HOST, extra: str = "") -> bytes:
    return (
        f"v=0\r\no=phone 42 7 IN IP4 {host}\r\ns=-\r\nc=IN IP4 {host}\r\nt=0 0\r\n"
        f"m=audio {port} RTP/AVP 8 0 101\r\na=rtpmap:101 telephone-event/8000\r\n"
        f"a=ice-ufrag:abcd\r\na=candidate:1 1 UDP 1 {host} {port} typ host\r\n{extra}"
        f"m=video {port + 2} RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\n"
    ).encode()


@pytest.fixture
def media(tmp_path: Path) -> Any:
    pool = PortPool(41500, 41599)
    sessions = []

    def make(media_proxy: str = "always", record: bool = False, **config: Any) -> RelayMedia:
        rtp = RtpConfig(41500, 41599, bind_address=HOST, **config)
        factory = relay_media_factory(reactor, rtp, tmp_path, pool)
        session = factory(MediaRequest("call/1@host", media_proxy, record))
        sessions.append(session)
        return session

    make.pool = pool
    yield make
    for session in sessions:
        session.close()
    assert pool.available == pool.size


@pytest_twisted.ensureDeferred
async def test_offer_and_answer_rewritten_and_media_flows(media: Any, phones: Any, tmp_path: Path) -> None:  # noqa: F811
    alice, bob = phones(), phones()
    session = media(record=True)
    caller = FakeLeg(FakeDirection("inbound"), Target("udp", HOST, 5060))
    callee = FakeLeg(FakeDirection("outbound"), Target("udp", HOST, 5062))
    to_bob = parse_sdp(session.offer_to(callee, offer(alice.address[1])))
    relay = session.relay
    assert relay is not None
    audio, video = to_bob.media
    assert (to_bob.connection.host, audio.port, video.port) == (HOST, relay.b.port, 0)
    assert [c.name for c in audio.codecs] == ["PCMA", "PCMU", "telephone-event"]
    assert not audio.has_attribute("candidate") and not audio.has_attribute("ice-ufrag")
    assert to_bob.origin.username == "pbxd"
    assert relay.a.remote == alice.address and relay.a.event_payload == 101

    to_alice = parse_sdp(session.answer_to(caller, offer(bob.address[1])))
    assert to_alice.media[0].port == relay.a.port and relay.b.remote == bob.address
    assert session.recording_path == str(tmp_path / "recordings" / "call_1_host.wav")

    alice.send_audio(relay.a.port, 3, payload_type=8)
    bob.send_audio(relay.b.port, 3, payload_type=8)
    await bob.wait_for(3)
    await alice.wait_for(3)
    session.pause_recording()
    assert relay.recorder is not None and relay.recorder.paused
    session.resume_recording()
    assert not relay.recorder.paused

    # A re-offer from Bob (hold): the version of the o= towards Alice grows, the relay holds.
    held = offer(bob.address[1], extra="a=sendonly\r\n")
    again = parse_sdp(session.offer_to(caller, held))
    assert again.origin.version == to_alice.origin.version + 1
    assert again.origin.session_id == to_alice.origin.session_id
    assert direction_of(again, again.media[0]) == Direction.SENDONLY and relay.on_hold
    same = parse_sdp(session.offer_to(caller, held))
    assert same.origin.version == again.origin.version  # unchanged body, unchanged version
    quality = session.quality()
    assert quality["a"]["received"]["packets"] == 3 and quality["b"]["sent"]["packets"] == 3
    session.close()
    with wave.open(session.recording_path, "rb") as wav:
        assert wav.getnchannels() == 2
    assert session.recording_bytes == Path(session.recording_path).stat().st_size


@attrs.define
class RequestWithSource(MediaRequest):
    source_host: str | None = None


def test_direct_and_nat_modes(media: Any, tmp_path: Path) -> None:
    callee = FakeLeg(FakeDirection("outbound"), Target("udp", HOST, 5062))
    body = offer(40000)
    direct = media("none")
    assert direct.offer_to(callee, body) == body and direct.relay is None
    config = RtpConfig(41500, 41599, bind_address=HOST)
    # the SIP came from elsewhere than the SDP says: relayed
    natted = RelayMedia(RequestWithSource("c1", "nat", False, "192.0.2.1"), reactor, media.pool, config, tmp_path)
    try:
        assert natted.offer_to(callee, body) != body and natted.relay is not None
    finally:
        natted.close()
    same = RelayMedia(RequestWithSource("c2", "nat", False, HOST), reactor, media.pool, config, tmp_path)
    assert same.offer_to(callee, body) == body and same.relay is None
    unknown = media("nat")  # no source known: relayed
    assert unknown.offer_to(callee, body) != body


def test_refusals(media: Any) -> None:
    callee = FakeLeg(FakeDirection("outbound"), Target("udp", HOST, 5062))
    session = media()
    no_audio = b"v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\ns=-\r\nc=IN IP4 1.2.3.4\r\nt=0 0\r\nm=video 5 RTP/AVP 96\r\n"
    with pytest.raises(NotAcceptable):
        session.offer_to(callee, no_audio)
    assert session.offer_to(callee, b"not sdp") == b"not sdp"
    assert session.offer_to(callee, b"") == b""
    pool = media.pool
    taken = [pool.allocate() for _ in range(pool.available - 1)]
    try:
        with pytest.raises(NoRelayPorts) as refused:
            media().offer_to(callee, offer(40000))
        assert refused.value.status == 503
    finally:
        for port in taken:
            pool.release(port)
