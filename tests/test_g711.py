"""G.711 tables against the Recommendation's values, and round trips."""

from __future__ import annotations

import numpy as np
import pytest

from pbxd.media import g711

CODES = np.arange(256, dtype=np.uint8)


@pytest.mark.parametrize(
    ("code", "sample"),
    [(0xFF, 0), (0x7F, 0), (0x00, -32124), (0x80, 32124), (0xFE, 8), (0x7E, -8), (0xF0, 120), (0xEF, 132)],
)
def test_ulaw_known_values(code: int, sample: int) -> None:
    assert g711.ULAW_DECODE[code] == sample


@pytest.mark.parametrize(
    ("code", "sample"),
    [(0xD5, 8), (0x55, -8), (0xAA, 32256), (0x2A, -32256), (0xD4, 24), (0x54, -24), (0xC5, 264)],
)
def test_alaw_known_values(code: int, sample: int) -> None:
    assert g711.ALAW_DECODE[code] == sample


def test_silence_codes() -> None:
    assert g711.ulaw_encode([0]).tobytes() == bytes([g711.ULAW_SILENCE])
    assert g711.alaw_encode([0]).tobytes() == bytes([g711.ALAW_SILENCE])


def test_alaw_code_round_trip_is_exact() -> None:
    assert (g711.alaw_encode(g711.alaw_decode(CODES)) == CODES).all()


def test_ulaw_code_round_trip_exact_but_negative_zero() -> None:
    back = g711.ulaw_encode(g711.ulaw_decode(CODES))
    # 0x7F is -0, decoded to 0 like 0xFF, which is what 0 encodes to.
    assert [c for c in range(256) if back[c] != c] == [0x7F]
    assert (g711.ulaw_decode(back) == g711.ulaw_decode(CODES)).all()


@pytest.mark.parametrize("law", ["pcmu", "pcma"])
def test_every_sample_decodes_within_half_a_step(law: str) -> None:
    decode, encode, _ = g711.CODECS[law]
    samples = np.arange(-32768, 32768, dtype=np.int16)
    levels = np.unique(decode(CODES).astype(np.int32))
    decoded = decode(encode(samples)).astype(np.int32)
    # The level nearest the sample and its neighbours bound the quantization error.
    index = np.clip(np.searchsorted(levels, samples.astype(np.int32)), 1, len(levels) - 1)
    step = levels[index] - levels[index - 1]
    inside = (samples >= levels[0]) & (samples <= levels[-1])
    assert (np.abs(decoded - samples)[inside] <= step[inside]).all()
    # Monotonic: a louder sample never encodes to a quieter level.
    assert (np.diff(decoded) >= 0).all()


def test_bytes_in_and_arrays_out() -> None:
    payload = bytes([0xFF, 0x00, 0x80])
    assert g711.ulaw_decode(payload).tolist() == [0, -32124, 32124]
    assert g711.ulaw_encode(g711.ulaw_decode(payload)).tobytes() == payload
    assert g711.alaw_decode(b"").shape == (0,)
