"""Trunks end to end: pbxd's service tree on loopback against sipp playing the carrier.

sipp runs as a UAS (``-sf tests/sipp/carrier_*.xml -p PORT``) on 127.0.0.1;
pbxd registers to it, refreshes, fails with a wrong password, survives the
carrier being down, unregisters on stop, and health-checks it with OPTIONS.
Tests wait on registration and health events, with generous bounds.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import socket
from pathlib import Path
from typing import Any, Callable

import pytest
import pytest_twisted
from twisted.internet import defer, reactor
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.protocol import ProcessProtocol
from twisted.names import client, dns, server

from pbxd.config import parse_config
from pbxd.service import PbxService
from pbxd.trunks.registration import FAILED, REGISTERED, RegistrationStatus, TrunkRegistration
from sipp_runner import SippResult, requires_sipp, scenario
from trunk_support import ZoneAuthority

pytestmark = requires_sipp

USER, PASSWORD = "4930123", "secret"
EVENT_TIMEOUT = 15.0


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Carrier(ProcessProtocol):
    """sipp as a UAS on 127.0.0.1:port until ``calls`` calls are done, ``timeout``
    passes, or :meth:`stop`; ``done`` fires with its SippResult."""

    def __init__(self, path: Path, port: int, calls: int = 1, timeout: float = 20.0) -> None:
        self.done: defer.Deferred[SippResult] = defer.Deferred()
        self._output: list[bytes] = []
        workdir = path.parent
        self._messages = workdir / f"{path.stem}-{port}.messages.log"
        self._errors = workdir / f"{path.stem}-{port}.errors.log"
        args = ["sipp", "-sf", str(path), "-i", "127.0.0.1", "-p", str(port), "-t", "u1", "-m", str(calls),
                "-nostdin", "-timeout", f"{timeout}s", "-timeout_error", "-trace_msg",
                "-message_file", str(self._messages), "-trace_err", "-error_file", str(self._errors)]
        self.process = reactor.spawnProcess(self, shutil.which("sipp"), args, env=dict(os.environ),
                                            path=str(workdir))

    def outReceived(self, data: bytes) -> None:  # noqa: N802 (Twisted's name)
        self._output.append(data)

    errReceived = outReceived

    def processEnded(self, reason: Any) -> None:  # noqa: N802
        code = getattr(reason.value, "exitCode", None)
        self.done.callback(SippResult(
            -1 if code is None else code, b"".join(self._output).decode("utf-8", "replace"),
            self._errors.read_text(errors="replace") if self._errors.exists() else "",
            self._messages.read_text(errors="replace") if self._messages.exists() else ""))

    def stop(self) -> defer.Deferred[SippResult]:
        if not self.done.called:
            try:
                self.process.signalProcess("TERM")
            except ProcessExitedAlready:
                pass  # it has ended; processEnded is on its way
        return self.done


def register_scenario(tmp_path: Path, expires: int, password: str = PASSWORD, challenge: int = 401) -> Path:
    """carrier_register.xml challenging with ``challenge`` (401 or 407) and checking ``password``.

    sipp's verifyauth reads Authorization only; with 407 the carrier just checks
    that a Proxy-Authorization comes, and the test checks the digests itself."""
    if challenge == 401:
        fills = {"challenge": "401 Unauthorized", "authenticate": "WWW-Authenticate",
                 "verify": f'<verifyauth assign_to="authvalid" username="{USER}" password="{password}"/>'}
    else:
        fills = {"challenge": "407 Proxy Authentication Required", "authenticate": "Proxy-Authenticate",
                 "verify": '<ereg regexp="Digest" search_in="hdr" header="Proxy-Authorization:" check_it="true"'
                           ' assign_to="authvalid"/>'}
    return scenario("carrier_register.xml", tmp_path, expires=expires, **fills)


def pbx_for(tmp_path: Path, carrier_port: int, **trunk: Any) -> PbxService:
    config = parse_config({
        "data_dir": str(tmp_path / "data"),
        "sip": {"listen": [{"transport": "udp", "host": "127.0.0.1", "port": 0}]},
        "http": {"port": 0},
        "trunks": [{
            "name": "carrier", "destination": {"host": "127.0.0.1", "port": carrier_port, "transport": "udp"},
            "username": USER, "password": PASSWORD, "from_domain": "carrier.test",
            "register": {"enabled": True, "expires": 4, "retry_min": 0.3, "retry_max": 1.0},
            **trunk,
        }],
    })
    return PbxService(config, reactor)


def registration_of(pbx: PbxService) -> TrunkRegistration:
    trunk = pbx.trunks.registry.trunk("carrier")
    assert trunk is not None and trunk.registration is not None
    return trunk.registration  # type: ignore[no-any-return]


def when_state(registration: TrunkRegistration, state: str, times: int = 1,
               where: Callable[[RegistrationStatus], bool] = lambda status: True,
               ) -> defer.Deferred[RegistrationStatus]:
    """Fires with the status the ``times``-th time from now that the registration
    enters ``state`` with a status for which ``where`` holds."""
    waiter: defer.Deferred[RegistrationStatus] = defer.Deferred()
    seen = [0]

    def observe(status: RegistrationStatus) -> None:
        if status.state == state and where(status):
            seen[0] += 1
            if seen[0] == times and not waiter.called:
                registration.observers.remove(observe)
                waiter.callback(status)

    registration.observers.append(observe)
    return waiter.addTimeout(EVENT_TIMEOUT, reactor)


def start(pbx: PbxService) -> None:
    pbx.privilegedStartService()
    pbx.startService()


def received_registers(result: SippResult) -> list[str]:
    blocks = result.messages.split("----------------------------------------------- ")
    return [b for b in blocks if "message received" in b and "REGISTER sip:carrier.test SIP/2.0" in b]


def md5_digest_is_right(header: str, method: str) -> bool:
    """An MD5 digest answer without qop (RFC 2617 §3.2.2.1), computed here from the account."""
    params = dict(re.findall(r'(\w+)="?([^",]*)"?', header.split("Digest", 1)[1]))

    def md5(text: str) -> str:
        return hashlib.md5(text.encode()).hexdigest()

    ha1 = md5(f"{USER}:{params['realm']}:{PASSWORD}")
    ha2 = md5(f"{method}:{params['uri']}")
    return params["username"] == USER and params["response"] == md5(f"{ha1}:{params['nonce']}:{ha2}")


@pytest.mark.parametrize("challenge", [401, 407])
@pytest_twisted.ensureDeferred
async def test_registers_refreshes_and_unregisters_on_stop(tmp_path: Path, challenge: int) -> None:
    port = free_udp_port()
    carrier = Carrier(register_scenario(tmp_path, 4, challenge=challenge), port)
    pbx = pbx_for(tmp_path, port)
    registration = registration_of(pbx)
    refreshed = when_state(registration, REGISTERED, times=2)
    start(pbx)
    try:
        status = await refreshed
        assert status.registered_until is not None and status.last_status == 200
        assert pbx.trunks.registry.trunk("carrier").registered_hosts == {"127.0.0.1"}  # type: ignore[union-attr]
    finally:
        await pbx.stopService()
    assert registration.status.state == "stopped"
    result = await carrier.done
    assert result.ok, result.explain()
    registers = received_registers(result)
    assert len(registers) >= 4  # unauthenticated, answered, refresh(es), unregister
    # RFC 3261 §22.3: a 407 is answered with Proxy-Authorization, a 401 with Authorization;
    # refreshes and the un-REGISTER carry them from the start.
    header = "Proxy-Authorization" if challenge == 407 else "Authorization"
    assert "Authorization" not in registers[0]
    for register in registers[1:]:
        [credentials] = [line for line in register.splitlines() if line.startswith(f"{header}: Digest ")]
        assert "algorithm=MD5" in credentials and md5_digest_is_right(credentials, "REGISTER"), credentials
    assert "Expires: 0" in registers[-1]
    assert f";line={pbx.trunks.registry.trunk('carrier').line}" in registers[0]  # type: ignore[union-attr]


@pytest_twisted.ensureDeferred
async def test_wrong_password_is_a_failed_state_with_the_reason(tmp_path: Path) -> None:
    port = free_udp_port()
    carrier = Carrier(register_scenario(tmp_path, 4, password="not-the-one"),
                      port)
    pbx = pbx_for(tmp_path, port)
    registration = registration_of(pbx)
    # A first REGISTER may beat sipp's start-up (a transport failure): wait for the carrier's answer.
    failed = when_state(registration, FAILED, where=lambda status: status.last_status is not None)
    start(pbx)
    try:
        status = await failed
        assert "credentials refused" in status.reason and status.last_status == 401
        assert status.next_attempt is not None
    finally:
        await pbx.stopService()
    await carrier.stop()


@pytest_twisted.ensureDeferred
async def test_carrier_down_then_up(tmp_path: Path) -> None:
    port = free_udp_port()  # nothing listens: ICMP port unreachable reaches the transaction
    pbx = pbx_for(tmp_path, port)
    registration = registration_of(pbx)
    failed = when_state(registration, FAILED, times=2)
    start(pbx)
    carrier = None
    try:
        status = await failed
        assert status.reason == "transport" and status.failures == 2
        registered = when_state(registration, REGISTERED)
        carrier = Carrier(register_scenario(tmp_path, 60),
                          port)
        status = await registered
        assert status.failures == 0 and status.state == REGISTERED
    finally:
        await pbx.stopService()
    assert carrier is not None
    result = await carrier.done
    assert result.ok, result.explain()


@pytest_twisted.ensureDeferred
async def test_health_checks_mark_a_destination_down_and_up(tmp_path: Path) -> None:
    primary, backup = free_udp_port(), free_udp_port()
    options = scenario("carrier_options.xml", tmp_path)
    backup_carrier = Carrier(options, backup, calls=1000)
    first_carrier = Carrier(options, primary, calls=2)
    pbx = pbx_for(tmp_path, primary, register={"enabled": False}, options_interval=0.3,
                  backups=[{"host": "127.0.0.1", "port": backup, "transport": "udp"}])
    trunk = pbx.trunks.registry.trunk("carrier")
    assert trunk is not None
    checker = pbx.trunks.checkers[0]
    # A check may beat sipp's start-up (a down and an up): wait for changes
    # only once the first carrier has answered and gone.
    waiting: dict[bool, defer.Deferred[None]] = {}

    def observe(destination: Any, health: Any) -> None:
        waiter = waiting.get(health.up)
        if destination.port == primary and waiter is not None and not waiter.called:
            waiter.callback(None)

    checker.observers.append(observe)
    start(pbx)
    try:
        result = await first_carrier.done  # answered two checks, then gone
        assert result.ok, result.explain()
        waiting[False], waiting[True] = defer.Deferred(), defer.Deferred()
        if not trunk.health(trunk.primary).up:
            waiting[False].callback(None)
        await waiting[False].addTimeout(EVENT_TIMEOUT, reactor)
        assert [d.port for d in trunk.destinations()] == [backup]
        assert trunk.next_destination().port == backup
        assert trunk.health(trunk.primary).reason == "transport"
        again = Carrier(options, primary, calls=1)
        await waiting[True].addTimeout(EVENT_TIMEOUT, reactor)
        assert [d.port for d in trunk.destinations()] == [primary, backup]
        await again.done
    finally:
        await pbx.stopService()
        await backup_carrier.stop()


@pytest_twisted.ensureDeferred
async def test_srv_failover_registers_with_the_second_target(tmp_path: Path) -> None:
    """DNS from a twisted.names server on loopback: the SRV record of priority 10
    points at a port nothing listens on, priority 20 at sipp."""
    dead, alive = free_udp_port(), free_udp_port()
    zone = {
        b"_sip._udp.carrier.test": [dns.Record_SRV(10, 0, dead, b"a.carrier.test", ttl=60),
                                    dns.Record_SRV(20, 0, alive, b"b.carrier.test", ttl=60)],
        b"a.carrier.test": [dns.Record_A("127.0.0.1", ttl=60)],
        b"b.carrier.test": [dns.Record_A("127.0.0.1", ttl=60)],
    }
    factory = server.DNSServerFactory(authorities=[ZoneAuthority(zone)])
    dns_port = reactor.listenUDP(0, dns.DNSDatagramProtocol(controller=factory), interface="127.0.0.1")
    carrier = Carrier(register_scenario(tmp_path, 60), alive)
    pbx = pbx_for(tmp_path, 0, destination={"host": "carrier.test", "transport": "udp"})
    pbx.trunks.locator.resolver = client.Resolver(servers=[("127.0.0.1", dns_port.getHost().port)], reactor=reactor)
    registration = registration_of(pbx)
    failed_at: list[str | None] = []
    registration.observers.append(lambda status: failed_at.append(status.target) if status.state == FAILED else None)
    registered = when_state(registration, REGISTERED)
    start(pbx)
    try:
        status = await registered
        assert status.target == f"udp:127.0.0.1:{alive}"
        assert f"udp:127.0.0.1:{dead}" in failed_at
    finally:
        await pbx.stopService()
        await dns_port.stopListening()
    result = await carrier.done
    assert result.ok, result.explain()
