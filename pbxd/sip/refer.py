"""Call transfer on the wire: REFER (RFC 3515), Referred-By (RFC 3892),
Replaces (RFC 3891) and the message/sipfrag NOTIFYs that report how the
referred call went (RFC 3420, RFC 3515 §2.4.5).

Blind transfer: a REFER whose Refer-To names the new target. Attended
transfer: the Refer-To URI carries an escaped ``?Replaces=...`` header naming
the dialog the new call replaces. The call layer parses with ``parse_refer``,
finds the replaced dialog with ``Replaces.dialog_id`` and checks it with
``replaces_refusal``, and reports progress with ``refer_notify``.
"""

from __future__ import annotations

import re
from urllib.parse import quote, unquote

import attrs

from pbxd.sip.dialog import Dialog, DialogId, DialogState, Role
from pbxd.sip.errors import SipParseError
from pbxd.sip.headers import Address, Via, is_token, parse_params
from pbxd.sip.message import Request, Response
from pbxd.sip.uri import URI, SipURI

SIPFRAG_CONTENT_TYPE = "message/sipfrag;version=2.0"

# How long pbxd says the implicit subscription of a REFER lasts while the
# referred call is under way (RFC 3515 §2.4.4 leaves it to the notifier).
DEFAULT_REFER_EXPIRES = 60

# Call-IDs are matched as the peer wrote them; anything printable but the
# ';' that ends it is taken, as the message parser takes any printable Call-ID.
_CALL_ID = re.compile(r"[^\s;]+")
# RFC 3261 §25.1 hnv-unreserved and unreserved, besides what quote() keeps anyway:
# the characters a URI header value may hold unescaped.
_URI_HEADER_SAFE = "!*'()[]/?:+$"
_STATUS_LINE = re.compile(r"SIP/2\.0 ([1-6][0-9][0-9]) ([^\r\n]*)", re.IGNORECASE)


@attrs.frozen
class Replaces:
    """Replaces: <call-id>;to-tag=...;from-tag=...[;early-only] (RFC 3891 §6.1).

    The tags are from the point of view of the UA that receives the header:
    the to-tag is its own tag for the dialog, the from-tag the peer's (§3).
    """

    call_id: str
    to_tag: str
    from_tag: str
    early_only: bool = False

    @classmethod
    def parse(cls, text: str) -> Replaces:
        """Parse a Replaces value (unescaped). Raises ``SipParseError`` (400)."""
        call_id, semi, param_text = text.partition(";")
        call_id = call_id.strip(" \t")
        if not _CALL_ID.fullmatch(call_id):
            raise SipParseError(f"bad Call-ID in Replaces {text[:80]!r}")
        tags: dict[str, str] = {}
        early_only = False
        for name, value in parse_params(semi + param_text):
            lowered = name.lower()
            if lowered in ("to-tag", "from-tag"):
                if value is None or lowered in tags:
                    raise SipParseError(f"Replaces needs one {lowered} with a value: {text[:80]!r}")
                tags[lowered] = value
            elif lowered == "early-only":
                early_only = True
        if len(tags) != 2:
            raise SipParseError(f"Replaces needs a to-tag and a from-tag: {text[:80]!r}")
        return cls(call_id, tags["to-tag"], tags["from-tag"], early_only)

    @classmethod
    def for_dialog(cls, dialog: Dialog, *, early_only: bool = False) -> Replaces:
        """The Replaces that names ``dialog`` to the UA at its far end.

        pbxd holds ``dialog`` with that UA; the UA's own tag is our remote tag.
        """
        if dialog.remote_tag is None:
            raise ValueError("a dialog without a remote tag cannot be replaced")
        return cls(dialog.call_id, dialog.remote_tag, dialog.local_tag, early_only)

    @property
    def dialog_id(self) -> DialogId:
        """The id of the replaced dialog at the UA receiving this header (for ``DialogTable.get``)."""
        return (self.call_id, self.to_tag, self.from_tag)

    def __str__(self) -> str:
        flag = ";early-only" if self.early_only else ""
        return f"{self.call_id};to-tag={self.to_tag};from-tag={self.from_tag}{flag}"


def replaces_refusal(replaces: Replaces, dialog: Dialog | None) -> int | None:
    """The status to refuse an INVITE with Replaces with, or None to go ahead (RFC 3891 §3).

    ``dialog`` is what ``replaces.dialog_id`` found: none is 481; a
    terminated one 603; a confirmed one with early-only 486; an early one
    this UA did not initiate 481 (only the caller's side of an early dialog
    can be replaced).
    """
    if dialog is None:
        return 481
    if dialog.state is DialogState.TERMINATED:
        return 603
    if dialog.state is DialogState.CONFIRMED:
        return 486 if replaces.early_only else None
    return 481 if dialog.role is Role.UAS else None


@attrs.frozen
class ReferTo:
    """A parsed Refer-To (RFC 3515 §2.1).

    ``target`` is the URI the referred request goes to, without URI headers;
    ``replaces`` the Replaces header embedded in it (attended transfer);
    ``headers`` the other URI headers, unescaped, which belong in the
    referred request (RFC 3261 §19.1.5).
    """

    address: Address
    target: URI
    replaces: Replaces | None = None
    headers: tuple[tuple[str, str], ...] = ()

    @classmethod
    def parse(cls, value: str) -> ReferTo:
        """Parse a Refer-To value. Raises ``SipParseError`` (400)."""
        address = Address.parse(value)
        uri = address.uri
        if not isinstance(uri, SipURI) or not uri.headers:
            return cls(address, uri)
        replaces = None
        headers = []
        for name, escaped in uri.headers:
            text = unquote(escaped)
            if name.lower() != "replaces":
                headers.append((name, text))
            elif replaces is None:
                replaces = Replaces.parse(text)
            else:
                raise SipParseError(f"Refer-To with two Replaces: {value[:80]!r}")
        return cls(address, attrs.evolve(uri, headers=()), replaces, tuple(headers))


def format_refer_to(target: Address | SipURI, replaces: Replaces | None = None) -> str:
    """A Refer-To value for ``target``, with ``replaces`` escaped into its URI for attended transfer."""
    address = target if isinstance(target, Address) else Address(target)
    if replaces is not None:
        uri = address.uri
        if not isinstance(uri, SipURI):
            raise ValueError(f"Replaces can only ride in a SIP URI, not {uri}")
        escaped = quote(str(replaces), safe=_URI_HEADER_SAFE)
        address = attrs.evolve(address, uri=attrs.evolve(uri, headers=uri.headers + (("Replaces", escaped),)))
    return str(address)


@attrs.frozen
class Refer:
    """What a REFER asks: whom to call, who asked, and whether progress NOTIFYs are wanted."""

    refer_to: ReferTo
    referred_by: Address | None = None
    # False when the referrer declined the implicit subscription (Refer-Sub: false, RFC 4488 §4).
    subscription: bool = True


def parse_refer(request: Request) -> Refer:
    """Read a REFER. Raises ``SipParseError`` (400) unless it has exactly one good Refer-To (RFC 3515 §2.4.1)."""
    values = request.get_all("refer-to")
    if len(values) != 1:
        raise SipParseError(f"REFER with {len(values)} Refer-To headers; it needs exactly one")
    referred_by = request.get("referred-by")
    refer_sub = request.get("refer-sub")
    subscription = True
    if refer_sub is not None:
        flag = refer_sub.partition(";")[0].strip(" \t").lower()
        if flag not in ("true", "false"):
            raise SipParseError(f"bad Refer-Sub {refer_sub[:40]!r}")
        subscription = flag == "true"
    return Refer(
        ReferTo.parse(values[0]),
        Address.parse(referred_by) if referred_by is not None else None,
        subscription,
    )


# -- the NOTIFYs of the implicit subscription ------------------------------------------------------------


@attrs.frozen
class Event:
    """Event: <package>[;id=<id>] (RFC 6665 §8.2.1)."""

    package: str
    id: str | None = None

    @classmethod
    def parse(cls, value: str) -> Event:
        package, semi, param_text = value.partition(";")
        package = package.strip(" \t")
        if not is_token(package):
            raise SipParseError(f"bad Event {value[:80]!r}")
        event_id = None
        for name, param in parse_params(semi + param_text):
            if name.lower() == "id":
                event_id = param
        return cls(package.lower(), event_id)

    def __str__(self) -> str:
        return self.package if self.id is None else f"{self.package};id={self.id}"


@attrs.frozen
class SubscriptionState:
    """Subscription-State: active|pending|terminated[;expires=N][;reason=R] (RFC 6665 §8.2.3)."""

    state: str
    expires: int | None = None
    reason: str | None = None

    @classmethod
    def parse(cls, value: str) -> SubscriptionState:
        state, semi, param_text = value.partition(";")
        state = state.strip(" \t").lower()
        if not is_token(state):
            raise SipParseError(f"bad Subscription-State {value[:80]!r}")
        expires = reason = None
        for name, param in parse_params(semi + param_text):
            lowered = name.lower()
            if lowered == "expires":
                if param is None or not param.isascii() or not param.isdigit() or len(param) > 10:
                    raise SipParseError(f"bad expires in Subscription-State {value[:80]!r}")
                expires = int(param)
            elif lowered == "reason" and param is not None:
                reason = param.lower()
        return cls(state, expires, reason)

    @property
    def is_terminated(self) -> bool:
        return self.state == "terminated"

    def __str__(self) -> str:
        out = self.state
        if self.expires is not None:
            out += f";expires={self.expires}"
        if self.reason is not None:
            out += f";reason={self.reason}"
        return out


@attrs.frozen
class SipFrag:
    """The status line a message/sipfrag NOTIFY body reports (RFC 3420, RFC 3515 §2.4.5)."""

    status: int
    reason: str

    @property
    def is_final(self) -> bool:
        return self.status >= 200


def sipfrag(status: int, reason: str | None = None) -> bytes:
    """A sipfrag body: the status line alone, which is all RFC 3515 §2.4.5 asks for."""
    return f"{Response(status, reason).start_line()}\r\n".encode()


def parse_sipfrag(body: bytes) -> SipFrag:
    """The status line of a sipfrag body (its headers, if any, are not read). Raises ``SipParseError`` (400)."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise SipParseError("sipfrag body is not UTF-8") from None
    first = text.partition("\n")[0].removesuffix("\r")
    match = _STATUS_LINE.fullmatch(first)
    if match is None:
        raise SipParseError(f"sipfrag body does not start with a status line: {first[:60]!r}")
    return SipFrag(int(match.group(1)), match.group(2))


def refer_notify(
    dialog: Dialog,
    via: Via,
    status: int,
    *,
    reason: str | None = None,
    refer_seq: int | None = None,
    expires: int = DEFAULT_REFER_EXPIRES,
) -> Request:
    """The NOTIFY that tells the referrer how the referred request is going (RFC 3515 §2.4.4-§2.4.5).

    ``status`` is the referred INVITE's latest response: 100 when it starts,
    then its provisional and final answers. A final status ends the
    subscription (terminated;reason=noresource); before that it is active
    for ``expires`` seconds. ``refer_seq`` is the REFER's CSeq number, put in
    the Event id so that several REFERs of one dialog stay apart (§2.4.6).
    """
    state = (
        SubscriptionState("terminated", reason="noresource")
        if status >= 200
        else SubscriptionState("active", expires=expires)
    )
    event = Event("refer", None if refer_seq is None else str(refer_seq))
    return dialog.create_request(
        "NOTIFY",
        via,
        body=sipfrag(status, reason),
        content_type=SIPFRAG_CONTENT_TYPE,
        extra_headers=[("Event", str(event)), ("Subscription-State", str(state))],
    )
