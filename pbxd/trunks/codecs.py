"""A trunk's ``codecs``: what an offer sent to the carrier may carry.

The call layer passes every offer it sends to a trunk's server through
:func:`offer_for_trunk` before the media session sees it, so the media relay
and the o= versions it keeps (RFC 3264 §8) deal with the body as sent. The
rules are :func:`pbxd.sip.sdp.restrict_codecs`: the trunk's codecs only, in
the trunk's order (the operator's preference for that carrier, RFC 3264
§5.1), and an offer with no voice codec left is refused with 488 before
anything is sent (RFC 3264 §6, RFC 3261 §21.4.26).
"""

from __future__ import annotations

from collections.abc import Sequence

from pbxd.call.media import NotAcceptable
from pbxd.sip.sdp import SdpError, parse_sdp, restrict_codecs


class MalformedOffer(NotAcceptable):
    """An offer for a trunk whose codecs cannot be read: the caller gets 400 (RFC 3261 §21.4.1)."""

    status = 400


def offer_for_trunk(body: bytes, codecs: Sequence[str]) -> bytes:
    """``body`` (an SDP offer) as it may go to a trunk whose ``codecs`` are these.

    No codecs configured (or no body): ``body`` unchanged. Raises
    :class:`NotAcceptable` (488) when no voice codec of the trunk's is
    offered, :class:`MalformedOffer` (400) when the body is not SDP pbxd can
    read: it cannot tell what the carrier would get.
    """
    if not codecs or not body:
        return body
    try:
        offer = parse_sdp(body)
    except SdpError as error:
        raise MalformedOffer(str(error)) from None
    restricted = restrict_codecs(offer, codecs)
    if restricted is None:
        raise NotAcceptable(f"no codec of the trunk's ({', '.join(codecs)}) is offered")
    # Unchanged: the very bytes, so that nothing pbxd did not mean to touch is rewritten.
    return body if restricted == offer else restricted.to_bytes()


__all__ = ["MalformedOffer", "offer_for_trunk"]
