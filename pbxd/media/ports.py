"""The pool of relay ports over the configured range.

Each leg takes an even RTP port and the odd RTCP port above it (RFC 3550
§11), so the pool hands out even numbers only. Freed ports go to the back of
the queue: a port just given back is the last to be reused, so stray packets
of an ended call do not land in a new one.

A port another process holds cannot be told from the pool; ``bind`` tries
the next one when the bind callable raises ``CannotListenError`` and keeps
the refused port out of circulation for a while (at the back of the queue).
When no port is free ``PortsExhausted`` is raised; the call layer answers 503
(no resources) to a new call, 488 to a re-offer.
"""

from __future__ import annotations

import collections
from typing import Callable, TypeVar

from twisted.internet.error import CannotListenError
from twisted.logger import Logger

log = Logger()
T = TypeVar("T")


class PortsExhausted(Exception):
    """No relay port is free (or none could be bound)."""


class PortPool:
    """Even RTP ports from ``port_min`` to ``port_max`` (RTCP on port + 1 must also fit)."""

    def __init__(self, port_min: int, port_max: int) -> None:
        first = port_min + port_min % 2
        self._free: collections.deque[int] = collections.deque(range(first, port_max, 2))
        self._in_use: set[int] = set()
        self.size = len(self._free)

    @property
    def available(self) -> int:
        return len(self._free)

    @property
    def in_use(self) -> frozenset[int]:
        return frozenset(self._in_use)

    def allocate(self) -> int:
        """An even RTP port (its RTCP port is one above); raises ``PortsExhausted``."""
        if not self._free:
            raise PortsExhausted(f"all {self.size} relay port pairs are in use")
        port = self._free.popleft()
        self._in_use.add(port)
        return port

    def release(self, port: int) -> None:
        """Give a port back; releasing one that is not in use is a bug and raises ValueError."""
        if port not in self._in_use:
            raise ValueError(f"port {port} is not allocated")
        self._in_use.remove(port)
        self._free.append(port)

    def bind(self, listen: Callable[[int], T], attempts: int = 16) -> tuple[int, T]:
        """Allocate a port and ``listen(port)`` on it, moving on past ports in use elsewhere."""
        for _ in range(min(attempts, self.size)):
            port = self.allocate()
            try:
                return port, listen(port)
            except CannotListenError as error:
                log.warn("relay port {port} is taken: {error}", port=port, error=error.socketError)
                self.release(port)
        raise PortsExhausted(f"no bindable relay port after {attempts} attempts")
