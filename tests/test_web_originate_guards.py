"""Click-to-dial (``POST /api/call``) and the toll-fraud guards of the ``from``
extension: a click-to-dial call counts toward its ``max_calls`` from the click
until the call ends, as a call its phone places would; a refusal says which
guard refused (``max_calls``, ``allow_external``, ``dial_patterns``)."""

from __future__ import annotations

from pathlib import Path

import pytest
import pytest_twisted

from call_support import PASSWORDS, callee, callee_ok, cdrs, drained, eventually, pbx_config, start_pbx
from sipp_runner import requires_sipp
from test_trunk_calls import EXTERNAL, OUTBOUND_ROUTE, trunk_config
from test_trunk_sipp import free_udp_port
from test_web_originate import registered_only
from tests.web_support import WebPbx

pytestmark = [requires_sipp, pytest.mark.sipp]


@pytest_twisted.ensureDeferred
async def test_click_to_dial_counts_toward_max_calls(tmp_path: Path) -> None:
    """1001 may place one call at once: while its click-to-dial rings it, a second click is
    403 naming max_calls; once the first ended (not answered in time) the count is back to none."""
    extensions = [{"number": "1001", "password": PASSWORDS["1001"], "max_calls": 1},
                  {"number": "1002", "password": PASSWORDS["1002"]}]
    service = await start_pbx(pbx_config(tmp_path / "data", extensions=extensions, calls={"max_ring_time": 1.5}))
    try:
        web = WebPbx.of(service)
        manager = service.calls.manager
        first = await callee(service, tmp_path, "1001", "udp", "uas_ring.xml")
        # A URI of a foreign domain, called directly: it counts all the same.
        started = await web.call("POST", "/api/call", json_body={"from": "1001", "to": "sip:x@example.invalid"})
        assert started.status == 200, started.json
        assert manager.placing == {"1001": 1}
        refused = await web.call("POST", "/api/call", json_body={"from": "1001", "to": "1002"})
        assert refused.status == 403 and "max_calls" in refused.json["error"], refused.json
        assert manager.guard_refusals["call_limit"] == 1 and manager.placing == {"1001": 1}
        assert callee_ok(await first)  # CANCELled after max_ring_time
        [cdr] = await cdrs(service)
        assert (cdr.call_id, cdr.disposition) == (started.json["call_id"], "no_answer")
        await eventually(lambda: not manager.placing)
        await drained(service)
    finally:
        await service.stopService()


@pytest_twisted.ensureDeferred
async def test_click_to_dial_refusals_name_the_guard(tmp_path: Path) -> None:
    """Over a trunk: 1002 may not call out at all (allow_external), 1003 only to +1 numbers
    (dial_patterns); each refusal says so, and no trunk permit or call slot stays taken."""
    extensions = [{"number": "1002", "password": PASSWORDS["1002"], "allow_external": False},
                  {"number": "1003", "password": PASSWORDS["1003"], "dial_patterns": [r"\+1\d+"]}]
    # Nothing reaches the carrier: its port only has to be a port.
    service = await start_pbx(pbx_config(tmp_path / "data", trunks=[trunk_config(free_udp_port())],
                                         routes=[OUTBOUND_ROUTE], extensions=extensions))
    try:
        web = WebPbx.of(service)
        manager = service.calls.manager
        trunk = service.trunks.registry.trunk("carrier")  # type: ignore[union-attr]
        for user in ("1002", "1003"):
            await registered_only(service, tmp_path, user)
        refused = await web.call("POST", "/api/call", json_body={"from": "1002", "to": "9" + EXTERNAL})
        assert refused.status == 403, refused.json
        assert "1002 may not call out (allow_external)" in refused.json["error"]
        refused = await web.call("POST", "/api/call", json_body={"from": "1003", "to": "9" + EXTERNAL})
        assert refused.status == 403, refused.json
        assert "no dial pattern of 1003 allows it (dial_patterns)" in refused.json["error"]
        assert "may not call out" not in refused.json["error"]
        assert manager.guard_refusals["external_not_allowed"] == 1 and manager.guard_refusals["dial_pattern"] == 1
        assert trunk.limits.active == 0 and manager.placing == {} and manager.calls == {}
    finally:
        await service.stopService()
