"""Who is asking: API tokens (``Authorization: Bearer``) and other schemes, and scopes.

Every request that reaches a tree has been through
:meth:`Authenticator.authenticate` once (:mod:`pbxd.web.app` does it): the
result, a :class:`Principal` or None, is kept on the request and read with
:func:`principal_of`. A route that needs a scope calls :func:`require`
(or is decorated with :func:`requires`): 401 without credentials (or with
wrong ones), 403 with credentials whose scopes are too low.

Scopes are ordered: ``admin`` includes ``write``, which includes ``read``.

Tokens come from ``http.tokens`` (name, token, scopes). With no token
configured the API is open: every request is the anonymous principal with
every scope. That is only allowed on a loopback address unless the
operator sets ``http.allow_unauthenticated`` (pbxd.config checks it), so an
open API is one only local processes reach.

Other schemes (the console's session cookie) are added with
:meth:`Authenticator.add_scheme`: a function ``(request) -> Principal |
None | INVALID`` tried before the bearer token. Tokens are compared in
constant time, as SHA-256 digests, against every configured token.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
from collections.abc import Callable, Iterable
from typing import Any, Final, TypeVar

import attrs
from twisted.web.iweb import IRequest
from zope.interface import Interface

from pbxd.web.errors import HttpError

READ: Final = "read"
WRITE: Final = "write"
ADMIN: Final = "admin"
SCOPES: Final = (READ, WRITE, ADMIN)  # each includes the ones before it

REALM = "pbxd"


def _check_scopes(instance: Any, attribute: Any, value: frozenset[str]) -> None:
    unknown = set(value) - set(SCOPES)
    if unknown:
        raise ValueError(f"unknown scopes {sorted(unknown)}; scopes are {', '.join(SCOPES)}")


@attrs.frozen
class Principal:
    """An authenticated caller: ``name`` (token name, user name or "anonymous"),
    its ``scopes`` and the ``scheme`` that vouched for it ("token", "session", "open")."""

    name: str
    scopes: frozenset[str] = attrs.field(converter=frozenset, validator=_check_scopes)
    scheme: str = "token"

    def allows(self, scope: str) -> bool:
        """Whether this principal may do what ``scope`` needs (admin ⊇ write ⊇ read)."""
        if scope not in SCOPES:
            raise ValueError(f"unknown scope {scope!r}")
        rank = SCOPES.index(scope)
        return any(SCOPES.index(mine) >= rank for mine in self.scopes)


ANONYMOUS = Principal("anonymous", frozenset(SCOPES), "open")


class _Invalid:
    """Credentials were presented and are wrong (not the same as none at all)."""

    def __repr__(self) -> str:
        return "INVALID"


INVALID: Final = _Invalid()

Scheme = Callable[[IRequest], "Principal | None | _Invalid"]


class IPrincipal(Interface):
    """The request component holding what :meth:`Authenticator.authenticate` found."""


@attrs.frozen
class _Token:
    name: str
    digest: bytes = attrs.field(repr=False)
    scopes: frozenset[str]


def _digest(secret: bytes) -> bytes:
    return hashlib.sha256(secret).digest()


class Authenticator:
    """Finds the principal of a request (see the module docstring).

    ``tokens`` are ``(name, token, scopes)`` triples, or objects with those
    attributes (``http.tokens`` entries).
    """

    def __init__(self, tokens: Iterable[Any] = ()) -> None:
        self._tokens: list[_Token] = []
        self._schemes: list[Scheme] = []
        self.set_tokens(tokens)

    def set_tokens(self, tokens: Iterable[Any]) -> None:
        """Replace the tokens (a config reload); requests in flight keep their principal."""
        loaded = []
        for entry in tokens:
            name, token, scopes = (entry if isinstance(entry, tuple)
                                   else (entry.name, entry.token, entry.scopes))
            _check_scopes(None, None, frozenset(scopes))
            loaded.append(_Token(name, _digest(token.encode("utf-8")), frozenset(scopes)))
        self._tokens = loaded

    @property
    def open(self) -> bool:
        """No token is configured: every request is :data:`ANONYMOUS`."""
        return not self._tokens

    def add_scheme(self, scheme: Scheme) -> None:
        """Try ``scheme(request)`` before bearer tokens (None: not its kind of
        credentials; INVALID: its kind, but wrong or expired)."""
        self._schemes.append(scheme)

    def authenticate(self, request: IRequest) -> Principal | None | _Invalid:
        """The principal of ``request``: None without credentials, INVALID with wrong ones."""
        for scheme in self._schemes:
            found = scheme(request)
            if found is not None:
                return found
        if self.open:
            return ANONYMOUS
        header = request.getHeader(b"authorization")
        if header is None:
            return None
        kind, _, credentials = header.strip().partition(b" ")
        if kind.lower() != b"bearer" or not credentials.strip():
            return INVALID
        return self._token(credentials.strip())

    def _token(self, presented: bytes) -> Principal | _Invalid:
        digest = _digest(presented)
        found: _Token | None = None
        for token in self._tokens:  # no early exit: the time does not say which one matched
            if hmac.compare_digest(digest, token.digest):
                found = token
        if found is None:
            return INVALID
        return Principal(found.name, found.scopes, "token")


def remember(request: IRequest, found: Principal | None | _Invalid) -> None:
    """Keep what authentication found on the request (the HTTP root does this)."""
    request.setComponent(IPrincipal, found)  # type: ignore[attr-defined]


def principal_of(request: IRequest) -> Principal | None:
    """The request's principal; None when it has no valid credentials."""
    found = request.getComponent(IPrincipal)  # type: ignore[attr-defined]
    return found if isinstance(found, Principal) else None


def require(request: IRequest, scope: str) -> Principal:
    """The request's principal if it has ``scope``; else HttpError 401 or 403."""
    found = request.getComponent(IPrincipal)  # type: ignore[attr-defined]
    if isinstance(found, Principal):
        if found.allows(scope):
            return found
        raise HttpError(403, f"the {scope} scope is needed; {found.name} has"
                             f" {', '.join(s for s in SCOPES if s in found.scopes) or 'none'}")
    if found is INVALID:
        raise HttpError(401, "the credentials are not valid",
                        {"WWW-Authenticate": f'Bearer realm="{REALM}", error="invalid_token"'})
    raise HttpError(401, "authentication is needed: Authorization: Bearer <token>",
                    {"WWW-Authenticate": f'Bearer realm="{REALM}"'})


F = TypeVar("F", bound=Callable[..., Any])


def requires(scope: str) -> Callable[[F], F]:
    """Decorate a Klein route (a function or a method) that needs ``scope``.

    Put it under ``@app.route``: the request is the first argument after
    ``self`` when there is one.
    """
    if scope not in SCOPES:
        raise ValueError(f"unknown scope {scope!r}")

    def decorate(handler: F) -> F:
        @functools.wraps(handler)
        def checked(*args: Any, **kwargs: Any) -> Any:
            request = next(arg for arg in args if IRequest.providedBy(arg))
            require(request, scope)
            return handler(*args, **kwargs)

        return checked  # type: ignore[return-value]

    return decorate


__all__ = [
    "ADMIN",
    "ANONYMOUS",
    "INVALID",
    "READ",
    "SCOPES",
    "WRITE",
    "Authenticator",
    "IPrincipal",
    "Principal",
    "principal_of",
    "remember",
    "require",
    "requires",
]
