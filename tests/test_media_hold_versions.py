"""Hold and resume from the API, then a phone's re-INVITE: the o= versions a phone sees.

RFC 3264 §8: each new description in a session is one version up from the previous
one. The relay owns pbxd's o= towards each leg; pbxd's own hold/resume offers and the
bodies it relays from the far phone must count on the same counter.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import defer

from call_support import (
    ANSWERED, CALLEE_TAKES_REINVITE, WAIT_FOR_BYE, callee, callee_ok, caller, caller_bye, cdrs, drained, eventually,
    pbx_config, reinvite, start_pbx,
)
from sipp_runner import requires_sipp

pytestmark = [requires_sipp, pytest.mark.sipp]


def received_invites(messages: str) -> list[tuple[int, str]]:
    """(o= version, body) of each INVITE a sipp phone received, in order."""
    found = []
    for block in re.split(r"^-{5,}.*$", messages, flags=re.M):
        text = block.strip()
        if "message received" not in text.split("\n", 1)[0]:
            continue
        message = text.split("\n", 1)[1].lstrip()
        if not message.startswith("INVITE "):
            continue
        body = re.split(r"\r?\n\r?\n", message, maxsplit=1)[1]
        origin = re.search(r"^o=\S+ \S+ (\d+) ", body, re.M)
        assert origin is not None, message
        found.append((int(origin.group(1)), re.sub(r"^o=.*$", "", body, flags=re.M).strip()))
    return found


@pytest_twisted.ensureDeferred
async def test_api_hold_then_a_phone_reinvite_never_reuses_a_version(tmp_path: Path) -> None:
    pbx = await start_pbx(pbx_config(tmp_path / "data", rtp={"port_min": 42500, "port_max": 42599,
                                                             "bind_address": "127.0.0.1"}))
    try:
        # The callee takes pbxd's hold, its resume, then the caller's re-INVITE.
        callee_done = await callee(pbx, tmp_path, "1002", "udp", "uas_answer.xml",
                                   hangup=CALLEE_TAKES_REINVITE * 3 + WAIT_FOR_BYE)
        # The caller waits while the API holds and resumes the callee, then puts it on hold itself.
        after = ANSWERED + '<pause milliseconds="2000"/>' + reinvite(3, "sendonly", "rtpmap:0") + caller_bye(4)
        calling = defer.Deferred.fromCoroutine(caller(pbx, tmp_path, "1001", "1002", "udp", after))
        manager = pbx.calls.manager
        [call] = await eventually(lambda: [c for c in manager.calls.values() if c.state.value == "answered"])
        callee_leg = call.b
        call.hold()
        await eventually(lambda: call.state.value == "ended" or b"a=recvonly" not in (callee_leg.local_sdp or b"")
                         and b"a=sendonly" in (callee_leg.local_sdp or b"") and not callee_leg.sending_invite)
        if call.state.value == "ended":  # the phones say why
            ends = [await calling, await callee_done]
            raise AssertionError(f"the call ended on hold: {call.cause} ({call.side})\n"
                                 + "\n".join(end.explain() for end in ends))
        call.unhold()
        await eventually(lambda: b"a=sendrecv" in (callee_leg.local_sdp or b"") and not callee_leg.sending_invite)
        result = await calling
        assert result.ok, result.explain()
        done = await callee_done
        assert callee_ok(done), done.explain()
        await cdrs(pbx)

        invites = received_invites(done.messages)
        assert len(invites) == 4, done.messages[-6000:]  # the call, hold, resume, the caller's re-INVITE
        versions = [version for version, _ in invites]
        assert versions == [versions[0] + step for step in range(4)], invites
        assert "a=sendonly" in invites[1][1] and "a=sendrecv" in invites[2][1] and "a=sendonly" in invites[3][1]
        await drained(pbx)
    finally:
        await pbx.stopService()
