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

Which relay leg faces which call leg: the inbound leg (the caller) gets
relay leg ``a``, outbound legs ``b``; forks of one call share ``b`` (the
first to send wins the latch). A leg that replaces an ended one (transfer)
takes its place.

``media_proxy`` (per route or call): ``always`` and ``auto`` relay (the
default: recording, mute, play and NAT traversal all need it); ``none``
passes bodies unchanged; ``nat`` relays when the first offer's address is
not the address its SIP came from (the offerer is behind a NAT; that address
is ``MediaRequest.source_host`` when the call layer provides it, and without
it the call is relayed), and otherwise leaves media direct for the whole call.

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

from pbxd.call.media import MediaRequest, MediaSession, NotAcceptable
from pbxd.media.dtmf import DtmfDigit
from pbxd.media.ports import PortPool, PortsExhausted
from pbxd.media.relay import MediaRelay, RelayLeg, RelayOptions
from pbxd.sip.errors import SipParseError
from pbxd.sip.sdp import Origin, SessionDescription, connection_of, is_hold, parse_sdp, rewrite_media, strip_ice, \
    with_origin

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
                 on_dtmf: Callable[[RelayLeg, DtmfDigit], None] | None = None) -> None:
        self.request = request
        self.recording_path: str | None = None
        self._reactor = reactor
        self._pool = pool
        self._config = config
        self._recording_dir = recording_dir
        self.on_timeout = on_timeout
        self.on_dtmf = on_dtmf
        self.relay: MediaRelay | None = None
        self._recorder: Recorder | None = None  # the last recording, kept after it stops
        self.direct = request.media_proxy == "none"
        self._owners: dict[str, Leg] = {}
        self._origins = {"a": _Origin(), "b": _Origin()}
        self._held = {"a": False, "b": False}
        self.closed = False

    # -- the seam -------------------------------------------------------------------------------------

    def offer_to(self, leg: Leg, sdp: bytes) -> bytes:
        return self._forward(leg, sdp, offer=True)

    def answer_to(self, leg: Leg, sdp: bytes) -> bytes:
        body = self._forward(leg, sdp, offer=False)
        if self.relay is not None and self.request.record and self.relay.recorder is None:
            try:
                self.start_recording()
            except OSError as error:
                # A full disk or a missing directory costs the recording, not the call.
                from pbxd.media import recorder  # numpy: loaded on first use only

                recorder.Recorder.failures += 1
                log.error("call {call_id}: cannot record: {error}; the call goes on unrecorded",
                          call_id=self.request.call_id, error=error.strerror or str(error))
        return body

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
        if self.direct or self.closed or not body:
            return body
        try:
            sdp = parse_sdp(body)
        except SipParseError:
            return body  # not ours to judge: the far side answers a bad body itself
        audio = next((i for i, m in enumerate(sdp.media) if m.kind == "audio" and m.is_rtp and not m.is_rejected),
                     None)
        if audio is None:
            if offer and self.relay is None:
                raise NotAcceptable("no RTP audio stream to relay")
            return body
        if self.relay is None:
            if offer and self.request.media_proxy == "nat" and not self._offerer_is_natted(sdp, audio):
                self.direct = True
                return body
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
        if self.on_dtmf is not None:
            self.on_dtmf(leg, digit)

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
        state = self._origins[name]
        body = sdp.to_bytes()
        if body != state.last_body:
            state.version += 0 if state.last_body is None else 1
            state.last_body = body
        theirs = sdp.origin
        origin = Origin("pbxd", state.session_id, state.version, theirs.address, theirs.addrtype, theirs.nettype)
        address = connection_of(sdp, sdp.media[0]) if sdp.media else None
        if address is not None:
            origin = attrs.evolve(origin, address=address.host, addrtype=address.addrtype)
        return with_origin(sdp, origin).to_bytes()

    def _offerer_is_natted(self, sdp: SessionDescription, audio: int) -> bool:
        """Whether the offer's media address differs from the address the offerer's SIP came from.

        That address comes with the request (``MediaRequest.source_host``); without it the
        offerer counts as NATed, so the call is relayed.
        """
        source = getattr(self.request, "source_host", None)
        connection = connection_of(sdp, sdp.media[audio])
        return source is None or connection is None or connection.host != source

    # -- live controls (console, IVR) -------------------------------------------------------------------

    def start_recording(self, path: Path | None = None) -> str:
        """Record the call (both relay legs) now; returns the file's path."""
        if self.relay is None:
            raise ValueError("the call's media is not relayed")
        if path is None:
            safe = re.sub(r"[^A-Za-z0-9._-]", "_", self.request.call_id)[:100]
            path = self._recording_dir / f"{safe}.wav"
        self._recorder = self.relay.start_recording(path, self._config.recording_format)
        self.recording_path = str(path)
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
        return RelayMedia(request, reactor, ports, config, recording_dir)

    factory.pool = ports  # type: ignore[attr-defined]
    return factory
