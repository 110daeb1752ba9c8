"""Header names and the structured headers pbxd reads: Via, name-addr, CSeq.

RFC 3261 §7.3 and §25.1 give the grammar. Header values are kept as text in the
message; the classes here parse them on demand and format them back.
"""

from __future__ import annotations

import re

import attrs

from pbxd.sip.errors import SipParseError
from pbxd.sip.uri import (
    HOSTNAME_PATTERN,
    IPV4_PATTERN,
    PLAIN_SIP_PATTERN,
    URI,
    Params,
    SipURI,
    _find_param,
    _format_params,
    _split_params,
    _URI_CACHE,
    public_repr,
    is_ascii_digits,
    parse_uri,
    remember_uri,
    split_hostport,
)

# RFC 3261 §7.3.3 and later RFCs: compact forms.
COMPACT_FORMS = {
    "i": "call-id",
    "m": "contact",
    "e": "content-encoding",
    "l": "content-length",
    "c": "content-type",
    "f": "from",
    "s": "subject",
    "k": "supported",
    "t": "to",
    "v": "via",
    "o": "event",
    "u": "allow-events",
    "x": "session-expires",
    "r": "refer-to",
    "b": "referred-by",
    "a": "accept-contact",
    "j": "reject-contact",
    "d": "request-disposition",
    "y": "identity",
}

_CANONICAL = {
    name.lower(): name
    for name in (
        "Accept", "Accept-Contact", "Accept-Encoding", "Accept-Language", "Alert-Info", "Allow",
        "Allow-Events", "Authentication-Info", "Authorization", "Call-ID", "Call-Info", "Contact",
        "Content-Disposition", "Content-Encoding", "Content-Language", "Content-Length",
        "Content-Type", "CSeq", "Date", "Error-Info", "Event", "Expires", "From", "Identity",
        "In-Reply-To", "Max-Forwards", "Min-Expires", "Min-SE", "MIME-Version", "Organization",
        "P-Asserted-Identity", "P-Preferred-Identity", "Path", "Priority", "Privacy",
        "Proxy-Authenticate", "Proxy-Authorization", "Proxy-Require", "RAck", "Reason",
        "Record-Route", "Refer-To", "Referred-By", "Reject-Contact", "Remote-Party-ID", "Replaces",
        "Reply-To", "Request-Disposition", "Require", "Retry-After", "Route", "RSeq", "Server",
        "Service-Route", "Session-Expires", "SIP-ETag", "SIP-If-Match", "Subject",
        "Subscription-State", "Supported", "Timestamp", "To", "Unsupported", "User-Agent", "Via",
        "Warning", "WWW-Authenticate",
    )
}

# Headers whose grammar is a comma-separated list (RFC 3261 §7.3.1): several
# values may share one line. The auth headers are not lists even though their
# parameters are separated by commas.
LIST_HEADERS = frozenset(
    {
        "accept", "accept-encoding", "accept-language", "allow", "allow-events", "call-info",
        "contact", "content-encoding", "content-language", "error-info", "in-reply-to", "path",
        "proxy-require", "record-route", "require", "route", "service-route", "supported",
        "unsupported", "via", "warning", "alert-info", "p-asserted-identity", "reason",
    }
)

_TOKEN_CHARS = r"A-Za-z0-9\-.!%*_+`'~"
_TOKEN = re.compile(rf"[{_TOKEN_CHARS}]+")
# gen-value = token / host / quoted-string (§25.1); unquoted values are token
# or host characters, the latter adding the ':' '[' ']' of IPv6 references.
_GEN_VALUE = re.compile(rf"[{_TOKEN_CHARS}:\[\]]+")
_CSEQ = re.compile(rf"[ \t]*([0-9]{{1,10}})[ \t]+([{_TOKEN_CHARS}]+)[ \t]*")
_VIA_PROTOCOL = re.compile(
    rf"[ \t]*([{_TOKEN_CHARS}]+)[ \t]*/[ \t]*([{_TOKEN_CHARS}]+)[ \t]*/"
    rf"[ \t]*([{_TOKEN_CHARS}]+)[ \t]+(.*)",
    re.S,
)
_LWS_COLON = re.compile(r"[ \t]*:[ \t]*")

# Fast paths. Each regex matches the shape nearly every message has; what it
# does not match goes to the general code, which also explains the errors.
# Header parameters without LWS or quoted values. Possessive (nothing is given
# back on a failed match, which saves the regex engine keeping track): they end
# every pattern that uses them, and no name or value holds the ';' or '=' that
# could follow a run.
_PLAIN_PARAMS_PATTERN = rf"(?:;[{_TOKEN_CHARS}]++(?:=[{_TOKEN_CHARS}:\[\]]++)?+)*+"
_PLAIN_PARAMS = re.compile(_PLAIN_PARAMS_PATTERN)
# From, To, Contact, Route: an optional display name (a quoted string without
# escapes, or tokens), <URI> and plain parameters; or an addr-spec whose URI
# has no ';', '?' or ','.
_PLAIN_NAME_ADDR = re.compile(
    rf'(?:"([^"\\]*)"[ \t]*|([{_TOKEN_CHARS}]+(?:[ \t]+[{_TOKEN_CHARS}]+)*)[ \t]*)?'
    rf"<([^<>\"\s]+)>({_PLAIN_PARAMS_PATTERN})"
)
# The same with a plain sip: or sips: URI inside the brackets (the pattern of
# uri._PLAIN_SIP), so that the commonest From, To and Contact take one match.
_PLAIN_SIP_NAME_ADDR = re.compile(
    rf'(?:"([^"\\]*)"[ \t]*|([{_TOKEN_CHARS}]+(?:[ \t]+[{_TOKEN_CHARS}]+)*)[ \t]*)?'
    rf"<([Ss][Ii][Pp][Ss]?):{PLAIN_SIP_PATTERN}>({_PLAIN_PARAMS_PATTERN})"
)
_PLAIN_ADDR_SPEC = re.compile(rf"([A-Za-z][A-Za-z0-9+\-.]*:[^<>\"\s;?,]+)({_PLAIN_PARAMS_PATTERN})")
# "SIP/2.0/UDP host:port;branch=...;rport" without LWS, quotes or IPv6; IPv4
# first, as in uri.PLAIN_SIP_PATTERN.
_PLAIN_VIA = re.compile(
    rf"SIP/2\.0/([{_TOKEN_CHARS}]+) (?:({IPV4_PATTERN})|({HOSTNAME_PATTERN}))(?::([0-9]{{1,5}}))?"
    rf"({_PLAIN_PARAMS_PATTERN})"
)

# Header names seen on the wire, mapped to (lookup key, output name). Bounded so
# that a peer sending endless invented names cannot grow it without limit.
_NAME_CACHE: dict[str, tuple[str, str]] = {}
_NAME_CACHE_LIMIT = 1024


def header_key(name: str) -> str:
    """The lowercase long form a header name is looked up by."""
    cached = _NAME_CACHE.get(name)
    if cached is not None:
        return cached[0]
    lowered = name.lower()
    return COMPACT_FORMS.get(lowered, lowered)


def canonical_name(name: str) -> str:
    """The long, conventionally capitalised name a header is written with."""
    cached = _NAME_CACHE.get(name)
    if cached is not None:
        return cached[1]
    return _CANONICAL.get(header_key(name), name)


def wire_name(raw: str) -> tuple[str, str]:
    """(key, output name) for a header name as received, LWS before the colon included.

    Raises :class:`SipParseError` if the name is not a token.
    """
    cached = _NAME_CACHE.get(raw)
    if cached is not None:
        return cached
    name = raw.rstrip(" \t")
    if not _TOKEN.fullmatch(name):
        raise SipParseError(f"bad header name {name[:60]!r}")
    lowered = name.lower()
    key = COMPACT_FORMS.get(lowered, lowered)
    entry = (key, _CANONICAL.get(key, name))
    if len(_NAME_CACHE) < _NAME_CACHE_LIMIT:
        _NAME_CACHE[raw] = entry
    return entry


def is_token(text: str) -> bool:
    return _TOKEN.fullmatch(text) is not None


def split_list(value: str) -> list[str]:
    """Split a comma-separated header value, minding quotes and <...>."""
    if "," not in value:
        stripped = value.strip(" \t")
        return [stripped] if stripped else []
    if '"' not in value and "<" not in value:
        parts = [part.strip(" \t") for part in value.split(",")]
    else:
        parts = _split_list_quoted(value)
    if not all(parts):
        raise SipParseError(f"empty element in list {value!r}")
    return parts


def _split_list_quoted(value: str) -> list[str]:
    parts: list[str] = []
    start = 0
    in_quotes = in_angle = False
    i, n = 0, len(value)
    while i < n:
        c = value[i]
        if in_quotes:
            if c == "\\":
                i += 1
            elif c == '"':
                in_quotes = False
        elif c == '"':
            in_quotes = True
        elif c == "<":
            in_angle = True
        elif c == ">":
            in_angle = False
        elif c == "," and not in_angle:
            parts.append(value[start:i].strip(" \t"))
            start = i + 1
        i += 1
    if in_quotes:
        raise SipParseError(f"unterminated quoted string in {value!r}")
    parts.append(value[start:].strip(" \t"))
    return parts


def read_quoted(text: str, start: int) -> tuple[str, int]:
    """Read the quoted-string at ``text[start]`` (a ``"``).

    Returns the inner text, unescaped, and the index just after the closing quote.
    """
    end = text.find('"', start + 1)
    if end < 0:
        raise SipParseError(f"unterminated quoted string in {text!r}")
    if text.find("\\", start + 1, end) < 0:
        return text[start + 1 : end], end + 1
    # quoted-pair = "\" (%x00-09 / %x0B-0C / %x0E-7F): any octet but CR and LF.
    out = []
    i, n = start + 1, len(text)
    while i < n:
        c = text[i]
        if c == "\\":
            if i + 1 >= n or text[i + 1] in "\r\n":
                break
            out.append(text[i + 1])
            i += 2
            continue
        if c == '"':
            return "".join(out), i + 1
        out.append(c)
        i += 1
    raise SipParseError(f"unterminated quoted string in {text!r}")


def quote(text: str) -> str:
    """Format text as a quoted-string (RFC 3261 §25.1)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def parse_params(text: str) -> Params:
    """Parse ``;name=value;flag`` header parameters (generic-param, §25.1).

    Values may be tokens, hosts or quoted strings; quoted values keep their quotes
    so that the header formats back unchanged. LWS is allowed around ';' and '='.
    """
    if not text:
        return ()
    if _PLAIN_PARAMS.fullmatch(text):
        return _split_params(text)
    params = []
    i, n = 0, len(text)
    while i < n:
        while i < n and text[i] in " \t":
            i += 1
        if i >= n:
            break
        if text[i] != ";":
            raise SipParseError(f"expected ';' in parameters {text!r}")
        i += 1
        while i < n and text[i] in " \t":
            i += 1
        j = i
        while j < n and text[j] not in "=; \t":
            j += 1
        name = text[i:j]
        if not is_token(name):
            raise SipParseError(f"bad parameter name in {text!r}")
        while j < n and text[j] in " \t":
            j += 1
        value: str | None = None
        if j < n and text[j] == "=":
            j += 1
            while j < n and text[j] in " \t":
                j += 1
            if j < n and text[j] == '"':
                _, end = read_quoted(text, j)
                value = text[j:end]
                j = end
            else:
                k = j
                while k < n and text[k] not in "; \t":
                    k += 1
                value = text[j:k]
                if not _GEN_VALUE.fullmatch(value):
                    raise SipParseError(f"bad value for parameter {name!r} in {text!r}")
                j = k
        params.append((name, value))
        i = j
    return tuple(params)


def unquoted(value: str | None) -> str | None:
    """A parameter value without its quotes, if it had any."""
    if value is not None and value.startswith('"'):
        return read_quoted(value, 0)[0]
    return value


# Via, Address and CSeq are immutable attrs classes with private fields and
# read-only properties rather than frozen ones, to be cheap to build: see the
# note above uri.SipURI.
@attrs.define(unsafe_hash=True, repr=False)
class Via:
    """One Via header value (RFC 3261 §20.42, RFC 3581 for rport)."""

    _transport: str
    _host: str
    _port: int | None = None
    _params: Params = ()
    _protocol: str = "SIP/2.0"

    __repr__ = public_repr

    @property
    def transport(self) -> str:
        return self._transport

    @property
    def host(self) -> str:
        return self._host

    @property
    def port(self) -> int | None:
        return self._port

    @property
    def params(self) -> Params:
        return self._params

    @property
    def protocol(self) -> str:
        return self._protocol

    @classmethod
    def parse(cls, text: str) -> Via:
        plain = _PLAIN_VIA.fullmatch(text)
        if plain is None:
            return cls._parse_general(text)
        transport, ipv4, host, port_text, param_text = plain.groups()
        port = None
        if port_text is not None:
            port = int(port_text)
            if not 0 < port < 65536:
                raise SipParseError(f"bad port in {text!r}")
        params: Params = ()
        if param_text:
            params = _split_params(param_text)
            # Only an rport with a value needs checking; most Vias have none.
            if "rport=" in param_text.lower():
                _check_rport(params, text)
        return cls(transport.upper(), host if ipv4 is None else ipv4, port, params)

    @classmethod
    def _parse_general(cls, text: str) -> Via:
        match = _VIA_PROTOCOL.fullmatch(text)
        if not match:
            raise SipParseError(f"bad Via {text!r}")
        name, version, transport, rest = match.groups()
        if name.upper() != "SIP" or version != "2.0":
            raise SipParseError(f"unsupported Via protocol {name}/{version}")
        semi = rest.find(";")
        if semi >= 0:
            sent_by, param_text = rest[:semi], rest[semi:]
        else:
            sent_by, param_text = rest, ""
        sent_by = sent_by.strip(" \t")
        if " " in sent_by or "\t" in sent_by:
            sent_by = _LWS_COLON.sub(":", sent_by)  # §7.3.1: LWS allowed around ':'
        if not sent_by:
            raise SipParseError(f"Via without sent-by {text!r}")
        host, port = split_hostport(sent_by)
        params = parse_params(param_text) if param_text else ()
        _check_rport(params, text)
        return cls(transport.upper(), host, port, params)

    def param(self, name: str) -> str | None:
        return _find_param(self._params, name)[1]

    def has_param(self, name: str) -> bool:
        return _find_param(self._params, name)[0]

    @property
    def branch(self) -> str | None:
        # Read for every message: straight to the look-up, one call fewer.
        return _find_param(self._params, "branch")[1]

    @property
    def received(self) -> str | None:
        return self.param("received")

    @property
    def maddr(self) -> str | None:
        return self.param("maddr")

    @property
    def rport(self) -> int | None:
        value = self.param("rport")
        return int(value) if value else None

    @property
    def sent_by(self) -> tuple[str, int | None]:
        return self._host, self._port

    def with_param(self, name: str, value: str | None) -> Via:
        """A copy with one parameter set (value None: a flag), replacing any old value."""
        lowered = name.lower()
        replaced = False
        params = []
        for k, v in self.params:
            if k.lower() == lowered:
                if not replaced:
                    params.append((name, value))
                    replaced = True
            else:
                params.append((k, v))
        if not replaced:
            params.append((name, value))
        return attrs.evolve(self, params=tuple(params))

    def __str__(self) -> str:
        port = "" if self.port is None else f":{self.port}"
        return f"{self.protocol}/{self.transport} {self.host}{port}{_format_params(self.params)}"


def _check_rport(params: Params, text: str) -> None:
    # RFC 3581: rport is a flag in requests and a port number in responses.
    for key, value in params:
        if key.lower() == "rport" and value is not None:
            if not (is_ascii_digits(value) and len(value) <= 5 and 0 < int(value) < 65536):
                raise SipParseError(f"bad rport in Via {text!r}")


@attrs.define(unsafe_hash=True, repr=False)  # not frozen: see the note above Via
class Address:
    """A name-addr or addr-spec with header parameters: From, To, Contact, Route, ...

    ``display_name`` is unquoted text; ``params`` are the header's parameters
    (``tag``, ``expires``, ``q``, ...), not the URI's.
    """

    _uri: URI
    _display_name: str | None = None
    _params: Params = ()

    __repr__ = public_repr

    @property
    def uri(self) -> URI:
        return self._uri

    @property
    def display_name(self) -> str | None:
        return self._display_name

    @property
    def params(self) -> Params:
        return self._params

    @classmethod
    def parse(cls, text: str) -> Address:
        return _parse_address(text)

    def param(self, name: str) -> str | None:
        return _find_param(self._params, name)[1]

    def has_param(self, name: str) -> bool:
        return _find_param(self._params, name)[0]

    @property
    def tag(self) -> str | None:
        # Read for every message: straight to the look-up, one call fewer.
        return _find_param(self._params, "tag")[1]

    @property
    def sip_uri(self) -> SipURI | None:
        return self.uri if isinstance(self.uri, SipURI) else None

    def with_param(self, name: str, value: str | None) -> Address:
        kept = tuple((k, v) for k, v in self.params if k.lower() != name.lower())
        return attrs.evolve(self, params=kept + ((name, value),))

    def without_param(self, name: str) -> Address:
        lowered = name.lower()
        kept = tuple((k, v) for k, v in self.params if k.lower() != lowered)
        return attrs.evolve(self, params=kept)

    def __str__(self) -> str:
        name = ""
        if self.display_name:
            words = self.display_name.split(" ")
            plain = all(_TOKEN.fullmatch(w) for w in words)
            name = (self.display_name if plain else quote(self.display_name)) + " "
        return f"{name}<{self.uri}>{_format_params(self.params)}"


# Addresses are immutable and recur throughout a dialog (every request and
# response repeats From and To) and across calls (Contacts, To without a tag).
# A bounded dict, emptied when full, like the URI cache. It holds an Address,
# or the check_address match of one nobody has read yet, so that a message
# seen again is checked by one look-up either way.
ADDRESS_CACHE_SIZE = 4096
_ADDRESS_CACHE: dict[str, Address | re.Match[str]] = {}


def _remember_address(text: str, address: Address | re.Match[str]) -> None:
    if len(_ADDRESS_CACHE) >= ADDRESS_CACHE_SIZE:
        _ADDRESS_CACHE.clear()
    _ADDRESS_CACHE[text] = address


def _parse_address(text: str) -> Address:
    known = _ADDRESS_CACHE.get(text)
    if known is None:
        known = check_address(text)
    if known.__class__ is re.Match:
        return address_from_match(known)  # type: ignore[arg-type]
    return known  # type: ignore[return-value]


def check_address(text: str) -> Address | re.Match[str]:
    """Check a name-addr or addr-spec; raise :class:`SipParseError` if it is not one.

    For the common ``<sip:...>`` shape this returns the match that proved it
    valid, and :func:`address_from_match` builds the Address on first use: most
    messages are routed without their Contact, and building objects is most of
    the cost of parsing one. Otherwise (parsed the long way, or built before)
    it returns the Address itself.
    """
    known = _ADDRESS_CACHE.get(text)
    if known is not None:
        return known
    plain = _PLAIN_SIP_NAME_ADDR.fullmatch(text)
    if plain is None:
        address = _parse_other_address(text)
        _remember_address(text, address)
        return address
    # The one check the pattern leaves to the builder.
    port_text = plain.group(7)
    if port_text is not None and not 0 < int(port_text) < 65536:
        raise SipParseError(f"bad port in {text[plain.start(3) : plain.end(8)]!r}")
    # _remember_address, inline: every new message comes here.
    if len(_ADDRESS_CACHE) >= ADDRESS_CACHE_SIZE:
        _ADDRESS_CACHE.clear()
    _ADDRESS_CACHE[text] = plain
    return plain


def address_from_match(plain: re.Match[str]) -> Address:
    """The Address a :func:`check_address` match stands for."""
    text = plain.string
    quoted, tokens, scheme, user, ipv4, host, port_text, uri_params, param_text = plain.groups()
    uri_text = text[plain.start(3) : plain.end(8)]
    uri = _URI_CACHE.get(uri_text)
    if uri is None or uri.__class__ is re.Match:
        # check_address has checked the port's range; one of host and ipv4 matched.
        port = None if port_text is None else int(port_text)
        params = _split_params(uri_params) if uri_params else ()
        uri = SipURI(host or ipv4, user, None, port, params, (), scheme.lower())
        remember_uri(uri_text, uri)
    display = quoted
    if tokens is not None:
        # Tokens separated by LWS: the name is the tokens with single SPs.
        display = " ".join(tokens.split()) if " " in tokens or "\t" in tokens else tokens
    address = Address(uri, display, _split_params(param_text) if param_text else ())
    _remember_address(text, address)
    return address


def _parse_other_address(text: str) -> Address:
    plain = _PLAIN_NAME_ADDR.fullmatch(text)
    if plain is not None:
        quoted, tokens, uri_text, param_text = plain.groups()
        display = quoted
        if tokens is not None:
            display = " ".join(tokens.split()) if " " in tokens or "\t" in tokens else tokens
        params = _split_params(param_text) if param_text else ()
        return Address(parse_uri(uri_text), display, params)
    plain = _PLAIN_ADDR_SPEC.fullmatch(text)
    if plain is not None:
        uri_text, param_text = plain.groups()
        params = _split_params(param_text) if param_text else ()
        return Address(parse_uri(uri_text), None, params)
    return _parse_address_general(text)


def _parse_address_general(text: str) -> Address:
    text = text.strip(" \t")
    display = None
    first = text[:1]
    if first == "<":
        rest = text
    elif first == '"':
        display, end = read_quoted(text, 0)
        rest = text[end:].lstrip(" \t")
        if not rest.startswith("<"):
            raise SipParseError(f"quoted display name without <URI> in {text!r}")
    else:
        # A name-addr's '<' comes before any ';': one after it can only be in a
        # quoted parameter value of an addr-spec.
        angle = text.find("<")
        semi = text.find(";")
        if 0 <= semi < angle:
            angle = -1
        rest = text
        if angle >= 0:
            # RFC 4475 §3.1.1.6: no LWS is needed between the name and '<'.
            words = text[:angle].replace("\t", " ").split(" ")
            words = [w for w in words if w]
            if not all(_TOKEN.fullmatch(w) for w in words):
                raise SipParseError(f"display name must be tokens or quoted in {text!r}")
            display = " ".join(words) or None
            rest = text[angle:]
    if rest.startswith("<"):
        close = rest.find(">")
        if close < 0:
            raise SipParseError(f"missing '>' in {text!r}")
        uri_text, param_text = rest[1:close], rest[close + 1 :]
    else:
        # addr-spec form: parameters after the URI belong to the header
        # (§20.10), so the URI cannot carry its own ';' params or '?' headers.
        semi = rest.find(";")
        if semi >= 0:
            uri_text, param_text = rest[:semi].rstrip(" \t"), rest[semi:]
        else:
            uri_text, param_text = rest, ""
        if "?" in uri_text or "," in uri_text:
            raise SipParseError(f"URI with '?' or ',' must be in <> in {text!r}")
    if " " in uri_text or "\t" in uri_text:
        raise SipParseError(f"whitespace inside URI in {text!r}")
    return Address(parse_uri(uri_text), display, parse_params(param_text))


@attrs.define(unsafe_hash=True, repr=False)  # not frozen: see the note above Via
class CSeq:
    """CSeq: sequence number and method (RFC 3261 §20.16, §8.1.1.5)."""

    _seq: int
    _method: str

    __repr__ = public_repr

    @property
    def seq(self) -> int:
        return self._seq

    @property
    def method(self) -> str:
        return self._method

    @classmethod
    def parse(cls, text: str) -> CSeq:
        # The usual "314159 INVITE" (one SP, a method of ASCII letters, which
        # are token characters) by str methods; anything else by the regex.
        number, space, method = text.partition(" ")
        if not (
            space and text.isascii() and number.isdigit() and len(number) <= 10
            and method.isalpha()
        ):
            match = _CSEQ.fullmatch(text)
            if not match:
                raise SipParseError(f"bad CSeq {text!r}")
            number, method = match.groups()
        seq = int(number)
        if seq >= 2**31:
            raise SipParseError(f"CSeq number out of range {text!r}")
        return cls(seq, method)

    def __str__(self) -> str:
        return f"{self.seq} {self.method}"
