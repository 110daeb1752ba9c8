"""The brute-force guard: counting, bans, expiry, trusted networks, bounded memory."""

from __future__ import annotations

import ipaddress

import pytest
from twisted.internet.task import Clock
from twisted.logger import LogLevel, globalLogPublisher

from pbxd.registrar.guard import AuthGuard


@pytest.fixture
def clock() -> Clock:
    return Clock()


def fail(guard: AuthGuard, ip: str, user: str | None, times: int) -> None:
    for _ in range(times):
        guard.record_failure(ip, user)


def test_source_is_banned_after_max_failures_for_ban_time(clock: Clock) -> None:
    guard = AuthGuard(clock, max_failures=5, window=60, ban_time=300)
    for n in range(4):
        guard.record_failure("203.0.113.7", f"user{n}")
    assert not guard.is_blocked("203.0.113.7", "someone")
    guard.record_failure("203.0.113.7", "user4")
    assert guard.is_blocked("203.0.113.7", "someone")
    assert guard.is_blocked("203.0.113.7", None)
    assert not guard.is_blocked("203.0.113.8", "someone")
    assert (guard.failures_total, guard.bans_total, guard.bans_active) == (5, 1, 1)
    clock.pump([60] * 4 + [59])
    assert guard.is_blocked("203.0.113.7", None)
    clock.advance(1)
    assert not guard.is_blocked("203.0.113.7", None)
    assert guard.bans_active == 0 and guard.bans_total == 1


def test_a_source_ban_is_told_to_the_listeners_a_user_ban_is_not(clock: Clock) -> None:
    guard = AuthGuard(clock, max_failures=2, ban_time=120, trusted=["192.0.2.0/24"])
    told: list[tuple[str, float]] = []
    guard.source_ban_listeners.append(lambda address, ban_time: told.append((address, ban_time)))
    guard.record_failure("203.0.113.7", "a")
    assert told == []
    guard.record_failure("203.0.113.7", "b")
    assert told == [("203.0.113.7", 120)]
    guard.record_failure("203.0.113.7", "c")  # already banned: not told again
    for n in range(2):
        guard.record_failure("192.0.2.5", "victim")  # trusted source: only the user is banned
    assert guard.is_blocked("198.51.100.1", "victim")
    assert told == [("203.0.113.7", 120)]


def test_user_is_banned_whatever_the_source(clock: Clock) -> None:
    guard = AuthGuard(clock, max_failures=3)
    for n in range(3):
        guard.record_failure(f"198.51.100.{n}", "100")
    assert guard.is_blocked("192.0.2.1", "100")
    assert not guard.is_blocked("192.0.2.1", "101")
    assert not guard.is_blocked("198.51.100.0", "101")  # two sources each failed once


def test_failures_outside_the_window_do_not_count(clock: Clock) -> None:
    guard = AuthGuard(clock, max_failures=3, window=10)
    for _ in range(10):
        fail(guard, "192.0.2.5", "100", 2)
        clock.pump([5, 5, 1])
    assert not guard.is_blocked("192.0.2.5", "100")
    assert guard.tracked == 0
    # Sliding, not fixed: two late in one window and one early in the next ban.
    fail(guard, "192.0.2.5", "100", 2)
    clock.advance(9)
    guard.record_failure("192.0.2.5", "100")
    assert guard.is_blocked("192.0.2.5", "100")


def test_success_forgets_the_user_but_not_the_source(clock: Clock) -> None:
    guard = AuthGuard(clock, max_failures=3)
    fail(guard, "192.0.2.5", "100", 2)
    guard.record_success("192.0.2.5", "100")
    guard.record_failure("192.0.2.9", "100")
    assert not guard.is_blocked("192.0.2.9", "100")
    # The source still has two failures: one more (for any user) bans it.
    guard.record_failure("192.0.2.5", "101")
    assert guard.is_blocked("192.0.2.5", None)
    guard.record_success("192.0.2.5", None)  # no user: nothing to forget


def test_trusted_networks_are_never_banned_by_address(clock: Clock) -> None:
    trusted = ["10.0.0.0/8", ipaddress.ip_network("fd00::/8"), "192.0.2.1"]
    guard = AuthGuard(clock, max_failures=2, trusted=trusted)
    fail(guard, "10.1.2.3", None, 10)
    fail(guard, "fd00::1", None, 10)
    fail(guard, "::ffff:10.9.9.9", None, 10)
    fail(guard, "192.0.2.1", None, 10)
    for ip in ("10.1.2.3", "fd00::1", "::ffff:10.9.9.9", "192.0.2.1"):
        assert not guard.is_blocked(ip, None)
    assert guard.bans_total == 0 and guard.tracked == 0
    # ... but failures from them still count against the user.
    fail(guard, "10.1.2.3", "100", 2)
    assert guard.is_blocked("10.1.2.3", "100")
    assert guard.is_blocked("203.0.113.1", "100")
    fail(guard, "192.0.2.2", None, 2)
    assert guard.is_blocked("192.0.2.2", None)


def test_ipv6_sources_count_per_prefix_and_mapped_ipv4_as_ipv4(clock: Clock) -> None:
    guard = AuthGuard(clock, max_failures=3)
    for host in range(3):
        guard.record_failure(f"2001:db8:1:2::{host + 1}", None)
    assert guard.is_blocked("2001:db8:1:2:ffff::9", None)
    assert guard.is_blocked("[2001:db8:1:2::77]", None)
    assert not guard.is_blocked("2001:db8:1:3::1", None)
    fail(guard, "::ffff:192.0.2.44", None, 3)
    assert guard.is_blocked("192.0.2.44", None)
    per_host = AuthGuard(clock, max_failures=3, ipv6_prefix=128)
    for host in range(3):
        per_host.record_failure(f"2001:db8::{host + 1}", None)
    assert not per_host.is_blocked("2001:db8::1", None)


def test_non_address_sources_are_counted_as_written(clock: Clock) -> None:
    guard = AuthGuard(clock, max_failures=2)
    fail(guard, "not-an-ip", None, 2)
    assert guard.is_blocked("not-an-ip", None)


def test_ban_is_logged(clock: Clock) -> None:
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    try:
        guard = AuthGuard(clock, max_failures=2, ban_time=120)
        fail(guard, "203.0.113.9", "100", 2)
    finally:
        globalLogPublisher.removeObserver(events.append)
    bans = [e for e in events if e.get("log_namespace") == "pbxd.registrar.guard"]
    assert {(e["kind"], e["subject"]) for e in bans} == {("ip", "203.0.113.9"), ("user", "100")}
    assert all(e["log_level"] is LogLevel.warn and e["ban_time"] == 120 for e in bans)


def test_failures_during_a_ban_do_not_extend_it(clock: Clock) -> None:
    guard = AuthGuard(clock, max_failures=2, ban_time=100)
    fail(guard, "203.0.113.9", None, 2)
    clock.pump([50, 40])
    fail(guard, "203.0.113.9", None, 5)
    clock.advance(10)
    assert not guard.is_blocked("203.0.113.9", None)
    assert guard.bans_total == 1


def test_memory_stays_bounded_under_a_flood_from_many_sources(clock: Clock) -> None:
    guard = AuthGuard(clock, max_failures=5, window=60, ban_time=300, max_entries=2000)
    peak = 0
    source = 0
    for _ in range(120):  # two minutes, 500 fresh sources per second, each failing once
        for _ in range(500):
            source += 1
            guard.record_failure(str(ipaddress.IPv4Address(0x0A000000 + source)), None)
        peak = max(peak, guard.tracked)
        clock.advance(1)
    assert peak <= 2000
    assert guard.failures_total == 60_000 and guard.bans_total == 0
    clock.pump([30] * 3)
    assert guard.tracked == 0


def test_bans_are_capped_too(clock: Clock) -> None:
    guard = AuthGuard(clock, max_failures=1, window=60, ban_time=3600, max_entries=100)
    for n in range(5000):
        guard.record_failure(str(ipaddress.IPv4Address(0xC6336400 + n)), None)
        if n % 100 == 0:
            clock.advance(0.1)
    assert guard.bans_active == 100 and guard.bans_total == 5000
    assert guard.is_blocked(str(ipaddress.IPv4Address(0xC6336400 + 4999)), None)
    assert not guard.is_blocked(str(ipaddress.IPv4Address(0xC6336400)), None)  # the earliest gave way
    assert guard.tracked <= 200


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_failures": 0},
        {"window": 0},
        {"ban_time": -1},
        {"max_entries": 0},
        {"ipv6_prefix": 0},
        {"trusted": ["10.0.0.0/33"]},
    ],
)
def test_bad_settings_are_refused(clock: Clock, kwargs: dict) -> None:
    with pytest.raises(ValueError):
        AuthGuard(clock, **kwargs)


def test_source_keys_are_remembered_and_the_memo_stays_bounded(clock: Clock) -> None:
    guard = AuthGuard(clock, max_failures=2, trusted=["10.0.0.0/8"])
    for _ in range(2):  # the second time each answer comes from the memo
        assert guard._source("10.1.2.3") is None  # trusted
        assert guard._source("::ffff:10.1.2.3") is None  # IPv4-mapped: still trusted
        assert guard._source("[2001:db8::1]") == "2001:db8::/64"
        assert guard._source("2001:db8::2") == "2001:db8::/64"
        assert guard._source("not-an-address") == "not-an-address"
    fail(guard, "2001:db8::1", None, 1)
    fail(guard, "2001:db8::9", None, 1)  # the same /64, through the memo
    assert guard.is_blocked("2001:db8::5", None)
    fail(guard, "10.1.2.3", None, 5)
    assert not guard.is_blocked("10.1.2.3", None)
    for n in range(10_000):
        guard._source(str(ipaddress.IPv4Address(0xC6336400 + n)))
    assert len(guard._sources) <= 4096
