"""The one exception type the SIP parsers raise."""

from __future__ import annotations


class SipParseError(ValueError):
    """A message, header or URI that does not follow the RFC 3261 grammar.

    ``status`` is the response the receiver should send for a request that fails
    this way (400 Bad Request by default, 505 for an unsupported version,
    RFC 3261 §21), or ``None`` when the datagram must be dropped silently (a
    malformed response, or bytes that are not SIP at all).
    """

    def __init__(self, reason: str, status: int | None = 400) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status
        # The request as far as it could be read, so that the receiver can
        # still answer it with ``status``; set by the message parser.
        self.request: object | None = None
