"""Digest authentication of SIP requests: challenge, look the user up, verify, answer.

:class:`RequestAuthenticator` glues the sans-IO digest code
(:mod:`pbxd.sip.digest`), the user backends (:mod:`pbxd.hooks.user_backend`)
and the brute-force guard (:mod:`pbxd.registrar.guard`) to a server
transaction. The registrar uses it for REGISTER (401/WWW-Authenticate) and the
call layer for INVITE and the like (407/Proxy-Authenticate).

What an attacker can learn is kept to nothing (issue 9): a request without
credentials is challenged whoever it names, and a wrong answer for a user the
store does not know gets the same answer as a wrong password for one it does.
The backend is only asked once the credentials are at least shaped right
(a nonce pbxd issued, an algorithm it offered), so garbage costs no lookup.
"""

from __future__ import annotations

import enum
import os
from collections import Counter
from pathlib import Path

import attrs
from twisted.internet import defer
from twisted.logger import Logger

from pbxd.hooks.user_backend import LookupStatus, UserBackend, UserLookup, UserRecord
from pbxd.registrar.guard import AuthGuard
from pbxd.sip.digest import (
    AuthOutcome,
    Credentials,
    DigestAuthenticator,
    canonical_algorithm,
    find_credentials,
)
from pbxd.sip.errors import SipParseError
from pbxd.sip.message import Request
from pbxd.sip.transaction import ServerTransaction

log = Logger(namespace="pbxd.registrar.auth")

# How long a client is told to wait when the user backend cannot answer.
RETRY_AFTER_SECONDS = 30

# The name the store-backed backend is built with. Its "not found" is hidden
# behind the wrong-password answer; an HTTP backend's explicit 403/404 is the
# operator's answer and is passed on (after the digest step, never before).
STATIC_BACKEND = "static"

NONCE_KEY_FILE = "nonce.key"
_NONCE_KEY_BYTES = 32


def load_nonce_secret(data_dir: Path, configured: str | None = None) -> bytes:
    """The secret nonces are signed with: the configured one, else ``data_dir/nonce.key``.

    The file is made once (32 random bytes, hex, mode 0600) so that nonces
    handed out before a restart still verify after it, and a phone in the
    middle of a registration is not sent round again.
    """
    if configured is not None:
        return configured.encode("utf-8")
    path = data_dir / NONCE_KEY_FILE
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        secret = bytes.fromhex(path.read_text(encoding="ascii").strip())
        if len(secret) < 16:
            raise ValueError(f"{path} holds {len(secret)} bytes; a nonce secret needs at least 16")
        return secret
    secret = os.urandom(_NONCE_KEY_BYTES)
    with os.fdopen(fd, "w", encoding="ascii") as file:
        file.write(secret.hex() + "\n")
    log.info("created the nonce secret {path}", path=str(path))
    return secret


@attrs.frozen
class AuthenticatedUser:
    """Who a request was authenticated as, and what the backend said about them."""

    username: str
    realm: str
    algorithm: str
    record: UserRecord
    backend: str


class Refusal(enum.Enum):
    """Why authentication did not let a request through (for counters and logs)."""

    CHALLENGED = "challenged"  # no credentials: 401/407 sent
    BLOCKED = "blocked"  # the guard has banned the source or the user
    FAILED = "failed"  # wrong password or unknown user
    STALE = "stale"
    INVALID = "invalid"  # nonce/opaque not ours, replayed nc, algorithm not offered
    MALFORMED = "malformed"  # 400
    REFUSED = "refused"  # the backend said 403/404
    UNAVAILABLE = "unavailable"  # the backend could not answer: 503


class RequestAuthenticator:
    """Authenticates requests with Digest for one realm, answering them when it refuses.

    ``failure_status`` is what a wrong password (or an unknown user) gets:
    403, or 401 to challenge again (some phones only ask their user for a new
    password after a 401). ``counts`` counts outcomes for monitoring.
    """

    def __init__(
        self,
        core,  # type: ignore[no-untyped-def]  # pbxd.core.SipCore
        backends: UserBackend,
        authenticator: DigestAuthenticator,
        guard: AuthGuard,
        failure_status: int = 403,
    ) -> None:
        if failure_status not in (401, 403):
            raise ValueError(f"failure_status must be 401 or 403, not {failure_status}")
        self.core = core
        self.backends = backends
        self.authenticator = authenticator
        self.guard = guard
        self.failure_status = failure_status
        self.counts: Counter[str] = Counter()

    @property
    def realm(self) -> str:
        return self.authenticator.realm

    def authenticate(
        self, txn: ServerTransaction, request: Request, proxy: bool = False
    ) -> defer.Deferred[AuthenticatedUser | None]:
        """The user the request is authenticated as, or None once it has been answered.

        ``proxy`` selects Proxy-Authorization and 407 (RFC 3261 §22.3) instead
        of Authorization and 401 (§22.2). The Deferred never fails; a failure
        of ours is logged and the request answered 500.
        """
        return defer.Deferred.fromCoroutine(self._authenticate(txn, request, proxy)).addErrback(
            self._crashed, txn
        )

    def _crashed(self, failure, txn: ServerTransaction) -> None:  # type: ignore[no-untyped-def]
        log.failure("authenticating {method} from {source} failed", failure,
                    method=txn.request.method, source=str(txn.source))
        if not txn.has_final_response:
            self.core.reply(txn, 500)
        return None

    async def _authenticate(
        self, txn: ServerTransaction, request: Request, proxy: bool
    ) -> AuthenticatedUser | None:
        source = txn.source.host
        try:
            credentials = find_credentials(request, self.realm, proxy)
        except SipParseError as error:
            return self._refuse(txn, Refusal.MALFORMED, None, error.reason, status=400)
        username = credentials.username if credentials is not None else None
        if self.guard.is_blocked(source, username):
            return self._refuse(txn, Refusal.BLOCKED, username, "banned after failed attempts",
                                status=403)
        if credentials is None:
            self.counts[Refusal.CHALLENGED.value] += 1
            self._challenge(txn, proxy)
            return None
        # The backend is asked from inside verify, which asks for the HA1 only
        # once everything before it is right: garbage costs no lookup. A
        # backend that answers at once (the in-memory directory, a cached
        # HTTP answer) lets this one pass decide; otherwise the pass ends as
        # "unknown user", and the answer, once in, is verified in a second.
        asked: list[defer.Deferred[UserLookup]] = []
        answered: list[UserLookup] = []

        def ha1_now(username: str, realm: str, algorithm: str) -> str | None:
            if not asked:
                pending = self.backends.lookup(credentials.username, self.realm, request.uri)
                asked.append(pending.addCallback(_kept, answered))
            record = answered[0].user if answered else None
            return record.ha1_for(algorithm) if record is not None else None

        first = self.authenticator.verify(request, credentials, ha1_now)
        if not asked:
            return self._outcome(txn, credentials, first.outcome, first.reason, proxy, None)
        decided = bool(answered)
        lookup = answered[0] if decided else await asked[0]
        if lookup.status is LookupStatus.UNAVAILABLE:
            return self._refuse(txn, Refusal.UNAVAILABLE, username,
                                f"user backend {lookup.backend}: {lookup.reason} {lookup.message}",
                                status=503, retry_after=True)
        if lookup.status is not LookupStatus.FOUND and lookup.backend != STATIC_BACKEND:
            # The operator's API said no, for a request that did answer our
            # challenge: its 403/404 is the answer (rustpbx-api-integration §1.2).
            self.guard.record_failure(source, username)
            status = lookup.sip_status or 403
            return self._refuse(txn, Refusal.REFUSED, username,
                                f"user backend {lookup.backend}: {lookup.reason} {lookup.message}",
                                status=status)
        result = first
        if not decided:
            record = lookup.user
            result = self.authenticator.verify(
                request, credentials,
                (lambda name, realm, algorithm: record.ha1_for(algorithm)) if record else _no_user,
            )
        return self._outcome(txn, credentials, result.outcome, result.reason or lookup.reason,
                             proxy, lookup)

    def _outcome(
        self,
        txn: ServerTransaction,
        credentials: Credentials,
        outcome: AuthOutcome,
        reason: str,
        proxy: bool,
        lookup: UserLookup | None,
    ) -> AuthenticatedUser | None:
        source = txn.source.host
        username = credentials.username
        if outcome is AuthOutcome.OK:
            assert lookup is not None and lookup.user is not None
            self.guard.record_success(source, username)
            self.counts["ok"] += 1
            algorithm = canonical_algorithm(credentials.algorithm) or "MD5"
            log.debug("authenticated {user} from {source} with {algorithm} ({backend})",
                      user=username, source=str(txn.source), algorithm=algorithm,
                      backend=lookup.backend)
            return AuthenticatedUser(username, self.realm, algorithm, lookup.user, lookup.backend)
        if outcome.is_failure:
            # Wrong password and unknown user: one answer for both, so that
            # the response says nothing about which extensions exist.
            self.guard.record_failure(source, username)
            self._log(txn, Refusal.FAILED, username, "wrong password or unknown user")
            self.counts[Refusal.FAILED.value] += 1
            if self.failure_status == 401:
                self._challenge(txn, proxy)
            else:
                self.core.reply(txn, 403)
            return None
        if outcome is AuthOutcome.STALE_NONCE:
            # RFC 7616 §3.3: the password was right; the client may retry with
            # the new nonce without asking its user.
            self._log(txn, Refusal.STALE, username, "stale nonce")
            self.counts[Refusal.STALE.value] += 1
            self._challenge(txn, proxy, stale=True)
            return None
        if outcome in (AuthOutcome.URI_MISMATCH, AuthOutcome.BAD_REQUEST):
            # RFC 2617 §3.2.2.5: a digest-uri that is not the Request-URI is a bad request.
            return self._refuse(txn, Refusal.MALFORMED, username, reason or outcome.value,
                                status=400)
        # Invalid or foreign nonce, replayed nonce count, algorithm or realm
        # not offered: nothing was learnt about the password, so challenge afresh.
        self._log(txn, Refusal.INVALID, username, reason or outcome.value)
        self.counts[Refusal.INVALID.value] += 1
        self._challenge(txn, proxy)
        return None

    # -- answering ------------------------------------------------------------

    def _challenge(self, txn: ServerTransaction, proxy: bool, stale: bool = False) -> None:
        status = 407 if proxy else 401
        header = "Proxy-Authenticate" if proxy else "WWW-Authenticate"
        response = self.core.response(txn.request, status)
        for value in self.authenticator.challenge(stale=stale):
            response.add(header, value)
        txn.respond(response)

    def _refuse(
        self,
        txn: ServerTransaction,
        refusal: Refusal,
        username: str | None,
        reason: str,
        *,
        status: int,
        retry_after: bool = False,
    ) -> None:
        self._log(txn, refusal, username, reason)
        self.counts[refusal.value] += 1
        if retry_after:
            self.core.reply(txn, status, Retry_After=str(RETRY_AFTER_SECONDS))
        else:
            self.core.reply(txn, status)
        return None

    @staticmethod
    def _log(txn: ServerTransaction, refusal: Refusal, username: str | None, reason: str) -> None:
        log.info(
            "auth {refusal} for {method} user {user} from {source}: {reason}",
            refusal=refusal.value,
            method=txn.request.method,
            user=username,
            source=str(txn.source),
            source_ip=txn.source.host,
            reason=reason.strip(),
        )


def _no_user(username: str, realm: str, algorithm: str) -> None:
    return None


def _kept(lookup: UserLookup, answers: list[UserLookup]) -> UserLookup:
    answers.append(lookup)
    return lookup


__all__ = [
    "AuthenticatedUser",
    "NONCE_KEY_FILE",
    "Refusal",
    "RequestAuthenticator",
    "STATIC_BACKEND",
    "load_nonce_secret",
]
