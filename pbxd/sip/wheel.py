"""Many cheap timers on one reactor call: the transaction layer's timer wheel (issue 8).

A reactor ``DelayedCall`` per transaction timer costs about a kilobyte and
half a dozen objects the garbage collector walks, and a UDP registrar keeps
thousands of them alive (Timer J holds every non-INVITE server transaction
for 64*T1 = 32 s). Here a timer is one small slotted object in a bucket per
tick, and only the earliest occupied tick has a reactor call.

The buckets live in a dict keyed by tick number with a heap of the occupied
ticks (a "calendar" rather than a fixed ring of slots), so the wheel has no
horizon: Timer C (more than 3 minutes) fits as well as Timer A. When no
timer is pending the reactor call is cancelled, so an idle daemon does not
wake up to turn an empty wheel.

Deadlines are rounded *up* to a tick, so a timer never fires early: Timers
J, H, B and F never shorten the 64*T1 the peer counts on (RFC 3261 §17).
"""

from __future__ import annotations

import heapq
import math
from typing import Any, Callable, TypeVar

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

log = Logger()

_Argument = TypeVar("_Argument")

# 10 ms. The shortest RFC 3261 timer is T1 (500 ms by default, the RTT
# estimate) and its retransmissions; firing them up to 10 ms late is within
# the jitter any UDP peer already sees, and 10 ms is coarse enough that
# timers started in the same burst of traffic share a bucket.
TICKS_PER_SECOND = 100

# Float noise in ``seconds() * ticks``: a deadline of exactly 1.5 s must land
# in tick 150, not 151, so that tests stepping a Clock see the same times.
_SLACK = 1e-6


class Timer:
    """One pending ``function(argument)`` at ``tick``.

    ``function`` is None once it fired or was cancelled.
    """

    __slots__ = ("tick", "function", "argument")

    def __init__(self, tick: int, function: Callable[[Any], object], argument: object) -> None:
        self.tick = tick
        self.function: Callable[[Any], object] | None = function
        self.argument: object = argument

    @property
    def pending(self) -> bool:
        return self.function is not None


class TimerWheel:
    """Timers on an injected clock, ``ticks_per_second`` resolution, driven by one ``callLater``.

    Timers due in the same tick fire in the order they were started. A
    callback may start or cancel any timer, its own included; one started
    for a tick that has already come runs on a later reactor turn, never
    inside the turn that is firing.
    """

    def __init__(self, clock: IReactorTime, ticks_per_second: int = TICKS_PER_SECOND) -> None:
        if ticks_per_second <= 0:
            raise ValueError(f"ticks_per_second must be positive, not {ticks_per_second!r}")
        self.clock = clock
        self.ticks_per_second = ticks_per_second
        self._buckets: dict[int, list[Timer]] = {}
        self._ticks: list[int] = []  # heap: the ticks that have a bucket
        self._pending = 0
        self._call: IDelayedCall | None = None
        self._call_tick = 0  # the tick self._call fires for
        self._firing = False  # in _fire, which schedules the next call once its timers ran

    def __len__(self) -> int:
        """Timers started and neither fired nor cancelled."""
        return self._pending

    def call_later(
        self, delay: float, function: Callable[[_Argument], object], argument: _Argument
    ) -> Timer:
        """Call ``function(argument)`` at least ``delay`` seconds from now, within one tick."""
        tick = math.ceil((self.clock.seconds() + delay) * self.ticks_per_second - _SLACK)
        timer = Timer(tick, function, argument)
        bucket = self._buckets.get(tick)
        if bucket is None:
            self._buckets[tick] = [timer]
            heapq.heappush(self._ticks, tick)
            if not self._firing and (self._call is None or tick < self._call_tick):
                self._schedule(tick)
        else:
            bucket.append(timer)
        self._pending += 1
        return timer

    def cancel(self, timer: Timer | None) -> None:
        """Stop a timer; one that already fired, was cancelled, or None, is ignored."""
        if timer is None or timer.function is None:
            return
        # The timer stays in its bucket until its tick comes (finding it
        # there would cost more than skipping it), but lets go of what it
        # would have called so that a finished transaction can be freed.
        timer.function = timer.argument = None
        self._pending -= 1
        if self._pending == 0:
            self._stop()

    def _schedule(self, tick: int) -> None:
        if self._call is not None:
            # Cancel and call again rather than reset(): task.Clock does not
            # re-sort its calls on reset, and this happens only when a new
            # timer is due before every other one.
            self._call.cancel()
        delay = max(0.0, tick / self.ticks_per_second - self.clock.seconds())
        self._call = self.clock.callLater(delay, self._fire)
        self._call_tick = tick

    def _stop(self) -> None:
        """Nothing pending: forget the cancelled leftovers and stop ticking."""
        self._buckets.clear()
        self._ticks.clear()
        if self._call is not None:
            self._call.cancel()
            self._call = None

    def _fire(self) -> None:
        self._call = None
        # The reactor may be late, and the clock's float arithmetic may put
        # it a hair before the tick it was called for.
        now = math.floor(self.clock.seconds() * self.ticks_per_second + _SLACK)
        now = max(self._call_tick, now)
        ticks, buckets = self._ticks, self._buckets
        due: list[list[Timer]] = []
        while ticks and ticks[0] <= now:
            due.append(buckets.pop(heapq.heappop(ticks)))
        self._firing = True
        try:
            for bucket in due:
                for timer in bucket:
                    function = timer.function
                    if function is None:
                        continue
                    argument = timer.argument
                    timer.function = timer.argument = None
                    self._pending -= 1
                    try:
                        function(argument)
                    except Exception:
                        # As the reactor does for a DelayedCall: log it, and
                        # let the other timers of this tick fire.
                        log.failure("timer {function!r} failed", function=function)
        finally:
            self._firing = False
        if self._pending == 0:
            self._stop()
        else:
            self._schedule(self._ticks[0])
