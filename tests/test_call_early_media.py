"""18x with early media (RFC 3261 §13.2.1, RFC 3960): a callee that answers 183 Session
Progress with SDP before its 200. The caller gets that 183 with SDP before the 200; relayed
(the default) the SDP is pbxd's relay's, the same address the 200 then gives, and with
``media_proxy: none`` it is the callee's as sent."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import pytest_twisted

from call_support import (
    ANSWERED,
    WAIT_FOR_BYE,
    callee,
    callee_ok,
    caller,
    caller_bye,
    cdrs,
    drained,
    pbx_config,
    sip_messages,
    start_pbx,
)
from pbxd.service import PbxService
from sipp_runner import requires_sipp

pytestmark = [requires_sipp, pytest.mark.sipp]

# The caller must get a 183 with an SDP body before its 200.
EARLY_THEN_ANSWERED = """
  <recv response="100" optional="true"/>
  <recv response="183">
    <action>
      <ereg regexp="m=audio [0-9]+ RTP/AVP" search_in="body" check_it="true" assign_to="early"/>
      <log message="early media [$early]"/>
    </action>
  </recv>
""" + ANSWERED + caller_bye(3)

# Ahead of the built-in "extensions" route, which relays.
DIRECT = {"name": "direct", "priority": -1, "match": {"request_user": "1002"}, "destination": "1002",
          "media_proxy": "none"}


def body(message: str) -> str:
    return message.replace("\r\n", "\n").split("\n\n", 1)[1].strip()


def media_lines(sdp: str) -> list[str]:
    """The lines saying where media goes (c=, m=)."""
    return [line for line in sdp.splitlines() if line.startswith(("c=", "m="))]


def origin_version(sdp: str) -> int:
    return int(re.search(r"^o=\S+ \S+ (\d+) ", sdp, re.M).group(1))  # type: ignore[union-attr]


@pytest.mark.parametrize("media_proxy", ["auto", "none"])
@pytest_twisted.ensureDeferred
async def test_183_with_sdp_reaches_the_caller_before_the_200(tmp_path: Path, media_proxy: str) -> None:
    routes = [DIRECT] if media_proxy == "none" else []
    pbx: PbxService = await start_pbx(pbx_config(tmp_path / "data", routes=routes))
    try:
        phone = await callee(pbx, tmp_path, "1002", "udp", "uas_early_media.xml", early_ms=300,
                             hangup=WAIT_FOR_BYE)
        result = await caller(pbx, tmp_path, "1001", "1002", "udp", EARLY_THEN_ANSWERED, register=False)
        assert result.ok, result.explain()
        done = await phone
        assert callee_ok(done), done.explain()
        sent_early = body(sip_messages(done, "sent", r"SIP/2\.0 183 ")[0])
        got_early = body(sip_messages(result, "received", r"SIP/2\.0 183 ")[0])
        got_answer = body(sip_messages(result, "received", r"SIP/2\.0 200 ", "INVITE")[0])
        if media_proxy == "none":
            assert got_early == sent_early
        else:
            # pbxd's relay faces the caller: its own o=, its port, from the 183 on.
            assert "o=callee" not in got_early and media_lines(got_early) != media_lines(sent_early)
            assert media_lines(got_answer) == media_lines(got_early)
            assert origin_version(got_answer) >= origin_version(got_early)
        [cdr] = await cdrs(pbx)
        assert (cdr.disposition, cdr.sip_status) == ("answered", 200)
        await drained(pbx)
    finally:
        await pbx.stopService()
