"""Per-source request-rate limiting with bans, in the manner of Kamailio's pike.

Every datagram, accepted connection and stream message costs its source
address one token. A source's bucket holds ``burst`` tokens and refills at
``requests_per_second``; the request that finds it empty bans the address
for ``ban_time`` seconds, and until the ban ends everything from it is
dropped before it is parsed. One bucket per address: a noisy source empties
only its own.

Memory stays bounded whatever the number of sources: buckets are kept in
least-recently-seen order and a bucket idle long enough to be full again
is the same as no bucket, so stale ones are dropped from the front; both
tables are capped at ``max_tracked`` (the stalest bucket, and the ban that
ends first, give way).
"""

from __future__ import annotations

from collections import OrderedDict

import attrs
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

log = Logger(namespace="pbxd.security.flood")


@attrs.frozen
class FloodLimits:
    """The ``security.flood`` settings."""

    requests_per_second: float = 50.0
    burst: int = 200
    ban_time: float = 300.0
    max_tracked: int = 100_000

    def __attrs_post_init__(self) -> None:
        if self.requests_per_second <= 0 or self.burst < 1 or self.ban_time <= 0 or self.max_tracked < 1:
            raise ValueError("requests_per_second, burst, ban_time and max_tracked must be positive")


@attrs.define
class _Bucket:
    tokens: float
    last: float


class FloodGuard:
    """Token buckets and bans per source address (see the module docstring).

    The caller decides who is exempt (allow list, loopback): an exempt
    source is never passed to :meth:`admit`.
    """

    def __init__(self, clock: IReactorTime, limits: FloodLimits = FloodLimits()) -> None:
        self._clock = clock
        self.limits = limits
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()
        # address -> end, in order of start; bans of other lengths (the auth guard's) may end
        # out of order, and wait behind a longer one to be purged (admit checks the end).
        self._bans: OrderedDict[str, float] = OrderedDict()
        self.bans_total = 0
        self.dropped_total = 0  # requests refused by a ban, the banning one included

    @property
    def tracked(self) -> int:
        """Buckets and bans held now (what a flood from many addresses would grow)."""
        self.purge()
        return len(self._buckets) + len(self._bans)

    @property
    def bans_active(self) -> int:
        self.purge()
        return len(self._bans)

    def banned(self, address: str) -> bool:
        until = self._bans.get(address)
        return until is not None and until > self._clock.seconds()

    def ban(self, address: str, why: str, ban_time: float | None = None) -> None:
        """Ban ``address`` now for ``ban_time`` seconds, by default the flood
        setting's (a blocked User-Agent, an exhausted bucket, the auth guard)."""
        now = self._clock.seconds()
        ban_time = self.limits.ban_time if ban_time is None else ban_time
        self._bans.pop(address, None)
        self._bans[address] = now + ban_time
        self._buckets.pop(address, None)
        self.bans_total += 1
        log.warn("banning {source} for {ban_time}s: {why}", source=address, ban_time=ban_time,
                 why=why, source_ip=address)
        while len(self._bans) > self.limits.max_tracked:
            self._bans.popitem(last=False)

    def admit(self, address: str) -> bool:
        """Take a token for one request from ``address``; False: drop it."""
        now = self._clock.seconds()
        until = self._bans.get(address)
        if until is not None:
            if until > now:
                self.dropped_total += 1
                return False
            del self._bans[address]
        limits = self.limits
        bucket = self._buckets.get(address)
        if bucket is None:
            self.purge(now)
            bucket = self._buckets[address] = _Bucket(float(limits.burst), now)
            if len(self._buckets) > limits.max_tracked:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(address)
            bucket.tokens = min(float(limits.burst), bucket.tokens + (now - bucket.last) * limits.requests_per_second)
            bucket.last = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return True
        self.dropped_total += 1
        self.ban(address, f"over {limits.requests_per_second:g} requests/s (burst {limits.burst})")
        return False

    def purge(self, now: float | None = None) -> None:
        """Forget buckets that have refilled and bans that have ended."""
        if now is None:
            now = self._clock.seconds()
        refill_time = self.limits.burst / self.limits.requests_per_second
        buckets = self._buckets
        while buckets:
            bucket = next(iter(buckets.values()))
            if now - bucket.last < refill_time:
                break
            buckets.popitem(last=False)
        bans = self._bans
        while bans:
            until = next(iter(bans.values()))
            if until > now:
                break
            bans.popitem(last=False)

    def reconfigure(self, limits: FloodLimits) -> None:
        """New limits; buckets and bans in force stay."""
        self.limits = limits
