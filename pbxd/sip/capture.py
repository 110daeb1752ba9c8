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
capture is used, with no timers of its own.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from typing import Any

import attrs
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from pbxd.sip.errors import SipParseError
from pbxd.sip.message import Request, SipMessage
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
                self._forget(*self._calls.popitem(last=False))
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


def _starts_a_call(message: SipMessage) -> bool:
    """An INVITE outside any dialog (§12.1: the initial INVITE has no To tag)."""
    if not isinstance(message, Request) or message.method != "INVITE":
        return False
    try:
        return message.to_addr.tag is None
    except SipParseError:
        return False


__all__ = ["IN", "OUT", "CapturedMessage", "SipCapture"]
