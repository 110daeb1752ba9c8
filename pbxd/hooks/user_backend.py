"""Where the registrar learns a user's credentials: the store, an HTTP API, or a chain.

The HTTP backend is the "User Backend" of rustpbx-api-integration.md §1.2: a
GET (or a POST form) with the username and realm under configurable field
names, plus the request URI. A 200 JSON object is the user; 403 and 404 are
the API's "no" (with an optional ``{"reason", "message"}`` body); anything
else, a body that is not a usable user, a timeout or a refused connection
means the backend is unavailable, which is not the same as "no such user".
Besides the credentials, an answer may carry the toll-fraud guards of the
extension (``max_calls``, ``dial_patterns``, checked as the store checks them).

Every backend has ``lookup(username, realm, request_uri) -> Deferred[UserLookup]``
and never fails: the outcome is in the UserLookup.
"""

from __future__ import annotations

import enum
import json
import re
from collections import OrderedDict
from typing import Any, Mapping, Protocol, Sequence

import attrs
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from pbxd.hooks.client import WebhookClient, WebhookError
from pbxd.sip.digest import BASE_ALGORITHMS, ha1
from pbxd.store import Extension, NotFoundError, Store, StoreError
from pbxd.store.models import check_dial_patterns, check_max_calls

log = Logger()

_HEX_LENGTHS = {32: "MD5", 64: "SHA-256"}
_HEX = re.compile(r"[0-9a-fA-F]+")


class LookupStatus(enum.Enum):
    FOUND = "found"
    NOT_FOUND = "not_found"
    FORBIDDEN = "forbidden"
    UNAVAILABLE = "unavailable"


# What the SIP request is answered with when the lookup does not find a
# usable user (issue 3: a backend's 403/404 becomes 403/404; a backend that
# cannot answer makes the service unavailable, not the user unknown).
_SIP_STATUS = {
    LookupStatus.NOT_FOUND: 404,
    LookupStatus.FORBIDDEN: 403,
    LookupStatus.UNAVAILABLE: 503,
}


@attrs.frozen
class UserRecord:
    """A user's credentials for one realm: a plain password, HA1s, or both.

    ``ha1s`` maps a base digest algorithm (``MD5``, ``SHA-256``) to the hex
    H(username:realm:password). A plain password can answer any algorithm.
    """

    username: str
    realm: str
    password: str | None = attrs.field(default=None, repr=False)
    ha1s: Mapping[str, str] = attrs.field(factory=dict, repr=False, hash=False)
    display_name: str = ""
    email: str = ""
    allow_external: bool = True
    allow_guest_calls: bool = False
    id: str | None = None
    # Toll-fraud guards (issue 9): calls the user may place at once (0: no
    # limit), and regular expressions one of which must match the whole
    # number sent to a carrier (none: any number).
    max_calls: int = 0
    dial_patterns: tuple[str, ...] = ()

    def may_dial(self, number: str) -> bool:
        """Whether ``number`` (as the carrier would get it) is one this user may call out to."""
        return not self.dial_patterns or any(re.fullmatch(p, number) for p in self.dial_patterns)

    def ha1_for(self, algorithm: str) -> str | None:
        """The HA1 for a base algorithm, or None if this record cannot answer it.

        Shaped for :data:`pbxd.sip.digest.HA1Lookup` once the lookup is done.
        """
        stored = self.ha1s.get(algorithm)
        if stored is not None:
            return stored.lower()
        if self.password is not None and algorithm in BASE_ALGORITHMS:
            return ha1(self.username, self.realm, self.password, algorithm)
        return None

    @property
    def algorithms(self) -> tuple[str, ...]:
        """The base algorithms this record can verify."""
        if self.password is not None:
            return BASE_ALGORITHMS
        return tuple(a for a in BASE_ALGORITHMS if a in self.ha1s)


@attrs.frozen
class UserLookup:
    """The outcome of a lookup. ``reason``/``message`` are the backend's words
    (or ours) for a refusal or a failure; ``backend`` names who answered."""

    status: LookupStatus
    user: UserRecord | None = None
    reason: str = ""
    message: str = ""
    backend: str = ""

    @property
    def found(self) -> bool:
        return self.status is LookupStatus.FOUND

    @property
    def sip_status(self) -> int | None:
        """The SIP final status for a request whose user was not found, None if found."""
        return _SIP_STATUS.get(self.status)


class UserBackend(Protocol):
    def lookup(
        self, username: str, realm: str, request_uri: str | None = None
    ) -> defer.Deferred[UserLookup]: ...


def extension_lookup(extension: Extension | None, realm: str, backend: str) -> UserLookup:
    """What the ``static`` backend answers for an extension (None: no such number) in ``realm``."""
    if extension is None:
        return UserLookup(LookupStatus.NOT_FOUND, reason="not_found", backend=backend)
    if extension.realm != realm:
        # Its HA1s are for another realm: they cannot verify this one.
        return UserLookup(LookupStatus.NOT_FOUND, reason="other_realm", backend=backend)
    if not extension.enabled:
        return UserLookup(LookupStatus.FORBIDDEN, reason="disabled",
                          message="extension disabled", backend=backend)
    user = UserRecord(
        username=extension.number,
        realm=extension.realm,
        ha1s={"MD5": extension.ha1_md5, "SHA-256": extension.ha1_sha256},
        display_name=extension.name,
        email=extension.email,
        allow_external=extension.allow_external,
        id=extension.number,
        max_calls=extension.max_calls,
        dial_patterns=extension.dial_patterns,
    )
    return UserLookup(LookupStatus.FOUND, user=user, backend=backend)


class StaticBackend:
    """The extensions table of the store."""

    def __init__(self, store: Store, name: str = "static") -> None:
        self.store = store
        self.name = name

    def lookup(
        self, username: str, realm: str, request_uri: str | None = None
    ) -> defer.Deferred[UserLookup]:
        return defer.Deferred.fromCoroutine(self._lookup(username, realm))

    async def _lookup(self, username: str, realm: str) -> UserLookup:
        try:
            extension = await self.store.get_extension(username)
        except NotFoundError:
            return UserLookup(LookupStatus.NOT_FOUND, reason="not_found", backend=self.name)
        except StoreError as e:
            log.error("user lookup {username}: store failed: {error}", username=username, error=e)
            return UserLookup(LookupStatus.UNAVAILABLE, reason="store_error", message=str(e),
                              backend=self.name)
        return extension_lookup(extension, realm, self.name)


class _BadAnswer(ValueError):
    pass


def _optional(body: Mapping[str, Any], key: str, kind: type | tuple[type, ...], default: Any) -> Any:
    value = body.get(key, default)
    if value is None:
        return default
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise _BadAnswer(f"{key!r} has the wrong type")
    return value


class HttpUserBackend:
    """rustpbx-api-integration.md §1.2 over :class:`WebhookClient`.

    ``method`` is GET (fields in the query) or POST (an urlencoded form).
    ``password_format`` says how to read the answer's ``password``: ``plain``,
    ``ha1`` (32 hex digits MD5, 64 SHA-256), or ``auto``, which takes 32 or 64
    hex digits as an HA1 and anything else as a plain password; explicit
    ``ha1_md5``/``ha1_sha256`` fields are always read. ``cache_ttl`` seconds
    (0: no cache) keeps found, not-found and forbidden answers per
    (username, realm), never failures; at most ``max_cache_entries``, oldest
    out first. Concurrent lookups of one user share one request.
    """

    def __init__(
        self,
        client: WebhookClient,
        url: str,
        *,
        method: str = "GET",
        username_field: str = "username",
        realm_field: str = "realm",
        request_uri_field: str = "request_uri",
        headers: Mapping[str, str] | None = None,
        timeout: float = 5.0,
        retries: int = 1,
        cache_ttl: float = 0.0,
        max_cache_entries: int = 10000,
        password_format: str = "auto",
        clock: IReactorTime | None = None,
        name: str = "http",
    ) -> None:
        if method.upper() not in ("GET", "POST"):
            raise ValueError(f"user backend method must be GET or POST, not {method!r}")
        if password_format not in ("auto", "plain", "ha1"):
            raise ValueError(f"password_format must be auto, plain or ha1, not {password_format!r}")
        if cache_ttl < 0 or max_cache_entries < 1:
            raise ValueError("cache_ttl must be >= 0 and max_cache_entries >= 1")
        self.client = client
        self.url = url
        self.method = method.upper()
        self.username_field = username_field
        self.realm_field = realm_field
        self.request_uri_field = request_uri_field
        self.headers = dict(headers or {})
        self.timeout = timeout
        self.retries = retries
        self.cache_ttl = cache_ttl
        self.max_cache_entries = max_cache_entries
        self.password_format = password_format
        self.clock = clock if clock is not None else client.reactor
        self.name = name
        self._cache: OrderedDict[tuple[str, str], tuple[float, UserLookup]] = OrderedDict()
        self._waiting: dict[tuple[str, str], list[defer.Deferred[UserLookup]]] = {}

    def lookup(
        self, username: str, realm: str, request_uri: str | None = None
    ) -> defer.Deferred[UserLookup]:
        key = (username, realm)
        cached = self._cache.get(key)
        if cached is not None:
            if cached[0] > self.clock.seconds():
                return defer.succeed(cached[1])
            del self._cache[key]
        waiter: defer.Deferred[UserLookup] = defer.Deferred()
        if key in self._waiting:
            self._waiting[key].append(waiter)
            return waiter
        self._waiting[key] = [waiter]
        defer.Deferred.fromCoroutine(self._ask(username, realm, request_uri)).addBoth(
            self._answer, key)
        return waiter

    def _answer(self, result: UserLookup, key: tuple[str, str]) -> None:
        if self.cache_ttl > 0 and result.status is not LookupStatus.UNAVAILABLE:
            self._cache[key] = (self.clock.seconds() + self.cache_ttl, result)
            self._cache.move_to_end(key)
            while len(self._cache) > self.max_cache_entries:
                self._cache.popitem(last=False)
        for waiter in self._waiting.pop(key):
            waiter.callback(result)

    async def _ask(self, username: str, realm: str, request_uri: str | None) -> UserLookup:
        fields = {self.username_field: username, self.realm_field: realm}
        if request_uri is not None:
            fields[self.request_uri_field] = request_uri
        try:
            if self.method == "GET":
                response = await self.client.get(self.url, fields, self.headers, self.timeout,
                                                  self.retries)
            else:
                response = await self.client.post_form(self.url, fields, self.headers,
                                                       self.timeout, self.retries)
        except WebhookError as e:
            return self._unavailable(username, "unreachable", e.reason)
        except Exception as e:  # a failure of ours must not fail the SIP request's handling
            log.failure("user backend {url}: lookup of {username} failed", url=self.url,
                        username=username)
            return self._unavailable(username, "error", str(e))

        if response.status in (403, 404):
            status = LookupStatus.FORBIDDEN if response.status == 403 else LookupStatus.NOT_FOUND
            reason, message = self._refusal(response.body)
            return UserLookup(status, reason=reason or status.value, message=message,
                              backend=self.name)
        if response.status != 200:
            return self._unavailable(username, "bad_status", f"HTTP {response.status}")
        try:
            body = response.json()
            if not isinstance(body, dict):
                raise _BadAnswer("the answer is not a JSON object")
            return self._user(body, username, realm)
        except (ValueError, UnicodeDecodeError) as e:
            return self._unavailable(username, "bad_response", str(e))

    def _unavailable(self, username: str, reason: str, message: str) -> UserLookup:
        log.warn("user backend {url} unavailable for {username}: {reason}: {message}",
                 url=self.url, username=username, reason=reason, message=message)
        return UserLookup(LookupStatus.UNAVAILABLE, reason=reason, message=message,
                          backend=self.name)

    @staticmethod
    def _refusal(body: bytes) -> tuple[str, str]:
        try:
            data = json.loads(body.decode("utf-8"))
        except (ValueError, UnicodeDecodeError):
            return "", ""
        if not isinstance(data, dict):
            return "", ""
        reason, message = data.get("reason"), data.get("message")
        return (reason if isinstance(reason, str) else "",
                message if isinstance(message, str) else "")

    def _user(self, body: Mapping[str, Any], username: str, realm: str) -> UserLookup:
        if _optional(body, "enabled", bool, True) is False:
            return UserLookup(LookupStatus.FORBIDDEN, reason="disabled",
                              message="user disabled", backend=self.name)
        password = _optional(body, "password", str, None)
        ha1s: dict[str, str] = {}
        for key, algorithm in (("ha1_md5", "MD5"), ("ha1_sha256", "SHA-256")):
            value = _optional(body, key, str, None)
            if value is not None:
                if len(value) != {"MD5": 32, "SHA-256": 64}[algorithm] or not _HEX.fullmatch(value):
                    raise _BadAnswer(f"{key!r} is not a hex digest")
                ha1s[algorithm] = value.lower()
        if password is not None and self.password_format != "plain":
            looks_like_ha1 = len(password) in _HEX_LENGTHS and _HEX.fullmatch(password)
            if looks_like_ha1:
                ha1s.setdefault(_HEX_LENGTHS[len(password)], password.lower())
                password = None
            elif self.password_format == "ha1":
                raise _BadAnswer("'password' is not an HA1 (32 or 64 hex digits)")
        if password == "":
            password = None
        if password is None and not ha1s:
            raise _BadAnswer("the answer has no password or HA1")
        user_id = _optional(body, "id", (str, int), None)
        try:
            # A limit or pattern the backend got wrong is a broken answer, not
            # "no limit": a user whose guards cannot be read is not let out.
            max_calls = check_max_calls(_optional(body, "max_calls", int, 0))
            dial_patterns = check_dial_patterns(_optional(body, "dial_patterns", list, []))
        except (TypeError, ValueError) as e:
            raise _BadAnswer(str(e)) from None
        user = UserRecord(
            username=username,
            realm=realm,
            password=password,
            ha1s=ha1s,
            display_name=_optional(body, "display_name", str, ""),
            email=_optional(body, "email", str, ""),
            allow_external=_optional(body, "allow_external", bool, True),
            allow_guest_calls=_optional(body, "allow_guest_calls", bool, False),
            id=None if user_id is None else str(user_id),
            max_calls=max_calls,
            dial_patterns=dial_patterns,
        )
        return UserLookup(LookupStatus.FOUND, user=user, backend=self.name)


class ChainedBackend:
    """Backends asked in order: the first that knows the user (found or
    forbidden) answers. Not found everywhere is NOT_FOUND; if a backend was
    unavailable on the way it is UNAVAILABLE, since that one might have known."""

    def __init__(self, backends: Sequence[UserBackend]) -> None:
        if not backends:
            raise ValueError("a chain needs at least one backend")
        self.backends = tuple(backends)

    def lookup(
        self, username: str, realm: str, request_uri: str | None = None
    ) -> defer.Deferred[UserLookup]:
        return defer.Deferred.fromCoroutine(self._lookup(username, realm, request_uri))

    async def _lookup(self, username: str, realm: str, request_uri: str | None) -> UserLookup:
        unavailable: UserLookup | None = None
        not_found: UserLookup | None = None
        for backend in self.backends:
            result = await backend.lookup(username, realm, request_uri)
            if result.status in (LookupStatus.FOUND, LookupStatus.FORBIDDEN):
                return result
            if result.status is LookupStatus.UNAVAILABLE:
                unavailable = unavailable or result
            else:
                not_found = not_found or result
        return unavailable or not_found  # type: ignore[return-value]


__all__ = [
    "ChainedBackend",
    "HttpUserBackend",
    "LookupStatus",
    "StaticBackend",
    "UserBackend",
    "UserLookup",
    "UserRecord",
    "extension_lookup",
]
