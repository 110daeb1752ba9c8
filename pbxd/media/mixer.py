"""N-party mixing for conferences: everyone hears everyone but themselves.

A pure function over one 20 ms frame per participant (any equal length of
int16 samples): the sum of all frames is computed once in 32 bits, and each
participant gets the sum minus its own frame, clipped to 16 bits. A
participant with nothing to say this frame passes ``None`` (it still hears
the others); a listener-only participant is simply not in ``talking``.
"""

from __future__ import annotations

from typing import Hashable, Iterable, Mapping, TypeVar

import numpy as np
import numpy.typing as npt

K = TypeVar("K", bound=Hashable)
Frame = npt.NDArray[np.int16]


def mix(talking: Mapping[K, Frame | None], listeners: Iterable[K] = (), samples: int = 160) -> dict[K, Frame]:
    """The frame each participant hears: everyone else's audio summed and clipped.

    ``talking`` maps participants to their frame (or None when silent);
    ``listeners`` names more participants who hear everyone but send nothing.
    Frames shorter than ``samples`` are padded with silence, longer ones cut.
    """
    frames = {key: _fit(frame, samples) for key, frame in talking.items() if frame is not None}
    total = np.zeros(samples, dtype=np.int32)
    for frame in frames.values():
        total += frame
    out: dict[K, Frame] = {}
    for key in [*talking, *listeners]:
        own = frames.get(key)
        heard = total - own if own is not None else total
        out[key] = np.clip(heard, -32768, 32767).astype(np.int16)
    return out


def _fit(frame: Frame, samples: int) -> npt.NDArray[np.int32]:
    data = np.asarray(frame, dtype=np.int32)[:samples]
    if len(data) < samples:
        data = np.concatenate([data, np.zeros(samples - len(data), dtype=np.int32)])
    return data
