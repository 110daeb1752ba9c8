"""``RelayMedia``: the call layer's ``MediaSession`` backed by a ``MediaRelay``.

Every description the call forwards passes through here (see
``pbxd.call.media``). ``offer_to(leg, sdp)`` and ``answer_to(leg, sdp)`` get
a body written by the *other* side of the call and about to go to ``leg``:

1. the body tells the relay where the other side's phone wants media
   (``RelayLeg.set_remote_sdp``, which also unlatches, RFC 3264 §8: a new
   offer may move the stream) and whether it holds the call;
2. the body is rewritten for ``leg``: its first RTP audio stream points at
   the relay leg that faces ``leg`` (``rewrite_media`` with the advertised
   address), other streams are refused (port 0: the relay carries one
   stream), ICE attributes are dropped, and the o= line is pbxd's own for
   that leg, its version one higher whenever the body changes (§8).

pbxd's own offers to a leg (hold, resume: ``own_offer``) take their o= from the
same per-leg counter, so a phone never sees a version reused or lowered.

Which relay leg faces which call leg: the inbound leg (the caller) gets
relay leg ``a``, outbound legs ``b``; forks of one call share ``b`` (the
first to send wins the latch). A leg that replaces an ended one (transfer)
takes its place.

``media_proxy`` (per route or call): ``always`` and ``auto`` relay (the
default: see docs/media.md for why ``auto`` is ``always`` here); ``none``
passes bodies unchanged; ``nat`` relays when either side is NATed and
otherwise leaves media direct for the whole call. It decides at the first
offer, because a relay only helps a phone that was told its address, and each
side is told in the body pbxd forwards to it (see ``_either_side_natted``).

No relay ports left: ``NoRelayPorts`` (a ``NotAcceptable``) with
``status`` 503 for a new call; the call layer answers that status.
"""

from __future__ import annotations

import itertools
import os
import re
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import attrs
from twisted.logger import Logger

from pbxd.call.cdr import recording_file
from pbxd.call.media import MediaRequest, MediaSession, NotAcceptable
from pbxd.media.dtmf import DtmfDigit
from pbxd.media.ports import PortPool, PortsExhausted
from pbxd.media.relay import MediaRelay, RelayLeg, RelayOptions, is_ip_address
from pbxd.sip.errors import SipParseError
from pbxd.sip.sdp import Media, Origin, SessionDescription, bump_version, common_codecs, connection_of, is_hold, \
    parse_sdp, rewrite_media, strip_ice, with_origin
from pbxd.sip.uri import parse_uri

if TYPE_CHECKING:
    from pbxd.call.leg import Leg
    from pbxd.media.recorder import Recorder
    from pbxd.config import RtpConfig

log = Logger()
_versions = itertools.count(1)


class NoRelayPorts(NotAcceptable):
    """Every relay port is in use: the call is refused with 503 (RFC 3261 §21.5.4)."""

    status = 503


@attrs.define
class _Origin:
    """pbxd's o= towards one call leg: one session id, a version that grows with each change."""

    session_id: str = attrs.Factory(lambda: str(int.from_bytes(os.urandom(6), "big")))
    version: int = attrs.Factory(lambda: next(_versions))
    last_body: bytes | None = None


class RelayMedia:
    """A call's media through a ``MediaRelay``; see the module docstring."""

    def __init__(self, request: MediaRequest, reactor: Any, pool: PortPool, config: RtpConfig,
                 recording_dir: Path, on_timeout: Callable[[], None] | None = None,
                 on_dtmf: Callable[[Leg, DtmfDigit], None] | None = None, data_dir: Path | None = None) -> None:
        self.request = request
        self.recording_path: str | None = None
        self._reactor = reactor
        self._pool = pool
        self._config = config
        self._recording_dir = recording_dir
        self._data_dir = data_dir  # what the CDR's recording path is relative to
        self.on_timeout = on_timeout
        self.on_dtmf = on_dtmf
        self.relay: MediaRelay | None = None
        self._recorder: Recorder | None = None  # the last recording, kept after it stops
        self.direct = request.media_proxy == "none"
        self._owners: dict[str, Leg] = {}
        self._origins = {"a": _Origin(), "b": _Origin()}
        self._held = {"a": False, "b": False}
        self._offer: SessionDescription | None = None  # the last offer relayed, as its writer wrote it
        self._answer_seen = False  # nat mode, media direct: the first answer was checked
        self.natted_answerer = False  # ... and showed a NATed answerer (logged)
        self.closed = False

    # -- the seam -------------------------------------------------------------------------------------

    def offer_to(self, leg: Leg, sdp: bytes) -> bytes:
        return self._forward(leg, sdp, offer=True)

    def answer_to(self, leg: Leg, sdp: bytes) -> bytes:
        body = self._forward(leg, sdp, offer=False)
        if self.relay is not None and self.request.record and self._recorder is None:  # once: a stop is the operator's
            try:
                self.start_recording()
            except OSError as error:
                # A full disk or a missing directory costs the recording, not the call.
                from pbxd.media import recorder  # numpy: loaded on first use only

                recorder.Recorder.failures += 1
                log.error("call {call_id}: cannot record: {error}; the call goes on unrecorded",
                          call_id=self.request.call_id, error=error.strerror or str(error))
        return body

    def own_offer(self, leg: Leg, sdp: bytes) -> bytes:
        """An offer pbxd makes to ``leg`` itself (hold, resume), from what it last sent there.

        Relayed, its o= version comes from the same counter as the bodies relayed to
        ``leg``, so that the versions the phone sees go up by one at each change
        (RFC 3264 §8) however pbxd's own offers and the far phone's interleave.
        """
        facing = None if self.direct or self.closed else self.leg_for(leg)
        if facing is None:
            return bump_version(parse_sdp(sdp)).to_bytes()  # media direct: the o= is the far phone's
        return self._with_own_origin(facing.name, parse_sdp(sdp))

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.relay is not None:
            recorder = self.relay.recorder
            self.relay.close()
            if recorder is not None:
                log.info("call {call_id} recorded to {path} ({size} bytes)", call_id=self.request.call_id,
                         path=str(recorder.path), size=recorder.size)

    # -- the work -------------------------------------------------------------------------------------

    def _forward(self, leg: Leg, body: bytes, offer: bool) -> bytes:
        if self.direct and not offer and body and self.request.media_proxy == "nat" and not self._answer_seen:
            self._answer_seen = True
            self._check_direct_answer(leg, body)
        if self.direct or self.closed or not body:
            return body
        try:
            sdp = parse_sdp(body)
        except SipParseError:
            return body  # not ours to judge: the far side answers a bad body itself
        audio = next((i for i, m in enumerate(sdp.media) if m.kind == "audio" and m.is_rtp and not m.is_rejected),
                     None)
        if not offer and self.relay is not None and self._offer is not None and not _answers_offer(self._offer, sdp):
            # RFC 3264 §6: an answer without a codec of the offer (or refusing every stream)
            # sets up nothing; the call layer answers the offerer 488 instead of forwarding it.
            raise NotAcceptable("the answer has no audio codec in common with the offer")
        if audio is None:
            if offer and self.relay is None:
                raise NotAcceptable("no RTP audio stream to relay")
            return body
        if self.relay is None and offer and self.request.media_proxy == "nat" \
                and not self._either_side_natted(leg, sdp, audio):
            self.direct = True
            return body
        if offer:
            if not _carries_voice(sdp.media[audio]):
                raise NotAcceptable("the offer's audio stream has only DTMF or comfort noise, no voice codec")
            self._offer = sdp
        if self.relay is None:
            self._open()
        relay = self.relay
        assert relay is not None
        facing = self._relay_leg(leg)
        source = facing.peer
        source.set_remote_sdp(sdp, audio)
        self._held[source.name] = is_hold(attrs.evolve(sdp, media=(sdp.media[audio],)))  # the stream relayed
        relay.set_hold(any(self._held.values()))
        ports = [facing.port if index == audio else 0 for index in range(len(sdp.media))]
        rewritten = rewrite_media(strip_ice(sdp), self._advertised(leg), ports)
        return self._with_own_origin(facing.name, rewritten)

    def _open(self) -> None:
        config = self._config
        options = RelayOptions(config.bind_address, config.socket_buffer, config.timeout or None,
                               config.relatch_packets)
        try:
            self.relay = MediaRelay.open(self._reactor, self._pool, options, on_timeout=self._timed_out,
                                         on_dtmf=self._dtmf)
        except PortsExhausted as error:
            raise NoRelayPorts(str(error)) from None

    def _timed_out(self) -> None:
        log.info("call {call_id}: RTP timeout", call_id=self.request.call_id)
        if self.on_timeout is not None:
            self.on_timeout()

    def _dtmf(self, leg: RelayLeg, digit: DtmfDigit) -> None:
        # Relay leg "a" receives from the phone of the call leg that owns "a": that leg sent it.
        sender = self._owners.get(leg.name)
        if self.on_dtmf is not None and sender is not None:
            self.on_dtmf(sender, digit)

    def _relay_leg(self, leg: Leg) -> RelayLeg:
        relay = self.relay
        assert relay is not None
        for name, owner in self._owners.items():
            if owner is leg:
                return relay.a if name == "a" else relay.b
        preferred = "a" if getattr(getattr(leg, "direction", None), "value", "") == "inbound" else "b"
        other = "b" if preferred == "a" else "a"
        name = preferred
        current = self._owners.get(preferred)
        if current is not None and not getattr(current, "is_ended", False):
            spare = self._owners.get(other)
            if spare is None or getattr(spare, "is_ended", False):
                name = other
        self._owners[name] = leg
        return relay.a if name == "a" else relay.b

    def _advertised(self, leg: Leg) -> str:
        if self._config.advertised_address:
            return self._config.advertised_address
        if self._config.bind_address not in ("0.0.0.0", "::"):
            return self._config.bind_address
        return local_address_towards(leg.target.host)

    def _with_own_origin(self, name: str, sdp: SessionDescription) -> bytes:
        """``sdp`` with pbxd's o= towards relay leg ``name``: the one counter of that leg's versions.

        The version goes up by one exactly when what the leg's phone gets differs from
        the last body sent to it (RFC 3264 §8); whatever o= ``sdp`` came with does not count.
        """
        state = self._origins[name]
        theirs = sdp.origin
        origin = Origin("pbxd", state.session_id, 0, theirs.address, theirs.addrtype, theirs.nettype)
        address = connection_of(sdp, sdp.media[0]) if sdp.media else None
        if address is not None:
            origin = attrs.evolve(origin, address=address.host, addrtype=address.addrtype)
        body = with_origin(sdp, origin).to_bytes()  # the body as sent, but for the version
        if body != state.last_body:
            state.version += 0 if state.last_body is None else 1
            state.last_body = body
        return with_origin(sdp, attrs.evolve(origin, version=state.version)).to_bytes()

    def _either_side_natted(self, leg: Leg, sdp: SessionDescription, audio: int) -> bool:
        """``nat`` mode, at the first offer (about to go to ``leg``): whether either side is NATed.

        The offerer is NATed when its SDP address is not the address its SIP came from:
        the caller's source (``MediaRequest.source_host``) for an offer in the INVITE, or,
        for a late offer (in a fork's 2xx), the address of the fork it came from, one of
        the call's ringing legs. The answerer, whose SDP is not written yet, counts as
        NATed when its Contact names an IP address other than the one pbxd sends its SIP
        to (a phone that registered from behind a NAT). Anything unknown counts as
        NATed: relaying is the side that always works.
        """
        sources = self._writer_sources(leg)
        if _is_callers(leg):  # a late offer: the callee's, in its 2xx
            answerer_contact = _contact_host(getattr(leg, "invite", None))
        else:
            invite = getattr(leg, "invite", None)
            answerer_contact = _uri_host(invite.uri) if invite is not None else None
        connection = connection_of(sdp, sdp.media[audio])
        if connection is None or _host(connection.host) not in sources:
            return True
        if answerer_contact is None or not is_ip_address(answerer_contact):
            return answerer_contact is None  # a name is a server's, not a NATed phone's
        return answerer_contact != _host(leg.target.host)

    def _writer_sources(self, leg: Leg) -> set[str]:
        """The addresses the SIP of whoever wrote a body now going to ``leg`` may come from:
        the ringing forks for the caller (an answer, or a late offer in a 2xx), else the
        caller (``MediaRequest.source_host``, or its leg's address); empty when unknown."""
        call = getattr(leg, "call", None)
        if _is_callers(leg):
            return {_host(fork.target.host) for fork in getattr(call, "ringing", ())}
        caller_host = self.request.source_host
        if caller_host is None and call is not None:
            caller_host = call.inbound.target.host
        return {_host(caller_host)} if caller_host else set()

    def _check_direct_answer(self, leg: Leg, body: bytes) -> None:
        """``nat`` mode left media direct: say so when the answer shows a NATed answerer after all.

        Too late to relay (see docs/media.md); the log tells the operator why such a call
        may be one-way.
        """
        try:
            sdp = parse_sdp(body)
        except SipParseError:
            return
        audio = next((m for m in sdp.media if m.kind == "audio" and not m.is_rejected), None)
        connection = connection_of(sdp, audio) if audio is not None else None
        sources = self._writer_sources(leg)
        if connection is not None and sources and _host(connection.host) not in sources:
            self.natted_answerer = True
            log.warn("call {call_id}: media_proxy nat left media direct, but the answer's address {address} is not "
                     "where the answerer's SIP comes from ({sources}): it is NATed and may not hear the caller",
                     call_id=self.request.call_id, address=connection.host, sources=", ".join(sorted(sources)))

    # -- live controls (console, IVR) -------------------------------------------------------------------

    def start_recording(self, path: Path | None = None) -> str:
        """Record the call (both relay legs) now; returns the file's path."""
        if self.relay is None:
            raise ValueError("the call's media is not relayed")
        if path is None:
            safe = re.sub(r"[^A-Za-z0-9._-]", "_", self.request.call_id)[:100]
            path = self._recording_dir / f"{safe}.wav"
        self._recorder = self.relay.start_recording(path, self._config.recording_format)
        self.recording_path = recording_file(path, self._data_dir)
        return self.recording_path

    def stop_recording(self) -> None:
        if self.relay is not None:
            self.relay.stop_recording()

    def pause_recording(self) -> None:
        """Silence in the file from now on (a card number being read out), until ``resume_recording``."""
        if self.relay is not None and self.relay.recorder is not None:
            self.relay.recorder.pause()

    def resume_recording(self) -> None:
        if self.relay is not None and self.relay.recorder is not None:
            self.relay.recorder.resume()

    @property
    def recording_bytes(self) -> int | None:
        """The recording's size so far (for the CDR), or None if the call was not recorded."""
        recorder = self._recorder
        return recorder.size if recorder is not None else None

    def quality(self) -> dict[str, Any] | None:
        """Per relay leg: packets, octets, loss, jitter, RTCP figures and MOS (None if not relayed)."""
        return self.relay.stats() if self.relay is not None else None

    def leg_for(self, leg: Leg) -> RelayLeg | None:
        """The relay leg facing a call leg (to mute it, play into it, send it DTMF), if relayed."""
        if self.relay is None:
            return None
        for name, owner in self._owners.items():
            if owner is leg:
                return self.relay.a if name == "a" else self.relay.b
        return None


def _unnamed_formats(media: Media) -> set[str]:
    """Payload formats with no codec name pbxd knows (a dynamic type without rtpmap)."""
    named = {str(codec.payload) for codec in media.codecs}
    return {fmt for fmt in media.formats if fmt not in named}


def _carries_voice(media: Media) -> bool:
    """Whether an offered stream has a format other than DTMF, comfort noise and the like.

    A format pbxd cannot name counts as voice: relaying needs no codec knowledge, so
    only a stream that certainly has nothing to say is refused.
    """
    return bool(_unnamed_formats(media)) or any(not codec.is_auxiliary for codec in media.codecs)


def _answers_offer(offer: SessionDescription, answer: SessionDescription) -> bool:
    """Whether ``answer`` accepts an audio stream of ``offer`` with one of its voice codecs.

    Streams pair by position (RFC 3264 §6); codecs match by name and rate, not payload
    number. Where pbxd cannot name a format on either side, the phones judge it: a
    shared unnamed payload number, or an unnamed answer format, counts as common.
    """
    for offered, answered in zip(offer.media, answer.media):
        if offered.kind != "audio" or answered.kind != "audio" or not answered.is_rtp \
                or offered.is_rejected or answered.is_rejected:
            continue
        if _unnamed_formats(answered) or set(answered.formats) & _unnamed_formats(offered):
            return True
        if any(not codec.is_auxiliary for codec in common_codecs(offered, answered)):
            return True
    return False


def _is_callers(leg: Any) -> bool:
    """Whether ``leg`` is its call's caller (for click-to-dial, the phone rung first: an outbound leg)."""
    call = getattr(leg, "call", None)
    if call is not None:
        return getattr(call, "inbound", None) is leg
    return getattr(getattr(leg, "direction", None), "value", "") == "inbound"


def _host(host: str) -> str:
    """An address as SDP writes it: IPv6 without the brackets a URI puts around it."""
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


def _uri_host(uri: str) -> str | None:
    try:
        parsed = parse_uri(uri)
    except SipParseError:
        return None
    host = getattr(parsed, "host", None)
    return _host(host) if host else None


def _contact_host(invite: Any) -> str | None:
    """The host of a request's Contact (a phone's own idea of its address)."""
    try:
        contacts = invite.contacts if invite is not None else []
    except SipParseError:
        return None
    return _uri_host(str(contacts[0].uri)) if contacts else None


def local_address_towards(host: str) -> str:
    """The local address the kernel would send from to reach ``host`` (no packet is sent)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.connect((host, 9))
            return str(probe.getsockname()[0])
    except OSError:
        return "127.0.0.1" if family == socket.AF_INET else "::1"


def relay_media_factory(reactor: Any, config: RtpConfig, data_dir: Path,
                        pool: PortPool | None = None) -> Callable[[MediaRequest], MediaSession]:
    """The ``MediaFactory`` for ``CallManager``: one port pool, a ``RelayMedia`` per call."""
    ports = pool or PortPool(config.port_min, config.port_max)
    recording_dir = config.recording_dir or data_dir / "recordings"

    def factory(request: MediaRequest) -> MediaSession:
        return RelayMedia(request, reactor, ports, config, recording_dir, data_dir=data_dir)

    factory.pool = ports  # type: ignore[attr-defined]
    return factory
