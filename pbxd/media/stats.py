"""Per-direction RTP statistics (RFC 3550 Appendix A) and an estimated MOS (ITU-T G.107).

``StreamStats`` follows one direction of a leg: packets and octets, the
extended highest sequence number with wrap-around (A.1), expected and lost
packets (A.3) and the interarrival jitter (A.8) in timestamp units of the
stream's clock rate. The relay calls ``update`` per packet with the arrival
time in seconds; ``snapshot`` gives the figures in ms and counts.

``mos`` is the E-model of G.107 simplified the usual way: R = 93.2 - Id - Ie,eff
with Id from the one-way delay and Ie,eff from the packet loss (G.113
Appendix I values for the codec), mapped to a MOS by G.107 Annex B.
"""

from __future__ import annotations

import attrs

from pbxd.media.rtp import ReportBlock

_SEQUENCE_MOD = 1 << 16
_MAX_DROPOUT = 3000  # RFC 3550 A.1: a jump ahead larger than this is a restart, not loss
_MAX_MISORDER = 100


@attrs.define
class StreamStats:
    """One direction of one leg (RFC 3550 A.1, A.3, A.8)."""

    packets: int = 0
    octets: int = 0  # RTP payload and header, as datagrams
    ssrc: int | None = None
    _base_sequence: int = 0
    _max_sequence: int = 0
    _cycles: int = 0
    _bad_sequence: int | None = None
    _transit: float | None = None
    _jitter: float = 0.0  # in timestamp units
    _clock_rate: int = 8000
    _received_earlier: int = 0  # packets counted before the current sequence space began

    def update(self, sequence: int, timestamp: int, ssrc: int, arrival: float, size: int,
               clock_rate: int | None = 8000) -> None:
        """One packet. ``clock_rate`` None (an event packet, say) leaves the jitter alone."""
        self.packets += 1
        self.octets += size
        if ssrc != self.ssrc:
            self._restart(ssrc, sequence)
        else:
            self._sequence(sequence)
        if clock_rate is None:
            return
        if clock_rate != self._clock_rate:
            self._clock_rate, self._transit, self._jitter = clock_rate, None, 0.0
        # A.8: transit time in timestamp units; its change between packets is the jitter sample.
        transit = arrival * clock_rate - timestamp
        if self._transit is not None:
            delta = abs(transit - self._transit)
            if delta < clock_rate * 10:  # a timestamp jump (new talkspurt base, DTMF) is not jitter
                self._jitter += (delta - self._jitter) / 16
        self._transit = transit

    def _restart(self, ssrc: int, sequence: int) -> None:
        # A new source (a phone restarting its stream after hold): counting starts over
        # so loss is not computed across two unrelated sequence spaces.
        self.ssrc = ssrc
        self._base_sequence = self._max_sequence = sequence
        self._cycles = 0
        self._bad_sequence = None
        self._transit = None
        self._received_earlier = self.packets - 1

    def _sequence(self, sequence: int) -> None:
        delta = (sequence - self._max_sequence) % _SEQUENCE_MOD
        if 0 < delta < _MAX_DROPOUT:
            if sequence < self._max_sequence:
                self._cycles += _SEQUENCE_MOD
            self._max_sequence = sequence
        elif delta <= _SEQUENCE_MOD - _MAX_MISORDER:
            if delta == 0:
                return  # a duplicate: counted as received, as A.3 does
            # A big jump: twice in a row from the same place means the sender restarted.
            if self._bad_sequence == sequence:
                self._base_sequence = self._max_sequence = sequence
                self._cycles = 0
                self._received_earlier = self.packets - 1
                self._bad_sequence = None
            else:
                self._bad_sequence = (sequence + 1) % _SEQUENCE_MOD
                self._received_earlier += 1  # not part of this sequence space (yet)
        # else: a late, reordered packet; nothing to update

    @property
    def extended_max(self) -> int:
        return self._cycles + self._max_sequence

    @property
    def expected(self) -> int:
        if self.ssrc is None:
            return 0
        return self.extended_max - self._base_sequence + 1

    @property
    def lost(self) -> int:
        """Packets expected but not received since the current source started (never negative)."""
        return max(0, self.expected - (self.packets - self._received_earlier))

    @property
    def loss_fraction(self) -> float:
        expected = self.expected
        return self.lost / expected if expected else 0.0

    @property
    def jitter_ms(self) -> float:
        return self._jitter * 1000 / self._clock_rate

    def snapshot(self) -> dict[str, float | int]:
        return {
            "packets": self.packets,
            "octets": self.octets,
            "lost": self.lost,
            "loss": round(self.loss_fraction, 6),
            "jitter_ms": round(self.jitter_ms, 3),
        }


@attrs.frozen
class RemoteReport:
    """What a phone said in its last RTCP report block about the stream it receives."""

    fraction_lost: float  # 0..1
    cumulative_lost: int
    jitter_ms: float
    round_trip_ms: float | None = None

    @classmethod
    def from_block(cls, block: ReportBlock, clock_rate: int = 8000,
                   round_trip_ms: float | None = None) -> RemoteReport:
        return cls(block.fraction_lost / 256, max(0, block.cumulative_lost),
                   block.jitter * 1000 / clock_rate, round_trip_ms)


# G.113 Appendix I: equipment impairment Ie and packet-loss robustness Bpl.
# G.711 with packet loss concealment (what phones do) has Bpl 25.1.
CODEC_IMPAIRMENT = {"pcmu": (0.0, 25.1), "pcma": (0.0, 25.1), "g722": (0.0, 25.1), "g729": (11.0, 19.0)}


def r_factor(loss: float, one_way_delay_ms: float, codec: str = "pcmu") -> float:
    """The transmission rating R (G.107 §7) with default values but for delay and loss."""
    delay = max(0.0, one_way_delay_ms)
    delay_impairment = 0.024 * delay + (0.11 * (delay - 177.3) if delay > 177.3 else 0.0)
    ie, bpl = CODEC_IMPAIRMENT.get(codec.lower(), CODEC_IMPAIRMENT["pcmu"])
    loss_percent = 100 * min(max(loss, 0.0), 1.0)
    # Random loss (BurstR = 1): Ie,eff = Ie + (95 - Ie) * Ppl / (Ppl + Bpl), G.107 eq. 7-29.
    effective = ie + (95 - ie) * loss_percent / (loss_percent + bpl)
    return 93.2 - delay_impairment - effective


def mos_from_r(r: float) -> float:
    """G.107 Annex B: the estimated mean opinion score for an R value."""
    if r <= 0:
        return 1.0
    if r >= 100:
        return 4.5
    return 1 + 0.035 * r + r * (r - 60) * (100 - r) * 7e-6


def mos(loss: float, jitter_ms: float, round_trip_ms: float | None = None, codec: str = "pcmu") -> float:
    """Estimated MOS of a stream: loss as a fraction, jitter and round trip in ms.

    The one-way delay is half the round trip when known (else a LAN-like 20 ms),
    plus a jitter buffer of twice the jitter and 10 ms of packetization and codec.
    """
    delay = (round_trip_ms / 2 if round_trip_ms is not None else 20.0) + 2 * jitter_ms + 10.0
    return round(mos_from_r(r_factor(loss, delay, codec)), 2)
