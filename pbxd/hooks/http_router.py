"""The HTTP router webhook (rustpbx-api-integration.md §1.1), and :class:`Router`,
the one place that says which router decides and when routing falls back.

For each new INVITE, :class:`HttpRouter` POSTs the call's facts as JSON to
the configured URL (with the configured headers) and reads the answer
strictly into a :class:`~pbxd.call.routing.RouteDecision`. Anything else —
an HTTP error status, no answer within ``timeout``, a refused connection, a
body that is not JSON, a key it does not know, a value of the wrong type, an
unknown action, a forward without targets — is a :class:`RouterFailure`.

:meth:`Router.decide` applies issue 4's rules: the HTTP router (when one is
configured) first; its ``not_handled``, or a failure when
``fallback_to_static`` is true, goes to the static routes; a failure
otherwise is a 503.

One attempt, no retries: the caller waits (hearing nothing, or ringback)
while the router thinks, so the whole wait is bounded by ``timeout``. A
retry would only double the wait on a receiver that is already failing;
``fallback_to_static`` is the remedy for a router that is down.

The answer may carry, besides §1.1's keys, ``max_duration`` (seconds an
answered call may last), ``status`` and ``reason`` for the refusals, and
targets as objects ``{"target": ..., "headers": {...}, "timeout": N}``.
The request carries, besides §1.1's keys, ``transport`` and ``source_trunk``.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

import attrs
from twisted.internet import defer
from twisted.logger import Logger

from pbxd.call.routing import (
    ACTIONS,
    CallFacts,
    RouteDecision,
    RouteError,
    RouteTarget,
    StaticRouter,
    check_headers,
)
from pbxd.hooks.client import WebhookClient, WebhookError

log = Logger()

SOURCE = "http router"

_ANSWER_KEYS = frozenset({
    "action", "targets", "strategy", "status", "reason", "record", "timeout", "max_ring_time",
    "max_duration", "media_proxy", "headers",
})
_TARGET_KEYS = frozenset({"target", "headers", "timeout"})


@attrs.frozen
class RouterFailure:
    """The HTTP router gave no usable answer: why, and its HTTP status if it sent one."""

    reason: str
    http_status: int | None = None


def router_request(facts: CallFacts) -> dict[str, Any]:
    """The JSON body of §1.1 for one INVITE. A header that occurs more than
    once is one entry, its values joined by ", " (RFC 3261 §7.3.1)."""
    headers: dict[str, str] = {}
    for name, value in facts.headers:
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    return {
        "call_id": facts.call_id,
        "from": facts.from_header,
        "to": facts.to_header,
        "source_addr": facts.source.hostport,
        "direction": facts.direction,
        "method": facts.method,
        "uri": facts.request_uri,
        "headers": headers,
        "body": facts.body,
        "transport": facts.source.transport,
        "source_trunk": facts.source_trunk,
    }


def _given(answer: Mapping[str, Any], key: str, default: Any = None) -> Any:
    """A key's value; JSON null counts as not given."""
    value = answer.get(key)
    return default if value is None else value


def _headers(value: Any, what: str) -> tuple[tuple[str, str], ...]:
    if value is None:
        return ()
    if not isinstance(value, dict):
        raise RouteError(f"{what} must be an object of header names to values")
    return check_headers(value)


def _target(value: Any) -> RouteTarget:
    if isinstance(value, str):
        return RouteTarget(value)
    if not isinstance(value, dict):
        raise RouteError("a target must be a string or an object")
    unknown = set(value) - _TARGET_KEYS
    if unknown:
        raise RouteError(f"unknown target keys {sorted(unknown)}")
    return RouteTarget(value.get("target"), timeout=value.get("timeout"),
                       headers=_headers(value.get("headers"), "target headers"))


def parse_router_answer(answer: Any, source: str = SOURCE) -> RouteDecision:
    """The decision in a router's (parsed JSON) answer. RouteError or
    TypeError, saying why, for anything that is not a valid answer."""
    if not isinstance(answer, dict):
        raise RouteError("the answer is not a JSON object")
    unknown = set(answer) - _ANSWER_KEYS
    if unknown:
        raise RouteError(f"unknown keys {sorted(unknown)}")
    action = answer.get("action")
    if not isinstance(action, str) or action not in ACTIONS:
        raise RouteError(f"action must be one of {', '.join(ACTIONS)}, not {action!r}")
    if action == "not_handled":
        return RouteDecision.not_handled(source)
    if action != "forward":
        return RouteDecision.refusal(action, source, answer.get("status"), answer.get("reason"))
    targets = answer.get("targets")
    if not isinstance(targets, list) or not targets:
        raise RouteError("forward needs a non-empty list of targets")
    # The decision's own validators check every value's type and range.
    return RouteDecision(
        action="forward",
        source=source,
        targets=tuple(_target(target) for target in targets),
        strategy=_given(answer, "strategy", "parallel"),
        record=_given(answer, "record", False),
        timeout=answer.get("timeout"),
        max_ring_time=answer.get("max_ring_time"),
        max_duration=answer.get("max_duration"),
        media_proxy=_given(answer, "media_proxy", "auto"),
        headers=_headers(answer.get("headers"), "headers"),
    )


class HttpRouter:
    """Asks the HTTP router about each INVITE through ``client`` (one attempt,
    at most ``timeout`` seconds). ``headers`` (a mapping or pairs) go on every
    request; ``fallback_to_static`` is read by :class:`Router`."""

    def __init__(
        self,
        client: WebhookClient,
        url: str,
        headers: Mapping[str, str] | Iterable[tuple[str, str]] = (),
        timeout: float = 3.0,
        fallback_to_static: bool = True,
    ) -> None:
        self.client = client
        self.url = url
        self.headers = dict(headers)
        self.timeout = timeout
        self.fallback_to_static = fallback_to_static

    def route(self, facts: CallFacts) -> defer.Deferred[RouteDecision | RouterFailure]:
        """Fires with the router's decision or a RouterFailure; fails only
        with CancelledError when the caller cancels it (the call was
        cancelled while the router thought)."""
        return defer.Deferred.fromCoroutine(self._route(facts))

    async def _route(self, facts: CallFacts) -> RouteDecision | RouterFailure:
        try:
            response = await self.client.post_json(self.url, router_request(facts), self.headers,
                                                   timeout=self.timeout, retries=0)
        except WebhookError as e:
            return self._failed(facts, e.reason, e.status)
        except (TypeError, ValueError) as e:  # a URL or headers that cannot be sent
            return self._failed(facts, str(e), None)
        if not 200 <= response.status < 300:
            return self._failed(facts, f"HTTP {response.status}", response.status)
        try:
            decision = parse_router_answer(response.json())
        except (TypeError, ValueError) as e:  # JSONDecodeError and UnicodeDecodeError included
            return self._failed(facts, f"unusable answer: {e}", response.status)
        log.debug("http router: call {call_id} -> {action}", call_id=facts.call_id,
                  action=decision.action)
        return decision

    def _failed(self, facts: CallFacts, reason: str, status: int | None) -> RouterFailure:
        log.warn("http router {url} failed for call {call_id}: {reason}", url=self.url,
                 call_id=facts.call_id, reason=reason)
        return RouterFailure(reason, status)


class Router:
    """Routing for the call layer: the HTTP router when there is one, then
    the static routes. ``static`` is replaced whole on a reload (a call
    being routed keeps the one it started with)."""

    def __init__(self, static: StaticRouter, http: HttpRouter | None = None) -> None:
        self.static = static
        self.http = http

    @classmethod
    def from_config(cls, routes: Iterable[Any], http_router: Any,
                    client: WebhookClient | None) -> Router:
        """From the ``routes`` and ``http_router`` config sections; ``client``
        is needed when ``http_router.url`` is set."""
        http = None
        if http_router.url is not None:
            if client is None:
                raise ValueError("an HTTP router needs a WebhookClient")
            http = HttpRouter(client, http_router.url, http_router.headers, http_router.timeout,
                              http_router.fallback_to_static)
        return cls(StaticRouter.from_config(routes), http)

    def decide(self, facts: CallFacts) -> defer.Deferred[RouteDecision]:
        """The decision for a new call; never fails (but may be cancelled).
        ``not_handled`` here means nobody routes the call: answer 404."""
        if self.http is None:
            return defer.succeed(self.static.decide(facts))
        return defer.Deferred.fromCoroutine(self._decide(self.http, facts))

    async def _decide(self, http: HttpRouter, facts: CallFacts) -> RouteDecision:
        answer = await http.route(facts)
        if isinstance(answer, RouteDecision):
            if answer.action != "not_handled":
                return answer
            return self.static.decide(facts)
        if http.fallback_to_static:
            log.info("call {call_id}: static routes decide, the http router failed",
                     call_id=facts.call_id)
            return self.static.decide(facts)
        return RouteDecision.refusal("reject", SOURCE, 503, "Service Unavailable")


__all__ = [
    "HttpRouter",
    "Router",
    "RouterFailure",
    "parse_router_answer",
    "router_request",
]
