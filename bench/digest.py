"""How fast digest authentication runs, without any network.

Run from the repository root: ``PYTHONPATH=. python bench/digest.py`` (or with pbxd installed).

Prints operations per second for issuing challenges, parsing credentials,
verifying them (MD5 and SHA-256), and for the brute-force guard under a flood.
A REGISTER with digest costs one challenge plus one parse and one verify.
The last rows run the registrar's whole authentication step
(:class:`RequestAuthenticator`: guard, credentials, user lookup from the
in-memory extension directory, verify) on a request with and without
credentials, as the registrar does for each REGISTER.
"""

from __future__ import annotations

import ipaddress
import time
from typing import Any, Callable

from twisted.internet import defer
from twisted.internet.task import Clock

from pbxd.hooks.user_backend import UserLookup
from pbxd.registrar.auth import RequestAuthenticator
from pbxd.registrar.directory import extension_lookup
from pbxd.registrar.guard import AuthGuard
from pbxd.sip.digest import (
    AuthOutcome,
    DigestAuthenticator,
    NonceManager,
    answer_challenge,
    parse_credentials,
    stored_ha1s,
)
from pbxd.sip.message import Request, Response, make_response, parse_message
from pbxd.store import Extension
from pbxd.transport import Target

REALM = "pbx.example.com"


def rate(operation: Callable[[int], object], count: int) -> float:
    start = time.perf_counter()
    for i in range(count):
        operation(i)
    return count / (time.perf_counter() - start)


def register(value: str) -> Request:
    request = parse_message(
        (
            "REGISTER sip:pbx.example.com SIP/2.0\r\n"
            "Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK-1\r\n"
            "From: <sip:100@pbx.example.com>;tag=a1\r\nTo: <sip:100@pbx.example.com>\r\n"
            "Call-ID: bench@192.0.2.10\r\nCSeq: 2 REGISTER\r\nMax-Forwards: 70\r\n"
            f"Authorization: {value}\r\nContent-Length: 0\r\n\r\n"
        ).encode()
    )
    assert isinstance(request, Request)
    return request


class _Core:
    """What RequestAuthenticator needs of the SIP core: responses, unsent."""

    def response(self, request: Request, status: int, reason: str | None = None) -> Response:
        return make_response(request, status, reason)

    def reply(self, txn: Any, status: int, reason: str | None = None, **headers: str) -> None:
        txn.respond(self.response(txn.request, status, reason))


class _Transaction:
    """A server transaction that keeps its final response."""

    source = Target("udp", "192.0.2.10", 5060)

    def __init__(self, request: Request) -> None:
        self.request = request
        self.response: Response | None = None

    @property
    def has_final_response(self) -> bool:
        return self.response is not None

    def respond(self, response: Response) -> None:
        self.response = response


class _Directory:
    """The static backend as the registrar's extension directory answers it: from memory."""

    def __init__(self, extension: Extension) -> None:
        self.answer = extension_lookup(extension, REALM, "static")

    def lookup(self, username: str, realm: str, request_uri: str | None = None) -> defer.Deferred[UserLookup]:
        return defer.succeed(self.answer)


def authenticator_rows(count: int) -> list[tuple[str, float]]:
    clock = Clock()
    digest = DigestAuthenticator(NonceManager(b"bench-secret-0123456789abcdef", clock), REALM)
    hashes = stored_ha1s("100", REALM, "secret")
    extension = Extension(number="100", name="", email="", enabled=True, allow_external=True,
                          voicemail_pin=None, ha1_md5=hashes["MD5"], ha1_sha256=hashes["SHA-256"],
                          realm=REALM, created_at=0.0, updated_at=0.0)
    auth = RequestAuthenticator(_Core(), _Directory(extension), digest, AuthGuard(clock))
    challenge = digest.challenge()[0]  # MD5
    requests = [register(answer_challenge(challenge, "REGISTER", "sip:pbx.example.com", "100",
                                          "secret", nc=n + 1)) for n in range(count)]
    outcomes: list[Any] = []

    def authenticate(i: int) -> None:
        auth.authenticate(_Transaction(requests[i]), requests[i]).addCallback(outcomes.append)

    rows = [("authenticate REGISTER with credentials (MD5)", rate(authenticate, count))]
    assert len(outcomes) == count and None not in outcomes, "a request was refused or waited"
    unauthenticated = parse_message(
        (
            "REGISTER sip:pbx.example.com SIP/2.0\r\n"
            "Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK-1\r\n"
            "From: <sip:100@pbx.example.com>;tag=a1\r\nTo: <sip:100@pbx.example.com>\r\n"
            "Call-ID: bench@192.0.2.10\r\nCSeq: 1 REGISTER\r\nMax-Forwards: 70\r\n"
            "Content-Length: 0\r\n\r\n"
        ).encode()
    )
    assert isinstance(unauthenticated, Request)
    rows.append(("authenticate REGISTER without (401 challenge)",
                 rate(lambda i: auth.authenticate(_Transaction(unauthenticated), unauthenticated),
                      count)))
    return rows


def main(count: int = 20_000) -> None:
    clock = Clock()
    auth = DigestAuthenticator(NonceManager(b"bench-secret-0123456789abcdef", clock), REALM)
    stored = stored_ha1s("100", REALM, "secret")
    lookup = lambda user, realm, algorithm: stored[algorithm]  # noqa: E731
    rows = [("challenge (2 headers, 1 nonce)", rate(lambda i: auth.challenge(), count))]
    for index, algorithm in enumerate(auth.algorithms):
        challenge = auth.challenge()[index]
        values = [
            answer_challenge(challenge, "REGISTER", "sip:pbx.example.com", "100", "secret", nc=n + 1)
            for n in range(count)
        ]
        request = register(values[0])
        rows.append((f"parse credentials ({algorithm})", rate(lambda i: parse_credentials(values[i]), count)))
        answers = [parse_credentials(value) for value in values]
        # One nonce with a rising nc, as a phone re-registering does: no verify is a replay.
        rows.append((f"verify ({algorithm})", rate(lambda i: auth.verify(request, answers[i], lookup), count)))
        assert auth.verify(request, answers[-1], lookup).outcome is AuthOutcome.REPLAYED_NC
    guard = AuthGuard(clock, max_entries=100_000)
    rows.append((
        "guard record_failure (distinct sources)",
        rate(lambda i: guard.record_failure(str(ipaddress.IPv4Address(0x0A000000 + i)), None), count),
    ))
    rows.append(("guard is_blocked", rate(lambda i: guard.is_blocked("10.0.0.1", "100"), count)))
    rows += authenticator_rows(count)
    width = max(len(name) for name, _ in rows)
    print(f"{'operation':<{width}}  {'per second':>12}")
    for name, per_second in rows:
        print(f"{name:<{width}}  {per_second:>12,.0f}")


if __name__ == "__main__":
    main()
