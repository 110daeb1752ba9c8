"""Per-client rate limits and CORS for the HTTP port.

:class:`RateLimiter` counts each client address's requests in two fixed
windows, a minute and an hour (pbx-rest-api.md: 100 a minute, 1000 an hour
by default), each starting with the client's first request in it. A request
over either limit is refused with the seconds until that window ends
(``Retry-After``); refused requests do not count. Windows run on the injected
clock, and clients whose windows have both ended are forgotten, so memory
follows the number of clients active in the last hour.

:class:`CorsPolicy` answers preflights and marks responses for the origins in
``http.cors_origins``. An origin listed exactly is echoed back with
``Access-Control-Allow-Credentials`` (the console's cookie may go with it);
``"*"`` lets any origin in without credentials (bearer tokens still work).
No origins (the default): no CORS headers, so browsers keep other sites out.
A request that carries an ``Origin`` neither pbxd's own nor allowed is
refused before any tree sees it (:meth:`CorsPolicy.foreign`): cross-site
WebSockets and form posts never reach pbxd.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Final

import attrs
from twisted.internet.interfaces import IReactorTime
from twisted.web.iweb import IRequest

MINUTE: Final = 60.0
HOUR: Final = 3600.0

# How often (in checks) ended windows are swept out; a sweep is O(clients).
_SWEEP_EVERY = 1024


@attrs.define
class _Windows:
    minute_start: float
    minute_count: int = 0
    hour_start: float = 0.0
    hour_count: int = 0


class RateLimiter:
    """At most ``per_minute`` and ``per_hour`` requests per client (0: no limit)."""

    def __init__(self, clock: IReactorTime, per_minute: int, per_hour: int) -> None:
        self.clock = clock
        self.per_minute = per_minute
        self.per_hour = per_hour
        self._clients: dict[str, _Windows] = {}
        self._checks = 0

    def check(self, client: str) -> int | None:
        """Count one request from ``client``: None if allowed, else the whole
        seconds (at least 1) to wait before asking again."""
        if not self.per_minute and not self.per_hour:
            return None
        now = self.clock.seconds()
        self._checks += 1
        if self._checks % _SWEEP_EVERY == 0:
            self._sweep(now)
        windows = self._clients.get(client)
        if windows is None:
            windows = self._clients[client] = _Windows(now, 0, now, 0)
        if now - windows.minute_start >= MINUTE:
            windows.minute_start, windows.minute_count = now, 0
        if now - windows.hour_start >= HOUR:
            windows.hour_start, windows.hour_count = now, 0
        waits = []
        if self.per_minute and windows.minute_count >= self.per_minute:
            waits.append(windows.minute_start + MINUTE - now)
        if self.per_hour and windows.hour_count >= self.per_hour:
            waits.append(windows.hour_start + HOUR - now)
        if waits:
            return max(1, math.ceil(max(waits)))
        windows.minute_count += 1
        windows.hour_count += 1
        return None

    def _sweep(self, now: float) -> None:
        ended = [client for client, w in self._clients.items()
                 if now - w.minute_start >= MINUTE and now - w.hour_start >= HOUR]
        for client in ended:
            del self._clients[client]

    def __len__(self) -> int:
        """How many clients are remembered."""
        return len(self._clients)


ANY_ORIGIN: Final = "*"
ALLOWED_METHODS: Final = "GET, POST, PUT, DELETE, OPTIONS"
ALLOWED_HEADERS: Final = "Authorization, Content-Type"
PREFLIGHT_MAX_AGE: Final = "600"


class CorsPolicy:
    """CORS for the origins given (see the module docstring)."""

    def __init__(self, origins: Iterable[str] = ()) -> None:
        listed = [origin.rstrip("/") for origin in origins]
        self.any_origin = ANY_ORIGIN in listed
        self.origins = frozenset(origin.lower() for origin in listed if origin != ANY_ORIGIN)

    @staticmethod
    def is_preflight(request: IRequest) -> bool:
        return (request.method == b"OPTIONS" and request.getHeader(b"origin") is not None
                and request.getHeader(b"access-control-request-method") is not None)

    def allowed(self, origin: str) -> bool:
        return self.any_origin or origin.lower() in self.origins

    def foreign(self, request: IRequest) -> bool:
        """Whether a browser sent this from a page of an origin that is neither
        pbxd's own (the Host asked for) nor allowed. Such requests are refused
        whole: CORS only hides answers, and a WebSocket is not covered by it."""
        raw = request.getHeader(b"origin")
        if raw is None:
            return False
        origin = raw.decode("latin-1").rstrip("/")
        host = (request.getHeader(b"host") or b"").decode("latin-1")
        if origin.lower() in (f"http://{host}".lower(), f"https://{host}".lower()):
            return False
        return not self.allowed(origin)

    def decorate(self, request: IRequest) -> None:
        """Add the CORS headers an allowed cross-origin request's response needs."""
        raw = request.getHeader(b"origin")
        if raw is None or not (self.any_origin or self.origins):
            return
        request.setHeader(b"vary", b"Origin")
        origin = raw.decode("latin-1")
        if origin.lower() in self.origins:
            request.setHeader(b"access-control-allow-origin", raw)
            request.setHeader(b"access-control-allow-credentials", b"true")
        elif self.any_origin:
            request.setHeader(b"access-control-allow-origin", b"*")

    def preflight(self, request: IRequest) -> bool:
        """Write a preflight's answer headers and status (204); False if the
        origin is not allowed (the caller refuses it)."""
        origin = (request.getHeader(b"origin") or b"").decode("latin-1")
        if not self.allowed(origin):
            return False
        self.decorate(request)
        request.setHeader(b"access-control-allow-methods", ALLOWED_METHODS.encode())
        request.setHeader(b"access-control-allow-headers", ALLOWED_HEADERS.encode())
        request.setHeader(b"access-control-max-age", PREFLIGHT_MAX_AGE.encode())
        request.setResponseCode(204)
        return True


__all__ = ["ALLOWED_HEADERS", "ALLOWED_METHODS", "CorsPolicy", "RateLimiter"]
