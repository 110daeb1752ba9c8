"""488 when the callee's answer has no codec of the caller's offer (issue 6, RFC 3264 §6).

pbxd relays by default and sees the answer before the caller does: an answer that
sets up no audio is not forwarded; the callee gets its ACK and a BYE, the caller 488.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import defer, reactor

from call_support import (
    DOMAIN, PASSWORDS, WAIT_FOR_BYE, callee_ok, caller, cdrs, drained, final_and_ack, free_port, pbx_config, phone_dir,
    port_of, registered, start_pbx,
)
from sipp_runner import requires_sipp, run_sipp, scenario
from test_call_sipp import LATE_OFFER_ANSWERED

pytestmark = [requires_sipp, pytest.mark.sipp]


@pytest_twisted.ensureDeferred
async def test_an_answer_without_a_common_codec_gets_the_caller_488(tmp_path: Path) -> None:
    pbx = await start_pbx(pbx_config(tmp_path / "data", rtp={"port_min": 42700, "port_max": 42799,
                                                             "bind_address": "127.0.0.1"}))
    try:
        port = port_of(pbx, "udp")
        workdir = phone_dir(tmp_path, "callee")
        answer = scenario("uas_answer.xml", workdir, hangup=WAIT_FOR_BYE)
        # The caller offers PCMU only (uac_call.xml); this callee answers with PCMA.
        answer.write_text(answer.read_text().replace("m=audio [media_port] RTP/AVP 0", "m=audio [media_port] RTP/AVP 8")
                          .replace("a=rtpmap:0 PCMU/8000", "a=rtpmap:8 PCMA/8000"))
        callee_done = defer.Deferred.fromCoroutine(run_sipp(
            scenario("uas_register.xml", workdir, hold=15000), "127.0.0.1", port,
            keys={"user": "1002", "domain": DOMAIN}, timeout=30,
            extra=("-oocsf", str(answer), "-au", "1002", "-ap", PASSWORDS["1002"], "-p", str(free_port()))))
        await registered(pbx, "1002").addTimeout(10, reactor)

        result = await caller(pbx, tmp_path, "1001", "1002", "udp", final_and_ack(488))
        assert result.ok, result.explain()
        assert "PCMA" not in result.messages  # the callee's answer never reached the caller
        done = await callee_done
        assert callee_ok(done), done.explain()  # ACKed, then a BYE it answered
        [cdr] = await cdrs(pbx)
        assert (cdr.disposition, cdr.sip_status, cdr.hangup_cause) == ("failed", 488, "sip_488")
        await drained(pbx)
        pool = pbx.calls.manager.media_factory.pool  # type: ignore[attr-defined]
        assert pool.available == pool.size
    finally:
        await pbx.stopService()


@pytest_twisted.ensureDeferred
async def test_a_late_offer_answered_without_a_common_codec_ends_the_call(tmp_path: Path) -> None:
    """An INVITE without SDP: the callee offers PCMU/PCMA in its 2xx, the caller's ACK answers
    G.729. pbxd cannot forward that answer; the callee's ACK refuses every stream (an ACK
    must answer the 2xx's offer, RFC 3261 §13.2.2.4) and both sides get a BYE."""
    pbx = await start_pbx(pbx_config(tmp_path / "data", rtp={"port_min": 42800, "port_max": 42899,
                                                             "bind_address": "127.0.0.1"}))
    try:
        port = port_of(pbx, "udp")
        workdir = phone_dir(tmp_path, "callee")
        late = scenario("uas_late_offer.xml", workdir)
        late.write_text(late.read_text().replace('regexp="m=audio [1-9][0-9]* RTP/AVP"', 'regexp="m=audio 0 RTP/AVP"'))
        callee_done = defer.Deferred.fromCoroutine(run_sipp(
            scenario("uas_register.xml", workdir, hold=15000), "127.0.0.1", port,
            keys={"user": "1002", "domain": DOMAIN}, timeout=30,
            extra=("-oocsf", str(late), "-au", "1002", "-ap", PASSWORDS["1002"], "-p", str(free_port()))))
        await registered(pbx, "1002").addTimeout(10, reactor)

        answer_g729 = LATE_OFFER_ANSWERED.replace("m=audio [media_port] RTP/AVP 0", "m=audio [media_port] RTP/AVP 18") \
            .replace("a=rtpmap:0 PCMU/8000", "a=rtpmap:18 G729/8000")
        path = scenario("uac_call.xml", phone_dir(tmp_path, "caller"), after="@AFTER@", headers="Subject: late offer")
        text = path.read_text()  # the INVITEs without their SDP, then what follows the call's set-up
        offer = text[text.index("      Content-Type: application/sdp"):text.index("a=rtpmap:0 PCMU/8000") + 21]
        path.write_text(text.replace(offer, "      Content-Length: 0").replace("@AFTER@", answer_g729 + WAIT_FOR_BYE))
        result = await run_sipp(path, "127.0.0.1", port, keys={"user": "1001", "domain": DOMAIN, "callee": "1002"},
                                extra=("-au", "1001", "-ap", PASSWORDS["1001"], "-auth_uri", f"1002@{DOMAIN}:{port}"))
        assert result.ok, result.explain()
        done = await callee_done
        assert callee_ok(done), done.explain()  # its ACK refused every stream, then BYE
        [cdr] = await cdrs(pbx)
        assert (cdr.disposition, cdr.hangup_cause, cdr.hangup_side) == ("answered", "sip_488", "system")
        await drained(pbx)
    finally:
        await pbx.stopService()
