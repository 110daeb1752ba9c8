"""The media seam: what a call does with every session description it forwards.

pbxd's call layer never looks inside SDP to move media; it hands each body it
forwards to the call's :class:`MediaSession` and sends what comes back. The
session sees every offer and answer in both directions — the INVITE, 18x,
2xx, re-INVITE, UPDATE and ACK bodies — so that a relay (issue 6) can put its
own address and ports in, record, mute or play, without the call layer
changing shape.

``offer_to(leg, sdp)`` is called with an offer about to be sent to ``leg``
(it came from that leg's peer); ``answer_to(leg, sdp)`` with an answer about
to be sent to ``leg``. Either may raise :class:`NotAcceptable` (answered
488, RFC 3261 §21.4.26) when the description cannot be forwarded, for
instance no codec in common where the session constrains codecs. ``close()``
is called once when the call ends and must release everything (ports,
files). ``recording_path`` is what the CDR records (None: not recorded).

The only session here is :class:`DirectMedia`: the phones send media to each
other and the descriptions pass unchanged, so a callee without a common codec
answers 488 itself and the caller hears that.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Protocol

import attrs

from pbxd.sip.sdp import bump_version, parse_sdp

if TYPE_CHECKING:
    from pbxd.call.leg import Leg
    from pbxd.call.routing import RouteDecision
    from pbxd.media.dtmf import DtmfDigit


class NotAcceptable(Exception):
    """An offer or answer the media session cannot forward: answered ``status``
    (488 by default; a media layer out of ports says 503)."""

    status = 488


class MediaSession(Protocol):
    recording_path: str | None
    # Set by the call: called when media stopped both ways for too long
    # (never while on hold); the call hangs up with cause media_timeout.
    on_timeout: Callable[[], None] | None
    # Set by the call: called with the call leg whose phone sent an RFC 4733
    # digit, for each digit read from the media (never with direct media).
    on_dtmf: Callable[[Leg, DtmfDigit], None] | None

    def offer_to(self, leg: Leg, sdp: bytes) -> bytes:
        """The offer to send to ``leg`` in place of ``sdp`` (its peer's offer)."""

    def answer_to(self, leg: Leg, sdp: bytes) -> bytes:
        """The answer to send to ``leg`` in place of ``sdp`` (its peer's answer)."""

    def own_offer(self, leg: Leg, sdp: bytes) -> bytes:
        """An offer pbxd itself makes to ``leg`` (hold, resume), ``sdp`` being what it last
        sent there, changed: the body to send, its o= version one higher (RFC 3264 §8)."""

    def close(self) -> None:
        """The call is over: release ports, close recordings. Called once."""

    @property
    def recording_bytes(self) -> int | None:
        """The recording's size for the CDR (None: not recorded)."""

    def quality(self) -> dict[str, Any] | None:
        """Per-leg media figures for the CDR (None: nothing measured); readable after close()."""


@attrs.define
class MediaRequest:
    """What a call asks of the media layer when it starts.

    ``media_proxy`` and ``record`` come from the route decision (or the call
    layer's defaults); ``call_id`` names the call for file names and logs;
    ``source_host`` is the address the caller's INVITE came from, which the
    ``nat`` mode compares with the SDP's address.
    """

    call_id: str
    media_proxy: str = "auto"
    record: bool = False
    source_host: str | None = None

    @classmethod
    def for_decision(cls, call_id: str, decision: RouteDecision | None,
                     source_host: str | None = None) -> MediaRequest:
        if decision is None:
            return cls(call_id, source_host=source_host)
        return cls(call_id, decision.media_proxy, decision.record, source_host)


# Builds the media session of a new call; the media issue provides a relaying one.
MediaFactory = Callable[[MediaRequest], MediaSession]


@attrs.define
class DirectMedia:
    """Direct media: every description passes unchanged, nothing is recorded."""

    recording_path: str | None = None
    closed: bool = False
    on_timeout: Callable[[], None] | None = None  # no packets pass here to time out
    on_dtmf: Callable[[Leg, DtmfDigit], None] | None = None  # nor digits to read

    def offer_to(self, leg: Leg, sdp: bytes) -> bytes:
        return sdp

    def answer_to(self, leg: Leg, sdp: bytes) -> bytes:
        return sdp

    def own_offer(self, leg: Leg, sdp: bytes) -> bytes:
        # The o= is the far phone's own here; pbxd can only count on from what it last sent.
        return bump_version(parse_sdp(sdp)).to_bytes()

    def close(self) -> None:
        self.closed = True

    @property
    def recording_bytes(self) -> int | None:
        return None

    def quality(self) -> dict[str, Any] | None:
        return None  # the phones' packets never pass through pbxd


def direct_media(request: MediaRequest) -> MediaSession:
    """A MediaFactory for direct media whatever was asked (pbxd relays by
    default: see ``pbxd.media.session.relay_media_factory``)."""
    return DirectMedia()


__all__ = ["DirectMedia", "MediaFactory", "MediaRequest", "MediaSession", "NotAcceptable", "direct_media"]
