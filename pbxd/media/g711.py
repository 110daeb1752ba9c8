"""G.711 µ-law and A-law (ITU-T G.711, 1988) as numpy lookup tables.

Decoding is a 256-entry table per law; encoding is a 65536-entry table indexed
by the 16-bit sample, so both directions are one ``take`` over an array. The
tables are computed once from the segment arithmetic of the Recommendation
(the same arithmetic as its reference C implementation in ITU-T G.191), which
yields exactly the decision and reconstruction values of G.711 Tables 1a/2a:
µ-law 0xFF → 0 and 0x00 → -32124, A-law 0xD5 → +8 and 0x55 → -8, scaled to
16-bit linear PCM.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

SAMPLE_RATE = 8000
# The code of digital silence: a µ-law 0 (positive zero) and an A-law +8 (the
# smallest positive step; A-law has no zero). Mute writes these.
ULAW_SILENCE = 0xFF
ALAW_SILENCE = 0xD5

Samples = npt.NDArray[np.int16]
Codes = npt.NDArray[np.uint8]


def _ulaw_decode_table() -> Samples:
    code = ~np.arange(256, dtype=np.int32) & 0xFF
    exponent = (code >> 4) & 0x07
    mantissa = code & 0x0F
    magnitude = (((mantissa << 3) + 0x84) << exponent) - 0x84
    return np.where(code & 0x80, -magnitude, magnitude).astype(np.int16)


def _alaw_decode_table() -> Samples:
    code = np.arange(256, dtype=np.int32) ^ 0x55
    exponent = (code >> 4) & 0x07
    mantissa = code & 0x0F
    magnitude = np.where(exponent == 0, (mantissa << 4) + 8, ((mantissa << 4) + 0x108) << np.maximum(exponent - 1, 0))
    return np.where(code & 0x80, magnitude, -magnitude).astype(np.int16)


def _ulaw_encode_table() -> Codes:
    pcm = np.arange(-32768, 32768, dtype=np.int32)
    sign = np.where(pcm < 0, 0x80, 0)
    # Bias 0x84 (132) and the clip at 32635 keep the biased magnitude within 15 bits.
    magnitude = np.minimum(np.abs(pcm), 32635) + 0x84
    segment = magnitude >> 7  # 1..255; the exponent is the position of its highest bit
    exponent = np.zeros_like(segment)
    for bit in range(1, 8):
        exponent += segment >= (1 << bit)
    mantissa = (magnitude >> (exponent + 3)) & 0x0F
    code = ~(sign | (exponent << 4) | mantissa) & 0xFF
    return _by_unsigned_index(code.astype(np.uint8))


def _alaw_encode_table() -> Codes:
    pcm = np.arange(-32768, 32768, dtype=np.int32) >> 3  # A-law works on 13 bits
    mask = np.where(pcm >= 0, 0xD5, 0x55)
    magnitude = np.where(pcm >= 0, pcm, -pcm - 1)
    segment_ends = np.array([0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF])
    segment = np.searchsorted(segment_ends, magnitude, side="left")
    shift = np.where(segment < 2, 1, segment)
    value = (np.minimum(segment, 7) << 4) | ((magnitude >> shift) & 0x0F)
    code = np.where(segment >= 8, 0x7F, value) ^ mask
    return _by_unsigned_index(code.astype(np.uint8))


def _by_unsigned_index(table: Codes) -> Codes:
    # Built for samples -32768..32767 in order; reorder so that the sample's
    # bit pattern read as uint16 is the index (0..32767 first, then the negatives).
    return np.concatenate([table[32768:], table[:32768]])


ULAW_DECODE: Samples = _ulaw_decode_table()
ALAW_DECODE: Samples = _alaw_decode_table()
ULAW_ENCODE: Codes = _ulaw_encode_table()
ALAW_ENCODE: Codes = _alaw_encode_table()
for _table in (ULAW_DECODE, ALAW_DECODE, ULAW_ENCODE, ALAW_ENCODE):
    _table.setflags(write=False)


def ulaw_decode(data: bytes | Codes) -> Samples:
    """µ-law codes (bytes or uint8 array) to 16-bit samples."""
    return ULAW_DECODE[_codes(data)]


def alaw_decode(data: bytes | Codes) -> Samples:
    """A-law codes (bytes or uint8 array) to 16-bit samples."""
    return ALAW_DECODE[_codes(data)]


def ulaw_encode(samples: npt.ArrayLike) -> Codes:
    """16-bit samples to µ-law codes; ``.tobytes()`` gives the RTP payload."""
    return ULAW_ENCODE[_indexes(samples)]


def alaw_encode(samples: npt.ArrayLike) -> Codes:
    """16-bit samples to A-law codes; ``.tobytes()`` gives the RTP payload."""
    return ALAW_ENCODE[_indexes(samples)]


# RTP payload types and encoding names (RFC 3551 §4.5.14) -> (decode, encode, silence code).
CODECS = {
    "pcmu": (ulaw_decode, ulaw_encode, ULAW_SILENCE),
    "pcma": (alaw_decode, alaw_encode, ALAW_SILENCE),
}


def _codes(data: bytes | Codes) -> Codes:
    if isinstance(data, (bytes, bytearray, memoryview)):
        return np.frombuffer(data, dtype=np.uint8)
    return np.asarray(data, dtype=np.uint8)


def _indexes(samples: npt.ArrayLike) -> npt.NDArray[np.uint16]:
    return np.asarray(samples, dtype=np.int16).view(np.uint16)
