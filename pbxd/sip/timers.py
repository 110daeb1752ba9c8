"""Transaction timer values and the named timers a transaction runs (RFC 3261 §17, Table 4).

Time comes from an injected clock (``IReactorTime``: ``callLater`` and
``seconds``) so that tests can step a ``twisted.internet.task.Clock`` through
every deadline.
"""

from __future__ import annotations

from typing import Callable

import attrs
from twisted.internet.interfaces import IDelayedCall, IReactorTime


def _positive(instance: object, attribute: attrs.Attribute, value: float) -> None:
    if not value > 0:
        raise ValueError(f"{attribute.name} must be positive, not {value!r}")


def _not_negative(instance: object, attribute: attrs.Attribute, value: float) -> None:
    if not value >= 0:
        raise ValueError(f"{attribute.name} must not be negative, not {value!r}")


def _timer_c(instance: object, attribute: attrs.Attribute, value: float | None) -> None:
    # §16.6 step 11: Timer C "MUST be set for each client transaction when an
    # INVITE request is proxied" and "MUST be greater than 3 minutes".
    if value is not None and not value > 180:
        raise ValueError(f"timer_c must be more than 180 seconds, not {value!r}")


@attrs.frozen
class TimerSettings:
    """T1, T2, T4 and the timers derived from them (RFC 3261 §17.1.1.1, Table 4).

    ``trying_delay`` is how long an INVITE server transaction waits for the TU
    before it sends 100 Trying itself (§17.2.1). ``timer_c`` is the proxy's
    INVITE guard (§16.6 step 11), off when None. ``timer_d`` is how long an
    INVITE client transaction over UDP stays Completed to re-ACK retransmitted
    final responses (at least 32 s, Table 4).
    """

    t1: float = attrs.field(default=0.5, validator=_positive)
    t2: float = attrs.field(default=4.0, validator=_positive)
    t4: float = attrs.field(default=5.0, validator=_not_negative)
    trying_delay: float = attrs.field(default=0.2, validator=_not_negative)
    timer_c: float | None = attrs.field(default=None, validator=_timer_c)
    timer_d: float = attrs.field(default=32.0, validator=_not_negative)

    def __attrs_post_init__(self) -> None:
        if self.t2 < self.t1:
            raise ValueError(f"t2 ({self.t2}) must not be less than t1 ({self.t1})")

    @property
    def transaction_timeout(self) -> float:
        """64*T1: Timers B, F, H, J, L and M, and the CANCEL guard of §9.1."""
        return 64 * self.t1


class TimerSet:
    """The named timers one transaction runs; starting a name again replaces it.

    A timer that fires is forgotten before its callback runs, so the callback
    may start the same timer again (retransmission timers do).
    """

    __slots__ = ("_clock", "_calls")

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock
        self._calls: dict[str, IDelayedCall] = {}

    def start(self, name: str, delay: float, callback: Callable[[], None]) -> None:
        self.stop(name)
        self._calls[name] = self._clock.callLater(delay, self._fire, name, callback)

    def _fire(self, name: str, callback: Callable[[], None]) -> None:
        del self._calls[name]
        callback()

    def stop(self, name: str) -> None:
        call = self._calls.pop(name, None)
        if call is not None:
            call.cancel()

    def stop_all(self) -> None:
        calls, self._calls = self._calls, {}
        for call in calls.values():
            call.cancel()

    def running(self, name: str) -> bool:
        return name in self._calls
