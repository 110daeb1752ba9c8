"""The call layer's transaction user: new INVITEs become calls, in-dialog requests find their leg.

:class:`CallManager` is registered on the :class:`~pbxd.core.SipCore` for
INVITE, BYE, UPDATE, INFO, REFER and NOTIFY, hears CANCELs through
``handle_cancel`` and ACKs of 2xx through ``core.on_ack``. One
:class:`~pbxd.sip.dialog.DialogTable` holds the dialogs of every leg; a
request inside a dialog it does not know gets 481 (§12.2.2).

A new INVITE goes through, in order:

1. a foreign domain in the Request-URI: 403 (no open relay); over the
   call limit (``max_calls``): 503;
2. a call from a trunk (``trunks.match_inbound``: the registered line,
   the trunk's ``inbound_hosts``, its registration's address) is not
   challenged: it is that trunk's, its called number the DID (normalised),
   direction ``inbound``, within the trunk's limits (503 with Retry-After
   over them); an INVITE to a trunk's DID from anywhere else gets 403;
   every other caller goes through digest authentication with 407
   (``RequestAuthenticator``), whether the called user exists or not (a
   404 before the challenge would let a scanner enumerate extensions);
   then an unknown user when nothing but the built-in extensions route
   could take the call: 404 (§8.2.2.1); an INVITE with Replaces (RFC 3891)
   then takes the place of the leg it names (``Call.replace``) instead of
   starting a call;
3. session-timer checks (422, RFC 4028 §6);
4. routing: :class:`~pbxd.hooks.http_router.Router` (HTTP router, then the
   static routes) gives a decision: forward rings its targets, reject /
   abort / spam answer its status, not_handled is 404;
5. the targets become destinations: an extension's registered contacts
   (sent to each binding's flow with its Request-URI and Path), a sip: URI
   directly; a ``trunk:NAME`` target (:meth:`trunk_destinations`) every hop
   of the trunk (RFC 3263 order, down destinations skipped), one after the
   other, with the trunk's From identity, the normalised number, and its
   credentials for the carrier's 401/407. Only an authenticated extension
   with ``allow_external`` may call out over a trunk (403 otherwise: toll
   fraud), and only to a number its ``dial_patterns`` allow (403); a trunk
   over ``max_calls``/``max_cps`` is 503 with Retry-After.

An authenticated caller over its own ``max_calls`` (the calls it places at
once, counted from admission until the call ends) gets 403 before routing.

``calls`` maps each live call's id (its inbound Call-ID) to the
:class:`~pbxd.call.call.Call`; the REST and console issues act on them
(``hangup``, ``transfer``, ``hold``, ``unhold``, ``send_info``). When a call
ends its CDR is written to the store and pushed when a pusher is configured;
:meth:`stop` hangs up every call and waits until their CDRs are written.
"""

from __future__ import annotations

import random
from typing import Any, Callable, Iterable
from urllib.parse import quote

import attrs
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from pbxd.call import cdr as outcome
from pbxd.call.call import Call, CallLimits, CallState, Destination, Step
from pbxd.call.leg import Leg
from pbxd.call.media import MediaFactory, MediaRequest, direct_media
from pbxd.call.routing import EXTENSIONS_ROUTE, CallFacts, RouteDecision, RouteTarget, uri_user
from pbxd.events import CallEvent, EventBus
from pbxd.sip.dialog import Dialog, DialogId, DialogTable
from pbxd.sip.errors import SipParseError
from pbxd.sip.ids import new_call_id
from pbxd.sip.message import Request
from pbxd.sip.refer import Replaces, replaces_refusal
from pbxd.sip.session_timer import IntervalTooSmall, TimerPolicy, negotiate_as_uas
from pbxd.sip.timers import TimerSet
from pbxd.sip.transaction import ServerTransaction
from pbxd.sip.uri import SipURI, parse_uri
from pbxd.transport import Target
from pbxd.transport.target import DEFAULT_PORTS
from pbxd.trunks.inbound import InboundCall, InboundRefusal
from pbxd.trunks.limits import Permit, Refusal
from pbxd.trunks.trunk import Caller, Trunk

log = Logger()

IN_DIALOG_METHODS = ("BYE", "UPDATE", "INFO", "REFER", "NOTIFY")
# Why the toll-fraud guards refuse a call: a caller without allow_external
# (or a trunk's call) routed to a trunk, a number outside the caller's
# dial_patterns, a caller at its max_calls.
GUARD_REASONS = ("external_not_allowed", "dial_pattern", "call_limit")


@attrs.frozen
class CallSettings:
    """The ``calls`` config section, as the manager uses it."""

    max_ring_time: float = 60.0
    max_duration: float = 0.0
    session_expires: int = 1800
    min_se: int = 90
    session_timers: bool = True

    def timer_policy(self) -> TimerPolicy | None:
        if not self.session_timers:
            return None
        return TimerPolicy(self.session_expires, self.min_se, enforce=False)


class CallerSlot:
    """One call an extension places, counted in ``placing`` (number -> calls)
    until :meth:`release` (once or more); a number with none left is dropped,
    so the table holds only callers with calls up."""

    def __init__(self, placing: dict[str, int], number: str) -> None:
        self._placing: dict[str, int] | None = placing
        self.number = number
        placing[number] = placing.get(number, 0) + 1

    def release(self) -> None:
        placing, self._placing = self._placing, None
        if placing is None:
            return
        left = placing[self.number] - 1
        if left:
            placing[self.number] = left
        else:
            del placing[self.number]


@attrs.define
class TrunkPlan:
    """What trunks a new call uses: the trunk for the CDR (the one it came in
    over, else the first it goes out over), the permits it holds (the trunks'
    limits and the caller's own ``max_calls``, released when the call ends),
    and each ``trunk:`` target's destinations."""

    trunk: str | None = None
    permits: list[Permit | CallerSlot] = attrs.Factory(list)
    destinations: dict[str, list[Destination]] = attrs.Factory(dict)

    def release(self) -> None:
        for permit in self.permits:
            permit.release()


@attrs.define
class Admission:
    """A new INVITE between its arrival and its Call (authentication, routing):
    enough to write its CDR if it ends there (a CANCEL, a shutdown). ``facts``
    is set once the caller is known; until then it was no one's call."""

    started: float
    deferred: defer.Deferred[Any] | None = None
    facts: CallFacts | None = None
    caller: str = ""
    called: str = ""
    plan: TrunkPlan | None = None


@attrs.frozen
class TrunkRefusal:
    """Why a call may not use a trunk: the SIP status and reason phrase to answer,
    and Retry-After seconds when trying later may work."""

    status: int
    reason: str
    retry_after: int | None = None


def asks_privacy(request: Request) -> bool:
    """Whether the caller asked to withhold their identity (RFC 3323 ``Privacy``)."""
    values = (request.get("privacy") or "").replace(",", ";").split(";")
    return any(value.strip().lower() in ("id", "user", "header") for value in values)


class CallManager:
    """Calls through one SipCore (see the module docstring).

    ``registrar`` is the :class:`~pbxd.service.RegistrarService` (its
    authenticator, location and directory exist once it is ready: INVITEs
    before that get 503); ``router`` the Router; ``store`` the open Store for
    CDRs (None: CDRs are only logged); ``cdr_pusher`` a CdrPusher or None.
    """

    def __init__(
        self,
        core: Any,
        clock: IReactorTime,
        registrar: Any,
        router: Any,
        settings: CallSettings = CallSettings(),
        *,
        store: Any = None,
        cdr_pusher: Any = None,
        media_factory: MediaFactory = direct_media,
        rng: random.Random | None = None,
    ) -> None:
        self.core = core
        self.clock = clock
        self.registrar = registrar
        self.router = router
        self.settings = settings
        self.store = store
        self.cdr_pusher = cdr_pusher
        self.media_factory = media_factory
        self.rng = rng or random.Random()
        self.dialogs = DialogTable()
        self.calls: dict[str, Call] = {}
        self.legs: set[Leg] = set()
        self._leg_of: dict[Dialog, Leg] = {}
        # The other way round (a forked outbound leg has several early dialogs), so that
        # a leg's end does not walk every dialog of every live call.
        self._dialogs_of: dict[Leg, list[Dialog]] = {}
        self._by_invite: dict[ServerTransaction, Call] = {}
        self._routing: dict[ServerTransaction, Admission] = {}
        self._writes: set[defer.Deferred[Any]] = set()
        self.accepting = True
        # Live calls plus INVITEs being admitted; over it new INVITEs get 503
        # (security.limits.max_dialogs, set by pbxd.security). 0: no limit.
        self.max_calls = 0
        # Calls ringing, answered, ended (pbxd.events); PbxService puts its own bus here.
        self.events = EventBus()
        # The SIP capture (pbxd.sip.capture) that ties outbound legs to their call, if any.
        self.capture: Any = None
        # The trunks (pbxd.trunks.TrunkRegistry) calls come in and go out over; PbxService sets it.
        self.trunks: Any = None
        # Calls each authenticated extension is placing now (CallerSlot), for its max_calls.
        self.placing: dict[str, int] = {}
        # Calls refused by the toll-fraud guards, by reason (GUARD_REASONS), for /metrics.
        self.guard_refusals: dict[str, int] = dict.fromkeys(GUARD_REASONS, 0)
        for method in ("INVITE", *IN_DIALOG_METHODS):
            core.register(method, self)
        core.support("timer", "replaces")
        core.on_ack(self._ack)

    # -- what legs and calls ask of the manager ---------------------------------

    def sent_by(self, target: Target) -> tuple[str, int]:
        return self.core.transports.sent_by(target.transport, target.host)

    def new_call_id(self, host: str) -> str:
        return new_call_id(host.strip("[]"))

    def new_timers(self) -> TimerSet:
        return TimerSet(self.clock)

    def bind_dialog(self, dialog: Dialog, leg: Leg) -> None:
        if self.dialogs.get(dialog.id) is None:
            self.dialogs.add(dialog)
        previous = self._leg_of.get(dialog)
        if previous is leg:
            return
        if previous is not None:
            self._dialogs_of[previous].remove(dialog)
        self._leg_of[dialog] = leg
        self._dialogs_of.setdefault(leg, []).append(dialog)

    def leg_for_dialog(self, dialog_id: DialogId) -> Leg | None:
        dialog = self.dialogs.get(dialog_id)
        return None if dialog is None else self._leg_of.get(dialog)

    def leg_started(self, leg: Leg) -> None:
        self.legs.add(leg)
        if self.capture is not None and leg.call is not None:
            self.capture.link(leg.call_id, leg.call.id)

    def leg_ended(self, leg: Leg) -> None:
        self.legs.discard(leg)
        for dialog in self._dialogs_of.pop(leg, ()):
            del self._leg_of[dialog]
            dialog.terminate()

    def call_ended(self, call: Call) -> None:
        self.calls.pop(call.id, None)
        self.events.publish(CallEvent.of(
            "ended", call, cause=call.cause or outcome.NORMAL_CLEARING, status=call.status,
            disposition=outcome.disposition_for(call.answer_time is not None, call.status, call.cause)))
        if call.inbound.server_txn is not None:
            self._by_invite.pop(call.inbound.server_txn, None)
        self._write_cdr(call)

    # -- the TU interface ------------------------------------------------------

    def handle_request(self, txn: ServerTransaction, request: Request) -> None:
        if request.to_addr.tag is not None:
            self._in_dialog(txn, request)
        elif request.method == "INVITE":
            self._new_invite(txn, request)
        else:
            # §12.2.2 / §8.2.2.2: a request of ours-only methods outside any dialog.
            self.core.reply(txn, 481)

    def handle_cancel(self, invite_txn: ServerTransaction, cancel: Request) -> None:
        call = self._by_invite.get(invite_txn)
        if call is not None:
            call.caller_cancelled()
            return
        if not self._end_admission(invite_txn, 487, "caller"):
            self.core.reply(invite_txn, 487)

    def _ack(self, ack: Request, source: Target) -> None:
        dialog = self.dialogs.match_request(ack)
        leg = self._leg_of.get(dialog) if dialog is not None else None
        if leg is None:
            return
        if leg.ack_received(ack) and leg.call is not None:
            leg.call.leg_ack(leg, ack)
            leg.call.legs_settled()

    def _in_dialog(self, txn: ServerTransaction, request: Request) -> None:
        dialog = self.dialogs.match_request(request)
        leg = self._leg_of.get(dialog) if dialog is not None else None
        if dialog is None or leg is None or leg.call is None:
            self.core.reply(txn, 481)  # §12.2.2
            return
        refusal = dialog.receive_request(request)
        if refusal is not None:
            self.core.reply(txn, refusal)
            return
        leg.call.leg_request(leg, txn, request)

    # -- new calls -------------------------------------------------------------

    def _new_invite(self, txn: ServerTransaction, request: Request) -> None:
        ruri = request.ruri
        if isinstance(ruri, SipURI) and not self.core.domains.is_local(ruri.host):
            self.core.reply(txn, 403, "Relaying Forbidden")
            return
        if not self.accepting:
            self.core.reply(txn, 503, Retry_After="30")
            return
        if self.max_calls and len(self.calls) + len(self._routing) >= self.max_calls:
            self.core.reply(txn, 503, "Too Many Calls", Retry_After="30")
            return
        if self.registrar.authenticator is None:
            self.core.reply(txn, 503, Retry_After="5")  # the registrar is still loading
            return
        admission = self._routing[txn] = Admission(self.clock.seconds())
        d = admission.deferred = defer.Deferred.fromCoroutine(self._admit(txn, request, admission))
        d.addErrback(self._admit_failed, txn)
        d.addBoth(self._admitted, txn)

    def _admitted(self, _: object, txn: ServerTransaction) -> None:
        self._routing.pop(txn, None)

    def _routes_beyond_extensions(self) -> bool:
        router = self.router
        return router.http is not None or any(r.name != EXTENSIONS_ROUTE for r in router.static.routes)

    def _admit_failed(self, failure: Any, txn: ServerTransaction) -> None:
        if failure.check(defer.CancelledError):
            return None
        log.failure("call setup for {call_id} failed", failure, call_id=txn.request.call_id)
        if not txn.has_final_response:
            self.core.reply(txn, 500)
        return None

    def _end_admission(self, txn: ServerTransaction, status: int, side: str, **headers: str) -> bool:
        """End a new INVITE still being admitted: answer ``status`` and, when it was
        someone's call already, write its CDR. False when ``txn`` is not being admitted."""
        admission = self._routing.pop(txn, None)
        if admission is None:
            return False
        if admission.deferred is not None:
            admission.deferred.cancel()
        if not txn.has_final_response:
            self.core.reply(txn, status, **headers)
        self._record_unconnected(admission, status, outcome.SHUTDOWN if status == 503 else None, side)
        return True

    def _record_unconnected(self, admission: Admission, status: int, cause: str | None, side: str) -> None:
        """The CDR of a call that ended with ``status`` before it rang, if it was someone's call."""
        facts = admission.facts
        if facts is None:
            return
        self._store_cdr(facts.call_id, outcome.CallRecord(
            call_id=facts.call_id, from_number=admission.caller, to_number=admission.called,
            direction=facts.direction, start_time=admission.started, end_time=self.clock.seconds(),
            answer_time=None, status=status, cause=cause or outcome.cause_for_status(status), side=side,
            trunk=admission.plan.trunk if admission.plan is not None else None))

    async def _admit(self, txn: ServerTransaction, request: Request, admission: Admission) -> None:
        matched: InboundCall | InboundRefusal | None = (
            self.trunks.match_inbound(request, txn.source) if self.trunks is not None else None)
        if isinstance(matched, InboundRefusal):
            # Not the trunk's call, so a caller like any other: challenged
            # first, as every number is (issue 9: a 403 before the challenge
            # would tell a scanner which numbers are DIDs). Only an
            # extension that authenticates gets further.
            log.info("call {call_id}: DID {did} of trunk {trunk} called from {source}, which is no trunk's;"
                     " only an extension's credentials admit it", call_id=request.call_id, did=matched.did,
                     trunk=matched.trunk.name, source=str(txn.source))
            matched = None
        user = None
        if matched is None:
            user = await self.registrar.authenticator.authenticate(txn, request, proxy=True)
            if user is None or txn.has_final_response:
                return
        called_user = uri_user(request.ruri)
        if matched is None and not self._routes_beyond_extensions() and (
                called_user is None or not self.core.users.has_user(called_user)):
            # §8.2.2.1, but only now: answered before the challenge, a 404
            # would tell a scanner which extensions exist (issue 9).
            self.core.reply(txn, 404)
            return
        policy = self.settings.timer_policy()
        if policy is not None:
            try:
                negotiated = negotiate_as_uas(request, policy)
            except SipParseError:
                self.core.reply(txn, 400, "Bad Session-Expires")
                return
            if isinstance(negotiated, IntervalTooSmall):
                self.core.reply(txn, 422, Min_SE=str(negotiated.min_se))
                return
        if request.get("replaces") is not None:
            self._replace(txn, request)
            return
        self.core.reply(txn, 100)
        directory = self.registrar.directory
        if matched is not None:
            # The DID is the called number whatever the carrier put in the
            # Request-URI (our registered Contact, say): routes see it, and a
            # DID that is an extension's number rings it (the built-in route).
            called, caller = matched.called or "", matched.caller or ""
            facts = CallFacts.from_request(
                request, txn.source, direction="inbound", source_trunk=matched.trunk.name,
                callee_is_extension=directory is not None and directory.has_user(called))
            facts = attrs.evolve(facts, request_user=called or None)
        else:
            assert user is not None
            called, caller = uri_user(request.ruri) or "", user.username
            callee_is_extension = directory is not None and directory.has_user(called)
            facts = CallFacts.from_request(
                request, txn.source, direction="internal" if callee_is_extension else "outbound",
                callee_is_extension=callee_is_extension)
        plan = TrunkPlan()
        admission.facts, admission.caller, admission.called, admission.plan = facts, caller, called, plan
        refusal = (self.take_permit(request.call_id, matched.trunk, plan) if matched is not None
                   else self.take_caller_slot(request.call_id, user, plan))
        if refusal is not None:
            self._refuse(txn, refusal, admission)
            return
        try:
            decision: RouteDecision = await self.router.decide(facts)
            if not txn.has_final_response:
                refusal = await self.plan_trunks(request, user, called, decision, plan,
                                                 abandoned=lambda: txn.has_final_response)
            if txn.has_final_response or refusal is not None:
                if refusal is not None and not txn.has_final_response:
                    self._refuse(txn, refusal, admission)
                plan.release()
                return
        except BaseException:
            plan.release()
            raise
        self._act(txn, request, caller, called, facts, decision, plan, admission)

    def _refuse(self, txn: ServerTransaction, refusal: TrunkRefusal, admission: Admission) -> None:
        retry = {} if refusal.retry_after is None else {"Retry_After": str(refusal.retry_after)}
        self.core.reply(txn, refusal.status, refusal.reason, **retry)
        self._record_unconnected(admission, refusal.status, None, "system")

    def take_permit(self, call_id: str, trunk: Trunk, plan: TrunkPlan) -> TrunkRefusal | None:
        """A call slot of ``trunk`` into the plan; a 503 refusal (and the plan
        released) when the trunk is over its limits."""
        plan.trunk = plan.trunk or trunk.name  # also the refused call's CDR's
        got = trunk.limits.acquire()
        if isinstance(got, Refusal):
            log.info("call {call_id}: trunk {trunk} refused it: {reason}", call_id=call_id,
                     trunk=trunk.name, reason=got.reason)
            plan.release()
            return TrunkRefusal(503, "Trunk Busy", got.retry_after)
        plan.permits.append(got)
        return None

    def take_caller_slot(self, call_id: str, user: Any, plan: TrunkPlan) -> TrunkRefusal | None:
        """One of the calls ``user`` (an AuthenticatedUser) may place at once
        into the plan; a 403 refusal when it has ``max_calls`` up already."""
        limit = user.record.max_calls
        if limit and self.placing.get(user.username, 0) >= limit:
            self._guard_refused("call_limit", "call {call_id}: {who} refused: it places {limit} calls at once"
                                " already (max_calls)", call_id=call_id, who=user.username, limit=limit)
            # 403, not 486 (that says the callee is busy) nor 503 (that tells
            # the phone to try another server, RFC 3261 §21.5.4): the caller
            # is refused, and the reason phrase tells its user why.
            return TrunkRefusal(403, "Call Limit Reached")
        plan.permits.append(CallerSlot(self.placing, user.username))
        return None

    def _guard_refused(self, reason: str, message: str, **fields: Any) -> None:
        """Count and log a call the toll-fraud guards refused (``reason``: one of GUARD_REASONS)."""
        self.guard_refusals[reason] += 1
        log.warn(message, reason=reason, **fields)

    async def plan_trunks(self, request: Request, user: Any, called: str, decision: RouteDecision,
                          plan: TrunkPlan, abandoned: Callable[[], bool] = lambda: False) -> TrunkRefusal | None:
        """The destinations of the decision's ``trunk:`` targets into ``plan``,
        or why the call may not use them (403, 503). ``request`` is the INVITE
        ``user`` (who places the call, None for a trunk's call) sent or would
        have sent; planning stops early once ``abandoned()`` (the caller has
        gone: it sees that itself)."""
        targets = [t for t in decision.targets if t.kind == "trunk"] if decision.action == "forward" else []
        if not targets:
            return None
        if user is None or not user.record.allow_external:
            # Toll fraud (issue 9): only an extension allowed to call out
            # reaches a carrier, never a trunk's call or a stranger.
            self._guard_refused("external_not_allowed", "call {call_id}: {who} may not call out over a trunk",
                                call_id=request.call_id, who="a trunk's call" if user is None else user.username)
            return TrunkRefusal(403, "External Calls Not Allowed")
        for target in targets:
            trunk = self.trunks.trunk(target.trunk) if self.trunks is not None else None
            if trunk is None:
                log.warn("call {call_id}: no trunk {trunk}", call_id=request.call_id, trunk=target.trunk)
                return TrunkRefusal(503, "Trunk Not Configured")
            # The patterns judge the number the carrier would get (after the
            # route's rewrite and the trunk's normalize rules): that is what is
            # billed, whatever the phone dialled.
            number = carrier_number(trunk, decision, called)
            if not user.record.may_dial(number):
                self._guard_refused("dial_pattern", "call {call_id}: {who} may not call {number} over trunk {trunk}:"
                                    " no dial pattern of it matches", call_id=request.call_id,
                                    who=user.username, number=number, trunk=trunk.name)
                return TrunkRefusal(403, "Number Not Allowed")
            refusal = self.take_permit(request.call_id, trunk, plan)
            if refusal is not None:
                return refusal
            plan.destinations[target.destination] = await self.trunk_destinations(
                trunk, target, decision, request, user, called)
            if abandoned():
                return None
        return None

    def _replace(self, txn: ServerTransaction, request: Request) -> None:
        """An INVITE with Replaces (RFC 3891): it takes the place of the leg it names."""
        try:
            replaces = Replaces.parse(request.get("replaces") or "")
        except SipParseError:
            self.core.reply(txn, 400, "Bad Replaces")
            return
        old = self.leg_for_dialog(replaces.dialog_id)
        refusal = replaces_refusal(replaces, old.dialog if old is not None else None)
        call = old.call if old is not None else None
        if refusal is None and (call is None or call.state is not CallState.ANSWERED):
            refusal = 481  # only a leg of an answered call is replaced here (no early replacement)
        if refusal is not None:
            self.core.reply(txn, refusal)
            return
        assert old is not None and call is not None
        inbound = Leg.inbound(self, txn)
        self.leg_started(inbound)
        self._by_invite[txn] = call
        call.replace(old, inbound)

    def _act(self, txn: ServerTransaction, request: Request, caller: str, called: str,
             facts: CallFacts, decision: RouteDecision, plan: TrunkPlan, admission: Admission) -> None:
        if decision.action != "forward":
            plan.release()
            status = 404 if decision.action == "not_handled" else decision.status or 403
            log.info("call {call_id}: {action} by {source}", call_id=facts.call_id, action=decision.action,
                     source=decision.source)
            self.core.reply(txn, status, decision.reason)
            self._record_unconnected(admission, status, "spam" if decision.action == "spam" else None, "system")
            return
        steps = self.ring_steps(decision, plan)
        inbound = Leg.inbound(self, txn)
        self.leg_started(inbound)
        limits = CallLimits(
            max_ring_time=decision.max_ring_time or self.settings.max_ring_time,
            max_duration=decision.max_duration or self.settings.max_duration,
        )
        call = Call(
            self, inbound, from_number=caller, to_number=decision.called or called,
            direction=facts.direction,
            media=self.media_factory(MediaRequest.for_decision(facts.call_id, decision, facts.source.host)),
            limits=limits, timer_policy=self.settings.timer_policy(), trunk=plan.trunk,
            start_time=admission.started,
        )
        call.ended_callbacks.append(lambda _: plan.release())
        self.calls[call.id] = call
        self._by_invite[txn] = call
        self.events.publish(CallEvent.of("ringing", call))
        log.info("call {call}: {caller} -> {called} ({n} destinations)", call=call.id, caller=caller,
                 called=call.to_number, n=sum(len(s.destinations) for s in steps))
        call.ring(steps)

    def ring_steps(self, decision: RouteDecision, plan: TrunkPlan) -> list[Step]:
        """What a forward decision rings, step by step (its trunks' hops from ``plan``)."""
        steps = []
        for target in decision.targets:
            if target.kind == "trunk":
                # A trunk's hops one at a time: the next only when a server
                # failed (RFC 3263 §4.3); the target's ring time bounds the last.
                hops = plan.destinations.get(target.destination, [])
                steps += [Step((hop,), None if n < len(hops) - 1 else decision.ring_time(target), failover=n > 0,
                               follows=hops[n - 1] if n else None) for n, hop in enumerate(hops)]
                continue
            steps.append(Step(tuple(self.target_destinations(target, decision)), decision.ring_time(target)))
        if decision.strategy == "parallel":
            # All at once, but a trunk's further servers only after its first failed.
            # A target with a timeout of its own rings that long: the step lasts
            # as long as its longest target, each destination stops at its own.
            own = [(step, decision.timeout if step.ring_time is None else step.ring_time)
                   for step in steps if not step.failover]
            times = [time for _, time in own]
            longest = None if None in times or not times else max(times)  # type: ignore[type-var]
            first = tuple(d if time in (None, longest) else attrs.evolve(d, ring_time=time)
                          for step, time in own for d in step.destinations)
            steps = [Step(first, longest), *(step for step in steps if step.failover)]
        return steps

    def target_destinations(self, target: RouteTarget, decision: RouteDecision | None = None) -> list[Destination]:
        """Where an extension or URI target is reached (trunks: :meth:`trunk_destinations`)."""
        kind = target.kind
        headers = tuple(decision.headers if decision is not None else ()) + target.headers
        number = target.destination if kind == "extension" else self._own_user(target.destination)
        if number is not None:
            return [
                Destination(contact.request_uri, contact.target, contact.route, headers)
                for contact in self.registrar.location.lookup_user(number)
            ]
        destination = uri_destination(target.destination, headers)
        return [] if destination is None else [destination]

    def _own_user(self, text: str) -> str | None:
        """The user of a sip: URI that names pbxd itself (one of its domains, or its
        address at its own port or none), else None: sent there, the INVITE would
        only come back to pbxd, so ``sip:1002@pbx.example`` rings extension 1002."""
        try:
            uri = parse_uri(text)
        except (SipParseError, ValueError):
            return None
        if not isinstance(uri, SipURI) or not self.core.domains.is_local(uri.host):
            return None
        if uri.port is not None and uri.port not in {listener.port for listener in self.core.transports.listeners}:
            return None  # another program on this machine: a phone, say
        return uri_user(uri)

    async def trunk_destinations(self, trunk: Trunk, target: RouteTarget, decision: RouteDecision,
                                 request: Request, user: Any, called: str) -> list[Destination]:
        """Every hop of ``trunk`` for the called number (normalised by the
        trunk's rules), in the order to try, each with the trunk's identity
        for the caller (From, P-Asserted-Identity / Remote-Party-ID /
        Privacy), the headers ``pass_headers`` lets through, the trunk's
        credentials for the carrier's challenge, and its codecs (the only
        ones an offer to the carrier carries)."""
        number = carrier_number(trunk, decision, called)
        caller = Caller(user.username, user.record.display_name or None, asks_privacy(request))
        identity = trunk.identity_headers(caller)
        headers = (*decision.headers, *target.headers, *identity.headers, *trunk.passed_headers(request.headers))
        to_address = f"<sip:{quote(number, safe='+')}@{trunk.domain}>"
        hops = await trunk.hops(number)
        if not hops:
            log.warn("trunk {trunk}: nowhere to send a call to", trunk=trunk.name)
        return [Destination(hop.request_uri, hop.target, hop.route, headers, identity.from_address, to_address,
                            trunk.credentials, hop.failover_timeout, trunk.codecs) for hop in hops]

    def destinations_for(self, target: str) -> list[Destination]:
        """Destinations for a transfer target: an extension number, or a URI (a local user's
        URI rings that extension)."""
        number = target if ":" not in target else self._own_user(target)
        if number is None:
            destination = uri_destination(target, ())
            return [] if destination is None else [destination]
        if self.registrar.location is None:
            return []
        return [Destination(c.request_uri, c.target, c.route) for c in self.registrar.location.lookup_user(number)]

    # -- CDRs and shutdown -------------------------------------------------------

    def _write_cdr(self, call: Call) -> None:
        self._store_cdr(call.id, call.record())

    def _store_cdr(self, call_id: str, call_record: outcome.CallRecord) -> None:
        if self.capture is not None:
            # Every call with a CDR, refused ones too: its SIP ladder is kept
            # (pbxd.sip.capture) under the Call-ID the CDR has.
            self.capture.call_ended(call_id)
        try:
            record = outcome.build_cdr(call_record)
        except (TypeError, ValueError):
            log.failure("call {call}: no CDR could be built", call=call_id)
            return
        if self.store is None:
            log.info("CDR {cdr}", cdr=record)
            return
        d = self.store.add_cdr(record)
        if self.cdr_pusher is not None:
            d.addCallback(self._push_cdr)
        d.addErrback(lambda failure: log.failure("CDR of call {call} was not written", failure, call=call_id))
        self._writes.add(d)
        d.addBoth(lambda _: self._writes.discard(d))

    def _push_cdr(self, cdr: Any) -> defer.Deferred[None]:
        """Push ``cdr``; fires once the push is spooled. A clean stop waits for that (the
        CDR is then safe), not for a receiver that may be slow or down."""
        assert self.cdr_pusher is not None
        spooled: defer.Deferred[None] = defer.Deferred()
        self.cdr_pusher.push(cdr, spooled).addErrback(
            lambda failure: log.failure("CDR push of call {call} failed", failure, call=cdr.call_id))
        return spooled

    def stop(self) -> defer.Deferred[None]:
        """Refuse new calls, hang up every call, and fire once their CDRs are written
        (and spooled for the push)."""
        self.accepting = False
        for txn in list(self._routing):
            self._end_admission(txn, 503, "system", Retry_After="30")
        for call in list(self.calls.values()):
            call.hangup(outcome.SHUTDOWN, "system")
        return defer.DeferredList(list(self._writes)).addCallback(lambda _: None)

    @property
    def active(self) -> list[Call]:
        return [call for call in self.calls.values() if call.state is not CallState.ENDED]


def carrier_number(trunk: Trunk, decision: RouteDecision, called: str) -> str:
    """The number a call to ``called`` sends to ``trunk``'s carrier: the
    route's rewrite of it, if any, normalised by the trunk's rules."""
    return trunk.numbers.normalize(decision.called or called)


def uri_destination(text: str, headers: Iterable[tuple[str, str]]) -> Destination | None:
    """A sip: URI reached directly: its host and port (no DNS SRV), its transport parameter."""
    try:
        uri = parse_uri(text)
    except (SipParseError, ValueError):
        return None
    if not isinstance(uri, SipURI):
        return None
    transport = uri.transport or ("tls" if uri.secure else "udp")
    if transport not in DEFAULT_PORTS:
        return None
    return Destination(text, Target(transport, uri.host, uri.port or DEFAULT_PORTS[transport]), (), tuple(headers))


__all__ = ["GUARD_REASONS", "CallManager", "CallSettings", "CallerSlot", "TrunkPlan", "TrunkRefusal", "asks_privacy",
           "carrier_number", "uri_destination"]
