"""pbxd's in-process event bus: what happened, told to whoever listens.

The registrar, the call layer and the trunks publish typed events
(:class:`RegistrationEvent`, :class:`CallEvent`, :class:`TrunkEvent`); the
WebSocket endpoint (``/ws``) and the metrics subscribe. Publishing is
synchronous and cheap: the subscriber list is an immutable tuple swapped on
(un)subscribe, so a publish is one loop over it with a topic check. A
subscriber must not block; one that raises is logged and the others (and the
publisher) carry on, so no listener can break a REGISTER or a call.

Every event has a ``topic`` (one of :data:`TOPICS`), a ``type`` (what
happened: ``registered``, ``answered``, ...), a ``time`` (POSIX seconds from
the publisher's clock) and :meth:`to_json` giving the document ``/ws`` sends
(see docs/events.md).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, ClassVar, Protocol

import attrs
from twisted.logger import Logger

from pbxd.store import Binding
from pbxd.transport.target import Target

log = Logger()

REGISTRATION = "registration"
CALL = "call"
TRUNK = "trunk"
PRESENCE = "presence"
QUEUE = "queue"
TOPICS = (REGISTRATION, CALL, TRUNK, PRESENCE, QUEUE)

# Registration types: the location service's events (pbxd.registrar.location).
REGISTRATION_TYPES = ("registered", "unregistered", "offline")
# Call types: a call rings, is answered, is held or resumed, ends.
CALL_TYPES = ("ringing", "answered", "held", "resumed", "transferred", "ended")
# Where a DTMF digit was read: an RFC 4733 telephone-event in the RTP, or a SIP INFO body.
DTMF_SOURCES = ("rtp", "info")


class Event(Protocol):
    topic: ClassVar[str]
    type: str
    time: float

    def to_json(self) -> dict[str, Any]: ...


def _check_type(allowed: tuple[str, ...]) -> Callable[[Any, attrs.Attribute, str], None]:
    def check(instance: Any, attribute: attrs.Attribute, value: str) -> None:
        if value not in allowed:
            raise ValueError(f"{type(instance).__name__}.type must be one of {', '.join(allowed)}, got {value!r}")

    return check


def _envelope(event: Any) -> dict[str, Any]:
    return {"topic": event.topic, "type": event.type, "time": event.time}


@attrs.frozen
class RegistrationEvent:
    """A binding was added or refreshed to a new flow (registered), removed by
    the phone (unregistered), or expired / failed qualify (offline)."""

    topic: ClassVar[str] = REGISTRATION

    type: str = attrs.field(validator=_check_type(REGISTRATION_TYPES))
    time: float
    aor: str
    contact: str
    source: str  # "udp:203.0.113.5:5060": where the REGISTER came from
    expires_at: float
    user_agent: str = ""

    @classmethod
    def of(cls, type: str, binding: Binding, time: float) -> RegistrationEvent:
        source = str(Target(binding.source_transport, binding.source_host, binding.source_port))
        return cls(type, time, binding.aor, binding.contact_uri, source, binding.expires_at,
                   binding.user_agent)

    @property
    def user(self) -> str:
        """The user part of the AOR (the extension number for local users)."""
        rest = self.aor.split(":", 1)[-1]
        return rest.split("@", 1)[0] if "@" in rest else ""

    def to_json(self) -> dict[str, Any]:
        return {**_envelope(self), "aor": self.aor, "user": self.user, "contact": self.contact,
                "source": self.source, "expires_at": self.expires_at, "user_agent": self.user_agent}


@attrs.frozen
class CallEvent:
    """A call changed state. ``disposition``, ``cause`` and ``status`` are set
    when it ends (the CDR's values); ``detail`` says more where a type needs
    it (the transfer target)."""

    topic: ClassVar[str] = CALL

    type: str = attrs.field(validator=_check_type(CALL_TYPES))
    time: float
    call_id: str
    from_number: str
    to_number: str
    direction: str
    trunk: str | None = None
    disposition: str | None = None
    cause: str | None = None
    status: int | None = None
    detail: str | None = None

    @classmethod
    def of(cls, type: str, call: Any, **extra: Any) -> CallEvent:
        """The event for a :class:`pbxd.call.call.Call` (read by its attributes,
        so this module needs no import of the call layer)."""
        return cls(type, call.manager.clock.seconds(), call.id, call.from_number, call.to_number,
                   call.direction, call.trunk, **extra)

    def to_json(self) -> dict[str, Any]:
        document = {**_envelope(self), "call_id": self.call_id, "from": self.from_number,
                    "to": self.to_number, "direction": self.direction, "trunk": self.trunk}
        for name in ("disposition", "cause", "status", "detail"):
            value = getattr(self, name)
            if value is not None:
                document[name] = value
        return document


@attrs.frozen
class DtmfEvent:
    """A phone in a call sent a DTMF digit (for IVR and voicemail to consume).

    ``track_id`` is the call leg whose phone sent it (the console's track id),
    ``side`` whether that is the caller or the callee, ``duration`` the
    digit's length in ms (0 when unknown: an INFO without one, or an RFC 4733
    event whose end packets were all lost).
    """

    topic: ClassVar[str] = CALL

    time: float
    call_id: str
    track_id: str
    side: str
    digit: str
    duration: int
    source: str = attrs.field(validator=attrs.validators.in_(DTMF_SOURCES))
    type: str = attrs.field(default="dtmf", init=False)

    def to_json(self) -> dict[str, Any]:
        return {**_envelope(self), "call_id": self.call_id, "track_id": self.track_id, "side": self.side,
                "digit": self.digit, "duration": self.duration, "source": self.source}


@attrs.frozen
class TrunkEvent:
    """A trunk's registration or health changed (``type`` is the new state,
    e.g. registered / failed / up / down)."""

    topic: ClassVar[str] = TRUNK

    type: str
    time: float
    trunk: str
    detail: str = ""

    def to_json(self) -> dict[str, Any]:
        return {**_envelope(self), "trunk": self.trunk, "detail": self.detail}


Subscriber = Callable[[Any], None]


@attrs.frozen(eq=False)
class Subscription:
    """One subscriber; :meth:`cancel` ends it (idempotent)."""

    bus: EventBus
    callback: Subscriber
    topics: frozenset[str] | None  # None: every topic

    def wants(self, topic: str) -> bool:
        return self.topics is None or topic in self.topics

    def cancel(self) -> None:
        self.bus._remove(self)


class EventBus:
    """Synchronous publish/subscribe by topic (see the module docstring)."""

    def __init__(self) -> None:
        self._subscriptions: tuple[Subscription, ...] = ()
        # Totals per topic since start, for /metrics.
        self.published: dict[str, int] = dict.fromkeys(TOPICS, 0)
        self.subscriber_errors = 0

    def subscribe(self, callback: Subscriber, topics: Iterable[str] | None = None) -> Subscription:
        """Call ``callback(event)`` for each event of ``topics`` (None: all)."""
        wanted = None
        if topics is not None:
            wanted = frozenset(topics)
            unknown = wanted - set(TOPICS)
            if unknown:
                raise ValueError(f"unknown topics: {', '.join(sorted(unknown))}")
        subscription = Subscription(self, callback, wanted)
        self._subscriptions = (*self._subscriptions, subscription)
        return subscription

    def _remove(self, subscription: Subscription) -> None:
        self._subscriptions = tuple(s for s in self._subscriptions if s is not subscription)

    def __len__(self) -> int:
        return len(self._subscriptions)

    def publish(self, event: Event) -> None:
        """Tell every interested subscriber, now, in subscription order."""
        topic = event.topic
        self.published[topic] = self.published.get(topic, 0) + 1
        # The tuple read here is the one publishing goes through, even if a
        # subscriber (un)subscribes meanwhile.
        for subscription in self._subscriptions:
            if subscription.topics is not None and topic not in subscription.topics:
                continue
            try:
                subscription.callback(event)
            except Exception:
                self.subscriber_errors += 1
                log.failure("event subscriber {callback!r} failed on {topic} {type}",
                            callback=subscription.callback, topic=topic, type=event.type)


def registration_publisher(bus: EventBus, clock: Any) -> Callable[[str, Any], None]:
    """A :class:`pbxd.registrar.location.LocationService` observer that
    publishes each location event (registered / unregistered / offline)."""

    def observe(event: str, contact: Any) -> None:
        bus.publish(RegistrationEvent.of(event, contact.binding, clock.seconds()))

    return observe


def watch_trunks(bus: EventBus, clock: Any, registrations: Iterable[Any], checkers: Iterable[Any]) -> None:
    """Publish trunk events from the trunks' own observers: where a
    registration ends up when that changes (registered, failed, stopped) and
    a destination going up or down under OPTIONS health checks."""
    for registration in registrations:
        registration.observers.append(_registration_watcher(bus, clock, registration.trunk.name))
    for checker in checkers:
        checker.observers.append(_health_watcher(bus, clock, checker.trunk.name))


def _registration_watcher(bus: EventBus, clock: Any, name: str) -> Callable[[Any], None]:
    last: list[str] = []

    def observe(status: Any) -> None:
        # The steps in between (registering, unregistering) come with every
        # refresh; only where a registration ends up is news.
        if status.state in ("registering", "unregistering") or last == [status.state]:
            return
        last[:] = [status.state]
        bus.publish(TrunkEvent(status.state, clock.seconds(), name, status.reason))

    return observe


def _health_watcher(bus: EventBus, clock: Any, name: str) -> Callable[[Any, Any], None]:
    def observe(destination: Any, health: Any) -> None:
        bus.publish(TrunkEvent("up" if health.up else "down", clock.seconds(), name,
                               f"{destination}: {health.reason}"))

    return observe


__all__ = [
    "CALL",
    "PRESENCE",
    "QUEUE",
    "REGISTRATION",
    "TOPICS",
    "TRUNK",
    "CallEvent",
    "DtmfEvent",
    "Event",
    "EventBus",
    "RegistrationEvent",
    "Subscription",
    "TrunkEvent",
    "registration_publisher",
    "watch_trunks",
]
