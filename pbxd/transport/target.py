"""Where a SIP message comes from or goes to: transport, host and port.

This module imports nothing from Twisted so that the sans-IO layers
(`pbxd.sip`) can name targets without pulling in the network code.
"""

from __future__ import annotations

import socket

import attrs

TRANSPORTS = ("udp", "tcp", "tls")

# RFC 3261 §19.1.2 and §18.2.2: the port a transport uses when none is given.
DEFAULT_PORTS = {"udp": 5060, "tcp": 5060, "tls": 5061}


def packed_address(host: str) -> bytes | None:
    """The binary form of an IP literal (IPv6 without brackets), None for anything else.

    inet_pton is the kernel's own reading of an address, and fast enough for
    every datagram.
    """
    try:
        return socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host)
    except (OSError, ValueError):
        return None


def canonical_host(host: str) -> str:
    """A host in the one spelling targets are compared by.

    IPv6 references lose their brackets and take the compressed form the
    socket layer reports, so that ``[0:0::1]`` and ``::1`` name the same
    peer; hostnames are lowercase.
    """
    if host.startswith("["):
        host = host[1:-1]
    if ":" in host:
        packed = packed_address(host)
        return host if packed is None else socket.inet_ntop(socket.AF_INET6, packed)
    return host.lower()


def is_ip_literal(host: str) -> bool:
    """True for an IPv4 or IPv6 address (IPv6 without brackets)."""
    return packed_address(host) is not None


def is_ipv6(host: str) -> bool:
    return ":" in host


@attrs.frozen
class Target:
    """A transport address: ``Target('udp', '192.0.2.1', 5060)``.

    ``host`` is an IP literal without brackets or a hostname. Two fields ride
    along without taking part in equality or hashing, so that a target stays a
    usable key for connections and transactions:

    - ``local``: the (host, port) of our socket that a UDP message arrived on.
      Responses and later requests to that peer leave from the same socket
      (RFC 3581 §4: the response MUST come from where the request was received;
      behind a NAT that is the only pinhole open).
    - ``server_name``: the name a TLS server certificate must carry when it is
      not ``host`` (a domain resolved to an address per RFC 3263; RFC 5922 §7.2).
    """

    transport: str = attrs.field(converter=str.lower, validator=attrs.validators.in_(TRANSPORTS))
    host: str = attrs.field(converter=canonical_host)
    port: int
    local: tuple[str, int] | None = attrs.field(default=None, eq=False, repr=False)
    server_name: str | None = attrs.field(default=None, eq=False, repr=False)

    @property
    def reliable(self) -> bool:
        """Stream transports deliver or fail loudly; UDP needs retransmission (§17.1.1.2)."""
        return self.transport != "udp"

    @property
    def via_transport(self) -> str:
        """The transport token for a Via header: UDP, TCP or TLS."""
        return self.transport.upper()

    @property
    def hostport(self) -> str:
        """``host:port`` with IPv6 in brackets, as a Via sent-by or URI wants it."""
        host = f"[{self.host}]" if is_ipv6(self.host) else self.host
        return f"{host}:{self.port}"

    def __str__(self) -> str:
        """For logs: ``udp:192.0.2.1:5060``, ``tcp:[2001:db8::1]:5060``."""
        return f"{self.transport}:{self.hostport}"
