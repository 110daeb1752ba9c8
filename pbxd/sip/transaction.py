"""SIP transactions: client and server, INVITE and non-INVITE (RFC 3261 §17, RFC 6026).

Sans-IO: the layer is handed every parsed message by the transport
(``receive``) and requests to send by the transaction user (``send_request``);
it answers through the ``Transport`` and ``TransactionUser`` it was given and
waits only through the injected clock.

RFC 6026 corrections are applied throughout: a 2xx to an INVITE moves both
sides to an Accepted state (Timers L and M) instead of ending the transaction,
so that 2xx retransmissions and their ACKs still have somewhere to go.

Every transition updates the transaction (state, timers, the layer's tables)
before anything is sent or any callback runs, so a transport error or a TU
call made from inside a callback always sees a consistent transaction. The
one exception is the zero-length Timers D, I, J and K of reliable transports:
they end the transaction just after its last send, so that an error from that
send is reported as what it is.
"""

from __future__ import annotations

import enum
import secrets
from typing import TYPE_CHECKING, Any, Callable, Iterator, Protocol

import attrs
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from pbxd.sip.errors import SipParseError
from pbxd.sip.ids import new_tag
from pbxd.sip.message import Request, Response, SipMessage, make_response
from pbxd.sip.timers import TimerSettings
from pbxd.sip.wheel import Timer, TimerWheel

if TYPE_CHECKING:
    from pbxd.transport.target import Target

log = Logger()

# §8.1.1.7: a branch starting with the magic cookie was made by an RFC 3261
# element and is unique across space and time; anything else is RFC 2543.
MAGIC_COOKIE = "z9hG4bK"


def new_branch() -> str:
    """A fresh Via branch: the magic cookie and 96 unguessable bits (§8.1.1.7)."""
    return MAGIC_COOKIE + secrets.token_urlsafe(12)


class TransactionState(enum.Enum):
    CALLING = "calling"
    TRYING = "trying"
    PROCEEDING = "proceeding"
    COMPLETED = "completed"
    ACCEPTED = "accepted"  # RFC 6026 §7.1 / §8.4
    CONFIRMED = "confirmed"
    TERMINATED = "terminated"


class TransactionUser(Protocol):
    def request_received(self, txn: ServerTransaction, request: Request) -> None:
        """A request that starts a new server transaction (CANCEL included: it has its own)."""

    def ack_received(self, request: Request, source: Target) -> None:
        """An ACK for a 2xx (a transaction of its own, §17.1.1.3) or one that matches nothing."""

    def stray_response(self, response: Response, source: Target) -> None:
        """A response that matches no client transaction."""


class Transport(Protocol):
    def send(self, message: SipMessage, target: Target) -> Target | None:
        """Send a request (or a response) to a computed target.

        Returns the target actually used when it differs: a request too large
        for UDP goes over TCP instead (§18.1.1), and its transaction follows.
        """

    def send_response(self, response: Response, source: Target) -> None:
        """Send a response routed per §18.2.2 from its top Via and the request's source."""


def make_ack(invite: Request, response: Response) -> Request:
    """The ACK an INVITE client transaction sends for a 300-699 response (§17.1.1.3).

    Same Request-URI, Call-ID, From and CSeq number as the INVITE; the To of
    the response (with its tag); the INVITE's top Via only, so that the ACK
    carries the transaction's branch; the INVITE's Route set.
    """
    return _request_for_transaction("ACK", invite, _header(response, "To"))


def make_cancel(invite: Request) -> Request:
    """The CANCEL for an INVITE sent by a client transaction (§9.1).

    Request-URI, Call-ID, From, To and CSeq number as in the INVITE, the
    INVITE's top Via (so the CANCEL shares its branch) and its Route set;
    no Require or Proxy-Require.
    """
    return _request_for_transaction("CANCEL", invite, _header(invite, "To"))


def _request_for_transaction(method: str, invite: Request, to: str) -> Request:
    headers = [("Via", _header(invite, "Via"))]
    headers += [("Route", route) for route in invite.get_all("route")]
    headers += [
        ("Max-Forwards", invite.get("max-forwards") or "70"),
        ("From", _header(invite, "From")),
        ("To", to),
        ("Call-ID", _header(invite, "Call-ID")),
        ("CSeq", f"{invite.cseq.seq} {method}"),
    ]
    return Request(method, invite.uri, headers)


def _header(message: SipMessage, name: str) -> str:
    """The first value of a header that must be there (for Via: the top Via alone)."""
    values = message.get_all(name)
    if not values:
        raise SipParseError(f"no {name} header")
    return values[0]


# -- matching keys (§17.1.3, §17.2.3) -------------------------------------

TransactionKey = tuple[object, ...]


def _client_key(branch: str | None, method: str) -> TransactionKey:
    return (branch, method)


def _server_key(request: Request, method: str) -> TransactionKey:
    """The key a request is matched to a server transaction by (§17.2.3).

    ``method`` is the method of the transaction being looked for: INVITE for
    an ACK, and for the CANCEL matching of §9.2.
    """
    via = request.via
    branch = via.branch
    if branch is not None and branch.startswith(MAGIC_COOKIE):
        return (branch, via.host.lower(), via.port, method)
    return _rfc2543_key(request, method, request.to_addr.tag)


def _rfc2543_key(request: Request, method: str, to_tag: str | None) -> TransactionKey:
    # §17.2.3, RFC 2543 fallback: Request-URI, To tag, From tag, Call-ID, CSeq
    # number and top Via (compared without the received/rport the transport
    # may have added, which can differ between retransmissions behind NAT).
    via = request.via
    return (
        "rfc2543",
        request.uri,
        to_tag,
        request.from_addr.tag,
        request.call_id,
        request.cseq.seq,
        method,
        via.transport,
        via.host.lower(),
        via.port,
        via.branch,
    )


def _is_rfc3261_branch(request: Request) -> bool:
    branch = request.via.branch
    return branch is not None and branch.startswith(MAGIC_COOKIE)


# -- transactions --------------------------------------------------------------


class _Transaction:
    """What client and server transactions share: state, timers, reliability.

    A transaction runs at most three timers at once, one per role, each in
    a field of its own (a dict of named timers per transaction cost more
    than the timers, and thousands of transactions linger in Completed):

    - ``_resend_timer``: Timers A, E and G, the retransmissions;
    - ``_end_timer``: the transaction ends when it fires: Timers B, F and H
      (timeouts) and D, I, J, K, L and M (lingering for retransmissions);
    - ``_guard_timer``: Timer C and the §9.1 CANCEL guard of a client
      INVITE, the 100 Trying delay of a server INVITE.
    """

    __slots__ = (
        "_layer", "_resend_timer", "_end_timer", "_guard_timer", "_interval",
        "state", "reliable", "key", "is_invite",
    )

    def __init__(
        self, layer: TransactionLayer, method: str, peer: Target, key: TransactionKey, state: TransactionState
    ) -> None:
        self._layer = layer
        self._resend_timer: Timer | None = None
        self._end_timer: Timer | None = None
        self._guard_timer: Timer | None = None
        self._interval = layer.settings.t1  # the current retransmission interval
        self.key = key
        self.is_invite = method == "INVITE"
        # §17.1.1.2: over TCP and TLS retransmission is the transport's job.
        self.reliable = peer.reliable
        self.state = state

    def _linger(self, delay: float) -> None:
        """Stay around to absorb retransmissions (Timers D, I, J, K), which over TCP or TLS last 0 s.

        Called after the final message is sent, so that a transport error
        raised by that send ends the transaction with its own reason first.
        """
        if self.state is TransactionState.TERMINATED:
            return
        if self.reliable:
            self._end()
        else:
            self._end_timer = self._rearm(self._end_timer, delay, type(self)._end)

    def _end(self) -> None:
        raise NotImplementedError

    def _rearm(self, timer: Timer | None, delay: float, function: Callable[[Any], None]) -> Timer:
        """Cancel ``timer`` and start ``function(self)`` in ``delay`` seconds, for the same field.

        The functions are plain (unbound) ones: a bound method per timer
        would be one more object per transaction for the collector.
        """
        wheel = self._layer.wheel
        wheel.cancel(timer)
        return wheel.call_later(delay, function, self)

    def _stop_timers(self) -> None:
        wheel = self._layer.wheel
        wheel.cancel(self._resend_timer)
        wheel.cancel(self._end_timer)
        wheel.cancel(self._guard_timer)
        self._resend_timer = self._end_timer = self._guard_timer = None

    def _abandon(self) -> None:
        self.state = TransactionState.TERMINATED
        self._stop_timers()


def _ignore_response(response: Response) -> None:
    log.debug("response {status} to a CANCEL sent on Timer C", status=response.status)


def _ignore_failure(reason: str) -> None:
    log.debug("CANCEL sent on Timer C failed: {reason}", reason=reason)


class ClientTransaction(_Transaction):
    """One request sent, with its retransmissions and timeouts (§17.1).

    ``on_response`` gets every response the TU must see: provisional ones,
    the final one, and for INVITE every further 2xx (RFC 6026 Accepted), never
    a retransmitted non-2xx final. ``on_failure`` gets "timeout" or
    "transport" at most once, and only when no final response came.
    """

    __slots__ = (
        "_ack", "_guarding_cancel", "request", "target", "final_response",
        "on_response", "on_failure",
    )

    def __init__(
        self,
        layer: TransactionLayer,
        request: Request,
        target: Target,
        key: TransactionKey,
        on_response: Callable[[Response], None],
        on_failure: Callable[[str], None],
    ) -> None:
        invite = request.method == "INVITE"
        super().__init__(
            layer, request.method, target, key, TransactionState.CALLING if invite else TransactionState.TRYING
        )
        self._ack: Request | None = None
        # A CANCEL was sent, and _guard_timer holds its §9.1 guard, not Timer C.
        self._guarding_cancel = False
        self.request = request
        self.target = target
        self.final_response: Response | None = None
        self.on_response = on_response
        self.on_failure = on_failure

    def __repr__(self) -> str:
        return f"<ClientTransaction {self.request.method} {self.key[0]} {self.state.value}>"

    def cancel_request(self) -> Request:
        """The CANCEL for this INVITE (§9.1); send it with ``layer.send_request``.

        §9.1: it must not be sent before a provisional response has arrived
        (``state`` is PROCEEDING); sending it arms the 64*T1 guard after which
        this transaction gives up waiting for a final response.
        """
        if not self.is_invite:
            raise ValueError(f"only an INVITE can be cancelled, not {self.request.method}")
        return make_cancel(self.request)

    def stop_retransmitting(self) -> None:
        """Send the request no more: the TU gave up on a server that never answered.

        Timer A (or E) stops; the transaction stays until Timer B (or F), so
        that a late response still finds it and reaches the TU (a late 2xx
        must be ACKed, §13.2.2.4). No CANCEL can go instead: none may before
        a provisional response (§9.1).
        """
        self._layer.wheel.cancel(self._resend_timer)
        self._resend_timer = None

    # -- driven by the layer --------------------------------------------

    def _start(self) -> None:
        settings = self._layer.settings
        if not self.reliable:  # Timer A (§17.1.1.2) or E (§17.1.2.2)
            resend = ClientTransaction._timer_a if self.is_invite else ClientTransaction._timer_e
            self._resend_timer = self._rearm(self._resend_timer, settings.t1, resend)
        timeout = settings.transaction_timeout  # Timer B or F
        self._end_timer = self._rearm(self._end_timer, timeout, ClientTransaction._timeout)
        used = self._layer.transport.send(self.request, self.target)
        if used is not None and used != self.target and self.state is not TransactionState.TERMINATED:
            # §18.1.1: the request went over TCP instead of UDP. The
            # transaction, its ACK and any CANCEL follow it there, and
            # retransmission is the transport's job now.
            self.target = used
            if used.reliable and not self.reliable:
                self.reliable = True
                self._layer.wheel.cancel(self._resend_timer)  # Timer A or E
                self._resend_timer = None

    def _receive_response(self, response: Response) -> None:
        if self.is_invite:
            self._invite_response(response)
        else:
            self._non_invite_response(response)

    def _invite_response(self, response: Response) -> None:
        status = response.status
        state = self.state
        if state in (TransactionState.CALLING, TransactionState.PROCEEDING):
            if status < 200:
                self.state = TransactionState.PROCEEDING
                wheel = self._layer.wheel
                wheel.cancel(self._resend_timer)  # Timer A
                wheel.cancel(self._end_timer)  # Timer B
                self._resend_timer = self._end_timer = None
                timer_c = self._layer.settings.timer_c
                if timer_c is not None and not self._guarding_cancel:
                    # §16.7 step 2: Timer C restarts with every provisional
                    # response. It starts here rather than when the INVITE is
                    # sent since Timer B (64*T1) ends Calling well before it.
                    self._guard_timer = self._rearm(
                        self._guard_timer, timer_c, ClientTransaction._timer_c
                    )
                self.on_response(response)
            elif status < 300:
                self.final_response = response
                self.state = TransactionState.ACCEPTED  # RFC 6026 §8.4
                self._stop_timers()
                self._end_timer = self._rearm(  # Timer M
                    None, self._layer.settings.transaction_timeout, ClientTransaction._end
                )
                self.on_response(response)
            else:
                self.final_response = response
                self.state = TransactionState.COMPLETED
                self._stop_timers()
                self._ack = make_ack(self.request, response)
                self._send(self._ack)
                self._linger(self._layer.settings.timer_d)  # Timer D
                self.on_response(response)
        elif state is TransactionState.ACCEPTED:
            if 200 <= status < 300:
                # RFC 6026 §8.4: the TU ACKs every 2xx, from any fork.
                self.on_response(response)
        elif state is TransactionState.COMPLETED and status >= 300 and self._ack is not None:
            # §17.1.1.2: a retransmitted final response is ACKed again, not passed up.
            self._send(self._ack)

    def _non_invite_response(self, response: Response) -> None:
        if self.state not in (TransactionState.TRYING, TransactionState.PROCEEDING):
            return  # §17.1.2.2: Completed absorbs retransmissions
        if response.status < 200:
            self.state = TransactionState.PROCEEDING
        else:
            self.final_response = response
            self.state = TransactionState.COMPLETED
            self._stop_timers()
            self._linger(self._layer.settings.t4)  # Timer K
        self.on_response(response)

    def _transport_failed(self, reason: str) -> None:
        """§17.1.4: a transport error ends the transaction; the TU hears of it unless it has a final response."""
        if self.state is TransactionState.TERMINATED:
            return
        log.info(
            "{method} to {target} failed in transport: {reason}",
            method=self.request.method, target=self.target, reason=reason,
        )
        if self.final_response is None:
            self._fail("transport")
        else:
            self._end()

    def _cancel_sent(self) -> None:
        # §9.1: without a final response 64*T1 after the CANCEL, the INVITE
        # is given up. Timer C has done its job once a CANCEL is out.
        if self.state in (TransactionState.CALLING, TransactionState.PROCEEDING):
            if not self._guarding_cancel:  # the guard replaces Timer C
                self._guarding_cancel = True
                timeout = self._layer.settings.transaction_timeout
                guard = self._guard_timer
                self._guard_timer = self._rearm(guard, timeout, ClientTransaction._timeout)

    # -- timers -------------------------------------------------------------

    def _timer_a(self) -> None:
        self._interval *= 2  # §17.1.1.2: T1, 2*T1, 4*T1, ... without a cap
        self._resend_timer = self._layer.wheel.call_later(
            self._interval, ClientTransaction._timer_a, self
        )
        self._layer.retransmissions += 1
        self._send(self.request)

    def _timer_e(self) -> None:
        # §17.1.2.2: doubling up to T2 while Trying, every T2 once Proceeding.
        settings = self._layer.settings
        if self.state is TransactionState.PROCEEDING:
            self._interval = settings.t2
        else:
            self._interval = min(2 * self._interval, settings.t2)
        self._resend_timer = self._layer.wheel.call_later(
            self._interval, ClientTransaction._timer_e, self
        )
        self._layer.retransmissions += 1
        self._send(self.request)

    def _timer_c(self) -> None:
        # §16.8: after a provisional response, Timer C cancels the INVITE;
        # the 487 (or whatever final response comes) reaches the TU as usual.
        log.info("Timer C fired for INVITE {branch}; sending CANCEL", branch=self.key[0])
        self._layer.send_request(self.cancel_request(), self.target, _ignore_response, _ignore_failure)

    def _timeout(self) -> None:
        log.info("{method} to {target} timed out", method=self.request.method, target=self.target)
        self._fail("timeout")

    # -- helpers --------------------------------------------------------

    def _send(self, request: Request) -> None:
        self._layer.transport.send(request, self.target)

    def _fail(self, reason: str) -> None:
        self._end()
        self.on_failure(reason)

    def _end(self) -> None:
        if self.state is TransactionState.TERMINATED:
            return
        self.state = TransactionState.TERMINATED
        self._stop_timers()
        self._layer._forget_client(self)


# -- server transactions ---------------------------------------------------


class ServerTransaction(_Transaction):
    """One request received, with the responses the TU gives it (§17.2).

    The TU answers with ``respond``. ``on_terminated``, if the TU sets it, is
    called once with "normal", "timeout" (Timer H: no ACK for a non-2xx final
    response to an INVITE, §17.2.1) or "transport" (§17.2.4).
    """

    __slots__ = ("request", "source", "last_response", "on_terminated")

    def __init__(self, layer: TransactionLayer, request: Request, source: Target, key: TransactionKey) -> None:
        invite = request.method == "INVITE"
        super().__init__(
            layer, request.method, source, key, TransactionState.PROCEEDING if invite else TransactionState.TRYING
        )
        self.request = request
        self.source = source
        self.last_response: Response | None = None
        self.on_terminated: Callable[[str], None] | None = None

    def __repr__(self) -> str:
        return f"<ServerTransaction {self.request.method} {self.state.value} call-id={self.request.get('call-id')!r}>"

    @property
    def has_final_response(self) -> bool:
        return self.last_response is not None and self.last_response.status >= 200

    def respond(self, response: Response) -> None:
        """Send a response to the request.

        Final responses after the final one are discarded (§17.2.2), except
        2xx retransmissions for an INVITE, which the TU sends through the
        transaction while it is Accepted (RFC 6026 §7.1).
        """
        if not isinstance(response, Response) or not 100 <= response.status <= 699:
            raise ValueError(f"not a response: {response!r}")
        if self.is_invite:
            self._respond_invite(response)
        else:
            self._respond_non_invite(response)

    def _respond_invite(self, response: Response) -> None:
        status = response.status
        settings = self._layer.settings
        if self.state is TransactionState.PROCEEDING:
            self.last_response = response
            if status < 200:
                self._layer.wheel.cancel(self._guard_timer)  # the 100 Trying delay
                self._guard_timer = None
            elif status < 300:
                self.state = TransactionState.ACCEPTED  # RFC 6026 §7.1
                self._stop_timers()
                timeout = settings.transaction_timeout
                self._end_timer = self._rearm(None, timeout, ServerTransaction._end)  # Timer L
            else:
                self.state = TransactionState.COMPLETED
                self._stop_timers()
                if not self.reliable:  # Timer G
                    self._resend_timer = self._rearm(None, settings.t1, ServerTransaction._timer_g)
                timeout = settings.transaction_timeout
                self._end_timer = self._rearm(None, timeout, ServerTransaction._timer_h)
            self._send(response)
        elif self.state is TransactionState.ACCEPTED and 200 <= status < 300:
            self._send(response)
        else:
            self._discard(response)

    def _respond_non_invite(self, response: Response) -> None:
        if self.state not in (TransactionState.TRYING, TransactionState.PROCEEDING):
            self._discard(response)
            return
        self.last_response = response
        final = response.status >= 200
        self.state = TransactionState.COMPLETED if final else TransactionState.PROCEEDING
        self._send(response)
        if final:
            self._linger(self._layer.settings.transaction_timeout)  # Timer J

    def _discard(self, response: Response) -> None:
        log.warn(
            "discarding {status} for {method} in state {state}",
            status=response.status, method=self.request.method, state=self.state.value,
        )

    # -- driven by the layer --------------------------------------------

    def _start(self) -> None:
        if self.is_invite:
            # §17.2.1: 100 Trying unless the TU answers within 200 ms.
            delay = self._layer.settings.trying_delay
            self._guard_timer = self._rearm(None, delay, ServerTransaction._send_trying)

    def _receive_retransmission(self, request: Request) -> None:
        state = self.state
        if state in (TransactionState.PROCEEDING, TransactionState.COMPLETED):
            if self.last_response is None:
                # An INVITE retransmitted before the TU or the trying timer
                # said anything (possible when trying_delay > T1).
                if self.is_invite:
                    self._send_trying()
                return
            self._send(self.last_response)
        # Trying (no response to repeat yet), Accepted (RFC 6026 §7.1) and
        # Confirmed absorb retransmissions.

    def _receive_ack(self, ack: Request, source: Target) -> None:
        state = self.state
        if state is TransactionState.COMPLETED:
            self.state = TransactionState.CONFIRMED
            self._stop_timers()
            self._linger(self._layer.settings.t4)  # Timer I
        elif state is TransactionState.ACCEPTED:
            self._layer.tu.ack_received(ack, source)  # RFC 6026 §7.1
        elif state is TransactionState.PROCEEDING:
            log.warn("ACK before any final response for {call_id}; dropped", call_id=ack.get("call-id"))
        # Confirmed absorbs ACK retransmissions.

    def _transport_failed(self, reason: str) -> None:
        if self.state is TransactionState.TERMINATED:
            return
        log.info(
            "responses for {method} to {source} failed in transport: {reason}",
            method=self.request.method, source=self.source, reason=reason,
        )
        self._end("transport")

    # -- timers -------------------------------------------------------------

    def _send_trying(self) -> None:
        self._layer.wheel.cancel(self._guard_timer)  # the 100 Trying delay, if it has not fired
        self._guard_timer = None
        self.last_response = make_response(self.request, 100)
        self._send(self.last_response)

    def _timer_g(self) -> None:
        self._interval = min(2 * self._interval, self._layer.settings.t2)  # §17.2.1
        self._resend_timer = self._layer.wheel.call_later(
            self._interval, ServerTransaction._timer_g, self
        )
        self._layer.retransmissions += 1
        assert self.last_response is not None
        self._send(self.last_response)

    def _timer_h(self) -> None:
        log.info("no ACK for the final response to INVITE {call_id}", call_id=self.request.get("call-id"))
        self._end("timeout")

    # -- helpers --------------------------------------------------------

    def _send(self, response: Response) -> None:
        self._layer.transport.send_response(response, self.source)

    def _end(self, reason: str = "normal") -> None:
        if self.state is TransactionState.TERMINATED:
            return
        self.state = TransactionState.TERMINATED
        self._stop_timers()
        self._layer._forget_server(self)
        if self.on_terminated is not None:
            self.on_terminated(reason)


# -- the layer ---------------------------------------------------------------


@attrs.frozen
class TransactionTable:
    """A snapshot of the live transactions, for monitoring."""

    client: tuple[ClientTransaction, ...]
    server: tuple[ServerTransaction, ...]

    def __iter__(self) -> Iterator[ClientTransaction | ServerTransaction]:
        yield from self.client
        yield from self.server

    def __len__(self) -> int:
        return len(self.client) + len(self.server)

    def counts(self) -> dict[str, dict[str, int]]:
        """{"client": {state: n}, "server": {state: n}} with state names like "proceeding"."""
        result: dict[str, dict[str, int]] = {"client": {}, "server": {}}
        for side, txns in (("client", self.client), ("server", self.server)):
            counts = result[side]
            for txn in txns:
                counts[txn.state.value] = counts.get(txn.state.value, 0) + 1
        return result


class TransactionLayer:
    """Matches messages to transactions and makes new ones (§17.1.3, §17.2.3)."""

    def __init__(
        self,
        clock: IReactorTime,
        transport: Transport,
        tu: TransactionUser,
        timers: TimerSettings = TimerSettings(),
    ) -> None:
        self.clock = clock
        self.wheel = TimerWheel(clock)  # every transaction timer, on one reactor call
        self.transport = transport
        self.tu = tu
        self.settings = timers
        self._clients: dict[TransactionKey, ClientTransaction] = {}
        self._servers: dict[TransactionKey, ServerTransaction] = {}
        # Requests and responses resent by Timers A, E and G since start (for /metrics).
        self.retransmissions = 0
        # Server transactions alive at once; over it a new request gets a
        # stateless 503 (issue 9: a flood must not grow the table without end). 0: no limit.
        self.max_server_transactions = 0
        self.refused_over_limit = 0

    # -- from the transport ---------------------------------------------

    def receive(self, message: SipMessage, source: Target) -> None:
        """Hand one parsed message to its transaction, or start a server transaction."""
        if isinstance(message, Response):
            self._receive_response(message, source)
        else:
            self._receive_request(message, source)

    def _receive_response(self, response: Response, source: Target) -> None:
        try:
            key = _client_key(response.via.branch, response.cseq.method)  # §17.1.3
        except SipParseError as error:
            log.warn("dropping response without usable Via/CSeq from {source}: {reason}", source=source, reason=error.reason)
            return
        txn = self._clients.get(key)
        if txn is None:
            self.tu.stray_response(response, source)
        else:
            txn._receive_response(response)

    def _receive_request(self, request: Request, source: Target) -> None:
        method = request.method
        try:
            if method == "ACK":
                ack_txn = self._match_ack(request)
            else:
                key = _server_key(request, method)
        except SipParseError as error:
            log.warn("dropping {method} from {source}: {reason}", method=method, source=source, reason=error.reason)
            return
        if method == "ACK":
            if ack_txn is None:
                self.tu.ack_received(request, source)
            else:
                ack_txn._receive_ack(request, source)
            return
        txn = self._servers.get(key)
        if txn is not None:
            txn._receive_retransmission(request)
        elif self.max_server_transactions and len(self._servers) >= self.max_server_transactions:
            self._refuse_over_limit(request, source)
        else:
            txn = ServerTransaction(self, request, source, key)
            self._servers[key] = txn
            txn._start()
            self.tu.request_received(txn, request)

    def _refuse_over_limit(self, request: Request, source: Target) -> None:
        self.refused_over_limit += 1
        log.debug("refusing {method} from {source}: {limit} server transactions already",
                  method=request.method, source=source, limit=self.max_server_transactions)
        response = make_response(request, 503)
        response.set("Retry-After", "5")
        try:
            to = request.to_addr
        except SipParseError:
            return
        if to.tag is None:  # §8.2.6.2
            response.set("To", str(to.with_param("tag", new_tag())))
        self.transport.send_response(response, source)

    def _match_ack(self, ack: Request) -> ServerTransaction | None:
        txn = self._servers.get(_server_key(ack, "INVITE"))
        if txn is not None or _is_rfc3261_branch(ack):
            return txn
        # §17.2.3: an RFC 2543 ACK carries the To tag of our response, which
        # the INVITE that made the transaction did not have.
        txn = self._servers.get(_rfc2543_key(ack, "INVITE", None))
        response = txn.last_response if txn is not None else None
        if response is not None and response.to_addr.tag == ack.to_addr.tag:
            return txn
        return None

    def transport_error(self, target: Target, reason: str) -> None:
        """§17.1.4, §17.2.4: every transaction sending to ``target`` fails."""
        for client in [t for t in self._clients.values() if t.target == target]:
            client._transport_failed(reason)
        for server in [t for t in self._servers.values() if t.source == target]:
            server._transport_failed(reason)

    # -- from the TU ----------------------------------------------------

    def send_request(
        self,
        request: Request,
        target: Target,
        on_response: Callable[[Response], None],
        on_failure: Callable[[str], None],
    ) -> ClientTransaction:
        """Start a client transaction for ``request``, whose top Via has a fresh branch.

        A CANCEL reuses its INVITE's branch (``ClientTransaction.cancel_request``);
        it is a transaction of its own and arms the INVITE's §9.1 guard. ACK is
        no transaction (§17.1.1.3): send it with ``transport.send``. A transport
        error raised while the request is first sent reaches ``on_failure``
        before this method returns.
        """
        method = request.method
        if method == "ACK":
            raise ValueError("ACK is sent without a client transaction (RFC 3261 §17.1.1.3)")
        branch = request.via.branch
        if branch is None or not branch.startswith(MAGIC_COOKIE):
            raise ValueError(f"request needs a top Via branch starting with {MAGIC_COOKIE}, not {branch!r}")
        key = _client_key(branch, method)
        if key in self._clients:
            raise ValueError(f"a {method} client transaction with branch {branch} is already running")
        txn = ClientTransaction(self, request, target, key, on_response, on_failure)
        self._clients[key] = txn
        if method == "CANCEL":
            invite = self._clients.get(_client_key(branch, "INVITE"))
            if invite is not None:
                invite._cancel_sent()
        txn._start()
        return txn

    def find_invite_transaction(self, cancel: Request) -> ServerTransaction | None:
        """The INVITE server transaction a CANCEL cancels (§9.2), if it is still alive."""
        try:
            return self._servers.get(_server_key(cancel, "INVITE"))
        except SipParseError:
            return None

    # -- monitoring and shutdown -----------------------------------------

    @property
    def transactions(self) -> TransactionTable:
        return TransactionTable(client=tuple(self._clients.values()), server=tuple(self._servers.values()))

    def close(self) -> None:
        """Stop every timer and forget every transaction, telling nobody (shutdown)."""
        for txn in [*self._clients.values(), *self._servers.values()]:
            txn._abandon()
        self._clients.clear()
        self._servers.clear()

    def _forget_client(self, txn: ClientTransaction) -> None:
        if self._clients.get(txn.key) is txn:
            del self._clients[txn.key]

    def _forget_server(self, txn: ServerTransaction) -> None:
        if self._servers.get(txn.key) is txn:
            del self._servers[txn.key]
