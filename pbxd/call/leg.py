"""One side of a call: a SIP dialog between pbxd and one phone (RFC 3261 §12).

pbxd is a B2BUA, so every call is made of legs that know nothing of each
other: each has its own Call-ID, tags and CSeq. The inbound leg is the UAS
side of the caller's INVITE; an outbound leg is the UAC side of an INVITE
pbxd sends. The :class:`~pbxd.call.call.Call` decides what crosses from one
leg to another; the leg does the SIP of its own dialog:

- as UAS, the 2xx to an INVITE is retransmitted by the leg (T1 doubling to
  T2) until its ACK comes, and with no ACK after 64*T1 the leg gives up and
  the call hangs up (§13.3.1.4; RFC 6026 leaves this to the TU). Over TCP
  and TLS the transport delivers the 2xx, so only the ACK wait runs;
- as UAC, the ACK of a 2xx is built once (``Dialog.create_ack``) and sent
  again for each retransmission of that 2xx; a CANCEL goes out only after a
  provisional response (§9.1), so a cancel asked for earlier waits for one;
- an outbound INVITE sent with a ``response_timeout`` (a trunk's failover
  timeout) that hears nothing at all in time, not even 100 Trying, is given
  up without a CANCEL (§9.1 allows none yet): it fails as a 408 would, its
  transaction stops retransmitting, and a late answer still finds the leg: a
  provisional is CANCELled then, a 2xx ACKed and BYEd (§15);
- in-dialog requests go to the leg's flow (``target``): the address the
  phone's INVITE came from, or the binding's flow for an outbound leg, which
  is what reaches a phone behind a NAT.

States: new → calling (outbound INVITE sent) / trying (inbound INVITE
received) → early (18x) → confirmed (2xx) → terminating (BYE sent) → ended.
"""

from __future__ import annotations

import enum
import itertools
from typing import TYPE_CHECKING, Any, Callable, Iterable

from twisted.logger import Logger

from pbxd.sip.dialog import Dialog, DialogState
from pbxd.sip.errors import SipParseError
from pbxd.sip.headers import Address, Via
from pbxd.sip.ids import new_tag
from pbxd.sip.message import Request, Response, make_response
from pbxd.sip.sdp import SDP_CONTENT_TYPE
from pbxd.sip.timers import TimerSet
from pbxd.sip.transaction import ClientTransaction, ServerTransaction, new_branch
from pbxd.transport import Target

if TYPE_CHECKING:
    from pbxd.call.manager import CallManager

log = Logger()

# Methods pbxd accepts inside a call dialog (Allow on our INVITEs and 2xx).
ALLOWED = "INVITE, ACK, CANCEL, BYE, UPDATE, INFO, REFER, NOTIFY"

# The final answer to one request a leg sent: the response, or None with why
# there is none ("timeout", "transport").
FinalCallback = Callable[[Response | None, str | None], None]

_ids = itertools.count(1)


class LegState(enum.Enum):
    NEW = "new"
    CALLING = "calling"
    TRYING = "trying"
    EARLY = "early"
    CONFIRMED = "confirmed"
    TERMINATING = "terminating"
    ENDED = "ended"


class Direction(enum.Enum):
    INBOUND = "inbound"  # pbxd is the UAS of the leg's INVITE
    OUTBOUND = "outbound"  # pbxd is its UAC


def body_type(message: Request | Response) -> str | None:
    """The Content-Type of a message that has a body, else None."""
    return message.get("content-type") if message.body else None


def has_sdp(message: Request | Response) -> bool:
    content_type = message.get("content-type") or ""
    return bool(message.body) and content_type.split(";")[0].strip().lower() == SDP_CONTENT_TYPE


class Leg:
    """One dialog of a call, from pbxd's side. Made with :meth:`inbound` or :meth:`outbound`."""

    def __init__(self, manager: CallManager, direction: Direction, target: Target) -> None:
        self.id = f"leg-{next(_ids)}"
        self.manager = manager
        self.direction = direction
        self.target = target
        self.state = LegState.NEW
        self.dialog: Dialog | None = None
        self.call = None  # the Call this leg belongs to, set by the call
        self.invite: Request | None = None  # the INVITE that made the leg
        self.server_txn: ServerTransaction | None = None  # inbound: its INVITE transaction
        self.client_txn: ClientTransaction | None = None  # outbound: its INVITE transaction
        self.final_status: int | None = None
        self.local_sdp: bytes | None = None  # the last description pbxd sent on this leg
        self.remote_sdp: bytes | None = None  # the last one the phone sent
        self.timers = TimerSet(manager.clock)
        # INVITE transactions under way inside the dialog, for glare (§14.1).
        self.sending_invite = False
        self.receiving_invite = False
        self._local_tag = new_tag()
        self._provisional = False
        self._cancel_wanted = False
        self._answer: Response | None = None  # outbound: the 2xx our ACK is for
        self._ack: Request | None = None  # outbound: that ACK, sent again for retransmissions
        self._unacked: dict[int, tuple[ServerTransaction, Response]] = {}  # inbound 2xx by CSeq
        # A 2xx to a late-offer re-INVITE from this leg: (peer, its 2xx), ACKed with our ACK's answer.
        self.pending_ack: tuple[Leg, Response] | None = None
        self.credentials: Any = None  # outbound: what answers the callee's challenge, if anything
        self._challenged = False
        # The ACK sent for each unwanted 2xx's dialog, by To tag (made when the first comes).
        self._stray_acks: dict[str | None, Request] | None = None

    def __repr__(self) -> str:
        return f"<Leg {self.id} {self.direction.value} {self.state.value} {self.target}>"

    # -- making legs ---------------------------------------------------------

    @classmethod
    def inbound(cls, manager: CallManager, txn: ServerTransaction) -> Leg:
        leg = cls(manager, Direction.INBOUND, txn.source)
        leg.invite = txn.request
        leg.server_txn = txn
        leg.state = LegState.TRYING
        if has_sdp(txn.request):
            leg.remote_sdp = txn.request.body
        return leg

    @classmethod
    def outbound(
        cls,
        manager: CallManager,
        *,
        request_uri: str,
        target: Target,
        from_addr: Address,
        to_addr: Address,
        route: Iterable[str] = (),
        max_forwards: int = 70,
        extra_headers: Iterable[tuple[str, str]] = (),
        credentials: Any = None,
    ) -> Leg:
        """A leg whose INVITE is built now and sent by :meth:`send_invite`.

        ``credentials`` (``authorize(retry, response) -> bool``, a trunk's)
        answer one 401/407 to the INVITE (:meth:`_answer_challenge`)."""
        leg = cls(manager, Direction.OUTBOUND, target)
        leg.credentials = credentials
        host, _ = manager.sent_by(target)
        headers = [
            ("Via", str(leg._via())),
            *(("Route", hop) for hop in route),
            ("Max-Forwards", str(max_forwards)),
            ("From", str(from_addr.without_param("tag").with_param("tag", leg._local_tag))),
            ("To", str(to_addr.without_param("tag"))),
            ("Call-ID", manager.new_call_id(host)),
            ("CSeq", "1 INVITE"),
            ("Contact", str(leg.contact())),
            ("Allow", ALLOWED),
            ("User-Agent", manager.core.server_name),
            *extra_headers,
        ]
        leg.invite = Request("INVITE", request_uri, headers)
        return leg

    # -- what both kinds share ---------------------------------------------

    @property
    def call_id(self) -> str:
        assert self.invite is not None
        return self.invite.call_id

    @property
    def is_ended(self) -> bool:
        return self.state is LegState.ENDED

    @property
    def is_confirmed(self) -> bool:
        return self.state is LegState.CONFIRMED

    def contact(self) -> Address:
        host, port = self.manager.sent_by(self.target)
        transport = "" if self.target.transport == "udp" else f";transport={self.target.transport}"
        return Address.parse(f"<sip:pbxd@{host}:{port}{transport}>")

    def _via(self) -> Via:
        host, port = self.manager.sent_by(self.target)
        return Via.parse(f"SIP/2.0/{self.target.via_transport} {host}:{port};branch={new_branch()};rport")

    def _bind(self, dialog: Dialog) -> None:
        self.dialog = dialog
        self.manager.bind_dialog(dialog, self)

    def end(self) -> None:
        """Forget everything of this leg: dialog, timers, pending ACK waits (idempotent)."""
        if self.state is LegState.ENDED:
            return
        self.state = LegState.ENDED
        self.timers.stop_all()
        self._unacked.clear()
        if self.dialog is not None:
            self.dialog.terminate()
        if self.invite is not None and self.direction is Direction.OUTBOUND:
            self.manager.dialogs.end_early(self.call_id, self._local_tag)
        self.manager.leg_ended(self)

    # -- inbound: answering the INVITE and requests in the dialog ----------------

    def respond(self, status: int, reason: str | None = None, *, body: bytes = b"",
                content_type: str = SDP_CONTENT_TYPE, headers: Iterable[tuple[str, str]] = ()) -> None:
        """Answer the leg's own INVITE (inbound legs). A final failure ends the leg."""
        txn = self.server_txn
        assert txn is not None and self.direction is Direction.INBOUND
        if txn.has_final_response:
            return
        if status >= 200:
            self.final_status = status
        self.answer(txn, status, reason, body=body, content_type=content_type, headers=headers)
        if 101 <= status < 200 and self.state is LegState.TRYING:
            self.state = LegState.EARLY
        elif 200 <= status < 300:
            self.state = LegState.CONFIRMED
        elif status >= 300:
            self.end()

    def answer(self, txn: ServerTransaction, status: int, reason: str | None = None, *, body: bytes = b"",
               content_type: str = SDP_CONTENT_TYPE, headers: Iterable[tuple[str, str]] = ()) -> None:
        """Respond to any request of this leg's dialog (or its INVITE) through ``txn``."""
        if txn.has_final_response:
            return
        request = txn.request
        response = make_response(request, status, reason)
        if status > 100 and request.to_addr.tag is None:
            response.set("To", str(request.to_addr.with_param("tag", self._local_tag)))
        response.set("Server", self.manager.core.server_name)
        invite = request.method == "INVITE"
        if 100 < status < 300 and request.method in ("INVITE", "UPDATE"):
            response.set("Contact", str(self.contact()))
            if status >= 200:
                response.set("Allow", ALLOWED)
        for name, value in headers:
            response.add(name, value)
        if body:
            response.set("Content-Type", content_type)
            response.body = body
            if content_type == SDP_CONTENT_TYPE:
                self.local_sdp = body
        if invite and request.to_addr.tag is None and 100 < status < 300 and self.dialog is None:
            self._bind(Dialog.from_uas(request, self._local_tag, local_contact=self.contact(),
                                       tls=self.target.transport == "tls"))
        txn.respond(response)
        if self.dialog is not None and status > 100:
            self.dialog.response_sent(request, response)
        if invite and 200 <= status < 300:
            self._await_ack(txn, response)

    def _await_ack(self, txn: ServerTransaction, response: Response) -> None:
        """§13.3.1.4: resend the 2xx until its ACK comes; without one in 64*T1, give up."""
        seq = response.cseq.seq
        self._unacked[seq] = (txn, response)
        settings = self.manager.core.layer.settings
        if not self.target.reliable:
            self._schedule_2xx(seq, settings.t1)
        self.timers.start(f"ack-{seq}", settings.transaction_timeout, lambda: self._no_ack(seq))

    def _schedule_2xx(self, seq: int, interval: float) -> None:
        def resend() -> None:
            pending = self._unacked.get(seq)
            if pending is None:
                return
            txn, response = pending
            txn.respond(response)  # passes while the transaction is Accepted (RFC 6026 §7.1)
            self._schedule_2xx(seq, min(2 * interval, self.manager.core.layer.settings.t2))

        self.timers.start(f"2xx-{seq}", interval, resend)

    def _no_ack(self, seq: int) -> None:
        if self._unacked.pop(seq, None) is None:
            return
        self.timers.stop(f"2xx-{seq}")
        log.warn("{leg}: no ACK for the 2xx of CSeq {seq} in 64*T1", leg=self.id, seq=seq)
        if self.call is not None:
            self.call.leg_lost(self, "no_ack")

    def ack_received(self, ack: Request) -> bool:
        """An ACK for one of our 2xx; True if it was the first for that INVITE."""
        seq = ack.cseq.seq
        if self._unacked.pop(seq, None) is None:
            return False
        self.timers.stop(f"2xx-{seq}")
        self.timers.stop(f"ack-{seq}")
        if has_sdp(ack):
            self.remote_sdp = ack.body
        return True

    @property
    def awaiting_ack(self) -> bool:
        return bool(self._unacked)

    # -- outbound: the INVITE and what comes back ---------------------------

    def send_invite(self, body: bytes = b"", content_type: str = SDP_CONTENT_TYPE, *,
                    response_timeout: float = 0.0) -> None:
        """Send the leg's INVITE. With ``response_timeout`` > 0, an INVITE that no
        response at all answers within that many seconds is given up
        (:meth:`_no_response`); 0 leaves it to the transaction (Timer B)."""
        invite = self.invite
        assert invite is not None and self.direction is Direction.OUTBOUND
        if body:
            invite.set("Content-Type", content_type)
            invite.body = body
            self.local_sdp = body
        self.state = LegState.CALLING
        self.client_txn = self.manager.core.layer.send_request(
            invite, self.target, self._invite_response, self._invite_failed)
        if response_timeout > 0 and self.state is LegState.CALLING:  # not failed in transport already
            self.timers.start("response", response_timeout, self._no_response)

    def _no_response(self) -> None:
        """Nothing answered the INVITE in time: give it up, and fail as a 408 would.

        §9.1: no CANCEL may go before a provisional response, so the INVITE
        is abandoned here alone. Its transaction stops retransmitting but
        stays until Timer B, so that a late response still reaches this leg
        (:meth:`_invite_response`): ``_cancel_wanted`` makes a late
        provisional get its CANCEL, and a late 2xx is ACKed and BYEd.
        """
        log.info("{leg}: no response to the INVITE to {target}; giving it up", leg=self.id, target=self.target)
        self._cancel_wanted = True
        if self.client_txn is not None:
            self.client_txn.stop_retransmitting()
        self.final_status = 408
        self.end()
        if self.call is not None:
            self.call.outbound_failed(self, 408, None, reason="no_response")

    def _invite_response(self, response: Response) -> None:
        if self.state is LegState.ENDED:
            if 200 <= response.status < 300:
                self._stray_2xx(response)
            elif response.status < 200 and self._cancel_wanted and not self._provisional:
                # An INVITE given up before anything answered (_no_response):
                # its first provisional response allows the CANCEL now (§9.1).
                self._provisional = True
                self._send_cancel()
            return
        self.timers.stop("response")
        status = response.status
        invite = self.invite
        assert invite is not None
        if status < 200:
            if status > 100 or not self._provisional:
                self._provisional = True
                if self._cancel_wanted:
                    self._send_cancel()
                    return
            dialog = self.manager.dialogs.dialog_for_response(
                invite, response, tls=self.target.transport == "tls")
            if dialog is not None and self.dialog is None:
                self._bind(dialog)
            if status > 100:
                self.state = LegState.EARLY
            if has_sdp(response):
                self.remote_sdp = response.body
            if self.call is not None:
                self.call.outbound_response(self, response)
            return
        if status in (401, 407) and self.credentials is not None:
            if self._answer_challenge(response):
                return
            # The callee (a carrier) refused our credentials: the caller could
            # not answer that challenge, so the call fails with 403.
            self.final_status = status
            self.manager.dialogs.dialog_for_response(invite, response)
            self.end_with(response, status=403)
            return
        if status >= 300:
            self.final_status = status
            self.manager.dialogs.dialog_for_response(invite, response)
            self.end_with(response)
            return
        # A 2xx: the first of its dialog answers the leg; another fork's is ACKed and hung up;
        # a retransmission gets the cached ACK again.
        if self._answer is not None and response.to_addr.tag == self._answer.to_addr.tag:
            if self._ack is not None:
                self.manager.core.transports.send(self._ack, self.target)
            return
        if self._answer is not None or self._cancel_wanted:
            self._stray_2xx(response)
            if self._answer is None:
                self.end_with(response, status=487)
            return
        dialog = self.manager.dialogs.dialog_for_response(invite, response, tls=self.target.transport == "tls")
        if dialog is None:
            return
        if self.dialog is not dialog:
            if self.dialog is not None:
                self.dialog.terminate()
            self._bind(dialog)
        self.manager.dialogs.end_early(self.call_id, self._local_tag)
        self._answer = response
        self.final_status = status
        self.state = LegState.CONFIRMED
        if has_sdp(response):
            self.remote_sdp = response.body
        if self.call is not None:
            self.call.outbound_response(self, response)

    def _answer_challenge(self, response: Response) -> bool:
        """Send the INVITE again with credentials for the callee's 401/407 (§22.2).

        The retry keeps the Call-ID, From tag and To, has a new branch and
        the CSeq raised by one (§8.1.3.5). Only the first challenge is
        answered: a second one means the credentials are wrong. False when
        nothing was sent (no credentials, a cancel is wanted, a second
        challenge): the response then fails the leg like any other.
        """
        if self.credentials is None or self._challenged or self._cancel_wanted or self.invite is None:
            return False
        retry = self.invite.copy()
        retry.set("Via", str(self._via()))
        retry.set("CSeq", f"{self.invite.cseq.seq + 1} INVITE")
        if not self.credentials.authorize(retry, response):
            return False
        self._challenged = True
        self._provisional = False
        self.invite = retry
        log.info("{leg}: answering the {status} challenge", leg=self.id, status=response.status)
        self.client_txn = self.manager.core.layer.send_request(
            retry, self.target, self._invite_response, self._invite_failed)
        return True

    def end_with(self, response: Response, status: int | None = None) -> None:
        """The leg's INVITE failed with ``response``; the call hears it and the leg ends."""
        self.end()
        if self.call is not None:
            self.call.outbound_failed(self, status or response.status, response)

    def _invite_failed(self, reason: str) -> None:
        if self.state is LegState.ENDED:
            return
        self.final_status = 408
        self.end()
        if self.call is not None:
            self.call.outbound_failed(self, 408, None, reason=reason)

    def _stray_2xx(self, response: Response) -> None:
        """A 2xx nobody wants (a losing fork, a cancelled call): ACK it and BYE its dialog (§15).

        A retransmission of it gets the same ACK again (§13.2.2.4), and no
        second BYE: its dialog is being hung up already.
        """
        invite = self.invite
        assert invite is not None
        acks = self._stray_acks if self._stray_acks is not None else {}
        sent = acks.get(response.to_addr.tag)
        if sent is not None:
            self.manager.core.transports.send(sent, self.target)
            return
        try:
            dialog = Dialog.from_uac(invite, response, tls=self.target.transport == "tls")
        except (ValueError, SipParseError) as error:  # a 2xx we cannot even make a dialog of
            log.warn("{leg}: unusable stray 2xx: {error}", leg=self.id, error=str(error))
            return
        ack = dialog.create_ack(response, self._via())
        acks[response.to_addr.tag] = ack
        self._stray_acks = acks
        self.manager.core.transports.send(ack, self.target)
        bye = dialog.create_request("BYE", self._via())
        self.manager.core.layer.send_request(bye, self.target, lambda r: None, lambda reason: None)

    def ack(self, body: bytes = b"", content_type: str = SDP_CONTENT_TYPE) -> None:
        """ACK the 2xx that answered this leg (once; retransmissions reuse it)."""
        if self._answer is None or self._ack is not None or self.dialog is None:
            return
        self._ack = self.dialog.create_ack(self._answer, self._via(), body=body,
                                           content_type=content_type if body else None)
        if body:
            self.local_sdp = body
        self.manager.core.transports.send(self._ack, self.target)

    def ack_reinvite(self, response: Response, body: bytes = b"") -> None:
        """ACK the 2xx of a re-INVITE we sent on this leg."""
        if self.dialog is None:
            return
        ack = self.dialog.create_ack(response, self._via(), body=body,
                                     content_type=SDP_CONTENT_TYPE if body else None)
        if body:
            self.local_sdp = body
        self.manager.core.transports.send(ack, self.target)

    @property
    def has_acked(self) -> bool:
        return self._ack is not None

    @property
    def answered(self) -> bool:
        return self._answer is not None

    def cancel(self) -> None:
        """Cancel the leg's INVITE: now if a provisional came, else as soon as one does (§9.1)."""
        if self.state not in (LegState.CALLING, LegState.EARLY) or self._cancel_wanted:
            return
        self._cancel_wanted = True
        if self._provisional:
            self._send_cancel()

    def _send_cancel(self) -> None:
        txn = self.client_txn
        if txn is None:
            return
        cancel = txn.cancel_request()
        self.manager.core.layer.send_request(cancel, txn.target, lambda r: None, lambda reason: None)

    # -- requests inside the dialog ---------------------------------------

    def send_request(self, method: str, on_final: FinalCallback | None = None, *, body: bytes = b"",
                     content_type: str | None = None, headers: Iterable[tuple[str, str]] = ()) -> Request | None:
        """Send ``method`` in the dialog; ``on_final`` hears its final response or failure.

        A 408 or 481 answer, or no answer at all, means the far end is gone
        (§12.2.1.2): the dialog ends, and the call hears of it through
        ``on_final``. Returns the request, or None when there is no dialog.
        """
        dialog = self.dialog
        if dialog is None or dialog.state is DialogState.TERMINATED:
            return None
        if body and content_type is None:
            content_type = SDP_CONTENT_TYPE
        request = dialog.create_request(method, self._via(), body=body, content_type=content_type,
                                        extra_headers=headers)
        if method == "INVITE":
            self.sending_invite = True
            request.set("Allow", ALLOWED)
        if body and content_type == SDP_CONTENT_TYPE:
            self.local_sdp = body
        holder: list[ClientTransaction] = []

        def finished() -> None:
            if method == "INVITE":
                self.sending_invite = False

        def settled() -> None:
            # Once the call has done what this answer asks, its legs may be free for a
            # re-INVITE that waited (Call.legs_settled).
            if method == "INVITE" and self.call is not None:
                self.call.legs_settled()

        def responded(response: Response) -> None:
            if response.status < 200:
                return
            if method == "INVITE" and holder and holder[0].final_response is not response:
                # A 2xx retransmission of a re-INVITE: ACK it again.
                if 200 <= response.status < 300 and self.dialog is not None:
                    self.ack_reinvite(response)
                return
            if method != "BYE" and self.dialog is not None:
                self.dialog.receive_response(response)
            finished()
            if 200 <= response.status < 300 and has_sdp(response):
                self.remote_sdp = response.body
            if on_final is not None:
                on_final(response, None)
            settled()

        def failed(reason: str) -> None:
            finished()
            if on_final is not None:
                on_final(None, reason)
            settled()

        holder.append(self.manager.core.layer.send_request(request, self.target, responded, failed))
        return request

    def bye(self, headers: Iterable[tuple[str, str]] = ()) -> None:
        """Hang up this leg: BYE if confirmed, CANCEL or a failure answer if not yet; then it ends."""
        if self.state is LegState.ENDED:
            return
        if self.direction is Direction.INBOUND and self.server_txn is not None \
                and not self.server_txn.has_final_response:
            self.respond(480)
            return
        if self.direction is Direction.OUTBOUND and not self.answered:
            self.cancel()
            return
        if self.dialog is not None and self.dialog.state is not DialogState.TERMINATED:
            self.state = LegState.TERMINATING
            dialog = self.dialog
            self.send_request("BYE", lambda response, reason: None, headers=headers)
            dialog.terminate()
        self.end()
