"""Where responses go and what a server writes into the Via it received.

Pure functions over the top Via and the address a request came from:
RFC 3261 §18.2.1 (received), RFC 3581 §4 (rport) and §18.2.2 (sending
responses). The transport layer applies them; nothing here touches a socket.
"""

from __future__ import annotations

from pbxd.sip.headers import Via
from pbxd.sip.message import Request
from pbxd.sip.uri import bare_host
from pbxd.transport.target import DEFAULT_PORTS, Target, canonical_host, packed_address


def same_address(sent_by_host: str, source_host: str) -> bool:
    """True when a Via sent-by host is literally the address a message came from.

    A hostname never counts as the same (§18.2.1 adds received= whenever the
    sent-by is a domain name), and IP addresses compare by value, so
    ``[0:0::1]`` equals ``::1``.
    """
    host = bare_host(sent_by_host)
    if host == source_host:
        return packed_address(host) is not None
    packed = packed_address(host)
    return packed is not None and packed == packed_address(source_host)


def stamp_via(request: Request, source: Target) -> None:
    """Add received= and rport= to the top Via of a request from ``source``.

    §18.2.1: received= when the sent-by host differs from the packet's source
    address. RFC 3581 §4: an rport flag without a value gets the source port,
    and then received= is added even when the address is the same. The Via is
    rewritten in place only when something changes.
    """
    via = request.via
    stamped = via
    rport_requested = via.has_param("rport") and via.param("rport") is None
    if rport_requested:
        stamped = stamped.with_param("rport", str(source.port))
    if rport_requested or not same_address(via.host, source.host):
        # The received value is an address without brackets (§25.1 via-received).
        stamped = stamped.with_param("received", source.host)
    if stamped is not via:
        request.pop_first("via")
        request.insert("via", str(stamped))


def response_target(via: Via, source: Target) -> Target:
    """The address a response goes to when it cannot reuse the request's connection.

    For a reliable transport the caller first tries the connection the request
    arrived on (keyed by ``source``); this is the fallback. The order follows
    §18.2.2 with RFC 3581 §4 for rport:

    1. reliable: received (or the sent-by host), at the sent-by port or the
       transport's default;
    2. maddr: that address, at the sent-by port or the default;
    3. unreliable with received and rport: received at rport;
    4. received: received at the sent-by port or the default;
    5. otherwise the sent-by host and port (a name is resolved per RFC 3263 §5).

    The result keeps ``source.local`` so a UDP response leaves from the socket
    the request came in on.
    """
    transport = source.transport
    port = via.port or DEFAULT_PORTS[transport]
    received = via.received
    if source.reliable:
        host = received or via.host
    elif via.maddr:
        host = via.maddr
    elif received and via.rport:
        host, port = received, via.rport
    else:
        host = received or via.host
    return Target(transport, canonical_host(host), port, local=source.local)
