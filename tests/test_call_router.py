"""The HTTP router deciding real calls: a Klein receiver on loopback answers pbxd's POST,
and sipp phones see the outcome (forward to another extension with injected headers,
reject with a status), with the CDR of each."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from klein import Klein
from twisted.internet import reactor
from twisted.web.server import Site

from call_support import (
    CALLER_HANGS_UP,
    WAIT_FOR_BYE,
    callee,
    callee_ok,
    caller,
    cdrs,
    drained,
    final_and_ack,
    pbx_config,
    start_pbx,
)
from pbxd.service import PbxService
from sipp_runner import requires_sipp

pytestmark = [requires_sipp, pytest.mark.sipp]


class Router:
    """Answers every routing POST with ``answer`` and keeps what it was asked."""

    app = Klein()

    def __init__(self) -> None:
        self.answer: dict[str, Any] = {"action": "not_handled"}
        self.asked: list[dict[str, Any]] = []

    @app.route("/route", methods=["POST"])
    def route(self, request):  # type: ignore[no-untyped-def]
        self.asked.append(json.loads(request.content.read()))
        request.setHeader("content-type", "application/json")
        return json.dumps(self.answer).encode()


@pytest_twisted.async_yield_fixture
async def routed_pbx(tmp_path: Path):
    router = Router()
    port = reactor.listenTCP(0, Site(router.app.resource()), interface="127.0.0.1")
    url = f"http://127.0.0.1:{port.getHost().port}/route"
    pbx = await start_pbx(pbx_config(tmp_path / "data", http_router={"url": url, "timeout": 2.0}))
    pbx.router = router
    yield pbx
    await pbx.stopService()
    await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_router_forwards_to_another_extension_with_headers(routed_pbx: PbxService, tmp_path: Path) -> None:
    routed_pbx.router.answer = {"action": "forward", "targets": ["1003"], "headers": {"X-Route": "vip"}}
    target = await callee(routed_pbx, tmp_path, "1003", "udp", "uas_answer.xml", hangup=WAIT_FOR_BYE)
    result = await caller(routed_pbx, tmp_path, "1001", "1002", "udp", CALLER_HANGS_UP)
    assert result.ok, result.explain()
    done = await target
    assert callee_ok(done), done.explain()
    assert re.search(r"^X-Route: vip", done.messages, re.M)
    [asked] = routed_pbx.router.asked
    assert asked["direction"] == "internal" and "1002" in asked["to"] and asked["method"] == "INVITE"
    [cdr] = await cdrs(routed_pbx)
    assert cdr.disposition == "answered"
    await drained(routed_pbx)


@pytest_twisted.ensureDeferred
async def test_router_rejects_with_its_status(routed_pbx: PbxService, tmp_path: Path) -> None:
    routed_pbx.router.answer = {"action": "reject", "status": 486, "reason": "Busy Here"}
    result = await caller(routed_pbx, tmp_path, "1001", "1002", "udp", final_and_ack(486), register=False)
    assert result.ok, result.explain()
    [cdr] = await cdrs(routed_pbx)
    assert (cdr.disposition, cdr.sip_status, cdr.hangup_side) == ("busy", 486, "system")
    await drained(routed_pbx)


@pytest_twisted.ensureDeferred
async def test_sequential_targets_fail_over_in_order(routed_pbx: PbxService, tmp_path: Path) -> None:
    """1003 rings for its 1 s and is CANCELled, then 1002 rings and answers."""
    routed_pbx.router.answer = {"action": "forward", "strategy": "sequential",
                                "targets": [{"target": "1003", "timeout": 1}, "1002"]}
    first = await callee(routed_pbx, tmp_path, "1003", "udp", "uas_ring.xml")
    second = await callee(routed_pbx, tmp_path, "1002", "udp", "uas_answer.xml", hangup=WAIT_FOR_BYE)
    result = await caller(routed_pbx, tmp_path, "1001", "1002", "udp", CALLER_HANGS_UP)
    assert result.ok, result.explain()
    for phone in (first, second):
        done = await phone
        assert callee_ok(done), done.explain()
    [cdr] = await cdrs(routed_pbx)
    assert cdr.disposition == "answered" and cdr.answer_time - cdr.start_time >= 1.0
    await drained(routed_pbx)
