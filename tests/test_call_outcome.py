"""The pure decisions of the call layer: the best final answer among forks (RFC 3261
§16.7), hangup causes, CDR dispositions, glare back-off (§14.1), direct URI targets."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pbxd.call.call import glare_delay
from pbxd.call.cdr import CallRecord, best_status, build_cdr, cause_for_status, disposition_for
from pbxd.call.manager import CallSettings, uri_destination
from pbxd.call.media import DirectMedia, MediaRequest
from pbxd.transport import Target


@pytest.mark.parametrize(
    ("statuses", "best"),
    [
        ([], 480),  # no contact answered at all (none registered)
        ([486], 486),
        ([408, 486], 486),  # a timeout says least: the busy fork is the answer
        ([487, 404], 404),
        ([408, 487], 408),
        ([486, 603, 404], 603),  # §16.7: a 6xx wins outright
        ([500, 486], 486),  # lowest class
        ([503], 500),  # §16.7: a 503 is not passed on
        ([302, 486], 302),
        ([480, 486], 480),  # within a class, the first informative answer
    ],
)
def test_best_status(statuses: list[int], best: int) -> None:
    assert best_status(statuses) == best


@given(st.lists(st.integers(300, 699), min_size=1, max_size=8))
def test_best_status_is_one_of_the_answers_or_500(statuses: list[int]) -> None:
    best = best_status(statuses)
    assert best in statuses or (best == 500 and 503 in statuses)
    if any(s >= 600 for s in statuses):
        assert best >= 600
    else:
        assert best // 100 == min(s // 100 for s in statuses)


@pytest.mark.parametrize(
    ("answered", "status", "cause", "disposition"),
    [
        (True, 200, "normal_clearing", "answered"),
        (False, 487, "originator_cancel", "cancelled"),
        (False, 486, "user_busy", "busy"),
        (False, 600, "user_busy", "busy"),
        (False, 480, "no_answer", "no_answer"),
        (False, 408, "no_answer", "no_answer"),
        (False, 404, "sip_404", "failed"),
        (False, 503, "system_shutdown", "failed"),
    ],
)
def test_disposition(answered: bool, status: int, cause: str, disposition: str) -> None:
    assert disposition_for(answered, status, cause) == disposition


def test_causes_of_statuses() -> None:
    assert [cause_for_status(s) for s in (486, 480, 408, 487, 603, 404)] == [
        "user_busy", "no_answer", "no_answer", "originator_cancel", "call_rejected", "sip_404"]


def test_cdr_of_an_answered_call() -> None:
    cdr = build_cdr(CallRecord(call_id="c1", from_number="1001", to_number="1002", direction="internal",
                               start_time=100.0, end_time=130.0, answer_time=105.0, status=200,
                               cause="normal_clearing", side="caller"))
    assert (cdr.disposition, cdr.duration, cdr.billsec, cdr.hangup_side) == ("answered", 30.0, 25.0, "caller")


def test_cdr_of_an_unanswered_call_has_no_billsec() -> None:
    cdr = build_cdr(CallRecord(call_id="c2", from_number="1001", to_number="1002", direction="internal",
                               start_time=100.0, end_time=160.0, answer_time=None, status=480,
                               cause="no_answer", side="system"))
    assert (cdr.disposition, cdr.billsec, cdr.answer_time) == ("no_answer", 0.0, None)


def test_glare_delays_follow_section_14_1() -> None:
    rng = random.Random(7)
    owner = [glare_delay(True, rng) for _ in range(200)]
    other = [glare_delay(False, rng) for _ in range(200)]
    assert all(2.1 <= d <= 4.0 for d in owner)
    assert all(0.0 <= d <= 2.0 for d in other)


@pytest.mark.parametrize(
    ("uri", "target"),
    [
        ("sip:bob@192.0.2.7", Target("udp", "192.0.2.7", 5060)),
        ("sip:bob@192.0.2.7:5070;transport=tcp", Target("tcp", "192.0.2.7", 5070)),
        ("sips:bob@[2001:db8::1]", Target("tls", "2001:db8::1", 5061)),
    ],
)
def test_uri_targets_are_reached_directly(uri: str, target: Target) -> None:
    destination = uri_destination(uri, [("X-A", "1")])
    assert destination is not None and destination.target == target and destination.headers == (("X-A", "1"),)


@pytest.mark.parametrize("uri", ["tel:+15551234", "sip:bob@host;transport=sctp", "not a uri", "sip:"])
def test_unusable_uri_targets(uri: str) -> None:
    assert uri_destination(uri, ()) is None


def test_direct_media_passes_descriptions_unchanged() -> None:
    media = DirectMedia()
    sdp = b"v=0\r\n"
    assert media.offer_to(None, sdp) is sdp and media.answer_to(None, sdp) is sdp  # type: ignore[arg-type]
    media.close()
    assert media.closed and media.recording_path is None
    assert MediaRequest.for_decision("c", None) == MediaRequest("c")


def test_session_timers_off_means_no_policy() -> None:
    assert CallSettings(session_timers=False).timer_policy() is None
    policy = CallSettings(session_expires=600, min_se=120).timer_policy()
    assert policy is not None and (policy.interval, policy.min_se) == (600, 120)
