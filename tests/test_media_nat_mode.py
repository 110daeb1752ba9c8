"""``media_proxy: nat`` through pbxd with sipp phones: relayed when either side is NATed.

The caller is never NATed here (its SDP names the address its SIP comes from). The
callee is NATed or not by its registration: its Contact names 10.0.0.5 while its
REGISTER comes from 127.0.0.1, as a phone behind a NAT's does, or its own address.
pbxd must see that before it forwards the caller's offer (docs/media.md).
"""

from __future__ import annotations

import re
from pathlib import Path

import attrs
import pytest
import pytest_twisted
from twisted.internet import defer, reactor

from call_support import (
    CALLER_HANGS_UP, DOMAIN, PASSWORDS, WAIT_FOR_BYE, callee_ok, caller, cdrs, drained, free_port, pbx_config,
    phone_dir, port_of, registered, start_pbx,
)
from sipp_runner import requires_sipp, run_sipp, scenario

pytestmark = [requires_sipp, pytest.mark.sipp]

RTP_RANGE = (42600, 42699)


@pytest.mark.parametrize("callee_natted", [True, False], ids=["callee-behind-nat", "neither"])
@pytest_twisted.ensureDeferred
async def test_nat_mode_relays_when_the_callee_registered_from_behind_a_nat(tmp_path: Path,
                                                                            callee_natted: bool) -> None:
    pbx = await start_pbx(pbx_config(tmp_path / "data", rtp={"port_min": RTP_RANGE[0], "port_max": RTP_RANGE[1],
                                                             "bind_address": "127.0.0.1"}))
    manager = pbx.calls.manager
    relaying = manager.media_factory
    # The media_proxy a route would give: nat.
    manager.media_factory = lambda request: relaying(attrs.evolve(request, media_proxy="nat"))
    try:
        port = port_of(pbx, "udp")
        workdir = phone_dir(tmp_path, "callee")
        register = scenario("uas_register.xml", workdir, hold=15000)
        if callee_natted:
            register.write_text(register.read_text().replace(
                "Contact: <sip:[user]@[local_ip]:[local_port];", "Contact: <sip:[user]@10.0.0.5:[local_port];"))
        answer = scenario("uas_answer.xml", workdir, hangup=WAIT_FOR_BYE)
        callee_done = defer.Deferred.fromCoroutine(run_sipp(
            register, "127.0.0.1", port, keys={"user": "1002", "domain": DOMAIN}, timeout=30,
            extra=("-oocsf", str(answer), "-au", "1002", "-ap", PASSWORDS["1002"], "-p", str(free_port()))))
        await registered(pbx, "1002").addTimeout(10, reactor)

        result = await caller(pbx, tmp_path, "1001", "1002", "udp", CALLER_HANGS_UP)
        assert result.ok, result.explain()
        done = await callee_done
        assert callee_ok(done), done.explain()
        await cdrs(pbx)

        offered = int(re.findall(r"^m=audio (\d+) ", done.messages, re.M)[0])  # what the callee was offered
        # The caller's own offer, then the answer it got.
        answered = [int(p) for p in re.findall(r"^m=audio (\d+) ", result.messages, re.M)]
        relayed = RTP_RANGE[0] <= offered <= RTP_RANGE[1]
        assert relayed is callee_natted
        assert (RTP_RANGE[0] <= answered[-1] <= RTP_RANGE[1]) is callee_natted
        if not callee_natted:
            assert offered == answered[0]  # the caller's own port: direct media
        await drained(pbx)
    finally:
        await pbx.stopService()
