"""RelayMedia: the call layer's media seam over a real relay on 127.0.0.1."""

from __future__ import annotations

import wave
from pathlib import Path
from typing import Any

import attrs
import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.logger import globalLogPublisher

from pbxd.call.media import MediaRequest, NotAcceptable
from pbxd.config import RtpConfig
from pbxd.media.dtmf import dtmf_packets
from pbxd.media.ports import PortPool
from pbxd.media.session import NoRelayPorts, RelayMedia, relay_media_factory
from pbxd.sip.headers import Address
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
    invite: Any = None  # what the nat mode reads: its Request-URI (outbound) or Contact (inbound)
    call: Any = None


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
    assert session.recording_path == "recordings/call_1_host.wav"  # relative to data_dir, as the CDR keeps it

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
    with wave.open(str(tmp_path / session.recording_path), "rb") as wav:
        assert wav.getnchannels() == 2
    assert session.recording_bytes == (tmp_path / session.recording_path).stat().st_size


@attrs.define
class FakeInvite:
    uri: str
    contact: str = ""

    @property
    def contacts(self) -> list[Address]:
        return [Address.parse(self.contact)] if self.contact else []


@attrs.define
class FakeCall:
    inbound: Any
    ringing: list[Any] = attrs.Factory(list)


def test_direct_mode(media: Any) -> None:
    callee = FakeLeg(FakeDirection("outbound"), Target("udp", HOST, 5062))
    body = offer(40000)
    direct = media("none")
    assert direct.offer_to(callee, body) == body and direct.relay is None


NATED = "192.0.2.1"  # an address the phones' SIP does not come from


@pytest.mark.parametrize(
    ("caller_source", "callee_uri", "relayed"),
    [
        (HOST, f"sip:1002@{HOST}:5062", False),  # neither side NATed: direct media
        (NATED, f"sip:1002@{HOST}:5062", True),  # the caller's SIP came from elsewhere than its SDP
        (HOST, "sip:1002@10.0.0.5:5062", True),  # the callee registered from behind a NAT
        (HOST, "sip:+4930123@carrier.example", False),  # a name: a server, not a NATed phone
        (None, f"sip:1002@{HOST}:5062", True),  # the caller's source unknown
    ],
    ids=["neither", "caller", "callee", "named", "unknown"],
)
def test_nat_mode_with_the_offer_in_the_invite(media: Any, tmp_path: Path, caller_source: str | None,
                                               callee_uri: str, relayed: bool) -> None:
    config = RtpConfig(41500, 41599, bind_address=HOST)
    session = RelayMedia(MediaRequest("c1", "nat", False, caller_source), reactor, media.pool, config, tmp_path)
    callee = FakeLeg(FakeDirection("outbound"), Target("udp", HOST, 5062), invite=FakeInvite(callee_uri))
    try:
        body = offer(40000)
        assert (session.offer_to(callee, body) != body) is relayed
        assert (session.relay is not None) is relayed
        answer = offer(40010)
        caller = FakeLeg(FakeDirection("inbound"), Target("udp", HOST, 5060))
        assert (session.answer_to(caller, answer) != answer) is relayed  # the decision holds for the call
    finally:
        session.close()


@pytest.mark.parametrize(
    ("sdp_host", "caller_contact", "relayed"),
    [
        (HOST, f"<sip:1001@{HOST}:5060>", False),
        (NATED, f"<sip:1001@{HOST}:5060>", True),  # the callee's offer names another address than its SIP's
        (HOST, "<sip:1001@10.0.0.9:5060>", True),  # the caller (the answerer) registered behind a NAT
        (HOST, "", True),  # no Contact to judge by
    ],
    ids=["neither", "callee", "caller", "unknown"],
)
def test_nat_mode_with_a_late_offer(media: Any, tmp_path: Path, sdp_host: str, caller_contact: str,
                                    relayed: bool) -> None:
    """The offer comes in a fork's 2xx: it is judged against the SIP address of the ringing
    forks (not the caller's, as it once was), the caller by its Contact."""
    config = RtpConfig(41500, 41599, bind_address=HOST)
    session = RelayMedia(MediaRequest("c2", "nat", False, HOST), reactor, media.pool, config, tmp_path)
    caller = FakeLeg(FakeDirection("inbound"), Target("udp", HOST, 5060),
                     invite=FakeInvite("sip:1002@pbx.test", caller_contact))
    fork = FakeLeg(FakeDirection("outbound"), Target("udp", HOST, 5062))
    caller.call = FakeCall(caller, [FakeLeg(FakeDirection("outbound"), Target("udp", "192.0.2.200", 5062)), fork])
    try:
        body = offer(40000, host=sdp_host)
        assert (session.offer_to(caller, body) != body) is relayed
    finally:
        session.close()


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


def test_own_offers_and_relayed_bodies_share_one_version_counter(media: Any) -> None:
    """RFC 3264 §8: towards one phone, each changed body is one version up, whoever made it.

    pbxd's own hold and resume (``own_offer``, from what the leg last got) interleave
    with bodies relayed from the far phone; none reuses or lowers a version.
    """
    session = media()
    caller = FakeLeg(FakeDirection("inbound"), Target("udp", HOST, 5060))
    callee = FakeLeg(FakeDirection("outbound"), Target("udp", HOST, 5062))
    first = session.offer_to(callee, offer(40000))
    session.answer_to(caller, offer(40010))
    seen = [parse_sdp(first)]
    held = session.own_offer(callee, first.replace(b"m=video", b"a=sendonly\r\nm=video"))
    seen.append(parse_sdp(held))
    seen.append(parse_sdp(session.own_offer(callee, held.replace(b"a=sendonly", b"a=sendrecv"))))
    # The caller re-INVITEs: its offer, relayed to the callee, comes after pbxd's two.
    seen.append(parse_sdp(session.offer_to(callee, offer(40004, extra="a=sendonly\r\n"))))
    seen.append(parse_sdp(session.offer_to(callee, offer(40004, extra="a=sendonly\r\n"))))  # a refresh
    versions = [sdp.origin.version for sdp in seen]
    assert versions == [versions[0] + step for step in (0, 1, 2, 3, 3)]
    assert {sdp.origin.session_id for sdp in seen} == {seen[0].origin.session_id}
    assert direction_of(seen[1], seen[1].media[0]) == Direction.SENDONLY
    # Direct media: the o= is the far phone's, pbxd bumps what it last sent.
    direct = media("none")
    body = offer(40000)
    assert parse_sdp(direct.own_offer(callee, body)).origin.version == 8


def sdp_with(port: int, formats: str, maps: str = "") -> bytes:
    return (f"v=0\r\no=phone 9 1 IN IP4 {HOST}\r\ns=-\r\nc=IN IP4 {HOST}\r\nt=0 0\r\n"
            f"m=audio {port} RTP/AVP {formats}\r\n{maps}").encode()


TE = "a=rtpmap:101 telephone-event/8000\r\n"


@pytest.mark.parametrize(
    ("offered", "answered", "accepted"),
    [
        (sdp_with(40000, "0 8 101", TE), sdp_with(40010, "8 101", TE), True),
        (sdp_with(40000, "0 8 101", TE), sdp_with(40010, "18"), False),  # G.729 was not offered
        (sdp_with(40000, "0 8 101", TE), sdp_with(40010, "101", TE), False),  # DTMF alone carries no voice
        (sdp_with(40000, "0 8 101", TE), sdp_with(0, "0"), False),  # every stream refused
        # Renumbered dynamic types match by name (RFC 3264 §6.1 allows it).
        (sdp_with(40000, "0 96", "a=rtpmap:96 opus/48000/2\r\n"),
         sdp_with(40010, "111", "a=rtpmap:111 opus/48000/2\r\n"), True),
        # Formats pbxd cannot name: the phones judge them, pbxd relays.
        (sdp_with(40000, "0 96"), sdp_with(40010, "96"), True),
        (sdp_with(40000, "96"), sdp_with(40010, "96", "a=rtpmap:96 X-PROPRIETARY/8000\r\n"), True),
        (sdp_with(40000, "0"), sdp_with(40010, "97"), True),
    ],
    ids=["common", "other-codec", "dtmf-only", "refused", "renumbered", "unnamed", "named-in-answer",
         "unnamed-answer"],
)
def test_an_answer_without_a_common_codec_is_not_forwarded(media: Any, offered: bytes, answered: bytes,
                                                           accepted: bool) -> None:
    """RFC 3264 §6: the call layer answers the offerer 488 (NotAcceptable) rather than
    forward an answer that sets up no audio."""
    session = media()
    caller = FakeLeg(FakeDirection("inbound"), Target("udp", HOST, 5060))
    callee = FakeLeg(FakeDirection("outbound"), Target("udp", HOST, 5062))
    session.offer_to(callee, offered)
    if accepted:
        assert parse_sdp(session.answer_to(caller, answered)).media[0].port == session.relay.a.port
    else:
        with pytest.raises(NotAcceptable) as refused:
            session.answer_to(caller, answered)
        assert refused.value.status == 488


@pytest.mark.parametrize(
    ("offered", "accepted"),
    [
        (sdp_with(40000, "101", TE), False),  # nothing but DTMF
        (sdp_with(40000, "13 101", TE), False),  # comfort noise and DTMF
        (sdp_with(40000, "96"), True),  # a format pbxd cannot name: relayed all the same
        (sdp_with(40000, "96 101", "a=rtpmap:96 AMR-WB/16000\r\n" + TE), True),  # a codec pbxd cannot record
    ],
    ids=["dtmf-only", "cn-and-dtmf", "unnamed", "unknown-codec"],
)
def test_an_offer_without_a_voice_codec_is_refused(media: Any, offered: bytes, accepted: bool) -> None:
    session = media()
    callee = FakeLeg(FakeDirection("outbound"), Target("udp", HOST, 5062))
    if accepted:
        assert parse_sdp(session.offer_to(callee, offered)).media[0].port == session.relay.b.port
    else:
        with pytest.raises(NotAcceptable):
            session.offer_to(callee, offered)
        assert session.relay is None  # nothing taken for a call refused 488


@pytest_twisted.ensureDeferred
async def test_digits_from_either_phone_are_reported_with_its_call_leg(media: Any, phones: Any) -> None:  # noqa: F811
    """RFC 4733 events on either relay leg reach ``on_dtmf`` with the call leg whose phone sent them."""
    alice, bob = phones(), phones()
    session = media()
    heard: list[tuple[Any, str]] = []
    session.on_dtmf = lambda leg, digit: heard.append((leg, digit.digit))
    caller = FakeLeg(FakeDirection("inbound"), Target("udp", HOST, 5060))
    callee = FakeLeg(FakeDirection("outbound"), Target("udp", HOST, 5062))
    session.offer_to(callee, offer(alice.address[1]))
    session.answer_to(caller, offer(bob.address[1]))
    relay = session.relay
    count = 0
    for phone, port, digit, timestamp in ((bob, relay.b.port, "5", 8000), (alice, relay.a.port, "#", 16000)):
        packets = dtmf_packets(digit, payload_type=101, ssrc=7, sequence=1, timestamp=timestamp)
        for packet in packets:
            phone.port.write(packet.to_bytes(), (HOST, port))
        count = len(packets)
    await alice.wait_for(count)  # bob's events, relayed (and read) on their way
    await bob.wait_for(count)
    assert heard == [(callee, "5"), (caller, "#")]


@pytest.mark.parametrize(("answer_host", "natted"), [(HOST, False), (NATED, True)], ids=["direct", "natted"])
def test_nat_mode_logs_an_answerer_found_natted_too_late(media: Any, tmp_path: Path, answer_host: str,
                                                         natted: bool) -> None:
    """Media stays direct (too late to relay, docs/media.md), but the operator is told."""
    logged: list[dict] = []
    globalLogPublisher.addObserver(logged.append)
    config = RtpConfig(41500, 41599, bind_address=HOST)
    session = RelayMedia(MediaRequest("c3", "nat", False, HOST), reactor, media.pool, config, tmp_path)
    caller = FakeLeg(FakeDirection("inbound"), Target("udp", HOST, 5060))
    callee = FakeLeg(FakeDirection("outbound"), Target("udp", HOST, 5062), invite=FakeInvite(f"sip:1002@{HOST}"))
    caller.call = callee.call = FakeCall(caller, [callee])
    try:
        body = offer(40000)
        assert session.offer_to(callee, body) == body
        answer = offer(40010, host=answer_host)
        assert session.answer_to(caller, answer) == answer and session.relay is None  # direct all the same
    finally:
        globalLogPublisher.removeObserver(logged.append)
        session.close()
    assert session.natted_answerer is natted
    assert any("left media direct" in event.get("log_format", "") for event in logged) is natted
