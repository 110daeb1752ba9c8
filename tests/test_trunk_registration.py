"""The trunk REGISTER client on a task.Clock, through a real transaction layer.

The test plays the carrier: it reads what the layer sent and answers with
responses built from the request, checking credentials with pbxd's own
server-side digest code (a different code path from the client's).
"""

from __future__ import annotations

import random
from typing import Any

import pytest
from twisted.internet.task import Clock

from pbxd.config import parse_config
from pbxd.sip.digest import AuthOutcome, DigestAuthenticator, NonceManager, find_credentials, ha1
from pbxd.sip.message import Request, Response, make_response
from pbxd.transport import Target
from pbxd.trunks.dns import Locator
from pbxd.trunks.registration import FAILED, REGISTERED, STOPPED, TrunkRegistration, refresh_delay
from pbxd.trunks.trunk import Trunk
from trunk_support import Core, NoSuchDomain

REALM = "carrier.test"
PRIMARY = Target("udp", "192.0.2.10", 5060)
BACKUP = Target("udp", "192.0.2.20", 5060)


class Carrier:
    """Answers the REGISTERs the layer sent, checking digest credentials."""

    def __init__(self, clock: Clock, core: Core, password: str = "secret",
                 algorithms: tuple[str, ...] = ("MD5",)) -> None:
        self.core = core
        self.password = password
        self.digest = DigestAuthenticator(NonceManager(b"k" * 32, clock, 300), REALM, algorithms)
        self.seen = 0

    def pending(self) -> list[Request]:
        requests = [s.message for s in self.core.transports.sent if isinstance(s.message, Request)]
        fresh = requests[self.seen:]
        self.seen = len(requests)
        # Retransmissions of one request are one request.
        unique: dict[str, Request] = {}
        for request in fresh:
            unique[request.via.branch or ""] = request
        return list(unique.values())

    def last(self) -> Request:
        requests = self.pending()
        assert requests, "nothing was sent"
        return requests[-1]

    def answer(self, request: Request, status: int, **headers: str) -> None:
        response = make_response(request, status)
        for name, value in headers.items():
            response.add(name.replace("_", "-"), value)
        target = self.core.transports.sent[-1].target
        self.core.layer.receive(response, target)

    def challenge(self, request: Request, stale: bool = False) -> None:
        response = make_response(request, 401)
        for value in self.digest.challenge(stale):
            response.add("WWW-Authenticate", value)
        self.core.layer.receive(response, self.core.transports.sent[-1].target)

    def verify(self, request: Request) -> AuthOutcome | None:
        credentials = find_credentials(request, REALM)
        if credentials is None:
            return None
        lookup = lambda user, realm, algorithm: ha1(user, realm, self.password, algorithm)  # noqa: E731
        return self.digest.verify(request, credentials, lookup).outcome

    def accept(self, request: Request, expires: int | None = None, contact: str | None = None) -> None:
        if contact is None:
            contact = request.get("Contact") or ""
            contact += f";expires={expires if expires is not None else request.get('Expires')}"
        self.answer(request, 200, Contact=contact)


def make(clock: Clock, *, backups: tuple[dict[str, Any], ...] = (), outbound_proxy: str | None = None,  # type: ignore[no-untyped-def]
         **register: Any):
    config = parse_config({"trunks": [{
        "name": "carrier", "destination": {"host": "192.0.2.10", "port": 5060, "transport": "udp"},
        "backups": list(backups), "username": "4930123", "password": "secret", "from_domain": REALM,
        "outbound_proxy": outbound_proxy, "register": {"enabled": True, "expires": 600, **register},
    }]}).trunks[0]
    core = Core(clock)
    trunk = Trunk(config, clock, Locator(resolver=object(), clock=clock))
    registration = TrunkRegistration(core, trunk, clock, rng=random.Random(5))
    return core, trunk, registration


def settle(clock: Clock) -> None:
    clock.advance(0)


def started(*, password: str = "secret", algorithms: tuple[str, ...] = ("MD5",),  # type: ignore[no-untyped-def]
            **settings: Any):
    """A registration started against a carrier, its first REGISTER sent."""
    clock = Clock()
    core, trunk, registration = make(clock, **settings)
    carrier = Carrier(clock, core, password, algorithms)
    registration.start()
    settle(clock)
    return clock, core, trunk, registration, carrier


def test_registers_with_digest_then_refreshes_with_the_same_call_id() -> None:
    clock = Clock()
    core, trunk, registration = make(clock)
    carrier = Carrier(clock, core)
    states: list[str] = []
    registration.observers.append(lambda status: states.append(status.state))
    registration.start()
    settle(clock)
    first = carrier.last()
    assert first.uri == f"sip:{REALM}"
    assert first.get("To") == f"<sip:4930123@{REALM}>"
    assert first.get("Expires") == "600"
    assert first.get("Contact") == f"<sip:4930123@192.0.2.200:5060;line={trunk.line}>"
    assert "Authorization" not in first
    carrier.challenge(first)
    second = carrier.last()
    assert carrier.verify(second) == AuthOutcome.OK
    assert second.call_id == first.call_id and second.cseq.seq == first.cseq.seq + 1
    carrier.accept(second, expires=300)
    status = registration.status
    assert status.state == REGISTERED and status.registered_until == 300
    assert status.next_attempt == refresh_delay(300) == 180
    assert trunk.registered_hosts == {"192.0.2.10"}
    # The refresh comes at 180 s with credentials already (nonce count 2).
    clock.advance(179)
    assert carrier.pending() == []
    clock.advance(1)
    refresh = carrier.last()
    assert refresh.call_id == first.call_id and refresh.cseq.seq == 3
    assert carrier.verify(refresh) == AuthOutcome.OK
    assert find_credentials(refresh, REALM).nc == "00000002"  # type: ignore[union-attr]
    carrier.accept(refresh, expires=300)
    assert registration.status.state == REGISTERED and registration.status.registered_until == 480
    assert states == ["registering", "registered", "registering", "registered"]


def test_sha256_is_preferred_when_offered() -> None:
    clock, core, _, registration, carrier = started(algorithms=("MD5", "SHA-256"))
    carrier.challenge(carrier.last())
    answer = carrier.last()
    assert find_credentials(answer, REALM).algorithm == "SHA-256"  # type: ignore[union-attr]
    assert carrier.verify(answer) == AuthOutcome.OK


def test_wrong_password_fails_and_backs_off_with_jitter() -> None:
    clock, core, _, registration, carrier = started(retry_min=10, retry_max=35, password="other")
    delays = []
    for _ in range(4):
        carrier.challenge(carrier.last())
        answer = carrier.last()
        assert carrier.verify(answer) == AuthOutcome.WRONG_PASSWORD
        carrier.challenge(answer)
        status = registration.status
        assert status.state == FAILED and "credentials refused" in status.reason
        assert status.last_status == 401
        assert status.next_attempt is not None
        delays.append(status.next_attempt - clock.seconds())
        clock.advance(delays[-1])
    assert 8 <= delays[0] <= 12 and 16 <= delays[1] <= 24 and delays[2] <= 35 and delays[3] <= 35
    assert registration.status.failures == 4


def test_a_stale_nonce_is_answered_again() -> None:
    clock, core, _, registration, carrier = started()
    carrier.challenge(carrier.last())
    carrier.challenge(carrier.last(), stale=True)
    answer = carrier.last()
    assert carrier.verify(answer) == AuthOutcome.OK
    carrier.accept(answer)
    assert registration.status.state == REGISTERED


def test_423_retries_with_min_expires() -> None:
    clock, core, _, registration, carrier = started()
    carrier.answer(carrier.last(), 423, Min_Expires="1200")
    again = carrier.last()
    assert again.get("Expires") == "1200"
    carrier.answer(again, 423, Min_Expires="1200")  # no higher: give up for now
    assert registration.status.state == FAILED and "Min-Expires" in registration.status.reason
    carrier.answer(again, 200)  # a late answer to an abandoned attempt changes nothing
    assert registration.status.state == FAILED


def test_no_answer_fails_over_to_the_backup_and_503_retry_after_is_obeyed() -> None:
    backup = {"host": "192.0.2.20", "port": 5060, "transport": "udp"}
    clock, core, trunk, registration, carrier = started(backups=(backup,), retry_min=1, retry_max=2)
    assert core.transports.sent[-1].target == PRIMARY
    for _ in range(64):  # Timer F: 64 x T1 = 32 s, stepped
        clock.advance(0.5)
    assert registration.status.state == FAILED and registration.status.reason == "timeout"
    clock.advance(registration.status.next_attempt - clock.seconds())  # type: ignore[operator]
    backup_register = carrier.last()
    assert core.transports.sent[-1].target == BACKUP
    assert registration.status.target == str(BACKUP)
    carrier.answer(backup_register, 503, Retry_After="100 (maintenance)")
    assert registration.status.next_attempt == clock.seconds() + 100
    carrier.pending()
    clock.advance(100)
    retry = carrier.last()
    assert core.transports.sent[-1].target == PRIMARY  # the list is resolved again
    carrier.accept(retry)
    assert registration.status.state == REGISTERED and trunk.registered_hosts == {"192.0.2.10"}


def test_transport_error_fails_at_once() -> None:
    clock = Clock()
    core, _, registration = make(clock)
    core.transports.fail_next = "unreachable"
    registration.start()
    settle(clock)
    assert registration.status.state == FAILED and registration.status.reason == "transport"


def test_a_refresh_whose_answer_lost_our_contact_registers_afresh() -> None:
    clock, core, _, registration, carrier = started()
    first = carrier.last()
    carrier.accept(first, expires=100)
    clock.advance(refresh_delay(100))
    refresh = carrier.last()
    carrier.answer(refresh, 200, Contact="<sip:someone-else@192.0.2.99>;expires=100")
    fresh = carrier.last()
    assert fresh.call_id != first.call_id and fresh.cseq.seq == refresh.cseq.seq + 1
    # A carrier that never lists contacts is believed the second time.
    carrier.answer(fresh, 200)
    assert registration.status.state == REGISTERED and registration.status.registered_until == clock.seconds() + 600


def test_reregister_sends_at_once_when_registered() -> None:
    clock, core, _, registration, carrier = started()
    carrier.accept(carrier.last())
    registration.reregister("the carrier answers again")
    settle(clock)
    assert len(carrier.pending()) == 1


def test_stop_unregisters_and_waits_for_the_answer() -> None:
    clock, core, trunk, registration, carrier = started()
    carrier.challenge(carrier.last())
    carrier.accept(carrier.last())
    done = registration.stop()
    assert not done.called
    goodbye = carrier.last()
    assert goodbye.get("Expires") == "0"
    assert goodbye.get("Contact") == f"<sip:4930123@192.0.2.200:5060;line={trunk.line}>"
    assert carrier.verify(goodbye) == AuthOutcome.OK
    carrier.answer(goodbye, 200)
    assert done.called and registration.status.state == STOPPED
    assert trunk.registered_hosts == frozenset()
    assert not [c for c in clock.getDelayedCalls() if c.active() and c.func.__name__ == "_register"]


def test_stop_is_bounded_when_the_carrier_is_silent() -> None:
    clock, core, _, registration, carrier = started()
    carrier.accept(carrier.last())
    done = registration.stop()
    clock.pump([0.5] * 9)
    assert not done.called
    clock.pump([0.5] * 2)
    assert done.called and registration.status.reason == "no answer in time"


def test_stop_before_registering_sends_nothing() -> None:
    clock = Clock()
    core, _, registration = make(clock)
    done = registration.stop()
    assert done.called and core.transports.sent == []


def test_refresh_delay_rule() -> None:
    assert refresh_delay(3600) == 3480
    assert refresh_delay(4) == 2
    assert refresh_delay(200) == 100


def test_registering_needs_credentials() -> None:
    clock = Clock()
    config = parse_config({"trunks": [{"name": "t", "destination": {"host": "192.0.2.1"}}]}).trunks[0]
    with pytest.raises(ValueError):
        TrunkRegistration(Core(clock), Trunk(config, clock, Locator(resolver=object(), clock=clock)), clock)


def test_malformed_answers_do_not_crash() -> None:
    clock, core, _, registration, carrier = started()
    request = carrier.last()
    response = make_response(request, 401)
    response.add("WWW-Authenticate", 'Digest realm="x", nonce')  # malformed
    core.layer.receive(response, PRIMARY)
    assert registration.status.state == FAILED and "challenge" in registration.status.reason
    clock.advance(registration.status.next_attempt - clock.seconds())  # type: ignore[operator]
    request = carrier.last()
    bad: Response = make_response(request, 200)
    bad.add("Contact", "<<not a uri")
    bad.add("Expires", "soon")
    core.layer.receive(bad, PRIMARY)
    assert registration.status.state == REGISTERED  # what we asked for, 600 s
    assert registration.status.registered_until == clock.seconds() + 600


def test_a_destination_that_does_not_resolve_fails_and_is_retried() -> None:
    clock = Clock()
    config = parse_config({"trunks": [{
        "name": "t", "destination": {"host": "carrier.invalid"}, "username": "u", "password": "p",
        "register": {"enabled": True, "retry_min": 2, "retry_max": 2}}]}).trunks[0]
    core = Core(clock)
    registration = TrunkRegistration(core, Trunk(config, clock, Locator(resolver=NoSuchDomain(), clock=clock)), clock)
    registration.start()
    clock.advance(0)
    assert registration.status.state == FAILED and registration.status.reason == "no destination resolves"
    clock.advance(2.5)
    assert registration.status.failures == 2 and core.transports.sent == []


def test_through_the_outbound_proxy_with_a_route() -> None:
    clock, core, _, registration, carrier = started(outbound_proxy="sip:192.0.2.99:5070;transport=tcp;lr")
    register = carrier.last()
    assert core.transports.sent[-1].target == Target("tcp", "192.0.2.99", 5070)
    assert register.get("Route") == "<sip:192.0.2.99:5070;transport=tcp;lr>"
    assert register.uri == f"sip:{REALM}"
    assert register.get("Via", "").startswith("SIP/2.0/TCP ")
    assert register.get("Contact", "").endswith(";transport=tcp;line=" + registration.trunk.line + ">")
