"""Click-to-dial: pbxd calls the ``from`` extension, and when it answers, calls ``to`` and bridges them.

pbxd is the UAC of both legs. The first leg carries a late offer (RFC 3261
§13.2.1: an INVITE without SDP) because pbxd has no description of its own to
offer — the relay only rewrites the descriptions that cross it. So:

1. every registered contact of ``from`` gets an INVITE without a body; the
   first 2xx wins (its SDP is the offer), the other forks are CANCELled;
2. that answered leg becomes the caller of an ordinary :class:`Call` whose
   "INVITE" is the phone's offer: the call rings ``to`` (an extension's
   contacts, or a URI) with it through the media session, as for any call;
3. the callee's 2xx answer goes to the first leg in the ACK
   (:meth:`OriginLeg.respond`); a failure of the second leg ACKs and hangs up
   the first one with a Reason header (RFC 3326) saying why.

The first phone's 2xx stays un-ACKed while ``to`` rings: a phone gives up
after 64*T1 (32 s, §13.3.1.4), which bounds how long ``to`` may ring.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable
from urllib.parse import quote

import attrs
from twisted.logger import Logger

from pbxd.call import cdr as outcome
from pbxd.call.call import Call, CallLimits, Destination, Step
from pbxd.call.leg import Leg, has_sdp
from pbxd.call.manager import TrunkPlan, TrunkRefusal
from pbxd.call.media import MediaRequest
from pbxd.call.routing import CallFacts, RouteDecision, uri_user
from pbxd.events import CallEvent
from pbxd.hooks.user_backend import LookupStatus
from pbxd.registrar.auth import AuthenticatedUser
from pbxd.sip.errors import SipParseError
from pbxd.sip.headers import Address
from pbxd.sip.message import Request, Response
from pbxd.sip.sdp import SDP_CONTENT_TYPE, rejecting_answer
from pbxd.sip.uri import SipURI, parse_uri

if TYPE_CHECKING:
    from pbxd.call.manager import CallManager

log = Logger()

# How long ``to`` may ring: the first phone's 2xx waits un-ACKed meanwhile, and
# it gives up at 64*T1 = 32 s (§13.3.1.4).
UNACKED_RING_LIMIT = 30.0


class OriginateError(Exception):
    """Why a click-to-dial cannot start; ``status`` is the HTTP status the API answers,
    ``retry_after`` the seconds after which trying again may work (a busy trunk)."""

    def __init__(self, status: int, message: str, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


def dialled_address(dialled: str, domain: str) -> Address:
    """The address of a number (``sip:number@domain``) or of a URI as given; SipParseError if bad."""
    uri = parse_uri(dialled) if ":" in dialled else parse_uri(f"sip:{quote(dialled, safe='+*#')}@{domain}")
    return Address(uri)


class OriginLeg(Leg):
    """The first leg of a click-to-dial call, seen by the :class:`Call` as its caller.

    The call "answers" its caller with :meth:`respond`; here that is the ACK
    (with the callee's answer) or, for a failure, ACK and BYE.
    """

    def respond(self, status: int, reason: str | None = None, *, body: bytes = b"",
                content_type: str = SDP_CONTENT_TYPE, headers: Iterable[tuple[str, str]] = ()) -> None:
        if status < 200 or self.is_ended:
            return  # the phone already answered: nothing to say of the callee's ringing
        if status < 300:
            self.final_status = status
            self.ack(body)
            return
        # §13.2.2.4: every 2xx is ACKed, even one about to be hung up; its
        # offer then gets an answer that rejects every stream (RFC 3264 §6).
        self.ack(rejecting_answer(self.remote_sdp or b""))
        text = (reason or "").replace('"', "")
        self.bye(headers=[("Reason", f'SIP;cause={status};text="{text}"' if text else f"SIP;cause={status}")])


class Originator:
    """Rings the ``from`` phone's contacts (step 1 of the module docstring), then starts the call."""

    def __init__(self, manager: CallManager, from_number: str, to: str, steps: list[Step], direction: str,
                 caller_id: str | None, from_address: Address, to_address: Address,
                 decision: RouteDecision | None, plan: TrunkPlan | None = None) -> None:
        self.manager = manager
        self.from_number = from_number
        self.to = to
        self.from_address = from_address
        self.to_address = to_address
        self.steps = steps
        self.decision = decision
        self.plan = plan or TrunkPlan()  # the trunk permits it holds until the call ends
        self.direction = direction
        self.caller_id = caller_id
        self.legs: list[Leg] = []
        self.timers = manager.new_timers()
        self.timed_out = False
        self.call: Call | None = None
        self.statuses: list[int] = []

    @property
    def id(self) -> str:
        """The first leg's Call-ID: what the capture and the API know the ringing call by."""
        return self.legs[0].call_id if self.legs else ""

    def start(self, contacts: list[Destination]) -> str:
        shown = attrs.evolve(self.to_address, display_name=self.caller_id or self.to)
        for contact in contacts:
            leg = OriginLeg.outbound(self.manager, request_uri=contact.request_uri, target=contact.target,
                                     from_addr=shown, to_addr=self.from_address, route=contact.route)
            leg.call = self  # type: ignore[assignment]  # until it answers: then the Call's
            self.legs.append(leg)
            self.manager.leg_started(leg)
            leg.send_invite()
        if self.manager.settings.max_ring_time > 0:
            self.timers.start("ring", self.manager.settings.max_ring_time, self._ring_timeout)
        return self.legs[0].call_id

    def _ring_timeout(self) -> None:
        """Nobody at ``from`` answered in time: CANCEL every fork; their 487s end it as 480."""
        self.timed_out = True
        for leg in self.legs:
            leg.cancel()

    # What a Leg asks of its call while ringing.
    def outbound_response(self, leg: Leg, response: Response) -> None:
        if response.status < 200 or self.call is not None:
            return
        self.timers.stop_all()
        for other in self.legs:
            if other is not leg:
                other.cancel()
        self._bridge(leg, response)  # type: ignore[arg-type]

    def outbound_failed(self, leg: Leg, status: int, response: Response | None, reason: str | None = None) -> None:
        self.statuses.append(status)
        if self.call is None and all(other.is_ended for other in self.legs):
            log.info("click-to-dial {from_number} -> {to}: {from_number} did not answer ({status})",
                     from_number=self.from_number, to=self.to, status=status)
            self.timers.stop_all()
            self._record_failure(480 if self.timed_out else outcome.best_status(self.statuses))

    def _bridge(self, leg: OriginLeg, response: Response) -> None:
        if not has_sdp(response):
            leg.ack()
            leg.bye(headers=[("Reason", 'SIP;cause=488;text="No offer"')])
            self._record_failure(488)
            return
        offer = leg.invite.copy()  # type: ignore[union-attr]  # same Call-ID: the leg's own bookkeeping holds
        offer.set("From", str(self.from_address.with_param("tag", leg._local_tag)))
        offer.set("To", str(self.to_address))
        offer.set("Content-Type", SDP_CONTENT_TYPE)
        offer.body = response.body
        leg.invite = offer
        manager = self.manager
        decision = self.decision
        ring_time = decision and decision.max_ring_time or manager.settings.max_ring_time
        call = Call(manager, leg, from_number=self.from_number, to_number=self.to, direction=self.direction,
                    media=manager.media_factory(MediaRequest.for_decision(leg.call_id, decision, leg.target.host)),
                    limits=CallLimits(max_ring_time=min(ring_time, UNACKED_RING_LIMIT),
                                      max_duration=decision and decision.max_duration or manager.settings.max_duration),
                    timer_policy=None, trunk=self.plan.trunk)
        call.ended_callbacks.append(lambda _: self.plan.release())
        call.id = self.id  # the id the API answered, whichever contact answered
        self.call = call
        manager.calls[call.id] = call
        manager.events.publish(CallEvent.of("ringing", call))
        log.info("click-to-dial {call}: {from_number} answered, calling {to}", call=call.id,
                 from_number=self.from_number, to=self.to)
        call.ring(self.steps)

    def _record_failure(self, status: int) -> None:
        self.plan.release()
        now = self.manager.clock.seconds()
        self.manager._store_cdr(self.legs[0].call_id, outcome.CallRecord(
            call_id=self.legs[0].call_id, from_number=self.from_number, to_number=self.to,
            direction=self.direction, start_time=now, end_time=now, answer_time=None, status=status,
            cause=outcome.cause_for_status(status), side="caller", trunk=None))


async def originate(manager: CallManager, from_number: str, to: str, *, caller_id: str | None = None) -> str:
    """Start a click-to-dial call from ``from_number`` (an extension) to ``to``; its call id.

    ``to`` is resolved like a number dialled by ``from_number``: the router
    (HTTP router, static routes, the built-in extensions route) decides; a
    URI of a foreign domain is called directly (as a transfer target is).
    OriginateError: 404 for an unknown extension or no route to ``to``, 409
    when ``from_number`` (or the extension rung) has no registered contact,
    400 for a ``to`` that is no number or URI, 403 when the route refuses the
    call, when ``from_number`` has its ``max_calls`` up already (a
    click-to-dial call counts as one it places, from now until it ends), or
    for a route over a trunk when ``from_number`` may not call out
    (``allow_external``) or not to that number (``dial_patterns``): the API's
    token authorises the click, the extension's rights decide where it may
    reach. 503 while the manager takes no new calls (shutting down, at
    ``max_calls``), the user backend cannot answer for ``from_number``, or
    the trunk is busy (with ``retry_after``) or not configured.
    """
    if not manager.accepting or (manager.max_calls and len(manager.calls) >= manager.max_calls):
        raise OriginateError(503, "pbxd takes no new calls now")
    directory = manager.registrar.directory
    location = manager.registrar.location
    if directory is None or location is None or not directory.has_user(from_number):
        raise OriginateError(404, f"no extension {from_number}")
    contacts = [Destination(c.request_uri, c.target, c.route) for c in location.lookup_user(from_number)]
    if not contacts:
        raise OriginateError(409, f"extension {from_number} is not registered")
    domain = manager.registrar.domain
    try:
        from_address = dialled_address(from_number, domain)
        to_address = dialled_address(to, domain)
    except (SipParseError, ValueError) as error:
        raise OriginateError(400, f"cannot call {to}: {error}") from None
    # The INVITE from_number would have sent: what routes match on.
    uri = to_address.uri
    dialled = Request("INVITE", str(uri), [
        ("From", str(from_address.with_param("tag", "click-to-dial"))), ("To", str(to_address)),
        ("Call-ID", manager.new_call_id(domain)), ("CSeq", "1 INVITE"), ("Max-Forwards", "70")])
    user = await calling_user(manager, from_number)
    # Counted like a call the phone places itself (CallManager._admit): from
    # here until the call ends, released on every way out.
    plan = TrunkPlan()
    if user is not None:
        refusal = manager.take_caller_slot(dialled.call_id, user, plan)
        if refusal is not None:
            raise OriginateError(403, f"{from_number} places {user.record.max_calls} calls at once already"
                                      " (max_calls)")
    try:
        originator = await _plan(manager, from_number, to, caller_id, contacts, from_address, to_address, dialled,
                                 user, plan)
    except BaseException:
        plan.release()
        raise
    return originator.start(contacts)


async def _plan(manager: CallManager, from_number: str, to: str, caller_id: str | None, contacts: list[Destination],
                from_address: Address, to_address: Address, dialled: Request, user: AuthenticatedUser | None,
                plan: TrunkPlan) -> Originator:
    """The Originator of a click-to-dial call to ``to`` with ``plan``'s permits (see :func:`originate`)."""
    uri = to_address.uri
    if not (isinstance(uri, SipURI) and manager.core.domains.is_local(uri.host)):
        destinations = manager.destinations_for(to)
        if not destinations:
            raise OriginateError(404, f"nowhere to reach {to}")
        return Originator(manager, from_number, to, [Step(tuple(destinations))], "outbound", caller_id,
                          from_address, to_address, None, plan)
    called = uri_user(uri) or ""
    is_extension = manager.registrar.directory.has_user(called)
    facts = CallFacts.from_request(dialled, contacts[0].target, direction="internal" if is_extension else "outbound",
                                   callee_is_extension=is_extension)
    decision: RouteDecision = await manager.router.decide(facts)
    if decision.action != "forward":
        status = 404 if decision.action == "not_handled" else 403
        raise OriginateError(status, f"no route to {to}" if status == 404 else f"the route refused {to}")
    refusal = await manager.plan_trunks(dialled, user, called, decision, plan)
    if refusal is not None:
        raise trunk_refused(from_number, to, refusal)
    steps = manager.ring_steps(decision, plan)
    if not any(step.destinations for step in steps):
        raise OriginateError(409 if is_extension else 404, f"nowhere to reach {to}")
    return Originator(manager, from_number, decision.called or called, steps, facts.direction, caller_id,
                      from_address, to_address, decision, plan)


async def calling_user(manager: CallManager, from_number: str) -> AuthenticatedUser | None:
    """``from_number``'s record, as if it had authenticated (its ``allow_external``
    and display name go to the trunk); None when the user backends do not know it."""
    authenticator = manager.registrar.authenticator
    lookup = await authenticator.backends.lookup(from_number, authenticator.realm)
    if lookup.status is LookupStatus.UNAVAILABLE:
        raise OriginateError(503, f"the user backend cannot say whether {from_number} may call out")
    if lookup.user is None:
        return None
    return AuthenticatedUser(from_number, authenticator.realm, "", lookup.user, lookup.backend)


# The toll-fraud guards' refusals (CallManager.plan_trunks), by reason phrase, as the API says them.
_GUARD_MESSAGES = {
    "External Calls Not Allowed": "{to} is routed over a trunk and {caller} may not call out (allow_external)",
    "Number Not Allowed": "{to} is routed over a trunk and no dial pattern of {caller} allows it (dial_patterns)",
}


def trunk_refused(from_number: str, to: str, refusal: TrunkRefusal) -> OriginateError:
    """What the API answers when ``from_number``'s call to ``to`` may not use a trunk."""
    message = _GUARD_MESSAGES.get(refusal.reason, "{to} is routed over a trunk: {reason}")
    return OriginateError(refusal.status, message.format(to=to, caller=from_number, reason=refusal.reason),
                          refusal.retry_after)


__all__ = ["OriginLeg", "OriginateError", "Originator", "originate"]
