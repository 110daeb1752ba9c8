"""OPTIONS health checks of a trunk's destinations (RFC 3261 §11).

Every ``options_interval`` seconds each destination (primary and backups) is
sent an OPTIONS, to the first address RFC 3263 gives for it (through the
outbound proxy when the trunk has one). Any final answer means the server is
there (a 404 or 405 still proves it is alive) except 503 (it says it is out
of service, RFC 3263 §4.3) and 408; a time-out (Timer F) or a transport
error means it is down. A down destination is left out of
:meth:`Trunk.destinations` until a check is answered again; each change is
logged and told to :attr:`HealthChecker.observers`. When a destination comes
back, the trunk's registration REGISTERs again at once: a carrier that was
unreachable or restarted may have lost our binding.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from pbxd.sip.ids import new_call_id, new_tag
from pbxd.sip.message import Request, Response
from pbxd.sip.transaction import new_branch
from pbxd.transport.target import Target
from pbxd.trunks.dns import LocateError
from pbxd.trunks.trunk import Destination, DestinationHealth, Trunk

log = Logger()

DOWN_STATUSES = frozenset({408, 503})


class HealthChecker:
    """Checks one trunk's destinations every ``interval`` seconds on ``clock``."""

    def __init__(self, core: Any, trunk: Trunk, clock: IReactorTime, interval: float) -> None:
        if interval <= 0:
            raise ValueError("interval must be positive")
        self.core = core
        self.trunk = trunk
        self.clock = clock
        self.interval = interval
        self.observers: list[Callable[[Destination, DestinationHealth], None]] = []
        self._asking: set[Destination] = set()
        self._timer: IDelayedCall | None = None
        self._running = False

    def start(self) -> None:
        self._running = True
        self._tick()

    def stop(self) -> None:
        self._running = False
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _tick(self) -> None:
        self._timer = self.clock.callLater(self.interval, self._tick)
        self.check_now()

    def check_now(self) -> defer.Deferred[None]:
        """Ask every destination not being asked already; fires when all have answered or failed."""
        checks = [self._check(d) for d in self.trunk.all_destinations() if d not in self._asking]
        return defer.gatherResults(checks, consumeErrors=True).addCallback(lambda _: None)

    def _check(self, destination: Destination) -> defer.Deferred[None]:
        self._asking.add(destination)
        done: defer.Deferred[None] = defer.Deferred()
        if self.trunk.config.outbound_proxy is not None:
            where = self.trunk.locator.resolve(self.trunk.config.outbound_proxy)
        else:
            where = self.trunk.locator.resolve(destination.uri(), destination.transport)

        def resolved(targets: list[Target]) -> None:
            self._ask(destination, targets[0], done)

        def unresolved(failure: Any) -> None:
            if not failure.check(LocateError, ValueError):
                log.failure("trunk {trunk}: resolving {destination} failed", failure, trunk=self.trunk.name,
                            destination=destination)
            self._result(destination, False, f"does not resolve: {failure.getErrorMessage()}", None, done)

        where.addCallbacks(resolved, unresolved)
        return done

    def _ask(self, destination: Destination, target: Target, done: defer.Deferred[None]) -> None:
        try:
            host, port = self.core.transports.sent_by(target.transport, target.host)
        except ValueError as error:
            self._result(destination, False, str(error), None, done)
            return
        hostport = f"{host}:{port}"
        request = Request("OPTIONS", destination.uri(), [
            ("Via", f"SIP/2.0/{target.via_transport} {hostport};branch={new_branch()};rport"),
            ("Max-Forwards", "70"),
            ("From", f"<sip:{self.trunk.contact_user}@{self.trunk.domain}>;tag={new_tag()}"),
            ("To", f"<{destination.uri()}>"),
            ("Call-ID", new_call_id(host.strip("[]"))),
            ("CSeq", "1 OPTIONS"),
            *(("Route", hop) for hop in self.trunk.route()),
            ("User-Agent", self.core.server_name),
        ])

        def answered(response: Response) -> None:
            if response.status < 200:
                return
            status = response.status
            up = status not in DOWN_STATUSES
            self._result(destination, up, f"{status} {response.reason}", status, done)

        def failed(reason: str) -> None:
            self._result(destination, False, reason, None, done)

        self.core.layer.send_request(request, target, answered, failed)

    def _result(self, destination: Destination, up: bool, reason: str, status: int | None,
                done: defer.Deferred[None]) -> None:
        self._asking.discard(destination)
        if self._running and self.trunk.set_health(destination, up, reason, status):
            if up:
                log.info("trunk {trunk}: {destination} answers again ({reason})", trunk=self.trunk.name,
                         destination=destination, reason=reason)
                if self.trunk.registration is not None:
                    self.trunk.registration.reregister(f"{destination} answers again")
            else:
                log.warn("trunk {trunk}: {destination} is down ({reason})", trunk=self.trunk.name,
                         destination=destination, reason=reason)
            health = self.trunk.health(destination)
            for observer in list(self.observers):
                observer(destination, health)
        if not done.called:
            done.callback(None)


__all__ = ["DOWN_STATUSES", "HealthChecker"]
