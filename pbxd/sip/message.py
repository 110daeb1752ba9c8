"""SIP requests and responses: parsing and serialization (RFC 3261 §7, §18.3, §20, §25).

Parsing splits the header section into (name, value) pairs at once and checks
the headers every transaction depends on (Via, From, To, Call-ID, CSeq,
Max-Forwards, Content-Length, Contact), keeping what it parsed so that the
typed accessors cost little afterwards. From, To, Contact and the
Request-URI of the common ``sip:`` shapes are checked by one regex each and
built into Address and SipURI objects only when read (building them was most
of the cost of parsing a message not seen before). Other headers stay as text
until someone asks for them.

The parser is on the path of every datagram, so the common case (no folding,
names seen before, one value per line) runs on ``str`` methods and anchored
regexes; anything unusual falls back to the general code, which is the one
that reports errors.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Iterable, Iterator, TypeVar, Union

from pbxd.sip.errors import SipParseError
from pbxd.sip.headers import (
    _NAME_CACHE,
    LIST_HEADERS,
    Address,
    CSeq,
    Via,
    address_from_match,
    canonical_name,
    check_address,
    header_key,
    is_token,
    split_list,
    wire_name,
)
from pbxd.sip.uri import URI, check_uri, is_ascii_digits, parse_uri, uri_from_match

SIP_VERSION = "SIP/2.0"

REASON_PHRASES = {
    100: "Trying", 180: "Ringing", 181: "Call Is Being Forwarded", 182: "Queued",
    183: "Session Progress", 199: "Early Dialog Terminated",
    200: "OK", 202: "Accepted", 204: "No Notification",
    300: "Multiple Choices", 301: "Moved Permanently", 302: "Moved Temporarily",
    305: "Use Proxy", 380: "Alternative Service",
    400: "Bad Request", 401: "Unauthorized", 402: "Payment Required", 403: "Forbidden",
    404: "Not Found", 405: "Method Not Allowed", 406: "Not Acceptable",
    407: "Proxy Authentication Required", 408: "Request Timeout", 410: "Gone",
    412: "Conditional Request Failed", 413: "Request Entity Too Large",
    414: "Request-URI Too Long", 415: "Unsupported Media Type",
    416: "Unsupported URI Scheme", 420: "Bad Extension", 421: "Extension Required",
    422: "Session Interval Too Small", 423: "Interval Too Brief",
    429: "Provide Referrer Identity", 430: "Flow Failed", 439: "First Hop Lacks Outbound Support",
    480: "Temporarily Unavailable", 481: "Call/Transaction Does Not Exist",
    482: "Loop Detected", 483: "Too Many Hops", 484: "Address Incomplete", 485: "Ambiguous",
    486: "Busy Here", 487: "Request Terminated", 488: "Not Acceptable Here",
    489: "Bad Event", 491: "Request Pending", 493: "Undecipherable",
    500: "Server Internal Error", 501: "Not Implemented", 502: "Bad Gateway",
    503: "Service Unavailable", 504: "Server Time-out", 505: "Version Not Supported",
    513: "Message Too Large",
    600: "Busy Everywhere", 603: "Decline", 604: "Does Not Exist Anywhere", 606: "Not Acceptable",
}

# Headers a message must carry to be handled at all (RFC 3261 §8.1.1; a
# missing Max-Forwards is tolerated on receipt and treated as 70).
_REQUIRED = ("via", "from", "to", "call-id", "cseq")
_SINGLE = ("from", "to", "call-id", "cseq", "max-forwards", "content-length")

# Methods defined by RFC 3261 and its extensions (3262, 3265, 3311, 3428,
# 3515, 3903, 6086). A Request-Line method outside this set whose CSeq does not
# match is answered 501 rather than 400 (RFC 4475 §3.1.2.18).
KNOWN_METHODS = frozenset(
    {
        "INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "REGISTER", "PRACK", "SUBSCRIBE",
        "NOTIFY", "PUBLISH", "INFO", "REFER", "MESSAGE", "UPDATE",
    }
)

# §7.3.1: a CRLF followed by whitespace continues the header field value.
_FOLD = re.compile(r"\r\n[ \t]+")

# ASCII control characters other than HTAB, which no start line may contain.
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")

_T = TypeVar("_T")


def _check_header(name: str, value: str) -> None:
    # A CR or LF in a value would end the header on the wire and let the rest
    # pose as headers of their own.
    if "\r" in value or "\n" in value or not is_token(name):
        raise ValueError(f"cannot put header {name!r}: {value!r} in a message")


class Message:
    """Headers and body shared by requests and responses.

    Headers are kept in order as (key, name, value): ``key`` is the lowercase
    long form used for look-ups, ``name`` the spelling used on output.
    """

    __slots__ = ("_headers", "_index", "body", "_cache")

    def __init__(self, headers: Iterable[tuple[str, str]] = (), body: bytes = b"") -> None:
        self._headers: list[tuple[str, str, str]] = []
        for name, value in headers:
            _check_header(name, value)
            self._headers.append((header_key(name), canonical_name(name), value))
        # key -> first value, built on demand and dropped on every change.
        self._index: dict[str, str] | None = None
        self.body = body
        self._cache: dict[str, object] = {}

    # -- raw header access -------------------------------------------------

    @property
    def headers(self) -> list[tuple[str, str]]:
        """All headers as (name, value), in order."""
        return [(name, value) for _, name, value in self._headers]

    def _first_values(self) -> dict[str, str]:
        index = self._index
        if index is None:
            # Walk backwards so that the first value of each header wins.
            index = self._index = {key: value for key, _, value in reversed(self._headers)}
        return index

    def _changed(self, key: str) -> None:
        self._index = None
        self._cache.pop(key, None)

    def __contains__(self, name: str) -> bool:
        return header_key(name) in self._first_values()

    def get(self, name: str, default: str | None = None) -> str | None:
        """The first value of a header (a whole line, list headers not split)."""
        return self._first_values().get(header_key(name), default)

    def get_all(self, name: str) -> list[str]:
        """Every value of a header; list headers are split at their commas."""
        key = header_key(name)
        values = [value for k, _, value in self._headers if k == key]
        if key in LIST_HEADERS:
            return [item for value in values for item in split_list(value)]
        return values

    def set(self, name: str, value: str) -> None:
        """Replace every value of a header by one value, where the first one stood."""
        _check_header(name, value)
        key = header_key(name)
        self._changed(key)
        entry = (key, canonical_name(name), value)
        for i, (k, _, _) in enumerate(self._headers):
            if k == key:
                self._headers[i] = entry
                self._headers[i + 1 :] = [h for h in self._headers[i + 1 :] if h[0] != key]
                return
        self._headers.append(entry)

    def add(self, name: str, value: str) -> None:
        """Append a header value after all others."""
        _check_header(name, value)
        key = header_key(name)
        self._changed(key)
        self._headers.append((key, canonical_name(name), value))

    def insert(self, name: str, value: str) -> None:
        """Put a value first among the header's values (Via, Record-Route, Route)."""
        _check_header(name, value)
        key = header_key(name)
        self._changed(key)
        entry = (key, canonical_name(name), value)
        for i, (k, _, _) in enumerate(self._headers):
            if k == key:
                self._headers.insert(i, entry)
                return
        self._headers.insert(0, entry)

    def remove(self, name: str) -> None:
        """Remove every value of a header."""
        key = header_key(name)
        self._changed(key)
        self._headers = [h for h in self._headers if h[0] != key]

    def pop_first(self, name: str) -> str | None:
        """Remove and return the first value of a list header, splitting a line if needed."""
        key = header_key(name)
        for i, (k, hname, value) in enumerate(self._headers):
            if k == key:
                self._changed(key)
                items = split_list(value) if key in LIST_HEADERS else [value]
                if len(items) > 1:
                    self._headers[i] = (k, hname, ", ".join(items[1:]))
                else:
                    del self._headers[i]
                return items[0] if items else None
        return None

    def iter_raw(self) -> Iterator[tuple[str, str, str]]:
        return iter(self._headers)

    # -- typed access ------------------------------------------------------

    def _parsed(self, key: str, parse: Callable[[], _T]) -> _T:
        try:
            return self._cache[key]  # type: ignore[return-value]
        except KeyError:
            value = parse()
            self._cache[key] = value
            return value

    @property
    def vias(self) -> list[Via]:
        # Direct look-ups rather than _parsed: these are read for every message.
        vias = self._cache.get("via")
        if vias is None:
            vias = self._cache["via"] = [Via.parse(v) for v in self.get_all("via")]
        return vias  # type: ignore[return-value]

    @property
    def via(self) -> Via:
        """The top Via."""
        vias = self.vias
        if not vias:
            raise SipParseError("no Via header")
        return vias[0]

    @property
    def call_id(self) -> str:
        value = self._first_values().get("call-id")
        if value is None:
            raise SipParseError("no Call-ID header")
        return value

    @property
    def cseq(self) -> CSeq:
        cseq = self._cache.get("cseq")
        if cseq is None:
            cseq = self._cache["cseq"] = CSeq.parse(self._required("cseq"))
        return cseq  # type: ignore[return-value]

    # From, To and Contact may be held as the regex match that validated them
    # (headers.check_address) until someone reads them.

    @property
    def from_addr(self) -> Address:
        value = self._cache.get("from")
        if value is None or value.__class__ is re.Match:
            value = self._cache["from"] = self._address("from", value)  # type: ignore[arg-type]
        return value  # type: ignore[return-value]

    @property
    def to_addr(self) -> Address:
        value = self._cache.get("to")
        if value is None or value.__class__ is re.Match:
            value = self._cache["to"] = self._address("to", value)  # type: ignore[arg-type]
        return value  # type: ignore[return-value]

    def _address(self, key: str, checked: re.Match[str] | None) -> Address:
        if checked is not None:
            return address_from_match(checked)
        return Address.parse(self._required(key))

    @property
    def contacts(self) -> list[Address]:
        """Contact addresses; empty for none and for the ``*`` of a REGISTER."""
        value: list[Any] | None = self._cache.get("contact")  # type: ignore[assignment]
        if value is None:
            value = self._cache["contact"] = _parse_contacts(self.get_all("contact"))
        else:
            for i, item in enumerate(value):
                if item.__class__ is re.Match:
                    value[i] = address_from_match(item)  # type: ignore[arg-type]
        return value  # type: ignore[return-value]

    @property
    def is_wildcard_contact(self) -> bool:
        return self.get_all("contact") == ["*"]

    @property
    def max_forwards(self) -> int | None:
        return self._parsed(
            "max-forwards", lambda: _parse_number(self.get("max-forwards"), "Max-Forwards", 255)
        )

    @property
    def expires(self) -> int | None:
        # §20.19: delta-seconds; larger than 2**32-1 is taken as 2**32-1.
        return self._parsed(
            "expires", lambda: _parse_number(self.get("expires"), "Expires", 2**32 - 1, clamp=True)
        )

    def _required(self, key: str) -> str:
        value = self.get(key)
        if value is None:
            raise SipParseError(f"missing {canonical_name(key)} header")
        return value

    # -- output ------------------------------------------------------------

    def start_line(self) -> str:
        raise NotImplementedError

    def to_bytes(self) -> bytes:
        """The message on the wire, with a Content-Length that matches the body."""
        parts = [self.start_line()]
        for key, name, value in self._headers:
            if key != "content-length":
                parts.append(f"{name}: {value}")
        parts.append(f"Content-Length: {len(self.body)}\r\n\r\n")
        return "\r\n".join(parts).encode("utf-8") + self.body

    def __bytes__(self) -> bytes:
        return self.to_bytes()

    def _copy_into(self, other: Message) -> None:
        other._headers = list(self._headers)
        other._index = None
        other.body = self.body
        other._cache = {k: list(v) if isinstance(v, list) else v for k, v in self._cache.items()}


class Request(Message):
    __slots__ = ("method", "uri")

    def __init__(
        self,
        method: str,
        uri: str | URI,
        headers: Iterable[tuple[str, str]] = (),
        body: bytes = b"",
    ) -> None:
        super().__init__(headers, body)
        self.method = method
        self.uri = str(uri)

    @property
    def ruri(self) -> URI:
        """The parsed Request-URI."""
        ruri = self._cache.get(" ruri")
        if ruri is None:
            ruri = self._cache[" ruri"] = parse_uri(self.uri)
        elif ruri.__class__ is re.Match:  # checked while parsing, built now
            ruri = self._cache[" ruri"] = uri_from_match(ruri)  # type: ignore[arg-type]
        return ruri  # type: ignore[return-value]

    def set_uri(self, uri: str | URI) -> None:
        self.uri = str(uri)
        self._cache.pop(" ruri", None)

    def start_line(self) -> str:
        return f"{self.method} {self.uri} {SIP_VERSION}"

    def copy(self) -> Request:
        twin = Request(self.method, self.uri)
        self._copy_into(twin)
        return twin

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.uri} call-id={self.get('call-id')!r}>"


class Response(Message):
    __slots__ = ("status", "reason")

    def __init__(
        self,
        status: int,
        reason: str | None = None,
        headers: Iterable[tuple[str, str]] = (),
        body: bytes = b"",
    ) -> None:
        super().__init__(headers, body)
        self.status = status
        self.reason = REASON_PHRASES.get(status, "Unknown") if reason is None else reason

    @property
    def is_provisional(self) -> bool:
        return self.status < 200

    def start_line(self) -> str:
        return f"{SIP_VERSION} {self.status} {self.reason}"

    def copy(self) -> Response:
        twin = Response(self.status, self.reason)
        self._copy_into(twin)
        return twin

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.reason} call-id={self.get('call-id')!r}>"


SipMessage = Union[Request, Response]

# The headers a response copies from its request (§8.2.6.2).
_COPIED = frozenset({"via", "from", "to", "call-id", "cseq"})


def make_response(request: Request, status: int, reason: str | None = None) -> Response:
    """A response to ``request`` with the headers RFC 3261 §8.2.6.2 copies.

    The To tag for a final response is the transaction user's business, since
    it names the dialog the response creates.
    """
    response = Response(status, reason)
    copied = [h for h in request.iter_raw() if h[0] in _COPIED]
    if status == 100:
        # §8.2.6.1: a 100 Trying echoes the Timestamp header.
        copied += [h for h in request.iter_raw() if h[0] == "timestamp"]
    response._headers = copied
    # Their parsed forms are immutable and can be shared; the Via list cannot.
    cache = request._cache
    for key in ("from", "to", "cseq"):
        if key in cache:
            response._cache[key] = cache[key]
    if "via" in cache:
        response._cache["via"] = list(cache["via"])  # type: ignore[call-overload]
    return response


def _parse_number(value: str | None, name: str, limit: int, clamp: bool = False) -> int | None:
    if value is None:
        return None
    if not (value.isdigit() and value.isascii()):
        value = value.strip(" \t")
        if not is_ascii_digits(value):
            raise SipParseError(f"bad {name} {value[:40]!r}")
    # CPython refuses to convert very long digit strings; none of the limits
    # here needs more than 18 digits.
    if len(value) > 18 and len(value.lstrip("0")) > 18:
        number = limit + 1
    else:
        number = int(value)
    if number > limit:
        if clamp:
            return limit
        raise SipParseError(f"{name} out of range: {value[:40]}")
    return number


def _parse_contacts(values: list[str]) -> list[Address]:
    if "*" in values:
        if len(values) > 1:
            raise SipParseError("Contact '*' must be the only Contact value")  # §10.2.2
        return []
    return [Address.parse(value) for value in values]


def _check_contacts(values: list[str]) -> list[Address | re.Match[str]]:
    """_parse_contacts, leaving the common shapes to be built on first use."""
    if "*" in values:
        if len(values) > 1:
            raise SipParseError("Contact '*' must be the only Contact value")  # §10.2.2
        return []
    return [check_address(value) for value in values]


def parse_message(data: bytes) -> SipMessage:
    """Parse one SIP message from a datagram or a framed stream message.

    Raises :class:`SipParseError`. When the bytes were a request whose start
    line and headers could be split, ``error.request`` holds that request so
    the receiver can answer with ``error.status``.
    """
    start = 0
    while data.startswith(b"\r\n", start):  # §7.5: CRLFs before the start line are ignored
        start += 2
    end = data.find(b"\r\n\r\n", start)
    if end < 0:
        raise SipParseError("no end of headers", status=None)
    try:
        head = data[start:end].decode("utf-8")
    except UnicodeDecodeError as e:
        raise SipParseError(f"headers are not UTF-8: {e.reason}", status=None) from None
    first, _, rest = head.partition("\r\n")
    message: SipMessage
    line_error = None
    if first[:4].upper() == "SIP/":
        message = _parse_status_line(first)
    else:
        message, line_error = _parse_request_line(first)
    try:
        headers = message._headers = _split_headers(rest)
        if line_error is not None:
            raise line_error
        index = message._index = {key: value for key, _, value in reversed(headers)}
        body = data[end + 4 :]
        length_text = index.get("content-length")
        if length_text is not None:
            if len(length_text) <= 9 and is_ascii_digits(length_text):
                length = int(length_text)  # below 2**32: _parse_number's checks, cut short
            else:
                length = _parse_number(length_text, "Content-Length", 2**32 - 1)
            # §18.3: over datagrams, bytes past Content-Length are discarded
            # (RFC 4475 §3.1.1.8); fewer bytes than announced is an error (§3.1.2.2).
            if length > len(body):  # type: ignore[operator]
                raise SipParseError(f"Content-Length {length} exceeds body of {len(body)} bytes")
            body = body[:length]
        message.body = body
        _validate(message, headers, index)
    except SipParseError as error:
        if isinstance(message, Response):
            error.status = None  # §16.3 / §18.1.2: a malformed response is dropped
        else:
            error.request = message
        raise
    return message


def _parse_status_line(line: str) -> Response:
    version, _, rest = line.partition(" ")
    if version.upper() != SIP_VERSION:
        raise SipParseError(f"unsupported version {version[:20]!r}", status=None)
    code, _, reason = rest.partition(" ")
    # RFC 4475 §3.1.2.19: an overlarge code must not break the receiver.
    if len(code) != 3 or not is_ascii_digits(code) or not 100 <= int(code) <= 699:
        raise SipParseError(f"bad status code {code[:20]!r}", status=None)
    if _CONTROL.search(reason):
        raise SipParseError("control characters in the Reason-Phrase", status=None)
    response = Response.__new__(Response)
    response._headers = []
    response._index = None
    response.body = b""
    response._cache = {}
    response.status = int(code)
    response.reason = reason
    return response


def _parse_request_line(line: str) -> tuple[Request, SipParseError | None]:
    """The request a Request-Line starts, and the error to raise once its headers are read.

    Errors wait for the headers so that the receiver can still answer them
    (RFC 4475 §3.1.2.8-§3.1.2.10, §3.1.2.16): a response needs the Via, From,
    To, Call-ID and CSeq of the request.
    """
    request = Request.__new__(Request)
    request._headers = []
    request._index = None
    request._cache = {}
    request.body = b""
    # §7.1: exactly one SP between the elements, none before or after; extra
    # SP or LWS inside the Request-URI is refused rather than guessed at.
    parts = line.split(" ")
    if len(parts) != 3 or not all(parts):
        request.method, request.uri = parts[0], " ".join(parts[1:2])
        return request, SipParseError(f"malformed Request-Line {line[:80]!r}")
    request.method, request.uri, version = parts
    # The set look-up spares the token regex for the usual methods.
    if request.method not in KNOWN_METHODS and not is_token(request.method):
        return request, SipParseError(f"bad method {request.method[:40]!r}")
    if version == SIP_VERSION or version.upper() == SIP_VERSION:
        return request, None
    if version[:4].upper() != "SIP/":
        return request, SipParseError(f"malformed Request-Line {line[:80]!r}")
    return request, SipParseError(f"unsupported version {version[:20]!r}", status=505)


def _split_headers(text: str) -> list[tuple[str, str, str]]:
    if not text:
        return []
    lines = text.split("\r\n")
    crlf = len(lines) - 1
    if text.count("\r") != crlf or text.count("\n") != crlf:
        raise SipParseError("bare CR or LF in the header section")
    headers: list[tuple[str, str, str]] = []
    append = headers.append
    known = _NAME_CACHE.get
    try:
        for line in lines:
            raw, colon, value = line.partition(":")
            entry = known(raw) if colon else None
            if entry is None:
                entry = wire_name(raw if colon else "")
            append((entry[0], entry[1], value.strip(" \t")))
    except SipParseError:
        # Folded lines start with whitespace, which no header name does, so
        # they end up here too: the careful path unfolds them or says what is wrong.
        return _split_folded_headers(text)
    return headers


def _split_folded_headers(text: str) -> list[tuple[str, str, str]]:
    if text[0] in " \t":
        raise SipParseError("continuation line before any header")
    # §7.3.1: a line starting with whitespace continues the previous one; the
    # line break and the whitespace together count as one SP.
    headers = []
    for line in _FOLD.sub(" ", text).split("\r\n"):
        raw, colon, value = line.partition(":")
        if not colon:
            raise SipParseError(f"header line without a colon: {line[:60]!r}")
        key, name = wire_name(raw)
        headers.append((key, name, value.strip(" \t")))
    return headers


def _list_items(headers: list[tuple[str, str, str]], key: str) -> list[str]:
    items: list[str] = []
    for k, _, value in headers:
        if k == key:
            if "," in value:
                items += split_list(value)
            elif value:
                items.append(value)
            else:
                raise SipParseError(f"empty {canonical_name(key)} header")
    return items


def _one_line_items(value: str, key: str) -> list[str]:
    """_list_items for a header known to be on one line (the common case: no walk)."""
    if "," in value:
        return split_list(value)
    if value:
        return [value]
    raise SipParseError(f"empty {canonical_name(key)} header")


def _validate(
    message: SipMessage, headers: list[tuple[str, str, str]], index: dict[str, str]
) -> None:
    unique = len(index) == len(headers)  # no header name twice
    if not unique:
        keys = [h[0] for h in headers]
        for key in _SINGLE:
            if keys.count(key) > 1:
                raise SipParseError(f"more than one {canonical_name(key)} header")
    for key in _REQUIRED:
        if key not in index:
            raise SipParseError(f"missing {canonical_name(key)} header")
    call_id = index["call-id"]
    if not call_id or " " in call_id or "\t" in call_id or not call_id.isprintable():
        raise SipParseError(f"bad Call-ID {call_id[:60]!r}")
    cache = message._cache
    cache["cseq"] = cseq = CSeq.parse(index["cseq"])
    via = index["via"]
    if unique and via and "," not in via:  # one Via (the usual request): no list to split
        cache["via"] = [Via.parse(via)]
    else:
        vias = _one_line_items(via, "via") if unique else _list_items(headers, "via")
        cache["via"] = [Via.parse(item) for item in vias]
    cache["from"] = check_address(index["from"])
    cache["to"] = check_address(index["to"])
    max_forwards = index.get("max-forwards")
    if max_forwards is not None and len(max_forwards) <= 2 and is_ascii_digits(max_forwards):
        cache["max-forwards"] = int(max_forwards)  # 0-99: _parse_number's checks, cut short
    else:
        cache["max-forwards"] = _parse_number(max_forwards, "Max-Forwards", 255)
    if isinstance(message, Request):
        if cseq.method != message.method:
            error = SipParseError(f"CSeq method {cseq.method} does not match {message.method}")
            if message.method not in KNOWN_METHODS:
                error.status = 501
            raise error
        # A check_uri match is the plain shape, which has no headers.
        cache[" ruri"] = ruri = check_uri(message.uri)
        if getattr(ruri, "headers", ()):
            raise SipParseError("Request-URI must not carry headers")  # §19.1.1 table
    contact = index.get("contact")
    if contact is not None:
        if unique and contact and "," not in contact and contact != "*":  # the usual one
            cache["contact"] = [check_address(contact)]
        else:
            if unique:
                contacts = _one_line_items(contact, "contact")
            else:
                contacts = _list_items(headers, "contact")
            cache["contact"] = _check_contacts(contacts)
