"""Digest authentication for SIP (RFC 3261 §22, RFC 7616, RFC 8760), sans-IO.

Server side: :class:`NonceManager` issues and checks pbxd's own nonces and
tracks nonce counts; :class:`DigestAuthenticator` builds the challenges of a
401/407 and verifies the credentials of the retried request against a stored
HA1. Client side (trunks): :func:`choose_challenge` and
:func:`answer_challenge`.

Passwords are never needed by the server once stored: :func:`stored_ha1s`
gives the HA1 per algorithm that the store keeps, and ``-sess`` algorithms
derive their session HA1 from that stored value (RFC 7616 §3.4.2).
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import heapq
import hmac
import os
import re
from typing import Callable, Iterable, Optional
from urllib.parse import unquote_to_bytes

import attrs
from twisted.internet.interfaces import IReactorTime

from pbxd.sip.errors import SipParseError
from pbxd.sip.headers import quote, read_quoted
from pbxd.sip.message import Request
from pbxd.sip.uri import SipURI, parse_uri

# -- algorithms ---------------------------------------------------------------

# Base algorithm name -> hashlib constructor name (IANA "HTTP Digest Hash
# Algorithms" registry, RFC 7616 §6.1). Each also exists as "<name>-sess".
_HASHES = {"MD5": "md5", "SHA-256": "sha256", "SHA-512-256": "sha512_256"}

# How strong each base algorithm is, for a client choosing among challenges.
_STRENGTH = {"MD5": 0, "SHA-256": 1, "SHA-512-256": 2}

BASE_ALGORITHMS: tuple[str, ...] = tuple(_HASHES)
ALGORITHMS: tuple[str, ...] = tuple(name + suffix for name in _HASHES for suffix in ("", "-sess"))
_BY_LOWER = {name.lower(): name for name in ALGORITHMS}

QOPS = ("auth", "auth-int")


def canonical_algorithm(name: str | None) -> str | None:
    """The registry spelling of an algorithm name, ``MD5`` when absent, None if unknown.

    Algorithm names are compared case-insensitively (RFC 7616 §3.3 uses the
    registry names, but deployed phones write ``md5``).
    """
    if name is None:
        return "MD5"  # RFC 7616 §3.3: absent means MD5
    return _BY_LOWER.get(name.lower())


def base_algorithm(algorithm: str) -> str:
    """``SHA-256`` for ``SHA-256-sess``: the algorithm whose HA1 is stored."""
    return algorithm[: -len("-sess")] if algorithm.endswith("-sess") else algorithm


def _hash(algorithm: str, data: str | bytes) -> str:
    if isinstance(data, str):
        data = data.encode("utf-8")
    return hashlib.new(_HASHES[base_algorithm(algorithm)], data).hexdigest()


def _known(algorithm: str) -> str:
    canonical = canonical_algorithm(algorithm)
    if canonical is None:
        raise ValueError(f"unsupported digest algorithm {algorithm!r}")
    return canonical


# -- hash math (RFC 7616 §3.4) ------------------------------------------------


def ha1(username: str, realm: str, password: str, algorithm: str = "MD5") -> str:
    """H(username:realm:password), the value a store keeps instead of the password.

    For a ``-sess`` algorithm this is the same as for its base algorithm; the
    session HA1 needs the nonce and cnonce, so :func:`digest_response` derives it.
    """
    return _hash(_known(algorithm), f"{username}:{realm}:{password}")


def stored_ha1s(
    username: str, realm: str, password: str, algorithms: Iterable[str] = ("MD5", "SHA-256")
) -> dict[str, str]:
    """The HA1 per base algorithm to store for a user of a realm (hex digests)."""
    return {base_algorithm(_known(a)): ha1(username, realm, password, a) for a in algorithms}


def digest_response(
    ha1: str,
    nonce: str,
    method: str,
    uri: str,
    algorithm: str = "MD5",
    qop: str | None = None,
    nc: str | None = None,
    cnonce: str | None = None,
    body: bytes = b"",
) -> str:
    """The request-digest (RFC 7616 §3.4.1, RFC 3261 §22.4 with RFC 2617 §3.2.2).

    ``ha1`` is the stored H(username:realm:password) for the base algorithm;
    ``nc`` is the nonce count exactly as written on the wire (8 hex digits).
    Without ``qop`` the RFC 2069 form H(HA1:nonce:HA2) is used.
    """
    algorithm = _known(algorithm)
    if algorithm.endswith("-sess"):
        if cnonce is None:
            raise ValueError(f"{algorithm} needs a cnonce")
        ha1 = _hash(algorithm, f"{ha1}:{nonce}:{cnonce}")
    # qop is matched without case but hashed as written, as the client hashed it.
    if qop is not None and qop.lower() == "auth-int":
        ha2 = _hash(algorithm, f"{method}:{uri}:{_hash(algorithm, body)}")
    elif qop is None or qop.lower() == "auth":
        ha2 = _hash(algorithm, f"{method}:{uri}")
    else:
        raise ValueError(f"unsupported qop {qop!r}")
    if qop is None:
        return _hash(algorithm, f"{ha1}:{nonce}:{ha2}")
    if nc is None or cnonce is None:
        raise ValueError("qop needs nc and cnonce")
    return _hash(algorithm, f"{ha1}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}")


# -- header parsing and formatting (RFC 3261 §25.1, RFC 7235 §2.1) -----------

_TOKEN_CHARS = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+")
# Unquoted values: tokens, and leniently anything up to the next separator
# (some phones leave uri or nonce unquoted).
_BARE_VALUE = re.compile(r"[^ \t,\"]+")
_NC = re.compile(r"[0-9A-Fa-f]{8}")
_HEX = re.compile(r"[0-9A-Fa-f]+")
_UNSAFE = re.compile(r"[\x00-\x1f\x7f]")


def _parse_auth_value(value: str, what: str) -> tuple[str, dict[str, str]]:
    """Split ``Scheme name=value, name="quoted", ...`` into the scheme and parameters.

    Parameter names are lowercased; each may appear once (RFC 7235 §2.1).
    """
    text = value.strip(" \t")
    match = _TOKEN_CHARS.match(text)
    if not match:
        raise SipParseError(f"{what} without a scheme: {value[:80]!r}")
    scheme = match.group()
    i, n = match.end(), len(text)
    if i < n and text[i] not in " \t":
        raise SipParseError(f"bad {what} scheme in {value[:80]!r}")
    params: dict[str, str] = {}
    expect_comma = False
    while True:
        while i < n and text[i] in " \t":
            i += 1
        if i >= n:
            break
        if text[i] == ",":  # empty list elements are tolerated (RFC 7230 §7)
            i += 1
            expect_comma = False
            continue
        if expect_comma:
            raise SipParseError(f"expected ',' between {what} parameters in {value[:80]!r}")
        match = _TOKEN_CHARS.match(text, i)
        if not match:
            raise SipParseError(f"bad {what} parameter name in {value[:80]!r}")
        name = match.group().lower()
        i = match.end()
        while i < n and text[i] in " \t":
            i += 1
        if i >= n or text[i] != "=":
            raise SipParseError(f"{what} parameter {name!r} without a value")
        i += 1
        while i < n and text[i] in " \t":
            i += 1
        if i < n and text[i] == '"':
            param, i = read_quoted(text, i)
        else:
            match = _BARE_VALUE.match(text, i)
            if not match:
                raise SipParseError(f"{what} parameter {name!r} with an empty value")
            param, i = match.group(), match.end()
        if name in params:
            raise SipParseError(f"{what} parameter {name!r} given twice")
        params[name] = param
        expect_comma = True
    return scheme, params


def _ext_value(text: str) -> str:
    """Decode an RFC 8187 ext-value (``UTF-8''J%C3%A4s%C3%B8n``), as ``username*`` uses."""
    charset, quote1, rest = text.partition("'")
    _language, quote2, encoded = rest.partition("'")
    if not (quote1 and quote2) or charset.lower() != "utf-8":
        raise SipParseError(f"bad username* value {text[:80]!r}")
    try:
        return unquote_to_bytes(encoded).decode("utf-8")
    except UnicodeDecodeError:
        raise SipParseError(f"username* is not UTF-8: {text[:80]!r}") from None


def _quoted(value: str) -> str:
    # A CR or LF here would end the header line: refuse rather than inject.
    if _UNSAFE.search(value):
        raise ValueError(f"control character in digest parameter {value!r}")
    return quote(value)


@attrs.frozen
class Credentials:
    """The Digest credentials of an Authorization / Proxy-Authorization value.

    Values are kept as written: ``nc``, ``qop`` and ``uri`` enter the digest
    exactly as the client hashed them.
    """

    username: str
    realm: str
    nonce: str
    uri: str
    response: str
    algorithm: str | None = None
    cnonce: str | None = None
    opaque: str | None = None
    qop: str | None = None
    nc: str | None = None
    userhash: bool = False

    @property
    def nc_value(self) -> int | None:
        return None if self.nc is None else int(self.nc, 16)

    def to_header(self) -> str:
        parts = [
            f"username={_quoted(self.username)}",
            f"realm={_quoted(self.realm)}",
            f"nonce={_quoted(self.nonce)}",
            f"uri={_quoted(self.uri)}",
            f"response={_quoted(self.response)}",
        ]
        if self.algorithm is not None:
            parts.append(f"algorithm={self.algorithm}")
        if self.cnonce is not None:
            parts.append(f"cnonce={_quoted(self.cnonce)}")
        if self.opaque is not None:
            parts.append(f"opaque={_quoted(self.opaque)}")
        if self.qop is not None:
            parts.append(f"qop={self.qop}")  # §25.1: message-qop and nc are not quoted
        if self.nc is not None:
            parts.append(f"nc={self.nc}")
        if self.userhash:
            parts.append("userhash=true")
        return "Digest " + ", ".join(parts)

    __str__ = to_header


def parse_credentials(value: str) -> Credentials:
    """Parse a Digest Authorization or Proxy-Authorization value; SipParseError if malformed."""
    scheme, params = _parse_auth_value(value, "credentials")
    if scheme.lower() != "digest":
        raise SipParseError(f"unsupported authorization scheme {scheme!r}")
    if "username*" in params:
        if "username" in params:
            raise SipParseError("both username and username* in credentials")
        params["username"] = _ext_value(params["username*"])
    required = ("username", "realm", "nonce", "uri", "response")
    missing = [name for name in required if name not in params]
    if missing:
        raise SipParseError(f"credentials without {', '.join(missing)}")
    if not _HEX.fullmatch(params["response"]):
        raise SipParseError(f"credentials response is not hex: {params['response'][:80]!r}")
    qop, nc, cnonce = params.get("qop"), params.get("nc"), params.get("cnonce")
    if nc is not None and not _NC.fullmatch(nc):
        raise SipParseError(f"bad nonce count {nc[:80]!r}")
    if qop is not None and (nc is None or cnonce is None):
        raise SipParseError("credentials with qop need nc and cnonce")  # RFC 2617 §3.2.2
    userhash = params.get("userhash", "false").lower()
    if userhash not in ("true", "false"):
        raise SipParseError(f"bad userhash {userhash[:80]!r}")
    return Credentials(
        username=params["username"],
        realm=params["realm"],
        nonce=params["nonce"],
        uri=params["uri"],
        response=params["response"].lower(),
        algorithm=params.get("algorithm"),
        cnonce=cnonce,
        opaque=params.get("opaque"),
        qop=qop,
        nc=nc,
        userhash=userhash == "true",
    )


def find_credentials(request: Request, realm: str, proxy: bool = False) -> Credentials | None:
    """The request's Digest credentials for ``realm``, or None.

    A request may carry credentials for several realms (RFC 3261 §22.3), and
    other schemes; those are skipped. If nothing matches and some value was
    malformed, that error is raised so the caller can answer 400.
    """
    header = "Proxy-Authorization" if proxy else "Authorization"
    error: SipParseError | None = None
    for value in request.get_all(header):
        scheme = _TOKEN_CHARS.match(value.lstrip(" \t"))
        if scheme is not None and scheme.group().lower() != "digest":
            continue
        try:
            credentials = parse_credentials(value)
        except SipParseError as e:
            error = error or e
            continue
        if credentials.realm == realm:
            return credentials
    if error is not None:
        raise error
    return None


@attrs.frozen
class Challenge:
    """A Digest challenge: one WWW-Authenticate or Proxy-Authenticate value."""

    realm: str
    nonce: str
    algorithm: str = "MD5"
    opaque: str | None = None
    qop: tuple[str, ...] = ("auth",)
    stale: bool = False

    def to_header(self) -> str:
        parts = [f"realm={_quoted(self.realm)}", f"nonce={_quoted(self.nonce)}"]
        if self.opaque is not None:
            parts.append(f"opaque={_quoted(self.opaque)}")
        parts.append(f"algorithm={self.algorithm}")
        if self.qop:
            parts.append(f"qop={_quoted(','.join(self.qop))}")
        if self.stale:
            parts.append("stale=true")
        return "Digest " + ", ".join(parts)

    __str__ = to_header


def parse_challenge(value: str) -> Challenge:
    """Parse a Digest WWW-Authenticate / Proxy-Authenticate value; SipParseError if malformed.

    An algorithm pbxd does not know is kept as written, so that a client can
    skip that challenge; known ones are given their registry spelling.
    """
    scheme, params = _parse_auth_value(value, "challenge")
    if scheme.lower() != "digest":
        raise SipParseError(f"unsupported authentication scheme {scheme!r}")
    missing = [name for name in ("realm", "nonce") if name not in params]
    if missing:
        raise SipParseError(f"challenge without {', '.join(missing)}")
    written = params.get("algorithm")
    algorithm = canonical_algorithm(written) or written
    qop = tuple(q.strip(" \t").lower() for q in params.get("qop", "").split(",") if q.strip(" \t"))
    return Challenge(
        realm=params["realm"],
        nonce=params["nonce"],
        algorithm=algorithm or "MD5",
        opaque=params.get("opaque"),
        qop=qop,
        stale=params.get("stale", "false").lower() == "true",
    )


# -- nonces -------------------------------------------------------------------

_STAMP = 8  # bytes: issue time in milliseconds, big-endian
_RANDOM = 16
_MAC = 32  # HMAC-SHA256
_NONCE_BYTES = _STAMP + _RANDOM + _MAC


def _encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


class NonceManager:
    """pbxd's own nonces, and the nonce counts seen for them.

    A nonce is base64url(issue time | random | HMAC-SHA256(secret, time | random
    | realm)): the server keeps no state for a nonce it issued, so a flood of
    unauthenticated requests costs no memory, and a nonce only verifies for the
    realm it was issued for. Only nonces that were used in valid credentials
    are remembered, with the highest nonce count seen (RFC 7616 §3.4: ``nc``
    lets the server detect replays).

    The table forgets a nonce once it is stale, since a stale nonce is refused
    anyway. It is capped: when full, the nonce issued earliest is forgotten and
    every nonce issued up to then is treated as stale from then on, so a
    forgotten count can never be replayed (the client just retries with the
    fresh nonce of a ``stale=true`` challenge, without asking its user).
    """

    def __init__(
        self,
        secret: bytes,
        clock: IReactorTime,
        lifetime: float = 300.0,
        max_tracked: int = 100_000,
    ) -> None:
        if len(secret) < 16:
            raise ValueError("the nonce secret must be at least 16 bytes")
        if lifetime <= 0 or max_tracked < 1:
            raise ValueError("nonce lifetime and table size must be positive")
        self._secret = secret
        self._clock = clock
        self._lifetime_ms = int(lifetime * 1000)
        self._max_tracked = max_tracked
        self._counts: dict[str, int] = {}
        self._by_age: list[tuple[int, str]] = []  # heap of (issue ms, nonce), same set as _counts
        self._horizon_ms = -1  # nonces issued at or before this are stale (see class doc)

    @property
    def tracked(self) -> int:
        """How many nonces' counts are remembered now."""
        return len(self._counts)

    def _now_ms(self) -> int:
        return int(self._clock.seconds() * 1000)

    def _mac(self, stamp_and_random: bytes, realm: str) -> bytes:
        message = stamp_and_random + realm.encode("utf-8")
        return hmac.new(self._secret, message, hashlib.sha256).digest()

    def issue(self, realm: str) -> str:
        head = self._now_ms().to_bytes(_STAMP, "big") + os.urandom(_RANDOM)
        return _encode(head + self._mac(head, realm))

    def opaque(self, realm: str) -> str:
        """The opaque value pbxd sends for a realm: stable while the secret is."""
        mac = hmac.new(self._secret, b"opaque\0" + realm.encode("utf-8"), hashlib.sha256).digest()
        return _encode(mac[:18])

    def _issued_ms(self, nonce: str, realm: str) -> int | None:
        """The issue time of a nonce pbxd issued for ``realm``, or None."""
        if len(nonce) > 2 * _NONCE_BYTES:
            return None
        try:
            raw = base64.urlsafe_b64decode(nonce + "=" * (-len(nonce) % 4))
        except (binascii.Error, ValueError):
            return None
        # The decoder skips stray characters; only the exact text issued counts,
        # since nonce counts are kept per nonce text.
        if len(raw) != _NONCE_BYTES or _encode(raw) != nonce:
            return None
        head, mac = raw[: _STAMP + _RANDOM], raw[_STAMP + _RANDOM :]
        if not hmac.compare_digest(mac, self._mac(head, realm)):
            return None
        return int.from_bytes(head[:_STAMP], "big")

    def check(self, nonce: str, realm: str) -> str:
        """``'valid'``, ``'stale'`` (ours, but expired or forgotten) or ``'invalid'``."""
        issued = self._issued_ms(nonce, realm)
        if issued is None:
            return "invalid"
        if self._now_ms() - issued > self._lifetime_ms or issued <= self._horizon_ms:
            return "stale"
        return "valid"

    def accept_count(self, nonce: str, nc: int) -> bool:
        """Record nonce count ``nc`` for a valid nonce; False if it does not exceed the last one.

        Call only after the nonce checked valid and the digest verified, so that
        guesses cannot use up a client's counts.
        """
        self._forget_stale()
        last = self._counts.get(nonce)
        if last is not None:
            if nc <= last:
                return False
            self._counts[nonce] = nc
            return True
        raw = base64.urlsafe_b64decode(nonce + "=" * (-len(nonce) % 4))
        issued = int.from_bytes(raw[:_STAMP], "big")
        self._counts[nonce] = nc
        heapq.heappush(self._by_age, (issued, nonce))
        while len(self._counts) > self._max_tracked:
            oldest, forgotten = heapq.heappop(self._by_age)
            del self._counts[forgotten]
            self._horizon_ms = max(self._horizon_ms, oldest)
        return True

    def _forget_stale(self) -> None:
        limit = self._now_ms() - self._lifetime_ms
        while self._by_age and self._by_age[0][0] < limit:
            _, nonce = heapq.heappop(self._by_age)
            del self._counts[nonce]


# -- server side --------------------------------------------------------------


class AuthOutcome(enum.Enum):
    OK = "ok"
    WRONG_PASSWORD = "wrong_password"
    # No HA1 for the user: answer exactly as for a wrong password, so that
    # responses do not tell which extensions exist.
    UNKNOWN_USER = "unknown_user"
    STALE_NONCE = "stale_nonce"  # right password, old nonce: challenge again with stale=true
    INVALID_NONCE = "invalid_nonce"  # not a nonce (or opaque) pbxd issued for this realm
    REPLAYED_NC = "replayed_nc"
    WRONG_REALM = "wrong_realm"
    URI_MISMATCH = "uri_mismatch"  # §22.4 / RFC 2617 §3.2.2.5: answer 400
    UNSUPPORTED_ALGORITHM = "unsupported_algorithm"
    BAD_REQUEST = "bad_request"  # parameters that do not fit the challenge (qop, userhash, cnonce)

    @property
    def is_failure(self) -> bool:
        """Whether this counts as a failed password attempt (for the brute-force guard)."""
        return self in (AuthOutcome.WRONG_PASSWORD, AuthOutcome.UNKNOWN_USER)


@attrs.frozen
class AuthResult:
    outcome: AuthOutcome
    username: str
    algorithm: str | None = None
    reason: str = ""

    @property
    def ok(self) -> bool:
        return self.outcome is AuthOutcome.OK


# ha1_lookup(username, realm, base_algorithm) -> stored hex HA1, or None if unknown.
HA1Lookup = Callable[[str, str, str], Optional[str]]


def same_uri(a: str, b: str) -> bool:
    """Whether two URIs are the same (RFC 3261 §19.1.4 for SIP/SIPS URIs)."""
    try:
        first, second = parse_uri(a), parse_uri(b)
    except SipParseError:
        return False
    if isinstance(first, SipURI):
        return first.equivalent(second)
    return str(first) == str(second)


class DigestAuthenticator:
    """Challenges and verifies Digest credentials for one realm.

    ``algorithms`` are offered in order, one challenge each (RFC 8760 §2.3:
    most preferred first). The default puts MD5 first because many phones,
    and sipp, answer only the first challenge they see.
    """

    def __init__(
        self,
        nonces: NonceManager,
        realm: str,
        algorithms: Iterable[str] = ("MD5", "SHA-256"),
        qop: Iterable[str] = ("auth",),
        require_qop: bool = True,
    ) -> None:
        self.nonces = nonces
        self.realm = realm
        _quoted(realm)  # refuses now a realm that could not be written into a header
        self.algorithms = tuple(_known(a) for a in algorithms)
        if not self.algorithms or len(set(self.algorithms)) != len(self.algorithms):
            raise ValueError("digest algorithms must be given, each once")
        self.qop = tuple(qop)
        if not self.qop or any(q not in QOPS for q in self.qop):
            raise ValueError(f"qop must be among {QOPS}")
        # Without qop there is no nonce count, so replays inside a nonce's
        # lifetime cannot be detected; only for phones that cannot do qop.
        self.require_qop = require_qop
        self.opaque = nonces.opaque(realm)

    def challenge(self, stale: bool = False) -> list[str]:
        """WWW-Authenticate / Proxy-Authenticate values, one per algorithm, sharing one nonce."""
        nonce = self.nonces.issue(self.realm)
        return [
            Challenge(self.realm, nonce, algorithm, self.opaque, self.qop, stale).to_header()
            for algorithm in self.algorithms
        ]

    def verify(
        self, request: Request, credentials: Credentials, ha1_lookup: HA1Lookup
    ) -> AuthResult:
        """Check credentials against the request and the stored HA1.

        The digest is checked before the nonce count is recorded, and a stale
        nonce is only reported as stale when the digest is right, as
        RFC 7616 §3.3 asks for ``stale=true``.
        """
        username = credentials.username
        algorithm = canonical_algorithm(credentials.algorithm)
        if algorithm is None or algorithm not in self.algorithms:
            reason = f"algorithm {credentials.algorithm!r}"
            return AuthResult(AuthOutcome.UNSUPPORTED_ALGORITHM, username, None, reason)

        def result(outcome: AuthOutcome, reason: str = "") -> AuthResult:
            return AuthResult(outcome, username, algorithm, reason)

        if credentials.realm != self.realm:
            return result(AuthOutcome.WRONG_REALM, f"realm {credentials.realm!r}")
        if credentials.userhash:
            return result(AuthOutcome.BAD_REQUEST, "userhash was not offered")
        if credentials.qop is None:
            if self.require_qop:
                return result(AuthOutcome.BAD_REQUEST, "qop is required")
        elif credentials.qop.lower() not in self.qop:
            return result(AuthOutcome.BAD_REQUEST, f"qop {credentials.qop!r} was not offered")
        if algorithm.endswith("-sess") and credentials.cnonce is None:
            return result(AuthOutcome.BAD_REQUEST, f"{algorithm} needs a cnonce")
        if credentials.opaque != self.opaque:
            return result(AuthOutcome.INVALID_NONCE, "opaque does not match")
        if not same_uri(credentials.uri, request.uri):
            return result(AuthOutcome.URI_MISMATCH, f"digest uri {credentials.uri!r}")
        state = self.nonces.check(credentials.nonce, self.realm)
        if state == "invalid":
            return result(AuthOutcome.INVALID_NONCE)
        stored = ha1_lookup(username, self.realm, base_algorithm(algorithm))
        if stored is None:
            return result(AuthOutcome.UNKNOWN_USER)
        expected = digest_response(
            stored.lower(),
            credentials.nonce,
            request.method,
            credentials.uri,
            algorithm,
            credentials.qop,
            credentials.nc,
            credentials.cnonce,
            request.body,
        )
        if not hmac.compare_digest(expected, credentials.response):
            return result(AuthOutcome.WRONG_PASSWORD)
        if state == "stale":
            return result(AuthOutcome.STALE_NONCE)
        nc = credentials.nc_value
        if nc is not None and not self.nonces.accept_count(credentials.nonce, nc):
            return result(AuthOutcome.REPLAYED_NC, f"nc {credentials.nc} already seen")
        return result(AuthOutcome.OK)


# -- client side --------------------------------------------------------------


def _strength(challenge: Challenge) -> int:
    return _STRENGTH[base_algorithm(challenge.algorithm)]


def choose_challenge(values: Iterable[str], realm: str | None = None) -> Challenge | None:
    """The challenge to answer among a response's WWW-/Proxy-Authenticate values.

    The strongest supported algorithm wins, the first written among equals.
    RFC 8760 §2.4 has a UAC take the topmost one it supports unless local
    policy says otherwise; pbxd's policy is to prefer strength. Values that are
    malformed, of another scheme or (given ``realm``) of another realm are skipped.
    """
    best: Challenge | None = None
    for value in values:
        try:
            challenge = parse_challenge(value)
        except SipParseError:
            continue
        other_realm = realm is not None and challenge.realm != realm
        if challenge.algorithm not in ALGORITHMS or other_realm:
            continue
        if challenge.qop and not any(q in QOPS for q in challenge.qop):
            continue
        if best is None or _strength(challenge) > _strength(best):
            best = challenge
    return best


def answer_challenge(
    challenge: str | Challenge,
    method: str,
    uri: str,
    username: str,
    password: str,
    nc: int = 1,
    cnonce: str | None = None,
    body: bytes = b"",
) -> str:
    """An Authorization / Proxy-Authorization value answering ``challenge``.

    ``qop=auth`` is used when offered, else ``auth-int``; without qop the
    RFC 2069 form is sent. ``cnonce`` defaults to a fresh random value.
    Raises SipParseError for a challenge that is malformed or cannot be answered.
    """
    if isinstance(challenge, str):
        challenge = parse_challenge(challenge)
    algorithm = canonical_algorithm(challenge.algorithm)
    if algorithm is None:
        raise SipParseError(f"unsupported digest algorithm {challenge.algorithm!r}")
    qop = next((q for q in QOPS if q in challenge.qop), None)
    if challenge.qop and qop is None:
        raise SipParseError(f"no supported qop in {challenge.qop!r}")
    if qop is not None or algorithm.endswith("-sess"):
        cnonce = cnonce or _encode(os.urandom(12))
    else:
        cnonce = None
    count = f"{nc:08x}" if qop is not None else None
    response = digest_response(
        ha1(username, challenge.realm, password, algorithm),
        challenge.nonce,
        method,
        uri,
        algorithm,
        qop,
        count,
        cnonce,
        body,
    )
    return Credentials(
        username=username,
        realm=challenge.realm,
        nonce=challenge.nonce,
        uri=uri,
        response=response,
        algorithm=algorithm,
        cnonce=cnonce,
        opaque=challenge.opaque,
        qop=qop,
        nc=count,
    ).to_header()
