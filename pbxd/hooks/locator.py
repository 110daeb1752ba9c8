"""The locator webhook (rustpbx-api-integration.md §1.3): registration events, POSTed.

The registrar calls :meth:`LocatorNotifier.notify` and goes on: the POST, its
retries and its failure happen on their own, and a failure is logged, never
raised into the SIP answer. Presence events are not spooled: one that could
not be delivered after its retries is stale anyway.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

from twisted.internet import defer
from twisted.logger import Logger

from pbxd.hooks.client import WebhookClient
from pbxd.store import Binding

log = Logger()

LOCATOR_EVENTS = ("registered", "unregistered", "offline")


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def locator_payload(event: str, binding: Binding, now: float) -> dict[str, Any]:
    """The §1.3 body for one binding; ``destination`` is where the phone is
    reached (the flow's source address), ``expires`` the seconds left (0 once
    it is gone). ``contact`` is added: a receiver that ignores it loses nothing."""
    return {
        "event": event,
        "timestamp": int(now),
        "location": {
            "aor": binding.aor,
            "destination": _host_port(binding.source_host, binding.source_port),
            "transport": binding.source_transport.upper(),
            "user_agent": binding.user_agent,
            "expires": 0 if event != "registered" else binding.remaining(now),
            "contact": binding.contact_uri,
        },
    }


class LocatorNotifier:
    """POSTs locator events for the ``events`` configured, fire and forget."""

    def __init__(
        self,
        client: WebhookClient,
        url: str,
        events: Iterable[str] = LOCATOR_EVENTS,
        headers: Mapping[str, str] | None = None,
        timeout: float = 5.0,
        retries: int = 3,
        backoff: float = 1.0,
    ) -> None:
        self.events = frozenset(events)
        unknown = self.events - set(LOCATOR_EVENTS)
        if unknown:
            raise ValueError(f"unknown locator events {sorted(unknown)}; known: {LOCATOR_EVENTS}")
        self.client = client
        self.url = url
        self.headers = dict(headers or {})
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        # Per AOR, the "done" Deferred of its last event not yet delivered.
        self._tails: dict[str, defer.Deferred[None]] = {}

    def notify(self, event: str, binding: Binding) -> defer.Deferred[bool]:
        """Send the event unless it is filtered out. The caller need not wait:
        the Deferred fires with whether the receiver took it (2xx), never fails.

        Events of one AOR are sent one after the other, so that a receiver
        never sees "unregistered" before the "registered" it follows.
        """
        if event not in LOCATOR_EVENTS:
            raise ValueError(f"unknown locator event {event!r}")
        if event not in self.events:
            return defer.succeed(False)
        payload = locator_payload(event, binding, self.client.reactor.seconds())
        aor = binding.aor
        done: defer.Deferred[None] = defer.Deferred()
        previous = self._tails.get(aor)
        self._tails[aor] = done

        def send(_: object = None) -> defer.Deferred[bool]:
            return self._post(event, aor, payload).addCallback(finished)

        def finished(delivered: bool) -> bool:
            if self._tails.get(aor) is done:
                del self._tails[aor]
            done.callback(None)
            return delivered

        if previous is None:
            return send()
        # ``previous`` is the previous event's private "done" Deferred: only
        # this event waits on it.
        return previous.addCallback(send)

    def _post(self, event: str, aor: str, payload: dict[str, Any]) -> defer.Deferred[bool]:
        d = self.client.post_json(self.url, payload, self.headers, self.timeout, self.retries,
                                  self.backoff)

        def answered(response: Any) -> bool:
            if 200 <= response.status < 300:
                return True
            log.warn("locator {event} for {aor}: {url} answered HTTP {status}", event=event,
                     aor=aor, url=self.url, status=response.status)
            return False

        def failed(failure: Any) -> bool:
            log.warn("locator {event} for {aor} not delivered to {url}: {error}", event=event,
                     aor=aor, url=self.url, error=failure.value)
            return False

        return d.addCallbacks(answered, failed)


__all__ = ["LOCATOR_EVENTS", "LocatorNotifier", "locator_payload"]
