"""The RTP relay: two legs per call, each a pair of UDP ports, moving packets between phones.

A ``MediaRelay`` has two ``RelayLeg`` objects, ``a`` and ``b``. Each leg owns
an even RTP port and the RTCP port above it (from the ``PortPool``), and
knows its phone: the address the phone's SDP gave (``set_remote``) and the
address its packets really come from. What arrives on leg A's ports goes out
of leg B's ports to B's phone, and the other way round.

Symmetric RTP (RFC 4961) and latching — the rules:

1. Until a leg has latched, the first well-formed RTP packet (version 2)
   latches its source: from then on the leg sends to that address, whatever
   the SDP said (the phone is behind a NAT that rewrote its port). Before
   any packet, the leg sends to the SDP address. A source port of 0 (a
   raw-socket sender, such as sipp's pcap player) is forwarded but never
   latched to: nothing can be sent back to it.
2. Once latched, packets from another source are dropped, unless that
   source sends ``relatch_packets`` RTP packets in a row with no packet
   from the latched source in between: the phone moved (a NAT rebinding, or
   a new stream after hold from another port). A third party injecting into
   a live stream never gets there, because the real phone's packets keep
   resetting its count.
3. A new remote description (``set_remote``, a re-INVITE) with another address
   unlatches the leg: rule 1 applies again, so a phone that changed address is
   followed at once. The same address again (a session refresh) keeps the latch.

RTCP latches the same way on its own port (to the first RTCP source); until
then it goes to the a=rtcp address, or RTP port + 1. With rtcp-mux
(RFC 5761) RTCP arrives on the RTP port and goes out to the RTP destination.

Mute (per leg, what the leg's phone says): G.711 payloads are replaced by
silence of the same length (µ-law 0xFF, A-law 0xD5) so the far phone keeps
a steady stream; other payloads (telephone-events, comfort noise, other
codecs) are dropped while muted. No re-INVITE is involved.

Play (``RelayLeg.play``) sends audio into a leg — a WAV file, a tone or
silence — as G.711 RTP paced on the reactor clock every 20 ms, with the
leg's own SSRC and continuous sequence numbers and timestamps. While it
plays, or ``send_dtmf`` sends, the peer's packets to that leg are held back.

Timeout: when neither leg has received a packet for ``timeout`` seconds and
the call is not on hold, ``on_timeout`` is called once (the call layer
hangs up with cause "media_timeout"). It is checked by a timer comparing
packet counters, so the packet path pays nothing for it.

Speed: on Linux the relay's sockets sit in one epoll set that the reactor
watches as a single descriptor (``SharedPoller``), so one wake-up serves every
ready socket, one datagram per socket per round of polls; sends are bare
``sendto`` calls, and the forwarding path reads five header fields and passes
the datagram on as the same bytes object. ``RelayOptions.engine="twisted"``
uses a Twisted UDP port per socket instead (the portable fallback).
"""

from __future__ import annotations

import errno
import ipaddress
import os
import select
import socket
import time
import wave
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

import attrs
import numpy as np
from twisted.internet import defer, udp
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from pbxd.media import g711
from pbxd.media.dtmf import DIGITS, DtmfDetector, DtmfDigit, dtmf_packets
from pbxd.media.ports import PortPool
from pbxd.media.rtp import HEADER, ReportBlock, RtcpReport, RtpError, RtpPacket, parse_rtcp, payload_bounds
from pbxd.media.stats import RemoteReport, StreamStats, mos
from pbxd.sip.sdp import STATIC_PAYLOAD_TYPES, Codec, SessionDescription, connection_of

if TYPE_CHECKING:
    from pbxd.media.recorder import Recorder

log = Logger()

Address = tuple[str, int]
FRAME_MS = 20
FRAME_SAMPLES = g711.SAMPLE_RATE * FRAME_MS // 1000
_MAX_DATAGRAM = 2048
_READ_BURST = 2000  # datagrams per wake-up at most, so one busy port cannot starve the rest
_WAKE_BUDGET = 1000  # datagrams per SharedPoller wake-up at most (~10 ms), so SIP gets its turn
_READ_SKIPPED = frozenset({errno.EAGAIN, errno.ECONNREFUSED, errno.EINTR, errno.EHOSTUNREACH, errno.ENETUNREACH})
_SEND_DROPPED = frozenset({errno.EAGAIN, errno.ENOBUFS, errno.ECONNREFUSED, errno.EHOSTUNREACH,
                           errno.ENETUNREACH, errno.EPERM, errno.EINVAL})


ENGINES_DEFAULT = "epoll" if hasattr(select, "epoll") else "twisted"


@attrs.frozen
class RelayOptions:
    """How relays are built; ``pbxd.config.RtpConfig`` provides the values."""

    bind_address: str = "0.0.0.0"
    socket_buffer: int = 1 << 20
    timeout: float | None = 30.0  # None: never time out
    relatch_packets: int = 8
    engine: str = ENGINES_DEFAULT  # "epoll" (Linux) or "twisted": how sockets are read, see below


# -- the sockets -----------------------------------------------------------------------------------
#
# Two ways to read relay sockets, both reading every ready datagram per wake-up:
# - "epoll" (Linux, the default): plain sockets in one epoll set of their own, which the
#   reactor watches as a single reader (``SharedPoller``). One reactor wake-up serves every
#   ready relay socket in a tight loop, without the reactor's per-descriptor dispatch
#   (logging context, bookkeeping); bench/relay.py measured that dispatch at about a third
#   of the relay's CPU per packet. It reads one datagram per ready socket per round of
#   polls (no EAGAIN probe per packet).
# - "twisted": a ``RelayPort`` (a Twisted UDP port) per socket, read until EAGAIN; the
#   portable fallback.


def _receive_all(sock: socket.socket, deliver: Callable[[bytes, Address], None], burst: int) -> None:
    receive = sock.recvfrom
    for _ in range(burst):
        try:
            data, source = receive(_MAX_DATAGRAM)
        except BlockingIOError:
            return
        except OSError as error:
            # An ICMP error from an earlier send (ECONNREFUSED) is reported on
            # the next read; it says nothing about what else is queued.
            if error.errno in (errno.ECONNREFUSED, errno.EINTR, errno.EHOSTUNREACH, errno.ENETUNREACH):
                continue
            raise
        try:
            deliver(data, source[:2])
        except Exception:
            log.failure("relay packet from {source} failed", source=source)


def _ignore(data: bytes, source: Address) -> None:
    pass


class _RelaySocketIO:
    """What both relay socket kinds share: datagrams go to ``deliver``; sends whose refusals are counted."""

    socket: socket.socket
    deliver: Callable[[bytes, Address], None]
    send_errors: int

    def send(self, data: bytes, destination: Address) -> bool:
        """Send a datagram; False (and counted) when the kernel refused it."""
        try:
            self.socket.sendto(data, destination)  # the packet path: one call, no helper
        except OSError as error:
            if error.errno not in _SEND_DROPPED and not isinstance(error, socket.gaierror):
                raise
            self.send_errors += 1
            return False
        return True


class RelayPort(_RelaySocketIO, udp.Port):
    """A Twisted UDP port for the relay (the portable path): big buffers, all datagrams per wake-up."""

    def __init__(self, port: int, interface: str, reactor: Any, buffer_size: int) -> None:
        super().__init__(port, DatagramProtocol(), interface, _MAX_DATAGRAM, reactor)
        self.buffer_size = buffer_size
        self.send_errors = 0
        self.read_burst = _READ_BURST
        self.deliver: Callable[[bytes, Address], None] = _ignore

    def doRead(self) -> None:
        # Twisted calls this once per ready port: read every datagram it holds.
        _receive_all(self.socket, self.deliver, self.read_burst)

    def createInternetSocket(self) -> socket.socket:
        sock = super().createInternetSocket()
        for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            # Capped by net.core.rmem_max / wmem_max; bursts of many calls need the room.
            sock.setsockopt(socket.SOL_SOCKET, option, self.buffer_size)
        return sock

    def close(self) -> defer.Deferred[None]:
        return defer.maybeDeferred(self.stopListening)


class SharedPoller:
    """One epoll set for every relay socket of a reactor, read by the reactor as one descriptor.

    A wake-up goes in rounds: each round polls the set (level-triggered) and reads
    one datagram from every ready socket, until a round finds none ready or the
    wake-up's budget is spent. At 50 packets a second a socket rarely holds a second
    datagram, so reading until EAGAIN cost one failed recvfrom per packet (about a
    tenth of the relay's CPU per packet); the empty poll that ends a wake-up is
    shared by every socket served in it. A socket found alone two rounds running
    (a burst, a flood on one port) is read until empty instead.
    """

    _by_reactor: dict[int, SharedPoller] = {}

    def __init__(self, reactor: Any, budget: int = _WAKE_BUDGET) -> None:
        self.epoll = select.epoll()
        self.sockets: dict[int, PolledSocket] = {}
        self.budget = budget
        reactor.addReader(self)

    @classmethod
    def of(cls, reactor: Any) -> SharedPoller:
        poller = cls._by_reactor.get(id(reactor))
        if poller is None:
            poller = cls._by_reactor[id(reactor)] = cls(reactor)
        return poller

    def fileno(self) -> int:
        return self.epoll.fileno()

    def logPrefix(self) -> str:
        return "relay"

    def doRead(self) -> None:
        sockets, poll, read = self.sockets, self.epoll.poll, self._read_one
        left = self.budget
        lone = -1  # the socket that was the only one ready in the previous round
        while left > 0:
            ready = poll(0, min(left, 1024))
            if not ready:
                return
            left -= len(ready)
            for fd, _ in ready:
                polled = sockets.get(fd)
                if polled is not None:  # else closed by a packet handled earlier in this round
                    read(polled)
            if len(ready) > 1:
                lone = -1
                continue
            fd = ready[0][0]
            if fd == lone:
                # Alone two rounds running: a burst or a flood on one port. Read it until
                # empty rather than paying a poll per datagram.
                while left > 0 and (polled := sockets.get(fd)) is not None and read(polled):
                    left -= 1
            lone = fd

    @staticmethod
    def _read_one(polled: PolledSocket) -> bool:
        """Read one datagram and deliver it; False when there was none to read."""
        try:
            data, source = polled.receive(_MAX_DATAGRAM)
        except OSError as error:
            # EAGAIN: nothing after all. An ICMP error from an earlier send
            # (ECONNREFUSED) is reported on a read; it says nothing about what is queued.
            if error.errno not in _READ_SKIPPED:
                # Not raised: the reactor would drop the poller, and every call's media with
                # it. The socket is no longer read; its call ends on the RTP timeout.
                log.failure("relay socket {port} read failed; no longer read", port=polled.port)
                polled.stop_reading()
            return False
        try:
            polled.deliver(data, source[:2])
        except Exception:
            log.failure("relay packet from {source} failed", source=source)
        return True

    def connectionLost(self, reason: Any) -> None:
        pass  # the reactor is shutting down; the relays close their own sockets

    def add(self, fd: int, polled: PolledSocket) -> None:
        self.sockets[fd] = polled
        self.epoll.register(fd, select.EPOLLIN)

    def remove(self, fd: int) -> None:
        if self.sockets.pop(fd, None) is not None:
            self.epoll.unregister(fd)


class PolledSocket(_RelaySocketIO):
    """A relay UDP socket read by the reactor's ``SharedPoller`` (the fast path)."""

    def __init__(self, poller: SharedPoller, host: str, port: int, buffer_size: int) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
                sock.setsockopt(socket.SOL_SOCKET, option, buffer_size)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind((host, port))
        except OSError as error:
            sock.close()
            raise CannotListenError(host, port, error) from None
        sock.setblocking(False)
        self.socket = sock
        self.port = sock.getsockname()[1]
        self.receive = sock.recvfrom
        self.send_errors = 0
        self.deliver: Callable[[bytes, Address], None] = _ignore
        self._poller = poller
        poller.add(sock.fileno(), self)

    def stop_reading(self) -> None:
        if self.socket.fileno() >= 0:
            self._poller.remove(self.socket.fileno())

    def close(self) -> defer.Deferred[None]:
        if self.socket.fileno() >= 0:
            self.stop_reading()
            self.socket.close()
        return defer.succeed(None)


RelaySocket = RelayPort | PolledSocket


def _listen(reactor: Any, port: int, options: RelayOptions) -> RelaySocket:
    if options.engine == "epoll":
        return PolledSocket(SharedPoller.of(reactor), options.bind_address, port, options.socket_buffer)
    relay_port = RelayPort(port, options.bind_address, reactor, options.socket_buffer)
    relay_port.startListening()
    return relay_port


# -- audio sources for play() ---------------------------------------------------------------------


class AudioSource:
    """Frames of ``FRAME_SAMPLES`` 16-bit samples at 8 kHz; ``None`` when done."""

    def frames(self) -> Iterator[np.ndarray]:
        raise NotImplementedError


@attrs.frozen
class Silence(AudioSource):
    seconds: float

    def frames(self) -> Iterator[np.ndarray]:
        for _ in range(round(self.seconds * 1000 / FRAME_MS)):
            yield np.zeros(FRAME_SAMPLES, dtype=np.int16)


@attrs.frozen
class Tone(AudioSource):
    """Sine tones (summed), e.g. (425,) for a European ringback or (350, 440) for a US dial tone.

    ``cadence`` is (on, off, on, off, ...) seconds repeated; empty means steady.
    """

    frequencies: tuple[float, ...]
    seconds: float
    amplitude: int = 8000
    cadence: tuple[float, ...] = ()

    def frames(self) -> Iterator[np.ndarray]:
        total = round(self.seconds * g711.SAMPLE_RATE)
        t = np.arange(total) / g711.SAMPLE_RATE
        wave = sum(np.sin(2 * np.pi * f * t) for f in self.frequencies) / max(1, len(self.frequencies))
        signal = np.asarray(wave * self.amplitude)
        if self.cadence:
            period = sum(self.cadence)
            phase = t % period
            on = np.zeros(total, dtype=bool)
            start = 0.0
            for index, length in enumerate(self.cadence):
                if index % 2 == 0:
                    on |= (phase >= start) & (phase < start + length)
                start += length
            signal = np.where(on, signal, 0)
        samples = np.round(signal).astype(np.int16)
        yield from _framed(samples)


@attrs.frozen
class WavFile(AudioSource):
    """A WAV file of 16-bit PCM: stereo is mixed down, other rates resampled (linear) to 8 kHz."""

    path: Path

    def frames(self) -> Iterator[np.ndarray]:
        yield from _framed(read_wav_8k(self.path))


def read_wav_8k(path: Path | str) -> np.ndarray:
    """The samples of a 16-bit PCM WAV file as 8 kHz mono."""
    with wave.open(str(path), "rb") as wav:
        if wav.getsampwidth() != 2:
            raise ValueError(f"{path}: only 16-bit PCM WAV files can be played")
        rate, channels = wav.getframerate(), wav.getnchannels()
        data = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2")
    samples = data.reshape(-1, channels).mean(axis=1) if channels > 1 else data.astype(np.float64)
    if rate != g711.SAMPLE_RATE and len(samples):
        count = int(len(samples) * g711.SAMPLE_RATE / rate)
        samples = np.interp(np.arange(count) * rate / g711.SAMPLE_RATE, np.arange(len(samples)), samples)
    return np.round(samples).astype(np.int16)


def _framed(samples: np.ndarray) -> Iterator[np.ndarray]:
    for start in range(0, len(samples), FRAME_SAMPLES):
        frame = samples[start:start + FRAME_SAMPLES]
        if len(frame) < FRAME_SAMPLES:
            frame = np.concatenate([frame, np.zeros(FRAME_SAMPLES - len(frame), dtype=np.int16)])
        yield frame


# -- a leg -------------------------------------------------------------------------------------------


@attrs.define
class _LocalStream:
    """What pbxd itself sends into a leg (prompts, tones, DTMF): one SSRC, continuous numbering."""

    ssrc: int = attrs.Factory(lambda: int.from_bytes(os.urandom(4), "big"))
    sequence: int = attrs.Factory(lambda: int.from_bytes(os.urandom(2), "big"))
    timestamp: int = attrs.Factory(lambda: int.from_bytes(os.urandom(4), "big"))
    last_sent: float | None = None  # reactor time of the last packet


class RelayLeg:
    """One side of a relayed call (see the module docstring for the rules)."""

    def __init__(self, relay: MediaRelay, name: str, port: int, rtp: RelaySocket, rtcp: RelaySocket) -> None:
        self.relay = relay
        self.name = name
        self.port = port
        self._rtp = rtp
        self._rtcp = rtcp
        self.peer: RelayLeg = self  # set by MediaRelay
        self.remote: Address | None = None  # from the SDP
        self.remote_rtcp: Address | None = None
        self.rtcp_mux = False
        self.latched: Address | None = None
        self.rtcp_latched: Address | None = None
        self.destination: Address | None = None  # where RTP for this phone goes
        self._candidate: Address | None = None
        self._candidate_count = 0
        self.codecs: dict[int, Codec] = {}
        self.event_payload: int | None = None
        self.muted = False
        self.received = StreamStats()  # phone -> pbxd
        self.sent_packets = 0  # pbxd -> phone
        self.sent_octets = 0
        self.remote_report: RemoteReport | None = None  # the phone's RTCP about what it receives
        self.dtmf = DtmfDetector()
        self._local = _LocalStream()
        self._local_busy = 0  # players/DTMF senders running: the peer's audio is held back
        self._player: LoopingCall | None = None
        self._checked_packets = 0  # received.packets at the relay's last timeout check
        self._sr_forwarded: dict[int, float] = {}  # NTP middle of SRs sent to this phone -> when
        rtp.deliver = self._on_rtp
        rtcp.deliver = self._on_rtcp_port

    def __repr__(self) -> str:
        return f"<RelayLeg {self.name} :{self.port} -> {self.destination}>"

    @property
    def rtcp_port(self) -> int:
        return self.port if self.rtcp_mux else self.port + 1

    # -- what the phone told us ----------------------------------------------------------------

    def set_remote(self, address: Address | None, codecs: Sequence[Codec] = (), *,
                   rtcp: Address | None = None, rtcp_mux: bool = False) -> None:
        """The phone's media address and codecs from its SDP; a new address unlatches (rule 3)."""
        moved = address != self.remote
        self.remote = address
        self.remote_rtcp = rtcp or (address and (address[0], address[1] + 1))
        self.rtcp_mux = rtcp_mux
        if codecs:
            self.codecs = {codec.payload: codec for codec in codecs}
            events = [c.payload for c in codecs if c.name.lower() == "telephone-event"]
            self.event_payload = events[0] if events else None
        if moved or self.latched is None:
            # The same address again (a session refresh, a hold) keeps the latch: a NATed
            # phone's SDP address is not where it can be reached.
            self.latched = self.rtcp_latched = None
            self._candidate, self._candidate_count = None, 0
            self.destination = address

    def set_remote_sdp(self, sdp: SessionDescription, index: int = 0) -> None:
        """``set_remote`` from the phone's description (its ``index``-th media section)."""
        media = sdp.media[index]
        connection = connection_of(sdp, media)
        address = None
        if connection is not None and not media.is_rejected and is_ip_address(connection.host) \
                and connection.host not in ("0.0.0.0", "::"):
            address = (connection.host, media.port)
        rtcp = media.rtcp
        rtcp_address = None
        if address is not None and rtcp is not None:
            host = rtcp.connection.host if rtcp.connection is not None else address[0]
            rtcp_address = (host, rtcp.port) if is_ip_address(host) else None
        self.set_remote(address, media.codecs, rtcp=rtcp_address, rtcp_mux=media.rtcp_mux)

    # -- the packet path -------------------------------------------------------------------------

    def _on_rtp(self, data: bytes, source: Address) -> None:
        if len(data) < 8 or data[0] & 0xC0 != 0x80:
            return  # not RTP version 2 (STUN, garbage): never latched, never forwarded
        second = data[1]
        if 192 <= second <= 223:  # RTCP on the RTP port (rtcp-mux, RFC 5761 §4)
            if source == self.latched or self.latched is None:
                self._on_rtcp(data, source)
            return
        if len(data) < 12:
            return
        if source != self.latched:
            if not self._may_latch(source, data):
                return
        elif self._candidate_count:
            self._candidate, self._candidate_count = None, 0  # the latched phone still talks (rule 2)
        _, _, sequence, timestamp, ssrc = HEADER.unpack_from(data)
        payload_type = second & 0x7F
        is_event = payload_type == self.event_payload
        codec = self.codecs.get(payload_type)
        self.received.update(sequence, timestamp, ssrc, time.monotonic(), len(data),
                             None if is_event else (codec.clock_rate if codec else 8000))
        relay = self.relay
        if is_event:
            self._dtmf_packet(timestamp, data)
        if self.muted:
            silenced = self._silenced(data, payload_type)
            if silenced is None:
                return
            data = silenced
        if relay.recorder is not None and not is_event:
            relay.recorder.add(self.name, timestamp, ssrc, data, self._encoding(payload_type))
        peer = self.peer
        if peer._local_busy:
            return
        destination = peer.destination
        if destination is not None:
            if peer._rtp.send(data, destination):
                peer.sent_packets += 1
                peer.sent_octets += len(data)

    def _may_latch(self, source: Address, data: bytes) -> bool:
        """Rules 1 and 2: whether a packet from an address other than the latched one counts."""
        if not source[1]:
            # Port 0: a raw-socket sender (sipp's pcap player) that cannot be answered.
            # Forwarded while nothing is latched, never latched to.
            return self.latched is None
        try:
            payload_bounds(data)  # only a well-formed RTP header counts towards a latch
        except RtpError:
            return False
        if self.latched is None:
            self.latched = self.destination = source
            log.debug("relay leg {leg} latched to {source}", leg=self.name, source=source)
            return True
        if source == self._candidate:
            self._candidate_count += 1
        else:
            self._candidate, self._candidate_count = source, 1
        if self._candidate_count < self.relay.options.relatch_packets:
            return False
        log.info("relay leg {leg} re-latched from {old} to {source}", leg=self.name, old=self.latched, source=source)
        self.latched = self.destination = source
        self.rtcp_latched = None
        self._candidate, self._candidate_count = None, 0
        return True

    def _on_rtcp_port(self, data: bytes, source: Address) -> None:
        if source != self.rtcp_latched and self.rtcp_latched is not None:
            return
        if self._on_rtcp(data, source) and self.rtcp_latched is None:
            self.rtcp_latched = source  # the first well-formed RTCP latches, as RTP does

    def _on_rtcp(self, data: bytes, source: Address) -> bool:
        """Forward one RTCP datagram to the peer; False if it is not well-formed RTCP."""
        try:
            packets = parse_rtcp(data)
        except RtpError:
            return False
        now = time.monotonic()
        peer = self.peer
        for packet in packets:
            if not isinstance(packet, RtcpReport):
                continue
            if packet.blocks:
                block = packet.blocks[0]
                self.remote_report = RemoteReport.from_block(block, round_trip_ms=self._round_trip(block, now))
            if packet.sender is not None:
                # Remember when this SR went on to the peer's phone: its RR will echo the
                # NTP time (LSR) and how long it held it (DLSR), RFC 3550 §6.4.1.
                peer._sr_forwarded[packet.sender.ntp_middle] = now
                if len(peer._sr_forwarded) > 8:
                    del peer._sr_forwarded[next(iter(peer._sr_forwarded))]
        destination = peer.rtcp_destination
        if destination is not None:
            (peer._rtp if peer.rtcp_mux else peer._rtcp).send(data, destination)
        return True

    def _round_trip(self, block: ReportBlock, now: float) -> float | None:
        """The round trip between pbxd and this leg's phone, from an RR about an SR we forwarded to it."""
        forwarded = self._sr_forwarded.get(block.last_sr) if block.last_sr else None
        if forwarded is None:
            return None
        return max(0.0, (now - forwarded - block.delay_since_last_sr / 65536) * 1000)

    @property
    def rtcp_destination(self) -> Address | None:
        if self.rtcp_mux:
            return self.destination
        if self.rtcp_latched is not None:
            return self.rtcp_latched
        if self.latched is not None and self.remote_rtcp is None:
            return (self.latched[0], self.latched[1] + 1)
        return self.remote_rtcp

    def _dtmf_packet(self, timestamp: int, data: bytes) -> None:
        try:
            start, end = payload_bounds(data)
            digits = self.dtmf.feed(timestamp, data[start:end])
        except RtpError:
            return
        for digit in digits:
            self.relay._digit(self, digit)

    def _encoding(self, payload_type: int) -> str:
        codec = self.codecs.get(payload_type)
        if codec is not None:
            return codec.name.lower()
        static = STATIC_PAYLOAD_TYPES.get(payload_type)
        return static[0].lower() if static else ""

    def _silenced(self, data: bytes, payload_type: int) -> bytes | None:
        codec = g711.CODECS.get(self._encoding(payload_type))
        if codec is None:
            return None
        try:
            start, end = payload_bounds(data)
        except RtpError:
            return None
        return data[:start] + bytes([codec[2]]) * (end - start) + data[end:]

    # -- control -------------------------------------------------------------------------------------

    def mute(self) -> None:
        """Silence what this leg's phone says (the peer hears silence)."""
        self.muted = True

    def unmute(self) -> None:
        self.muted = False

    def _audio_codec(self) -> tuple[int, Callable[[np.ndarray], np.ndarray]]:
        for payload, codec in self.codecs.items():
            law = g711.CODECS.get(codec.name.lower())
            if law is not None:
                return payload, law[1]
        if not self.codecs:
            return 0, g711.ulaw_encode  # nothing negotiated yet: PCMU, the RTP/AVP default
        raise ValueError(f"relay leg {self.name} has no G.711 codec to play audio in")

    def play(self, source: AudioSource, *, loop: bool = False) -> defer.Deferred[None]:
        """Send ``source`` into this leg (its phone hears it); fires when done, or on ``stop_playing``.

        One playback at a time: a new one replaces the current one.
        """
        payload_type, encode = self._audio_codec()
        self.stop_playing()
        done: defer.Deferred[None] = defer.Deferred()
        frames = source.frames()

        def tick(count: int) -> None:
            nonlocal frames
            frame = next(frames, None)
            if frame is None and loop:
                frames = source.frames()
                frame = next(frames, None)
            if frame is None:
                self.stop_playing()
                return
            self._send_local(payload_type, encode(frame).tobytes(), FRAME_SAMPLES * count, marker=False)

        self._player = LoopingCall.withCount(tick)
        self._player.clock = self.relay.clock
        self._local_busy += 1
        self._restart_local()
        finished = self._player.start(FRAME_MS / 1000, now=True)
        finished.addBoth(lambda _: (self._done_local(), done.callback(None)))
        return done

    def stop_playing(self) -> None:
        player, self._player = self._player, None
        if player is not None and player.running:
            player.stop()

    @property
    def playing(self) -> bool:
        return self._player is not None

    def send_dtmf(self, digits: str, duration_ms: int = 100, gap_ms: int = 60) -> defer.Deferred[None]:
        """Send digits into this leg as RFC 4733 events, paced on the clock; fires when all are sent."""
        if self.event_payload is None:
            raise ValueError(f"relay leg {self.name} negotiated no telephone-event")
        if not digits or any(digit.upper() not in DIGITS for digit in digits):
            raise ValueError(f"not DTMF digits: {digits!r}")
        clock: IReactorTime = self.relay.clock
        packet_gap = FRAME_MS / 1000
        self._local_busy += 1
        self._restart_local()
        done: defer.Deferred[None] = defer.Deferred()
        at = 0.0
        for digit in digits:
            stream = self._local
            start_timestamp = (stream.timestamp + round(at * g711.SAMPLE_RATE)) & 0xFFFFFFFF
            packets = dtmf_packets(digit, payload_type=self.event_payload, ssrc=stream.ssrc, sequence=0,
                                   timestamp=start_timestamp, duration_ms=duration_ms)
            for packet in packets:
                clock.callLater(at, self._send_event, packet)
                at += packet_gap
            at += gap_ms / 1000
        stream_end = round(at * g711.SAMPLE_RATE)

        def finish() -> None:
            self._local.timestamp = (self._local.timestamp + stream_end) & 0xFFFFFFFF
            self._done_local()
            done.callback(None)

        clock.callLater(at, finish)
        return done

    def _send_event(self, packet: RtpPacket) -> None:
        stream = self._local
        stream.sequence = (stream.sequence + 1) & 0xFFFF
        self._send_datagram(attrs.evolve(packet, sequence=stream.sequence).to_bytes())

    def _restart_local(self) -> None:
        # Advance the timestamp by the time since the last local packet, so a
        # receiver sees a gap of the right length rather than a jump backwards.
        stream, now = self._local, self.relay.clock.seconds()
        if stream.last_sent is not None:
            elapsed = max(0, round((now - stream.last_sent) * g711.SAMPLE_RATE))
            stream.timestamp = (stream.timestamp + elapsed) & 0xFFFFFFFF
        stream.last_sent = now

    def _send_local(self, payload_type: int, payload: bytes, advance: int, marker: bool) -> None:
        stream = self._local
        stream.sequence = (stream.sequence + 1) & 0xFFFF
        stream.timestamp = (stream.timestamp + advance) & 0xFFFFFFFF
        stream.last_sent = self.relay.clock.seconds()
        self._send_datagram(RtpPacket(payload_type, stream.sequence, stream.timestamp, stream.ssrc,
                                      payload, marker).to_bytes())

    def _send_datagram(self, data: bytes) -> None:
        if self.destination is not None and not self.relay.closed:
            if self._rtp.send(data, self.destination):
                self.sent_packets += 1
                self.sent_octets += len(data)

    def _done_local(self) -> None:
        self._local_busy = max(0, self._local_busy - 1)
        self._local.last_sent = self.relay.clock.seconds()

    # -- figures -----------------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Per-leg quality: what the phone sent us, what we sent it, and its own RTCP view."""
        received = self.received.snapshot()
        report = self.remote_report
        loss = max(self.received.loss_fraction, report.fraction_lost if report else 0.0)
        jitter = max(self.received.jitter_ms, report.jitter_ms if report else 0.0)
        codec = next((c.name for c in self.codecs.values() if not c.is_auxiliary), "pcmu")
        return {
            "port": self.port,
            "remote": list(self.destination) if self.destination else None,
            "latched": self.latched is not None,
            "received": received,
            "sent": {"packets": self.sent_packets, "octets": self.sent_octets},
            "rtcp": attrs.asdict(report) if report else None,
            "mos": mos(loss, jitter, report.round_trip_ms if report else None, codec),
        }

    def _close(self) -> list[defer.Deferred[None]]:
        self.stop_playing()
        return [self._rtp.close(), self._rtcp.close()]


def is_ip_address(host: str) -> bool:
    """Whether ``host`` is an IPv4 or IPv6 address literal (not a name)."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


# -- the relay ----------------------------------------------------------------------------------------


class MediaRelay:
    """The relay of one call: legs ``a`` and ``b``, their ports, timeout, DTMF events and recording.

    ``on_dtmf(leg, digit)`` is called for each digit a phone sends;
    ``on_timeout()`` once when the media stopped (see the module docstring).
    Open with ``MediaRelay.open``; ``close`` releases everything, once.
    """

    def __init__(self, reactor: Any, pool: PortPool, options: RelayOptions, clock: IReactorTime | None = None) -> None:
        self.reactor = reactor
        self.clock: Any = clock or reactor  # timers: playback pacing, timeout, recording flushes
        self.pool = pool
        self.options = options
        self.legs: list[RelayLeg] = []
        self.recorder: Recorder | None = None
        self.on_dtmf: Callable[[RelayLeg, DtmfDigit], None] | None = None
        self.on_timeout: Callable[[], None] | None = None
        self.on_hold = False
        self.closed = False
        self._watch: LoopingCall | None = None
        self._quiet_since = 0.0

    @classmethod
    def open(cls, reactor: Any, pool: PortPool, options: RelayOptions = RelayOptions(), *,
             on_dtmf: Callable[[RelayLeg, DtmfDigit], None] | None = None,
             on_timeout: Callable[[], None] | None = None, clock: IReactorTime | None = None) -> MediaRelay:
        """Bind two legs (four ports); raises ``PortsExhausted`` having released whatever it took.

        ``reactor`` provides the sockets; ``clock`` (default: the reactor) the timers.
        """
        relay = cls(reactor, pool, options, clock)
        relay.on_dtmf, relay.on_timeout = on_dtmf, on_timeout
        try:
            for name in ("a", "b"):
                relay.legs.append(relay._bind_leg(name))
        except Exception:
            relay.close()
            raise
        a, b = relay.legs
        a.peer, b.peer = b, a
        # The watch also ends DTMF events whose end packets were all lost, so it runs without a timeout too.
        relay._watch = LoopingCall(relay._check_timeout)
        relay._watch.clock = relay.clock
        relay._quiet_since = relay.clock.seconds()
        relay._watch.start(min(1.0, options.timeout / 4) if options.timeout else 1.0, now=False)
        return relay

    def _bind_leg(self, name: str) -> RelayLeg:
        def listen_pair(port: int) -> tuple[RelaySocket, RelaySocket]:
            rtp = _listen(self.reactor, port, self.options)
            try:
                rtcp = _listen(self.reactor, port + 1, self.options)
            except Exception:
                rtp.close()
                raise
            return rtp, rtcp

        port, (rtp, rtcp) = self.pool.bind(listen_pair)
        return RelayLeg(self, name, port, rtp, rtcp)

    @property
    def a(self) -> RelayLeg:
        return self.legs[0]

    @property
    def b(self) -> RelayLeg:
        return self.legs[1]

    def set_hold(self, on_hold: bool) -> None:
        """A held call sends no media by design: the timeout waits while it is held."""
        self.on_hold = on_hold
        self._quiet_since = self.clock.seconds()

    def _check_timeout(self) -> None:
        now = self.clock.seconds()
        quiet = True
        for leg in self.legs:
            if leg.received.packets != leg._checked_packets:
                leg._checked_packets = leg.received.packets
                quiet = False
            else:  # nothing from this phone since the last check: a DTMF event without end is over
                for digit in leg.dtmf.flush():
                    self._digit(leg, digit)
        if not quiet or self.on_hold:
            self._quiet_since = now
            return
        timeout = self.options.timeout
        if timeout is not None and now - self._quiet_since >= timeout:
            log.info("relay {ports}: no RTP for {seconds}s", ports=[leg.port for leg in self.legs], seconds=timeout)
            self._stop_watch()
            if self.on_timeout is not None:
                self.on_timeout()

    def _digit(self, leg: RelayLeg, digit: DtmfDigit) -> None:
        log.debug("DTMF {digit} on relay leg {leg}", digit=digit.digit, leg=leg.name)
        if self.on_dtmf is not None:
            self.on_dtmf(leg, digit)

    # -- recording -----------------------------------------------------------------------------------

    def start_recording(self, path: Path | str, mode: str = "stereo") -> Recorder:
        """Record both phones to a WAV file (leg a left, b right; or mixed mono)."""
        from pbxd.media.recorder import Recorder

        if self.recorder is not None:
            raise ValueError("already recording")
        self.recorder = Recorder.start(Path(path), self.clock, mode=mode, channels=("a", "b"))
        return self.recorder

    def stop_recording(self) -> Recorder | None:
        recorder, self.recorder = self.recorder, None
        if recorder is not None:
            recorder.stop()
        return recorder

    # -- the end ---------------------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        return {leg.name: leg.stats() for leg in self.legs}

    def _stop_watch(self) -> None:
        watch, self._watch = self._watch, None
        if watch is not None and watch.running:
            watch.stop()

    def close(self) -> defer.Deferred[None]:
        """Stop everything and give the ports back; fires when the sockets are closed. Idempotent."""
        if self.closed:
            return defer.succeed(None)
        self.closed = True
        self._stop_watch()
        self.stop_recording()
        closing: list[defer.Deferred[None]] = []
        for leg in self.legs:
            closing += leg._close()
            self.pool.release(leg.port)
        return defer.gatherResults(closing).addCallback(lambda _: None)
