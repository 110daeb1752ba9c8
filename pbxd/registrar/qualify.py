"""Qualify: an OPTIONS to each binding now and then, to tell live phones from gone ones.

Each binding is asked every ``interval`` seconds over its flow (so the
request goes through the phone's NAT pinhole, and keeps it open). Any answer
means the phone is there, except 408; a timeout (Timer F, 64×T1) or a
transport error marks the binding offline: it stays registered but
:meth:`LocationService.lookup` leaves it out, and the locator hears
``offline``. The next answer (or REGISTER) brings it back.

Checks are spread out: a binding's first check is at a random point within
the interval and each later one ±10% off the interval, so thousands of
phones registered in one burst are not all asked in the same second. One
timer runs on the injected clock; a tick sends at most ``batch`` requests
and comes back at once for the rest.
"""

from __future__ import annotations

import heapq
import random

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from pbxd.registrar.location import REGISTERED, BoundContact, LocationService
from pbxd.sip.ids import new_call_id, new_tag
from pbxd.sip.message import Request, Response
from pbxd.sip.transaction import new_branch

log = Logger(namespace="pbxd.registrar.qualify")


class Qualifier:
    """Sends the OPTIONS of qualify through ``core.layer`` and marks bindings on- or offline."""

    def __init__(
        self,
        core,  # type: ignore[no-untyped-def]  # pbxd.core.SipCore
        location: LocationService,
        clock: IReactorTime,
        interval: float,
        *,
        batch: int = 200,
        rng: random.Random | None = None,
    ) -> None:
        if interval <= 0 or batch < 1:
            raise ValueError("interval and batch must be positive")
        self.core = core
        self.location = location
        self.clock = clock
        self.interval = interval
        self.batch = batch
        self.rng = rng or random.Random()
        self.sent = 0
        self.failed = 0
        self._due: list[tuple[float, str, str]] = []  # (when, aor, key)
        self._scheduled: set[tuple[str, str]] = set()
        self._asking: set[tuple[str, str]] = set()  # an OPTIONS is under way
        self._timer: IDelayedCall | None = None
        self._running = False

    def start(self) -> None:
        self._running = True
        self.location.observers.append(self._location_event)
        for contact in self.location.contacts():
            self._add(contact)
        self._schedule()

    def stop(self) -> None:
        self._running = False
        if self._location_event in self.location.observers:
            self.location.observers.remove(self._location_event)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    # -- scheduling -------------------------------------------------------------

    def _location_event(self, event: str, contact: BoundContact) -> None:
        if event == REGISTERED and (contact.aor, contact.key) not in self._scheduled:
            self._add(contact)
            self._schedule()

    def _add(self, contact: BoundContact) -> None:
        ident = (contact.aor, contact.key)
        self._scheduled.add(ident)
        when = self.clock.seconds() + self.rng.uniform(0, self.interval)
        heapq.heappush(self._due, (when, *ident))

    def _schedule(self) -> None:
        if not self._running or not self._due:
            return
        due = self._due[0][0]
        if self._timer is not None:
            if self._timer.getTime() <= due:
                return
            self._timer.cancel()
        self._timer = self.clock.callLater(max(0.0, due - self.clock.seconds()), self._tick)

    def _tick(self) -> None:
        self._timer = None
        now = self.clock.seconds()
        budget = self.batch
        while self._due and self._due[0][0] <= now and budget:
            _, aor, key = heapq.heappop(self._due)
            budget -= 1
            ident = (aor, key)
            contact = self.location.contact(aor, key)
            if contact is None:
                self._scheduled.discard(ident)  # gone: a new REGISTER adds it again
                self._asking.discard(ident)
                continue
            if ident not in self._asking:
                self._ask(contact)
            when = now + self.interval * self.rng.uniform(0.9, 1.1)
            heapq.heappush(self._due, (when, aor, key))
        if self._due and self._due[0][0] <= now:
            self._timer = self.clock.callLater(0, self._tick)
        else:
            self._schedule()

    # -- asking -----------------------------------------------------------------

    def _ask(self, contact: BoundContact) -> None:
        target = contact.target
        try:
            host, port = self.core.transports.sent_by(target.transport, target.host)
        except ValueError:
            log.warn("cannot qualify {contact}: not listening on {transport}",
                     contact=contact.request_uri, transport=target.transport)
            return
        sent_by = f"{host}:{port}"
        headers = [
            ("Via", f"SIP/2.0/{target.via_transport} {sent_by};branch={new_branch()};rport"),
            ("Max-Forwards", "70"),
            ("From", f"<sip:pbxd@{self.location.domain}>;tag={new_tag()}"),
            ("To", f"<{contact.request_uri}>"),
            ("Call-ID", new_call_id(host)),
            ("CSeq", "1 OPTIONS"),
            *(("Route", hop) for hop in contact.route),
            ("User-Agent", self.core.server_name),
        ]
        request = Request("OPTIONS", contact.request_uri, headers)
        ident = (contact.aor, contact.key)
        self._asking.add(ident)
        self.sent += 1

        def answered(response: Response) -> None:
            if response.status < 200:
                return
            self._asking.discard(ident)
            if response.status == 408:
                self._unreachable(contact, "408 Request Timeout")
            else:
                self._reachable(contact)

        def failed(reason: str) -> None:
            self._asking.discard(ident)
            self._unreachable(contact, reason)

        self.core.layer.send_request(request, target, answered, failed)

    def _reachable(self, contact: BoundContact) -> None:
        current = self.location.contact(contact.aor, contact.key)
        if current is not None and self.location.set_online(current, True):
            log.info("binding {contact} of {aor} answers again", contact=contact.request_uri,
                     aor=contact.aor)

    def _unreachable(self, contact: BoundContact, reason: str) -> None:
        self.failed += 1
        current = self.location.contact(contact.aor, contact.key)
        if current is not None and self.location.set_online(current, False):
            log.warn("binding {contact} of {aor} does not answer OPTIONS ({reason}): offline",
                     contact=contact.request_uri, aor=contact.aor, reason=reason)


__all__ = ["Qualifier"]
