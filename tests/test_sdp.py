"""SDP (RFC 4566) parsing and writing, and the offer/answer helpers (RFC 3264)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pbxd.sip.errors import SipParseError
from pbxd.sip.sdp import (
    Codec,
    Connection,
    Direction,
    Origin,
    Rtcp,
    RtpMap,
    SdpError,
    answer_direction,
    bump_version,
    common_codecs,
    connection_of,
    direction_of,
    is_hold,
    parse_sdp,
    rewrite_media,
    strip_ice,
    with_direction,
    with_origin,
)


def sdp_text(*lines: str) -> bytes:
    return "".join(f"{line}\r\n" for line in lines).encode()


# RFC 4566 §5, the example session description.
RFC4566_EXAMPLE = sdp_text(
    "v=0",
    "o=jdoe 2890844526 2890842807 IN IP4 10.47.16.5",
    "s=SDP Seminar",
    "i=A Seminar on the session description protocol",
    "u=http://www.example.com/seminars/sdp.pdf",
    "e=j.doe@example.com (Jane Doe)",
    "c=IN IP4 224.2.17.12/127",
    "t=2873397496 2873404696",
    "a=recvonly",
    "m=audio 49170 RTP/AVP 0",
    "m=video 51372 RTP/AVP 99",
    "a=rtpmap:99 h263-1998/90000",
)

# The basic exchange of RFC 3264 §10.1, written out: Alice offers audio
# (three codecs) and video (two), Bob answers with one of each.
ALICE_OFFER = sdp_text(
    "v=0",
    "o=alice 2890844526 2890844526 IN IP4 host.atlanta.example.com",
    "s=",
    "c=IN IP4 host.atlanta.example.com",
    "t=0 0",
    "m=audio 49170 RTP/AVP 0 8 97",
    "a=rtpmap:0 PCMU/8000",
    "a=rtpmap:8 PCMA/8000",
    "a=rtpmap:97 iLBC/8000",
    "m=video 51372 RTP/AVP 31 32",
    "a=rtpmap:31 H261/90000",
    "a=rtpmap:32 MPV/90000",
)
BOB_ANSWER = sdp_text(
    "v=0",
    "o=bob 2808844564 2808844564 IN IP4 host.biloxi.example.com",
    "s=",
    "c=IN IP4 host.biloxi.example.com",
    "t=0 0",
    "m=audio 49174 RTP/AVP 0",
    "a=rtpmap:0 PCMU/8000",
    "m=video 49170 RTP/AVP 32",
    "a=rtpmap:32 MPV/90000",
)

# A softphone offer with what phones put in: bandwidth, ptime, RTCP port,
# DTMF, comfort noise, a dynamic codec with channels, and ICE.
PHONE_OFFER = sdp_text(
    "v=0",
    "o=- 3917383733 3917383733 IN IP4 192.168.1.20",
    "s=pjmedia",
    "b=AS:84",
    "t=0 0",
    "a=X-nat:0",
    "a=ice-options:trickle",
    "m=audio 4000 RTP/AVP 96 0 8 101 13",
    "c=IN IP4 192.168.1.20",
    "b=TIAS:64000",
    "a=rtcp:4001 IN IP4 192.168.1.20",
    "a=sendrecv",
    "a=rtpmap:96 opus/48000/2",
    "a=fmtp:96 useinbandfec=1",
    "a=rtpmap:101 telephone-event/8000",
    "a=fmtp:101 0-16",
    "a=ptime:20",
    "a=ice-ufrag:8hhY",
    "a=ice-pwd:asd88fgpdd777uzjYhagZg",
    "a=candidate:1 1 UDP 2130706431 192.168.1.20 4000 typ host",
    "a=candidate:2 1 UDP 1694498815 203.0.113.7 4000 typ srflx raddr 192.168.1.20 rport 4000",
    "a=end-of-candidates",
    "a=rtcp-mux",
)


# -- parsing and writing -----------------------------------------------------------------------------


@pytest.mark.parametrize("body", [RFC4566_EXAMPLE, ALICE_OFFER, BOB_ANSWER, PHONE_OFFER])
def test_round_trip_is_exact(body):
    assert parse_sdp(body).to_bytes() == body
    assert bytes(parse_sdp(body.decode())) == body


def test_rfc4566_example():
    sdp = parse_sdp(RFC4566_EXAMPLE)
    assert sdp.origin == Origin("jdoe", "2890844526", 2890842807, "10.47.16.5")
    assert sdp.name == "SDP Seminar"
    assert sdp.values("e") == ["j.doe@example.com (Jane Doe)"]
    assert sdp.connection == Connection("224.2.17.12/127")
    assert sdp.connection.host == "224.2.17.12"
    audio, video = sdp.media
    assert (audio.kind, audio.port, audio.proto, audio.formats) == ("audio", 49170, "RTP/AVP", ("0",))
    assert audio.lines == ()
    assert audio.codecs == (Codec(0, "PCMU", 8000),)  # static: no rtpmap needed (RFC 3551)
    assert video.codecs == (Codec(99, "h263-1998", 90000),)
    # The session-level recvonly applies to both streams.
    assert audio.direction is None and direction_of(sdp, audio) is Direction.RECVONLY
    assert connection_of(sdp, video) == sdp.connection


def test_lf_line_ends_and_trailing_blank_lines_are_accepted():
    body = ALICE_OFFER.replace(b"\r\n", b"\n") + b"\n\n"
    assert parse_sdp(body).to_bytes() == ALICE_OFFER
    assert parse_sdp(ALICE_OFFER.rstrip(b"\r\n")).to_bytes() == ALICE_OFFER  # no final line end


def test_m_line_is_normalized():
    body = ALICE_OFFER.replace(b"m=audio 49170 RTP/AVP 0 8 97", b"m=audio  49170 RTP/AVP 0 8 97 ")
    assert parse_sdp(body).to_bytes() == ALICE_OFFER


def test_attribute_helpers():
    sdp = parse_sdp(PHONE_OFFER)
    (audio,) = sdp.media
    assert sdp.bandwidths == [("AS", 84)] and audio.bandwidths == [("TIAS", 64000)]
    assert sdp.connection is None and audio.connection == Connection("192.168.1.20")
    assert audio.rtpmaps[96] == RtpMap(96, "opus", 48000, "2")
    assert str(audio.rtpmaps[101]) == "101 telephone-event/8000"
    assert [c.name for c in audio.codecs] == ["opus", "PCMU", "PCMA", "telephone-event", "CN"]
    opus = audio.codecs[0]
    assert (opus.channels, opus.fmtp, opus.key) == (2, "useinbandfec=1", ("opus", 48000, 2))
    assert audio.fmtp(101) == "0-16" and audio.fmtp("0") is None
    assert audio.fmtps == {"96": "useinbandfec=1", "101": "0-16"}
    assert audio.telephone_events == (Codec(101, "telephone-event", 8000, 1, "0-16"),)
    assert [c.is_auxiliary for c in audio.codecs] == [False, False, False, True, True]
    assert audio.ptime == 20.0
    assert audio.rtcp == Rtcp(4001, Connection("192.168.1.20"))
    assert audio.rtcp_mux
    assert audio.direction is Direction.SENDRECV
    assert audio.attribute("ice-ufrag") == "8hhY" and audio.attribute("rtcp-mux") is None
    assert audio.has_attribute("rtcp-mux") and not audio.has_attribute("inactive")
    assert len(audio.attribute_values("candidate")) == 2
    assert sdp.attribute("X-nat") == "0"


def test_rtcp_without_address_and_media_without_attributes():
    sdp = parse_sdp(sdp_text("v=0", "o=- 1 1 IN IP4 192.0.2.1", "s=-", "c=IN IP4 192.0.2.1", "t=0 0",
                             "m=audio 5004 RTP/AVP 8", "a=rtcp:5009"))
    (audio,) = sdp.media
    assert audio.rtcp == Rtcp(5009) and not audio.rtcp_mux and audio.ptime is None
    assert audio.telephone_events == ()


def test_sections_that_are_not_rtp():
    sdp = parse_sdp(sdp_text("v=0", "o=- 1 1 IN IP4 192.0.2.1", "s=-", "c=IN IP4 192.0.2.1", "t=0 0",
                             "m=image 6000 udptl t38", "a=T38FaxVersion:0",
                             "m=application 9 TCP/BFCP *", "m=audio 7000/2 RTP/AVP 96"))
    image, app, audio = sdp.media
    assert not image.is_rtp and image.codecs == () and image.formats == ("t38",)
    assert app.formats == ("*",)
    assert audio.port_count == 2 and audio.m_line() == "audio 7000/2 RTP/AVP 96"
    assert audio.codecs == ()  # dynamic payload type without rtpmap names nothing


def test_sdp_error_is_a_sip_parse_error_with_400():
    with pytest.raises(SipParseError) as caught:
        parse_sdp(b"garbage")
    assert isinstance(caught.value, SdpError) and caught.value.status == 400


MINIMAL = ["v=0", "o=- 1 1 IN IP4 192.0.2.1", "s=-", "c=IN IP4 192.0.2.1", "t=0 0", "m=audio 5004 RTP/AVP 0"]


def replace(index: int, line: str | None) -> bytes:
    lines = list(MINIMAL)
    if line is None:
        del lines[index]
    else:
        lines[index] = line
    return sdp_text(*lines)


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"\r\n",
        b"\xff\xfe v=0\r\n",
        replace(0, None),  # no v=
        replace(0, "v=1"),
        replace(1, None),  # no o=
        replace(2, None),  # no s=
        replace(1, "o=- 1 IN IP4 192.0.2.1"),
        replace(1, "o=- 1 x IN IP4 192.0.2.1"),
        replace(1, "o=- 1 " + "9" * 70 + " IN IP4 192.0.2.1"),
        replace(3, "c=IN IP4"),
        replace(3, None),  # no c= anywhere
        replace(4, "t=0"),
        replace(4, "t=now later"),
        replace(5, "m=audio 5004 RTP/AVP"),  # no formats
        replace(5, "m=audio 70000 RTP/AVP 0"),
        replace(5, "m=audio x RTP/AVP 0"),
        replace(5, "m=audio 5004/0 RTP/AVP 0"),
        replace(5, "m=audio 5004 RTP/AVP 128"),
        replace(5, "m=audio 5004 RTP/AVP PCMU"),
        replace(5, "m=audio 5004"),
        replace(5, "m=audio 5004 RTP/AVP 0\r\na=rtpmap:0"),
        replace(5, "m=audio 5004 RTP/AVP 0\r\na=rtpmap:0 PCMU"),
        replace(5, "m=audio 5004 RTP/AVP 0\r\na=rtpmap:200 PCMU/8000"),
        replace(5, "m=audio 5004 RTP/AVP 0\r\na=ptime:twenty"),
        replace(5, "m=audio 5004 RTP/AVP 0\r\na=rtcp:99999"),
        replace(5, "m=audio 5004 RTP/AVP 0\r\na=fmtp:"),
        replace(5, "m=audio 5004 RTP/AVP 0\r\na=sendonly:yes"),
        replace(5, "m=audio 5004 RTP/AVP 0\r\na=bad name:1"),
        replace(5, "m=audio 5004 RTP/AVP 0\r\nb=AS"),
        replace(5, "m=audio 5004 RTP/AVP 0\r\nt=0 0"),  # t= inside a media section
        replace(5, "m=audio 5004 RTP/AVP 0\r\ns=again"),
        replace(4, "x=unknown type"),  # RFC 4566 §5: unknown types are refused
        replace(4, "T=0 0"),
        replace(4, "t =0 0"),
        replace(4, " t=0 0"),
        replace(4, "t=0 0\r\n\r\na=x"),  # blank line inside
        replace(4, "t=0 0\ra=x"),  # bare CR
        replace(4, "a=x\x00y"),
        sdp_text(*MINIMAL, "v=0"),  # two v=
        sdp_text(MINIMAL[1], MINIMAL[0], *MINIMAL[2:]),  # v= not first
    ],
)
def test_malformed_sdp_is_refused(body):
    with pytest.raises(SdpError) as caught:
        parse_sdp(body)
    assert caught.value.status == 400


def test_rejected_stream_needs_no_connection_nor_formats():
    sdp = parse_sdp(sdp_text("v=0", "o=- 1 1 IN IP4 192.0.2.1", "s=-", "t=0 0",
                             "m=audio 5004 RTP/AVP 0", "c=IN IP4 192.0.2.1", "m=video 0 RTP/AVP"))
    assert sdp.media[1].is_rejected and sdp.media[1].formats == ()
    assert sdp.media[1].m_line() == "video 0 RTP/AVP"


def test_missing_t_line_is_tolerated():
    assert parse_sdp(replace(4, None)).media[0].port == 5004


# -- offer/answer -------------------------------------------------------------------------------------


def test_rfc3264_basic_exchange():
    offer, answer = parse_sdp(ALICE_OFFER), parse_sdp(BOB_ANSWER)
    assert [c.name for c in common_codecs(offer.media[0], answer.media[0])] == ["PCMU"]
    assert [c.name for c in common_codecs(offer.media[1], answer.media[1])] == ["MPV"]
    # Bob could take PCMA and iLBC as well, but answers in the offer's order.
    assert [c.name for c in common_codecs(offer.media[0], ["iLBC", "PCMA/8000"])] == ["PCMA", "iLBC"]
    for media in answer.media:
        assert direction_of(answer, media) is answer_direction(direction_of(offer, media))


@pytest.mark.parametrize(
    "offer,want,answer",
    [
        # RFC 3264 §6.1: what an answer may say to each offered direction.
        (Direction.SENDRECV, Direction.SENDRECV, Direction.SENDRECV),
        (Direction.SENDRECV, Direction.SENDONLY, Direction.SENDONLY),
        (Direction.SENDRECV, Direction.RECVONLY, Direction.RECVONLY),
        (Direction.SENDRECV, Direction.INACTIVE, Direction.INACTIVE),
        (Direction.SENDONLY, Direction.SENDRECV, Direction.RECVONLY),
        (Direction.SENDONLY, Direction.SENDONLY, Direction.INACTIVE),
        (Direction.RECVONLY, Direction.SENDRECV, Direction.SENDONLY),
        (Direction.RECVONLY, Direction.RECVONLY, Direction.INACTIVE),
        (Direction.INACTIVE, Direction.SENDRECV, Direction.INACTIVE),
    ],
)
def test_answer_direction(offer, want, answer):
    assert answer_direction(offer, want) is answer


def test_media_direction_overrides_the_session():
    sdp = parse_sdp(sdp_text("v=0", "o=- 1 1 IN IP4 192.0.2.1", "s=-", "c=IN IP4 192.0.2.1", "t=0 0",
                             "a=sendonly", "m=audio 5004 RTP/AVP 0", "a=recvonly", "m=video 5006 RTP/AVP 31"))
    audio, video = sdp.media
    assert direction_of(sdp, audio) is Direction.RECVONLY
    assert direction_of(sdp, video) is Direction.SENDONLY
    assert direction_of(parse_sdp(ALICE_OFFER), parse_sdp(ALICE_OFFER).media[0]) is Direction.SENDRECV


# RFC 4317 §3.1 (hold and unhold), written out: Alice and Bob talk, Alice
# holds with sendonly and Bob answers recvonly, Alice resumes with sendrecv.
HOLD_BASE = ["s=", "c=IN IP4 {host}", "t=0 0", "m=audio {port} RTP/AVP 0 97",
             "a=rtpmap:0 PCMU/8000", "a=rtpmap:97 iLBC/8000"]


def party(name: str, sess: int, version: int, host: str, port: int, *extra: str) -> bytes:
    lines = [line.format(host=host, port=port) for line in HOLD_BASE]
    return sdp_text("v=0", f"o={name} {sess} {version} IN IP4 {host}", *lines, *extra)


def test_rfc4317_hold_and_unhold():
    alice = parse_sdp(party("alice", 2890844526, 2890844526, "host.atlanta.example.com", 49170))
    bob = parse_sdp(party("bob", 2808844564, 2808844564, "host.biloxi.example.com", 49172))
    assert not is_hold(alice) and not is_hold(bob)

    hold = bump_version(with_direction(alice, Direction.SENDONLY))
    assert hold.to_bytes() == party("alice", 2890844526, 2890844527, "host.atlanta.example.com", 49170,
                                    "a=sendonly")
    assert is_hold(hold)
    answer_dir = answer_direction(direction_of(hold, hold.media[0]))
    assert answer_dir is Direction.RECVONLY
    held_answer = bump_version(with_direction(bob, answer_dir))
    assert held_answer.to_bytes() == party("bob", 2808844564, 2808844565, "host.biloxi.example.com", 49172,
                                           "a=recvonly")
    assert not is_hold(held_answer)  # the one put on hold is not holding

    resume = bump_version(with_direction(hold, Direction.SENDRECV))
    assert resume.origin.version == 2890844528
    assert resume.media[0].lines[-1] == ("a", "sendrecv")  # replaced where sendonly stood
    assert not is_hold(resume)


@pytest.mark.parametrize(
    "extra,held",
    [
        (["a=sendonly"], True),
        (["a=inactive"], True),
        (["a=recvonly"], False),
        (["a=sendrecv"], False),
        (["c=IN IP4 0.0.0.0"], True),  # RFC 2543 style
        (["c=IN IP4 0.0.0.0", "a=ice-ufrag:x"], False),  # ICE without candidates yet
    ],
)
def test_is_hold(extra, held):
    assert is_hold(parse_sdp(sdp_text(*MINIMAL, *extra))) is held


def test_is_hold_looks_at_every_live_stream():
    both = parse_sdp(sdp_text(*MINIMAL, "a=sendonly", "m=video 5006 RTP/AVP 31"))
    assert not is_hold(both)  # video still flows
    assert is_hold(parse_sdp(sdp_text(*MINIMAL, "a=sendonly", "m=video 0 RTP/AVP 31")))  # rejected: ignored
    assert not is_hold(parse_sdp(sdp_text(*MINIMAL[:5], "m=audio 0 RTP/AVP 0")))  # nothing live


def test_with_direction_replaces_session_and_media_attributes():
    sdp = parse_sdp(sdp_text(*MINIMAL[:5], "a=inactive", MINIMAL[5], "a=ptime:20", "a=recvonly", "a=sendrecv",
                             "a=maxptime:40"))
    out = with_direction(sdp, Direction.SENDONLY)
    assert ("a", "inactive") not in out.lines
    assert out.media[0].lines == (("a", "ptime:20"), ("a", "sendonly"), ("a", "maxptime:40"))
    assert direction_of(out, out.media[0]) is Direction.SENDONLY


def test_origin_helpers():
    sdp = parse_sdp(ALICE_OFFER)
    ours = Origin("pbxd", "7", 1, "203.0.113.1")
    moved = with_origin(sdp, ours)
    assert moved.origin == ours and moved.lines[1] == ("o", "pbxd 7 1 IN IP4 203.0.113.1")
    assert bump_version(bump_version(moved)).origin.version == 3
    assert moved.lines[2:] == sdp.lines[2:] and moved.media == sdp.media


def test_rewrite_media_for_the_relay():
    sdp = parse_sdp(PHONE_OFFER)
    out = rewrite_media(sdp, "203.0.113.1", [30000])
    (audio,) = out.media
    # No session c= before: one is added after s= and before b=/t=.
    assert out.lines[:4] == (("v", "0"), sdp.lines[1], ("s", "pjmedia"), ("c", "IN IP4 203.0.113.1"))
    assert audio.port == 30000 and audio.connection == Connection("203.0.113.1")
    assert audio.lines[0] == ("c", "IN IP4 203.0.113.1")  # replaced where it stood
    assert audio.rtcp is None  # named the phone's port
    assert audio.codecs == sdp.media[0].codecs and audio.formats == sdp.media[0].formats
    kept = [line for line in sdp.media[0].lines if line[0] != "c" and not line[1].startswith("rtcp:")]
    assert list(audio.lines[1:]) == kept
    assert audio.rtcp_mux  # the relay decides on rtcp-mux; the offer is kept


def test_rewrite_media_ipv6_rejected_streams_and_rejecting():
    sdp = parse_sdp(sdp_text(*MINIMAL, "m=video 0 RTP/AVP 31", "m=text 5008 RTP/AVP 98", "a=rtpmap:98 t140/1000"))
    out = rewrite_media(sdp, "[2001:db8::7]", [40000, 40002, 0])
    assert out.connection == Connection("2001:db8::7", "IP6")
    assert [m.port for m in out.media] == [40000, 0, 0]
    assert out.to_bytes().count(b"c=") == 1
    assert parse_sdp(out.to_bytes()) == out
    host = rewrite_media(sdp, "pbx.example.com", [1, 2, 3])
    assert host.connection == Connection("pbx.example.com", "IP4")
    with pytest.raises(ValueError):
        rewrite_media(sdp, "192.0.2.9", [1, 2])
    with pytest.raises(ValueError):
        rewrite_media(sdp, "192.0.2.9", [1, 2, 70000])


def test_strip_ice():
    sdp = parse_sdp(PHONE_OFFER)
    out = strip_ice(sdp)
    names = [n for n, _ in out.attributes] + [n for n, _ in out.media[0].attributes]
    assert not [n for n in names if n.startswith("ice-") or n in ("candidate", "end-of-candidates")]
    assert out.has_attribute("X-nat") and out.media[0].rtcp_mux
    assert len(out.media[0].lines) == len(sdp.media[0].lines) - 5
    assert strip_ice(out) == out


def test_common_codecs():
    offer = parse_sdp(PHONE_OFFER).media[0]
    # Payload numbers do not matter, names (any case), rates and channels do.
    other = parse_sdp(sdp_text(*MINIMAL[:5], "m=audio 6000 RTP/AVP 111 100", "a=rtpmap:111 OPUS/48000/2",
                               "a=rtpmap:100 telephone-event/8000")).media[0]
    assert [c.payload for c in common_codecs(offer, other)] == [96, 101]
    assert common_codecs(offer, ["opus/48000/1"]) == []
    assert [c.name for c in common_codecs(offer, ["pcma", Codec(3, "PCMU", 8000)])] == ["PCMU", "PCMA"]
    only_dtmf = common_codecs(offer, ["G729", "telephone-event"])
    assert only_dtmf and all(c.is_auxiliary for c in only_dtmf)  # -> 488
    assert common_codecs(offer, []) == []
    with pytest.raises(ValueError):
        common_codecs(offer, ["PCMU/fast"])


# -- any input ---------------------------------------------------------------------------------------------


@settings(max_examples=300)
@given(st.binary(max_size=400))
def test_any_bytes_parse_or_fail_cleanly(data):
    try:
        sdp = parse_sdp(data)
    except SdpError:
        return
    assert parse_sdp(sdp.to_bytes()) == sdp


LINE_TYPES = st.sampled_from(list("vosiuepcbtrzkam") + ["x"])


@settings(max_examples=300)
@given(st.lists(st.tuples(LINE_TYPES, st.text(max_size=30)), max_size=12))
def test_any_lines_parse_or_fail_cleanly(lines):
    body = sdp_text(*MINIMAL[:4], *[f"{kind}={value}" for kind, value in lines])
    try:
        sdp = parse_sdp(body)
    except SdpError:
        return
    again = parse_sdp(sdp.to_bytes())
    assert again == sdp
    # Every reader works on whatever parsed.
    for media in sdp.media:
        media.codecs, media.rtcp, media.ptime, media.bandwidths, media.telephone_events
        direction_of(sdp, media)
    is_hold(sdp)
    strip_ice(sdp)
    bump_version(sdp)


CODEC_NAMES = st.sampled_from(["opus", "PCMU", "PCMA", "G722", "telephone-event", "iLBC", "speex"])


@st.composite
def offers(draw) -> bytes:
    lines = ["v=0", f"o=- {draw(st.integers(0, 2**63))} {draw(st.integers(0, 2**63))} IN IP4 192.0.2.1", "s=-"]
    if draw(st.booleans()):
        lines.append("c=IN IP4 192.0.2.1")
    lines.append("t=0 0")
    if draw(st.booleans()):
        lines.append(draw(st.sampled_from(["a=sendonly", "a=inactive", "a=recvonly", "a=ice-lite"])))
    for _ in range(draw(st.integers(0, 3))):
        payloads = draw(st.lists(st.integers(0, 127), min_size=1, max_size=5, unique=True))
        port = draw(st.sampled_from([0, 1024, 49170, 65535]))
        lines.append(f"m=audio {port} RTP/AVP {' '.join(map(str, payloads))}")
        lines.append("c=IN IP6 2001:db8::1")
        for payload in payloads:
            if payload >= 96 or draw(st.booleans()):
                lines.append(f"a=rtpmap:{payload} {draw(CODEC_NAMES)}/{draw(st.sampled_from([8000, 48000]))}")
        if draw(st.booleans()):
            lines.append("a=rtcp:9 IN IP4 192.0.2.1")
        if draw(st.booleans()):
            lines.append(draw(st.sampled_from(["a=sendonly", "a=inactive", "a=recvonly", "a=sendrecv"])))
    return sdp_text(*lines)


@settings(max_examples=200)
@given(offers(), st.sampled_from(["203.0.113.5", "2001:db8::5"]), st.data())
def test_generated_offers_round_trip_and_rewrite(body, address, data):
    sdp = parse_sdp(body)
    assert sdp.to_bytes() == body
    ports = [data.draw(st.integers(1, 65535)) for _ in sdp.media]
    out = rewrite_media(strip_ice(sdp), address, ports)
    assert parse_sdp(out.to_bytes()) == out
    for before, after, port in zip(sdp.media, out.media, ports):
        assert after.codecs == before.codecs
        assert after.port == (0 if before.is_rejected else port)
        assert connection_of(out, after).host == address
        assert direction_of(out, after) is direction_of(sdp, before)
    assert out.origin == sdp.origin
    held = with_direction(sdp, Direction.INACTIVE)
    assert is_hold(held) is any(not m.is_rejected for m in sdp.media)
