"""Who may talk SIP to pbxd at all: an IP/CIDR ACL and a User-Agent block list.

:class:`NetworkAcl` is evaluated on the source address before a message is
parsed: a source matching ``deny`` is refused, then, if ``allow`` is not
empty, only sources matching it are let in (deny wins over allow, so a
bad host can be carved out of an allowed network).

:class:`UserAgentBlocklist` is checked once a request is parsed: a
User-Agent containing any listed word (case-insensitive) marks a scanner
(SIPVicious announces itself as "friendly-scanner" by default).
"""

from __future__ import annotations

import ipaddress
from typing import Iterable, Union

Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]
Address = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]

# Tools that announce themselves; an operator's list replaces this one.
DEFAULT_USER_AGENT_BLOCKLIST = (
    "friendly-scanner",
    "sipvicious",
    "sipcli",
    "vaxsipuseragent",
    "sip-scan",
    "sundayddr",
    "iwar",
)


def networks(entries: Iterable[str | Network]) -> tuple[Network, ...]:
    """Addresses and CIDR networks as networks (a bare address is a /32 or /128)."""
    return tuple(ipaddress.ip_network(entry, strict=False) for entry in entries)


def source_address(host: str) -> Address | None:
    """The address a transport reported, IPv4-mapped IPv6 taken as IPv4; None if not a literal."""
    try:
        address = ipaddress.ip_address(host.strip("[]").split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def in_any(address: Address, nets: Iterable[Network]) -> bool:
    return any(address.version == net.version and address in net for net in nets)


class NetworkAcl:
    """Allow and deny lists of networks (see the module docstring)."""

    def __init__(self, allow: Iterable[str | Network] = (), deny: Iterable[str | Network] = ()) -> None:
        self.allow = networks(allow)
        self.deny = networks(deny)

    def permits(self, address: Address) -> bool:
        if in_any(address, self.deny):
            return False
        return not self.allow or in_any(address, self.allow)


class UserAgentBlocklist:
    """Case-insensitive substrings that mark a User-Agent as a scanner's."""

    def __init__(self, words: Iterable[str] = DEFAULT_USER_AGENT_BLOCKLIST) -> None:
        self.words = tuple(word.lower() for word in words if word)

    def match(self, user_agent: str | None) -> str | None:
        """The listed word ``user_agent`` contains, or None."""
        if not user_agent or not self.words:
            return None
        lowered = user_agent.lower()
        for word in self.words:
            if word in lowered:
                return word
        return None
