"""sipp's RTP through the relay: a real RTP sender and echoer we did not write."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest_twisted
from twisted.internet import defer, reactor

from media_support import CODECS, HOST
from pbxd.media.ports import PortPool
from pbxd.media.relay import MediaRelay, RelayOptions
from sipp_runner import requires_sipp, run_sipp, scenario


def free_port(step: int = 1) -> int:
    """A free UDP port on loopback (a multiple of ``step``; sipp's media uses the ports above too)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind((HOST, 0))
            port = probe.getsockname()[1]
        if port % step == 0 and port < 65000:
            return port


@requires_sipp
@pytest_twisted.ensureDeferred
async def test_sipp_dtmf_through_the_relay_both_ways(tmp_path: Path) -> None:
    digits: list[tuple[str, str]] = []
    pool = PortPool(41600, 41639)
    relay = MediaRelay.open(reactor, pool, RelayOptions(bind_address=HOST, timeout=None),
                            on_dtmf=lambda leg, digit: digits.append((leg.name, digit.digit)))
    try:
        uas_sip, uac_media, uas_media = free_port(), free_port(4), free_port(4)
        # sipp's pcap player may send from a raw socket (source port 0), which the relay
        # forwards without latching to (latching behind NAT: tests/test_relay.py).
        relay.a.set_remote((HOST, uac_media), CODECS)
        relay.b.set_remote((HOST, uas_media), CODECS)
        uas = defer.ensureDeferred(run_sipp(
            scenario("relay_uas.xml", tmp_path, relay_port=relay.a.port), HOST, uas_sip, timeout=15,
            extra=("-p", str(uas_sip), "-mp", str(uas_media), "-rtp_echo")))
        uac = defer.ensureDeferred(run_sipp(
            scenario("relay_uac.xml", tmp_path), HOST, uas_sip, timeout=15, extra=("-mp", str(uac_media))))
        callee, caller = await defer.gatherResults([uas, uac])
        assert caller.ok, caller.explain()
        assert callee.ok, callee.explain()
        # sipp's digits went caller -> relay a -> relay b -> callee, were echoed, and came back.
        assert relay.b.latched == (HOST, uas_media)
        assert [d for leg, d in digits if leg == "a"] == ["1", "#"]
        assert [d for leg, d in digits if leg == "b"] == ["1", "#"]
        assert relay.a.received.packets == relay.b.sent_packets == 20
        assert relay.b.received.packets == relay.a.sent_packets == 20
    finally:
        await relay.close()
    assert pool.available == pool.size
