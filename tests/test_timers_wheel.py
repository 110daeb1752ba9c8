"""The transaction layer's timer wheel (pbxd.sip.wheel), stepped through a task.Clock."""

from __future__ import annotations

import random
import pytest
from twisted.internet.task import Clock
from twisted.logger import LogEvent, globalLogPublisher

from pbxd.sip.wheel import Timer, TimerWheel


class Recorder:
    """Callbacks that note when (clock time) and with what they were called."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.calls: list[tuple[float, object]] = []

    def __call__(self, argument: object) -> None:
        self.calls.append((self.clock.seconds(), argument))

    def arguments(self) -> list[object]:
        return [argument for _, argument in self.calls]


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def wheel(clock: Clock) -> TimerWheel:
    return TimerWheel(clock)


def run_until(clock: Clock, when: float) -> None:
    """Advance to ``when``, stopping at every reactor call on the way (as the reactor would)."""
    while clock.getDelayedCalls() and min(c.getTime() for c in clock.getDelayedCalls()) <= when:
        clock.advance(max(0.0, min(c.getTime() for c in clock.getDelayedCalls()) - clock.seconds()))
    clock.advance(max(0.0, when - clock.seconds()))


def test_a_timer_fires_at_its_deadline_rounded_up_to_10_ms(clock: Clock, wheel: TimerWheel) -> None:
    fired = Recorder(clock)
    wheel.call_later(0.123, fired, "a")
    clock.advance(0.129)
    assert fired.calls == []  # never early
    clock.advance(0.001)
    assert fired.calls == [(pytest.approx(0.13), "a")]


def test_a_deadline_on_a_tick_is_not_pushed_to_the_next_one_by_float_noise(
    clock: Clock, wheel: TimerWheel
) -> None:
    fired = Recorder(clock)
    clock.advance(0.1)
    clock.advance(0.2)  # 0.30000000000000004
    wheel.call_later(1.2, fired, "a")
    [call] = clock.getDelayedCalls()
    assert call.getTime() == pytest.approx(1.5)
    clock.advance(call.getTime() - clock.seconds())
    assert fired.arguments() == ["a"]


def test_timers_fire_in_deadline_order_and_in_start_order_within_a_tick(
    clock: Clock, wheel: TimerWheel
) -> None:
    fired = Recorder(clock)
    wheel.call_later(3.0, fired, "late")
    wheel.call_later(1.001, fired, "tick 101, first")
    wheel.call_later(0.5, fired, "early")
    wheel.call_later(1.009, fired, "tick 101, second")
    wheel.call_later(1.0, fired, "tick 100")
    run_until(clock, 5)
    assert fired.calls == [
        (0.5, "early"),
        (1.0, "tick 100"),
        (pytest.approx(1.01), "tick 101, first"),
        (pytest.approx(1.01), "tick 101, second"),
        (3.0, "late"),
    ]


def test_only_the_earliest_tick_has_a_reactor_call(clock: Clock, wheel: TimerWheel) -> None:
    fired = Recorder(clock)
    wheel.call_later(10, fired, "a")
    wheel.call_later(20, fired, "b")
    [call] = clock.getDelayedCalls()
    assert call.getTime() == 10
    wheel.call_later(2, fired, "earlier")  # moves the reactor call forward
    [call] = clock.getDelayedCalls()
    assert call.getTime() == 2
    clock.advance(2)
    [call] = clock.getDelayedCalls()
    assert call.getTime() == 10


def test_a_cancelled_timer_does_not_fire_and_lets_go_of_its_argument(
    clock: Clock, wheel: TimerWheel
) -> None:
    fired = Recorder(clock)
    keep = wheel.call_later(1, fired, "kept")
    dropped = wheel.call_later(1, fired, "dropped")
    assert len(wheel) == 2 and dropped.pending
    wheel.cancel(dropped)
    assert not dropped.pending and dropped.argument is None
    assert len(wheel) == 1
    run_until(clock, 2)
    assert fired.arguments() == ["kept"]
    assert not keep.pending


def test_cancelling_twice_after_firing_or_none_is_harmless(clock: Clock, wheel: TimerWheel) -> None:
    fired = Recorder(clock)
    timer = wheel.call_later(1, fired, "a")
    other = wheel.call_later(5, fired, "b")
    run_until(clock, 1)
    wheel.cancel(timer)  # already fired
    wheel.cancel(None)
    assert len(wheel) == 1
    wheel.cancel(other)
    wheel.cancel(other)
    assert len(wheel) == 0
    assert clock.getDelayedCalls() == []


def test_cancelling_the_last_timer_stops_the_tick(clock: Clock, wheel: TimerWheel) -> None:
    fired = Recorder(clock)
    timers = [wheel.call_later(delay, fired, delay) for delay in (0.5, 1, 32)]
    for timer in timers:
        wheel.cancel(timer)
    assert clock.getDelayedCalls() == []  # an idle daemon is not woken up
    run_until(clock, 40)
    assert fired.calls == []


def test_the_tick_stops_once_the_last_timer_fired(clock: Clock, wheel: TimerWheel) -> None:
    fired = Recorder(clock)
    wheel.call_later(0.5, fired, "a")
    cancelled = wheel.call_later(32, fired, "b")
    run_until(clock, 0.5)
    wheel.cancel(cancelled)
    assert clock.getDelayedCalls() == []
    # The wheel starts again when needed.
    wheel.call_later(1, fired, "c")
    run_until(clock, 2)
    assert fired.arguments() == ["a", "c"]
    assert clock.getDelayedCalls() == []


def test_a_callback_can_re_arm_itself(clock: Clock, wheel: TimerWheel) -> None:
    # Timer A: T1, 2*T1, 4*T1 ... while a later timeout (Timer B) waits.
    times: list[float] = []
    interval = [0.5]

    def retransmit(_: object) -> None:
        times.append(clock.seconds())
        interval[0] *= 2
        wheel.call_later(interval[0], retransmit, None)

    wheel.call_later(0.5, retransmit, None)
    timeout = Recorder(clock)
    wheel.call_later(32, timeout, "B")
    run_until(clock, 32)
    assert times == [0.5, 1.5, 3.5, 7.5, 15.5, 31.5]
    assert timeout.calls == [(32, "B")]  # re-arming past it did not push it back


def test_a_timer_started_for_now_runs_on_a_later_reactor_call_not_inside_the_firing_one(
    clock: Clock, wheel: TimerWheel
) -> None:
    order: list[str] = []
    reactor_calls: list[object] = []

    def first(_: object) -> None:
        order.append("first")
        reactor_calls.extend(clock.getDelayedCalls())
        wheel.call_later(0, lambda _: order.append("started by first"), None)

    wheel.call_later(1, first, None)
    wheel.call_later(1, lambda _: order.append("second"), None)
    clock.advance(1)  # task.Clock also runs the calls that became due while advancing
    assert order == ["first", "second", "started by first"]
    assert reactor_calls == []  # the firing call is done; the next one was made after "second"
    assert clock.getDelayedCalls() == []


def test_a_callback_can_cancel_a_timer_due_in_the_same_turn(
    clock: Clock, wheel: TimerWheel
) -> None:
    fired = Recorder(clock)
    victims: list[Timer] = []
    wheel.call_later(1, lambda _: wheel.cancel(victims[0]), None)
    victims.append(wheel.call_later(1, fired, "same tick, started after"))
    wheel.call_later(0.99, lambda _: wheel.cancel(victims[1]), None)
    victims.append(wheel.call_later(1.5, fired, "a later tick, due in the same late turn"))
    wheel.call_later(1.5, fired, "kept")
    clock.advance(2)  # a late reactor: every tick up to 2 s fires in one turn
    assert fired.arguments() == ["kept"]
    assert clock.getDelayedCalls() == []


def test_a_callback_cancelling_its_bucket_mate_and_starting_another(
    clock: Clock, wheel: TimerWheel
) -> None:
    fired = Recorder(clock)
    timers: dict[str, Timer] = {}

    def end(_: object) -> None:
        wheel.cancel(timers["mate"])  # the last pending timer: the wheel goes idle ...
        timers["new"] = wheel.call_later(2, fired, "new")  # ... and wakes up again

    wheel.call_later(1, end, None)
    timers["mate"] = wheel.call_later(1, fired, "mate")
    clock.advance(1)
    assert fired.calls == []
    assert [c.getTime() for c in clock.getDelayedCalls()] == [3]
    clock.advance(2)
    assert fired.calls == [(3, "new")]


def test_a_failing_callback_is_logged_and_the_others_still_fire(
    clock: Clock, wheel: TimerWheel
) -> None:
    fired = Recorder(clock)
    events: list[LogEvent] = []
    globalLogPublisher.addObserver(events.append)
    try:
        wheel.call_later(1, lambda _: 1 / 0, None)
        wheel.call_later(1, fired, "after")
        wheel.call_later(2, fired, "later")
        run_until(clock, 3)
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert fired.arguments() == ["after", "later"]
    assert [e["log_failure"].type for e in events if "log_failure" in e] == [ZeroDivisionError]


def test_many_timers_fire_once_each_in_order_on_one_reactor_call(
    clock: Clock, wheel: TimerWheel
) -> None:
    rng = random.Random(8)
    deadlines: dict[int, float] = {}
    fired: list[tuple[float, int]] = []
    timers: list[Timer] = []
    for number in range(20_000):
        delay = rng.uniform(0, 64)
        deadlines[number] = delay
        timers.append(wheel.call_later(delay, lambda n: fired.append((clock.seconds(), n)), number))
    cancelled = set(rng.sample(range(20_000), 5_000))
    for number in cancelled:
        wheel.cancel(timers[number])
    assert len(wheel) == 15_000
    assert len(clock.getDelayedCalls()) == 1
    steps = 0
    while clock.getDelayedCalls():
        [call] = clock.getDelayedCalls()
        clock.advance(call.getTime() - clock.seconds())
        steps += 1
    assert steps <= 6_400  # one turn per 10 ms tick at most
    assert sorted(n for _, n in fired) == sorted(set(range(20_000)) - cancelled)
    assert [at for at, _ in fired] == sorted(at for at, _ in fired)
    for at, number in fired:
        assert deadlines[number] - 1e-9 <= at < deadlines[number] + 0.01 + 1e-9
    assert len(wheel) == 0


@pytest.mark.parametrize("ticks", [0, -100])
def test_the_resolution_must_be_positive(clock: Clock, ticks: int) -> None:
    with pytest.raises(ValueError):
        TimerWheel(clock, ticks)


def test_a_coarser_resolution_rounds_up_to_its_tick(clock: Clock) -> None:
    wheel = TimerWheel(clock, ticks_per_second=10)
    fired = Recorder(clock)
    wheel.call_later(0.01, fired, "a")
    [call] = clock.getDelayedCalls()
    assert call.getTime() == pytest.approx(0.1)

