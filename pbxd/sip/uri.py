"""SIP, SIPS and TEL URIs (RFC 3261 §19.1, §25.1; RFC 3966).

URIs keep their components as written (escapes included) so that they
serialize back to the same text; comparison (§19.1.4) unescapes.

Parsing is on the hot path of every message (Request-URI, From, To, Contact),
so each component is checked by one anchored regex over the whole component
rather than character by character.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Union
from urllib.parse import unquote, unquote_to_bytes

import attrs

from pbxd.sip.errors import SipParseError

Params = tuple[tuple[str, Union[str, None]], ...]

_ESCAPED = r"%[0-9A-Fa-f]{2}"
# RFC 3261 §25.1: user = 1*( unreserved / escaped / user-unreserved ); note that
# user-unreserved includes ';', '?' and '/', so a user part may hold them (RFC
# 4475 §3.1.1.2 and §3.1.1.9) and the URI must be split at '@' first.
_USER = re.compile(rf"(?:[A-Za-z0-9\-_.!~*'()&=+$,;?/]|{_ESCAPED})+")
_PASSWORD = re.compile(rf"(?:[A-Za-z0-9\-_.!~*'()&=+$,]|{_ESCAPED})*")
# uri-parameters: *( ";" pname [ "=" pvalue ] ), pname/pvalue = 1*paramchar.
_PARAMCHAR = rf"(?:[A-Za-z0-9\-_.!~*'()\[\]/:&+$]|{_ESCAPED})"
_URI_PARAMS = re.compile(rf"(?:;{_PARAMCHAR}+(?:={_PARAMCHAR}+)?)+")
# headers: hname "=" hvalue *( "&" hname "=" hvalue ); hvalue may be empty.
_HNVCHAR = rf"(?:[A-Za-z0-9\-_.!~*'()\[\]/?:+$]|{_ESCAPED})"
_URI_HEADERS = re.compile(rf"{_HNVCHAR}+={_HNVCHAR}*(?:&{_HNVCHAR}+={_HNVCHAR}*)*")
# The shape nearly every SIP URI has: [user@]hostname-or-IPv4[:port][;params],
# nothing escaped. Anything else goes the long way, which also explains errors.
# The host patterns are shared with the Via parser. hostname = *( domainlabel
# "." ) toplabel [ "." ]; a toplabel starts with a letter, which is what tells a
# hostname from an IPv4 address. A domainlabel (alphanum, or alphanum
# *( alphanum / "-" ) alphanum) is written as runs of alphanumerics joined by
# hyphens, with possessive quantifiers: nothing that can follow a label starts
# with a letter, digit or hyphen, so giving characters back never helps, and
# not keeping the backtracking state made the pattern a third cheaper.
# tests/test_uri.py checks it against the grammar as the RFC writes it.
HOSTNAME_PATTERN = (
    r"(?:[A-Za-z0-9]++(?:-++[A-Za-z0-9]++)*+\.)*"
    r"[A-Za-z][A-Za-z0-9]*+(?:-++[A-Za-z0-9]++)*+\.?"
)
# IPv4address = 1*3DIGIT "." 1*3DIGIT "." 1*3DIGIT "." 1*3DIGIT, each at most
# 255. The commonest octet form first, and the four written out rather than a
# {3} repeat: 10% cheaper, the same language.
_OCTET = r"(?:[01]?[0-9]?[0-9]|2[0-4][0-9]|25[0-5])"
IPV4_PATTERN = rf"{_OCTET}\.{_OCTET}\.{_OCTET}\.{_OCTET}"
# Five groups: user, IPv4 address, hostname, port, parameters. The header
# parser embeds it in its name-addr fast path. IPv4 is tried first: the
# hostname pattern takes an address apart label by label before failing on
# its last one, which made IPv4 hosts (most Contacts) the slow case. No text
# matches both, so the order changes the speed only.
# The possessive runs (++, *+, ?+) give nothing back: the user part is
# followed by '@' and the parameters by '>' or the end, none of which they
# can contain, so backtracking into them could never find a match.
PLAIN_SIP_PATTERN = (
    r"(?:([A-Za-z0-9\-_.!~*'()&=+$,;?/]++)@)?"
    rf"(?:({IPV4_PATTERN})|({HOSTNAME_PATTERN}))"
    r"(?::([0-9]{1,5}))?"
    r"((?:;[A-Za-z0-9\-_.!~*'()\[\]/:&+$]++(?:=[A-Za-z0-9\-_.!~*'()\[\]/:&+$]++)?+)*+)"
)
_PLAIN_SIP = re.compile(PLAIN_SIP_PATTERN)
_HOSTNAME = re.compile(HOSTNAME_PATTERN)
_IPV4 = re.compile(IPV4_PATTERN)
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+\-.]*")
# RFC 3966: global-number-digits ("+" and digits with visual separators) or
# local-number-digits (hex digits, '*', '#', separators).
_TELNUMBER = re.compile(
    r"\+[0-9\-.()]*[0-9][0-9\-.()]*"
    r"|[0-9A-Fa-f*#\-.()]*[0-9A-Fa-f*#][0-9A-Fa-f*#\-.()]*"
)
_TEL_PARAMS = re.compile(rf"(?:;[A-Za-z0-9\-]+(?:={_PARAMCHAR}+)?)+")


def is_ascii_digits(text: str) -> bool:
    """True for a non-empty run of 0-9 (``str.isdigit`` alone accepts '²' and other digits)."""
    return text.isascii() and text.isdigit()


def _find_param(params: Params, name: str) -> tuple[bool, str | None]:
    lowered = name.lower()
    for key, value in params:
        if key.lower() == lowered:
            return True, value
    return False, None


def _format_params(params: Params) -> str:
    return "".join(f";{k}" if v is None else f";{k}={v}" for k, v in params)


def _split_params(text: str) -> Params:
    """Split an already validated ``;a=b;c`` into ((name, value-or-None), ...)."""
    if text.find(";", 1) < 0:  # one parameter, as with most tags and branches
        name, eq, value = text[1:].partition("=")
        return ((name, value if eq else None),)
    params = []
    for part in text[1:].split(";"):
        name, eq, value = part.partition("=")
        params.append((name, value if eq else None))
    return tuple(params)


def validate_host(host: str) -> str:
    """Check a host (hostname, IPv4 address or bracketed IPv6 reference)."""
    if _HOSTNAME.fullmatch(host):
        return host
    if _IPV4.fullmatch(host):
        return host
    if host.startswith("[") and host.endswith("]"):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            pass
        else:
            return host
    raise SipParseError(f"bad host {host!r}")


def _parse_port(port_text: str, context: str) -> int:
    if not is_ascii_digits(port_text) or len(port_text) > 5 or not 0 < int(port_text) < 65536:
        raise SipParseError(f"bad port in {context!r}")
    return int(port_text)


def split_hostport(text: str) -> tuple[str, int | None]:
    """Split ``host[:port]`` where host may be an IPv6 reference."""
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise SipParseError(f"unterminated IPv6 reference in {text!r}")
        host, rest = text[: end + 1], text[end + 1 :]
        if not rest:
            return validate_host(host), None
        if not rest.startswith(":"):
            raise SipParseError(f"bad hostport {text!r}")
        return validate_host(host), _parse_port(rest[1:], text)
    host, colon, port_text = text.partition(":")
    validate_host(host)
    return host, _parse_port(port_text, text) if colon else None


def bare_host(host: str) -> str:
    """The host as a socket address wants it: IPv6 without brackets."""
    return host[1:-1] if host.startswith("[") else host


def _unescape_for_compare(value: str | None) -> bytes | None:
    # Bytes, not str: two different invalid UTF-8 escapes must not both turn
    # into U+FFFD and compare equal.
    return None if value is None else unquote_to_bytes(value)


def _lower_unescaped(value: str | None) -> bytes | None:
    return None if value is None else unquote_to_bytes(value).lower()


_MISSING = object()


def public_repr(value: object) -> str:
    """``Class(field=value, ...)`` by the fields' public names, as attrs would
    write it for the read-only value classes whose fields are stored as ``_name``."""
    fields = ", ".join(
        f"{field.alias}={getattr(value, field.name)!r}"
        for field in attrs.fields(type(value))  # type: ignore[misc]
    )
    return f"{type(value).__name__}({fields})"


# Why not attrs.frozen: a frozen class sets each field through
# object.__setattr__ on construction, which made a SipURI 3-4 times dearer to
# build (8.7k against 2.1k instructions for its 7 fields), and the parser
# builds one for nearly every address it reads. So the fields are private
# slots, set plainly by the attrs __init__ and read through read-only
# properties: instances stay immutable (they are shared through the parse
# caches), attrs.evolve takes the public names, and reading a field costs a
# property call. Via, Address and CSeq in headers.py are built the same way.
@attrs.define(unsafe_hash=True, repr=False)
class SipURI:
    """A ``sip:`` or ``sips:`` URI."""

    _host: str
    _user: str | None = None
    _password: str | None = None
    _port: int | None = None
    _params: Params = ()
    _headers: tuple[tuple[str, str], ...] = ()
    _scheme: str = "sip"

    __repr__ = public_repr

    @property
    def host(self) -> str:
        return self._host

    @property
    def user(self) -> str | None:
        return self._user

    @property
    def password(self) -> str | None:
        return self._password

    @property
    def port(self) -> int | None:
        return self._port

    @property
    def params(self) -> Params:
        return self._params

    @property
    def headers(self) -> tuple[tuple[str, str], ...]:
        return self._headers

    @property
    def scheme(self) -> str:
        return self._scheme

    @property
    def secure(self) -> bool:
        return self.scheme == "sips"

    def param(self, name: str) -> str | None:
        return _find_param(self._params, name)[1]

    def has_param(self, name: str) -> bool:
        return _find_param(self._params, name)[0]

    @property
    def transport(self) -> str | None:
        value = self.param("transport")
        return value.lower() if value else None

    @property
    def maddr(self) -> str | None:
        return self.param("maddr")

    @property
    def unescaped_user(self) -> str | None:
        """The user part with %HH escapes decoded (RFC 4475 §3.1.1.4: NULs included)."""
        return None if self.user is None else unquote(self.user, errors="replace")

    def with_params(self, **changes: str | None) -> SipURI:
        """A copy with parameters set (value None: flag) or replaced."""
        kept = tuple((k, v) for k, v in self.params if k.lower() not in changes)
        return attrs.evolve(self, params=kept + tuple(changes.items()))

    def without_params(self, *names: str) -> SipURI:
        lowered = {n.lower() for n in names}
        kept = tuple((k, v) for k, v in self.params if k.lower() not in lowered)
        return attrs.evolve(self, params=kept)

    def __str__(self) -> str:
        out = [self.scheme, ":"]
        if self.user is not None:
            out.append(self.user)
            if self.password is not None:
                out += [":", self.password]
            out.append("@")
        out.append(self.host)
        if self.port is not None:
            out += [":", str(self.port)]
        out.append(_format_params(self.params))
        if self.headers:
            out += ["?", "&".join(f"{k}={v}" for k, v in self.headers)]
        return "".join(out)

    def equivalent(self, other: object) -> bool:
        """URI comparison of RFC 3261 §19.1.4."""
        if not isinstance(other, SipURI) or self.scheme != other.scheme:
            return False
        # User and password compare case-sensitively, after unescaping.
        if _unescape_for_compare(self.user) != _unescape_for_compare(other.user):
            return False
        if _unescape_for_compare(self.password) != _unescape_for_compare(other.password):
            return False
        if self.host.lower() != other.host.lower() or self.port != other.port:
            return False
        # Parameter names and values compare case-insensitively, unescaped.
        mine = {_lower_unescaped(k): v for k, v in self.params}
        theirs = {_lower_unescaped(k): v for k, v in other.params}
        # user, ttl, method, maddr and transport must match if present in
        # either URI; other parameters only where both have them.
        for name in (b"user", b"ttl", b"method", b"maddr", b"transport"):
            a, b = mine.get(name, _MISSING), theirs.get(name, _MISSING)
            if a is _MISSING or b is _MISSING:
                if a is not b:
                    return False
            elif _lower_unescaped(a) != _lower_unescaped(b):  # type: ignore[arg-type]
                return False
        for name in mine.keys() & theirs.keys():
            if _lower_unescaped(mine[name]) != _lower_unescaped(theirs[name]):
                return False
        # Header components are never ignored; names are case-insensitive.
        return _comparable_headers(self) == _comparable_headers(other)


def _comparable_headers(uri: SipURI) -> list[tuple[bytes | None, bytes]]:
    return sorted((_lower_unescaped(k), unquote_to_bytes(v)) for k, v in uri.headers)


@attrs.frozen
class TelURI:
    """A ``tel:`` URI (RFC 3966)."""

    number: str
    params: Params = ()
    scheme: str = "tel"

    @property
    def is_global(self) -> bool:
        return self.number.startswith("+")

    def param(self, name: str) -> str | None:
        return _find_param(self.params, name)[1]

    def __str__(self) -> str:
        return f"tel:{self.number}{_format_params(self.params)}"


@attrs.frozen
class AbsoluteURI:
    """A URI of a scheme pbxd does not interpret (RFC 3261 allows any absoluteURI)."""

    scheme: str
    rest: str

    def __str__(self) -> str:
        return f"{self.scheme}:{self.rest}"


URI = Union[SipURI, TelURI, AbsoluteURI]

# Characters no URI may contain unescaped (RFC 3986 §2; RFC 3261 §25.1).
_NOT_IN_URI = frozenset(" \t\r\n<>\"\\^`{|}\x7f") | frozenset(chr(c) for c in range(32))


# URIs are immutable and the same few recur in message after message (every
# phone's AOR and Contact, every request of a dialog), so parsed ones are kept.
# Errors are not cached: a bad URI is parsed (and refused) every time. A plain
# dict rather than functools.lru_cache, so that the name-addr fast path in
# headers.py can look up (``_URI_CACHE``) and store (:func:`remember_uri`) the
# URIs it parses itself; when full it is emptied, which costs less per message
# than keeping an LRU order. Besides URIs it holds the check_uri match of a
# Request-URI nobody has read yet: readers build the URI from it.
URI_CACHE_SIZE = 4096
_URI_CACHE: dict[str, "URI | re.Match[str]"] = {}


def remember_uri(text: str, uri: URI | re.Match[str]) -> None:
    """Keep a URI parsed from ``text`` (or its check) for the next :func:`parse_uri`."""
    if len(_URI_CACHE) >= URI_CACHE_SIZE:
        _URI_CACHE.clear()
    _URI_CACHE[text] = uri


def parse_uri(text: str) -> URI:
    """Parse a Request-URI or the URI inside a name-addr."""
    uri = _URI_CACHE.get(text)
    if uri is None:
        uri = _parse_uri_uncached(text)
        remember_uri(text, uri)
    elif uri.__class__ is re.Match:
        return uri_from_match(uri)  # type: ignore[arg-type]
    return uri  # type: ignore[return-value]


def check_uri(text: str) -> URI | re.Match[str]:
    """Check a URI; raise :class:`SipParseError` if it is not one.

    For the common ``sip:user@host`` shape this returns the match that proved
    it valid, for :func:`uri_from_match` to build the URI when it is first
    read; otherwise (parsed the long way, or built before) the URI itself.
    """
    known = _URI_CACHE.get(text)
    if known is not None:
        return known
    colon = text.find(":")
    if colon == 3 or colon == 4:
        scheme = text[:colon].lower()
        if scheme == "sip" or scheme == "sips":
            # Matched from after the colon, so that the match keeps the whole text.
            plain = _PLAIN_SIP.fullmatch(text, colon + 1)
            if plain is not None:
                port_text = plain.group(4)
                if port_text is not None and not 0 < int(port_text) < 65536:
                    raise SipParseError(f"bad port in {text!r}")
                remember_uri(text, plain)
                return plain
    return parse_uri(text)


def uri_from_match(plain: re.Match[str]) -> SipURI:
    """The SIP URI a :func:`check_uri` match stands for."""
    text = plain.string
    known = _URI_CACHE.get(text)
    if known is not None and known.__class__ is not re.Match:
        return known  # type: ignore[return-value]  # built meanwhile for a name-addr
    user, ipv4, host, port_text, param_text = plain.groups()
    host, port = plain_hostport(host, ipv4, port_text, text)
    params = _split_params(param_text) if param_text else ()
    uri = SipURI(host, user, None, port, params, (), text[: plain.pos - 1].lower())
    remember_uri(text, uri)
    return uri


def _parse_uri_uncached(text: str) -> URI:
    scheme, colon, rest = text.partition(":")
    lowered = scheme.lower()
    if lowered == "sip" or lowered == "sips":
        return _parse_sip_uri(lowered, rest, text)
    if not colon or not rest or not _SCHEME.fullmatch(scheme):
        raise SipParseError(f"bad URI {text!r}")
    if lowered == "tel":
        return _parse_tel_uri(rest)
    if not rest.isascii() or not _NOT_IN_URI.isdisjoint(rest):
        raise SipParseError(f"bad URI {text!r}")
    return AbsoluteURI(lowered, rest)


def plain_hostport(host: str | None, ipv4: str | None, port_text: str | None, text: str) -> tuple[str, int | None]:
    """Host and port from a fast-path match whose pattern has a hostname and an
    IPv4 alternative (only one matches) and a digits-only port group."""
    port = None
    if port_text is not None:
        port = int(port_text)
        if not 0 < port < 65536:
            raise SipParseError(f"bad port in {text!r}")
    return (ipv4 if ipv4 is not None else host), port  # type: ignore[return-value]


def _parse_sip_uri(scheme: str, rest: str, text: str) -> SipURI:
    plain = _PLAIN_SIP.fullmatch(rest)
    if plain is not None:
        user, ipv4, host, port_text, param_text = plain.groups()
        host, port = plain_hostport(host, ipv4, port_text, text)
        params = _split_params(param_text) if param_text else ()
        return SipURI(host, user, None, port, params, (), scheme)
    user = password = None
    at = rest.find("@")
    if at >= 0:
        # No '@' may follow: user, password, params and headers cannot hold one.
        userinfo, rest = rest[:at], rest[at + 1 :]
        user, colon, pw = userinfo.partition(":")
        if not _USER.fullmatch(user):
            raise SipParseError(f"bad user part in {text!r}")
        if colon:
            if not _PASSWORD.fullmatch(pw):
                raise SipParseError(f"bad password in {text!r}")
            password = pw
    headers: tuple[tuple[str, str], ...] = ()
    qmark = rest.find("?")
    if qmark >= 0:
        header_text, rest = rest[qmark + 1 :], rest[:qmark]
        if not _URI_HEADERS.fullmatch(header_text):
            raise SipParseError(f"bad URI headers in {text!r}")
        pairs = (item.partition("=") for item in header_text.split("&"))
        headers = tuple((name, value) for name, _, value in pairs)
    params: Params = ()
    semi = rest.find(";")
    if semi >= 0:
        param_text, rest = rest[semi:], rest[:semi]
        if not _URI_PARAMS.fullmatch(param_text):
            raise SipParseError(f"bad URI parameters in {text!r}")
        params = _split_params(param_text)
    if not rest:
        raise SipParseError(f"URI without host {text!r}")
    host, port = split_hostport(rest)
    return SipURI(host, user, password, port, params, headers, scheme)


def _parse_tel_uri(rest: str) -> TelURI:
    number, semi, param_text = rest.partition(";")
    if not _TELNUMBER.fullmatch(number):
        raise SipParseError(f"bad telephone number {number!r}")
    if not semi:
        return TelURI(number)
    param_text = semi + param_text
    if not _TEL_PARAMS.fullmatch(param_text):
        raise SipParseError(f"bad tel URI parameters {param_text!r}")
    return TelURI(number, _split_params(param_text))
