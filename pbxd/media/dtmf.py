"""RFC 4733 telephone-events: DTMF digits read from RTP and written into it.

An event is carried by a run of packets that all share the RTP timestamp of
the event's start (RFC 4733 §2.5.1.2); the duration grows packet by packet,
and the last packet has the E bit, sent three times (§2.5.1.4). The
``DtmfDetector`` turns such a run into exactly one ``DtmfDigit``:

- on the first packet with the E bit; the retransmitted end packets and any
  late packet of the same event (same timestamp) are duplicates and ignored;
- if every end packet was lost, when the next event starts (a new timestamp)
  or when the owner calls ``flush`` (the relay does so after a quiet spell),
  so a digit is late rather than lost.

``dtmf_packets`` makes the packets of one digit for ``send_dtmf``, and
``digit_from_info`` reads the SIP INFO bodies phones send instead of RTP
events (application/dtmf-relay and application/dtmf).
"""

from __future__ import annotations

import struct

import attrs

from pbxd.media.rtp import RtpError, RtpPacket

DIGITS = "0123456789*#ABCD"
FLASH = 16
_EVENT = struct.Struct("!BBH")  # event | E R volume | duration


@attrs.frozen
class TelephoneEvent:
    """The payload of one telephone-event packet (RFC 4733 §2.3)."""

    event: int
    end: bool
    volume: int  # 0..63, as -dBm0
    duration: int  # in RTP timestamp units

    @classmethod
    def parse(cls, payload: bytes) -> TelephoneEvent:
        """The first event of a payload (RFC 2198 redundancy is not used for DTMF here)."""
        if len(payload) < 4:
            raise RtpError(f"telephone-event payload of {len(payload)} octets")
        event, flags, duration = _EVENT.unpack_from(payload)
        return cls(event, bool(flags & 0x80), flags & 0x3F, duration)

    def to_bytes(self) -> bytes:
        return _EVENT.pack(self.event, (0x80 if self.end else 0) | (self.volume & 0x3F), self.duration & 0xFFFF)

    @property
    def digit(self) -> str | None:
        """'0'-'9', '*', '#', 'A'-'D', or None for another event (flash, tones)."""
        return DIGITS[self.event] if self.event < len(DIGITS) else None


@attrs.frozen
class DtmfDigit:
    """A detected digit: ``duration`` in ms (0 when its end was never seen), ``timestamp`` its RTP start."""

    digit: str
    duration: int
    timestamp: int
    ended: bool = True


@attrs.define
class DtmfDetector:
    """Telephone-event packets in, one ``DtmfDigit`` per event out (see the module docstring)."""

    clock_rate: int = 8000
    _current: int | None = None  # timestamp of the event in progress (no end seen yet)
    _current_event: TelephoneEvent | None = None
    _done: list[int] = attrs.Factory(list)  # timestamps of recent events already reported

    def feed(self, timestamp: int, payload: bytes) -> list[DtmfDigit]:
        """One telephone-event packet; returns the digits it completes (0, 1 or 2)."""
        event = TelephoneEvent.parse(payload)
        if timestamp in self._done:
            return []  # a retransmitted end packet, or a straggler of a reported event
        out: list[DtmfDigit] = []
        if self._current is not None and timestamp != self._current:
            out += self.flush()
        self._current, self._current_event = timestamp, event
        if event.end:
            out += self._report(ended=True)
        return out

    def flush(self) -> list[DtmfDigit]:
        """Report an event whose end packets were all lost."""
        if self._current is None:
            return []
        return self._report(ended=False)

    def _report(self, ended: bool) -> list[DtmfDigit]:
        timestamp, event = self._current, self._current_event
        assert timestamp is not None and event is not None
        self._current = self._current_event = None
        self._done = [*self._done[-7:], timestamp]  # enough to catch late duplicates
        if event.digit is None:
            return []
        duration = event.duration * 1000 // self.clock_rate if ended else 0
        return [DtmfDigit(event.digit, duration, timestamp, ended)]


def dtmf_packets(
    digit: str,
    *,
    payload_type: int,
    ssrc: int,
    sequence: int,
    timestamp: int,
    duration_ms: int = 100,
    packet_ms: int = 20,
    volume: int = 10,
    clock_rate: int = 8000,
) -> list[RtpPacket]:
    """The packets of one digit, to be sent ``packet_ms`` apart (the last three at once is fine too).

    The first has the marker bit (§2.5.1.3); all carry ``timestamp``, the
    event's start; durations grow by one packet each; the final duration is
    sent with the E bit three times (§2.5.1.4). Sequence numbers go up by one
    per packet, retransmissions included.
    """
    if len(digit) != 1 or digit.upper() not in DIGITS:
        raise ValueError(f"not a DTMF digit: {digit!r}")
    event = DIGITS.index(digit.upper())
    step = clock_rate * packet_ms // 1000
    total = max(step, clock_rate * duration_ms // 1000)
    durations = list(range(step, total, step)) + [total]
    payloads = [TelephoneEvent(event, False, volume, d) for d in durations[:-1]]
    payloads += [TelephoneEvent(event, True, volume, total)] * 3
    return [
        RtpPacket(payload_type, (sequence + index) & 0xFFFF, timestamp, ssrc, payload.to_bytes(), marker=index == 0)
        for index, payload in enumerate(payloads)
    ]


def digit_from_info(content_type: str, body: bytes) -> DtmfDigit | None:
    """The digit of a SIP INFO body, or None if it carries none.

    ``application/dtmf-relay`` is ``Signal=5`` and ``Duration=160`` (ms) on
    lines of their own (the de-facto format of Cisco and most phones);
    ``application/dtmf`` is the digit alone. Flash (``Signal=16``) and
    unknown signals give None.
    """
    kind = content_type.split(";")[0].strip().lower()
    text = body.decode("utf-8", "replace")
    if kind == "application/dtmf":
        signal, duration = text.strip(), "0"
    elif kind == "application/dtmf-relay":
        fields = {}
        for line in text.splitlines():
            name, sep, value = line.partition("=")
            if sep:
                fields[name.strip().lower()] = value.strip()
        signal, duration = fields.get("signal", ""), fields.get("duration", "0")
    else:
        return None
    if signal.isdigit() and len(signal) <= 2 and int(signal) < len(DIGITS):
        signal = DIGITS[int(signal)] if int(signal) >= 10 else signal
    if len(signal) != 1 or signal.upper() not in DIGITS:
        return None
    return DtmfDigit(signal.upper(), int(duration) if duration.isdigit() and len(duration) < 7 else 0, 0)
