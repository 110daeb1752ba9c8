"""Which trunk a new request came over, and which DID it calls.

:func:`match_inbound` looks, in this order:

1. at the Request-URI's ``line`` parameter: a carrier sending to the Contact
   a trunk registered (``sip:USER@pbxd;line=TOKEN``) copies it, and the token
   is the trunk's own (:func:`pbxd.trunks.trunk.line_token`);
2. at the source address, in each trunk's ``inbound_hosts`` (in
   configuration order: the first trunk listing it wins);
3. at the source address again, against the addresses a trunk's
   registration was last accepted by (the registration's flow).

A request recognised so is an :class:`InboundCall` of that trunk, with the
DID it calls when the called number (the Request-URI user, then the To user,
each normalised by the trunk's rules) is one of the trunk's DIDs.

A request from anywhere else is no trunk's, unless its called number is a
DID of some trunk: then it is not the trunk's (:class:`InboundRefusal`; the
call layer challenges it like any stranger, so that DIDs cannot be told
apart, and refuses it with 403 without an extension's credentials), or
taken as that trunk's when the trunk has ``accept_unknown_sources``. Anything
else gives None: the call layer treats it as it would without trunks
(an extension's call, or a stranger's).
"""

from __future__ import annotations

import hmac
from typing import TYPE_CHECKING

import attrs

from pbxd.call.routing import _source_address, uri_user
from pbxd.sip.errors import SipParseError
from pbxd.sip.message import Request
from pbxd.sip.uri import SipURI
from pbxd.transport.target import Target

if TYPE_CHECKING:
    from pbxd.trunks.trunk import Trunk, TrunkRegistry

# How a trunk was recognised, for logs and the CDR.
BY_REGISTRATION = "registration"
BY_ADDRESS = "address"
BY_DID = "did"


@attrs.frozen
class InboundCall:
    """A request over ``trunk``: ``called`` is the called number after the
    trunk's normalisation, ``did`` the DID (or block) it matched (None when
    the number is none of the trunk's DIDs: routing decides), ``caller`` the
    From user normalised, ``how`` what gave the trunk away."""

    trunk: Trunk
    called: str | None
    did: str | None
    caller: str | None
    how: str


@attrs.frozen
class InboundRefusal:
    """A request to ``trunk``'s DID from an address that is no trunk's (not the trunk's call)."""

    trunk: Trunk
    did: str


def match_inbound(registry: TrunkRegistry, request: Request, source: Target) -> InboundCall | InboundRefusal | None:
    try:
        ruri = request.ruri
        to_user = uri_user(request.to_addr.uri)
        from_user = uri_user(request.from_addr.uri)
    except SipParseError:
        return None  # the core answers malformed requests before they get here
    ruri_user = uri_user(ruri)
    line = ruri.param("line") if isinstance(ruri, SipURI) else None
    address = _source_address(source.host)
    for trunk in registry:
        if line is not None and hmac.compare_digest(line, trunk.line):
            # The Request-URI is our Contact: the number called is in To.
            return _call(trunk, (to_user, ruri_user), from_user, BY_REGISTRATION)
    if address is not None:
        for trunk in registry:
            if trunk.sends_from(address):
                return _call(trunk, (ruri_user, to_user), from_user, BY_ADDRESS)
    for trunk in registry:
        if source.host in trunk.registered_hosts:
            return _call(trunk, (ruri_user, to_user), from_user, BY_REGISTRATION)
    for trunk in registry:
        called, did = _did(trunk, (ruri_user,))
        if did is None:
            continue
        if trunk.config.accept_unknown_sources:
            return InboundCall(trunk, called, did, _normalized(trunk, from_user), BY_DID)
        return InboundRefusal(trunk, did)
    return None


def _normalized(trunk: Trunk, number: str | None) -> str | None:
    return None if number is None else trunk.numbers.normalize(number)


def _did(trunk: Trunk, numbers: tuple[str | None, ...]) -> tuple[str | None, str | None]:
    """The first of ``numbers`` (normalised) that is a DID of the trunk, with
    that DID; else the first number there is, and None."""
    candidates = [trunk.numbers.normalize(n) for n in numbers if n]
    for number in candidates:
        did = trunk.did_for(number)
        if did is not None:
            return number, did
    return (candidates[0] if candidates else None), None


def _call(trunk: Trunk, numbers: tuple[str | None, ...], from_user: str | None, how: str) -> InboundCall:
    called, did = _did(trunk, numbers)
    return InboundCall(trunk, called, did, _normalized(trunk, from_user), how)


__all__ = ["BY_ADDRESS", "BY_DID", "BY_REGISTRATION", "InboundCall", "InboundRefusal", "match_inbound"]
