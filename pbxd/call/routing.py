"""Where an INVITE goes: the routing decision, the facts it is made from, static routes.

Pure: no I/O, no reactor. The call layer turns a new INVITE into
:class:`CallFacts`, asks :class:`pbxd.hooks.http_router.Router` (the HTTP
router webhook first when one is configured, then the :class:`StaticRouter`)
and acts on the :class:`RouteDecision`:

- ``forward``: ring ``targets``; ``parallel`` rings them all at once,
  ``sequential`` one after the other, each for its :meth:`RouteDecision.ring_time`.
- ``reject``: answer ``status`` ``reason`` (403 unless the router says otherwise).
- ``abort``: the router stops the call (a fraud or credit check, say):
  answered like ``reject`` (403 by default), and no other router is asked.
- ``spam``: answered 603 Decline unless ``status`` says otherwise; the CDR
  and the log say spam.
- ``not_handled``: no router took the call; the call layer answers 404.

A static route matches on the Request-URI user, the From and To users, the
trunk and the IP address the call came from, the direction, and whether the
called user is a local extension; it may rewrite the called number and
forwards to extensions, trunks or URIs, or rejects. A :class:`StaticRouter`
is an immutable value built from config, so that a reload swaps it in one
assignment and a call being routed keeps the router it started with.

One route is built in: ``extensions`` forwards a call whose Request-URI user
is a local extension to that extension. It is an ordinary route (priority 0,
``match: {extension: true}``, ``destination: "{called}"``) that a configured
route of the same name replaces or, with ``enabled: false``, turns off.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import quote

import attrs

from pbxd.sip.headers import header_key, is_token
from pbxd.sip.message import Request
from pbxd.sip.uri import URI, SipURI, TelURI, parse_uri
from pbxd.store.models import is_extension_number
from pbxd.transport.target import Target

ACTIONS = ("forward", "reject", "abort", "spam", "not_handled")
STRATEGIES = ("parallel", "sequential")
MEDIA_PROXY_MODES = ("auto", "always", "none", "nat")
DIRECTIONS = ("internal", "inbound", "outbound")
STATIC_ACTIONS = ("forward", "reject")

# What a refusal is answered with when the router names no status.
DEFAULT_STATUS = {"reject": 403, "abort": 403, "spam": 603}

EXTENSIONS_ROUTE = "extensions"
CALLED = "{called}"  # in a destination: the called number, after the rewrite

# Headers the B2BUA writes itself on the outbound leg (RFC 3261 §8.1.1, §16.6,
# §20.14): a router injecting one would corrupt the dialog or the framing.
PROTECTED_HEADERS = frozenset({
    "via", "from", "to", "call-id", "cseq", "contact", "max-forwards", "content-length",
    "content-type", "route", "record-route", "authorization", "proxy-authorization",
})

# Credentials of the caller stay out of what is shown to routers.
_PRIVATE_HEADERS = frozenset({"authorization", "proxy-authorization"})

_TRUNK_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}")
# RFC 3261 §25.1 user = 1*( unreserved / escaped / user-unreserved ): what a
# called number may keep unescaped in the user part of a sip: URI.
_USER_SAFE = "-_.!~*'()&=+$,;?/"
_MAX_REASON = 200


class RouteError(ValueError):
    """A route, target or decision that cannot be built; the text says why."""


# --- checks shared by decisions, targets and config --------------------------------


def _positive_seconds(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RouteError(f"{what} must be a number of seconds, not {type(value).__name__}")
    if not math.isfinite(value) or value <= 0:
        raise RouteError(f"{what} must be greater than 0, not {value!r}")
    return float(value)


def check_header(name: object, value: object) -> tuple[str, str]:
    """A header a router wants on the outbound INVITE, as a (name, value) pair."""
    if not isinstance(name, str) or not is_token(name):
        raise RouteError(f"header name {name!r} is not a SIP token")
    if header_key(name) in PROTECTED_HEADERS:
        raise RouteError(f"header {name} is written by pbxd and cannot be injected")
    if not isinstance(value, str):
        raise RouteError(f"header {name} must have a string value")
    if any(c in value for c in "\r\n\x00"):
        raise RouteError(f"header {name} has a line break or NUL in its value")
    return name, value


def check_headers(headers: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    return tuple(check_header(name, value) for name, value in headers.items())


def check_reason(reason: object) -> str:
    """A reason phrase for a status line (RFC 3261 §25.1: no CR or LF)."""
    if not isinstance(reason, str) or not reason.strip():
        raise RouteError("reason must be a non-empty string")
    if len(reason) > _MAX_REASON or any(ord(c) < 32 or c == "\x7f" for c in reason):
        raise RouteError(f"reason must be one line of at most {_MAX_REASON} characters")
    return reason


def check_status(status: object) -> int:
    if isinstance(status, bool) or not isinstance(status, int) or not 400 <= status <= 699:
        raise RouteError(f"status must be a final error status 400-699, not {status!r}")
    return status


def target_kind(destination: str) -> str:
    """``trunk``, ``uri`` or ``extension``; RouteError for anything else."""
    if not isinstance(destination, str):
        raise RouteError(f"a target must be a string, not {type(destination).__name__}")
    if destination.startswith("trunk:"):
        if not _TRUNK_NAME.fullmatch(destination[6:]):
            raise RouteError(f"target {destination!r}: bad trunk name")
        return "trunk"
    if ":" in destination:
        try:
            uri = parse_uri(destination)
        except ValueError:
            raise RouteError(f"target {destination!r} is not a valid URI") from None
        if not isinstance(uri, (SipURI, TelURI)):
            raise RouteError(f"target {destination!r} is not a sip:, sips: or tel: URI")
        return "uri"
    if not is_extension_number(destination):
        raise RouteError(f"target {destination!r} is not an extension number, "
                         "trunk:NAME or a sip:/tel: URI")
    return "extension"


def check_destination(template: str) -> str:
    """A destination as config writes it, with ``{called}`` where the called
    number goes; checked with a sample number in its place."""
    if not isinstance(template, str):
        raise RouteError(f"a destination must be a string, not {type(template).__name__}")
    sample = template.replace(CALLED, "0")
    if "{" in sample or "}" in sample:
        raise RouteError(f"destination {template!r}: the only placeholder is {CALLED}")
    target_kind(sample)
    return template


def check_rewrite(pattern: str, replacement: str) -> None:
    """RouteError unless ``replacement`` only names groups ``pattern`` has."""
    try:
        # Substituting into "" never matches, but the template is parsed
        # first: a bad \\N or \\g<name> fails here, at load, not on a call.
        re.compile(pattern).sub(replacement, "")
    except re.error as e:
        raise RouteError(f"replacement {replacement!r}: {e}") from None


def _validate(check: Any) -> Any:
    """An attrs validator running ``check(value)`` unless the value is None."""

    def validator(instance: object, attribute: attrs.Attribute, value: object) -> None:
        if value is not None:
            check(value)

    return validator


def _one_of(choices: tuple[str, ...], what: str) -> Any:
    def check(value: object) -> None:
        if value not in choices:
            raise RouteError(f"{what} must be one of {', '.join(choices)}, not {value!r}")

    return _validate(check)


def _header_pairs(instance: object, attribute: attrs.Attribute, value: object) -> None:
    if not isinstance(value, tuple):
        raise RouteError(f"{attribute.name} must be a tuple of (name, value) pairs")
    for pair in value:
        if not isinstance(pair, tuple) or len(pair) != 2:
            raise RouteError(f"{attribute.name} must be a tuple of (name, value) pairs")
        check_header(*pair)


# --- decisions ------------------------------------------------------------------------


@attrs.frozen
class RouteTarget:
    """One place to ring: an extension number (``1001``: all its registered
    contacts), ``trunk:NAME`` (the called number through that trunk) or a
    ``sip:``/``sips:``/``tel:`` URI. ``headers`` are added to the INVITE sent
    to this target only; ``timeout`` overrides the decision's ring time."""

    destination: str = attrs.field(validator=lambda _, __, value: target_kind(value))
    headers: tuple[tuple[str, str], ...] = attrs.field(default=(), validator=_header_pairs)
    timeout: float | None = attrs.field(
        default=None, validator=_validate(lambda v: _positive_seconds(v, "timeout")))

    @property
    def kind(self) -> str:
        return target_kind(self.destination)

    @property
    def trunk(self) -> str | None:
        """The trunk name of a ``trunk:NAME`` target."""
        return self.destination[6:] if self.kind == "trunk" else None


def _targets(instance: RouteDecision, attribute: attrs.Attribute, value: object) -> None:
    if not isinstance(value, tuple) or not all(isinstance(t, RouteTarget) for t in value):
        raise RouteError("targets must be a tuple of RouteTarget")


@attrs.frozen(kw_only=True)
class RouteDecision:
    """What to do with one INVITE, and who said so (``source``: "static route
    NAME", "http router", for logs and the CDR).

    For ``forward``: ``targets`` (at least one) rung by ``strategy``;
    ``timeout`` is how long each target (parallel: all of them) rings,
    ``max_ring_time`` caps the ringing of the whole call (all sequential steps
    together), ``max_duration`` ends an answered call; None leaves the call
    layer's defaults. ``headers`` go on every outbound INVITE, ``called`` is
    the called number after any rewrite (what a trunk is asked to dial).
    For ``reject``, ``abort`` and ``spam``: ``status`` and ``reason``.
    """

    action: str = attrs.field(validator=_one_of(ACTIONS, "action"))
    source: str = attrs.field(validator=attrs.validators.instance_of(str))
    targets: tuple[RouteTarget, ...] = attrs.field(default=(), validator=_targets)
    strategy: str = attrs.field(default="parallel", validator=_one_of(STRATEGIES, "strategy"))
    status: int | None = attrs.field(default=None, validator=_validate(check_status))
    reason: str | None = attrs.field(default=None, validator=_validate(check_reason))
    record: bool = attrs.field(default=False, validator=attrs.validators.instance_of(bool))
    timeout: float | None = attrs.field(
        default=None, validator=_validate(lambda v: _positive_seconds(v, "timeout")))
    max_ring_time: float | None = attrs.field(
        default=None, validator=_validate(lambda v: _positive_seconds(v, "max_ring_time")))
    max_duration: float | None = attrs.field(
        default=None, validator=_validate(lambda v: _positive_seconds(v, "max_duration")))
    media_proxy: str = attrs.field(
        default="auto", validator=_one_of(MEDIA_PROXY_MODES, "media_proxy"))
    headers: tuple[tuple[str, str], ...] = attrs.field(default=(), validator=_header_pairs)
    called: str | None = None

    def __attrs_post_init__(self) -> None:
        if self.action == "forward" and not self.targets:
            raise RouteError("forward needs at least one target")
        if self.action != "forward" and self.targets:
            raise RouteError(f"{self.action} takes no targets")
        if (self.action in DEFAULT_STATUS) != (self.status is not None):
            raise RouteError("reject, abort and spam need a status, and only they have one")

    @classmethod
    def refusal(cls, action: str, source: str, status: int | None = None,
                reason: str | None = None) -> RouteDecision:
        """A ``reject``, ``abort`` or ``spam`` with the default status if none is given."""
        if action not in DEFAULT_STATUS:
            raise RouteError(f"{action!r} is not a refusal")
        return cls(action=action, source=source,
                   status=DEFAULT_STATUS[action] if status is None else status, reason=reason)

    @classmethod
    def not_handled(cls, source: str) -> RouteDecision:
        return cls(action="not_handled", source=source)

    def ring_time(self, target: RouteTarget) -> float | None:
        """How long ``target`` rings: its own timeout, else the decision's."""
        return target.timeout if target.timeout is not None else self.timeout


# --- facts ------------------------------------------------------------------------------


def uri_user(uri: URI) -> str | None:
    """The user a route matches on: a sip: URI's user part unescaped, a tel: number."""
    if isinstance(uri, SipURI):
        return uri.unescaped_user
    if isinstance(uri, TelURI):
        return uri.number
    return None


@attrs.frozen(kw_only=True)
class CallFacts:
    """What routers know about a new call.

    ``from_header``/``to_header`` are the From and To addresses without the
    tag (what the HTTP router sends as ``from`` and ``to``); the ``*_user``
    fields are what static routes match (None for a URI without a user).
    ``source`` is where the INVITE came from, ``source_trunk`` the trunk it
    came over (None from an extension or an unknown peer). ``direction`` is
    the call layer's reading: ``internal`` (extension to extension),
    ``outbound`` (extension to elsewhere) or ``inbound`` (from a trunk or
    elsewhere). ``callee_is_extension`` says whether the Request-URI user is
    a local extension (the call layer asks its directory before routing).
    ``headers`` are the INVITE's headers less credentials, ``body`` its body.
    """

    call_id: str
    from_header: str
    from_uri: str
    from_user: str | None
    to_header: str
    to_uri: str
    to_user: str | None
    request_uri: str
    request_user: str | None
    source: Target
    direction: str = attrs.field(validator=_one_of(DIRECTIONS, "direction"))
    source_trunk: str | None = None
    callee_is_extension: bool = False
    method: str = "INVITE"
    headers: tuple[tuple[str, str], ...] = ()
    body: str = ""

    @classmethod
    def from_request(cls, request: Request, source: Target, *, direction: str,
                     source_trunk: str | None = None,
                     callee_is_extension: bool = False) -> CallFacts:
        """The facts of a parsed INVITE; SipParseError if its From, To or
        Request-URI cannot be read (the call layer has answered 400 by then)."""
        from_addr = request.from_addr.without_param("tag")
        to_addr = request.to_addr.without_param("tag")
        ruri = request.ruri
        return cls(
            call_id=request.call_id,
            from_header=str(from_addr),
            from_uri=str(from_addr.uri),
            from_user=uri_user(from_addr.uri),
            to_header=str(to_addr),
            to_uri=str(to_addr.uri),
            to_user=uri_user(to_addr.uri),
            request_uri=request.uri,
            request_user=uri_user(ruri),
            source=source,
            direction=direction,
            source_trunk=source_trunk,
            callee_is_extension=callee_is_extension,
            method=request.method,
            headers=tuple((name, value) for name, value in request.headers
                          if header_key(name) not in _PRIVATE_HEADERS),
            body=request.body.decode("utf-8", errors="replace"),
        )


# --- static routes -------------------------------------------------------------------------


def _network(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise RouteError(f"{text!r} is not an IP address or CIDR network") from None


def _compile(pattern: str | None) -> re.Pattern[str] | None:
    if pattern is None:
        return None
    try:
        return re.compile(pattern)
    except re.error as e:
        raise RouteError(f"bad regular expression {pattern!r}: {e}") from None


def _full_match(pattern: re.Pattern[str] | None, value: str | None) -> bool:
    return pattern is None or pattern.fullmatch(value or "") is not None


def _source_address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None  # a host name: no network contains it
    # An IPv4 peer reaching a dual-stack socket shows up as ::ffff:a.b.c.d.
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


@attrs.frozen
class RouteMatch:
    """The conditions of a route; all that are set must hold. Regular
    expressions must match the whole value (a missing user is "")."""

    request_user: re.Pattern[str] | None = None
    from_user: re.Pattern[str] | None = None
    to_user: re.Pattern[str] | None = None
    source_trunk: re.Pattern[str] | None = None
    source_ip: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    direction: tuple[str, ...] = ()
    extension: bool | None = None

    def matches(self, facts: CallFacts) -> bool:
        if self.extension is not None and facts.callee_is_extension != self.extension:
            return False
        if self.direction and facts.direction not in self.direction:
            return False
        if not (_full_match(self.request_user, facts.request_user)
                and _full_match(self.from_user, facts.from_user)
                and _full_match(self.to_user, facts.to_user)):
            return False
        if self.source_trunk is not None and (
                facts.source_trunk is None or not self.source_trunk.fullmatch(facts.source_trunk)):
            return False
        if self.source_ip:
            address = _source_address(facts.source.host)
            if address is None or not any(address in net for net in self.source_ip):
                return False
        return True


@attrs.frozen
class Rewrite:
    """Rewrites the called number: when ``pattern`` matches all of it, the
    number becomes ``replacement`` with ``\\1``/``\\g<name>`` filled in
    (``9(\\d+)`` -> ``\\1`` strips a 9; ``(\\d{10})`` -> ``+1\\1`` adds +1).
    A number the pattern does not match is left as it is."""

    pattern: re.Pattern[str]
    replacement: str

    def apply(self, number: str) -> str:
        match = self.pattern.fullmatch(number)
        return number if match is None else match.expand(self.replacement)


def _expand(template: str, called: str) -> str:
    if CALLED not in template:
        return template
    if template.lower().startswith(("sip:", "sips:")):
        called = quote(called, safe=_USER_SAFE)
    return template.replace(CALLED, called)


@attrs.frozen(kw_only=True)
class StaticRoute:
    """One compiled route; :meth:`from_config` builds it from a config entry."""

    name: str
    priority: int = 100
    match: RouteMatch = RouteMatch()
    rewrite: Rewrite | None = None
    action: str = attrs.field(default="forward", validator=_one_of(STATIC_ACTIONS, "action"))
    destinations: tuple[str, ...] = ()
    strategy: str = attrs.field(default="parallel", validator=_one_of(STRATEGIES, "strategy"))
    status: int | None = attrs.field(default=None, validator=_validate(check_status))
    reason: str | None = attrs.field(default=None, validator=_validate(check_reason))
    ring_timeout: float | None = attrs.field(
        default=None, validator=_validate(lambda v: _positive_seconds(v, "ring_timeout")))
    max_duration: float | None = attrs.field(
        default=None, validator=_validate(lambda v: _positive_seconds(v, "max_duration")))
    record: bool = attrs.field(default=False, validator=attrs.validators.instance_of(bool))
    media_proxy: str = attrs.field(default="auto",
                                   validator=_one_of(MEDIA_PROXY_MODES, "media_proxy"))
    headers: tuple[tuple[str, str], ...] = attrs.field(default=(), validator=_header_pairs)

    def __attrs_post_init__(self) -> None:
        for destination in self.destinations:
            check_destination(destination)
        if self.action == "forward" and not self.destinations:
            raise RouteError("a forward route needs a destination")

    @classmethod
    def from_config(cls, config: Any) -> StaticRoute:
        """From a :class:`pbxd.config.RouteConfig` (checked at load already;
        RouteError if something slipped through)."""
        match = config.match
        rewrite = None
        if config.rewrite.pattern is not None:
            check_rewrite(config.rewrite.pattern, config.rewrite.replacement)
            rewrite = Rewrite(_compile(config.rewrite.pattern),  # type: ignore[arg-type]
                              config.rewrite.replacement)
        return cls(
            name=config.name,
            priority=config.priority,
            match=RouteMatch(
                request_user=_compile(match.request_user),
                from_user=_compile(match.from_user),
                to_user=_compile(match.to_user),
                source_trunk=_compile(match.source_trunk),
                source_ip=tuple(_network(net) for net in match.source_ip),
                direction=tuple(match.direction),
                extension=match.extension,
            ),
            rewrite=rewrite,
            action=config.action,
            destinations=tuple(config.destination),
            strategy=config.strategy,
            status=config.status,
            reason=config.reason,
            ring_timeout=config.ring_timeout,
            max_duration=config.max_duration,
            record=config.record,
            media_proxy=config.media_proxy,
            headers=tuple(check_header(name, value) for name, value in config.headers),
        )

    def decide(self, facts: CallFacts) -> RouteDecision:
        source = f"static route {self.name}"
        if self.action == "reject":
            return RouteDecision.refusal("reject", source, self.status, self.reason)
        called = facts.request_user or ""
        if self.rewrite is not None:
            called = self.rewrite.apply(called)
        try:
            targets = tuple(RouteTarget(_expand(d, called)) for d in self.destinations)
        except RouteError:
            # The caller dialled something no target can be made of (the
            # number is the caller's text: it stays out of the source).
            return RouteDecision.refusal("reject", source, 404, "Not Found")
        return RouteDecision(
            action="forward", source=source, targets=targets, strategy=self.strategy,
            record=self.record, timeout=self.ring_timeout, max_duration=self.max_duration,
            media_proxy=self.media_proxy, headers=self.headers, called=called,
        )


BUILTIN_EXTENSIONS_ROUTE = StaticRoute(
    name=EXTENSIONS_ROUTE, priority=0, match=RouteMatch(extension=True), destinations=(CALLED,))


@attrs.frozen
class StaticRouter:
    """Routes in the order they are tried: by priority, lowest first, ties in
    config order (the built-in route before configured ones)."""

    routes: tuple[StaticRoute, ...] = ()

    @classmethod
    def from_config(cls, routes: Iterable[Any], builtin: bool = True) -> StaticRouter:
        """From the ``routes`` config section. With ``builtin``, the
        ``extensions`` route is added unless a configured route has its name
        (which replaces it); routes with ``enabled: false`` are left out."""
        configured = list(routes)
        names = {route.name for route in configured}
        compiled = [StaticRoute.from_config(route) for route in configured if route.enabled]
        if builtin and EXTENSIONS_ROUTE not in names:
            compiled.insert(0, BUILTIN_EXTENSIONS_ROUTE)
        # sorted() is stable: equal priorities keep their order.
        return cls(tuple(sorted(compiled, key=lambda route: route.priority)))

    def decide(self, facts: CallFacts) -> RouteDecision:
        """The first matching route's decision; ``not_handled`` when none matches."""
        for route in self.routes:
            if route.match.matches(facts):
                return route.decide(facts)
        return RouteDecision.not_handled("static routes")


__all__ = [
    "ACTIONS",
    "BUILTIN_EXTENSIONS_ROUTE",
    "CALLED",
    "DEFAULT_STATUS",
    "DIRECTIONS",
    "EXTENSIONS_ROUTE",
    "MEDIA_PROXY_MODES",
    "PROTECTED_HEADERS",
    "STATIC_ACTIONS",
    "STRATEGIES",
    "CallFacts",
    "Rewrite",
    "RouteDecision",
    "RouteError",
    "RouteMatch",
    "RouteTarget",
    "StaticRoute",
    "StaticRouter",
    "check_destination",
    "check_header",
    "check_headers",
    "check_reason",
    "check_rewrite",
    "check_status",
    "target_kind",
    "uri_user",
]
