"""Conference mixing: each participant hears the others, never itself."""

from __future__ import annotations

import numpy as np

from pbxd.media.mixer import mix


def frame(value: int, samples: int = 160) -> np.ndarray:
    return np.full(samples, value, dtype=np.int16)


def test_each_hears_everyone_but_itself() -> None:
    out = mix({"a": frame(100), "b": frame(20), "c": frame(3)})
    assert out["a"][0] == 23 and out["b"][0] == 103 and out["c"][0] == 120
    assert all(f.dtype == np.int16 and f.shape == (160,) for f in out.values())


def test_silent_participants_and_listeners_hear_all() -> None:
    out = mix({"a": frame(100), "b": None}, listeners=["l"])
    assert out["a"][0] == 0 and out["b"][0] == 100 and out["l"][0] == 100


def test_clipping_not_wrapping() -> None:
    out = mix({"a": frame(30000), "b": frame(30000), "c": frame(-5)})
    assert out["c"][0] == 32767
    out = mix({"a": frame(-30000), "b": frame(-30000), "c": frame(0)})
    assert out["c"][0] == -32768


def test_short_and_long_frames_fit() -> None:
    out = mix({"a": frame(5, 80), "b": frame(7, 200)})
    assert out["b"][:80].tolist() == [5] * 80 and out["b"][80:].tolist() == [0] * 80
    assert out["a"].tolist() == [7] * 160


def test_two_party_is_a_swap_and_nobody_is_silence() -> None:
    a, b = np.arange(160, dtype=np.int16), -np.arange(160, dtype=np.int16)
    out = mix({"a": a, "b": b})
    assert (out["a"] == b).all() and (out["b"] == a).all()
    assert mix({}) == {}
