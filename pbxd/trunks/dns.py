"""Locating SIP servers (RFC 3263 §4) with Twisted's DNS client.

:meth:`Locator.resolve` turns a destination (``sip:carrier.example``,
``sips:carrier.example``, ``sip:gw.example:5070;transport=tcp``, or a bare
host) into the ordered list of :class:`~pbxd.transport.Target` to try, first
to last:

1. Transport (§4.1): a ``transport`` URI parameter or the caller's choice
   wins. Otherwise, for a name without a port, NAPTR records say which
   transports the domain offers and in what order (only services pbxd has,
   ``SIP+D2U``, ``SIP+D2T``, ``SIPS+D2T``; only ``SIPS+D2T`` for a sips: URI).
   With no usable NAPTR, SRV records are looked for UDP, then TCP, then TLS,
   and the first that exist are used. With none of those: UDP (TLS for sips:).
2. Port and address (§4.2): an IP address or an explicit port skips SRV: the
   host's A and AAAA records with that port (5060, 5061 for TLS, by default).
   Otherwise the SRV records are ordered by priority and, among equal
   priorities, by the weighted random choice of RFC 2782, and each target's
   addresses follow in that order. A target ``.`` means "no such service".

Failing over across the returned list is the caller's job (§4.3: on a
timeout, a transport error or a 503, try the next).

Answers are cached by (name, type) for their smallest TTL on the injected
clock, and "no such record" answers for ``negative_ttl``; a lookup that
fails (time-out, server failure) is not cached. Lookups of a question that
is already out wait for its answer instead of asking again (a burst of
calls to one carrier asks once). The resolver is any
``twisted.internet.interfaces.IResolver``; the default is
``twisted.names.client.createResolver()`` (``/etc/resolv.conf``).
"""

from __future__ import annotations

import random
import socket
from collections.abc import Callable, Sequence
from typing import Any

import attrs
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.names import dns
from twisted.names.error import DNSNameError, DNSQueryTimeoutError, DomainError
from twisted.python.failure import Failure

from pbxd.sip.uri import SipURI, parse_uri
from pbxd.transport.target import DEFAULT_PORTS, TRANSPORTS, Target, canonical_host, is_ip_literal

log = Logger()

# NAPTR services (RFC 3263 §4.1) and SRV prefixes (§4.2) per transport.
NAPTR_SERVICES = {"SIP+D2U": "udp", "SIP+D2T": "tcp", "SIPS+D2T": "tls"}
SRV_PREFIXES = {"udp": "_sip._udp", "tcp": "_sip._tcp", "tls": "_sips._tcp"}

NEGATIVE_TTL = 30.0
MAX_TTL = 86400.0


class LocateError(Exception):
    """A destination that has no address at all; the text says why."""


@attrs.frozen
class NaptrRecord:
    order: int
    preference: int
    flags: str
    service: str
    replacement: str
    ttl: int


@attrs.frozen
class SrvRecord:
    priority: int
    weight: int
    port: int
    target: str
    ttl: int


def order_srv(records: Sequence[SrvRecord], rng: random.Random) -> list[SrvRecord]:
    """SRV records in the order to try them (RFC 2782, "Usage rules").

    Lowest priority first. Within a priority, repeatedly: put the records of
    weight 0 first, draw a number between 0 and the sum of the weights, and
    take the first record whose running sum reaches it. Weight-0 records are
    thus taken last unless nothing else remains (or a draw of 0 picks one).
    """
    ordered: list[SrvRecord] = []
    for priority in sorted({record.priority for record in records}):
        remaining = [r for r in records if r.priority == priority]
        while remaining:
            remaining.sort(key=lambda r: r.weight != 0)
            draw = rng.randint(0, sum(r.weight for r in remaining))
            running = 0
            for index, record in enumerate(remaining):
                running += record.weight
                if running >= draw:
                    ordered.append(remaining.pop(index))
                    break
    return ordered


@attrs.frozen
class AddressRecord:
    address: str
    ttl: int


@attrs.frozen
class _Wanted:
    """What to look up: a transport, an SRV name, and the host and port to use
    when there is no SRV name or it has no records."""

    transport: str
    srv: str | None = None
    host: str | None = None
    port: int | None = None


class Locator:
    """RFC 3263 server location with a TTL cache; see the module docstring."""

    def __init__(
        self,
        resolver: Any = None,
        clock: IReactorTime | None = None,
        *,
        rng: random.Random | None = None,
        transports: Sequence[str] = TRANSPORTS,
        negative_ttl: float = NEGATIVE_TTL,
    ) -> None:
        if clock is None:
            from twisted.internet import reactor as clock  # type: ignore[assignment]
        self._resolver = resolver
        self.clock = clock
        self.rng = rng or random.Random()
        self.transports = tuple(t for t in TRANSPORTS if t in transports)
        self.negative_ttl = negative_ttl
        self._cache: dict[tuple[str, int], tuple[float, list[Any]]] = {}
        self._pending: dict[tuple[str, int], list[defer.Deferred[list[Any]]]] = {}

    @property
    def resolver(self) -> Any:
        """The IResolver; the system's (made on first use: it reads /etc/resolv.conf)."""
        if self._resolver is None:
            from twisted.names import client

            self._resolver = client.createResolver()
        return self._resolver

    @resolver.setter
    def resolver(self, resolver: Any) -> None:
        """Use another resolver from now on (the cache is kept)."""
        self._resolver = resolver

    # -- the public lookups ----------------------------------------------------------

    def resolve(self, destination: str, transport: str | None = None) -> defer.Deferred[list[Target]]:
        """The targets for ``destination`` in the order to try them.

        Fails with :class:`LocateError` when nothing resolves, ValueError
        for a destination that is no SIP URI or host.
        """
        return defer.Deferred.fromCoroutine(self._resolve(destination, transport))

    def lookup_naptr(self, domain: str) -> defer.Deferred[list[NaptrRecord]]:
        """The domain's NAPTR records, by order and preference."""
        return defer.Deferred.fromCoroutine(self._records(domain, dns.NAPTR))

    def lookup_srv(self, name: str) -> defer.Deferred[list[SrvRecord]]:
        """The SRV records of ``name`` (``_sip._udp.example.com``) by priority,
        then weight, heaviest first (for showing; :func:`order_srv` picks)."""
        return defer.Deferred.fromCoroutine(self._records(name, dns.SRV))

    def lookup_addresses(self, host: str) -> defer.Deferred[list[str]]:
        """The IPv4 then IPv6 addresses of ``host`` (an IP literal is its own)."""
        return defer.Deferred.fromCoroutine(self._addresses(host))

    def clear(self) -> None:
        self._cache.clear()

    # -- RFC 3263 --------------------------------------------------------------------

    async def _resolve(self, destination: str, transport: str | None) -> list[Target]:
        uri = parse_destination(destination)
        host = canonical_host(uri.host)
        if transport is not None and transport not in TRANSPORTS:
            raise ValueError(f"unknown transport {transport!r}")
        transport = uri.transport or transport
        if transport is not None and transport not in TRANSPORTS:
            raise LocateError(f"{destination}: transport {transport} is not supported")
        if uri.secure:
            if transport not in (None, "tls", "tcp"):
                raise LocateError(f"{destination}: a sips: URI needs TLS")
            transport = "tls"
        wanted = await self._plan(host, uri.port, transport, uri.secure)
        targets: list[Target] = []
        for want in wanted:
            srvs = [] if want.srv is None else await self._records(want.srv, dns.SRV)
            if any(s.target in ("", ".") for s in srvs):
                continue  # RFC 2782: "." means the service is decidedly not available
            if srvs:
                for srv in order_srv(srvs, self.rng):
                    targets += await self._targets(srv.target, srv.port, want.transport, host)
            elif want.host is not None:
                assert want.port is not None
                targets += await self._targets(want.host, want.port, want.transport, host)
        # One address reached through two SRV records is tried once.
        unique = list(dict.fromkeys(targets))
        if not unique:
            raise LocateError(f"{destination}: no addresses")
        return unique

    async def _plan(self, host: str, port: int | None, transport: str | None, secure: bool) -> list[_Wanted]:
        if is_ip_literal(host) or port is not None:
            chosen = transport or ("tls" if secure else "udp")
            return [_Wanted(chosen, host=host, port=port or DEFAULT_PORTS[chosen])]
        if transport is not None:
            # §4.2: no SRV records: the host's addresses on the default port.
            return [_Wanted(transport, f"{SRV_PREFIXES[transport]}.{host}", host, DEFAULT_PORTS[transport])]
        offered = [t for t in self.transports if not secure or t == "tls"]
        naptrs = [
            n for n in await self._records(host, dns.NAPTR)
            if n.flags.lower() == "s" and NAPTR_SERVICES.get(n.service.upper()) in offered
        ]
        if naptrs:
            return [_Wanted(NAPTR_SERVICES[n.service.upper()], srv=n.replacement) for n in naptrs]
        for candidate in offered:
            name = f"{SRV_PREFIXES[candidate]}.{host}"
            if await self._records(name, dns.SRV):
                return [_Wanted(candidate, srv=name)]
        chosen = "tls" if secure else "udp"
        return [_Wanted(chosen, host=host, port=DEFAULT_PORTS[chosen])]

    async def _targets(self, host: str, port: int, transport: str, domain: str) -> list[Target]:
        # RFC 5922 §7.2: a TLS server is checked against the domain asked for.
        server_name = None if is_ip_literal(domain) else domain
        return [Target(transport, address, port, server_name=server_name)
                for address in await self._addresses(host)]

    async def _addresses(self, host: str) -> list[str]:
        host = canonical_host(host)
        if is_ip_literal(host):
            return [host]
        records = [*await self._records(host, dns.A), *await self._records(host, dns.AAAA)]
        return [record.address for record in records]

    # -- DNS with a cache --------------------------------------------------------------

    async def _records(self, name: str, qtype: int) -> list[Any]:
        name = name.rstrip(".").lower()
        key = (name, qtype)
        cached = self._cache.get(key)
        if cached is not None and cached[0] > self.clock.seconds():
            return list(cached[1])
        waiters = self._pending.get(key)
        if waiters is not None:  # the same question is out already: share its answer
            mine: defer.Deferred[list[Any]] = defer.Deferred()
            waiters.append(mine)
            return list(await mine)
        self._pending[key] = waiters = []
        try:
            records = await self._query(name, qtype)
        except BaseException:
            del self._pending[key]
            for waiter in waiters:
                waiter.errback()
            raise
        del self._pending[key]
        for waiter in waiters:
            waiter.callback(records)
        return list(records)

    async def _query(self, name: str, qtype: int) -> list[Any]:
        """Ask the resolver and cache the answer (see the module docstring)."""
        try:
            answers, _, _ = await self.resolver.query(dns.Query(name, qtype, dns.IN))
        except (DNSNameError, DomainError):
            records, ttl = [], self.negative_ttl
        except DNSQueryTimeoutError:
            log.warn("DNS {qtype} query for {name} timed out", qtype=dns.QUERY_TYPES.get(qtype), name=name)
            return []
        except Exception:  # a server failure, a refused query: nothing to cache
            log.failure("DNS {qtype} query for {name} failed", Failure(), qtype=dns.QUERY_TYPES.get(qtype), name=name)
            return []
        else:
            records = _read(name, qtype, answers)
            ttl = min((r.ttl for r in records), default=self.negative_ttl)
        self._cache[(name, qtype)] = (self.clock.seconds() + min(float(ttl), MAX_TTL), records)
        return records


def _read(name: str, qtype: int, answers: Sequence[dns.RRHeader]) -> list[Any]:
    """The answers of one type for ``name`` (following a CNAME chain), typed and ordered."""
    names = {name}
    for answer in answers:  # CNAMEs come first in an answer section
        if answer.type == dns.CNAME and answer.name.name.decode().rstrip(".").lower() in names:
            names.add(answer.payload.name.name.decode().rstrip(".").lower())
    mine = [a for a in answers if a.type == qtype and a.name.name.decode().rstrip(".").lower() in names]
    read: Callable[[dns.RRHeader], Any] = _READERS[qtype]
    records = [read(a) for a in mine]
    if qtype == dns.NAPTR:
        records.sort(key=lambda r: (r.order, r.preference))
    elif qtype == dns.SRV:
        records.sort(key=lambda r: (r.priority, -r.weight))
    return records


def _srv(answer: dns.RRHeader) -> SrvRecord:
    p = answer.payload
    return SrvRecord(p.priority, p.weight, p.port, p.target.name.decode().rstrip(".") or ".", answer.ttl)


def _naptr(answer: dns.RRHeader) -> NaptrRecord:
    p = answer.payload
    return NaptrRecord(p.order, p.preference, p.flags.string.decode(), p.service.string.decode(),
                       p.replacement.name.decode().rstrip("."), answer.ttl)


def _address(answer: dns.RRHeader) -> AddressRecord:
    payload = answer.payload
    if answer.type == dns.A:
        return AddressRecord(payload.dottedQuad(), answer.ttl)
    return AddressRecord(socket.inet_ntop(socket.AF_INET6, payload.address), answer.ttl)


_READERS: dict[int, Callable[[dns.RRHeader], Any]] = {
    dns.SRV: _srv, dns.NAPTR: _naptr, dns.A: _address, dns.AAAA: _address,
}


def parse_destination(destination: str) -> SipURI:
    """A sip:/sips: URI, or a bare host[:port] read as a sip: URI; ValueError otherwise."""
    text = destination.strip()
    if not text.lower().startswith(("sip:", "sips:")):
        text = "sip:" + text
    try:
        uri = parse_uri(text)
    except ValueError:
        raise ValueError(f"{destination!r} is not a SIP URI or host") from None
    if not isinstance(uri, SipURI):
        raise ValueError(f"{destination!r} is not a SIP URI or host")
    return uri


__all__ = ["AddressRecord", "LocateError", "Locator", "NaptrRecord", "SrvRecord", "order_srv", "parse_destination"]
