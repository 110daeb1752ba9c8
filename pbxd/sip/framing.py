"""Framing SIP messages on a byte stream (TCP, TLS): sans-IO.

RFC 3261 §18.3: on a stream the header section ends at the first empty line
and Content-Length, which is mandatory there, says how many body bytes follow.
RFC 5626 §3.5.1: between messages a double CRLF is a keepalive ping that the
receiver answers with a single CRLF (the pong); a lone CRLF is ignored
(§7.5 allows stray CRLFs before a start line).

Feed bytes in, get events out. After a :class:`FramingError` the stream
cannot be trusted to find the next message boundary: the connection should be
closed and the framer ignores anything fed afterwards.
"""

from __future__ import annotations

import re
from typing import Union

import attrs

PING = b"\r\n\r\n"
PONG = b"\r\n"

_END_OF_HEADERS = b"\r\n\r\n"
_FOLD = re.compile(rb"\r\n[ \t]+")
# A Content-Length header line, long or compact (l) form, any case; the
# first line of a header section is the start line, so every header line
# follows a CRLF.
_CONTENT_LENGTH = re.compile(rb"\r\n(?:content-length|l)[ \t]*:[ \t]*([^\r\n]*)", re.IGNORECASE)


@attrs.frozen
class MessageFrame:
    """One complete message: header section, blank line and exactly the body."""

    data: bytes


@attrs.frozen
class KeepalivePing:
    """A CRLFCRLF ping; the receiver writes :data:`PONG` back."""


@attrs.frozen
class FramingError:
    """The stream is broken here; close the connection.

    ``header`` is the header section when it was complete, so that the
    receiver can still answer a request with ``status``: 400 for a missing or
    bad Content-Length, 513 for a message over the size limit (§21.5.14).
    """

    reason: str
    header: bytes | None = None
    status: int = 400


FramingEvent = Union[MessageFrame, KeepalivePing, FramingError]


class StreamFramer:
    """Splits one connection's bytes into messages and keepalives."""

    def __init__(self, max_message_size: int = 65535, max_header_size: int = 32768) -> None:
        self.max_message_size = max_message_size
        self.max_header_size = min(max_header_size, max_message_size)
        self._buffer = bytearray()
        # Where to resume looking for the end of headers, so that a header
        # section arriving a few bytes at a time is not rescanned from the start.
        self._scan_from = 0
        # Total size of the message being received, once its headers are read.
        self._expected: int | None = None
        self.failed = False

    @property
    def buffered(self) -> int:
        """Bytes received but not yet part of a complete message."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[FramingEvent]:
        if self.failed:
            return []
        self._buffer += data
        events: list[FramingEvent] = []
        while True:
            event = self._next_event()
            if event is None:
                return events
            events.append(event)
            if isinstance(event, FramingError):
                self.failed = True
                self._buffer.clear()
                return events

    def _next_event(self) -> FramingEvent | None:
        buffer = self._buffer
        if self._expected is None:
            while buffer.startswith(b"\r\n"):
                if buffer.startswith(PING):
                    del buffer[:4]
                    return KeepalivePing()
                if len(buffer) < 4 and PING.startswith(buffer):
                    return None  # maybe the first half of a ping: wait for more
                del buffer[:2]
            end = buffer.find(_END_OF_HEADERS, self._scan_from)
            if end < 0:
                if len(buffer) > self.max_header_size:
                    return FramingError(f"header section over {self.max_header_size} bytes")
                self._scan_from = max(0, len(buffer) - 3)
                return None
            self._scan_from = 0
            header_size = end + 4
            header = bytes(buffer[:header_size])
            if header_size > self.max_header_size:
                return FramingError(f"header section of {header_size} bytes over {self.max_header_size}")
            length = _content_length(header)
            if isinstance(length, str):
                return FramingError(length, header)
            if header_size + length > self.max_message_size:
                return FramingError(
                    f"message of {header_size + length} bytes over {self.max_message_size}", header, 513
                )
            self._expected = header_size + length
        if len(buffer) < self._expected:
            return None
        frame = MessageFrame(bytes(buffer[: self._expected]))
        del buffer[: self._expected]
        self._expected = None
        return frame


def _content_length(header: bytes) -> int | str:
    """The body length a header section announces, or why it cannot be framed."""
    if b"\r\n " in header or b"\r\n\t" in header:
        header = _FOLD.sub(b" ", header)
    values = {value.strip(b" \t") for value in _CONTENT_LENGTH.findall(header)}
    if not values:
        return "missing Content-Length on a stream transport (RFC 3261 §18.3)"
    if len(values) > 1:
        return "conflicting Content-Length headers"
    value = values.pop()
    if not value.isdigit() or len(value) > 10:
        # The value as text: it ends up in a Warning header (no b'' repr there).
        return f"bad Content-Length {value[:20].decode('latin-1')!r}"
    return int(value)
