"""The HTTP router deciding real calls, for what tests/test_call_router.py leaves out: a
Klein receiver on loopback answers pbxd's POST and sipp phones see the outcome of
``abort``, ``spam``, ``parallel`` targets, ``record``, ``timeout`` and
``max_ring_time``, ``max_duration``, ``media_proxy: none``, ``not_handled``, and a
router that fails (down, too slow, not JSON) with and without ``fallback_to_static``."""

from __future__ import annotations

import json
import re
import sqlite3
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from klein import Klein
from twisted.internet import defer, reactor, task
from twisted.web.server import Site

from call_support import (
    DOMAIN,
    CALLER_CANCELS,
    CALLER_HANGS_UP,
    CALLER_WAITS_FOR_BYE,
    WAIT_FOR_BYE,
    callee,
    callee_ok,
    caller,
    cdrs,
    drained,
    eventually,
    final_and_ack,
    free_port,
    pbx_config,
    sip_messages,
    start_pbx,
)
from pbxd.service import PbxService
from sipp_runner import requires_sipp

pytestmark = [requires_sipp, pytest.mark.sipp]

# Seconds pbxd waits for the router: short where a test waits for it to expire,
# long enough elsewhere for a loaded machine's answer.
ROUTER_TIMEOUT = 0.5
ANSWER_TIMEOUT = 5.0


class Router:
    """Answers every routing POST with ``answer`` (a JSON value, or raw bytes sent as
    they are) after ``delay`` seconds, and keeps what it was asked."""

    app = Klein()

    def __init__(self) -> None:
        self.answer: Any = {"action": "not_handled"}
        self.delay = 0.0
        self.delays: list[float] = []  # for the first requests, in order; then ``delay``
        self.asked: list[dict[str, Any]] = []
        self.api_keys: list[str | None] = []  # the X-API-Key header of each request
        self.held: list[defer.Deferred[bytes]] = []

    @app.route("/route", methods=["POST"])
    def route(self, request):  # type: ignore[no-untyped-def]
        self.asked.append(json.loads(request.content.read()))
        self.api_keys.append(request.getHeader("x-api-key"))
        request.setHeader("content-type", "application/json")
        body = self.answer if isinstance(self.answer, bytes) else json.dumps(self.answer).encode()
        delay = self.delays.pop(0) if self.delays else self.delay
        if not delay:
            return body
        later = task.deferLater(reactor, delay, lambda: body)
        self.held.append(later)
        return later


@pytest_twisted.async_yield_fixture
async def routed(tmp_path: Path):
    """Makes a pbxd whose HTTP router is a :class:`Router` on loopback (``down``: a URL
    where nothing listens); returns (pbx, router)."""
    router = Router()
    port = reactor.listenTCP(0, Site(router.app.resource()), interface="127.0.0.1")
    started: list[PbxService] = []

    async def make(*, down: bool = False, fallback: bool = False, timeout: float = ANSWER_TIMEOUT,
                   **sections: Any) -> tuple[PbxService, Router]:
        where = free_port() if down else port.getHost().port
        http_router = {"url": f"http://127.0.0.1:{where}/route", "timeout": timeout,
                       "fallback_to_static": fallback, "headers": {"X-API-Key": "secret-token"}}
        pbx = await start_pbx(pbx_config(tmp_path / "data", http_router=http_router, **sections))
        started.append(pbx)
        return pbx, router

    yield make
    for pbx in started:
        if pbx.running:
            await pbx.stopService()
    for later in router.held:
        later.cancel()
    await port.stopListening()


@pytest.mark.parametrize(("answer", "status", "cause"), [
    ({"action": "abort"}, 403, "call_rejected"),
    ({"action": "abort", "status": 402, "reason": "Payment Required"}, 402, "sip_402"),
    ({"action": "spam"}, 603, "spam"),
], ids=["abort", "abort-with-status", "spam"])
@pytest_twisted.ensureDeferred
async def test_abort_and_spam_refuse_the_call_without_ringing(routed, tmp_path: Path, answer: dict,
                                                             status: int, cause: str) -> None:
    """Nobody is registered as 1002: a forward would be 480, the router's refusal is not."""
    pbx, router = await routed()
    router.answer = answer
    result = await caller(pbx, tmp_path, "1001", "1002", "udp", final_and_ack(status), register=False)
    assert result.ok, result.explain()
    if "reason" in answer:
        assert re.search(rf"^SIP/2.0 {status} {answer['reason']}", result.messages, re.M)
    [cdr] = await cdrs(pbx)
    assert (cdr.disposition, cdr.sip_status, cdr.hangup_cause, cdr.hangup_side) == (
        "failed", status, cause, "system")
    assert cdr.answer_time is None
    await drained(pbx)


@pytest_twisted.ensureDeferred
async def test_parallel_targets_ring_together_and_the_loser_is_cancelled(routed, tmp_path: Path) -> None:
    pbx, router = await routed()
    router.answer = {"action": "forward", "strategy": "parallel", "targets": ["1003", "1002"]}
    ringing = await callee(pbx, tmp_path, "1003", "udp", "uas_ring.xml")
    answering = await callee(pbx, tmp_path, "1002", "udp", "uas_answer.xml", hangup=WAIT_FOR_BYE)
    result = await caller(pbx, tmp_path, "1001", "1002", "udp", CALLER_HANGS_UP)
    assert result.ok, result.explain()
    for phone in (ringing, answering):
        done = await phone
        assert callee_ok(done), done.explain()  # 1003 got the INVITE, then pbxd's CANCEL
    [cdr] = await cdrs(pbx)
    assert (cdr.disposition, cdr.to_number, cdr.hangup_side) == ("answered", "1002", "caller")
    assert cdr.recording_path is None  # not asked to record
    await drained(pbx)


@pytest_twisted.ensureDeferred
async def test_parallel_targets_keep_their_own_timeouts(routed, tmp_path: Path) -> None:
    """1003 may ring 1 s, 1002 2 s, at the same time: 1003 is CANCELled a second before
    1002, and the caller gets 480 when the longest has run out."""
    pbx, router = await routed()
    router.answer = {"action": "forward", "strategy": "parallel",
                     "targets": [{"target": "1003", "timeout": 1}, {"target": "1002", "timeout": 2}]}
    phones = [await callee(pbx, tmp_path, number, "udp", "uas_ring.xml") for number in ("1003", "1002")]
    result = await caller(pbx, tmp_path, "1001", "1002", "udp", final_and_ack(480, ringing=True), register=False)
    assert result.ok, result.explain()
    for phone in phones:
        done = await phone
        assert callee_ok(done), done.explain()  # each got the INVITE, then pbxd's CANCEL
    [cdr] = await cdrs(pbx)
    cancels = sorted({m.time for call_id in list(pbx.sip.capture._calls)  # a leg's is in its call's too
                      for m in pbx.sip.capture.ladder(call_id) or []
                      if m.direction == "out" and m.first_line.startswith("CANCEL ")})
    assert len(cancels) == 2 and cancels[1] - cancels[0] > 0.7, cancels
    assert (cdr.disposition, cdr.sip_status) == ("no_answer", 480) and 1.9 <= cdr.duration < 4
    await drained(pbx)


@pytest_twisted.ensureDeferred
async def test_a_uri_target_and_the_request_the_router_got(routed, tmp_path: Path) -> None:
    """§1.1's own example: the router names a phone's contact URI. What it was asked has
    §1.1's shape: the caller's address, its INVITE's headers less its credentials, its SDP."""
    pbx, router = await routed()
    phone = await callee(pbx, tmp_path, "1002", "udp", "uas_answer.xml", hangup=WAIT_FOR_BYE)
    [contact] = pbx.registrar.location.lookup_user("1002")
    router.answer = {"action": "forward", "targets": [str(contact.request_uri)]}
    result = await caller(pbx, tmp_path, "1001", "1003", "udp", CALLER_HANGS_UP, register=False)
    assert result.ok, result.explain()
    assert callee_ok(await phone)
    [asked] = router.asked
    assert router.api_keys == ["secret-token"]
    invite = sip_messages(result, "sent", r"INVITE ")[-1]
    call_id = re.search(r"^Call-ID: (.+?)\r?$", invite, re.M).group(1)  # type: ignore[union-attr]
    assert (asked["call_id"], asked["method"], asked["direction"]) == (call_id, "INVITE", "internal")
    assert asked["from"] == f"<sip:1001@{DOMAIN}>" and asked["to"] == f"<sip:1003@{DOMAIN}>"
    assert asked["uri"].startswith(f"sip:1003@{DOMAIN}") and asked["source_addr"].startswith("127.0.0.1:")
    assert asked["headers"]["Subject"] == "a call"
    assert asked["body"].replace("\r\n", "\n").strip() == sdp_of(invite)
    assert not {"Proxy-Authorization", "Authorization"} & set(asked["headers"])
    [cdr] = await cdrs(pbx)
    assert cdr.disposition == "answered"
    await drained(pbx)


@pytest_twisted.ensureDeferred
async def test_a_uri_of_pbxds_own_domain_rings_the_extension(routed, tmp_path: Path) -> None:
    """Sent to pbx.test as a host, the INVITE would only come back to pbxd (or fail):
    a URI naming pbxd itself is the extension it names."""
    pbx, router = await routed()
    phone = await callee(pbx, tmp_path, "1002", "udp", "uas_answer.xml", hangup=WAIT_FOR_BYE)
    router.answer = {"action": "forward", "targets": [f"sip:1002@{DOMAIN}"]}
    result = await caller(pbx, tmp_path, "1001", "1003", "udp", CALLER_HANGS_UP, register=False)
    assert result.ok, result.explain()
    assert callee_ok(await phone)
    [cdr] = await cdrs(pbx)
    assert cdr.disposition == "answered"
    await drained(pbx)


@pytest_twisted.ensureDeferred
async def test_record_true_records_the_call(routed, tmp_path: Path) -> None:
    pbx, router = await routed()
    router.answer = {"action": "forward", "targets": ["1002"], "record": True}
    phone = await callee(pbx, tmp_path, "1002", "udp", "uas_answer.xml", hangup=WAIT_FOR_BYE)
    result = await caller(pbx, tmp_path, "1001", "1002", "udp", CALLER_HANGS_UP)
    assert result.ok, result.explain()
    assert callee_ok(await phone)
    [cdr] = await cdrs(pbx)
    assert cdr.disposition == "answered"
    assert cdr.recording_path, "the CDR names no recording"
    await drained(pbx)


@pytest.mark.parametrize("answer", [
    {"action": "forward", "targets": ["1002"], "timeout": 1},
    {"action": "forward", "targets": ["1002"], "max_ring_time": 1},
], ids=["timeout", "max_ring_time"])
@pytest_twisted.ensureDeferred
async def test_the_routers_ring_time_bounds_the_ringing(routed, tmp_path: Path, answer: dict) -> None:
    """The global max_ring_time is 60 s: the router's 1 s ends the ringing (480, CANCEL)."""
    pbx, router = await routed()
    router.answer = answer
    phone = await callee(pbx, tmp_path, "1002", "udp", "uas_ring.xml")
    result = await caller(pbx, tmp_path, "1001", "1002", "udp", final_and_ack(480, ringing=True))
    assert result.ok, result.explain()
    done = await phone
    assert callee_ok(done), done.explain()
    [cdr] = await cdrs(pbx)
    assert (cdr.disposition, cdr.sip_status, cdr.hangup_cause, cdr.hangup_side) == (
        "no_answer", 480, "no_answer", "system")
    assert 0.9 <= cdr.duration < 3
    await drained(pbx)


@pytest_twisted.ensureDeferred
async def test_sequential_targets_fail_over_on_busy(routed, tmp_path: Path) -> None:
    """1003 is busy: 1002 rings next and answers (a hunt group)."""
    pbx, router = await routed()
    router.answer = {"action": "forward", "strategy": "sequential", "targets": ["1003", "1002"]}
    busy = await callee(pbx, tmp_path, "1003", "udp", "uas_busy.xml")
    answering = await callee(pbx, tmp_path, "1002", "udp", "uas_answer.xml", hangup=WAIT_FOR_BYE)
    result = await caller(pbx, tmp_path, "1001", "1002", "udp", CALLER_HANGS_UP, register=False)
    assert result.ok, result.explain()
    for phone in (busy, answering):
        done = await phone
        assert callee_ok(done), done.explain()
    [cdr] = await cdrs(pbx)
    assert (cdr.disposition, cdr.sip_status) == ("answered", 200)
    await drained(pbx)


@pytest_twisted.ensureDeferred
async def test_a_6xx_from_a_sequential_target_ends_the_search(routed, tmp_path: Path) -> None:
    """RFC 3261 §16.7 step 6: 603 Decline means nowhere; 1002 is never rung."""
    pbx, router = await routed()
    router.answer = {"action": "forward", "strategy": "sequential", "targets": ["1003", "1002"]}
    declining = await callee(pbx, tmp_path, "1003", "udp", "uas_refuse.xml", status=603, reason="Decline")
    untouched = await callee(pbx, tmp_path, "1002", "udp", "uas_answer.xml", hangup=WAIT_FOR_BYE, hold_ms=1500)
    result = await caller(pbx, tmp_path, "1001", "1002", "udp", final_and_ack(603), register=False)
    assert result.ok, result.explain()
    done = await declining
    assert callee_ok(done), done.explain()
    spared = await untouched
    assert spared.exit_code == 0 and not sip_messages(spared, "received", "INVITE "), spared.explain()
    [cdr] = await cdrs(pbx)
    assert (cdr.disposition, cdr.sip_status, cdr.hangup_cause) == ("failed", 603, "call_rejected")
    await drained(pbx)


@pytest_twisted.ensureDeferred
async def test_max_ring_time_caps_all_sequential_steps_together(routed, tmp_path: Path) -> None:
    """1003 rings its 0.6 s, then 1002 rings until the call's 1.2 s are up: both are
    CANCELled and the caller gets 480 after about 1.2 s, not 0.6 + 60."""
    pbx, router = await routed()
    router.answer = {"action": "forward", "strategy": "sequential", "max_ring_time": 1.2,
                     "targets": [{"target": "1003", "timeout": 0.6}, "1002"]}
    first = await callee(pbx, tmp_path, "1003", "udp", "uas_ring.xml")
    second = await callee(pbx, tmp_path, "1002", "udp", "uas_ring.xml")
    result = await caller(pbx, tmp_path, "1001", "1002", "udp", final_and_ack(480, ringing=True))
    assert result.ok, result.explain()
    for phone in (first, second):
        done = await phone
        assert callee_ok(done), done.explain()
    [cdr] = await cdrs(pbx)
    assert (cdr.disposition, cdr.hangup_cause) == ("no_answer", "no_answer")
    assert 1.1 <= cdr.duration < 3
    await drained(pbx)


@pytest_twisted.ensureDeferred
async def test_the_routers_max_duration_hangs_up_the_answered_call(routed, tmp_path: Path) -> None:
    pbx, router = await routed()
    router.answer = {"action": "forward", "targets": ["1002"], "max_duration": 1}
    phone = await callee(pbx, tmp_path, "1002", "udp", "uas_answer.xml", hangup=WAIT_FOR_BYE)
    result = await caller(pbx, tmp_path, "1001", "1002", "udp", CALLER_WAITS_FOR_BYE)
    assert result.ok, result.explain()
    assert callee_ok(await phone)
    [cdr] = await cdrs(pbx)
    assert (cdr.hangup_cause, cdr.hangup_side) == ("max_duration", "system") and 0.9 <= cdr.billsec < 3
    await drained(pbx)


def sdp_of(message: str) -> str:
    """The body of a logged SIP message, line ends normalised."""
    return message.replace("\r\n", "\n").split("\n\n", 1)[1].strip()


@pytest_twisted.ensureDeferred
async def test_media_proxy_none_passes_the_sdp_unchanged(routed, tmp_path: Path) -> None:
    """The callee gets the caller's offer as it was sent, the caller the callee's answer
    (relayed, the default, pbxd writes its own o= and c=/m=: tests/test_relay_sipp.py)."""
    pbx, router = await routed()
    router.answer = {"action": "forward", "targets": ["1002"], "media_proxy": "none"}
    phone = await callee(pbx, tmp_path, "1002", "udp", "uas_answer.xml", hangup=WAIT_FOR_BYE)
    result = await caller(pbx, tmp_path, "1001", "1002", "udp", CALLER_HANGS_UP)
    assert result.ok, result.explain()
    done = await phone
    assert callee_ok(done), done.explain()
    offer_sent = sdp_of(sip_messages(result, "sent", r"INVITE .* SIP/2\.0")[-1])
    offer_got = sdp_of(sip_messages(done, "received", r"INVITE .* SIP/2\.0")[0])
    answer_sent = sdp_of(sip_messages(done, "sent", r"SIP/2\.0 200 ", "INVITE")[0])
    answer_got = sdp_of(sip_messages(result, "received", r"SIP/2\.0 200 ", "INVITE")[0])
    assert "m=audio" in offer_sent and "m=audio" in answer_sent
    assert (offer_got, answer_got) == (offer_sent, answer_sent)
    [cdr] = await cdrs(pbx)
    assert cdr.disposition == "answered"
    await drained(pbx)


OPERATOR = {"name": "operator", "match": {"request_user": "0"}, "destination": "1002"}


@pytest_twisted.ensureDeferred
async def test_not_handled_falls_back_to_the_static_routes(routed, tmp_path: Path) -> None:
    """The router passes; the static route "operator" takes 0 to 1002 (with or without
    fallback_to_static: that is for a router that fails)."""
    pbx, router = await routed(routes=[OPERATOR])
    router.answer = {"action": "not_handled"}
    phone = await callee(pbx, tmp_path, "1002", "udp", "uas_answer.xml", hangup=WAIT_FOR_BYE)
    result = await caller(pbx, tmp_path, "1001", "0", "udp", CALLER_HANGS_UP)
    assert result.ok, result.explain()
    assert callee_ok(await phone)
    [asked] = router.asked
    assert asked["uri"].startswith("sip:0@")
    [cdr] = await cdrs(pbx)
    assert (cdr.disposition, cdr.to_number) == ("answered", "0")
    await drained(pbx)


@pytest_twisted.ensureDeferred
async def test_not_handled_and_no_static_route_is_404(routed, tmp_path: Path) -> None:
    pbx, router = await routed(routes=[OPERATOR])
    router.answer = {"action": "not_handled"}
    result = await caller(pbx, tmp_path, "1001", "5555", "udp", final_and_ack(404), register=False)
    assert result.ok, result.explain()
    [cdr] = await cdrs(pbx)
    assert (cdr.disposition, cdr.sip_status, cdr.to_number) == ("failed", 404, "5555")
    await drained(pbx)


FAILURES = ["down", "slow", "not-json"]


async def failing_router(routed, failure: str, fallback: bool) -> tuple[PbxService, Router]:
    pbx, router = await routed(down=failure == "down", fallback=fallback, routes=[OPERATOR],
                               timeout=ROUTER_TIMEOUT if failure == "slow" else ANSWER_TIMEOUT)
    router.answer = {"action": "forward", "targets": ["1003"]}
    if failure == "slow":
        router.delay = ROUTER_TIMEOUT * 4
    elif failure == "not-json":
        router.answer = b'{"action": "forward", "targets": ['
    return pbx, router


@pytest.mark.parametrize("failure", FAILURES)
@pytest_twisted.ensureDeferred
async def test_a_failed_router_without_fallback_answers_503(routed, tmp_path: Path, failure: str) -> None:
    pbx, router = await failing_router(routed, failure, fallback=False)
    result = await caller(pbx, tmp_path, "1001", "0", "udp", final_and_ack(503), register=False)
    assert result.ok, result.explain()
    assert len(router.asked) == (0 if failure == "down" else 1)
    [cdr] = await cdrs(pbx)
    assert (cdr.disposition, cdr.sip_status, cdr.hangup_side) == ("failed", 503, "system")
    await drained(pbx)


@pytest.mark.parametrize("failure", FAILURES)
@pytest_twisted.ensureDeferred
async def test_a_failed_router_with_fallback_uses_the_static_routes(routed, tmp_path: Path,
                                                                    failure: str) -> None:
    """The router's answer (to 1003) never counts: the static route takes 0 to 1002."""
    pbx, router = await failing_router(routed, failure, fallback=True)
    phone = await callee(pbx, tmp_path, "1002", "udp", "uas_answer.xml", hangup=WAIT_FOR_BYE)
    result = await caller(pbx, tmp_path, "1001", "0", "udp", CALLER_HANGS_UP)
    assert result.ok, result.explain()
    assert callee_ok(await phone)
    [cdr] = await cdrs(pbx)
    assert (cdr.disposition, cdr.to_number) == ("answered", "0")
    assert len(router.asked) == (0 if failure == "down" else 1)
    await drained(pbx)


# The caller CANCELs once pbxd's 100 Trying came, while the router has not answered yet.
CANCEL_WHILE_ROUTED = CALLER_CANCELS.replace(
    '<recv response="100" optional="true"/>', '<recv response="100"/>').replace(
    '<recv response="180"/>', '<pause milliseconds="200"/>')


@pytest_twisted.ensureDeferred
async def test_a_caller_that_cancels_while_the_router_thinks_gets_487(routed, tmp_path: Path) -> None:
    """pbxd drops the router's request: the answer it would have sent after 2 s is not
    waited for (Klein cancels a handler whose connection is gone)."""
    pbx, router = await routed(timeout=3)
    router.answer = {"action": "forward", "targets": ["1002"]}
    router.delay = 2.0
    result = await caller(pbx, tmp_path, "1001", "1002", "udp", CANCEL_WHILE_ROUTED, register=False)
    assert result.ok, result.explain()
    [held] = router.held
    await eventually(lambda: held.called, timeout=1.0)  # cancelled, long before its 2 s
    assert len(router.asked) == 1
    # A call that ended before it rang still leaves its record.
    [cdr] = await cdrs(pbx)
    assert (cdr.disposition, cdr.sip_status, cdr.hangup_side) == ("cancelled", 487, "caller")
    assert cdr.end_time - cdr.start_time >= 0.15  # from the INVITE, the router's think time included
    await drained(pbx)
    assert not pbx.calls.manager.calls


@pytest_twisted.ensureDeferred
async def test_a_shutdown_while_the_router_thinks_answers_503(routed, tmp_path: Path) -> None:
    """A clean stop does not leave a caller whose call is still being routed hanging."""
    pbx, router = await routed(timeout=3)
    router.answer = {"action": "forward", "targets": ["1002"]}
    router.delay = 2.0
    calling = defer.Deferred.fromCoroutine(
        caller(pbx, tmp_path, "1001", "1002", "udp", final_and_ack(503), register=False))
    await eventually(lambda: router.asked)
    await pbx.stopService()
    result = await calling
    assert result.ok, result.explain()
    rows = sqlite3.connect(tmp_path / "data" / "pbxd.sqlite3").execute(
        "SELECT disposition, sip_status, hangup_cause, hangup_side FROM cdrs").fetchall()
    assert rows == [("failed", 503, "system_shutdown", "system")]


@pytest_twisted.ensureDeferred
async def test_the_cdr_of_a_routed_call_starts_when_its_invite_came(routed, tmp_path: Path) -> None:
    pbx, router = await routed(timeout=3)
    router.answer = {"action": "reject", "status": 486}
    router.delay = 0.5
    result = await caller(pbx, tmp_path, "1001", "1002", "udp", final_and_ack(486), register=False)
    assert result.ok, result.explain()
    [cdr] = await cdrs(pbx)
    assert cdr.end_time - cdr.start_time >= 0.5
    await drained(pbx)


@pytest_twisted.ensureDeferred
async def test_a_slow_router_holds_up_only_its_own_call(routed, tmp_path: Path) -> None:
    """While the router takes 1.5 s over one call, another call is routed and answered:
    the webhook does not block the reactor."""
    pbx, router = await routed(timeout=3)
    router.answer = {"action": "reject", "status": 486}
    router.delays = [1.5]
    finished: dict[str, float] = {}

    async def call(name: str) -> None:
        result = await caller(pbx, tmp_path, "1001", "1002", "udp", final_and_ack(486), register=False, name=name)
        assert result.ok, result.explain()
        finished[name] = reactor.seconds()

    slow = defer.Deferred.fromCoroutine(call("slow"))
    await eventually(lambda: router.asked)
    await call("quick")
    assert "slow" not in finished
    await slow
    assert finished["slow"] - finished["quick"] > 0.5
    await drained(pbx)
