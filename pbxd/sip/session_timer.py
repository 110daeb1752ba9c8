"""Session timers (RFC 4028): Session-Expires, Min-SE, 422, and the timer that refreshes or ends a call.

A session under a timer is refreshed by a re-INVITE or UPDATE within every
interval; when no refresh comes, the session is dead and is ended with a BYE.
That is how pbxd notices a call whose far end vanished.

The negotiation is pure: ``negotiate_as_uas`` reads a request and says what
to answer, ``negotiate_as_uac`` reads the 2xx to our request and says what
was agreed. Both give a ``Negotiated`` whose ``we_refresh`` already accounts
for our side: the "uac" and "uas" of the refresher parameter name the sides of
the transaction that negotiated (whoever sent that re-INVITE is the "uac"),
not the dialog's caller and callee. ``SessionTimer`` then runs the clock.
"""

from __future__ import annotations

import enum
from typing import Callable

import attrs
from twisted.internet.interfaces import IReactorTime

from pbxd.sip.errors import SipParseError
from pbxd.sip.headers import parse_params
from pbxd.sip.message import Request, Response, SipMessage
from pbxd.sip.timers import TimerSet
from pbxd.sip.uri import is_ascii_digits

DEFAULT_INTERVAL = 1800  # §4: the recommended Session-Expires
MIN_INTERVAL = 90  # §5: the smallest Min-SE anyone may ask for
OPTION_TAG = "timer"


class Refresher(enum.Enum):
    UAC = "uac"
    UAS = "uas"


def _delta_seconds(text: str, what: str) -> int:
    text = text.strip(" \t")
    if not is_ascii_digits(text) or len(text) > 10:
        raise SipParseError(f"bad {what} {text[:20]!r}")
    return int(text)


@attrs.frozen
class SessionExpires:
    """Session-Expires: <delta-seconds>[;refresher=uac|uas] (RFC 4028 §4)."""

    delta: int
    refresher: Refresher | None = None

    @classmethod
    def parse(cls, value: str) -> SessionExpires:
        """Parse a header value. Raises ``SipParseError`` (400)."""
        delta_text, semi, param_text = value.partition(";")
        delta = _delta_seconds(delta_text, "Session-Expires")
        refresher = None
        for name, param in parse_params(semi + param_text):
            if name.lower() == "refresher":
                try:
                    refresher = Refresher((param or "").lower())
                except ValueError:
                    raise SipParseError(f"bad refresher in Session-Expires {value[:60]!r}") from None
        return cls(delta, refresher)

    def __str__(self) -> str:
        return str(self.delta) if self.refresher is None else f"{self.delta};refresher={self.refresher.value}"


def parse_min_se(value: str) -> int:
    """Min-SE: <delta-seconds> *(;generic-param) (RFC 4028 §5). Raises ``SipParseError`` (400)."""
    delta_text, semi, param_text = value.partition(";")
    parse_params(semi + param_text)
    return _delta_seconds(delta_text, "Min-SE")


def _session_expires(message: SipMessage) -> SessionExpires | None:
    value = message.get("session-expires")
    return None if value is None else SessionExpires.parse(value)


def _min_se(message: SipMessage) -> int:
    # §5: no Min-SE means the smallest, 90 seconds.
    value = message.get("min-se")
    return MIN_INTERVAL if value is None else parse_min_se(value)


def _at_least_minimum(instance: object, attribute: attrs.Attribute, value: int) -> None:
    if value < MIN_INTERVAL:
        raise ValueError(f"{attribute.name} must be at least {MIN_INTERVAL} s (RFC 4028 §5), not {value}")


@attrs.frozen
class TimerPolicy:
    """What pbxd wants on a leg.

    ``interval`` is the Session-Expires pbxd asks for and the longest it
    accepts; ``min_se`` the shortest it accepts; with ``enforce`` pbxd runs a
    timer even when the peer asked for none (it refreshes itself, which any
    UA answers, since a refresh is just a re-INVITE or UPDATE).
    """

    interval: int = attrs.field(default=DEFAULT_INTERVAL, validator=_at_least_minimum)
    min_se: int = attrs.field(default=MIN_INTERVAL, validator=_at_least_minimum)
    enforce: bool = True

    def __attrs_post_init__(self) -> None:
        if self.interval < self.min_se:
            raise ValueError(f"interval {self.interval} is below min_se {self.min_se}")


@attrs.frozen
class Negotiated:
    """An agreed session timer: its interval, who refreshes, and whether that is us."""

    interval: int
    refresher: Refresher
    we_refresh: bool
    # §9: the 2xx of a UAS carries Require: timer when the UAC refreshes (must)
    # or when the UAC supports timers at all (should).
    require_timer: bool = False

    def response_headers(self) -> list[tuple[str, str]]:
        """The headers our 2xx carries as the UAS of the negotiating request."""
        headers = [("Session-Expires", str(SessionExpires(self.interval, self.refresher)))]
        if self.require_timer:
            headers.append(("Require", OPTION_TAG))
        return headers


@attrs.frozen
class IntervalTooSmall:
    """Answer 422 with this Min-SE (RFC 4028 §6)."""

    min_se: int
    status: int = attrs.field(default=422, init=False)

    def response_headers(self) -> list[tuple[str, str]]:
        return [("Min-SE", str(self.min_se))]


def request_headers(interval: int, min_se: int = MIN_INTERVAL, refresher: Refresher | None = None) -> list[tuple[str, str]]:
    """Headers for an INVITE or UPDATE of ours that asks for (or refreshes) a session timer (§7.1, §7.4).

    A refresh keeps the agreed interval and names ourselves (uac) as the
    refresher when we are it.
    """
    return [
        ("Supported", OPTION_TAG),
        ("Session-Expires", str(SessionExpires(interval, refresher))),
        ("Min-SE", str(min_se)),
    ]


def negotiate_as_uas(request: Request, policy: TimerPolicy) -> Negotiated | IntervalTooSmall | None:
    """What to answer an INVITE or UPDATE with, as its UAS (RFC 4028 §9).

    - A Session-Expires below ``policy.min_se`` from a UAC that supports
      timers gets 422 (``IntervalTooSmall``). One that does not support them
      would not understand a 422 (a proxy added the header), so pbxd answers
      with its own minimum instead: it will refresh itself.
    - An interval above ``policy.interval`` is lowered to it, never below
      the request's Min-SE; a UAS may lower but never raise (§9).
    - With no Session-Expires, pbxd adds one when ``policy.enforce``, at
      its interval (or the request's Min-SE, if higher); else no timer (None).
    - Refresher (§9 Table 2): the request's choice if the UAC supports timers
      and made one, else the UAC when it supports timers, else pbxd.

    Raises ``SipParseError`` (400) for a malformed Session-Expires or Min-SE.
    """
    supported = OPTION_TAG in request.get_all("supported")
    asked = _session_expires(request)
    request_min_se = _min_se(request)
    if asked is None:
        if not policy.enforce:
            return None
        interval = max(policy.interval, request_min_se)
    elif asked.delta < policy.min_se:
        if supported:
            return IntervalTooSmall(policy.min_se)
        interval = policy.min_se
    elif asked.delta > policy.interval:
        interval = min(asked.delta, max(policy.interval, request_min_se))
    else:
        interval = asked.delta
    if not supported:
        refresher = Refresher.UAS
    elif asked is not None and asked.refresher is not None:
        refresher = asked.refresher
    else:
        refresher = Refresher.UAC
    return Negotiated(interval, refresher, we_refresh=refresher is Refresher.UAS, require_timer=supported)


def negotiate_as_uac(response: Response, policy: TimerPolicy) -> Negotiated | None:
    """What a 2xx to our INVITE or UPDATE agreed (RFC 4028 §7.2).

    The 2xx's Session-Expires rules; one without a refresher leaves the
    refreshing to us. A 2xx without one means the peer runs no timer: with
    ``policy.enforce`` pbxd refreshes alone at its interval, else None. An
    interval under 90 s is the peer's error and is raised to 90 (§5).
    Raises ``SipParseError`` (status None: it is a response) when malformed.
    """
    try:
        agreed = _session_expires(response)
    except SipParseError as error:
        error.status = None
        raise
    if agreed is None:
        return Negotiated(policy.interval, Refresher.UAC, we_refresh=True) if policy.enforce else None
    refresher = agreed.refresher or Refresher.UAC
    return Negotiated(max(agreed.delta, MIN_INTERVAL), refresher, we_refresh=refresher is Refresher.UAC)


def interval_after_422(response: Response, interval: int) -> int | None:
    """The Session-Expires to retry with after a 422 (RFC 4028 §7.4), or None when retrying is pointless.

    The retry asks for the 422's Min-SE (and sends it as its own Min-SE); a
    422 whose Min-SE is not above what we asked would only come back again.
    Raises ``SipParseError`` (status None) for a 422 without a usable Min-SE.
    """
    value = response.get("min-se")
    try:
        if value is None:
            raise SipParseError("422 without Min-SE")
        wanted = parse_min_se(value)
    except SipParseError as error:
        error.status = None
        raise
    return wanted if wanted > interval else None


class SessionTimer:
    """One running session timer (RFC 4028 §10) on an injected clock.

    When we refresh, ``on_refresh`` is called at half the interval; it should
    send the re-INVITE or UPDATE. Whoever refreshes, ``on_expire`` is called
    when no refresh has succeeded by interval - min(32, interval / 3): the
    session is dead and should get a BYE. Each successful refresh, sent or
    received, calls ``refreshed``, which starts the interval again (with the
    newly negotiated values, if given). ``stop`` when the call ends: no timer
    is left behind.
    """

    def __init__(
        self,
        clock: IReactorTime,
        interval: float,
        refresher_is_us: bool,
        on_refresh: Callable[[], None],
        on_expire: Callable[[], None],
    ) -> None:
        self._timers = TimerSet(clock)
        self._on_refresh = on_refresh
        self._on_expire = on_expire
        self.interval = interval
        self.refresher_is_us = refresher_is_us
        self.refreshed(interval, refresher_is_us)

    @property
    def running(self) -> bool:
        return self._timers.running("expire")

    @property
    def expire_after(self) -> float:
        """Seconds from a refresh to the end of the session without one (§10)."""
        return self.interval - min(32.0, self.interval / 3)

    def refreshed(self, interval: float | None = None, refresher_is_us: bool | None = None) -> None:
        """A refresh succeeded (or the session started): count the interval from now."""
        if interval is not None:
            if not interval > 0:
                raise ValueError(f"session interval must be positive, not {interval!r}")
            self.interval = interval
        if refresher_is_us is not None:
            self.refresher_is_us = refresher_is_us
        if self.refresher_is_us:
            self._timers.start("refresh", self.interval / 2, self._on_refresh)
        else:
            self._timers.stop("refresh")
        self._timers.start("expire", self.expire_after, self._expired)

    def stop(self) -> None:
        self._timers.stop_all()

    def _expired(self) -> None:
        self._timers.stop_all()
        self._on_expire()
