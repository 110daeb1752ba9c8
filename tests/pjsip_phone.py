"""PJSIP (pjsua2) as a test peer: real phones on loopback for pbxd's end-to-end tests.

PJSIP is the SIP stack inside many softphones; when it registers, calls, holds and
transfers through pbxd, pbxd behaves for a phone stack we did not write.

How it runs inside a Twisted test process:

- PJSIP allows one ``pj.Endpoint`` per process (creating a second one while the
  first lives aborts the interpreter). :func:`pjsip_stack` creates it on first use
  and destroys it when the last user lets go; it can be created again afterwards,
  so test modules hold it with a module-scoped fixture and never overlap.
- PJSIP has no thread of its own here (``threadCnt=0``, ``mainThreadOnly``): a
  LoopingCall on the reactor calls ``libHandleEvents(0)`` every few milliseconds, so
  every PJSIP callback runs on the reactor thread, between pbxd's own events. The
  poll never blocks (timeout 0): pbxd runs on the same reactor.
- Callbacks are turned into state on :class:`Phone` / :class:`PhoneCall`, and tests
  wait for a state with :meth:`Phone.until` / :meth:`PhoneCall.until`, which return
  Deferreds with a timeout: a test that goes wrong fails, it never hangs.
- A Python exception must not escape a PJSIP callback (SWIG turns it into a C++
  exception that PJSIP does not catch): callbacks record it in ``stack.errors`` and
  the next wait fails with it.
- Audio is the null device, VAD off, so each call sends 50 RTP packets a second
  of silence and the stream statistics show whether media reached the other end.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import attrs
import pjsua2 as pj
from twisted.internet import defer, task
from twisted.internet.interfaces import IDelayedCall, IReactorTime

T = TypeVar("T")

# How long a test waits for PJSIP to report something before it fails.
DEFAULT_TIMEOUT = 15.0
# PJSIP's poll interval on the reactor: short, so that SIP round trips stay fast.
POLL_INTERVAL = 0.005

TRANSPORT_TYPES = {"udp": pj.PJSIP_TRANSPORT_UDP, "tcp": pj.PJSIP_TRANSPORT_TCP}

CALL_STATES = {
    pj.PJSIP_INV_STATE_NULL: "null",
    pj.PJSIP_INV_STATE_CALLING: "calling",
    pj.PJSIP_INV_STATE_INCOMING: "incoming",
    pj.PJSIP_INV_STATE_EARLY: "early",
    pj.PJSIP_INV_STATE_CONNECTING: "connecting",
    pj.PJSIP_INV_STATE_CONFIRMED: "confirmed",
    pj.PJSIP_INV_STATE_DISCONNECTED: "disconnected",
}

MEDIA_STATES = {
    pj.PJSUA_CALL_MEDIA_NONE: "none",
    pj.PJSUA_CALL_MEDIA_ACTIVE: "active",
    pj.PJSUA_CALL_MEDIA_LOCAL_HOLD: "local_hold",
    pj.PJSUA_CALL_MEDIA_REMOTE_HOLD: "remote_hold",
    pj.PJSUA_CALL_MEDIA_ERROR: "error",
}


class PjsipError(AssertionError):
    """PJSIP reported a failure, or a callback raised, or a wait timed out."""


@attrs.frozen
class RegState:
    """One registration report: the final status of a REGISTER and whether the
    account counts as registered after it."""

    code: int
    reason: str
    active: bool
    expires: int


@attrs.frozen
class StreamCounts:
    """RTP packets counted by PJSIP's audio stream of a call (from RTCP stats)."""

    received: int
    sent: int


class _Waiters:
    """Deferreds waiting for a condition over some PJSIP object's state.

    ``until(check)`` fires with ``check()``'s first truthy value: at once if it is
    truthy already, else after whichever callback makes it so. ``changed()`` is
    called after every callback.
    """

    def __init__(self, stack: PjsipStack, describe: Callable[[], str]) -> None:
        self._stack = stack
        self._describe = describe
        self._waiting: list[tuple[Callable[[], Any], defer.Deferred[Any]]] = []
        self._check_call: IDelayedCall | None = None

    def until(self, check: Callable[[], T | None], what: str,
              timeout: float = DEFAULT_TIMEOUT) -> defer.Deferred[T]:
        self._stack.raise_errors()
        value = check()
        if value:
            return defer.succeed(value)
        waiter: defer.Deferred[T] = defer.Deferred(lambda d: self._forget(d))
        self._waiting.append((check, waiter))

        def timed_out(failure: Any) -> Any:
            failure.trap(defer.TimeoutError)
            raise PjsipError(f"no {what} within {timeout}s: {self._describe()}")

        return waiter.addTimeout(timeout, self._stack.reactor).addErrback(timed_out)

    def _forget(self, waiter: defer.Deferred[Any]) -> None:
        self._waiting = [(c, w) for c, w in self._waiting if w is not waiter]

    def changed(self) -> None:
        """Check the waiters on the next reactor turn, outside the PJSIP callback that
        called this: the test code a waiter resumes may delete accounts and calls,
        which PJSIP does not allow from inside its own callbacks."""
        if self._check_call is None or not self._check_call.active():
            self._check_call = self._stack.reactor.callLater(0, self._check)

    def _check(self) -> None:
        self._check_call = None
        for check, waiter in list(self._waiting):
            try:
                value = check()
            except Exception as error:  # noqa: BLE001 (the waiting test gets it)
                self._forget(waiter)
                waiter.errback(error)
                continue
            if value:
                self._forget(waiter)
                waiter.callback(value)

    def fail_all(self, error: Exception) -> None:
        waiting, self._waiting = self._waiting, []
        for _, waiter in waiting:
            self._stack.reactor.callLater(0, _fail_unless_called, waiter, error)


def _fail_unless_called(waiter: defer.Deferred[Any], error: Exception) -> None:
    if not waiter.called:
        waiter.errback(error)


class PjsipStack:
    """The process's one PJSIP endpoint, polled from the reactor; see the module docstring.

    ``errors`` holds exceptions raised inside PJSIP callbacks; :meth:`raise_errors`
    turns the first into a test failure.
    """

    def __init__(self, reactor: IReactorTime) -> None:
        self.reactor = reactor
        self.errors: list[BaseException] = []
        self.phones: list[Phone] = []
        self._free_transports: dict[str, list[int]] = {name: [] for name in TRANSPORT_TYPES}
        self.endpoint = pj.Endpoint()
        self.endpoint.libCreate()
        config = pj.EpConfig()
        config.uaConfig.threadCnt = 0
        config.uaConfig.mainThreadOnly = True
        config.uaConfig.userAgent = "pbxd-tests PJSIP"
        # PJSIP_LOG_LEVEL=5 shows every SIP message PJSIP sends and receives.
        config.logConfig.level = int(os.environ.get("PJSIP_LOG_LEVEL", "0"))
        config.logConfig.consoleLevel = config.logConfig.level
        # Silence is sent as silence (not suppressed), so RTP flows all the time.
        config.medConfig.noVad = True
        config.medConfig.clockRate = 8000
        config.medConfig.sndClockRate = 8000
        self.endpoint.libInit(config)
        self.endpoint.libStart()
        self.endpoint.audDevManager().setNullDev()
        self._poll = task.LoopingCall(self._handle_events)
        self._poll.clock = reactor
        self._poll.start(POLL_INTERVAL)

    def _handle_events(self) -> None:
        try:
            self.endpoint.libHandleEvents(0)
        except Exception as error:  # noqa: BLE001 (a stopped poll would hang every wait)
            self.record_error(error)

    def record_error(self, error: BaseException) -> None:
        self.errors.append(error)
        for phone in self.phones:
            phone.fail_waiters(PjsipError(f"a PJSIP callback raised {error!r}"))

    def raise_errors(self) -> None:
        if self.errors:
            raise PjsipError(f"a PJSIP callback raised {self.errors[0]!r}") from self.errors[0]

    def lease_transport(self, transport: str) -> int:
        """A PJSIP transport on 127.0.0.1 that no live phone uses; its id.

        Transports are never closed before the endpoint is (closing one under a
        transaction that has not ended makes PJSIP assert at ``libDestroy``), and
        PJSIP has room for only a few: a phone that shuts down hands its transport
        back with :meth:`release_transport` for the next phone to use.
        """
        free = self._free_transports[transport]
        if free:
            return free.pop()
        config = pj.TransportConfig()
        config.port = 0
        config.boundAddress = "127.0.0.1"
        return self.endpoint.transportCreate(TRANSPORT_TYPES[transport], config)

    def release_transport(self, transport: str, transport_id: int) -> None:
        self._free_transports[transport].append(transport_id)

    def transport_address(self, transport_id: int) -> tuple[str, int]:
        host, _, port = self.endpoint.transportGetInfo(transport_id).localName.rpartition(":")
        return host, int(port)

    async def close_phones(self, timeout: float = DEFAULT_TIMEOUT) -> None:
        """Hang up every call, unregister and delete every account: the state a test starts from."""
        phones, self.phones = self.phones, []
        try:
            for phone in phones:
                phone.hang_up_all()
            for phone in phones:
                await phone.until(lambda phone=phone: not phone.live_calls(), "calls ended", timeout)
            # Unregistered first and waited for, so that deleting the account sends nothing
            # and no REGISTER is still on its way when the next test (or pbxd's stop) comes.
            for phone in phones:
                if phone.registered:
                    with contextlib.suppress(PjsipError):
                        await phone.unregister()
        finally:
            # Whatever went wrong above, the next test starts without these accounts.
            for phone in phones:
                phone.shutdown()

    def destroy(self) -> None:
        if self._poll.running:
            self._poll.stop()
        self.endpoint.hangupAllCalls()
        self.endpoint.libDestroy()
        # The C++ Endpoint is a singleton until its destructor runs: drop it now, so
        # that a later user (another module) can create the next one.
        del self.endpoint


_stack: PjsipStack | None = None
_users = 0


@contextlib.contextmanager
def pjsip_stack(reactor: IReactorTime | None = None) -> Iterator[PjsipStack]:
    """The PJSIP endpoint for the duration of the ``with`` block (shared by nested users;
    destroyed when the outermost block ends, so that it can be created again later)."""
    global _stack, _users
    if _stack is None:
        if reactor is None:
            from twisted.internet import reactor as global_reactor

            reactor = global_reactor
        _stack = PjsipStack(reactor)
    _users += 1
    try:
        yield _stack
    finally:
        _users -= 1
        if _users == 0:
            stack, _stack = _stack, None
            stack.destroy()


# Every pjsua2 Account and Call this module makes, for the life of the process, with
# their C++ halves disowned: pjsua2's destructors delete by id and PJSIP reuses ids,
# so an object collected later would delete some newer test's account or call, or
# call into PJSIP after libDestroy (an assertion that aborts the interpreter).
_KEPT: list[object] = []


def _keep_forever(pj_object: Any) -> None:
    pj_object.thisown = False
    _KEPT.append(pj_object)


def _guarded(method: Callable[..., None]) -> Callable[..., None]:
    """A PJSIP callback that records its exception instead of raising it into C++."""

    def callback(self: Any, *args: Any) -> None:
        try:
            method(self, *args)
        except BaseException as error:  # noqa: BLE001 (must not reach PJSIP)
            self._phone.stack.record_error(error)

    callback.__name__ = method.__name__
    return callback


class _Account(pj.Account):
    def __init__(self, phone: Phone) -> None:
        super().__init__()
        _keep_forever(self)
        self._phone = phone

    @_guarded
    def onRegState(self, prm: Any) -> None:  # noqa: N802 (pjsua2's names)
        info = self.getInfo()
        self._phone._registration(RegState(prm.code, prm.reason, info.regIsActive, prm.expiration))

    @_guarded
    def onIncomingCall(self, prm: Any) -> None:  # noqa: N802
        self._phone._incoming(prm.callId)


class _Call(pj.Call):
    def __init__(self, phone: Phone, account: _Account, call_id: int = pj.PJSUA_INVALID_ID) -> None:
        super().__init__(account, call_id)
        _keep_forever(self)
        self._phone = phone
        self.owner: PhoneCall | None = None

    @_guarded
    def onCallState(self, prm: Any) -> None:  # noqa: N802
        assert self.owner is not None
        self.owner._state(self.getInfo())

    @_guarded
    def onCallMediaState(self, prm: Any) -> None:  # noqa: N802
        assert self.owner is not None
        self.owner._media(self.getInfo())

    @_guarded
    def onCallRxReinvite(self, prm: Any) -> None:  # noqa: N802
        assert self.owner is not None
        self.owner._reinvite(prm.offer.wholeSdp)

    @_guarded
    def onCallTransferRequest(self, prm: Any) -> None:  # noqa: N802
        assert self.owner is not None
        # PJSIP accepts (202) and calls the target; the new call is ours to watch.
        new_call = _Call(self._phone, self._phone._account)
        prm.newCall = new_call
        self.owner._transfer_requested(prm.dstUri, self._phone._adopt(new_call, "outgoing"))

    @_guarded
    def onCallReplaceRequest(self, prm: Any) -> None:  # noqa: N802
        assert self.owner is not None
        # An INVITE with Replaces for this call (RFC 3891): PJSIP accepts it and the
        # new call takes this one's place; the new call is ours to watch.
        new_call = _Call(self._phone, self._phone._account)
        prm.newCall = new_call
        self._phone._adopt(new_call, "incoming").replaced = self.owner

    @_guarded
    def onCallTransferStatus(self, prm: Any) -> None:  # noqa: N802
        assert self.owner is not None
        self.owner._transfer_status(prm.statusCode, prm.finalNotify)


class Phone:
    """A PJSIP account (one extension) on its own transport: registers, calls, answers.

    ``auto_answer`` answers incoming calls with 200 at once (after a 180); without
    it incoming calls ring (180) until :meth:`PhoneCall.answer`. Incoming calls are
    in ``incoming`` in arrival order.
    """

    def __init__(self, stack: PjsipStack, user: str, password: str, *,
                 domain: str = "127.0.0.1", auto_answer: bool = False) -> None:
        self.stack = stack
        self.user = user
        self.password = password
        self.domain = domain
        self.auto_answer = auto_answer
        self.registrations: list[RegState] = []
        self.calls: list[PhoneCall] = []
        self.incoming: list[PhoneCall] = []
        self.transport = ""
        self.transport_id: int | None = None
        self.registrar: tuple[str, int] | None = None
        self._account: _Account | None = None
        self._waiters = _Waiters(stack, self.describe)
        stack.phones.append(self)

    def describe(self) -> str:
        return (f"phone {self.user}: registrations {self.registrations}, "
                f"calls {[c.describe() for c in self.calls]}")

    def until(self, check: Callable[[], T | None], what: str,
              timeout: float = DEFAULT_TIMEOUT) -> defer.Deferred[T]:
        return self._waiters.until(check, what, timeout)

    def fail_waiters(self, error: Exception) -> None:
        self._waiters.fail_all(error)
        for call in self.calls:
            call._waiters.fail_all(error)

    # -- registering --------------------------------------------------------------

    def register(self, host: str, port: int, transport: str = "udp", *,
                 password: str | None = None, expires: int = 300,
                 algorithm: str | None = None) -> defer.Deferred[RegState]:
        """Create the account and REGISTER to ``host:port`` over ``transport``.

        Fires with the final registration report when it is a 200; fails with
        :class:`PjsipError` for any other final answer. ``algorithm`` ("SHA-256")
        restricts the digest algorithms PJSIP will answer.
        """
        assert self._account is None, "register once per Phone"
        self.transport = transport
        self.registrar = (host, port)
        self.transport_id = self.stack.lease_transport(transport)
        config = pj.AccountConfig()
        config.idUri = f"sip:{self.user}@{self.domain}"
        config.regConfig.registrarUri = f"sip:{host}:{port};transport={transport}"
        config.regConfig.timeoutSec = expires
        config.regConfig.retryIntervalSec = 0  # a refused REGISTER stays refused
        config.sipConfig.transportId = self.transport_id
        credentials = pj.AuthCredInfo("digest", "*", self.user, 0, password or self.password)
        if algorithm is not None:
            credentials.algoType = {"MD5": pj.PJSIP_AUTH_ALGORITHM_MD5,
                                    "SHA-256": pj.PJSIP_AUTH_ALGORITHM_SHA256}[algorithm]
        config.sipConfig.authCreds.append(credentials)
        # Calls through pbxd, no STUN, no ICE: the SDP says 127.0.0.1.
        config.natConfig.iceEnabled = False
        config.natConfig.sipStunUse = pj.PJSUA_STUN_USE_DISABLED
        config.natConfig.mediaStunUse = pj.PJSUA_STUN_USE_DISABLED
        config.mediaConfig.transportConfig.boundAddress = "127.0.0.1"
        config.mediaConfig.transportConfig.port = 0
        # Session timers would add re-INVITEs/UPDATEs the tests do not expect.
        config.callConfig.timerUse = pj.PJSUA_SIP_TIMER_INACTIVE
        seen = len(self.registrations)
        self._account = _Account(self)
        self._account.create(config)
        return self._next_registration(seen, "REGISTER answer", want_active=True)

    def unregister(self) -> defer.Deferred[RegState]:
        """REGISTER with Expires: 0; fires once PJSIP reports the binding gone."""
        assert self._account is not None
        seen = len(self.registrations)
        self._account.setRegistration(False)
        return self._next_registration(seen, "unREGISTER answer", want_active=False)

    def _next_registration(self, seen: int, what: str, want_active: bool) -> defer.Deferred[RegState]:
        def first_new() -> RegState | None:
            return self.registrations[seen] if len(self.registrations) > seen else None

        def check(state: RegState) -> RegState:
            if state.code // 100 != 2 or state.active != want_active:
                raise PjsipError(f"{what}: {state} ({self.describe()})")
            return state

        return self.until(first_new, what).addCallback(check)

    def _registration(self, state: RegState) -> None:
        self.registrations.append(state)
        self._waiters.changed()

    @property
    def contact_host_port(self) -> tuple[str, int]:
        assert self.transport_id is not None
        return self.stack.transport_address(self.transport_id)

    # -- calls --------------------------------------------------------------------

    def call(self, uri: str) -> PhoneCall:
        """INVITE ``uri`` (through the account's transport); the call's events follow."""
        assert self._account is not None, "register before calling"
        pj_call = _Call(self, self._account)
        call = self._adopt(pj_call, "outgoing")
        pj_call.makeCall(uri, pj.CallOpParam(True))
        return call

    def dial(self, number: str) -> PhoneCall:
        """Call ``number`` at the registrar, as a phone dials a number on its PBX."""
        assert self.registrar is not None, "register before dialling"
        host, port = self.registrar
        return self.call(f"sip:{number}@{host}:{port};transport={self.transport}")

    def next_incoming(self, timeout: float = DEFAULT_TIMEOUT) -> defer.Deferred[PhoneCall]:
        """The first incoming call not taken yet (now or once it arrives)."""

        def untaken() -> PhoneCall | None:
            return next((c for c in self.incoming if not c.taken), None)

        def take(call: PhoneCall) -> PhoneCall:
            call.taken = True
            return call

        return self.until(untaken, "incoming call", timeout).addCallback(take)

    def _adopt(self, pj_call: _Call, direction: str) -> PhoneCall:
        call = PhoneCall(self, pj_call, direction)
        pj_call.owner = call
        self.calls.append(call)
        return call

    def _incoming(self, call_id: int) -> None:
        assert self._account is not None
        pj_call = _Call(self, self._account, call_id)
        call = self._adopt(pj_call, "incoming")
        call._state(pj_call.getInfo())
        self.incoming.append(call)
        ringing = pj.CallOpParam()
        ringing.statusCode = 180
        pj_call.answer(ringing)
        if self.auto_answer:
            call.answer()
        self._waiters.changed()

    def live_calls(self) -> list[PhoneCall]:
        return [c for c in self.calls if c.state != "disconnected"]

    def hang_up_all(self) -> None:
        for call in self.live_calls():
            call.hangup()

    @property
    def registered(self) -> bool:
        return bool(self.registrations) and self.registrations[-1].active

    def shutdown(self) -> None:
        """Delete the account (PJSIP unregisters it if it is still registered) and
        hand the transport back to the stack."""
        account, self._account = self._account, None
        if account is not None:
            account.shutdown()
        transport_id, self.transport_id = self.transport_id, None
        if transport_id is not None:
            self.stack.release_transport(self.transport, transport_id)


class PhoneCall:
    """One call of a :class:`Phone`, as PJSIP reports it.

    ``states`` lists (state, last status code) in order; ``state`` is the latest;
    ``media`` is the audio stream's state ("active", "local_hold", "remote_hold",
    "none"); ``reinvite_offers`` are the SDP bodies of re-INVITEs received.
    """

    def __init__(self, phone: Phone, pj_call: _Call, direction: str) -> None:
        self.phone = phone
        self.direction = direction
        self.states: list[tuple[str, int]] = []
        self.media = "none"
        self.media_history: list[str] = []
        self.reinvite_offers: list[str] = []
        self.remote_uri = ""
        self.sip_call_id = ""
        self.transfer_requests: list[tuple[str, PhoneCall]] = []
        self.transfer_statuses: list[tuple[int, bool]] = []
        self.taken = False
        # For a call that came with Replaces: the call it replaced.
        self.replaced: PhoneCall | None = None
        self._pj_call = pj_call
        self._audio_index: int | None = None
        self._waiters = _Waiters(phone.stack, self.describe)

    @property
    def state(self) -> str:
        return self.states[-1][0] if self.states else "null"

    @property
    def status(self) -> int:
        """The last SIP status code PJSIP saw for the call (the cause when disconnected)."""
        return self.states[-1][1] if self.states else 0

    def describe(self) -> str:
        return (f"{self.direction} call {self.remote_uri or '?'} states {self.states} "
                f"media {self.media_history} transfers {self.transfer_statuses}")

    def until(self, check: Callable[[], T | None], what: str,
              timeout: float = DEFAULT_TIMEOUT) -> defer.Deferred[T]:
        return self._waiters.until(check, what, timeout)

    def reached(self, state: str, timeout: float = DEFAULT_TIMEOUT) -> defer.Deferred[PhoneCall]:
        """Fires once the call has been in ``state``; fails if it ends without getting there."""
        assert state in CALL_STATES.values()

        def check() -> PhoneCall | None:
            if any(s == state for s, _ in self.states):
                return self
            if self.state == "disconnected":
                raise PjsipError(f"call ended before {state}: {self.describe()}")
            return None

        return self.until(check, f"call state {state}", timeout)

    def media_is(self, media: str, timeout: float = DEFAULT_TIMEOUT) -> defer.Deferred[PhoneCall]:
        """Fires once the audio stream's state is ``media`` (now or later)."""
        assert media in MEDIA_STATES.values()
        return self.until(lambda: self if self.media == media else None, f"media {media}", timeout)

    # -- actions ------------------------------------------------------------------

    def answer(self, status: int = 200) -> None:
        prm = pj.CallOpParam()
        prm.statusCode = status
        self._pj_call.answer(prm)

    def hangup(self) -> None:
        """BYE (or CANCEL, or a 603 for a ringing incoming call); a no-op once ended."""
        if self.state == "disconnected":
            return
        with contextlib.suppress(pj.Error):  # it ended between the check and now
            self._pj_call.hangup(pj.CallOpParam())

    def hold(self) -> None:
        """re-INVITE with the stream put on hold (a=sendonly, RFC 3264 §8.4)."""
        self._pj_call.setHold(pj.CallOpParam(True))

    def unhold(self) -> None:
        """re-INVITE with the stream sendrecv again."""
        prm = pj.CallOpParam(True)
        prm.opt.flag = pj.PJSUA_CALL_UNHOLD
        self._pj_call.reinvite(prm)

    def transfer(self, uri: str) -> None:
        """Blind transfer: REFER the other party to ``uri`` (RFC 3515)."""
        self._pj_call.xfer(uri, pj.CallOpParam(True))

    def transfer_to_call(self, other: PhoneCall) -> None:
        """Attended transfer: REFER the other party of this call to the other party of
        ``other``, with Replaces naming ``other``'s dialog (RFC 3891, RFC 5589)."""
        self._pj_call.xferReplaces(other._pj_call, pj.CallOpParam(True))

    def stream_counts(self) -> StreamCounts:
        """RTP packets of the audio stream so far (the call must have active media)."""
        assert self._audio_index is not None, "no audio stream"
        stat = self._pj_call.getStreamStat(self._audio_index)
        return StreamCounts(stat.rtcp.rxStat.pkt, stat.rtcp.txStat.pkt)

    def receives_rtp(self, packets: int = 10, timeout: float = DEFAULT_TIMEOUT) -> defer.Deferred[StreamCounts]:
        """Fires once ``packets`` more RTP packets have arrived on the audio stream.

        Polled every 20 ms (one packet time): PJSIP has no callback per packet.
        """
        start = self.stream_counts().received
        done: defer.Deferred[StreamCounts] = defer.Deferred()

        def poll() -> None:
            counts = self.stream_counts()
            if counts.received - start >= packets and not done.called:
                loop.stop()
                done.callback(counts)

        def stop(result: Any) -> Any:
            if loop.running:
                loop.stop()
            return result

        def timed_out(failure: Any) -> Any:
            failure.trap(defer.TimeoutError)
            raise PjsipError(f"fewer than {packets} RTP packets in {timeout}s: {self.describe()}")

        loop = task.LoopingCall(poll)
        loop.clock = self.phone.stack.reactor
        loop.start(0.02, now=False)
        return done.addTimeout(timeout, self.phone.stack.reactor).addBoth(stop).addErrback(timed_out)

    # -- PJSIP's reports ----------------------------------------------------------

    def _state(self, info: Any) -> None:
        self.remote_uri = info.remoteUri
        self.sip_call_id = info.callIdString
        entry = (CALL_STATES.get(info.state, str(info.state)), info.lastStatusCode)
        if not self.states or self.states[-1] != entry:
            self.states.append(entry)
        self._waiters.changed()
        self.phone._waiters.changed()

    def _media(self, info: Any) -> None:
        for media in info.media:
            if media.type != pj.PJMEDIA_TYPE_AUDIO:
                continue
            self._audio_index = media.index
            self.media = MEDIA_STATES.get(media.status, str(media.status))
            self.media_history.append(self.media)
            if media.status in (pj.PJSUA_CALL_MEDIA_ACTIVE, pj.PJSUA_CALL_MEDIA_REMOTE_HOLD):
                # Connect the stream to the (null) sound device, as a phone connects
                # it to its speaker and microphone: the bridge then clocks it and
                # silence goes out as RTP every 20 ms.
                audio = self._pj_call.getAudioMedia(media.index)
                devices = pj.Endpoint.instance().audDevManager()
                devices.getCaptureDevMedia().startTransmit(audio)
                audio.startTransmit(devices.getPlaybackDevMedia())
            break
        self._waiters.changed()

    def _reinvite(self, sdp: str) -> None:
        self.reinvite_offers.append(sdp)
        self._waiters.changed()

    def _transfer_requested(self, target: str, new_call: PhoneCall) -> None:
        self.transfer_requests.append((target, new_call))
        self._waiters.changed()

    def _transfer_status(self, status: int, final: bool) -> None:
        self.transfer_statuses.append((status, final))
        if final and 200 <= status < 300:
            # The transfer target answered: the transferor's part is over, and
            # a phone hangs up here (the blind transfer flows of RFC 5589), on the next reactor turn,
            # outside this callback.
            self.phone.stack.reactor.callLater(0, self.hangup)
        self._waiters.changed()
