"""A trunk: its configuration made usable, and its live state.

What the call layer uses (docs/trunks.md, "Seams for the call layer"):

- :meth:`TrunkRegistry.trunk` finds a trunk by the name in ``trunk:NAME``;
  :meth:`TrunkRegistry.match_inbound` says which trunk a new request came
  over (see :mod:`pbxd.trunks.inbound`).
- :meth:`Trunk.hops` gives, for a number, every (Request-URI, address,
  Route set) to try in order: the live destinations, primary first, each
  resolved per RFC 3263, through the outbound proxy if there is one. The
  call layer fails over to the next on a timeout, a transport error or a
  5xx; every hop but the last carries the trunk's ``failover_timeout``, how
  long the call waits for a first response from it before moving on.
  :meth:`Trunk.destinations` lists the live destinations themselves.
- :meth:`Trunk.identity_headers` gives the From address and the
  P-Asserted-Identity / Remote-Party-ID / Privacy headers for a caller.
- :attr:`Trunk.credentials` answers the carrier's 401/407 to an INVITE.
- :attr:`Trunk.limits` ``.acquire()`` gives a Permit or a Refusal (503 +
  Retry-After).
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Iterable, Iterator
from typing import Any
from urllib.parse import quote as url_quote

import attrs
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from pbxd.sip.digest import Challenge, answer_challenge, choose_challenge
from pbxd.sip.headers import header_key
from pbxd.sip.headers import quote as quoted_string
from pbxd.sip.message import Request, Response
from pbxd.transport.target import Target
from pbxd.trunks.dns import LocateError, Locator
from pbxd.trunks.inbound import InboundCall, InboundRefusal, match_inbound
from pbxd.trunks.limits import TrunkLimits
from pbxd.trunks.numbers import NumberRules, is_number

log = Logger()

# RFC 3261 §25.1 user-unreserved and unreserved: what a number keeps unescaped.
_USER_SAFE = "-_.!~*'()&=+$,;?/"
ANONYMOUS_FROM = '"Anonymous" <sip:anonymous@anonymous.invalid>'  # RFC 3323 §4.1.1.3


@attrs.frozen
class Destination:
    """Where a trunk sends: ``port``/``transport`` None means RFC 3263 decides."""

    host: str
    port: int | None = None
    transport: str | None = None

    @classmethod
    def from_config(cls, config: Any) -> Destination:
        return cls(config.host, config.port, config.transport)

    @property
    def hostport(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port is None else f"{host}:{self.port}"

    def uri(self, user: str | None = None) -> str:
        """``sip:[user@]host[:port][;transport=t]``."""
        userinfo = "" if user is None else url_quote(user, safe=_USER_SAFE) + "@"
        params = "" if self.transport is None else f";transport={self.transport}"
        return f"sip:{userinfo}{self.hostport}{params}"

    def __str__(self) -> str:
        return self.uri()


@attrs.frozen
class TrunkCredentials:
    """The trunk's digest account, to answer a carrier's 401/407 (RFC 3261 §22.2)."""

    username: str
    password: str = attrs.field(repr=False)
    realm: str | None = None  # only answer this realm's challenges; None: any

    def challenge(self, response: Response) -> tuple[str, Challenge] | None:
        """The header to answer with and the challenge of a 401/407 to answer, or None."""
        if response.status == 407:
            header, values = "Proxy-Authorization", response.get_all("Proxy-Authenticate")
        elif response.status == 401:
            header, values = "Authorization", response.get_all("WWW-Authenticate")
        else:
            return None
        challenge = choose_challenge(values, self.realm)
        return None if challenge is None else (header, challenge)

    def answer(self, challenge: Challenge, request: Request, nc: int = 1) -> str:
        """The credentials for ``request`` (its method, Request-URI and body)."""
        return answer_challenge(challenge, request.method, request.uri, self.username, self.password,
                                nc=nc, body=request.body)

    def authorize(self, request: Request, response: Response) -> bool:
        """Put into ``request`` (the retry, CSeq already raised) the answer to
        ``response``'s challenge; False when there is none to answer."""
        chosen = self.challenge(response)
        if chosen is None:
            return False
        header, challenge = chosen
        request.set(header, self.answer(challenge, request))
        return True


@attrs.frozen
class Caller:
    """Who is calling out: the number (E.164 preferred), the name, and whether
    they asked to withhold their identity (a Privacy header, RFC 3323)."""

    number: str | None
    name: str | None = None
    private: bool = False


@attrs.frozen
class Identity:
    """How a call through a trunk presents its caller: the From address
    (without tag) and the headers to add."""

    from_address: str
    headers: tuple[tuple[str, str], ...] = ()


@attrs.frozen
class Hop:
    """One place to try a request through the trunk: its Request-URI, the
    address to send it to, the Route set (the outbound proxy), and the
    seconds to wait for any response from it before the next hop is tried
    instead (``failover_timeout``; 0: no next hop, or wait for the INVITE's
    own timeout)."""

    request_uri: str
    target: Target
    route: tuple[str, ...] = ()
    failover_timeout: float = 0.0


@attrs.frozen
class DestinationHealth:
    """What OPTIONS health checks last said about a destination."""

    up: bool = True
    since: float = 0.0
    reason: str = ""
    last_status: int | None = None


def line_token(name: str, username: str | None, password: str | None) -> str:
    """The ``line`` parameter of a trunk's registered Contact.

    It is derived from the account, so that it is the same after a restart
    (the carrier may still hold the old binding) yet not guessable without
    the password: a request carrying it came through the registration.
    """
    return hashlib.sha256(f"pbxd-line\x00{name}\x00{username}\x00{password}".encode()).hexdigest()[:16]


class Trunk:
    """One trunk: configuration, destinations with their health, limits, registration state."""

    def __init__(self, config: Any, clock: IReactorTime, locator: Locator) -> None:
        self.config = config
        self.name: str = config.name
        self.clock = clock
        self.locator = locator
        self.primary = Destination.from_config(config.destination)
        self.backups = tuple(Destination.from_config(b) for b in config.backups)
        self.credentials = (
            TrunkCredentials(config.username, config.password, config.auth_realm)
            if config.username is not None and config.password is not None else None
        )
        self.limits = TrunkLimits(clock, config.max_calls, config.max_cps)
        self.numbers = NumberRules.from_config(config.normalize)
        self.dids: tuple[str, ...] = config.dids
        self.inbound_networks = tuple(ipaddress.ip_network(n) for n in config.inbound_hosts)
        self.line = line_token(self.name, config.username, config.password)
        self.contact_user: str = config.username or "pbxd"
        self.codecs: tuple[str, ...] = config.codecs
        self.failover_timeout: float = config.failover_timeout
        self._health = {d: DestinationHealth(since=clock.seconds()) for d in self.all_destinations()}
        # Where the registration was last accepted: calls from there are this trunk's.
        self.registered_hosts: frozenset[str] = frozenset()
        self.registration: Any = None  # pbxd.trunks.registration.TrunkRegistration, if registering

    def __repr__(self) -> str:
        return f"<Trunk {self.name} {self.primary}>"

    # -- destinations ----------------------------------------------------------------

    def all_destinations(self) -> tuple[Destination, ...]:
        return (self.primary, *self.backups)

    def destinations(self) -> list[Destination]:
        """The destinations that are up, primary first then the backups in order.

        When every one is down, all of them: a check may be wrong, and a call
        that tries is better than one refused without trying.
        """
        live = [d for d in self.all_destinations() if self._health[d].up]
        return live or list(self.all_destinations())

    def next_destination(self) -> Destination:
        """Where the next request goes: the first live destination."""
        return self.destinations()[0]

    def health(self, destination: Destination) -> DestinationHealth:
        return self._health[destination]

    def set_health(self, destination: Destination, up: bool, reason: str = "",
                   status: int | None = None) -> bool:
        """Record a health check's result; True when the destination changed state."""
        before = self._health[destination]
        changed = before.up != up
        self._health[destination] = DestinationHealth(
            up, self.clock.seconds() if changed else before.since, reason, status
        )
        return changed

    def targets(self) -> defer.Deferred[list[Target]]:
        """The transport addresses to try for a new request, in order (see :meth:`hops`)."""
        return self.hops("").addCallback(lambda hops: list(dict.fromkeys(hop.target for hop in hops)))

    def hops(self, number: str) -> defer.Deferred[list[Hop]]:
        """Where a call to ``number`` goes, in the order to try: one :class:`Hop`
        per address of each live destination (primary first, each resolved
        per RFC 3263), sent through the outbound proxy when there is one.
        A destination that does not resolve is left out (and logged). Every
        hop but the last has the trunk's ``failover_timeout``. For IP
        destinations and answers in the DNS cache the Deferred has fired on
        return.
        """
        return defer.Deferred.fromCoroutine(self._hops(number))

    async def _hops(self, number: str) -> list[Hop]:
        proxy = self.config.outbound_proxy
        hops: list[Hop] = []
        for destination in self.destinations():
            uri, transport = (proxy, None) if proxy is not None else (destination.uri(), destination.transport)
            try:
                targets = await self.locator.resolve(uri, transport)
            except (LocateError, ValueError) as error:
                log.warn("trunk {trunk}: {uri} does not resolve: {error}", trunk=self.name, uri=uri, error=error)
                continue
            request_uri = destination.uri(number) if number else destination.uri()
            hops += [Hop(request_uri, target, self.route()) for target in targets]
        hops = list(dict.fromkeys(hops))
        # The last hop has nothing to fail over to: giving up early on it would only fail the call sooner.
        return [attrs.evolve(hop, failover_timeout=self.failover_timeout) for hop in hops[:-1]] + hops[-1:]

    # -- building requests -----------------------------------------------------------------

    @property
    def domain(self) -> str:
        """The carrier's domain as a URI host: ``from_domain``, else the primary
        destination's host (an IPv6 address in brackets)."""
        host: str = self.config.from_domain or self.primary.host
        return f"[{host}]" if ":" in host else host

    def request_uri(self, number: str, destination: Destination | None = None) -> str:
        """The Request-URI of a call to ``number``: ``sip:number@destination``."""
        return (destination or self.next_destination()).uri(number)

    def route(self) -> tuple[str, ...]:
        """Route header values for requests to the trunk (the outbound proxy, §8.1.2)."""
        proxy = self.config.outbound_proxy
        return () if proxy is None else (f"<{proxy}>",)

    def identity_headers(self, caller: Caller) -> Identity:
        """The From address and identity headers for ``caller`` on this trunk.

        The caller's number is presented as the trunk's ``normalize`` rules
        make it (an extension's ``1001`` may become ``+49301231001``, its
        DID), as the called number is: carriers accept only numbers they
        can route back. A caller that is a name, not a number, is left as
        it is. From: the trunk's ``from_user`` if set (carriers that
        authorise by From), else that number, else the account name; at
        ``from_domain`` (else the destination host). P-Asserted-Identity and
        Remote-Party-ID carry the number. A withheld caller gets the
        anonymous From of RFC 3323 §4.1.1.3 and ``Privacy: id``, and
        P-Asserted-Identity still names them to the carrier (RFC 3325 §9.1:
        the carrier removes it at the edge of its trust domain).
        """
        cid = self.config.caller_id
        hidden = cid.privacy == "always" or (cid.privacy == "auto" and caller.private)
        number = caller.number
        if number is not None and is_number(number):
            number = self.numbers.normalize(number)
        user = self.config.from_user or number or self.config.username or "anonymous"
        display = f"{quoted_string(caller.name)} " if caller.name else ""
        if hidden:
            from_address = ANONYMOUS_FROM
        else:
            from_address = f"{display}<sip:{url_quote(user, safe=_USER_SAFE)}@{self.domain}>"
        asserted = f"{display}<sip:{url_quote(number or user, safe=_USER_SAFE)}@{self.domain}>"
        headers: list[tuple[str, str]] = []
        if cid.pai:
            headers.append(("P-Asserted-Identity", asserted))
        if cid.rpid:
            privacy = "full" if hidden else "off"
            headers.append(("Remote-Party-ID", f"{asserted};party=calling;screen=yes;privacy={privacy}"))
        if hidden:
            headers.append(("Privacy", "id"))
        return Identity(from_address, tuple(headers))

    def passed_headers(self, headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
        """The headers of an incoming call that ``pass_headers`` lets through, in order."""
        wanted = {header_key(name) for name in self.config.pass_headers}
        return [(name, value) for name, value in headers if header_key(name) in wanted]

    # -- inbound ---------------------------------------------------------------------

    def did_for(self, number: str) -> str | None:
        """The DID (or DID block) of this trunk that a normalised number is, if any."""
        for did in self.dids:
            if did.endswith("*") and number.startswith(did[:-1]) or did == number:
                return did
        return None

    def sends_from(self, address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        return any(address in network for network in self.inbound_networks)

    # -- for the API -------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """The trunk's live state as plain data (the REST API shows it)."""
        registration = None if self.registration is None else attrs.asdict(self.registration.status)
        return {
            "name": self.name,
            "destinations": [
                {"uri": str(d), "primary": d == self.primary, **attrs.asdict(self._health[d])}
                for d in self.all_destinations()
            ],
            "registration": registration,
            "active_calls": self.limits.active,
            "max_calls": self.limits.max_calls,
            "max_cps": self.limits.max_cps,
            "refused_calls": self.limits.refused,
        }


class TrunkRegistry:
    """The configured trunks by name, in configuration order."""

    def __init__(self, trunks: Iterable[Trunk] = ()) -> None:
        self._trunks = {trunk.name: trunk for trunk in trunks}

    @classmethod
    def from_config(cls, configs: Iterable[Any], clock: IReactorTime, locator: Locator) -> TrunkRegistry:
        return cls(Trunk(config, clock, locator) for config in configs)

    def replace(self, trunks: Iterable[Trunk]) -> None:
        """Hold ``trunks`` from now on (a reload). One assignment: whoever holds
        this registry sees the new trunks, and a lookup never sees half of them."""
        self._trunks = {trunk.name: trunk for trunk in trunks}

    def trunk(self, name: str) -> Trunk | None:
        """The trunk a ``trunk:NAME`` route target names, None if there is none."""
        return self._trunks.get(name)

    def __iter__(self) -> Iterator[Trunk]:
        return iter(self._trunks.values())

    def __len__(self) -> int:
        return len(self._trunks)

    def match_inbound(self, request: Request, source: Target) -> InboundCall | InboundRefusal | None:
        """Which trunk a new request came over: see :func:`pbxd.trunks.inbound.match_inbound`."""
        return match_inbound(self, request, source)


__all__ = [
    "ANONYMOUS_FROM", "Caller", "Destination", "DestinationHealth", "Hop", "Identity", "Trunk",
    "TrunkCredentials", "TrunkRegistry", "line_token",
]
