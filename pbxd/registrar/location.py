"""The location service (RFC 3261 §10): where each address-of-record can be reached now.

Bindings live in memory, keyed by AOR and binding key, and are mirrored to the
store: every change is written (in one transaction per REGISTER) before memory
changes and before the registrar answers, so a restart loses no registration
it acknowledged. At start-up :meth:`LocationService.load` reads the store back,
drops what expired meanwhile and schedules the rest.

Expiry runs off one timer on the injected clock, set for the earliest binding
to expire; a tick removes at most ``expiry_batch`` bindings and comes back at
once for the rest, so a mass expiry never holds the reactor for long.

Each binding keeps its flow: the transport, address and port the REGISTER
really came from, and the local socket it arrived on. Requests to the phone go
to the flow, not to the Contact: behind a NAT that is the only way in (the
Contact holds the phone's private address), and without one the two agree.
"""

from __future__ import annotations

import functools
import heapq
import ipaddress
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from contextlib import asynccontextmanager

import attrs
from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from pbxd.sip.errors import SipParseError
from pbxd.sip.uri import SipURI, bare_host, parse_uri
from pbxd.store import Binding, Store
from pbxd.transport import Target
from pbxd.transport.target import DEFAULT_PORTS, canonical_host

log = Logger(namespace="pbxd.registrar.location")

REGISTERED = "registered"
UNREGISTERED = "unregistered"
OFFLINE = "offline"

# observer(event, contact): told of every location event, after memory changed.
Observer = Callable[[str, "BoundContact"], None]


def flow_of(binding: Binding) -> Target:
    """The flow a binding's REGISTER came over, as a Target to send to."""
    local = (binding.local_host, binding.local_port) if binding.local_host else None
    return Target(binding.source_transport, binding.source_host, binding.source_port, local=local)


def behind_nat(contact_uri: str, flow: Target) -> bool:
    """Whether the Contact is not where the REGISTER came from.

    A Contact whose address (or port, or transport) differs from the packet's
    source was written by a phone behind a NAT, or names a host pbxd would
    have to resolve: either way the flow is the way to reach it. A private
    Contact address from a public source is the common case.
    """
    try:
        uri = parse_uri(contact_uri)
    except SipParseError:
        return True
    if not isinstance(uri, SipURI):
        return True
    host = canonical_host(bare_host(uri.host))
    try:
        contact_address = ipaddress.ip_address(host)
        source_address = ipaddress.ip_address(flow.host)
    except ValueError:
        return True
    transport = uri.transport or ("tls" if uri.secure else "udp")
    port = uri.port or DEFAULT_PORTS.get(transport, 5060)
    if flow.reliable:
        # A stream's source port is the phone's ephemeral one: only the
        # address tells whether a NAT is in the way.
        return contact_address != source_address
    return (contact_address, port, transport) != (source_address, flow.port, flow.transport)


# behind_nat parses the Contact URI and two addresses; a phone re-registers
# with the same Contact from the same flow, so the answer is remembered.
# (Target's equality and hash are transport, host and port: all it reads.)
_behind_nat_memo = functools.lru_cache(maxsize=4096)(behind_nat)


@attrs.frozen
class BoundContact:
    """A binding as the location service holds it: stored record, flow and state.

    To reach the phone a request goes to ``target`` (the flow), with
    ``request_uri`` as its Request-URI and a Route header per entry of
    ``route`` (the Path of RFC 3327, in order).
    """

    binding: Binding
    flow: Target
    nat: bool
    online: bool = True

    @classmethod
    def of(cls, binding: Binding, online: bool = True) -> BoundContact:
        flow = flow_of(binding)
        return cls(binding, flow, _behind_nat_memo(binding.contact_uri, flow), online)

    @property
    def aor(self) -> str:
        return self.binding.aor

    @property
    def key(self) -> str:
        return self.binding.key

    @property
    def request_uri(self) -> str:
        return self.binding.contact_uri

    @property
    def route(self) -> tuple[str, ...]:
        return self.binding.path

    @property
    def target(self) -> Target:
        return self.flow

    @property
    def expires_at(self) -> float:
        return self.binding.expires_at

    @property
    def q(self) -> float:
        return 1.0 if self.binding.q is None else self.binding.q


def _preference(contact: BoundContact) -> tuple[float, float]:
    # Highest q first; among equals the latest registration first.
    return (-contact.q, -contact.binding.received_at)


class LocationService:
    """Bindings per AOR, in memory and in the store, with expiry and events.

    ``locator`` (a :class:`pbxd.hooks.locator.LocatorNotifier`, or anything
    with ``notify(event, binding)``) is told of registered, unregistered and
    offline bindings without waiting for it. ``domain`` is the host part of the
    AORs this service keys by (:meth:`aor`).
    """

    def __init__(
        self,
        store: Store,
        clock: IReactorTime,
        locator=None,  # type: ignore[no-untyped-def]
        *,
        domain: str = "pbxd",
        expiry_batch: int = 500,
    ) -> None:
        if expiry_batch < 1:
            raise ValueError("expiry_batch must be at least 1")
        self.store = store
        self.clock = clock
        self.locator = locator
        self.domain = domain
        self.expiry_batch = expiry_batch
        self.observers: list[Observer] = []
        self.loaded = False
        self._aors: dict[str, dict[str, BoundContact]] = {}
        self._count = 0
        # (expires_at, aor, key) for every binding, plus stale entries of
        # refreshed or removed ones, skipped when they come up.
        self._expiries: list[tuple[float, str, str]] = []
        self._timer: IDelayedCall | None = None
        self._locks: dict[str, defer.DeferredLock] = {}
        self._stopped = False

    # -- reading ---------------------------------------------------------------

    def aor(self, user: str) -> str:
        """The AOR of a local user: how bindings are keyed."""
        return f"sip:{user}@{self.domain}"

    def bindings(self, aor: str) -> list[BoundContact]:
        """Every unexpired binding of the AOR, offline ones included, preferred first."""
        now = self.clock.seconds()
        contacts = [c for c in self._aors.get(aor, {}).values() if c.expires_at > now]
        contacts.sort(key=_preference)
        return contacts

    def lookup(self, aor: str) -> list[BoundContact]:
        """Where to send a request for the AOR: online bindings, highest q first."""
        return [contact for contact in self.bindings(aor) if contact.online]

    def lookup_user(self, user: str) -> list[BoundContact]:
        return self.lookup(self.aor(user))

    def has_user(self, user: str) -> bool:
        """Whether the local user has a binding (users of an HTTP backend exist only so)."""
        return bool(self.bindings(self.aor(user)))

    def contact(self, aor: str, key: str) -> BoundContact | None:
        """The binding with that key, if it is held and not expired."""
        contact = self._aors.get(aor, {}).get(key)
        if contact is None or contact.expires_at <= self.clock.seconds():
            return None
        return contact

    def contacts(self) -> Iterator[BoundContact]:
        """Every binding held, expired ones not yet removed included."""
        for bound in self._aors.values():
            yield from bound.values()

    def __len__(self) -> int:
        return self._count

    # -- loading ---------------------------------------------------------------

    async def load(self) -> int:
        """Read the stored bindings: the expired are removed (and reported
        offline), the others held and scheduled. Returns how many are held."""
        now = self.clock.seconds()
        expired = await self.store.purge_expired(now)
        stored = await self.store.all_bindings()
        for binding in stored:
            self._put(BoundContact.of(binding))
        self.loaded = True
        self._schedule()
        for binding in expired:
            self._emit(OFFLINE, BoundContact.of(binding, online=False))
        log.info("location: {held} bindings loaded, {expired} expired while pbxd was down",
                 held=len(stored), expired=len(expired))
        return len(stored)

    # -- changing ----------------------------------------------------------------

    @asynccontextmanager
    async def serialized(self, aor: str) -> AsyncIterator[None]:
        """Hold the AOR's lock: one REGISTER at a time reads and changes an AOR,
        so that §10.3's Call-ID/CSeq checks see the bindings they change."""
        lock = self._locks.get(aor)
        if lock is None:
            lock = self._locks[aor] = defer.DeferredLock()
        await lock.acquire()
        try:
            yield
        finally:
            lock.release()
            if not lock.locked and not lock.waiting:
                self._locks.pop(aor, None)

    async def commit(
        self, aor: str, upserts: Iterable[Binding], remove_keys: Iterable[str]
    ) -> list[BoundContact]:
        """Apply one REGISTER's changes: store first, then memory, then events.

        Fails with the store's error (nothing changed in memory then). Returns
        the AOR's bindings afterwards, preferred first.
        """
        upserts = list(upserts)
        remove_keys = [key for key in remove_keys if key not in {b.key for b in upserts}]
        await self.store.apply_bindings(aor, upserts, remove_keys)
        bound = self._aors.get(aor, {})
        events: list[tuple[str, BoundContact]] = []
        for key in remove_keys:
            old = bound.get(key)
            if old is not None:
                self._drop(aor, key)
                events.append((UNREGISTERED, old))
        for binding in upserts:
            new = BoundContact.of(binding)
            old = self._aors.get(aor, {}).get(binding.key)
            self._put(new)
            now = self.clock.seconds()
            fresh = old is None or old.expires_at <= now or not old.online
            if fresh or old.flow != new.flow or old.request_uri != new.request_uri:
                events.append((REGISTERED, new))
        self._schedule()
        for event, contact in events:
            self._emit(event, contact)
        return self.bindings(aor)

    def set_online(self, contact: BoundContact, online: bool) -> bool:
        """Mark a binding reachable or not (qualify); True if its state changed.

        Offline bindings stay registered but are left out of :meth:`lookup`.
        """
        current = self._aors.get(contact.aor, {}).get(contact.key)
        if current is None or current.binding != contact.binding or current.online == online:
            return False
        changed = attrs.evolve(current, online=online)
        self._aors[contact.aor][contact.key] = changed
        self._emit(REGISTERED if online else OFFLINE, changed)
        return True

    # -- expiry ------------------------------------------------------------------

    def _schedule(self) -> None:
        if self._stopped:
            return
        expiries = self._expiries
        if len(expiries) > 2 * self._count + 1024:
            # Refreshes leave stale entries behind; rebuild rather than let them pile up.
            self._expiries = expiries = [(c.expires_at, c.aor, c.key) for c in self.contacts()]
            heapq.heapify(expiries)
        if not expiries:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            return
        due = expiries[0][0]
        if self._timer is not None:
            if self._timer.getTime() <= due:
                return
            self._timer.cancel()
        self._timer = self.clock.callLater(max(0.0, due - self.clock.seconds()), self._expire)

    def _expire(self) -> None:
        self._timer = None
        now = self.clock.seconds()
        expired: list[BoundContact] = []
        expiries = self._expiries
        budget = self.expiry_batch
        while expiries and expiries[0][0] <= now and budget:
            _, aor, key = heapq.heappop(expiries)
            budget -= 1
            contact = self._aors.get(aor, {}).get(key)
            if contact is not None and contact.expires_at <= now:
                self._drop(aor, key)
                expired.append(contact)
        if expired:
            self.store.purge_expired(now).addErrback(
                lambda failure: log.failure("location: removing expired bindings failed", failure))
        for contact in expired:
            log.info("binding {contact} of {aor} expired", contact=contact.request_uri,
                     aor=contact.aor)
            self._emit(OFFLINE, attrs.evolve(contact, online=False))
        if expiries and expiries[0][0] <= now and not self._stopped:
            self._timer = self.clock.callLater(0, self._expire)  # more due: after other work
        else:
            self._schedule()

    def stop(self) -> None:
        """Cancel the expiry timer (shutdown); the store keeps the bindings."""
        self._stopped = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    # -- internals -----------------------------------------------------------------

    def _put(self, contact: BoundContact) -> None:
        bound = self._aors.setdefault(contact.aor, {})
        if contact.key not in bound:
            self._count += 1
        bound[contact.key] = contact
        heapq.heappush(self._expiries, (contact.expires_at, contact.aor, contact.key))

    def _drop(self, aor: str, key: str) -> None:
        bound = self._aors.get(aor)
        if bound is None or key not in bound:
            return
        del bound[key]
        self._count -= 1
        if not bound:
            del self._aors[aor]

    def _emit(self, event: str, contact: BoundContact) -> None:
        if self.locator is not None:
            # Fire and forget: the notifier retries on its own and never fails.
            self.locator.notify(event, contact.binding)
        for observer in self.observers:
            try:
                observer(event, contact)
            except Exception:
                log.failure("location observer failed on {event}", event=event)


__all__ = [
    "OFFLINE",
    "REGISTERED",
    "UNREGISTERED",
    "BoundContact",
    "LocationService",
    "behind_nat",
    "flow_of",
]
