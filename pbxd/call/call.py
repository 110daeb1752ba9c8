"""A call: the inbound leg, the outbound legs that ring, and the two legs it bridges once answered.

What the :class:`Call` does, in the order a call lives it:

- rings its destinations: every one of a step at once (parallel forking,
  §16.7), the steps one after the other (the ``sequential`` strategy); 18x
  answers reach the caller, with their early-media SDP;
- the first 2xx wins: it is ACKed and passed to the caller, the other forks
  are CANCELled (a late 2xx from one of them is ACKed and BYEd by its leg);
- a trunk's server that answers nothing at all within the destination's
  ``failover_timeout`` is given up (no CANCEL: §9.1 allows none before a
  provisional response) and counts as a 408, so its next server rings;
- when every fork failed, the caller gets the best answer (``best_status``,
  §16.7); when the ring time runs out, the forks are CANCELled and the caller
  gets 480 (RFC 3398 §8.2.6.1 maps "no answer from user" to 480; 408 would
  say a SIP request timed out, which is not what happened);
- once bridged, BYE from either side is BYE to the other; re-INVITE, UPDATE,
  INFO and NOTIFY cross to the other leg and their answers come back; a
  re-INVITE that meets another INVITE under way on either leg gets 491
  (§14.1); a leg whose far end is gone (408/481, no answer, no ACK) hangs up
  the call; so does an expired session timer (RFC 4028) or ``max_duration``;
- every SDP that crosses goes through the call's media session (the seam of
  :mod:`pbxd.call.media`);
- REFER (RFC 3515): a blind transfer rings the Refer-To target and bridges it
  with the party that stays, with NOTIFYs of the progress; with Replaces in
  the Refer-To (RFC 3891) pbxd, which holds both calls, joins them itself;
- when it ends, the call leaves one CDR (:mod:`pbxd.call.cdr`).
"""

from __future__ import annotations

import enum
import random
from typing import TYPE_CHECKING, Any, Callable, Iterable

import attrs
from twisted.logger import Logger

from pbxd.call import cdr as outcome
from pbxd.call.leg import Direction, Leg, has_sdp
from pbxd.call.media import MediaSession, NotAcceptable
from pbxd.events import CallEvent, DtmfEvent
from pbxd.media.dtmf import DtmfDigit, digit_from_info
from pbxd.sip.errors import SipParseError
from pbxd.sip.headers import Address
from pbxd.sip.message import Request, Response
from pbxd.sip.refer import parse_refer, refer_notify
from pbxd.sip.sdp import Direction as SdpDirection
from pbxd.sip.sdp import (
    SessionDescription,
    common_codecs,
    parse_sdp,
    rejecting_answer,
    with_direction,
)
from pbxd.sip.session_timer import (
    IntervalTooSmall,
    Negotiated,
    SessionTimer,
    TimerPolicy,
    negotiate_as_uac,
    negotiate_as_uas,
    request_headers,
)
from pbxd.sip.transaction import ServerTransaction
from pbxd.transport import Target
from pbxd.trunks.codecs import offer_for_trunk

if TYPE_CHECKING:
    from pbxd.call.manager import CallManager

log = Logger()


class CallState(enum.Enum):
    RINGING = "ringing"
    ANSWERED = "answered"
    ENDED = "ended"


@attrs.frozen
class Destination:
    """One place an outbound leg goes: Request-URI, the flow to send to, Route set, extra headers.

    A trunk's destination also says who the call is from and to on that
    trunk (``from_address``/``to_address``, else the caller's From and To),
    which ``credentials`` answer the carrier's 401/407 (anything with
    ``authorize(retry, response) -> bool``, like a trunk's), and, when a
    further server of the trunk follows it, its ``failover_timeout``: the
    seconds to wait for any response at all before giving up on this one
    for the next (0: until the INVITE times out, 64*T1). ``codecs``, a
    trunk's: the only codecs an offer to it may carry (empty: any).
    ``ring_time``: how long this one rings when it rings beside others that
    ring longer (a route target's own timeout, parallel strategy); None:
    as long as its step.
    """

    request_uri: str
    target: Target
    route: tuple[str, ...] = ()
    headers: tuple[tuple[str, str], ...] = ()
    from_address: str | None = None
    to_address: str | None = None
    credentials: Any = None
    failover_timeout: float = 0.0
    codecs: tuple[str, ...] = ()
    ring_time: float | None = None


@attrs.frozen
class Step:
    """Destinations rung together, for at most ``ring_time`` seconds (None: the call's limit).

    A ``failover`` step (a trunk's next server) is only tried when the step
    before it failed for want of a server: no answer (the INVITE timed out,
    or nothing answered it within its destination's ``failover_timeout``), a
    transport error, or a 5xx (RFC 3263 §4.3). A 486 from the carrier is the
    called party's answer, and another server of the same carrier would only
    repeat it. ``follows`` names the hop a failover step takes over from,
    whose failure decides (without it, the last failure of the call does:
    with other targets ringing beside a trunk, that may be another's).
    """

    destinations: tuple[Destination, ...]
    ring_time: float | None = None
    failover: bool = False
    follows: Destination | None = None


@attrs.define
class CallLimits:
    """Per call: how long it may ring in all and last once answered (0: no limit)."""

    max_ring_time: float = 60.0
    max_duration: float = 0.0


def server_failed(status: int) -> bool:
    """Whether a failed INVITE's status says the server, not the callee, failed:
    408 (also no answer or a transport error) or a 5xx."""
    return status == 408 or 500 <= status < 600


# §14.1: how long to wait before retrying a re-INVITE that got 491.
def glare_delay(owns_call_id: bool, rng: random.Random) -> float:
    return rng.uniform(2.1, 4.0) if owns_call_id else rng.uniform(0.0, 2.0)


class Call:
    """One call through pbxd (see the module docstring)."""

    def __init__(
        self,
        manager: CallManager,
        inbound: Leg,
        *,
        from_number: str,
        to_number: str,
        direction: str,
        media: MediaSession,
        limits: CallLimits,
        timer_policy: TimerPolicy | None,
        trunk: str | None = None,
        start_time: float | None = None,
    ) -> None:
        self.manager = manager
        self.inbound = inbound
        # Every leg this call ever had, so that its end can let go of them all (_finish).
        self._owned: list[Leg] = []
        self._own(inbound)
        self.id = inbound.call_id
        self.from_number = from_number
        self.to_number = to_number
        self.direction = direction
        self.media = media
        media.on_timeout = lambda: self.hangup(outcome.MEDIA_TIMEOUT, "system")
        media.on_dtmf = lambda leg, digit: self._digit(leg, digit, "rtp")
        self.limits = limits
        self.timer_policy = timer_policy
        self.trunk = trunk
        self.state = CallState.RINGING
        # When its INVITE came in (the router's think time is part of the call), else now.
        self.start_time = manager.clock.seconds() if start_time is None else start_time
        self.answer_time: float | None = None
        self.end_time: float | None = None
        self.a: Leg | None = inbound  # the two bridged legs once answered
        self.b: Leg | None = None
        self.ringing: list[Leg] = []  # outbound legs of the current step
        self.statuses: list[int] = []
        # The final status of each destination rung (or refused before its INVITE), for failover steps.
        self._hop_status: dict[Destination, int] = {}
        self._destination_of: dict[Leg, Destination] = {}
        self.status: int | None = None
        self.cause = ""
        self.side = ""
        self._steps: list[Step] = []
        self._late_offer = not has_sdp(inbound.invite)  # type: ignore[arg-type]
        self._session_timers: dict[Leg, SessionTimer] = {}
        self._timers = manager.new_timers()
        self._rng = manager.rng
        self._transfer: Transfer | None = None
        # pbxd's own re-INVITEs (hold, resume, session refresh) waiting for the legs
        # to be free, in order (legs_settled).
        self._when_settled: list[Callable[[], None]] = []
        self.ended_callbacks: list[Callable[[Call], None]] = []

    def __repr__(self) -> str:
        return f"<Call {self.id} {self.state.value} {self.from_number}->{self.to_number}>"

    @property
    def legs(self) -> list[Leg]:
        legs = [leg for leg in (self.a, self.b) if leg is not None]
        return legs + [leg for leg in self.ringing if leg not in legs]

    def peer(self, leg: Leg) -> Leg | None:
        if leg is self.a:
            return self.b
        if leg is self.b:
            return self.a
        return None

    # -- ringing ------------------------------------------------------------

    def ring(self, steps: Iterable[Step]) -> None:
        """Ring the destinations, step by step; no destination at all is 480."""
        self._steps = [step for step in steps if step.destinations]
        if self.limits.max_ring_time > 0:
            self._timers.start("ring", self.limits.max_ring_time, self._ring_timeout)
        self._next_step()

    def _next_step(self) -> None:
        while self._steps and self.state is CallState.RINGING:
            step = self._steps.pop(0)
            if step.failover and not self._takes_over(step):
                continue
            started = [leg for leg in (self._start_leg(d) for d in step.destinations) if leg is not None]
            if started:
                if step.ring_time is not None and self._steps:
                    self._timers.start("step", step.ring_time, self._step_timeout)
                elif step.ring_time is not None:
                    self._timers.start("step", step.ring_time, self._ring_timeout)
                return
        if self.state is CallState.RINGING and not self.ringing:
            self._fail(outcome.best_status(self.statuses))

    def _takes_over(self, step: Step) -> bool:
        """Whether a failover step rings: the hop it follows failed for want of a server
        (a hop never rung, its own predecessor having had an answer, did not)."""
        if step.follows is not None:
            status = self._hop_status.get(step.follows)
            return status is not None and server_failed(status)
        return not self.statuses or server_failed(self.statuses[-1])

    def _hop_failed(self, destination: Destination | None, status: int) -> None:
        self.statuses.append(status)
        if destination is not None:
            self._hop_status[destination] = status

    def _start_leg(self, destination: Destination) -> Leg | None:
        invite = self.inbound.invite
        assert invite is not None
        headers = list(destination.headers)
        if self.timer_policy is not None:
            headers += request_headers(self.timer_policy.interval, self.timer_policy.min_se)
        try:
            leg = Leg.outbound(
                self.manager,
                request_uri=destination.request_uri,
                target=destination.target,
                from_addr=Address.parse(destination.from_address) if destination.from_address else invite.from_addr,
                to_addr=Address.parse(destination.to_address) if destination.to_address else invite.to_addr,
                route=destination.route,
                max_forwards=max(0, (invite.max_forwards or 70) - 1),
                extra_headers=headers,
                credentials=destination.credentials,
            )
        except ValueError as error:  # not listening on the destination's transport
            log.warn("call {call}: cannot reach {uri}: {error}", call=self.id, uri=destination.request_uri,
                     error=str(error))
            self._hop_failed(destination, 503)
            return None
        self._own(leg)
        self.manager.leg_started(leg)
        self.ringing.append(leg)
        self._destination_of[leg] = destination
        body = b""
        if not self._late_offer:
            try:
                body = self.offer_to(leg, invite.body)
            except NotAcceptable as refusal:
                leg.end()
                self.ringing.remove(leg)
                self._hop_failed(destination, refusal.status)
                return None
        leg.send_invite(body, response_timeout=destination.failover_timeout)
        if destination.ring_time is not None:
            self._timers.start(f"ring-{leg.id}", destination.ring_time, lambda: self._leg_ring_timeout(leg))
        return leg

    def _leg_ring_timeout(self, leg: Leg) -> None:
        """``leg``'s own ring time ran out while others of its step may ring on."""
        if self.state is not CallState.RINGING or leg not in self.ringing:
            return
        self.ringing.remove(leg)
        self._hop_failed(self._destination_of.get(leg), 408)
        leg.cancel()
        if not self.ringing:
            self._timers.stop("step")
            self._next_step()

    def outbound_response(self, leg: Leg, response: Response) -> None:
        """A provisional or 2xx answer on an outbound leg."""
        if self._transfer is not None and leg is self._transfer.new_leg:
            self._transfer.progress(response)
            return
        if self.state is not CallState.RINGING or leg not in self.ringing:
            return
        status = response.status
        if status < 200:
            if status > 100:
                body = self._forward_sdp(self.inbound, response, answer=not self._late_offer)
                if body is None:
                    return
                self.inbound.respond(status, response.reason, body=body)
            return
        self._answered(leg, response)

    def _forward_sdp(self, to: Leg, message: Request | Response, *, answer: bool) -> bytes | None:
        """The body to send to ``to``: the media session's version of the message's SDP (b"" if none).

        None when the media session refuses it (the caller is then answered 488).
        """
        if not has_sdp(message):
            return b""
        try:
            if answer:
                return self.media.answer_to(to, message.body)
            return self.offer_to(to, message.body)
        except NotAcceptable:
            return None

    def offer_to(self, leg: Leg, body: bytes) -> bytes:
        """The media session's version of an offer to send to ``leg``; first cut to
        the trunk's codecs when ``leg`` goes to a trunk (:mod:`pbxd.trunks.codecs`:
        raises NotAcceptable when none is offered)."""
        destination = self._destination_of.get(leg)
        if destination is not None and destination.codecs:
            body = offer_for_trunk(body, destination.codecs)
        return self.media.offer_to(leg, body)

    def _answered(self, leg: Leg, response: Response) -> None:
        body = self._forward_sdp(self.inbound, response, answer=not self._late_offer)
        if body is None:
            leg.ack()
            self.ringing.remove(leg)
            leg.bye()
            self._hangup_others(None)
            self.cause, self.side = "sip_488", "system"
            self._fail(488)
            return
        self.b = leg
        self.ringing.remove(leg)
        self._hangup_others(leg)
        if not self._late_offer:
            leg.ack()
        if self.timer_policy is not None:
            try:
                agreed = negotiate_as_uac(response, self.timer_policy)
            except SipParseError:
                agreed = None
            if agreed is not None:
                self._run_session_timer(leg, agreed)
        self._answer_caller(response.status, response.reason, body)
        log.info("call {call} answered by {leg}", call=self.id, leg=leg.id)

    def _answer_caller(self, status: int, reason: str | None, body: bytes) -> None:
        """The call is answered: the caller gets ``status`` with ``body``, the ring timers stop."""
        self._timers.stop("ring")
        self._timers.stop("step")
        self.state = CallState.ANSWERED
        self.answer_time = self.manager.clock.seconds()
        self.status = status
        headers: list[tuple[str, str]] = []
        if self.timer_policy is not None:
            negotiated = negotiate_as_uas(self.inbound.invite, self.timer_policy)  # type: ignore[arg-type]
            if isinstance(negotiated, Negotiated):
                headers += negotiated.response_headers()
                self._run_session_timer(self.inbound, negotiated)
        self.inbound.respond(status, reason, body=body, headers=headers)
        if self.limits.max_duration > 0:
            self._timers.start("duration", self.limits.max_duration,
                               lambda: self.hangup(outcome.MAX_DURATION, "system"))
        self.manager.events.publish(CallEvent.of("answered", self))

    def accept(self, sdp: bytes) -> None:
        """Answer the ringing call with ``sdp``, an external endpoint's answer (console ``accept``).

        The forks are CANCELled and the caller gets 200 with ``sdp`` as the
        media session forwards it (relayed: the caller's RTP then goes to
        the address in ``sdp``). Raises ``SdpError`` for a body that is not
        SDP and :class:`CallError` when the call is not ringing, when the
        caller sent no offer (a late offer would need the caller's answer
        in its ACK, with nobody to give it to), or when ``sdp`` has no codec
        in common with the caller's offer (what a 488 says, RFC 3264 §6).
        """
        if self.state is not CallState.RINGING:
            raise CallError(f"call {self.id} is {self.state.value}, only a ringing call can be accepted")
        if self._late_offer:
            raise CallError(f"call {self.id}: the caller sent no SDP offer (late offer); accept needs one to answer")
        answer = parse_sdp(sdp)
        try:
            offer = parse_sdp(self.inbound.invite.body)  # type: ignore[union-attr]
        except SipParseError:
            raise CallError(f"call {self.id}: the caller's offer is not SDP pbxd can read") from None
        if not _answers_audio(offer, answer):
            raise CallError("the SDP has no audio codec in common with the caller's offer (488)")
        try:
            body = self.media.answer_to(self.inbound, sdp)
        except NotAcceptable as refusal:
            raise CallError(f"the call's media cannot take that SDP: {refusal}") from None
        self._hangup_others(None)
        self._answer_caller(200, None, body)
        log.info("call {call} accepted with an external SDP", call=self.id)

    def _hangup_others(self, winner: Leg | None) -> None:
        for other in list(self.ringing):
            if other is not winner:
                other.cancel()
        self.ringing = []

    def outbound_failed(self, leg: Leg, status: int, response: Response | None, reason: str | None = None) -> None:
        if self._transfer is not None and leg is self._transfer.new_leg:
            self._transfer.failed(status, response)
            return
        if leg in self.ringing:
            self.ringing.remove(leg)
            self._hop_failed(self._destination_of.get(leg), status)
            if response is not None and status >= 600:
                self._hangup_others(None)
                self._fail(status)
                return
            if not self.ringing and self.state is CallState.RINGING:
                self._timers.stop("step")
                self._next_step()
        elif leg is self.b:
            self.leg_lost(leg, reason or f"sip_{status}")

    def _step_timeout(self) -> None:
        for leg in self.ringing:
            self._hop_failed(self._destination_of.get(leg), 408)
            leg.cancel()
        self.ringing = []
        self._next_step()

    def _ring_timeout(self) -> None:
        if self.state is not CallState.RINGING:
            return
        log.info("call {call}: nobody answered in time", call=self.id)
        self._hangup_others(None)
        self.cause, self.side = outcome.NO_ANSWER, "system"
        self._fail(480)

    def _fail(self, status: int) -> None:
        """No fork answered: the caller gets ``status`` and the call ends."""
        if self.state is CallState.ENDED:
            return
        self.status = status
        if not self.cause:
            self.cause, self.side = outcome.cause_for_status(status), "callee"
        reason = "No Answer" if self.cause == outcome.NO_ANSWER and status == 480 else None
        self.inbound.respond(status, reason)
        self._finish()

    def caller_cancelled(self) -> None:
        """The caller's CANCEL (§9.2): 487 to the caller, CANCEL to every fork."""
        if self.state is not CallState.RINGING:
            return
        self._hangup_others(None)
        self.cause, self.side = outcome.ORIGINATOR_CANCEL, "caller"
        self.status = 487
        self.inbound.respond(487)
        self._finish()

    # -- once bridged: requests inside the legs ---------------------------------

    def leg_request(self, leg: Leg, txn: ServerTransaction, request: Request) -> None:
        method = request.method
        if method == "BYE":
            leg.answer(txn, 200)
            self._bye_from(leg)
        elif method == "INVITE":
            self._reinvite(leg, txn, request)
        elif method == "REFER":
            self._refer(leg, txn, request)
        elif method in ("UPDATE", "INFO", "NOTIFY"):
            self._pass_non_invite(leg, txn, request)
        else:
            leg.answer(txn, 405)

    def _bye_from(self, leg: Leg) -> None:
        leg.end()
        if leg is not self.a and leg is not self.b:
            return  # a transferor leaving, or a leg already replaced: the call goes on
        if self.state is CallState.RINGING and leg is self.inbound:
            # A BYE for an early dialog (§15): like a CANCEL.
            self.caller_cancelled()
            return
        side = "caller" if leg.direction is Direction.INBOUND and leg is self.inbound else "callee"
        self.hangup(outcome.NORMAL_CLEARING, side, exclude=leg)

    def _busy(self, leg: Leg) -> bool:
        peer = self.peer(leg)
        legs = [leg] + ([peer] if peer is not None else [])
        return any(x.sending_invite or x.receiving_invite or x.awaiting_ack for x in legs)

    def _reinvite(self, leg: Leg, txn: ServerTransaction, request: Request) -> None:
        peer = self.peer(leg)
        if peer is None or self.state is not CallState.ANSWERED or not peer.is_confirmed:
            leg.answer(txn, 491 if self.state is CallState.ANSWERED else 488)
            return
        if leg.receiving_invite:
            # §14.2: a second INVITE before the first is answered is the UA's own
            # mistake, not glare: 500 with a random Retry-After of 0-10 s.
            leg.answer(txn, 500, headers=[("Retry-After", str(self._rng.randint(0, 10)))])
            return
        if self._busy(leg):
            # §14.2: our INVITE is under way on this dialog, or (B2BUA) on the
            # peer's, which is where this one would go: glare, 491.
            leg.answer(txn, 491)
            return
        leg_timer = self._uas_timer_headers(leg, txn, request)
        if leg_timer is None:
            return
        offered = has_sdp(request)
        if offered:
            leg.remote_sdp = request.body
        body = self._forward_sdp(peer, request, answer=False)
        if body is None:
            leg.answer(txn, 488)
            return
        leg.receiving_invite = True

        def done(response: Response | None, reason: str | None) -> None:
            leg.receiving_invite = False
            if response is None:
                leg.answer(txn, 408)
                self.leg_lost(peer, reason or "timeout")
                return
            if not 200 <= response.status < 300:
                leg.answer(txn, response.status, response.reason)
                if response.status in (408, 481):
                    self.leg_lost(peer, f"sip_{response.status}")
                return
            self._timer_refreshed(peer, response)
            answer = self._forward_sdp(leg, response, answer=offered)
            if answer is None:
                peer.ack_reinvite(response)
                leg.answer(txn, 488)
                return
            if offered:
                peer.ack_reinvite(response)
            else:
                leg.pending_ack = (peer, response)
            self._refresh_local(leg, leg_timer)
            leg.answer(txn, response.status, response.reason, body=answer, headers=leg_timer[1])

        peer.send_request("INVITE", done, body=body)

    def _uas_timer_headers(self, leg: Leg, txn: ServerTransaction,
                           request: Request) -> tuple[Negotiated | None, list[tuple[str, str]]] | None:
        """Session-timer headers for our 2xx to a refresh from ``leg``; None once answered 422."""
        if self.timer_policy is None or request.method not in ("INVITE", "UPDATE"):
            return (None, [])
        try:
            negotiated = negotiate_as_uas(request, self.timer_policy)
        except SipParseError:
            leg.answer(txn, 400)
            return None
        if isinstance(negotiated, IntervalTooSmall):
            leg.answer(txn, 422, headers=negotiated.response_headers())
            return None
        if negotiated is None:
            return (None, [])
        return (negotiated, negotiated.response_headers())

    def _refresh_local(self, leg: Leg, leg_timer: tuple[Negotiated | None, list[tuple[str, str]]]) -> None:
        negotiated = leg_timer[0]
        if negotiated is not None:
            self._run_session_timer(leg, negotiated)

    def leg_ack(self, leg: Leg, ack: Request) -> None:
        """An ACK of one of ``leg``'s 2xx: for a late offer it carries the answer the peer waits for."""
        pending = leg.pending_ack
        if self.state is CallState.ANSWERED and self.b is not None and leg is self.inbound \
                and self._late_offer and not self.b.has_acked:
            body = self._forward_sdp(self.b, ack, answer=True)
            if body is None:
                # No codec in common (RFC 3264 §6). The offer in the callee's 2xx still gets an
                # answer in the ACK (RFC 3261 §13.2.2.4), one refusing every stream; then BYE.
                self.b.ack(rejecting_answer(self.b.remote_sdp or b""))
                self.hangup(outcome.cause_for_status(488), "system")
                return
            self.b.ack(body)
            return
        if pending is not None:
            peer, response = pending
            leg.pending_ack = None
            peer.ack_reinvite(response, self._forward_sdp(peer, ack, answer=True) or b"")

    def _pass_non_invite(self, leg: Leg, txn: ServerTransaction, request: Request) -> None:
        peer = self.peer(leg)
        if peer is None or peer.dialog is None or (self.state is not CallState.ANSWERED and request.method != "UPDATE"):
            leg.answer(txn, 481 if peer is None else 491)
            return
        leg_timer = self._uas_timer_headers(leg, txn, request)
        if leg_timer is None:
            return
        offered = request.method == "UPDATE" and has_sdp(request)
        if offered and (self._busy(leg)):
            leg.answer(txn, 491)  # RFC 3311 §5.2: an offer while one is pending
            return
        body = self._forward_sdp(peer, request, answer=False) if offered else request.body
        if body is None:
            leg.answer(txn, 488)
            return
        headers = [(name, request.get(name)) for name in ("Event", "Subscription-State", "Info-Package")
                   if request.get(name) is not None]
        if request.method == "INFO" and request.body:
            digit = digit_from_info(request.get("content-type") or "", request.body)
            if digit is not None:
                self._digit(leg, digit, "info")  # and the INFO still goes to the peer, as ever

        def done(response: Response | None, reason: str | None) -> None:
            if response is None:
                leg.answer(txn, 408)
                self.leg_lost(peer, reason or "timeout")
                return
            answer: bytes | None = response.body
            if offered and 200 <= response.status < 300:
                self._timer_refreshed(peer, response)
                self._refresh_local(leg, leg_timer)
                answer = self._forward_sdp(leg, response, answer=True)
                if answer is None:
                    leg.answer(txn, 488)
                    return
            extra = leg_timer[1] if 200 <= response.status < 300 else []
            leg.answer(txn, response.status, response.reason, body=answer or b"",
                       content_type=response.get("content-type") or "application/octet-stream",
                       headers=extra)
            if response.status in (408, 481):
                self.leg_lost(peer, f"sip_{response.status}")

        peer.send_request(request.method, done, body=body or b"",
                          content_type=request.get("content-type") if body else None, headers=headers)

    # -- session timers (RFC 4028) -------------------------------------------

    def _run_session_timer(self, leg: Leg, negotiated: Negotiated) -> None:
        timer = self._session_timers.get(leg)
        if timer is None:
            self._session_timers[leg] = SessionTimer(
                self.manager.clock, negotiated.interval, negotiated.we_refresh,
                lambda: self._refresh(leg), lambda: self.hangup(outcome.SESSION_TIMER_EXPIRED, "system"))
        else:
            timer.refreshed(negotiated.interval, negotiated.we_refresh)

    def _timer_refreshed(self, leg: Leg, response: Response) -> None:
        if self.timer_policy is None or leg not in self._session_timers:
            return
        try:
            agreed = negotiate_as_uac(response, self.timer_policy)
        except SipParseError:
            agreed = None
        if agreed is not None:
            self._session_timers[leg].refreshed(agreed.interval, agreed.we_refresh)

    def _refresh(self, leg: Leg) -> None:
        """Our turn to refresh ``leg``'s session: a re-INVITE with the description it already has."""
        timer = self._session_timers.get(leg)
        if timer is None or self.state is not CallState.ANSWERED:
            return
        if self._busy(leg):
            self._when_settled.append(lambda: self._refresh(leg))
            return
        assert self.timer_policy is not None
        headers = request_headers(int(timer.interval), self.timer_policy.min_se)
        headers[1] = ("Session-Expires", f"{int(timer.interval)};refresher=uac")

        def done(response: Response | None, reason: str | None) -> None:
            if response is None or response.status in (408, 481):
                self.leg_lost(leg, reason or f"sip_{response.status if response else 408}")
            elif 200 <= response.status < 300:
                leg.ack_reinvite(response)
                self._timer_refreshed(leg, response)

        leg.send_request("INVITE", done, body=leg.local_sdp or b"", headers=headers)

    # -- from code: hold, unhold, INFO, hangup ---------------------------------------

    def hold(self, leg: Leg | None = None) -> None:
        """Put the far party on hold: re-INVITE ``leg`` (default: the callee) with sendonly."""
        self._redirect(leg, SdpDirection.SENDONLY)
        self.manager.events.publish(CallEvent.of("held", self))

    def unhold(self, leg: Leg | None = None) -> None:
        self._redirect(leg, SdpDirection.SENDRECV)
        self.manager.events.publish(CallEvent.of("resumed", self))

    def _redirect(self, leg: Leg | None, direction: SdpDirection) -> None:
        leg = leg or self.b
        if leg is None or not leg.is_confirmed or leg.local_sdp is None:
            raise CallError("the call has no answered leg to re-INVITE")
        self._send_redirect(leg, direction)

    def _send_redirect(self, leg: Leg, direction: SdpDirection) -> None:
        if leg.is_ended:
            return
        if self._busy(leg):
            # §14.1: one INVITE at a time on a dialog (and, as a B2BUA, on its peer's, where a
            # relayed offer would go). Nothing refused ours, so it is no glare: it goes as
            # soon as an answer or an ACK frees the legs (legs_settled), not seconds later.
            self._when_settled.append(lambda: self._send_redirect(leg, direction))
            return
        # Built when it is sent, on the leg's description of that moment: the media session
        # owns the o= towards each leg (one version counter, RFC 3264 §8).
        sdp = self.media.own_offer(leg, with_direction(parse_sdp(leg.local_sdp or b""), direction).to_bytes())

        def done(response: Response | None, reason: str | None) -> None:
            if response is None or response.status in (408, 481):
                self.leg_lost(leg, reason or "gone")
            elif response.status == 491:
                # §14.1: retry after a random delay; 2.1-4 s when we own the dialog's Call-ID.
                self._timers.start(f"reinvite-{leg.id}",
                                   glare_delay(leg.direction is Direction.OUTBOUND, self._rng),
                                   lambda: self._send_redirect(leg, direction))
            elif 200 <= response.status < 300:
                leg.ack_reinvite(response)
                self._timer_refreshed(leg, response)

        leg.send_request("INVITE", done, body=sdp)

    def legs_settled(self) -> None:
        """An INVITE on one of the legs got its answer, or a 2xx its ACK: send the
        re-INVITEs that waited for that, in the order they were asked for (each
        waits again if the one before made its legs busy)."""
        if not self._when_settled or self.state is not CallState.ANSWERED:
            return
        waiting, self._when_settled = self._when_settled, []
        for send in waiting:
            send()

    def _digit(self, leg: Leg, digit: DtmfDigit, source: str) -> None:
        """``leg``'s phone sent a DTMF digit (from its RTP or an INFO): tell the event bus."""
        if self.state is CallState.ENDED:
            return
        self.manager.events.publish(DtmfEvent(
            self.manager.clock.seconds(), self.id, leg.id, "caller" if leg is self.inbound else "callee",
            digit.digit, digit.duration, source))

    def send_info(self, body: bytes, content_type: str, leg: Leg | None = None) -> None:
        """Send INFO (a DTMF relay, say) to ``leg`` (default: the callee)."""
        leg = leg or self.b
        if leg is None or not leg.is_confirmed:
            raise CallError("the call has no answered leg")
        leg.send_request("INFO", None, body=body, content_type=content_type)

    def hangup(self, cause: str = outcome.NORMAL_CLEARING, side: str = "system", *, exclude: Leg | None = None) -> None:
        """End the call: BYE (or CANCEL, or a final answer) to every leg still up."""
        if self.state is CallState.ENDED:
            return
        if not self.cause:
            self.cause, self.side = cause, side
        if self.state is CallState.RINGING:
            self._hangup_others(None)
            self.status = 480 if cause != outcome.SHUTDOWN else 503
            self.inbound.respond(self.status)
        for leg in [self.a, self.b, *self._extra_legs()]:
            if leg is not None and leg is not exclude:
                leg.bye()
        self._finish()

    def _extra_legs(self) -> list[Leg]:
        transfer = self._transfer
        if transfer is None:
            return []
        return [leg for leg in (transfer.new_leg, transfer.referrer) if leg is not None]

    def leg_lost(self, leg: Leg, reason: str) -> None:
        """``leg``'s far end is gone: hang up the rest of the call."""
        if self.state is CallState.ENDED:
            return
        log.info("call {call}: {leg} lost ({reason})", call=self.id, leg=leg.id, reason=reason)
        leg.end()
        if leg is not self.a and leg is not self.b and leg not in self.ringing:
            return
        side = "caller" if leg is self.inbound else "callee"
        self.hangup(outcome.LOST, side)

    def _finish(self) -> None:
        if self.state is CallState.ENDED:
            return
        self.state = CallState.ENDED
        self.end_time = self.manager.clock.seconds()
        self._timers.stop_all()
        self._when_settled.clear()
        for timer in self._session_timers.values():
            timer.stop()
        self._session_timers.clear()
        if self._transfer is not None:
            self._transfer.call_ended()
        self.media.close()
        log.info("call {call} ended: {cause} ({side}), status {status}", call=self.id, cause=self.cause,
                 side=self.side, status=self.status)
        self.manager.call_ended(self)
        for callback in self.ended_callbacks:
            callback(self)
        # An ended leg's INVITE transaction lives on for 64*T1 (Timer M/L, RFC 6026) to
        # absorb 2xx retransmissions, and it holds the leg: without this, the whole call
        # (media session, timers, messages) stayed alive 32 s after it ended. An ended
        # leg answers late 2xx by itself (Leg._stray_2xx); it needs no call.
        for leg in self._owned:
            if leg.is_ended and leg.call is self:
                leg.call = None
        self._owned.clear()
        self._destination_of.clear()

    def _own(self, leg: Leg) -> None:
        leg.call = self
        self._owned.append(leg)

    def record(self) -> outcome.CallRecord:
        return outcome.CallRecord(
            call_id=self.id, from_number=self.from_number, to_number=self.to_number,
            direction=self.direction, start_time=self.start_time,
            end_time=self.end_time if self.end_time is not None else self.manager.clock.seconds(),
            answer_time=self.answer_time, status=self.status, cause=self.cause or outcome.NORMAL_CLEARING,
            side=self.side, trunk=self.trunk, recording_path=self.media.recording_path,
            recording_size=self.media.recording_bytes, quality=self.media.quality(),
        )

    # -- transfer -----------------------------------------------------------

    def transfer(self, target: str, attended: bool = False, leg: Leg | None = None) -> None:
        """Transfer from code: ``leg`` (default: the caller) leaves, its peer is bridged to ``target``.

        ``target`` is an extension number or a SIP URI. ``attended`` with a
        target that is another call's Call-ID joins that call's far party instead.
        """
        leg = leg or self.a
        if self.state is not CallState.ANSWERED or leg is None or self.peer(leg) is None:
            raise CallError("only an answered call can be transferred")
        if attended:
            other = self.manager.calls.get(target)
            if other is None or other is self or other.state is not CallState.ANSWERED:
                raise CallError(f"no answered call {target} to join")
            self._join(leg, other, None)
            if not leg.is_ended:
                # Joined from code, not on the phone's REFER: the phone does not know it
                # was transferred and would never hang up (RFC 5589 §6.1), so pbxd does.
                leg.bye()
            return
        destinations = self.manager.destinations_for(target)
        if not destinations:
            raise CallError(f"nowhere to reach {target}")
        self._transfer = Transfer(self, leg, None, None)
        self._transfer.start(destinations[0])

    def _refer(self, leg: Leg, txn: ServerTransaction, request: Request) -> None:
        try:
            refer = parse_refer(request)
        except SipParseError:
            leg.answer(txn, 400)
            return
        if self.state is not CallState.ANSWERED or self.peer(leg) is None or self._transfer is not None:
            leg.answer(txn, 403 if self._transfer is None else 491)
            return
        replaces = refer.refer_to.replaces
        if replaces is not None:
            other_leg = self.manager.leg_for_dialog(replaces.dialog_id)
            other = other_leg.call if other_leg is not None else None
            if other_leg is None or other is None or other is self or other.state is not CallState.ANSWERED:
                leg.answer(txn, 481 if other_leg is None else 403)
                return
            leg.answer(txn, 202)
            self._join(leg, other, other_leg, notify_txn_request=request)
            return
        destinations = self.manager.destinations_for(str(refer.refer_to.target))
        if not destinations:
            leg.answer(txn, 404)
            return
        leg.answer(txn, 202)
        self._transfer = Transfer(self, leg, request, refer.subscription)
        self._transfer.start(destinations[0])

    def replace(self, old: Leg, new: Leg) -> None:
        """RFC 3891: the inbound leg ``new`` (an INVITE with Replaces) takes ``old``'s place.

        Its offer goes to ``old``'s peer in a re-INVITE; the peer's answer
        answers ``new``; then ``old`` is hung up. A refusal leaves the call as it was.
        """
        peer = self.peer(old)
        self._own(new)
        if peer is None or self._busy(old):
            new.respond(491 if peer is not None else 481)
            return
        invite = new.invite
        assert invite is not None
        offered = has_sdp(invite)
        body = self._forward_sdp(peer, invite, answer=False)
        if body is None:
            new.respond(488)
            return

        def done(response: Response | None, reason: str | None) -> None:
            if response is None or not 200 <= response.status < 300:
                new.respond(response.status if response is not None else 408)
                if response is None or response.status in (408, 481):
                    self.leg_lost(peer, reason or "gone")
                return
            answer = self._forward_sdp(new, response, answer=offered)
            if answer is None:
                peer.ack_reinvite(response)
                new.respond(488)
                return
            if offered:
                peer.ack_reinvite(response)
            else:
                new.pending_ack = (peer, response)
            self._swap(old, new)
            new.respond(response.status, response.reason, body=answer)
            old.bye()
            log.info("call {call}: {old} replaced by {new}", call=self.id, old=old.id, new=new.id)

        peer.send_request("INVITE", done, body=body)

    def _join(self, leg: Leg, other: Call, other_leg: Leg | None, notify_txn_request: Request | None = None) -> None:
        """Attended transfer: ``leg`` (the transferor, here) leaves; its peer is bridged with the
        far party of ``other`` (whose transferor leg ``other_leg`` is hung up)."""
        stays = self.peer(leg)
        if other_leg is None:
            other_leg = other.a
        joins = other.peer(other_leg) if other_leg is not None else None
        if stays is None or joins is None or other_leg is None:
            raise CallError("nothing to join")
        notify = NotifyChannel(self, leg, notify_txn_request)
        # The other call loses its two legs to this one; it ends as transferred.
        if joins is other.a:
            other.a = None
        else:
            other.b = None
        self._own(joins)
        other.cause, other.side = outcome.TRANSFERRED, "caller"
        other_leg.bye()
        other.a = other.b = None
        other._finish()
        self._swap(leg, joins)
        notify.send(100)
        self._reconnect(stays, joins, lambda ok: notify.send(200 if ok else 503))

    def _swap(self, leaving: Leg, arriving: Leg) -> None:
        if leaving is self.a:
            self.a = arriving
        else:
            self.b = arriving
        self._own(arriving)

    def _reconnect(self, first: Leg, second: Leg, done: Callable[[bool], None]) -> None:
        """Make ``first`` and ``second`` talk: re-INVITE ``first`` with ``second``'s description
        and then ``second`` with ``first``'s answer."""
        def second_done(response: Response | None, reason: str | None) -> None:
            if response is not None and 200 <= response.status < 300:
                second.ack_reinvite(response)
                done(True)
            else:
                done(False)
                self.hangup(outcome.LOST, "system")

        def first_done(response: Response | None, reason: str | None) -> None:
            if response is None or not 200 <= response.status < 300:
                done(False)
                self.hangup(outcome.LOST, "system")
                return
            first.ack_reinvite(response)
            offer = self.offer_to(second, response.body) if has_sdp(response) else b""
            second.send_request("INVITE", second_done, body=offer)

        offer = self.offer_to(first, second.remote_sdp or b"")
        first.send_request("INVITE", first_done, body=offer)


def _answers_audio(offer: SessionDescription, answer: SessionDescription) -> bool:
    """Whether ``answer`` accepts one of ``offer``'s audio streams with a real codec of the offer's.

    RFC 3264 §6: the answer's m-lines pair with the offer's by position.
    """
    for offered, answered in zip(offer.media, answer.media):
        if offered.kind != "audio" or answered.kind != "audio" or answered.is_rejected:
            continue
        if any(not codec.is_auxiliary for codec in common_codecs(offered, answered)):
            return True
    return False


# How long a transferor may stay after the final NOTIFY before pbxd hangs it up.
REFERRER_GRACE = 5.0


class CallError(Exception):
    """A request from code (REST, console) that the call cannot do now; the text says why."""


class NotifyChannel:
    """The NOTIFYs of a REFER's implicit subscription (RFC 3515 §2.4.4), or nothing without one."""

    def __init__(self, call: Call, leg: Leg, refer: Request | None, subscription: bool = True) -> None:
        self.call = call
        self.leg = leg
        self.refer_seq = refer.cseq.seq if refer is not None else None
        self.enabled = refer is not None and subscription
        self.finished = False

    def send(self, status: int, reason: str | None = None) -> None:
        if not self.enabled or self.finished or self.leg.is_ended or self.leg.dialog is None:
            return
        if status >= 200:
            self.finished = True
        notify = refer_notify(self.leg.dialog, self.leg._via(), status, reason=reason, refer_seq=self.refer_seq)
        self.leg.manager.core.layer.send_request(notify, self.leg.target, lambda r: None, lambda reason: None)


class Transfer:
    """A blind transfer under way: ``referrer`` leaves, its peer is bridged to a new outbound leg."""

    def __init__(self, call: Call, referrer: Leg, refer: Request | None, subscription: bool | None) -> None:
        self.call = call
        self.referrer = referrer
        self.stays = call.peer(referrer)
        self.new_leg: Leg | None = None
        self.notify = NotifyChannel(call, referrer, refer, subscription is not False)

    def start(self, destination: Destination) -> None:
        call = self.call
        stays = self.stays
        assert stays is not None
        invite = call.inbound.invite
        assert invite is not None
        leg = Leg.outbound(
            call.manager, request_uri=destination.request_uri, target=destination.target,
            from_addr=stays.dialog.remote_uri if stays.dialog is not None else invite.from_addr,  # type: ignore[arg-type]
            to_addr=Address.parse(f"<{destination.request_uri}>"), route=destination.route,
            extra_headers=destination.headers,
        )
        call._own(leg)
        self.new_leg = leg
        call.manager.leg_started(leg)
        self.notify.send(100)
        leg.send_invite(call.media.offer_to(leg, stays.remote_sdp or b""))

    def progress(self, response: Response) -> None:
        leg = self.new_leg
        assert leg is not None
        if response.status < 200:
            if response.status > 100:
                self.notify.send(response.status, response.reason)
            return
        leg.ack()
        call = self.call
        stays = self.stays
        assert stays is not None
        self.notify.send(response.status, response.reason)
        if call.a is self.referrer:
            call.a = leg
        else:
            call.b = leg
        call._transfer = None
        if not self.referrer.is_ended:
            if self.notify.enabled:
                # The transferor hangs up after the final NOTIFY (RFC 5589 §6.1); if it does not
                # within a few seconds, pbxd does.
                self.referrer.timers.start("transferred", REFERRER_GRACE, self.referrer.bye)
            else:
                self.referrer.bye()  # a transfer from code: nobody else will hang it up
        offer = call.offer_to(stays, leg.remote_sdp or b"")

        def done(answer: Response | None, reason: str | None) -> None:
            if answer is not None and 200 <= answer.status < 300:
                stays.ack_reinvite(answer)
            else:
                call.leg_lost(stays, reason or "refused")

        stays.send_request("INVITE", done, body=offer)

    def failed(self, status: int, response: Response | None) -> None:
        self.notify.send(status if status >= 300 else 503, response.reason if response is not None else None)
        call = self.call
        call._transfer = None
        if self.referrer.is_ended:
            call.hangup(outcome.cause_for_status(status), "callee")

    def call_ended(self) -> None:
        if self.new_leg is not None and not self.new_leg.is_ended:
            self.new_leg.bye()


__all__ = ["Call", "CallError", "CallLimits", "CallState", "Destination", "Step", "glare_delay"]
