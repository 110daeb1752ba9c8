"""Media through pbxd end to end: sipp phones call each other with RTP relayed by RelayMedia.

The caller is behind a simulated NAT: its SDP names 127.0.0.1 and a port nobody
listens on, while its audio comes from another address and port (127.0.0.2, the NAT's
outside) that the relay must latch to and send the callee's audio back to. It offers
telephone-events and plays two RFC 4733 digits from sipp's pcaps; the callee echoes
every packet (-rtp_echo): the relay forwards both ways, latches to both phones, and
reports each digit once, as a ``dtmf`` call event on pbxd's event bus (what /ws streams).
The first test wraps the relay factory only to keep the session for its figures; pbxd
relays by default.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import defer, reactor

from call_support import (
    CALLER_HANGS_UP, CALLER_WAITS_FOR_BYE, DOMAIN, PASSWORDS, WAIT_FOR_BYE, callee, callee_ok, caller, cdrs, drained,
    eventually, pbx_config, phone_dir, port_of, registered, start_pbx,
)
from media_support import Phone
from pbxd.events import CALL
from pbxd.media.rtp import parse_rtp
from pbxd.media.session import RelayMedia, relay_media_factory
from sipp_runner import requires_sipp, run_sipp, scenario

pytestmark = [requires_sipp, pytest.mark.sipp]

# The digits, then time for the NATed side's own audio (sent by the test) before the BYE.
PLAY_DTMF = """
  <nop><action><exec play_pcap_audio="/usr/share/sip-tester/dtmf_2833_1.pcap"/></action></nop>
  <pause milliseconds="400"/>
  <nop><action><exec play_pcap_audio="/usr/share/sip-tester/dtmf_2833_pound.pcap"/></action></nop>
  <pause milliseconds="3000"/>
"""
NAT_OUTSIDE = "127.0.0.2"  # where the NATed caller's packets come from (Linux routes all of 127/8 to lo)
NAT_PACKETS = 10


def media_port() -> int:
    """A free even UDP port on loopback, for a sipp phone's -mp (it uses the next ones too)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        if port % 4 == 0 and port < 65000:
            return port


@pytest_twisted.ensureDeferred
async def test_relayed_call_behind_nat_with_dtmf(tmp_path: Path) -> None:
    pbx = await start_pbx(pbx_config(tmp_path / "data", rtp={"port_min": 42000, "port_max": 42199,
                                                             "bind_address": "127.0.0.1"}))
    sessions: list[RelayMedia] = []
    events: list[dict] = []
    pbx.events.subscribe(lambda event: events.append(event.to_json()), [CALL])
    factory = relay_media_factory(reactor, pbx.config.rtp, pbx.config.data_dir)

    def relayed(request):  # type: ignore[no-untyped-def]
        session = factory(request)
        sessions.append(session)
        return session

    pbx.calls.manager.media_factory = relayed
    try:
        port = port_of(pbx, "udp")
        callee_media, caller_media = media_port(), media_port()
        workdir = phone_dir(tmp_path, "callee")
        answer = scenario("uas_answer.xml", workdir, hangup=WAIT_FOR_BYE)
        callee_done = defer.Deferred.fromCoroutine(run_sipp(
            scenario("uas_register.xml", workdir, hold=15000), "127.0.0.1", port,
            keys={"user": "1002", "domain": DOMAIN}, timeout=30,
            extra=("-oocsf", str(answer), "-au", "1002", "-ap", PASSWORDS["1002"],
                   "-mp", str(callee_media), "-rtp_echo")))
        await registered(pbx, "1002").addTimeout(10, reactor)

        workdir = phone_dir(tmp_path, "caller")
        registration = await run_sipp(
            scenario("register.xml", workdir, expect=200,
                     contact="<sip:[user]@[local_ip]:[local_port];transport=[transport]>"),
            "127.0.0.1", port, keys={"user": "1001", "domain": "127.0.0.1", "expires": "300"},
            extra=("-au", "1001", "-ap", PASSWORDS["1001"]))
        assert registration.ok, registration.explain()
        call = scenario("uac_call.xml", workdir, after=CALLER_HANGS_UP.replace(
            '<pause milliseconds="300"/>', PLAY_DTMF), headers="Subject: relayed")
        # The caller offers telephone-events; its SDP names a port it does not send from (a NAT).
        call.write_text(call.read_text()
                        .replace("m=audio [media_port] RTP/AVP 0", f"m=audio {caller_media + 100} RTP/AVP 0 101")
                        .replace("a=rtpmap:0 PCMU/8000", "a=rtpmap:0 PCMU/8000\n      a=rtpmap:101 telephone-event/8000"))
        calling = defer.Deferred.fromCoroutine(run_sipp(
            call, "127.0.0.1", port, keys={"user": "1001", "domain": DOMAIN, "callee": "1002"}, timeout=30,
            extra=("-au", "1001", "-ap", PASSWORDS["1001"], "-auth_uri", f"1002@{DOMAIN}:{port}",
                   "-mp", str(caller_media))))

        # The NAT's outside: the caller's audio arrives from here, neither the SDP's port nor
        # its address. It speaks once the digits are in (sipp's pcap player sends from a raw
        # socket, source port 0, which is forwarded but never latched to).
        nated = Phone()
        nated.port = reactor.listenUDP(0, nated, interface=NAT_OUTSIDE)
        try:
            await eventually(lambda: len([e for e in events if e["type"] == "dtmf"]) == 2)
            [session] = sessions
            relay = session.relay
            assert relay is not None
            sent = nated.send_audio(relay.a.port, NAT_PACKETS, ssrc=0x4E41)
            # The callee's echo of that audio comes back to where it came from.
            await nated.wait_for(NAT_PACKETS)
            outside = (NAT_OUTSIDE, nated.port.getHost().port)
            assert relay.a.latched == outside != ("127.0.0.1", caller_media + 100)
            assert {source for _, source in nated.received} == {("127.0.0.1", relay.a.port)}
            assert [parse_rtp(data).payload for data, _ in nated.received] == [parse_rtp(p).payload for p in sent]
        finally:
            nated.port.stopListening()
        result = await calling
        assert result.ok, result.explain()
        other = await callee_done
        assert callee_ok(other), other.explain()

        assert relay.closed
        caller_leg, callee_leg = relay.a, relay.b
        # The callee's echo is symmetric, so its leg latches to it.
        assert callee_leg.latched == ("127.0.0.1", callee_media)
        spoken = 20 + NAT_PACKETS  # the pcaps' packets and the NATed side's own
        assert caller_leg.received.packets == callee_leg.sent_packets == spoken
        assert callee_leg.received.packets == spoken  # echoed back by the callee
        # The caller negotiated telephone-event (101); the callee's answer did not. Each
        # digit is one event on the bus, from the caller's track, with the pcap's duration.
        dtmf = [event for event in events if event["type"] == "dtmf"]
        assert [(e["digit"], e["side"], e["source"]) for e in dtmf] == [("1", "caller", "rtp"), ("#", "caller", "rtp")]
        assert {e["call_id"] for e in dtmf} == {session.request.call_id}
        assert all(e["track_id"].startswith("leg-") and e["duration"] > 0 for e in dtmf)
        assert factory.pool.available == factory.pool.size  # type: ignore[attr-defined]
        [cdr] = await cdrs(pbx)
        assert cdr.disposition == "answered"
        # The relay's figures are kept with the call's record (issue 6: quality in the CDR).
        assert cdr.quality is not None
        assert cdr.quality["a"]["received"]["packets"] == cdr.quality["b"]["received"]["packets"] == spoken
        assert cdr.quality["a"]["remote"] == list(outside)  # the CDR says where the caller really was
        assert 1.0 <= cdr.quality["b"]["mos"] <= 4.5
        await drained(pbx)
    finally:
        await pbx.stopService()


@pytest_twisted.ensureDeferred
async def test_a_call_whose_media_stops_is_hung_up_with_media_timeout(tmp_path: Path) -> None:
    """pbxd relays by default; phones that send no RTP at all for rtp.timeout seconds
    are both sent BYE and the CDR says media_timeout (issue 6: dead calls end)."""
    pbx = await start_pbx(pbx_config(tmp_path / "data", rtp={
        "port_min": 42200, "port_max": 42399, "bind_address": "127.0.0.1", "timeout": 1.0}))
    try:
        callee_done = await callee(pbx, tmp_path, "1002", "udp", "uas_answer.xml", hangup=WAIT_FOR_BYE)
        result = await caller(pbx, tmp_path, "1001", "1002", "udp", CALLER_WAITS_FOR_BYE)
        assert result.ok, result.explain()
        other = await callee_done
        assert callee_ok(other), other.explain()
        [cdr] = await cdrs(pbx)
        assert (cdr.disposition, cdr.hangup_cause, cdr.hangup_side) == ("answered", "media_timeout", "system")
        await drained(pbx)
        pool = pbx.calls.manager.media_factory.pool  # type: ignore[attr-defined]
        assert pool.available == pool.size
    finally:
        await pbx.stopService()
