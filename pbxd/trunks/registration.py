"""Registering a trunk with its carrier (RFC 3261 §10.2), on the injected clock.

One :class:`TrunkRegistration` per trunk with ``register.enabled``:

- At :meth:`start` it REGISTERs to the trunk's first target (the outbound
  proxy, else the live destinations resolved per RFC 3263), To and From the
  account's AOR ``sip:username@domain``, Request-URI ``sip:domain``, one
  Call-ID for the registration's life and a rising CSeq (§10.2.4).
- Our Contact is ``sip:USER@host:port;transport=T;line=TOKEN`` with the
  address ``transports.sent_by`` gives for the target: the carrier sends
  calls there, and the ``line`` token tells pbxd which trunk they are for
  (:mod:`pbxd.trunks.inbound`).
- A 401/407 is answered with the trunk's credentials (MD5 or SHA-256, the
  strongest offered). Credentials are then sent with each refresh, with a
  rising nonce count, saving the round trip; a fresh challenge to an
  answer just given (not ``stale=true``) means the credentials are wrong:
  failed, and retried after the back-off.
- 423 Interval Too Brief: again at once with the Min-Expires asked for.
- 2xx: registered for the expiry the registrar granted our Contact (its
  ``expires`` parameter, else the Expires header, else what we asked).
  The refresh comes at ``max(expires / 2, expires - 120)``: half-way for
  short registrations, two minutes early (room for a few retransmission
  cycles of Timer F) for long ones. A 2xx to a refresh that no longer lists
  our Contact means the carrier lost it (a restart): REGISTER afresh at once.
- Any other answer, a timeout or a transport error: failed with the reason,
  the next target is tried next time after a time-out, a transport error
  or a 5xx (RFC 3263 §4.3), and the wait doubles from
  ``retry_min`` up to ``retry_max``, ±20% jitter so that trunks do not
  retry in lock-step (a 503's Retry-After, if longer, is obeyed).
- :meth:`reregister` (the health check calls it when a carrier answers
  again after an outage) REGISTERs at once.
- :meth:`stop` unregisters (Expires: 0, §10.2.2) and fires when the carrier
  answers, the request fails, or ``UNREGISTER_TIMEOUT`` passes.

:attr:`status` is the state for the API, and each change is told to
:attr:`observers` (the tests wait on them).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import attrs
from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from pbxd.sip.digest import Challenge
from pbxd.sip.errors import SipParseError
from pbxd.sip.ids import new_call_id, new_tag
from pbxd.sip.message import Request, Response
from pbxd.sip.transaction import new_branch
from pbxd.transport.target import Target
from pbxd.trunks.trunk import Trunk

log = Logger()

IDLE = "idle"
REGISTERING = "registering"
REGISTERED = "registered"
FAILED = "failed"
UNREGISTERING = "unregistering"
STOPPED = "stopped"

UNREGISTER_TIMEOUT = 5.0
JITTER = 0.2


def refresh_delay(expires: float) -> float:
    """Seconds after a successful REGISTER to refresh it (see the module docstring)."""
    return max(expires / 2, expires - 120)


@attrs.frozen
class RegistrationStatus:
    """A trunk's registration for the API: times are clock seconds (epoch under the reactor)."""

    state: str
    reason: str = ""
    registered_until: float | None = None
    next_attempt: float | None = None
    last_status: int | None = None
    last_reason: str = ""
    target: str | None = None
    failures: int = 0


class TrunkRegistration:
    """The REGISTER client of one trunk; see the module docstring."""

    def __init__(
        self,
        core: Any,  # pbxd.core.SipCore: .layer, .transports, .server_name
        trunk: Trunk,
        clock: IReactorTime,
        *,
        rng: random.Random | None = None,
    ) -> None:
        if trunk.credentials is None:
            raise ValueError(f"trunk {trunk.name}: registering needs username and password")
        settings = trunk.config.register
        self.core = core
        self.trunk = trunk
        self.clock = clock
        self.rng = rng or random.Random()
        self.expires: int = settings.expires
        self.retry_min: float = settings.retry_min
        self.retry_max: float = settings.retry_max
        self.observers: list[Callable[[RegistrationStatus], None]] = []
        self.status = RegistrationStatus(IDLE)
        self.aor = f"sip:{trunk.credentials.username}@{trunk.domain}"
        self._call_id = ""
        self._from_tag = new_tag()
        self._cseq = 0
        self._targets: list[Target] = []
        self._target_index = 0
        self._target: Target | None = None
        self._contact: str | None = None
        self._timer: IDelayedCall | None = None
        self._attempt = 0  # which REGISTER a response belongs to
        self._challenge: tuple[str, Challenge] | None = None
        self._nc = 0
        self._fresh_answer = False  # the last REGISTER answered a challenge just received
        self._checked_refresh = False  # a refresh's 200 without our Contact was retried once
        self._running = False
        trunk.registration = self

    # -- control -----------------------------------------------------------------------

    def start(self) -> None:
        self._running = True
        self._schedule(0)

    def reregister(self, why: str) -> None:
        """REGISTER now (a carrier that answers again may have lost our binding)."""
        if not self._running or self.status.state in (REGISTERING, UNREGISTERING):
            return
        log.info("trunk {trunk}: registering again: {why}", trunk=self.trunk.name, why=why)
        self._schedule(0)

    def stop(self) -> defer.Deferred[None]:
        """Stop refreshing; unregister if registered. Fires when that is over (bounded)."""
        self._running = False
        self._cancel_timer()
        was_registered = self.status.state == REGISTERED or (
            self.status.registered_until is not None and self.status.registered_until > self.clock.seconds()
        )
        self._attempt += 1  # responses to earlier REGISTERs are ignored from now on
        if not was_registered or self._target is None:
            self._set(STOPPED, "stopped")
            return defer.succeed(None)
        done: defer.Deferred[None] = defer.Deferred()
        timeout = self.clock.callLater(UNREGISTER_TIMEOUT, self._unregistered, done, "no answer in time")
        self._set(UNREGISTERING, "unregistering")
        self._fresh_answer = False  # a challenge to the unregister is answered once
        self._send(0, lambda reason: self._unregistered(done, reason, timeout), unregister=True)
        return done

    def _unregistered(self, done: defer.Deferred[None], reason: str, timeout: IDelayedCall | None = None) -> None:
        if done.called:
            return
        if timeout is not None and timeout.active():
            timeout.cancel()
        self._attempt += 1
        self.trunk.registered_hosts = frozenset()
        log.info("trunk {trunk}: unregistered ({reason})", trunk=self.trunk.name, reason=reason)
        self.status = attrs.evolve(self.status, registered_until=None)
        self._set(STOPPED, reason)
        done.callback(None)

    # -- attempts ----------------------------------------------------------------------

    def _schedule(self, delay: float) -> None:
        self._cancel_timer()
        self._timer = self.clock.callLater(delay, self._register)
        self.status = attrs.evolve(self.status, next_attempt=self.clock.seconds() + delay)

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _register(self) -> None:
        self._timer = None
        if not self._running:
            return
        self._set(REGISTERING, self.status.reason, next_attempt=None)
        if self._target_index < len(self._targets):
            self._begin(self._targets[self._target_index])
            return
        attempt = self._attempt
        self.trunk.targets().addCallbacks(
            lambda targets: self._resolved(attempt, targets),
            lambda failure: self._resolved(attempt, [], failure.getErrorMessage()),
        )

    def _resolved(self, attempt: int, targets: list[Target], error: str = "") -> None:
        if attempt != self._attempt or not self._running:
            return
        self._targets, self._target_index = targets, 0
        if not targets:
            self._failed(error or "no destination resolves")
            return
        self._begin(targets[0])

    def _begin(self, target: Target) -> None:
        if target != self._target:
            # A new registrar: a new Call-ID and no credentials carried over (§10.2.4).
            self._target, self._call_id, self._challenge = target, "", None
        self._fresh_answer = False
        self._send(self.expires, self._registration_answered)

    def _send(self, expires: int, on_final: Callable[..., None], *, unregister: bool = False) -> None:
        target = self._target
        assert target is not None
        try:
            host, port = self.core.transports.sent_by(target.transport, target.host)
        except ValueError as error:
            if unregister:
                on_final(str(error))
            else:
                self._failed(str(error))
            return
        hostport = f"{host}:{port}"
        if not self._call_id:
            self._call_id = new_call_id(host.strip("[]"))
        transport = "" if target.transport == "udp" else f";transport={target.transport}"
        self._contact = f"<sip:{self.trunk.contact_user}@{hostport}{transport};line={self.trunk.line}>"
        self._cseq += 1
        domain = self.trunk.domain
        request = Request("REGISTER", f"sip:{domain}", [
            ("Via", f"SIP/2.0/{target.via_transport} {hostport};branch={new_branch()};rport"),
            ("Max-Forwards", "70"),
            ("From", f"<{self.aor}>;tag={self._from_tag}"),
            ("To", f"<{self.aor}>"),
            ("Call-ID", self._call_id),
            ("CSeq", f"{self._cseq} REGISTER"),
            *(("Route", hop) for hop in self.trunk.route()),
            ("Contact", self._contact),
            ("Expires", str(expires)),
            ("User-Agent", self.core.server_name),
        ])
        if self._challenge is not None:
            header, challenge = self._challenge
            self._nc += 1
            request.set(header, self._credentials().answer(challenge, request, self._nc))
        self._attempt += 1
        attempt = self._attempt
        self.status = attrs.evolve(self.status, target=str(target))

        def answered(response: Response) -> None:
            if response.status >= 200 and attempt == self._attempt:
                if unregister:
                    self._unregister_answered(response, expires, on_final)
                else:
                    on_final(response, expires)

        def failed(reason: str) -> None:
            if attempt != self._attempt:
                return
            if unregister:
                on_final(reason)
            else:
                self._target_index += 1  # §4.3 of RFC 3263: the next target next time
                self._failed(reason)

        self.core.layer.send_request(request, target, answered, failed)

    def _credentials(self) -> Any:
        assert self.trunk.credentials is not None
        return self.trunk.credentials

    # -- answers -------------------------------------------------------------------------

    def _registration_answered(self, response: Response, expires: int) -> None:
        self.status = attrs.evolve(self.status, last_status=response.status, last_reason=response.reason)
        status = response.status
        if status < 300:
            self._registered(response, expires)
        elif status in (401, 407):
            self._challenged(response)
        elif status == 423:
            minimum = _number(response.get("Min-Expires"))
            if minimum is None or minimum <= self.expires:
                self._failed(f"423 without a usable Min-Expires ({response.get('Min-Expires')})")
                return
            log.info("trunk {trunk}: registrar wants at least {expires} s", trunk=self.trunk.name, expires=minimum)
            self.expires = minimum
            self._send(self.expires, self._registration_answered)
        else:
            if status >= 500:
                self._target_index += 1  # RFC 3263 §4.3: a server error sends us to the next target
            retry_after = _number((response.get("Retry-After") or "").split(";")[0].split("(")[0])
            self._failed(f"{status} {response.reason}", retry_after)

    def _challenged(self, response: Response) -> None:
        chosen = self._credentials().challenge(response)
        if chosen is None:
            self._challenge = None
            self._failed(f"{response.status} without a challenge pbxd can answer")
            return
        if self._fresh_answer and not chosen[1].stale:
            self._challenge = None
            self._failed(f"{response.status} {response.reason}: credentials refused (wrong password?)")
            return
        self._challenge, self._nc = chosen, 0
        self._fresh_answer = True
        self._send(self.expires, self._registration_answered)

    def _registered(self, response: Response, asked: int) -> None:
        ours = self._our_binding(response)
        was_refresh = self.status.state == REGISTERING and self.status.registered_until is not None
        if ours is None and was_refresh and not self._checked_refresh:
            # §10.2.4: the 2xx lists every binding; ours missing means the carrier lost it.
            self._checked_refresh = True
            log.warn("trunk {trunk}: the carrier no longer lists our contact; registering afresh",
                     trunk=self.trunk.name)
            self._call_id, self._challenge = "", None
            self._send(self.expires, self._registration_answered)
            return
        self._checked_refresh = False
        granted = _granted(ours, response, asked)
        if granted <= 0:
            self._failed("the registrar granted no time")
            return
        now = self.clock.seconds()
        assert self._target is not None
        self.trunk.registered_hosts = frozenset({self._target.host})
        if self.status.state != REGISTERED:
            log.info("trunk {trunk}: registered at {target} for {expires} s", trunk=self.trunk.name,
                     target=self._target, expires=granted)
        delay = refresh_delay(granted)
        self.status = attrs.evolve(self.status, failures=0, registered_until=now + granted)
        self._set(REGISTERED, "", next_attempt=now + delay)
        self._cancel_timer()
        self._timer = self.clock.callLater(delay, self._register)

    def _our_binding(self, response: Response) -> Any:
        try:
            contacts = response.contacts
        except SipParseError:
            return None
        for contact in contacts:
            uri = contact.sip_uri
            if uri is not None and uri.param("line") == self.trunk.line:
                return contact
        return None

    def _failed(self, reason: str, retry_after: int | None = None) -> None:
        failures = self.status.failures + 1
        delay = min(self.retry_max, self.retry_min * 2 ** min(failures - 1, 30))
        delay = min(self.retry_max, delay * self.rng.uniform(1 - JITTER, 1 + JITTER))
        if retry_after is not None:
            delay = max(delay, float(retry_after))
        self.trunk.registered_hosts = frozenset()
        log.warn("trunk {trunk}: registration failed: {reason}; next attempt in {delay:.1f} s",
                 trunk=self.trunk.name, reason=reason, delay=delay)
        self.status = attrs.evolve(self.status, failures=failures, registered_until=None)
        if not self._running:
            self._set(STOPPED, reason)
            return
        self._set(FAILED, reason, next_attempt=self.clock.seconds() + delay)
        self._cancel_timer()
        self._timer = self.clock.callLater(delay, self._register)

    def _unregister_answered(self, response: Response, expires: int, on_final: Callable[[str], None]) -> None:
        if response.status in (401, 407) and not self._fresh_answer:
            chosen = self._credentials().challenge(response)
            if chosen is not None:
                self._challenge, self._nc, self._fresh_answer = chosen, 0, True
                self._send(0, on_final, unregister=True)
                return
        on_final(f"{response.status} {response.reason}")

    # -- state ---------------------------------------------------------------------------

    def _set(self, state: str, reason: str, **changes: Any) -> None:
        self.status = attrs.evolve(self.status, state=state, reason=reason, **changes)
        for observer in list(self.observers):
            observer(self.status)


def _number(text: str | None) -> int | None:
    if text is None:
        return None
    text = text.strip()
    return int(text) if text.isdigit() and len(text) < 11 else None


def _granted(contact: Any, response: Response, asked: int) -> int:
    """The expiry of our binding: its ``expires`` param, the Expires header, or what we asked (§10.2.4)."""
    if contact is not None:
        value = _number(contact.param("expires"))
        if value is not None:
            return value
    value = _number(response.get("Expires"))
    return asked if value is None else value


__all__ = [
    "FAILED", "IDLE", "REGISTERED", "REGISTERING", "STOPPED", "UNREGISTERING", "RegistrationStatus",
    "TrunkRegistration", "refresh_delay",
]
