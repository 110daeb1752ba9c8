"""Session timers (RFC 4028): header parsing, negotiation on both sides, and the running timer."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock

from pbxd.sip.errors import SipParseError
from pbxd.sip.message import Request, Response, make_response, parse_message
from pbxd.sip.session_timer import (
    IntervalTooSmall,
    Negotiated,
    Refresher,
    SessionExpires,
    SessionTimer,
    TimerPolicy,
    interval_after_422,
    negotiate_as_uac,
    negotiate_as_uas,
    parse_min_se,
    request_headers,
)


def invite(*headers: str) -> Request:
    lines = [
        "INVITE sip:bob@pbx.example.com SIP/2.0",
        "Via: SIP/2.0/UDP 192.0.2.10;branch=z9hG4bK-st",
        "Max-Forwards: 70",
        "From: <sip:alice@example.com>;tag=a",
        "To: <sip:bob@pbx.example.com>",
        "Call-ID: st-1",
        "CSeq: 1 INVITE",
        "Contact: <sip:alice@192.0.2.10>",
        *headers,
        "Content-Length: 0",
    ]
    request = parse_message(("\r\n".join(lines) + "\r\n\r\n").encode())
    assert isinstance(request, Request)
    return request


def ok(*headers: tuple[str, str]) -> Response:
    response = make_response(invite(), 200)
    for name, value in headers:
        response.add(name, value)
    return response


# -- headers -----------------------------------------------------------------------------------------


def test_session_expires_parse_and_format():
    assert SessionExpires.parse("1800") == SessionExpires(1800)
    assert SessionExpires.parse("4000;refresher=uac") == SessionExpires(4000, Refresher.UAC)
    assert SessionExpires.parse(" 90 ; Refresher = UAS ;x=y") == SessionExpires(90, Refresher.UAS)
    assert str(SessionExpires(4000, Refresher.UAS)) == "4000;refresher=uas"
    assert str(SessionExpires(1800)) == "1800"
    assert parse_min_se("90") == 90 and parse_min_se("600;x") == 600


@pytest.mark.parametrize("value", ["", "abc", "-5", "1.5", "99999999999", "1800;refresher=proxy", "1800;refresher",
                                   "1800;;", "１８００"])
def test_malformed_session_expires(value):
    with pytest.raises(SipParseError) as caught:
        SessionExpires.parse(value)
    assert caught.value.status == 400


@pytest.mark.parametrize("value", ["", "x", "90;=", "-90"])
def test_malformed_min_se(value):
    with pytest.raises(SipParseError):
        parse_min_se(value)


def test_policy_limits():
    with pytest.raises(ValueError):
        TimerPolicy(min_se=60)  # §5: never below 90
    with pytest.raises(ValueError):
        TimerPolicy(interval=120, min_se=300)
    assert TimerPolicy() == TimerPolicy(1800, 90, True)


# -- negotiation as UAS (§9) ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers,policy,expected",
    [
        # No support, no request: pbxd refreshes alone, and says nothing in Require.
        ((), TimerPolicy(), Negotiated(1800, Refresher.UAS, we_refresh=True)),
        ((), TimerPolicy(enforce=False), None),
        # Support without a request: pbxd may ask, and the UAC refreshes.
        (("Supported: timer",), TimerPolicy(), Negotiated(1800, Refresher.UAC, False, True)),
        (("Supported: timer", "Min-SE: 3600"), TimerPolicy(), Negotiated(3600, Refresher.UAC, False, True)),
        # A request within range is taken as it is.
        (("Supported: 100rel, timer", "Session-Expires: 600"), TimerPolicy(enforce=False),
         Negotiated(600, Refresher.UAC, False, True)),
        (("k: timer", "x: 600;refresher=uas"), TimerPolicy(), Negotiated(600, Refresher.UAS, True, True)),
        (("Supported: timer", "Session-Expires: 600;refresher=uac"), TimerPolicy(),
         Negotiated(600, Refresher.UAC, False, True)),
        # Too long: lowered to ours, but never below the request's Min-SE.
        (("Supported: timer", "Session-Expires: 7200"), TimerPolicy(), Negotiated(1800, Refresher.UAC, False, True)),
        (("Supported: timer", "Session-Expires: 7200", "Min-SE: 3600"), TimerPolicy(),
         Negotiated(3600, Refresher.UAC, False, True)),
        # Too short, from a UAC that supports timers: 422 with our minimum.
        (("Supported: timer", "Session-Expires: 60"), TimerPolicy(), IntervalTooSmall(90)),
        (("Supported: timer", "Session-Expires: 200"), TimerPolicy(min_se=300), IntervalTooSmall(300)),
        # A proxy added the request (no Supported: timer): no 422, pbxd refreshes.
        (("Session-Expires: 600;refresher=uac",), TimerPolicy(), Negotiated(600, Refresher.UAS, True)),
        (("Session-Expires: 30",), TimerPolicy(min_se=120), Negotiated(120, Refresher.UAS, True)),
    ],
)
def test_negotiate_as_uas(headers, policy, expected):
    assert negotiate_as_uas(invite(*headers), policy) == expected


def test_uas_answer_headers():
    agreed = negotiate_as_uas(invite("Supported: timer", "Session-Expires: 600"), TimerPolicy())
    assert agreed.response_headers() == [("Session-Expires", "600;refresher=uac"), ("Require", "timer")]
    alone = negotiate_as_uas(invite(), TimerPolicy())
    assert alone.response_headers() == [("Session-Expires", "1800;refresher=uas")]
    too_small = negotiate_as_uas(invite("Supported: timer", "Session-Expires: 60"), TimerPolicy(min_se=600))
    assert too_small.status == 422 and too_small.response_headers() == [("Min-SE", "600")]


@pytest.mark.parametrize("header", ["Session-Expires: soon", "Min-SE: soon", "Session-Expires: 600;refresher=me"])
def test_uas_refuses_malformed_headers_with_400(header):
    with pytest.raises(SipParseError) as caught:
        negotiate_as_uas(invite("Supported: timer", header), TimerPolicy())
    assert caught.value.status == 400


# -- negotiation as UAC (§7) --------------------------------------------------------------------------------


def test_request_headers():
    assert request_headers(1800) == [("Supported", "timer"), ("Session-Expires", "1800"), ("Min-SE", "90")]
    assert request_headers(600, 300, Refresher.UAC)[1] == ("Session-Expires", "600;refresher=uac")


def test_negotiate_as_uac():
    policy = TimerPolicy()
    assert negotiate_as_uac(ok(("Session-Expires", "900;refresher=uac")), policy) == \
        Negotiated(900, Refresher.UAC, we_refresh=True)
    assert negotiate_as_uac(ok(("Session-Expires", "900;refresher=uas")), policy) == \
        Negotiated(900, Refresher.UAS, we_refresh=False)
    assert negotiate_as_uac(ok(("Session-Expires", "900")), policy).we_refresh
    assert negotiate_as_uac(ok(("Session-Expires", "5;refresher=uas")), policy).interval == 90
    # No Session-Expires: the peer runs no timer; pbxd may run one alone.
    assert negotiate_as_uac(ok(), policy) == Negotiated(1800, Refresher.UAC, we_refresh=True)
    assert negotiate_as_uac(ok(), TimerPolicy(enforce=False)) is None
    with pytest.raises(SipParseError) as caught:
        negotiate_as_uac(ok(("Session-Expires", "never")), policy)
    assert caught.value.status is None


def test_retry_after_422():
    rejected = make_response(invite(), 422)
    rejected.set("Min-SE", "1200")
    assert interval_after_422(rejected, 600) == 1200
    assert interval_after_422(rejected, 1200) is None  # asking again would fail again
    rejected.remove("Min-SE")
    with pytest.raises(SipParseError) as caught:
        interval_after_422(rejected, 600)
    assert caught.value.status is None
    rejected.set("Min-SE", "bad")
    with pytest.raises(SipParseError):
        interval_after_422(rejected, 600)


POLICIES = st.builds(
    lambda a, b, enforce: TimerPolicy(max(a, b), min(a, b), enforce),
    st.integers(90, 7200), st.integers(90, 7200), st.booleans(),
)


@settings(max_examples=300)
@given(POLICIES, POLICIES, st.booleans(), st.sampled_from([None, Refresher.UAC, Refresher.UAS]))
def test_both_sides_agree_and_exactly_one_refreshes(caller, callee, uac_supports, asked_refresher):
    """A UAC and a UAS built from these functions end up with one interval and one refresher."""
    interval = caller.interval
    for _ in range(3):  # the first INVITE and at most a couple of 422 retries
        headers = [f"{n}: {v}" for n, v in request_headers(interval, caller.min_se, asked_refresher)]
        if not uac_supports:
            headers = [h for h in headers if not h.startswith("Supported")]
        request = invite(*headers)
        answer = negotiate_as_uas(request, callee)
        if not isinstance(answer, IntervalTooSmall):
            break
        rejected = make_response(request, 422)
        rejected.set("Min-SE", str(answer.min_se))
        retry = interval_after_422(rejected, interval)
        assert retry is not None and retry > interval
        interval = retry
    assert isinstance(answer, Negotiated)
    assert caller.min_se <= answer.interval or not uac_supports  # never below what the UAC allowed
    assert answer.interval >= callee.min_se
    response = make_response(request, 200)
    for name, value in answer.response_headers():
        response.add(name, value)
    uac_view = negotiate_as_uac(response, caller)
    assert uac_view.interval == answer.interval
    assert uac_view.we_refresh != answer.we_refresh
    assert ("Require", "timer") in answer.response_headers() or answer.refresher is Refresher.UAS


# -- the running timer (§10) --------------------------------------------------------------------------------------


class Recorder:
    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.events: list[tuple[str, float]] = []

    def refresh(self) -> None:
        self.events.append(("refresh", self.clock.seconds()))

    def expire(self) -> None:
        self.events.append(("expire", self.clock.seconds()))


def run(clock: Clock, seconds: float) -> None:
    clock.pump([0.5] * int(seconds / 0.5))


def test_refresher_refreshes_at_half_and_expires_without_success():
    clock = Clock()
    seen = Recorder(clock)
    timer = SessionTimer(clock, 1800, True, seen.refresh, seen.expire)
    run(clock, 2000)
    # Refresh at 900; nothing succeeded, so the session ends at 1800 - 32.
    assert seen.events == [("refresh", 900.0), ("expire", 1768.0)]
    assert not timer.running and clock.getDelayedCalls() == []


def test_refreshes_keep_the_session_alive():
    clock = Clock()
    seen = Recorder(clock)
    timer = SessionTimer(clock, 90, True, seen.refresh, seen.expire)
    for _ in range(5):
        run(clock, 45)
        assert seen.events[-1][0] == "refresh"
        timer.refreshed()
    assert [e for e, _ in seen.events] == ["refresh"] * 5
    assert [t for _, t in seen.events] == [45.0, 90.0, 135.0, 180.0, 225.0]
    timer.stop()
    assert clock.getDelayedCalls() == []


def test_non_refresher_only_waits():
    clock = Clock()
    seen = Recorder(clock)
    timer = SessionTimer(clock, 90, False, seen.refresh, seen.expire)
    run(clock, 50)
    timer.refreshed()  # the peer's re-INVITE came at 50 s
    run(clock, 100)
    # min(32, 90 / 3) = 30: the BYE goes 60 s after the last refresh.
    assert seen.events == [("expire", 110.0)]
    assert clock.getDelayedCalls() == []


def test_refreshed_takes_new_values():
    clock = Clock()
    seen = Recorder(clock)
    timer = SessionTimer(clock, 1800, False, seen.refresh, seen.expire)
    run(clock, 100)
    timer.refreshed(600, True)  # a re-INVITE renegotiated: now we refresh every 300 s
    assert timer.interval == 600 and timer.refresher_is_us and timer.expire_after == 568
    run(clock, 300)
    assert seen.events == [("refresh", 400.0)]
    timer.refreshed(120, False)  # and now the peer does, every 60 s
    run(clock, 200)
    assert seen.events == [("refresh", 400.0), ("expire", 400.0 + 120 - 32)]
    assert clock.getDelayedCalls() == []
    with pytest.raises(ValueError):
        timer.refreshed(0)


def test_stop_leaves_nothing_behind():
    clock = Clock()
    seen = Recorder(clock)
    timer = SessionTimer(clock, 90, True, seen.refresh, seen.expire)
    assert timer.running and len(clock.getDelayedCalls()) == 2
    timer.stop()
    timer.stop()
    assert not timer.running and clock.getDelayedCalls() == []
    run(clock, 200)
    assert seen.events == []


def test_a_callback_may_stop_or_refresh_the_timer():
    clock = Clock()
    timers: list[SessionTimer] = []
    refreshes = []

    def refresh() -> None:
        refreshes.append(clock.seconds())
        timers[0].refreshed()  # the refresh was answered at once

    timers.append(SessionTimer(clock, 100, True, refresh, lambda: timers[0].stop()))
    run(clock, 200)
    assert refreshes == [50.0, 100.0, 150.0, 200.0]
    timers[0].stop()
    assert clock.getDelayedCalls() == []


@settings(max_examples=100)
@given(st.integers(90, 7200), st.booleans(), st.lists(st.sampled_from(["wait", "refreshed", "flip"]), max_size=12))
def test_any_sequence_expires_once_on_time_and_leaves_nothing(interval, ours, steps):
    clock = Clock()
    seen = Recorder(clock)
    timer = SessionTimer(clock, interval, ours, seen.refresh, seen.expire)
    last_refresh = 0.0
    for step in steps:
        if seen.events and seen.events[-1][0] == "expire":
            break
        if step == "wait":
            clock.advance(interval / 4)
        elif step == "flip":
            ours = not ours
            timer.refreshed(refresher_is_us=ours)
            last_refresh = clock.seconds()
        else:
            timer.refreshed()
            last_refresh = clock.seconds()
    deadline = last_refresh + interval - min(32, interval / 3)
    if not seen.events or seen.events[-1][0] != "expire":
        assert max(call.getTime() for call in clock.getDelayedCalls()) == pytest.approx(deadline)
    clock.advance(interval)
    expiries = [t for event, t in seen.events if event == "expire"]
    # advance() runs a call at the time it advanced to, up to a quarter interval late.
    assert len(expiries) == 1 and deadline <= expiries[0] <= deadline + interval
    assert clock.getDelayedCalls() == []
