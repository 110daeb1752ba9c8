"""A trunk's ``codecs``: the offer the carrier gets keeps only them, in the trunk's order.

Unit tests of ``pbxd.sip.sdp.restrict_codecs`` and ``pbxd.trunks.codecs``
(well-formed, odd and malformed offers), and end to end: an extension
(sipp) calls out over a trunk whose carrier (sipp) logs the INVITE and a
re-INVITE: it sees the trunk's codecs only; an offer with no codec of the
trunk's is answered 488 to the caller and no INVITE reaches the carrier (a
re-INVITE too: the call goes on).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import pytest_twisted

from call_support import (
    ANSWERED, DOMAIN, PASSWORDS, caller_bye, cdrs, drained, eventually, final_and_ack, phone_dir, port_of, reinvite,
    reinvite_refused,
)
from pbxd.call.media import NotAcceptable
from pbxd.config import ConfigError, parse_config
from pbxd.sip.sdp import SdpError, parse_sdp, restrict_codecs
from pbxd.trunks.codecs import MalformedOffer, offer_for_trunk
from sipp_runner import SippResult, requires_sipp, run_sipp, scenario
from test_trunk_calls import EXTERNAL, pbx_with, port_taken, trunk_config
from test_trunk_sipp import Carrier, free_udp_port

HEAD = "v=0\r\no=caller 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n"
OFFER = (HEAD + "m=audio 4000 RTP/AVP 9 0 8 96 101\r\n"
         "a=rtpmap:96 opus/48000/2\r\na=fmtp:96 useinbandfec=1\r\na=rtcp-fb:96 nack\r\na=rtcp-fb:* trr-int 5\r\n"
         "a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\na=ptime:20\r\na=sendrecv\r\n")


def formats(sdp_text: str | bytes, index: int = 0) -> tuple[str, ...]:
    return parse_sdp(sdp_text).media[index].formats


# -- restrict_codecs ------------------------------------------------------------------------------


def test_only_the_trunks_codecs_stay_in_the_trunks_order() -> None:
    restricted = restrict_codecs(parse_sdp(OFFER), ["PCMA", "PCMU", "telephone-event"])
    assert restricted is not None
    [audio] = restricted.media
    assert audio.formats == ("8", "0", "101")
    text = str(restricted)
    # The dropped formats' lines go with them; the others (and the direction, ptime) stay.
    assert "opus" not in text and "useinbandfec" not in text and "rtcp-fb:96" not in text
    assert "a=rtcp-fb:* trr-int 5" in text and "a=fmtp:101 0-16" in text
    assert "a=ptime:20" in text and "a=sendrecv" in text
    assert restricted.lines == parse_sdp(OFFER).lines  # the session part is untouched


def test_names_match_in_any_case_and_static_types_by_their_rfc3551_name() -> None:
    # 9 and 0 have no rtpmap: G722 and PCMU by RFC 3551 Table 4.
    restricted = restrict_codecs(parse_sdp(OFFER), ["g722", "pcmu"])
    assert restricted is not None and restricted.media[0].formats == ("9", "0")


def test_telephone_event_goes_when_the_trunk_does_not_list_it() -> None:
    restricted = restrict_codecs(parse_sdp(OFFER), ["PCMU"])
    assert restricted is not None and restricted.media[0].formats == ("0",)
    assert "telephone-event" not in str(restricted)


def test_rate_and_channels_narrow_a_name() -> None:
    assert formats(str(restrict_codecs(parse_sdp(OFFER), ["opus/48000/2"]))) == ("96",)
    assert restrict_codecs(parse_sdp(OFFER), ["opus/16000"]) is None


def test_formats_of_one_entry_keep_the_offers_order() -> None:
    offer = HEAD + ("m=audio 4000 RTP/AVP 0 102 101\r\na=rtpmap:102 telephone-event/48000\r\n"
                    "a=rtpmap:101 telephone-event/8000\r\n")
    restricted = restrict_codecs(parse_sdp(offer), ["telephone-event", "PCMU"])
    assert restricted is not None and restricted.media[0].formats == ("102", "101", "0")


def test_a_dynamic_type_without_rtpmap_names_nothing_and_goes() -> None:
    offer = HEAD + "m=audio 4000 RTP/AVP 0 97\r\n"
    restricted = restrict_codecs(parse_sdp(offer), ["PCMU"])
    assert restricted is not None and restricted.media[0].formats == ("0",)


def test_nothing_in_common_is_none() -> None:
    assert restrict_codecs(parse_sdp(OFFER), ["G729"]) is None


def test_dtmf_alone_is_nothing_in_common() -> None:
    # RFC 3264 §6: telephone-event carries no voice; an offer left with it alone is a 488.
    assert restrict_codecs(parse_sdp(OFFER), ["G729", "telephone-event"]) is None


def test_other_streams_are_left_alone_and_an_emptied_audio_stream_is_rejected() -> None:
    offer = (HEAD + "m=audio 4000 RTP/AVP 0\r\n" + "m=video 4002 RTP/AVP 97\r\na=rtpmap:97 H264/90000\r\n"
             + "m=audio 4004 RTP/AVP 9\r\n" + "m=image 4006 udptl t38\r\n")
    restricted = restrict_codecs(parse_sdp(offer), ["PCMU"])
    assert restricted is not None
    audio, video, second, image = restricted.media
    assert (audio.port, audio.formats) == (4000, ("0",))
    assert video == parse_sdp(offer).media[1] and image == parse_sdp(offer).media[3]
    # RFC 3264 §8.2: a stream removed is port 0 (its m= line stays, formats and all).
    assert (second.port, second.formats) == (0, ("9",))
    parse_sdp(str(restricted))  # still well-formed


def test_no_audio_in_use_is_unchanged() -> None:
    video_only = parse_sdp(HEAD + "m=video 4002 RTP/AVP 97\r\na=rtpmap:97 H264/90000\r\n")
    assert restrict_codecs(video_only, ["PCMU"]) == video_only
    rejected = parse_sdp(HEAD + "m=audio 0 RTP/AVP 9\r\n")
    assert restrict_codecs(rejected, ["PCMU"]) == rejected
    assert restrict_codecs(parse_sdp(OFFER), []) == parse_sdp(OFFER)


def test_a_bad_capability_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        restrict_codecs(parse_sdp(OFFER), ["PCMU/fast"])


# -- offer_for_trunk --------------------------------------------------------------------------------


def test_offer_for_trunk_cuts_the_offer() -> None:
    body = offer_for_trunk(OFFER.encode(), ("PCMA", "telephone-event"))
    assert formats(body) == ("8", "101")


def test_offer_for_trunk_without_codecs_or_with_nothing_to_cut_is_the_same_bytes() -> None:
    odd = OFFER.replace("\r\n", "\n").encode()  # LF line ends: rewritten, they would be CRLF
    assert offer_for_trunk(odd, ()) is odd
    only_pcmu = (HEAD + "m=audio 4000 RTP/AVP 0\n").replace("\r\n", "\n").encode()
    assert offer_for_trunk(only_pcmu, ("PCMU", "PCMA")) is only_pcmu
    assert offer_for_trunk(b"", ("PCMU",)) == b""


def test_offer_for_trunk_without_a_common_codec_is_488() -> None:
    with pytest.raises(NotAcceptable) as refused:
        offer_for_trunk(OFFER.encode(), ("G729",))
    assert refused.value.status == 488 and "G729" in str(refused.value)


@pytest.mark.parametrize("body", [
    b"not sdp at all",
    b"v=0\r\ns=-\r\n",  # no o=
    (HEAD + "m=audio 4000 RTP/AVP 0 x\r\n").encode(),  # a format that is no payload type
    (HEAD + "m=audio 4000 RTP/AVP 96\r\na=rtpmap:96 opus\r\n").encode(),  # rtpmap without a rate
    (HEAD + "m=audio 99999 RTP/AVP 0\r\n").encode(),
    b"\xff\xfe\x00",
])
def test_a_malformed_offer_for_a_trunk_is_400(body: bytes) -> None:
    with pytest.raises(SdpError):
        parse_sdp(body)
    with pytest.raises(MalformedOffer) as refused:
        offer_for_trunk(body, ("PCMU",))
    assert refused.value.status == 400


# -- configuration ---------------------------------------------------------------------------------------


def trunk_with_codecs(codecs: object) -> object:
    return parse_config({"trunks": [{"name": "carrier", "destination": {"host": "192.0.2.1"}, "codecs": codecs}]})


def test_codec_names_are_checked_when_the_config_is_read() -> None:
    config = trunk_with_codecs(["PCMA", "opus/48000/2", "telephone-event/8000"])
    assert config.trunks[0].codecs == ("PCMA", "opus/48000/2", "telephone-event/8000")  # type: ignore[attr-defined]
    for bad in (["PCMU/fast"], ["G 729"], [""], [8], "PCMU"):
        with pytest.raises(ConfigError):
            trunk_with_codecs(bad)


# -- end to end ---------------------------------------------------------------------------------------------

SIPP_PCMU = "m=audio [media_port] RTP/AVP 0\n      a=rtpmap:0 PCMU/8000\n"
# G722, PCMU, PCMA and DTMF, in the phone's order of preference.
SIPP_WIDE = ("m=audio [media_port] RTP/AVP 9 0 8 101\n      a=rtpmap:9 G722/8000\n      a=rtpmap:0 PCMU/8000\n"
             "      a=rtpmap:8 PCMA/8000\n      a=rtpmap:101 telephone-event/8000\n      a=fmtp:101 0-16\n")
SIPP_G722 = "m=audio [media_port] RTP/AVP 9 101\n      a=rtpmap:9 G722/8000\n      a=rtpmap:101 telephone-event/8000\n"

CARRIER_TAKES_REINVITE = """
  <recv request="INVITE"/>
  <send retrans="500">
    <![CDATA[
      SIP/2.0 200 OK
      [last_Via:]
      [last_From:]
      [last_To:]
      [last_Call-ID:]
      [last_CSeq:]
      Contact: <sip:carrier@[local_ip]:[local_port];transport=[transport]>
      Content-Type: application/sdp
      Content-Length: [len]

      v=0
      o=carrier 1 2 IN IP[local_ip_type] [local_ip]
      s=-
      c=IN IP[media_ip_type] [media_ip]
      t=0 0
      m=audio [media_port] RTP/AVP 8
      a=rtpmap:8 PCMA/8000
      a=recvonly

    ]]>
  </send>
  <recv request="ACK"/>
"""


async def answering_carrier(tmp_path: Path, port: int, middle: str = "") -> Carrier:
    path = scenario("carrier_uas_answer.xml", phone_dir(tmp_path, "carrier"), payload=8, encoding="PCMA/8000",
                    middle=middle)
    carrier = Carrier(path, port, calls=1, timeout=25)
    await eventually(lambda: port_taken(port) or carrier.done.called)
    return carrier


async def call_offering(pbx: object, tmp_path: Path, media: str, after: str) -> SippResult:
    """Extension 1001 registers and calls 9+EXTERNAL offering ``media`` (uac_call.xml's m= and a= lines
    replaced in every offer of the scenario, re-INVITEs too)."""
    workdir = phone_dir(tmp_path, "caller")
    port = port_of(pbx, "udp")  # type: ignore[arg-type]
    registration = await run_sipp(
        scenario("register.xml", workdir, expect=200, contact="<sip:[user]@[local_ip]:[local_port];transport=[transport]>"),
        "127.0.0.1", port, keys={"user": "1001", "domain": "127.0.0.1", "expires": "300"},
        extra=("-au", "1001", "-ap", PASSWORDS["1001"]))
    assert registration.ok, registration.explain()
    path = scenario("uac_call.xml", workdir, after=after, headers="Subject: codecs")
    text = path.read_text()
    assert SIPP_PCMU in text
    path.write_text(text.replace(SIPP_PCMU, media))
    callee_number = "9" + EXTERNAL
    return await run_sipp(path, "127.0.0.1", port, keys={"user": "1001", "domain": DOMAIN, "callee": callee_number},
                          timeout=30, extra=("-au", "1001", "-ap", PASSWORDS["1001"],
                                             "-auth_uri", f"{callee_number}@{DOMAIN}:{port}"))


def bodies(result: SippResult, first_line: str) -> list[str]:
    """The m=audio lines of the messages the carrier received starting with ``first_line``."""
    blocks = result.messages.split("----------------------------------------------- ")
    return [line.strip() for block in blocks if "message received" in block and first_line in block
            for line in block.splitlines() if line.startswith("m=audio")]


@requires_sipp
@pytest_twisted.ensureDeferred
async def test_the_carrier_is_offered_the_trunks_codecs_only_in_its_order(tmp_path: Path) -> None:
    port = free_udp_port()
    carrier = await answering_carrier(tmp_path, port, middle=CARRIER_TAKES_REINVITE)
    pbx = await pbx_with(tmp_path, trunk_config(port, codecs=["PCMA", "PCMU", "telephone-event"]))
    try:
        after = ANSWERED + reinvite(3, "sendonly", "recvonly") + caller_bye(4)
        result = await call_offering(pbx, tmp_path, SIPP_WIDE, after)
        assert result.ok, result.explain()
        carried = await carrier.done
        assert carried.ok, carried.explain()
        # The first INVITE and the caller's re-INVITE (hold): G722 gone, PCMA first as the trunk says.
        offers = bodies(carried, "INVITE sip:")
        assert len(offers) == 2, carried.messages
        assert all(offer.endswith("RTP/AVP 8 0 101") for offer in offers), offers
        # The caller's answer is the carrier's choice, from its own offer.
        [answer] = [line for line in result.messages.split("-----") if "SIP/2.0 200 OK" in line and "CSeq: 2 INVITE"
                    in line]
        assert "RTP/AVP 8" in answer
        [cdr] = await cdrs(pbx)
        assert cdr.answer_time is not None
        await drained(pbx)
    finally:
        await carrier.stop()
        await pbx.stopService()


@requires_sipp
@pytest_twisted.ensureDeferred
async def test_no_codec_of_the_trunks_is_488_and_the_carrier_is_not_called(tmp_path: Path) -> None:
    port = free_udp_port()
    carrier = await answering_carrier(tmp_path, port)
    pbx = await pbx_with(tmp_path, trunk_config(port, codecs=["PCMA", "PCMU", "telephone-event"]))
    try:
        result = await call_offering(pbx, tmp_path, SIPP_G722, final_and_ack(488))
        assert result.ok, result.explain()
        [cdr] = await cdrs(pbx)
        assert (cdr.trunk, cdr.sip_status, cdr.answer_time) == ("carrier", 488, None)
        await drained(pbx)
        assert pbx.trunks.registry.trunk("carrier").limits.active == 0  # type: ignore[union-attr]
    finally:
        untouched = await carrier.stop()
        await pbx.stopService()
    assert "INVITE" not in untouched.messages


@requires_sipp
@pytest_twisted.ensureDeferred
async def test_a_reinvite_with_no_codec_of_the_trunks_is_488_and_the_call_goes_on(tmp_path: Path) -> None:
    port = free_udp_port()
    carrier = await answering_carrier(tmp_path, port)
    pbx = await pbx_with(tmp_path, trunk_config(port, codecs=["PCMA", "PCMU", "telephone-event"]))
    try:
        g722_reinvite = reinvite_refused(3, 488)
        assert SIPP_PCMU in g722_reinvite
        after = ANSWERED + g722_reinvite.replace(SIPP_PCMU, SIPP_G722) + caller_bye(4)
        result = await call_offering(pbx, tmp_path, SIPP_WIDE, after)
        assert result.ok, result.explain()  # 488 to the re-INVITE, and the BYE after it still answered
        carried = await carrier.done
        assert carried.ok, carried.explain()
        assert len(bodies(carried, "INVITE sip:")) == 1  # the re-INVITE never reached the carrier
        [cdr] = await cdrs(pbx)
        assert cdr.answer_time is not None and cdr.sip_status == 200
        await drained(pbx)
    finally:
        await carrier.stop()
        await pbx.stopService()
