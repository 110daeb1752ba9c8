"""Brute-force protection for digest authentication.

Failed attempts are counted per source address and per user name over a
sliding window; reaching ``max_failures`` bans that address or user for
``ban_time`` seconds. The registrar asks :meth:`AuthGuard.is_blocked` before
verifying credentials and answers 403 while a ban lasts; with ``auth.guard.action:
drop`` pbxd's firewall drops whatever a banned address sends instead (source_ban_listeners).

Memory stays bounded under a flood from many addresses: counters and bans
are kept in insertion order, expired ones are dropped from the front on every
call, and both tables are capped (the stalest counter and the ban that ends
first give way). IPv6 sources are counted per /64 by default, since one host
commonly holds a whole /64 and could otherwise rotate addresses freely.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict, deque
from typing import Callable, Iterable, Union

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]
Key = tuple[str, str]  # ("ip", address or /64 network) or ("user", name)

log = Logger(namespace="pbxd.registrar.guard")

# How many source addresses' keys are remembered (a flood from many
# addresses only empties the memo more often).
_SOURCE_CACHE_SIZE = 4096


class AuthGuard:
    """Counts failed authentications and bans sources and users that fail too often.

    ``user`` arguments may be None when a request carried no user name; then
    only the source counts. Sources in ``trusted`` (CIDR strings or networks)
    are never banned by address; failures from them still count against the
    user they tried.
    """

    def __init__(
        self,
        clock: IReactorTime,
        max_failures: int = 5,
        window: float = 60.0,
        ban_time: float = 300.0,
        trusted: Iterable[str | Network] = (),
        max_entries: int = 100_000,
        ipv6_prefix: int = 64,
    ) -> None:
        if max_failures < 1 or window <= 0 or ban_time <= 0 or max_entries < 1:
            raise ValueError("max_failures, window, ban_time and max_entries must be positive")
        if not 1 <= ipv6_prefix <= 128:
            raise ValueError(f"ipv6_prefix must be between 1 and 128, not {ipv6_prefix}")
        self._clock = clock
        self.max_failures = max_failures
        self.window = window
        self.ban_time = ban_time
        self.trusted: tuple[Network, ...] = tuple(
            ipaddress.ip_network(network, strict=False) for network in trusted
        )
        self.max_entries = max_entries
        self.ipv6_prefix = ipv6_prefix
        # Failure times per key, ordered by the latest failure (stalest first).
        self._failures: OrderedDict[Key, deque[float]] = OrderedDict()
        # Ban end per key, ordered by start; with one ban_time also by end.
        self._bans: OrderedDict[Key, float] = OrderedDict()
        # The key each source address was counted under: parsing an address
        # and matching it against the trusted networks is most of the cost of
        # a check, and phones come back from the same addresses. Emptied when
        # full (it holds only a parse of what it is given).
        self._sources: dict[str, str | None] = {}
        self.failures_total = 0
        self.bans_total = 0
        # Called with (the source address, ban_time) when a source address is
        # banned: pbxd's firewall drops what it sends when auth.guard.action is drop.
        self.source_ban_listeners: list[Callable[[str, float], None]] = []

    # -- metrics ------------------------------------------------------------

    @property
    def bans_active(self) -> int:
        self._expire(self._clock.seconds())
        return len(self._bans)

    @property
    def tracked(self) -> int:
        """Counters and bans held now (what a flood would make grow)."""
        self._expire(self._clock.seconds())
        return len(self._failures) + len(self._bans)

    # -- the guard ----------------------------------------------------------

    def is_blocked(self, ip: str, user: str | None) -> bool:
        self._expire(self._clock.seconds())
        if not self._bans:
            return False  # the usual case: nothing to look up
        return any(key in self._bans for key in self._keys(ip, user))

    def record_failure(self, ip: str, user: str | None) -> None:
        now = self._clock.seconds()
        self._expire(now)
        self.failures_total += 1
        for key in self._keys(ip, user):
            if key in self._bans:
                continue
            times = self._failures.pop(key, None) or deque()
            while times and times[0] <= now - self.window:
                times.popleft()
            times.append(now)
            if len(times) >= self.max_failures:
                self._ban(key, now, len(times))
                if key[0] == "ip":
                    for listener in self.source_ban_listeners:
                        listener(ip, self.ban_time)
            else:
                self._failures[key] = times  # re-inserted last: the freshest
        while len(self._failures) > self.max_entries:
            self._failures.popitem(last=False)

    def record_success(self, ip: str, user: str | None) -> None:
        """Forget the user's failures.

        The source's failures stay: otherwise an attacker holding one valid
        account could interleave successes to guess other users' passwords
        from the same address without ever reaching the limit.
        """
        self._expire(self._clock.seconds())
        if user is not None:
            self._failures.pop(("user", user), None)

    # -- internals ------------------------------------------------------------

    def _keys(self, ip: str, user: str | None) -> list[Key]:
        keys: list[Key] = []
        source = self._source(ip)
        if source is not None:
            keys.append(("ip", source))
        if user is not None:
            keys.append(("user", user))
        return keys

    def _source(self, ip: str) -> str | None:
        """The key a source address is counted under, or None if it is trusted."""
        sources = self._sources
        try:
            return sources[ip]
        except KeyError:
            pass
        if len(sources) >= _SOURCE_CACHE_SIZE:
            sources.clear()
        source = sources[ip] = self._parse_source(ip)
        return source

    def _parse_source(self, ip: str) -> str | None:
        try:
            address = ipaddress.ip_address(ip.strip("[]"))
        except ValueError:
            return ip  # not an address literal: count it as written
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped  # dual-stack sockets report IPv4 peers this way
        if any(address.version == net.version and address in net for net in self.trusted):
            return None
        if isinstance(address, ipaddress.IPv6Address):
            return str(ipaddress.IPv6Network((address, self.ipv6_prefix), strict=False))
        return str(address)

    def _ban(self, key: Key, now: float, failures: int) -> None:
        self._bans[key] = now + self.ban_time
        self.bans_total += 1
        log.warn(
            "banning {kind} {subject} for {ban_time}s after {failures} failed authentications"
            " within {window}s",
            kind=key[0],
            subject=key[1],
            ban_time=self.ban_time,
            failures=failures,
            window=self.window,
        )
        while len(self._bans) > self.max_entries:
            self._bans.popitem(last=False)

    def _expire(self, now: float) -> None:
        failures, bans = self._failures, self._bans
        while failures:
            key, times = next(iter(failures.items()))
            if times[-1] > now - self.window:
                break
            del failures[key]
        while bans:
            key, until = next(iter(bans.items()))
            if until > now:
                break
            del bans[key]
