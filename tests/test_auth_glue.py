"""RequestAuthenticator: challenges, outcomes, backend answers and the guard, through a
real SIP core and transaction layer on a task.Clock. The transport only records what
is sent; the user backend is a dictionary (both are collaborators, not the thing tested).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher

from pbxd.core import LocalDomains, SipCore
from pbxd.hooks.user_backend import LookupStatus, UserLookup, UserRecord
from pbxd.registrar.auth import (
    STATIC_BACKEND,
    AuthenticatedUser,
    RequestAuthenticator,
    load_nonce_secret,
)
from pbxd.registrar.guard import AuthGuard
from pbxd.sip.digest import DigestAuthenticator, NonceManager, answer_challenge, parse_challenge
from pbxd.sip.message import Request, Response, parse_message
from pbxd.sip.transaction import new_branch
from pbxd.transport import Target
from tests.transaction_support import RecordingTransport

REALM = "pbx.test"
PHONE = Target("udp", "192.0.2.10", 5060)
OTHER_PHONE = Target("udp", "198.51.100.7", 5060)


class DictBackend:
    """Users by name; ``status`` makes every lookup answer that instead."""

    def __init__(self, users: dict[str, str], name: str = STATIC_BACKEND) -> None:
        self.users = users
        self.name = name
        self.status: LookupStatus | None = None
        self.lookups: list[str] = []

    def lookup(self, username: str, realm: str, request_uri: str | None = None):  # type: ignore[no-untyped-def]
        self.lookups.append(username)
        if self.status is not None:
            return defer.succeed(UserLookup(self.status, reason="told", backend=self.name))
        password = self.users.get(username)
        if password is None:
            return defer.succeed(UserLookup(LookupStatus.NOT_FOUND, backend=self.name))
        user = UserRecord(username, realm, password=password)
        return defer.succeed(UserLookup(LookupStatus.FOUND, user=user, backend=self.name))


class Rig:
    def __init__(self, failure_status: int = 403, backend_name: str = STATIC_BACKEND,
                 algorithms: tuple[str, ...] = ("MD5", "SHA-256")) -> None:
        self.clock = Clock()
        self.clock.advance(1_000_000)
        self.transport = RecordingTransport(self.clock)
        self.core = SipCore(self.clock, self.transport, LocalDomains([REALM], []))
        self.backend = DictBackend({"1001": "right-1001"}, backend_name)
        self.guard = AuthGuard(self.clock, max_failures=3, window=60, ban_time=300)
        digest = DigestAuthenticator(NonceManager(b"k" * 32, self.clock, lifetime=30), REALM,
                                     algorithms)
        self.auth = RequestAuthenticator(self.core, self.backend, digest, self.guard,
                                         failure_status)
        self.results: list[AuthenticatedUser | None] = []
        self.core.register("REGISTER", self)
        self.core.register("INVITE", self)
        self.proxy = False

    def handle_request(self, txn, request) -> None:  # type: ignore[no-untyped-def]
        self.auth.authenticate(txn, request, proxy=self.proxy).addCallback(self.results.append)

    def send(self, request: Request, source: Target = PHONE) -> Response | None:
        """Deliver a request; the response pbxd sent for it, None if it sent none
        (authenticated: answering is then the caller's business)."""
        before = len(self.transport.sent)
        self.core.layer.receive(parse_message(request.to_bytes()), source)
        sent = self.transport.sent[before:]
        assert len(sent) <= 1, sent
        if not sent:
            assert isinstance(self.results[-1], AuthenticatedUser)
            return None
        message = sent[0].message
        assert isinstance(message, Response) and self.results[-1] is None
        return message

    def challenge(self, user: str, source: Target = PHONE, algorithm: str = "MD5") -> str:
        response = self.send(register(user), source)
        assert response is not None and response.status == (407 if self.proxy else 401)
        values = response.get_all("Proxy-Authenticate" if self.proxy else "WWW-Authenticate")
        return next(v for v in values if parse_challenge(v).algorithm == algorithm)

    def login(self, user: str, password: str, *, source: Target = PHONE, algorithm: str = "MD5",
              header: str = "Authorization") -> Response | None:
        """Challenge, then answer the challenge of ``algorithm``: the response, or
        None when the request was authenticated."""
        offered = self.challenge(user, source, algorithm)
        return self.send(register(user, answer(offered, user, password), header), source)


URI = f"sip:{REALM}"


def register(user: str, credentials: str | None = None, header: str = "Authorization",
             cseq: int = 1) -> Request:
    lines = [
        f"REGISTER {URI} SIP/2.0",
        f"Via: SIP/2.0/UDP 192.0.2.10:5060;branch={new_branch()}",
        "Max-Forwards: 70",
        f"From: <sip:{user}@{REALM}>;tag=t1",
        f"To: <sip:{user}@{REALM}>",
        "Call-ID: auth-test@192.0.2.10",
        f"CSeq: {cseq} REGISTER",
        "Contact: <sip:phone@192.0.2.10>",
    ]
    if credentials is not None:
        lines.append(f"{header}: {credentials}")
    return parse_message(("\r\n".join(lines) + "\r\nContent-Length: 0\r\n\r\n").encode())  # type: ignore[return-value]


def answer(challenge: str, user: str, password: str, nc: int = 1, uri: str = URI) -> str:
    return answer_challenge(challenge, "REGISTER", uri, user, password, nc=nc)


@pytest.fixture
def rig() -> Rig:
    return Rig()


def test_no_credentials_get_one_challenge_per_algorithm(rig: Rig) -> None:
    response = rig.send(register("1001"))
    assert response.status == 401
    challenges = [parse_challenge(v) for v in response.get_all("WWW-Authenticate")]
    assert [c.algorithm for c in challenges] == ["MD5", "SHA-256"]
    assert {c.realm for c in challenges} == {REALM}
    assert len({c.nonce for c in challenges}) == 1 and challenges[0].opaque
    assert all(c.qop == ("auth",) and not c.stale for c in challenges)
    assert rig.results == [None] and rig.backend.lookups == []


def test_proxy_authentication_uses_407(rig: Rig) -> None:
    rig.proxy = True
    response = rig.send(register("1001"))
    assert response is not None and response.status == 407
    assert len(response.get_all("Proxy-Authenticate")) == 2
    assert rig.login("1001", "right-1001", header="Proxy-Authorization") is None
    # Credentials in the other header are no credentials.
    offered = rig.challenge("1001")
    assert rig.send(register("1001", answer(offered, "1001", "right-1001"))).status == 407


@pytest.mark.parametrize("algorithm", ["MD5", "SHA-256"])
def test_right_password_authenticates(algorithm: str) -> None:
    rig = Rig()
    assert rig.login("1001", "right-1001", algorithm=algorithm) is None
    user = rig.results[-1]
    assert isinstance(user, AuthenticatedUser)
    assert (user.username, user.realm, user.algorithm, user.backend) == (
        "1001", REALM, algorithm, STATIC_BACKEND)


def test_wrong_password_and_unknown_user_get_the_same_answer(rig: Rig) -> None:
    wrong = rig.login("1001", "guess")
    unknown = rig.login("9999", "guess")
    assert wrong.status == unknown.status == 403
    assert [n for _, n, _ in wrong.iter_raw()] == [n for _, n, _ in unknown.iter_raw()]
    assert rig.results == [None] * 4


def test_failure_response_401_challenges_again() -> None:
    rig = Rig(failure_status=401)
    for user in ("1001", "9999"):
        response = rig.login(user, "guess")
        assert response.status == 401
        assert not any(parse_challenge(v).stale for v in response.get_all("WWW-Authenticate"))


def test_stale_nonce_with_the_right_password_gets_stale_true(rig: Rig) -> None:
    challenge = rig.challenge("1001")
    rig.clock.advance(31)
    stale = rig.send(register("1001", answer(challenge, "1001", "right-1001")))
    assert stale is not None and stale.status == 401
    assert all(parse_challenge(v).stale for v in stale.get_all("WWW-Authenticate"))
    fresh = stale.get_all("WWW-Authenticate")[0]
    assert rig.send(register("1001", answer(fresh, "1001", "right-1001"))) is None
    # A stale nonce with a wrong password is a failure, not a hint to retry.
    rig.clock.advance(31)
    assert rig.send(register("1001", answer(fresh, "1001", "guess"))).status == 403


def test_replayed_nonce_count_gets_a_fresh_challenge(rig: Rig) -> None:
    challenge = rig.challenge("1001")
    credentials = answer(challenge, "1001", "right-1001", nc=1)
    assert rig.send(register("1001", credentials, cseq=2)) is None
    replay = rig.send(register("1001", credentials, cseq=3))  # a new transaction, same nc
    assert replay is not None and replay.status == 401
    assert not any(parse_challenge(v).stale for v in replay.get_all("WWW-Authenticate"))
    next_count = answer(challenge, "1001", "right-1001", nc=2)
    assert rig.send(register("1001", next_count, cseq=4)) is None
    assert rig.guard.failures_total == 0


def test_forged_nonce_is_challenged_without_asking_the_backend(rig: Rig) -> None:
    challenge = rig.challenge("1001")
    forged = challenge.replace(parse_challenge(challenge).nonce, "A" * 75)
    assert rig.send(register("1001", answer(forged, "1001", "right-1001"))).status == 401
    assert rig.backend.lookups == []


@pytest.mark.parametrize(
    "credentials",
    [
        'Digest username="1001", realm="pbx.test"',  # no nonce, uri, response
        'Digest username="1001" realm="pbx.test"',  # no comma
        "Digest",
    ],
)
def test_malformed_credentials_get_400(rig: Rig, credentials: str) -> None:
    response = rig.send(register("1001", credentials))
    assert response.status == 400 and rig.backend.lookups == []


def test_digest_uri_other_than_the_request_uri_gets_400(rig: Rig) -> None:
    challenge = rig.challenge("1001")
    credentials = answer(challenge, "1001", "right-1001", uri="sip:elsewhere.test")
    assert rig.send(register("1001", credentials)).status == 400


def test_unavailable_backend_gets_503_and_is_no_failure(rig: Rig) -> None:
    rig.backend.status = LookupStatus.UNAVAILABLE
    response = rig.login("1001", "right-1001")
    assert response.status == 503 and response.get("Retry-After") == "30"
    assert rig.guard.failures_total == 0


@pytest.mark.parametrize(("status", "sip"), [(LookupStatus.FORBIDDEN, 403),
                                               (LookupStatus.NOT_FOUND, 404)])
def test_an_http_backends_refusal_is_passed_on_after_the_challenge(status, sip) -> None:  # type: ignore[no-untyped-def]
    rig = Rig(backend_name="http[0]")
    rig.backend.status = status
    rig.challenge("1001")  # never before the digest step
    assert rig.backend.lookups == []
    assert rig.login("1001", "whatever").status == sip


def test_the_stores_refusal_looks_like_a_wrong_password(rig: Rig) -> None:
    rig.backend.status = LookupStatus.FORBIDDEN  # a disabled extension
    assert rig.login("1001", "right-1001").status == 403
    rig.backend.status = LookupStatus.NOT_FOUND
    assert rig.login("1001", "right-1001").status == 403


def test_brute_force_bans_the_source_and_the_user(rig: Rig) -> None:
    for _ in range(2):
        assert rig.login("9999", "guess").status == 403
    lookups = len(rig.backend.lookups)
    # The source is banned: it gets 403 for anything, unchallenged and unlooked-up,
    # even the right password for an answer it had been challenged for before.
    early = rig.challenge("1001")
    rig.login("9999", "guess")  # the third failure
    assert rig.send(register("1001")).status == 403
    assert rig.send(register("1001", answer(early, "1001", "right-1001"))).status == 403
    assert len(rig.backend.lookups) == lookups + 1
    # Another address still gets in.
    assert rig.login("1001", "right-1001", source=OTHER_PHONE) is None
    # The user 9999 is banned from everywhere: challenged (no user named yet), then refused.
    lookups = len(rig.backend.lookups)
    assert rig.login("9999", "guess", source=OTHER_PHONE).status == 403
    assert len(rig.backend.lookups) == lookups
    rig.clock.advance(301)
    assert rig.send(register("1001")).status == 401


def test_failures_are_logged_with_source_and_user(rig: Rig) -> None:
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    try:
        rig.login("1001", "guess")
    finally:
        globalLogPublisher.removeObserver(events.append)
    failed = [e for e in events if e.get("refusal") == "failed"]
    assert len(failed) == 1
    assert failed[0]["user"] == "1001" and failed[0]["source_ip"] == "192.0.2.10"
    assert rig.auth.counts["failed"] == 1 and rig.auth.counts["challenged"] == 1


# -- the nonce secret ----------------------------------------------------------------


def test_nonce_secret_is_made_once_and_kept_private(tmp_path: Path) -> None:
    first = load_nonce_secret(tmp_path)
    assert len(first) == 32
    mode = stat.S_IMODE(os.stat(tmp_path / "nonce.key").st_mode)
    assert mode == 0o600
    assert load_nonce_secret(tmp_path) == first
    assert load_nonce_secret(tmp_path, "configured-secret-123") == b"configured-secret-123"


def test_a_short_nonce_key_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "nonce.key").write_text("abcd\n")
    with pytest.raises(ValueError, match="at least 16"):
        load_nonce_secret(tmp_path)


class LaterBackend(DictBackend):
    """Answers like DictBackend, but only when ``answer_all`` is called (an HTTP backend)."""

    def __init__(self, users: dict[str, str], name: str = STATIC_BACKEND) -> None:
        super().__init__(users, name)
        self.waiting: list[tuple[defer.Deferred, UserLookup]] = []

    def lookup(self, username: str, realm: str, request_uri: str | None = None):  # type: ignore[no-untyped-def]
        answer = super().lookup(username, realm, request_uri)
        later: defer.Deferred = defer.Deferred()
        self.waiting.append((later, answer.result))
        return later

    def answer_all(self) -> None:
        waiting, self.waiting = self.waiting, []
        for later, answer in waiting:
            later.callback(answer)


def counting_verify(rig: Rig) -> list[str]:
    passes: list[str] = []
    verify = rig.auth.authenticator.verify

    def counted(request, credentials, ha1_lookup):  # type: ignore[no-untyped-def]
        passes.append(credentials.username)
        return verify(request, credentials, ha1_lookup)

    rig.auth.authenticator.verify = counted  # type: ignore[method-assign]
    return passes


def test_a_backend_that_answers_at_once_needs_one_verify_pass(rig: Rig) -> None:
    passes = counting_verify(rig)
    assert rig.login("1001", "right-1001") is None
    assert rig.results[-1].username == "1001"
    assert passes == ["1001"] and rig.backend.lookups == ["1001"]
    assert rig.login("1001", "wrong").status == 403
    assert rig.login("nobody", "whatever").status == 403
    assert passes == ["1001", "1001", "nobody"]


@pytest.mark.parametrize(("user", "password", "outcome"), [
    ("1001", "right-1001", "ok"), ("1001", "wrong", 403), ("nobody", "x", 403)])
def test_a_backend_that_answers_later_is_verified_once_it_has(user: str, password: str,
                                                               outcome: int | str) -> None:
    rig = Rig()
    rig.backend = rig.auth.backends = LaterBackend({"1001": "right-1001"})  # type: ignore[assignment]
    passes = counting_verify(rig)
    offered = rig.challenge(user)
    before = len(rig.transport.sent)
    rig.core.layer.receive(parse_message(register(user, answer(offered, user, password), cseq=2)
                                         .to_bytes()), PHONE)
    assert len(rig.transport.sent) == before and len(rig.results) == 1  # waiting for the backend
    assert rig.backend.lookups == [user] and passes == [user]
    rig.backend.answer_all()
    assert passes == [user, user]
    if outcome == "ok":
        assert rig.results[-1].username == user and len(rig.transport.sent) == before
    else:
        assert rig.results[-1] is None
        assert rig.transport.sent[-1].message.status == outcome
