"""pbxd's defences against hostile SIP traffic (issue 9): :class:`SipFirewall`.

Before parsing, on every datagram, accepted TCP/TLS connection and stream
message (``SipTransports.source_filter``):

1. the IP/CIDR ACL (``security.acl``): a denied source is dropped;
2. sources in ``security.allow``, the trunks' addresses and, with
   ``trust_loopback``, loopback are exempt from what follows;
3. flood control (:mod:`pbxd.security.flood`): each source's token bucket;
   a source that empties it is banned and dropped until the ban ends.

After parsing, before the transaction layer (the firewall wraps the
transports' receiver): a request whose User-Agent is on the block list is
dropped without an answer and bans its source (unless exempt); a message with
more than ``limits.max_headers`` header fields is dropped.

Drops are counted in :attr:`SipFirewall.counts` by reason; bans are logged
(warn) once each. Resource limits (transactions, dialogs, connections per
address) are handed to the layers that own the tables, by :meth:`SipFirewall.install`.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any, Callable

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from pbxd.security.acl import NetworkAcl, UserAgentBlocklist, in_any, networks, source_address
from pbxd.security.flood import FloodGuard, FloodLimits
from pbxd.sip.message import Request, SipMessage
from pbxd.transport.target import Target

if TYPE_CHECKING:
    from pbxd.config import Config

log = Logger(namespace="pbxd.security")

LOOPBACK = networks(("127.0.0.0/8", "::1/128"))

# Why a message was dropped: the keys of SipFirewall.counts.
ACL = "acl"
FLOOD = "flood"
USER_AGENT = "user_agent"
HEADERS = "headers"


def trunk_networks(config: Config) -> list[str]:
    """The trunks' addresses that are IP literals, and their inbound_hosts networks.

    Host names are not resolved here: a carrier known by name should list its
    addresses in ``inbound_hosts`` or ``security.allow``.
    """
    found: list[str] = []
    for trunk in config.trunks:
        found.extend(trunk.inbound_hosts)
        for destination in (trunk.destination, *trunk.backups):
            if source_address(destination.host) is not None:
                found.append(destination.host.strip("[]"))
    return found


class SipFirewall:
    """The ACL, flood bans, User-Agent block list and header limit for one pbxd."""

    def __init__(self, clock: IReactorTime, config: Config) -> None:
        self.clock = clock
        self.flood = FloodGuard(clock, self._flood_limits(config))
        self.counts: Counter[str] = Counter()
        self._limited: list[tuple[Any, str, str]] = []  # (object, attribute, limits key) set by install
        self._configure(config)

    @staticmethod
    def _flood_limits(config: Config) -> FloodLimits:
        flood = config.security.flood
        return FloodLimits(flood.requests_per_second, flood.burst, flood.ban_time, flood.max_tracked)

    def reload(self, config: Config) -> None:
        """Take the ACL, allow list, block list, flood and resource limits from ``config``.

        Bans and buckets in force stay (a reload does not pardon anyone,
        except that an address now allowed is no longer checked).
        """
        self._configure(config)
        log.info("SIP security reloaded: ACL allow {allow} deny {deny}; {exempt} exempt networks;"
                 " {ua} blocked user agents", allow=len(self.acl.allow), deny=len(self.acl.deny),
                 exempt=len(self.exempt), ua=len(self.user_agents.words))

    def _configure(self, config: Config) -> None:
        security = config.security
        self.acl = NetworkAcl(security.acl.allow, security.acl.deny)
        exempt = [*networks(security.allow), *networks(trunk_networks(config))]
        if security.trust_loopback:
            exempt.extend(LOOPBACK)
        self.exempt = tuple(exempt)
        self.user_agents = UserAgentBlocklist(security.user_agent_blocklist)
        self.limits = security.limits
        self.max_headers = security.limits.max_headers
        self.flood.reconfigure(self._flood_limits(config))
        self._max_verdicts = security.flood.max_tracked
        # (permitted by the ACL, exempt from flood control) per source address
        # as the transport spells it: the networks are matched once per address.
        self._verdicts: dict[str, tuple[bool, bool]] = {}
        self._apply_limits()

    def _apply_limits(self) -> None:
        for owner, attribute, key in self._limited:
            setattr(owner, attribute, getattr(self.limits, key))

    # -- before parsing ---------------------------------------------------------------

    def admit_source(self, source: Target) -> bool:
        """The transports' ``source_filter``: False drops what ``source`` sent, unparsed."""
        host = source.host
        verdict = self._verdicts.get(host)
        if verdict is None:
            verdict = self._verdict(host)
        permitted, exempt = verdict
        if not permitted:
            self.counts[ACL] += 1
            log.debug("dropped SIP from {source}: denied by the ACL", source=str(source), source_ip=host)
            return False
        if exempt or self.flood.admit(host):
            return True
        self.counts[FLOOD] += 1
        return False

    def _verdict(self, host: str) -> tuple[bool, bool]:
        address = source_address(host)
        if address is None:
            verdict = (False, False)  # a transport always reports a literal; refuse anything else
        else:
            verdict = (self.acl.permits(address), in_any(address, self.exempt))
        if len(self._verdicts) >= self._max_verdicts:
            self._verdicts.clear()
        self._verdicts[host] = verdict
        return verdict

    def is_exempt(self, host: str) -> bool:
        return (self._verdicts.get(host) or self._verdict(host))[1]

    # -- after parsing ------------------------------------------------------------------

    def screen(self, message: SipMessage, source: Target) -> bool:
        """False: drop ``message`` silently (a scanner's User-Agent, too many headers)."""
        if self.max_headers and len(message.headers) > self.max_headers:
            self.counts[HEADERS] += 1
            log.info("dropped {message!r} from {source}: more than {limit} header fields",
                     message=message, source=str(source), limit=self.max_headers, source_ip=source.host)
            return False
        if not isinstance(message, Request):
            return True
        word = self.user_agents.match(message.get("user-agent"))
        if word is None:
            return True
        self.counts[USER_AGENT] += 1
        log.info("dropped {method} from {source}: User-Agent {user_agent!r} is blocked ({word})",
                 method=message.method, source=str(source), user_agent=message.get("user-agent"), word=word,
                 source_ip=source.host)
        if not self.is_exempt(source.host):
            self.flood.ban(source.host, f"blocked User-Agent ({word})")
        return False

    # -- wiring -------------------------------------------------------------------------

    def install(self, transports: Any, layer: Any = None, calls: Any = None) -> None:
        """Filter ``transports`` (a SipTransports whose receiver the SIP core has set)
        and hand the resource limits to the tables' owners: the transports
        (connections per address), the transaction ``layer`` and the ``calls``
        manager (live calls, each a dialog or two). A reload updates them."""
        self._limited = [(transports, "max_connections_per_ip", "max_connections_per_ip")]
        if layer is not None:
            self._limited.append((layer, "max_server_transactions", "max_transactions"))
        if calls is not None:
            self._limited.append((calls, "max_calls", "max_dialogs"))
        self._apply_limits()
        transports.source_filter = self.admit_source
        receiver: Callable[[SipMessage, Target], None] = transports.receiver

        def screened(message: SipMessage, source: Target) -> None:
            if self.screen(message, source):
                receiver(message, source)

        transports.receiver = screened

    @property
    def metrics(self) -> dict[str, int]:
        """Counters for monitoring: drops by reason, bans, tracked sources."""
        return {
            **{f"dropped_{reason}": self.counts[reason] for reason in (ACL, FLOOD, USER_AGENT, HEADERS)},
            "bans_total": self.flood.bans_total,
            "bans_active": self.flood.bans_active,
            "tracked_sources": self.flood.tracked,
        }


__all__ = ["SipFirewall", "trunk_networks", "ACL", "FLOOD", "USER_AGENT", "HEADERS"]
