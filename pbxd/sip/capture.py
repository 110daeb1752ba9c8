"""A bounded capture of pbxd's SIP traffic per call, for the console's SIP ladder.

:class:`SipCapture` is the ``capture`` hook of
:class:`pbxd.transport.layer.SipTransports`: it is called with every message
received and sent. It keeps the messages of calls only: a Call-ID starts
being captured when an INVITE outside a dialog (no To tag) goes in or out,
and from then on every message with that Call-ID is kept (provisional and
final responses, ACK, BYE, re-INVITEs, REFER, NOTIFY). REGISTER, OPTIONS and
the like never fill the buffer.

Everything is bounded: at most ``max_messages`` and ``max_bytes`` per Call-ID
(later messages are counted as ``dropped``), at most ``max_calls`` Call-IDs
(the least recently active is evicted first). :meth:`call_ended` keeps a
call's capture for ``grace`` more seconds, so the console can still show the
ladder of a call that just ended; the outbound legs of a B2BUA call have
their own Call-IDs and are tied to the call with :meth:`link`.

Sans-IO: time comes from the injected clock, expiry runs lazily when the
capture is used, with no timers of its own. :meth:`SipCapture.call_ended`
tells its ``ended_listeners``.

:class:`LadderArchive` keeps ended calls' ladders beyond that, in the store
(the ``sip_flows`` table), so that the console shows yesterday's call and a
restart loses nothing: a call's ladder is written ``settle`` seconds after it
ended, once the transactions that close it are over (sooner if the capture
needs its room), bounded like one Call-ID of the capture; stored ladders older
than ``retention`` are pruned.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from typing import Any, Callable

import attrs
from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from pbxd.sip.errors import SipParseError
from pbxd.sip.message import Request, SipMessage
from pbxd.store.models import SipFlow
from pbxd.transport.target import Target

log = Logger()

IN = "in"
OUT = "out"
_MAX_LOCAL_TEXTS = 256
_MAX_PEER_TEXTS = 4096


@attrs.frozen
class CapturedMessage:
    """One message as it crossed pbxd's sockets."""

    time: float
    direction: str  # "in" (received) or "out" (sent)
    peer: str  # "udp:192.0.2.1:5060": where it came from or went to
    local: str  # pbxd's socket when known ("udp:127.0.0.1:5060"), else "pbxd"
    call_id: str
    text: str

    @property
    def first_line(self) -> str:
        # Derived, not stored: a held call keeps a dozen messages, each string counts.
        end = self.text.find("\r\n")
        return self.text if end < 0 else self.text[:end]

    def to_json(self) -> dict[str, Any]:
        """One step of the ladder: time, direction, from/to address, first line, text."""
        incoming = self.direction == IN
        return {
            "time": self.time,
            "direction": self.direction,
            "from": self.peer if incoming else self.local,
            "to": self.local if incoming else self.peer,
            "call_id": self.call_id,
            "first_line": self.first_line,
            "text": self.text,
        }


@attrs.define
class _CallCapture:
    call_id: str  # one string for all the call's messages
    messages: list[CapturedMessage] = attrs.Factory(list)
    size: int = 0
    dropped: int = 0
    ended_at: float | None = None
    root: str | None = None  # the call's Call-ID when this is one of its legs


class SipCapture:
    """Per-Call-ID ring of SIP messages (see the module docstring)."""

    def __init__(
        self,
        clock: IReactorTime,
        *,
        max_calls: int = 1000,
        max_messages: int = 100,
        max_bytes: int = 64 * 1024,  # a call's SIP is typically 10-30 KB: at most 64 MB in all
        grace: float = 600.0,
    ) -> None:
        if min(max_calls, max_messages, max_bytes) < 1 or grace < 0:
            raise ValueError("capture limits must be positive")
        self.clock = clock
        self.max_calls = max_calls
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self.grace = grace
        self._calls: OrderedDict[str, _CallCapture] = OrderedDict()
        # (evict_at, call_id) in end order: grace is one constant, so the
        # deque is sorted by evict_at.
        self._ending: deque[tuple[float, str]] = deque()
        # A call's Call-ID -> its legs' Call-IDs (see link): finding a call's legs must not
        # walk every captured call, which made each call's end cost O(max_calls).
        self._legs: dict[str, list[str]] = {}
        self._local_texts: dict[tuple[str, Any], str] = {}
        self._peer_texts: dict[tuple[str, str, int], str] = {}
        self.evicted = 0
        # Told the Call-ID of each call that ends (LadderArchive.call_ended), and of
        # each capture about to be evicted for room (LadderArchive.evicting).
        self.ended_listeners: list[Callable[[str], None]] = []
        self.evicting_listeners: list[Callable[[str], None]] = []

    def __len__(self) -> int:
        return len(self._calls)

    # -- the transport hook ----------------------------------------------------------

    def __call__(self, direction: str, message: SipMessage, peer: Any, data: bytes) -> None:
        try:
            self._record(direction, message, peer, data)
        except Exception:
            # Capturing must never cost a message its delivery.
            log.failure("SIP capture failed on a message to or from {peer}", peer=peer)

    def _record(self, direction: str, message: SipMessage, peer: Any, data: bytes) -> None:
        try:
            call_id = message.call_id
        except SipParseError:
            return
        now = self.clock.seconds()
        self._expire(now)
        call = self._calls.get(call_id)
        if call is None:
            if not _starts_a_call(message):
                return
            call = self._calls[call_id] = _CallCapture(call_id)
            while len(self._calls) > self.max_calls:
                oldest = next(iter(self._calls))
                self._tell(self.evicting_listeners, oldest)  # while its messages are still here
                self._forget(oldest, self._calls.pop(oldest))
                self.evicted += 1
        else:
            self._calls.move_to_end(call_id)
        if len(call.messages) >= self.max_messages or call.size + len(data) > self.max_bytes:
            call.dropped += 1
            return
        text = data.decode("utf-8", errors="replace")
        call.messages.append(CapturedMessage(now, direction, self._peer_text(peer), self._local_text(peer),
                                             call.call_id, text))
        call.size += len(data)

    def _peer_text(self, peer: Any) -> str:
        """The peer as text: one string per peer address, shared by its messages."""
        if not isinstance(peer, Target):
            return str(peer)
        key = (peer.transport, peer.host, peer.port)
        text = self._peer_texts.get(key)
        if text is None:
            if len(self._peer_texts) >= _MAX_PEER_TEXTS:
                self._peer_texts.clear()
            text = self._peer_texts[key] = str(peer)
        return text

    def _local_text(self, peer: Any) -> str:
        """pbxd's socket as text: one string per socket, shared by its messages."""
        local = getattr(peer, "local", None)
        transport = getattr(peer, "transport", "")
        if not (local and transport):
            return "pbxd"
        key = (transport, local)
        text = self._local_texts.get(key)
        if text is None:
            if len(self._local_texts) >= _MAX_LOCAL_TEXTS:
                self._local_texts.clear()  # outgoing TCP/TLS connections each have a port
            text = self._local_texts[key] = str(Target(transport, *local))
        return text

    # -- the call layer ------------------------------------------------------------

    def link(self, leg_call_id: str, call_id: str) -> None:
        """Show the messages of ``leg_call_id`` (an outbound leg) in ``call_id``'s ladder."""
        if leg_call_id == call_id:
            return
        leg = self._calls.get(leg_call_id)
        if leg is None:
            leg = self._calls[leg_call_id] = _CallCapture(leg_call_id)
        if leg.root is not None:
            self._unlink(leg_call_id, leg.root)
        leg.root = call_id
        self._legs.setdefault(call_id, []).append(leg_call_id)

    def call_ended(self, call_id: str) -> None:
        """Keep the call's capture (legs included) for ``grace`` seconds more."""
        now = self.clock.seconds()
        for leg_id in self._members(call_id):
            call = self._calls[leg_id]
            if call.ended_at is None:
                call.ended_at = now
                self._ending.append((now + self.grace, leg_id))
        self._expire(now)
        self._tell(self.ended_listeners, call_id)

    @staticmethod
    def _tell(listeners: list[Callable[[str], None]], call_id: str) -> None:
        for listener in listeners:
            try:
                listener(call_id)
            except Exception:
                log.failure("SIP capture: a listener failed on call {call_id}", call_id=call_id)

    def root_of(self, call_id: str) -> str:
        """The call a captured Call-ID belongs to (see :meth:`link`): itself unless it is a leg."""
        call = self._calls.get(call_id)
        return call_id if call is None or call.root is None else call.root

    # -- reading -------------------------------------------------------------------

    def ladder(self, call_id: str) -> list[CapturedMessage] | None:
        """The call's messages and its legs', in time order; None when nothing is held."""
        self._expire(self.clock.seconds())
        members = self._members(call_id)
        if not members:
            return None
        messages = [m for leg_id in members for m in self._calls[leg_id].messages]
        messages.sort(key=lambda m: m.time)  # stable: same-time messages keep their order
        return messages

    def dropped(self, call_id: str) -> int:
        """Messages of the call not kept because its limits were reached."""
        return sum(self._calls[leg_id].dropped for leg_id in self._members(call_id))

    def _members(self, call_id: str) -> list[str]:
        members = [call_id] if call_id in self._calls else []
        return members + self._legs.get(call_id, [])

    def _expire(self, now: float) -> None:
        ending = self._ending
        while ending and ending[0][0] <= now:
            _, call_id = ending.popleft()
            call = self._calls.pop(call_id, None)
            if call is not None:
                self._forget(call_id, call)
                self.evicted += 1

    def _forget(self, call_id: str, call: _CallCapture) -> None:
        """``call_id``'s capture is gone: keep the leg index to what is still held."""
        if call.root is not None:
            self._unlink(call_id, call.root)

    def _unlink(self, leg_call_id: str, root: str) -> None:
        legs = self._legs.get(root)
        if legs is not None and leg_call_id in legs:
            legs.remove(leg_call_id)
            if not legs:
                del self._legs[root]


class LadderArchive:
    """Writes ended calls' ladders from ``capture`` to the store (see the module docstring).

    ``settle``: seconds from a call's end to its write (pbxd uses Timer F,
    64*T1: the BYE transactions are over by then, so the stored ladder is the
    whole call). ``retention``: seconds a stored ladder is kept, 0 for as long
    as the file (and the CDRs, which pbxd never deletes). :meth:`flush` writes
    every pending ladder at once: a clean stop calls it (:meth:`close`) before the store closes.
    """

    PRUNE_INTERVAL = 3600.0

    def __init__(self, capture: SipCapture, clock: IReactorTime, *, settle: float, retention: float) -> None:
        if settle < 0 or retention < 0:
            raise ValueError("settle and retention must be >= 0")
        self.capture = capture
        self.clock = clock
        # Never past the capture's grace: the ladder would be gone from memory by then.
        self.settle = min(settle, capture.grace)
        self.retention = retention
        self.store: Any = None  # the open Store (start); ladders ending before are not kept
        self.written = 0  # ladders committed to the store
        # Call-ID -> when the call ended, in end order: settle is one constant,
        # so the first is always the next due.
        self._ended: OrderedDict[str, float] = OrderedDict()
        self._write_call: IDelayedCall | None = None
        self._prune_call: IDelayedCall | None = None
        capture.ended_listeners.append(self.call_ended)
        capture.evicting_listeners.append(self.evicting)

    def start(self, store: Any) -> None:
        """Write to ``store`` from now on, and prune it now and every hour."""
        self.store = store
        if self.retention:
            self.prune()

    def close(self) -> defer.Deferred[None]:
        """Write every pending ladder (:meth:`flush`) and stop: the store is about to close."""
        done = self.flush()
        if self._prune_call is not None and self._prune_call.active():
            self._prune_call.cancel()
        self._prune_call = None
        self.store = None
        return done

    def call_ended(self, call_id: str) -> None:
        if self.store is None or call_id in self._ended:
            return
        self._ended[call_id] = self.clock.seconds()
        if self._write_call is None:
            self._write_call = self.clock.callLater(self.settle, self._write_due)

    def evicting(self, call_id: str) -> None:
        """The capture needs the room of ``call_id`` (busy: over ``max_calls`` captures
        within ``settle``): an ended call it belongs to is written now, whole."""
        root = self.capture.root_of(call_id)
        ended_at = self._ended.pop(root, None)
        if ended_at is not None:
            self._write([(root, ended_at)])

    def _write_due(self) -> None:
        self._write_call = None
        settled = self.clock.seconds() - self.settle
        due = []
        while self._ended:
            call_id, ended_at = next(iter(self._ended.items()))
            if ended_at > settled:
                self._write_call = self.clock.callLater(ended_at - settled, self._write_due)
                break
            del self._ended[call_id]
            due.append((call_id, ended_at))
        self._write(due)

    def flush(self) -> defer.Deferred[None]:
        """Write every pending ladder now; fires once committed."""
        due, self._ended = list(self._ended.items()), OrderedDict()
        if self._write_call is not None and self._write_call.active():
            self._write_call.cancel()
        self._write_call = None
        return self._write(due)

    def _write(self, due: list[tuple[str, float]]) -> defer.Deferred[None]:
        flows = [flow for flow in (self.flow(call_id, ended_at) for call_id, ended_at in due) if flow is not None]
        if not flows or self.store is None:
            return defer.succeed(None)

        def written(_: None) -> None:
            self.written += len(flows)

        def failed(failure: Any) -> None:
            log.failure("SIP ladders of {count} calls were not stored", failure, count=len(flows))

        return self.store.add_sip_flows(flows).addCallbacks(written, failed)

    def flow(self, call_id: str, ended_at: float) -> SipFlow | None:
        """The call's ladder as stored: at most the capture's ``max_messages`` and
        ``max_bytes`` of text, the rest counted as dropped; None when nothing is held."""
        ladder = self.capture.ladder(call_id)
        if not ladder:
            return None
        kept, size = [], 0
        for message in ladder:
            size += len(message.text)
            if len(kept) >= self.capture.max_messages or size > self.capture.max_bytes:
                break
            kept.append(message.to_json())
        dropped = self.capture.dropped(call_id) + len(ladder) - len(kept)
        return SipFlow(call_id=call_id, ended_at=ended_at, messages=tuple(kept), dropped=dropped)

    def prune(self) -> defer.Deferred[int]:
        """Forget the stored ladders older than ``retention``; runs again in an hour."""
        self._prune_call = self.clock.callLater(self.PRUNE_INTERVAL, self.prune)
        if self.store is None or not self.retention:
            return defer.succeed(0)

        def pruned(count: int) -> int:
            if count:
                log.info("SIP ladders: {count} older than {days:g} days forgotten", count=count,
                         days=self.retention / 86400)
            return count

        def failed(failure: Any) -> int:
            log.failure("SIP ladders could not be pruned", failure)
            return 0

        return self.store.prune_sip_flows(self.clock.seconds() - self.retention).addCallbacks(pruned, failed)


def _starts_a_call(message: SipMessage) -> bool:
    """An INVITE outside any dialog (§12.1: the initial INVITE has no To tag)."""
    if not isinstance(message, Request) or message.method != "INVITE":
        return False
    try:
        return message.to_addr.tag is None
    except SipParseError:
        return False


__all__ = ["IN", "OUT", "CapturedMessage", "LadderArchive", "SipCapture"]
