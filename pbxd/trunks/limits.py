"""Per-trunk call limits: concurrent calls and new calls per second.

:meth:`TrunkLimits.acquire` is asked before a call goes out over (or comes in
from) a trunk. It gives a :class:`Permit` to release when the call ends, or a
:class:`Refusal` whose ``retry_after`` the call layer puts in the
``Retry-After`` of its 503 (RFC 3261 §21.5.4, §20.33).

Calls per second are a token bucket on the injected clock: ``max_cps`` tokens
a second flow in, the bucket holds one second's worth (at least one token), so
a trunk allowed 5 CPS may take 5 calls at once and then one every 200 ms.
A call refused for the count of concurrent calls is told to come back after
``BUSY_RETRY_AFTER`` seconds: nobody knows when a call will end.
"""

from __future__ import annotations

import math

import attrs
from twisted.internet.interfaces import IReactorTime

BUSY_RETRY_AFTER = 10


@attrs.frozen
class Refusal:
    """No call now: ``reason`` for logs and CDRs, ``retry_after`` whole seconds (≥ 1)."""

    reason: str
    retry_after: int


class Permit:
    """One call's share of a trunk; :meth:`release` (once or more) gives it back."""

    def __init__(self, limits: TrunkLimits) -> None:
        self._limits: TrunkLimits | None = limits

    @property
    def released(self) -> bool:
        return self._limits is None

    def release(self) -> None:
        limits, self._limits = self._limits, None
        if limits is not None:
            limits._release()


class TrunkLimits:
    """``max_calls`` concurrent calls and ``max_cps`` new calls a second (0: no limit)."""

    def __init__(self, clock: IReactorTime, max_calls: int = 0, max_cps: float = 0.0) -> None:
        if max_calls < 0 or max_cps < 0:
            raise ValueError("limits must be 0 (none) or more")
        self.clock = clock
        self.max_calls = max_calls
        self.max_cps = max_cps
        self.capacity = max(1.0, max_cps)
        self.active = 0
        self.refused = 0
        self._tokens = self.capacity
        self._filled_at = clock.seconds()

    def _fill(self) -> None:
        now = self.clock.seconds()
        self._tokens = min(self.capacity, self._tokens + (now - self._filled_at) * self.max_cps)
        self._filled_at = now

    def acquire(self) -> Permit | Refusal:
        if self.max_calls and self.active >= self.max_calls:
            self.refused += 1
            return Refusal(f"max_calls {self.max_calls} reached", BUSY_RETRY_AFTER)
        if self.max_cps:
            self._fill()
            if self._tokens < 1.0:
                self.refused += 1
                wait = (1.0 - self._tokens) / self.max_cps
                return Refusal(f"max_cps {self.max_cps:g} reached", max(1, math.ceil(wait)))
            self._tokens -= 1.0
        self.active += 1
        return Permit(self)

    def _release(self) -> None:
        self.active -= 1


__all__ = ["BUSY_RETRY_AFTER", "Permit", "Refusal", "TrunkLimits"]
