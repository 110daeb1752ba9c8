"""Per-trunk call limits on a task.Clock: concurrent calls and a CPS token bucket."""

from __future__ import annotations

import pytest
from twisted.internet.task import Clock

from pbxd.trunks.limits import BUSY_RETRY_AFTER, Permit, Refusal, TrunkLimits


def test_no_limits_take_everything() -> None:
    limits = TrunkLimits(Clock())
    permits = [limits.acquire() for _ in range(1000)]
    assert all(isinstance(p, Permit) for p in permits)
    assert limits.active == 1000


def test_max_calls_refuses_until_a_call_ends() -> None:
    limits = TrunkLimits(Clock(), max_calls=2)
    first, second = limits.acquire(), limits.acquire()
    assert isinstance(first, Permit) and isinstance(second, Permit)
    refused = limits.acquire()
    assert refused == Refusal("max_calls 2 reached", BUSY_RETRY_AFTER)
    first.release()
    first.release()  # twice is once
    assert first.released and limits.active == 1
    assert isinstance(limits.acquire(), Permit)
    assert limits.refused == 1


def test_cps_bucket_holds_one_second_and_refills_on_the_clock() -> None:
    clock = Clock()
    limits = TrunkLimits(clock, max_cps=5)
    assert all(isinstance(limits.acquire(), Permit) for _ in range(5))  # a burst of one second's worth
    refused = limits.acquire()
    assert isinstance(refused, Refusal) and refused.retry_after == 1
    clock.pump([0.1])
    assert isinstance(limits.acquire(), Refusal)  # half a token
    clock.pump([0.1])
    assert isinstance(limits.acquire(), Permit)  # 0.2 s = one token
    assert isinstance(limits.acquire(), Refusal)
    clock.pump([0.2] * 50)  # ten seconds: the bucket is full, not fuller
    assert sum(isinstance(limits.acquire(), Permit) for _ in range(20)) == 5


def test_slow_cps_says_how_long_to_wait() -> None:
    clock = Clock()
    limits = TrunkLimits(clock, max_cps=0.1)  # one call every ten seconds
    assert isinstance(limits.acquire(), Permit)
    refused = limits.acquire()
    assert isinstance(refused, Refusal) and refused.retry_after == 10
    clock.pump([1.0] * 4)
    assert limits.acquire() == Refusal("max_cps 0.1 reached", 6)
    clock.pump([1.0] * 6)
    assert isinstance(limits.acquire(), Permit)


def test_both_limits_and_a_cps_refusal_takes_no_call_slot() -> None:
    clock = Clock()
    limits = TrunkLimits(clock, max_calls=10, max_cps=1)
    assert isinstance(limits.acquire(), Permit)
    assert isinstance(limits.acquire(), Refusal)
    assert limits.active == 1


def test_bad_limits() -> None:
    with pytest.raises(ValueError):
        TrunkLimits(Clock(), max_calls=-1)
