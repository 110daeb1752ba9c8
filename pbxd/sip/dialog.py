"""SIP dialogs (RFC 3261 §12): the state two user agents share for a call.

A dialog is named by Call-ID, local tag and remote tag and carries what every
request inside it is built from: the sequence numbers, the remote target and
the route set. pbxd is a B2BUA, so each leg of a call is a dialog of its own.

Sans-IO: a dialog is told about the messages of its leg (``receive_request``,
``receive_response``, ``response_sent``) and builds the requests it sends
(``create_request``, ``create_ack``); moving them is the transaction layer's
job. The caller chooses the Via, because the sent-by depends on the transport
that reaches ``next_target()``.

Target refreshes (re-INVITE, UPDATE) replace the remote target when they
succeed, in both directions: on a 2xx received (§12.2.1.2) and on a 2xx sent.
RFC 3261 §12.2.2 has the UAS switch on receipt; RFC 6141 made target
refreshes atomic, so a refused re-INVITE leaves the dialog as it was.
"""

from __future__ import annotations

import enum
import secrets
from typing import Callable, Iterable, Iterator

import attrs

from pbxd.sip.errors import SipParseError
from pbxd.sip.headers import Address, Via
from pbxd.sip.message import Request, Response, SipMessage
from pbxd.sip.uri import URI, SipURI


class DialogState(enum.Enum):
    EARLY = "early"
    CONFIRMED = "confirmed"
    TERMINATED = "terminated"


class Role(enum.Enum):
    """Which side of the request that created the dialog we were on."""

    UAC = "uac"
    UAS = "uas"


# (Call-ID, local tag, remote tag). The remote tag is None only for an RFC 2543
# peer that sent no tag (§12.1.1, §12.1.2).
DialogId = tuple[str, str, str | None]

# Requests that replace the remote target: re-INVITE (§12.2) and UPDATE (RFC 3311 §5).
TARGET_REFRESH_METHODS = frozenset({"INVITE", "UPDATE"})

# Requests that must carry the sender's Contact: INVITE (§8.1.1.8), UPDATE
# (RFC 3311 §5.1), REFER (RFC 3515 §2.4.1 via its dialog), SUBSCRIBE and
# NOTIFY (RFC 6665 §4.1.2.1, §4.2.2).
_CONTACT_METHODS = frozenset({"INVITE", "UPDATE", "REFER", "SUBSCRIBE", "NOTIFY"})

# §8.1.1.5: the first CSeq is below 2**31. Starting low leaves room for a
# lifetime of requests before the number could overflow.
_FIRST_CSEQ_LIMIT = 2**16


def _untagged(address: Address) -> Address:
    return address.without_param("tag") if address.has_param("tag") else address


def _sip_uri(uri: URI, what: str, status: int | None) -> SipURI:
    if not isinstance(uri, SipURI):
        raise SipParseError(f"{what} {uri} is not a SIP or SIPS URI", status=status)
    return uri


def _remote_target(message: SipMessage, status: int | None, fallback: SipURI | None = None) -> SipURI:
    """The Contact URI of a message, which becomes the remote target (§12.1.1, §12.1.2)."""
    contacts = message.contacts
    if contacts:
        return _sip_uri(contacts[0].uri, "Contact", status)
    if fallback is None:
        raise SipParseError(f"{_describe(message)} without a Contact", status=status)
    return fallback


def _describe(message: SipMessage) -> str:
    return message.method if isinstance(message, Request) else f"{message.status} response"


def _route_set(message: SipMessage, status: int | None) -> list[Address]:
    routes = [Address.parse(value) for value in message.get_all("record-route")]
    for route in routes:
        _sip_uri(route.uri, "Record-Route", status)
    return routes


@attrs.define(eq=False)
class Dialog:
    """One dialog (§12), from our side: local is pbxd, remote is the peer.

    ``local_uri`` and ``remote_uri`` are the From/To addresses without tags;
    ``route_set`` holds the Route values in the order requests carry them;
    ``local_contact`` is the Contact pbxd puts in requests that need one.
    Dialogs compare by identity: they are state, not values.
    """

    call_id: str
    local_tag: str
    remote_tag: str | None
    local_uri: Address
    remote_uri: Address
    remote_target: SipURI
    role: Role
    route_set: tuple[Address, ...] = ()
    local_seq: int | None = None
    remote_seq: int | None = None
    local_contact: Address | None = None
    secure: bool = False
    state: DialogState = DialogState.EARLY
    # The CSeq of the latest of our requests whose 2xx set the remote target,
    # so that a late 2xx retransmission cannot undo a newer refresh.
    _refresh_seq: int = attrs.field(default=0, init=False, repr=False)
    # Set by the DialogTable that holds the dialog, to forget it when it ends.
    _on_terminated: Callable[[Dialog], None] | None = attrs.field(default=None, init=False, repr=False)

    # -- creation -------------------------------------------------------------

    @classmethod
    def from_uac(cls, request: Request, response: Response, *, tls: bool = False) -> Dialog:
        """The dialog a response to our request creates (§12.1.2).

        A 101-199 with a To tag makes an early dialog, a 2xx a confirmed one
        (a 2xx without a To tag too, from an RFC 2543 peer). The route set is
        the response's Record-Route reversed; the remote target its Contact.
        ``tls``
        says the request went over TLS, which with a SIPS Request-URI makes
        the dialog secure. A response without a Contact (which only a 2xx
        must have) leaves the Request-URI as the target. Raises
        ``SipParseError`` (status None: it is a response) when a Contact or
        Record-Route is not a SIP URI.
        """
        status = response.status
        if not 101 <= status < 300 or (status < 200 and response.to_addr.tag is None):
            raise ValueError(f"a {status} response without a dialog-creating To tag makes no dialog")
        local_tag = request.from_addr.tag
        if local_tag is None:
            raise ValueError("our request has no From tag")
        ruri = request.ruri
        fallback = ruri if isinstance(ruri, SipURI) else None
        dialog = cls(
            call_id=request.call_id,
            local_tag=local_tag,
            remote_tag=response.to_addr.tag,
            local_uri=_untagged(request.from_addr),
            remote_uri=_untagged(response.to_addr),
            remote_target=_remote_target(response, None, fallback),
            role=Role.UAC,
            route_set=tuple(reversed(_route_set(response, None))),
            local_seq=request.cseq.seq,
            local_contact=request.contacts[0] if request.contacts else None,
            secure=tls and ruri.scheme == "sips",
            state=DialogState.CONFIRMED if status >= 200 else DialogState.EARLY,
        )
        dialog._refresh_seq = request.cseq.seq
        return dialog

    @classmethod
    def from_uas(
        cls, request: Request, local_tag: str, *, local_contact: Address | None = None, tls: bool = False
    ) -> Dialog:
        """The dialog our response to ``request`` creates (§12.1.1), early until ``response_sent``.

        ``local_tag`` is the To tag of that response and ``local_contact`` its
        Contact. The route set is the request's Record-Route in order, the
        remote target its Contact. Raises ``SipParseError`` (400) for a request
        without a Contact, or with a Contact or Record-Route that is not a SIP URI.
        """
        return cls(
            call_id=request.call_id,
            local_tag=local_tag,
            remote_tag=request.from_addr.tag,
            local_uri=_untagged(request.to_addr),
            remote_uri=_untagged(request.from_addr),
            remote_target=_remote_target(request, 400),
            role=Role.UAS,
            route_set=tuple(_route_set(request, 400)),
            remote_seq=request.cseq.seq,
            local_contact=local_contact,
            secure=tls and request.ruri.scheme == "sips",
        )

    @property
    def id(self) -> DialogId:
        return (self.call_id, self.local_tag, self.remote_tag)

    @property
    def loose_routing(self) -> bool:
        """False when the first element of the route set is a strict router (no ``lr``, §12.2.1.1)."""
        return not self.route_set or self.route_set[0].uri.has_param("lr")  # type: ignore[union-attr]

    # -- requests we send ---------------------------------------------------

    def create_request(
        self,
        method: str,
        via: Via,
        *,
        body: bytes = b"",
        content_type: str | None = None,
        extra_headers: Iterable[tuple[str, str]] = (),
    ) -> Request:
        """A request inside the dialog (§12.2.1.1) with ``via`` as its only Via.

        The local CSeq goes up by one (from a random start when pbxd never
        sent one, §8.1.1.5). ACK for a 2xx is ``create_ack``; CANCEL belongs to
        its INVITE's transaction (``transaction.make_cancel``). A BYE ends the
        dialog as it is built: §15.1.1 counts the session over once the BYE is
        handed to its transaction, and a request crossing it gets 481.
        """
        if method in ("ACK", "CANCEL"):
            raise ValueError(f"{method} is not built by create_request (see create_ack, make_cancel)")
        if self.state is DialogState.TERMINATED:
            raise ValueError(f"dialog {self.id} is terminated")
        self.local_seq = self.local_seq + 1 if self.local_seq is not None else 1 + secrets.randbelow(_FIRST_CSEQ_LIMIT)
        request = self._request(method, via, self.local_seq, body, content_type, extra_headers)
        if method == "BYE":
            self.terminate()
        return request

    def create_ack(
        self,
        response: Response,
        via: Via,
        *,
        body: bytes = b"",
        content_type: str | None = None,
        extra_headers: Iterable[tuple[str, str]] = (),
    ) -> Request:
        """The ACK for a 2xx to an INVITE of this dialog (§13.2.2.4).

        Built like any request of the dialog, with the CSeq number of the
        INVITE; ``via`` must carry a new branch, since the ACK of a 2xx is a
        transaction of its own. Credentials the INVITE carried go in
        ``extra_headers``. Call ``receive_response`` first so that the 2xx's
        Contact and Record-Route are in effect.
        """
        cseq = response.cseq
        if cseq.method != "INVITE" or not 200 <= response.status < 300:
            raise ValueError(f"ACK is built here only for a 2xx to INVITE, not {response.status} {cseq.method}")
        return self._request("ACK", via, cseq.seq, body, content_type, extra_headers)

    def _request(
        self,
        method: str,
        via: Via,
        seq: int,
        body: bytes,
        content_type: str | None,
        extra_headers: Iterable[tuple[str, str]],
    ) -> Request:
        if body and content_type is None:
            raise ValueError("a body needs a content_type")
        uri, routes = self._request_uri_and_routes()
        to = self.remote_uri if self.remote_tag is None else self.remote_uri.with_param("tag", self.remote_tag)
        headers = [("Via", str(via))]
        headers += [("Route", route) for route in routes]
        headers += [
            ("Max-Forwards", "70"),
            ("From", str(self.local_uri.with_param("tag", self.local_tag))),
            ("To", str(to)),
            ("Call-ID", self.call_id),
            ("CSeq", f"{seq} {method}"),
        ]
        if self.local_contact is not None and method in _CONTACT_METHODS:
            headers.append(("Contact", str(self.local_contact)))
        headers += extra_headers
        if content_type is not None:
            headers.append(("Content-Type", content_type))
        return Request(method, uri, headers, body)

    def _request_uri_and_routes(self) -> tuple[SipURI, list[str]]:
        """§12.2.1.1: Request-URI and Route values for the route set and remote target."""
        if self.loose_routing:
            return self.remote_target, [str(route) for route in self.route_set]
        # A strict router expects to be the Request-URI, stripped of what a
        # Request-URI may not carry (§19.1.1 Table 1: method, headers); the
        # remote target travels as the last Route.
        first: SipURI = self.route_set[0].uri  # type: ignore[assignment]
        uri = attrs.evolve(first.without_params("method"), headers=())
        routes = [str(route) for route in self.route_set[1:]] + [str(Address(self.remote_target))]
        return uri, routes

    def next_target(self, request: Request | None = None) -> SipURI:
        """Where a request of this dialog goes first (§8.1.2 with §12.2.1.1).

        For a request: its first Route under loose routing, else its
        Request-URI (which a strict router occupies). Without a request: the
        same for the request ``create_request`` would build, so that the
        transport, and the Via with it, can be chosen first.
        """
        if request is None:
            uri, _ = self._request_uri_and_routes()
            return self.route_set[0].uri if self.route_set and self.loose_routing else uri  # type: ignore[return-value]
        routes = request.get_all("route") if self.loose_routing else []
        uri = Address.parse(routes[0]).uri if routes else request.ruri
        return _sip_uri(uri, "next hop", 400)

    # -- what the peer sends ------------------------------------------------

    def check_remote_seq(self, request: Request) -> int | None:
        """§12.2.2: 500 for a request older than the last one, else None (and remember its CSeq).

        ACK and CANCEL reuse their INVITE's number and are not checked.
        """
        if request.method in ("ACK", "CANCEL"):
            return None
        seq = request.cseq.seq
        if self.remote_seq is not None and seq < self.remote_seq:
            return 500
        self.remote_seq = seq
        return None

    def receive_request(self, request: Request) -> int | None:
        """A request from the peer inside this dialog: the status to refuse it with, or None.

        Checks the CSeq order (``check_remote_seq``); a BYE ends the dialog
        (§15.1.2). A target refresh takes effect when our 2xx goes out
        (``response_sent``).
        """
        status = self.check_remote_seq(request)
        if status is None and request.method == "BYE":
            self.terminate()
        return status

    def response_sent(self, request: Request, response: Response) -> None:
        """We answered ``request`` of this dialog with ``response``.

        For the INVITE that created a UAS dialog: a 2xx confirms it, a final
        failure ends it (§12.1.1, §13.3.1.4). For a target refresh: a 2xx
        makes the request's Contact the remote target.
        """
        status = response.status
        if request.method == "INVITE" and self.state is DialogState.EARLY:
            if 200 <= status < 300:
                self.state = DialogState.CONFIRMED
            elif status >= 300:
                self.terminate()
            return
        if 200 <= status < 300 and request.method in TARGET_REFRESH_METHODS and request.contacts:
            self.remote_target = _remote_target(request, 400)

    def receive_response(self, response: Response) -> None:
        """A response to one of our requests inside this dialog.

        For the INVITE that created a UAC dialog: a provisional response with
        a Contact moves the remote target; a 2xx confirms the dialog and
        recomputes the route set from its Record-Route (§13.2.2.4); a final
        failure ends the early dialog (§13.2.2.3). Otherwise a 2xx to a target
        refresh sets the remote target (§12.2.1.2), and a 481 or 408 ends the
        dialog (§12.2.1.2). Raises ``SipParseError`` (status None) for a
        Contact or Record-Route that is not a SIP URI.
        """
        status = response.status
        cseq = response.cseq
        if cseq.method == "INVITE" and self.state is DialogState.EARLY:
            if status >= 300:
                self.terminate()
            elif status >= 200:
                self.route_set = tuple(reversed(_route_set(response, None)))
                self.remote_target = _remote_target(response, None, self.remote_target)
                self.state = DialogState.CONFIRMED
            elif response.contacts:
                self.remote_target = _remote_target(response, None)
            return
        if status in (408, 481):
            self.terminate()
        elif 200 <= status < 300 and cseq.method in TARGET_REFRESH_METHODS and cseq.seq >= self._refresh_seq:
            if response.contacts:
                self.remote_target = _remote_target(response, None)
                self._refresh_seq = cseq.seq

    def terminate(self) -> None:
        """End the dialog (idempotent); a DialogTable holding it forgets it."""
        if self.state is DialogState.TERMINATED:
            return
        self.state = DialogState.TERMINATED
        forget, self._on_terminated = self._on_terminated, None
        if forget is not None:
            forget(self)


class DialogTable:
    """The dialogs alive at one user agent, found by (Call-ID, local tag, remote tag).

    An INVITE that forks makes several dialogs with the same Call-ID and
    local tag and different remote tags (§12.1.2, §13.2.2.4); they are kept
    together so that a final answer can end the early ones. A dialog leaves
    the table when it terminates, so the table holds live dialogs only.
    """

    def __init__(self) -> None:
        # (Call-ID, local tag) -> remote tag -> dialog
        self._legs: dict[tuple[str, str], dict[str | None, Dialog]] = {}
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[Dialog]:
        return iter([d for forks in self._legs.values() for d in forks.values()])

    def add(self, dialog: Dialog) -> None:
        if dialog.state is DialogState.TERMINATED:
            raise ValueError(f"dialog {dialog.id} is already terminated")
        forks = self._legs.setdefault((dialog.call_id, dialog.local_tag), {})
        if dialog.remote_tag in forks:
            raise ValueError(f"dialog {dialog.id} is already in the table")
        forks[dialog.remote_tag] = dialog
        self._count += 1
        dialog._on_terminated = self._forget

    def get(self, dialog_id: DialogId) -> Dialog | None:
        call_id, local_tag, remote_tag = dialog_id
        forks = self._legs.get((call_id, local_tag))
        return None if forks is None else forks.get(remote_tag)

    def match_request(self, request: Request) -> Dialog | None:
        """The dialog a request from a peer belongs to: its To tag is ours (§12.2.2)."""
        local_tag = request.to_addr.tag
        if local_tag is None:
            return None
        return self.get((request.call_id, local_tag, request.from_addr.tag))

    def match_response(self, response: Response) -> Dialog | None:
        """The dialog a response to our request belongs to: its From tag is ours."""
        local_tag = response.from_addr.tag
        if local_tag is None:
            return None
        return self.get((response.call_id, local_tag, response.to_addr.tag))

    def forks(self, call_id: str, local_tag: str) -> list[Dialog]:
        """Every dialog one request of ours created, one per answering fork."""
        return list(self._legs.get((call_id, local_tag), {}).values())

    def dialog_for_response(self, request: Request, response: Response, *, tls: bool = False) -> Dialog | None:
        """Feed a response to our dialog-creating ``request``; return its dialog, made on first sight.

        A 101-299 with a To tag (or a 2xx without one) belongs to the dialog
        of that tag, which is created the first time the tag is seen: every
        fork that answers gets its own (§13.2.2.4). A final failure ends every
        early dialog of the request (§13.2.2.3) and returns None, as does a
        100 or a provisional response without a tag. ``tls`` as for
        ``Dialog.from_uac``.

        Only for a request whose call is still wanted: a 2xx retransmitted
        after its dialog ended would make the dialog anew (re-send the cached
        ACK for it instead).
        """
        status = response.status
        if status >= 300:
            self.end_early(response.call_id, response.from_addr.tag or "")
            return None
        dialog = self.match_response(response)
        if dialog is not None:
            dialog.receive_response(response)
            return dialog
        if status < 200 and (status == 100 or response.to_addr.tag is None):
            return None
        dialog = Dialog.from_uac(request, response, tls=tls)
        self.add(dialog)
        return dialog

    def end_early(self, call_id: str, local_tag: str) -> None:
        """End the early dialogs of one request: its final answer came, or it timed out or was cancelled."""
        for dialog in self.forks(call_id, local_tag):
            if dialog.state is DialogState.EARLY:
                dialog.terminate()

    def _forget(self, dialog: Dialog) -> None:
        key = (dialog.call_id, dialog.local_tag)
        forks = self._legs.get(key)
        if forks is not None and forks.get(dialog.remote_tag) is dialog:
            del forks[dialog.remote_tag]
            self._count -= 1
            if not forks:
                del self._legs[key]
