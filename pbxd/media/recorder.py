"""Call recording to WAV: 8 kHz 16-bit, both phones, aligned in time, written as it goes.

The relay hands every G.711 packet it forwards to ``Recorder.add`` with the
name of the leg it came from. Each leg is a channel of a timeline that
starts when the recording starts:

- a packet's place is its RTP timestamp relative to the first packet of its
  stream (its SSRC), anchored at that first packet's arrival time; a new
  SSRC, or a timestamp more than a second away from the arrival time (a
  sender that jumped), anchors again at the arrival;
- what no packet covers is silence: gaps in a stream, a phone that is not
  sending (hold), a paused recording — so both channels stay aligned with
  each other and with the wall clock, and the file lasts as long as the call.

Every ``flush_interval`` (1 s) the samples older than ``hold_back`` (0.2 s,
room for late packets) are appended and the RIFF and data sizes in the
header are rewritten, so a crash loses at most the last second or so and
the file can be read while it grows. ``mode`` "stereo" puts the first
channel left and the second right; "mono" mixes them (clipped).

One file per call: a recording started again on a file that already holds
one (stopped from the console, then started; a later answer) continues it,
never truncates it. When this process wrote that recording, the new one
keeps its timeline, so the time it was stopped is silence, as a pause is;
otherwise (a file left by an earlier run) the audio continues right after
what the file holds. A file that is not a recording in the same format is
refused (``FileExistsError``), not overwritten.
"""

from __future__ import annotations

import contextlib
import errno
import os
import struct
import weakref
from pathlib import Path
from typing import Any, BinaryIO, Sequence

import numpy as np
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from pbxd.media import g711
from pbxd.media.rtp import RtpError, payload_bounds

log = Logger()

MODES = ("stereo", "mono")
_RATE = g711.SAMPLE_RATE
_TIMESTAMP_MOD = 1 << 32
_HEADER = struct.Struct("<4sI4s4sIHHIIHH4sI")
_RIFF_SIZE_AT, _DATA_SIZE_AT = 4, 40
_SILENCE_CHUNK = _RATE  # samples per write when a restart fills the stopped time

# The last recorder of each file, while its call keeps it: a restart on the
# same file continues that recorder's timeline.
_last_recorders: weakref.WeakValueDictionary[Path, Recorder] = weakref.WeakValueDictionary()


def wav_header(channels: int, data_bytes: int) -> bytes:
    """A canonical 44-byte PCM WAV header for 8 kHz 16-bit audio."""
    return _HEADER.pack(b"RIFF", 36 + data_bytes, b"WAVE", b"fmt ", 16, 1, channels, _RATE,
                        _RATE * 2 * channels, 2 * channels, 16, b"data", data_bytes)


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"recording mode must be one of {', '.join(MODES)}, got {mode!r}")


class _Channel:
    __slots__ = ("ssrc", "anchor_timestamp", "anchor_position", "buffer", "filled_to")

    def __init__(self, capacity: int) -> None:
        self.ssrc: int | None = None
        self.anchor_timestamp = 0
        self.anchor_position = 0
        self.buffer = np.zeros(capacity, dtype=np.int16)  # samples from the recorder's written position
        self.filled_to = 0  # absolute position just after the last sample placed


class Recorder:
    """One WAV file being written; see the module docstring.

    A write that fails (a full disk, an unplugged volume) ends the recording,
    not the call: the error is logged, ``failed`` says why, what was written
    stays a readable WAV up to the last header patch, and ``failures`` (all
    recorders of the process, for /metrics) counts it.
    """

    failures = 0

    def __init__(self, path: Path, file: BinaryIO, clock: Any, mode: str, channels: Sequence[str],
                 hold_back: float) -> None:
        _check_mode(mode)
        self.path = path
        self.mode = mode
        self._file = file
        self._clock = clock
        self._started = clock.seconds()
        self._hold_back = round(hold_back * _RATE)
        self._capacity = 10 * _RATE
        self._channels = {name: _Channel(self._capacity) for name in channels}
        self._written = 0  # samples per channel already in the file
        self.paused = False
        self.stopped = False
        self.failed: str | None = None
        self._flusher: LoopingCall | None = None
        self._unknown: set[str] = set()

    @classmethod
    def start(cls, path: Path, clock: Any, *, mode: str = "stereo", channels: Sequence[str] = ("a", "b"),
              flush_interval: float = 1.0, hold_back: float = 0.2) -> Recorder:
        """Create the file (and its directory), or continue the recording it holds (see the
        module docstring), and start the periodic flush on ``clock``."""
        _check_mode(mode)  # before the file is touched
        path.parent.mkdir(parents=True, exist_ok=True)
        key = path.absolute()
        previous = _last_recorders.get(key)
        if previous is not None and not previous.stopped:
            raise FileExistsError(errno.EEXIST, "being recorded already", str(path))
        # Read-write, created if missing, never truncated: an existing recording is continued.
        file = os.fdopen(os.open(path, os.O_RDWR | os.O_CREAT, 0o666), "r+b")
        recorder = cls(path, file, clock, mode, channels, hold_back)
        try:
            if not recorder._continue(previous):
                file.write(wav_header(recorder.file_channels, 0))
                file.flush()
        except OSError:
            with contextlib.suppress(OSError):  # closes even when the buffered header cannot be written
                file.close()
            raise
        _last_recorders[key] = recorder
        recorder._flusher = LoopingCall(recorder.flush)
        recorder._flusher.clock = clock
        recorder._flusher.start(flush_interval, now=False)
        log.info("recording to {path} ({mode})", path=str(path), mode=mode)
        return recorder

    def _continue(self, previous: Recorder | None) -> bool:
        """Take up the recording the file holds, if any: False for a new (empty) file."""
        file = self._file
        header = file.read(_HEADER.size)
        if not header:
            return False
        size = file.seek(0, 2)
        frame = 2 * self.file_channels
        ours = wav_header(self.file_channels, 0)
        # The same canonical header but for the two sizes (RIFF at 4, data at 40).
        if len(header) < _HEADER.size or header[:4] != ours[:4] or header[8:40] != ours[8:40]:
            raise FileExistsError(errno.EEXIST, f"holds something other than a {self.mode} recording;"
                                                " not overwritten", str(self.path))
        # What the header counts was flushed whole; anything after it is a torn write.
        counted = struct.unpack_from("<I", header, _DATA_SIZE_AT)[0]
        data_bytes = min(counted, size - _HEADER.size) // frame * frame
        file.truncate(_HEADER.size + data_bytes)
        file.seek(0, 2)
        self._written = data_bytes // frame
        now = self._clock.seconds()
        origin = previous._started if previous is not None and previous._clock is self._clock else now
        # The stopped time is silence; a file longer than the timeline (or of an earlier
        # run) continues right after its audio.
        self._started = min(origin, now - self._written / _RATE)
        self._write_silence(self._now_position() - self._written)
        log.info("recording {path}: continuing after {seconds:.1f}s", path=str(self.path),
                 seconds=self.duration)
        return True

    def _write_silence(self, count: int) -> None:
        """Append ``count`` silent frames, a second at a time, and patch the header."""
        if count <= 0:
            return
        silence = np.zeros(min(count, _SILENCE_CHUNK) * self.file_channels, dtype="<i2").tobytes()
        frame = 2 * self.file_channels
        while count > 0:
            chunk = min(count, _SILENCE_CHUNK)
            self._file.write(silence[:chunk * frame])
            self._written += chunk
            count -= chunk
        self._patch_header()

    def _patch_header(self) -> None:
        file = self._file
        file.seek(_RIFF_SIZE_AT)
        file.write(struct.pack("<I", 36 + self.data_bytes))
        file.seek(_DATA_SIZE_AT)
        file.write(struct.pack("<I", self.data_bytes))
        file.seek(0, 2)
        file.flush()

    @property
    def file_channels(self) -> int:
        return 2 if self.mode == "stereo" else 1

    @property
    def data_bytes(self) -> int:
        return self._written * 2 * self.file_channels

    @property
    def size(self) -> int:
        """The file's size in bytes as written so far."""
        return 44 + self.data_bytes

    @property
    def duration(self) -> float:
        return self._written / _RATE

    def _now_position(self) -> int:
        return round((self._clock.seconds() - self._started) * _RATE)

    def add(self, channel: str, timestamp: int, ssrc: int, packet: bytes, encoding: str) -> None:
        """One RTP packet heard on ``channel`` (a leg name) now; non-G.711 packets are skipped."""
        if self.paused or self.stopped:
            return
        codec = g711.CODECS.get(encoding)
        if codec is None:
            if encoding not in self._unknown:
                self._unknown.add(encoding)
                log.warn("recording {path}: cannot decode {encoding}, recorded as silence",
                         path=str(self.path), encoding=encoding or "an unknown payload type")
            return
        try:
            start, end = payload_bounds(packet)
        except RtpError:
            return
        samples = codec[0](packet[start:end])
        state = self._channels[channel]
        arrival = self._now_position()
        position = None
        if state.ssrc == ssrc:
            delta = (timestamp - state.anchor_timestamp) % _TIMESTAMP_MOD
            if delta >= _TIMESTAMP_MOD // 2:
                delta -= _TIMESTAMP_MOD
            position = state.anchor_position + delta
            if abs(position - arrival) > _RATE:
                position = None  # the sender's timestamps jumped: trust the clock
        if position is None:
            state.ssrc, state.anchor_timestamp, state.anchor_position = ssrc, timestamp, arrival
            position = arrival
        self._place(state, position, samples)

    def _place(self, state: _Channel, position: int, samples: np.ndarray) -> None:
        start = position - self._written
        if start < 0:  # too late: that part of the file is written
            samples = samples[-start:]
            start = 0
        end = start + len(samples)
        if end > len(state.buffer):
            self._grow(end)
        state.buffer[start:end] = samples
        state.filled_to = max(state.filled_to, self._written + end)

    def _grow(self, needed: int) -> None:
        capacity = max(needed, 2 * self._capacity)
        for state in self._channels.values():
            grown = np.zeros(capacity, dtype=np.int16)
            grown[:len(state.buffer)] = state.buffer
            state.buffer = grown
        self._capacity = capacity

    def flush(self, final: bool = False) -> None:
        """Write what is older than the hold-back (everything placed, when ``final``) and patch the header."""
        if self.stopped:
            return
        until = self._now_position() - (0 if final else self._hold_back)
        if final:
            until = max([until, *(state.filled_to for state in self._channels.values())])
        count = until - self._written
        if count <= 0:
            return
        if count > self._capacity:
            self._grow(count)
        frames = [state.buffer[:count] for state in self._channels.values()]
        if self.mode == "stereo":
            data = np.column_stack(frames[:2]).astype("<i2")
        else:
            data = np.clip(np.sum([f.astype(np.int32) for f in frames], axis=0), -32768, 32767).astype("<i2")
        file = self._file
        try:
            file.write(data.tobytes())
            self._written += count
            for state in self._channels.values():
                state.buffer[:-count] = state.buffer[count:]
                state.buffer[-count:] = 0
            self._patch_header()
        except OSError as error:
            self._fail(error)

    def _fail(self, error: OSError) -> None:
        """Give up on the file (see the class docstring); the audio from now on is dropped."""
        self.failed = error.strerror or str(error)
        self.stopped = True
        Recorder.failures += 1
        flusher, self._flusher = self._flusher, None
        if flusher is not None and flusher.running:
            flusher.stop()
        with contextlib.suppress(OSError):  # the buffered tail cannot be written either: reported below
            self._file.close()
        log.error("recording {path} stopped: {error}; the call goes on unrecorded",
                  path=str(self.path), error=self.failed)

    def pause(self) -> None:
        """Stop taking audio; the paused time is written as silence, so the channels stay aligned."""
        self.paused = True

    def resume(self) -> None:
        self.paused = False

    def stop(self) -> None:
        """Write everything left, patch the header and close the file. Idempotent."""
        if self.stopped:
            return
        flusher, self._flusher = self._flusher, None
        if flusher is not None and flusher.running:
            flusher.stop()
        self.flush(final=True)
        if self.failed is not None:
            return
        self.stopped = True
        try:
            self._file.close()
        except OSError as error:
            self._fail(error)
            return
        log.info("recorded {seconds:.1f}s to {path}", seconds=self.duration, path=str(self.path))
