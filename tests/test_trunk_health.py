"""OPTIONS health checks on a task.Clock through a real transaction layer."""

from __future__ import annotations

import random
from typing import Any

import pytest
from twisted.internet.task import Clock

from pbxd.config import parse_config
from pbxd.sip.message import Request, make_response
from pbxd.transport import Target
from pbxd.trunks.dns import Locator
from pbxd.trunks.health import HealthChecker
from pbxd.trunks.registration import REGISTERED, REGISTERING, TrunkRegistration
from pbxd.trunks.trunk import Trunk
from trunk_support import Core, NoSuchDomain

PRIMARY = Target("udp", "192.0.2.10", 5060)
BACKUP = Target("tcp", "192.0.2.20", 5070)


def setup(clock: Clock, **settings: Any) -> tuple[Core, Trunk, HealthChecker]:
    config = parse_config({"trunks": [{
        "name": "carrier", "destination": {"host": "192.0.2.10", "port": 5060, "transport": "udp"},
        "backups": [{"host": "192.0.2.20", "port": 5070, "transport": "tcp"}],
        "options_interval": 30, **settings,
    }]}).trunks[0]
    core = Core(clock)
    trunk = Trunk(config, clock, Locator(resolver=object(), clock=clock))
    return core, trunk, HealthChecker(core, trunk, clock, config.options_interval)


def options_sent(core: Core) -> list[tuple[Request, Target]]:
    unique: dict[str, tuple[Request, Target]] = {}
    for sent in core.transports.sent:
        if isinstance(sent.message, Request) and sent.message.method == "OPTIONS":
            unique[sent.message.via.branch or ""] = (sent.message, sent.target)
    return list(unique.values())


def answer(core: Core, request: Request, target: Target, status: int) -> None:
    core.layer.receive(make_response(request, status), target)


def test_checks_each_destination_every_interval_and_any_answer_is_up() -> None:
    clock = Clock()
    core, trunk, checker = setup(clock)
    checker.start()
    sent = options_sent(core)
    assert [target for _, target in sent] == [PRIMARY, BACKUP]
    request, _ = sent[0]
    assert request.uri == "sip:192.0.2.10:5060;transport=udp"
    assert request.get("From", "").startswith("<sip:pbxd@192.0.2.10>;tag=")
    assert request.get("Via", "").startswith("SIP/2.0/UDP 192.0.2.200:5060;branch=")
    answer(core, sent[0][0], PRIMARY, 404)  # alive, if unhelpful
    answer(core, sent[1][0], BACKUP, 200)
    assert trunk.destinations() == list(trunk.all_destinations())
    clock.advance(30)
    assert len(options_sent(core)) == 4


@pytest.mark.parametrize("status", [503, 408])
def test_503_and_408_mean_down_and_the_next_answer_up(status: int) -> None:
    clock = Clock()
    core, trunk, checker = setup(clock)
    events: list[tuple[str, bool, str]] = []
    checker.observers.append(lambda d, h: events.append((d.host, h.up, h.reason)))
    checker.start()
    first, _ = options_sent(core)[0]
    answer(core, first, PRIMARY, status)
    assert trunk.destinations() == [trunk.backups[0]]
    assert events[0][:2] == ("192.0.2.10", False) and events[0][2].startswith(str(status))
    clock.advance(30)
    again, _ = options_sent(core)[2]
    answer(core, again, PRIMARY, 200)
    assert events[-1] == ("192.0.2.10", True, "200 OK")
    assert trunk.next_destination() == trunk.primary


def test_no_answer_is_down_and_a_pending_check_is_not_repeated() -> None:
    clock = Clock()
    core, trunk, checker = setup(clock, options_interval=10)
    checker.start()
    clock.pump([0.5] * 66)  # Timer F (32 s); the checks due at 10, 20 and 30 s skip the pending ones
    assert len(options_sent(core)) == 2
    assert not trunk.health(trunk.primary).up and trunk.health(trunk.primary).reason == "timeout"
    clock.pump([0.5] * 16)  # the check due at 40 s asks again
    assert len(options_sent(core)) == 4


def test_transport_error_is_down_at_once() -> None:
    clock = Clock()
    core, trunk, checker = setup(clock)
    core.transports.fail_next = "refused"
    checker.start()
    assert not trunk.health(trunk.primary).up


def test_a_recovered_carrier_is_registered_to_again() -> None:
    clock = Clock()
    core, trunk, checker = setup(clock, username="acc", password="pw", register={"enabled": True})
    registration = TrunkRegistration(core, trunk, clock, rng=random.Random(1))
    registration.start()
    clock.advance(0)
    register = next(s for s in core.transports.sent if s.message.method == "REGISTER")
    reply = make_response(register.message, 200)  # type: ignore[arg-type]
    reply.add("Contact", f"{register.message.get('Contact')};expires=3600")
    core.layer.receive(reply, PRIMARY)
    assert registration.status.state == REGISTERED
    checker.start()
    first, _ = options_sent(core)[0]
    answer(core, first, PRIMARY, 503)
    clock.advance(30)
    again, _ = options_sent(core)[2]
    answer(core, again, PRIMARY, 200)  # back: it may have lost our binding
    clock.advance(0)
    assert registration.status.state == REGISTERING
    assert sum(s.message.method == "REGISTER" for s in core.transports.sent) == 2


def test_stop_stops_checking() -> None:
    clock = Clock()
    core, _, checker = setup(clock)
    checker.start()
    checker.stop()
    clock.advance(100)
    assert len(options_sent(core)) == 2
    with pytest.raises(ValueError):
        HealthChecker(core, checker.trunk, clock, 0)



def test_a_destination_that_does_not_resolve_is_down() -> None:
    clock = Clock()
    config = parse_config({"trunks": [{"name": "t", "destination": {"host": "carrier.invalid"},
                                       "options_interval": 5}]}).trunks[0]
    core = Core(clock)
    trunk = Trunk(config, clock, Locator(resolver=NoSuchDomain(), clock=clock))
    checker = HealthChecker(core, trunk, clock, 5)
    checker.start()
    health = trunk.health(trunk.primary)
    assert not health.up and health.reason.startswith("does not resolve")
    assert core.transports.sent == []
