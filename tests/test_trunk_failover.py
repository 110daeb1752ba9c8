"""A trunk's failover timeout: a server that answers nothing at all is given up for the next.

Unit tests: a real SipCore, transaction layer and CallManager on a
``task.Clock``, with a recording transport in place of sockets. The call is
planned the manager's way (``plan_trunks``, ``ring_steps``) over a real Trunk
with a primary and a backup, and started as ``CallManager._act`` starts it.
The "servers" are the test: it answers (or not) what the transport recorded.

Integration: pbxd on loopback with the default T1 (Timer B 32 s), a trunk
whose primary is a UDP socket that swallows everything and whose backup is
a sipp carrier: the extension's call is answered by the backup in seconds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer, reactor
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.task import Clock

from call_support import CALLER_HANGS_UP, caller, cdrs, pbx_config, start_pbx
from pbxd.call.call import Call, CallLimits, CallState
from pbxd.call.leg import Leg
from pbxd.call.manager import CallManager, TrunkPlan
from pbxd.call.media import DirectMedia
from pbxd.call.routing import RouteDecision, RouteTarget
from pbxd.config import ConfigError, load_config, parse_config
from pbxd.core import LocalDomains, SipCore
from pbxd.hooks.user_backend import UserRecord
from pbxd.registrar.auth import AuthenticatedUser
from pbxd.sip.message import Request, Response, make_response, parse_message
from pbxd.sip.timers import TimerSettings
from pbxd.sip.transaction import ServerTransaction
from pbxd.transport import Target
from pbxd.trunks.dns import Locator
from pbxd.trunks.trunk import Trunk, TrunkRegistry
from sipp_runner import requires_sipp
from test_trunk_calls import EXTERNAL, OUTBOUND_ROUTE, carrier_uas, trunk_config
from test_trunk_reload import request, serve
from test_trunk_sipp import free_udp_port
from trunk_support import Transports

PRIMARY = Target("udp", "192.0.2.10", 5060)
BACKUP = Target("udp", "192.0.2.20", 5060)
PHONE = Target("udp", "192.0.2.50", 5062)
PHONE_B = Target("udp", "192.0.2.60", 5060)
SDP = b"v=0\r\no=- 1 1 IN IP4 192.0.2.50\r\ns=-\r\nc=IN IP4 192.0.2.50\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n"


def trunk_settings(**settings: Any) -> Any:
    return parse_config({"trunks": [{
        "name": "carrier", "destination": {"host": PRIMARY.host, "port": 5060, "transport": "udp"},
        "backups": [{"host": BACKUP.host, "port": 5060, "transport": "udp"}], **settings,
    }]}).trunks[0]


class InviteCatcher:
    """Takes the INVITE handler's place on the core, to hold the caller's transaction."""

    def __init__(self) -> None:
        self.txns: list[ServerTransaction] = []

    def handle_request(self, txn: ServerTransaction, request: Request) -> None:
        self.txns.append(txn)

    def handle_cancel(self, invite_txn: ServerTransaction, cancel: Request) -> None:
        raise AssertionError("no CANCEL from the caller in these tests")


class Env:
    """pbxd's SIP and call layers on a clock; one call from 1001 out over the trunk."""

    def __init__(self, **trunk: Any) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.transports = Transports(self.clock)
        self.core = SipCore(self.clock, self.transports, LocalDomains(["pbx.test"], ["192.0.2.200"]),
                            timers=TimerSettings())
        self.transports.layer = self.core.layer
        self.trunk = Trunk(trunk_settings(**trunk), self.clock, Locator(resolver=object(), clock=self.clock))
        self.manager = CallManager(self.core, self.clock, registrar=None, router=None)
        self.manager.trunks = TrunkRegistry([self.trunk])
        self.catcher = InviteCatcher()
        self.core.register("INVITE", self.catcher)
        self.start = 0.0

    def call(self, decision: RouteDecision | None = None) -> Call:
        """1001 calls out over trunk:carrier (sequential: the primary, then the backup), or
        where ``decision`` says."""
        self.receive(parse_message(
            b"INVITE sip:0301234567@pbx.test SIP/2.0\r\n"
            b"Via: SIP/2.0/UDP 192.0.2.50:5062;branch=z9hG4bKcaller1;rport\r\n"
            b"From: <sip:1001@pbx.test>;tag=caller\r\nTo: <sip:0301234567@pbx.test>\r\n"
            b"Call-ID: caller-call@192.0.2.50\r\nCSeq: 1 INVITE\r\nMax-Forwards: 70\r\n"
            b"Contact: <sip:1001@192.0.2.50:5062>\r\nContent-Type: application/sdp\r\n"
            b"Content-Length: " + str(len(SDP)).encode() + b"\r\n\r\n" + SDP), PHONE)
        [txn] = self.catcher.txns
        decision = decision or RouteDecision(action="forward", source="test",
                                             targets=(RouteTarget("trunk:carrier"),), strategy="sequential")
        user = AuthenticatedUser("1001", "pbx.test", "MD5", UserRecord("1001", "pbx.test", "secret"), "config")
        plan = TrunkPlan()
        planned = defer.Deferred.fromCoroutine(
            self.manager.plan_trunks(txn.request, user, "0301234567", decision, plan))
        assert planned.called and planned.result is None  # IP destinations: no DNS, no refusal
        steps = self.manager.ring_steps(decision, plan)
        inbound = Leg.inbound(self.manager, txn)
        self.manager.leg_started(inbound)
        call = Call(self.manager, inbound, from_number="1001", to_number="0301234567", direction="outbound",
                    media=DirectMedia(), limits=CallLimits(max_ring_time=120.0), timer_policy=None,
                    trunk="carrier")
        self.manager.calls[call.id] = call
        self.start = self.clock.seconds()
        call.ring(steps)
        return call

    def receive(self, message: Request | Response, source: Target) -> None:
        """A message off the wire (serialised and parsed again, as a datagram would be)."""
        self.core.layer.receive(parse_message(bytes(message)), source)

    def run(self, until: float) -> None:
        """Step the clock in 0.1 s steps to ``until`` seconds after the call started."""
        steps = round((self.start + until - self.clock.seconds()) / 0.1)
        self.clock.pump([0.1] * max(0, steps))

    def sent(self, target: Target, method: str | None = None) -> list[tuple[float, Request]]:
        """(seconds since the call started, request) of every request sent to ``target``."""
        return [(round(s.at - self.start, 3), s.message) for s in self.transports.sent
                if s.target == target and isinstance(s.message, Request)
                and (method is None or s.message.method == method)]

    def times(self, target: Target, method: str) -> list[float]:
        """When each ``method`` went to ``target``, to the timer wheel's tick (a 0.1 s step here)."""
        return pytest.approx([at for at, _ in self.sent(target, method)], abs=0.11)

    def caller_acks(self) -> None:
        """The caller ACKs the 200 pbxd answered it with."""
        [ok] = [s.message for s in self.transports.sent if isinstance(s.message, Response) and s.message.status == 200]
        self.receive(Request("ACK", "sip:pbxd@192.0.2.200:5060", [
            ("Via", "SIP/2.0/UDP 192.0.2.50:5062;branch=z9hG4bKcallerack"), ("From", ok.get("from") or ""),
            ("To", ok.get("to") or ""), ("Call-ID", ok.call_id), ("CSeq", "1 ACK"), ("Max-Forwards", "70")]), PHONE)

    def to_caller(self) -> list[int]:
        return [s.message.status for s in self.transports.sent if isinstance(s.message, Response)]

    def answer(self, target: Target, status: int, tag: str = "far", body: bytes = b"") -> None:
        """The server at ``target`` answers the last INVITE pbxd sent it with ``status``."""
        invite = self.sent(target, "INVITE")[-1][1]
        response = make_response(invite, status)
        if status > 100:
            response.set("To", str(invite.to_addr.with_param("tag", tag)))
            response.set("Contact", f"<sip:{target.host}:{target.port}>")
        if body:
            response.set("Content-Type", "application/sdp")
            response.body = body
        self.receive(response, target)


def test_hops_carry_the_failover_timeout_all_but_the_last() -> None:
    env = Env(failover_timeout=2.5)
    hops = env.trunk.hops("100").result
    assert [(hop.target, hop.failover_timeout) for hop in hops] == [(PRIMARY, 2.5), (BACKUP, 0.0)]
    assert trunk_settings().failover_timeout == 5.0  # the default
    alone = Trunk(parse_config({"trunks": [{"name": "one", "destination": {"host": "192.0.2.30"}}]}).trunks[0],
                  env.clock, Locator(resolver=object(), clock=env.clock))
    assert [hop.failover_timeout for hop in alone.hops("100").result] == [0.0]  # nothing to fail over to


@pytest.mark.parametrize("value, error", [
    (-1, "trunks[0].failover_timeout: must be 0 or more, got -1"),
    ("soon", "trunks[0].failover_timeout: must be a number of seconds, got"),
    (True, "trunks[0].failover_timeout: must be a number of seconds, got"),
])
def test_a_bad_failover_timeout_names_the_key(value: Any, error: str) -> None:
    with pytest.raises(ConfigError) as raised:
        trunk_settings(failover_timeout=value)
    assert str(raised.value).startswith(error)


def test_a_silent_primary_is_given_up_after_the_failover_timeout_without_cancel() -> None:
    env = Env()  # failover_timeout 5 s, T1 0.5 s (Timer B 32 s)
    call = env.call()
    env.run(4.9)
    assert env.times(PRIMARY, "INVITE") == [0.0, 0.5, 1.5, 3.5]  # Timer A
    assert env.sent(BACKUP) == []
    env.run(5.1)
    assert env.times(BACKUP, "INVITE") == [5.0]
    backup_invite = env.sent(BACKUP, "INVITE")[0][1]
    primary_invite = env.sent(PRIMARY, "INVITE")[0][1]
    assert backup_invite.call_id != primary_invite.call_id  # a new leg, as for any failover
    env.answer(BACKUP, 180)
    env.answer(BACKUP, 200, body=SDP)
    assert call.state is CallState.ANSWERED and call.b is not None and call.b.target == BACKUP
    assert env.sent(BACKUP, "ACK")
    env.caller_acks()
    assert not call.inbound.awaiting_ack
    env.run(40.0)  # past the primary's Timer B
    # Given up at 5 s: no retransmission after it, and no CANCEL ever (§9.1: none before a provisional).
    assert env.times(PRIMARY, "INVITE") == [0.0, 0.5, 1.5, 3.5]
    assert env.sent(PRIMARY, "CANCEL") == [] and env.sent(PRIMARY) == env.sent(PRIMARY, "INVITE")
    assert call.state is CallState.ANSWERED and env.to_caller()[-1] == 200
    assert call.statuses == [408]  # the primary counted as a timed-out server
    assert not [t for t in env.core.layer.transactions.client if t.target == PRIMARY]  # ended at Timer B


def test_a_late_provisional_from_the_given_up_primary_gets_a_cancel() -> None:
    env = Env()
    call = env.call()
    env.run(6.0)
    assert env.sent(BACKUP, "INVITE")
    env.answer(PRIMARY, 100)  # too late: the primary is given up, but now §9.1 allows the CANCEL
    [(at, cancel)] = env.sent(PRIMARY, "CANCEL")
    primary_invite = env.sent(PRIMARY, "INVITE")[0][1]
    assert at == 6.0 and cancel.via.branch == primary_invite.via.branch
    env.answer(PRIMARY, 180)
    assert len(env.sent(PRIMARY, "CANCEL")) == 1  # once
    assert env.to_caller().count(180) == 0  # the given-up leg's ringing is not the caller's business
    env.receive(make_response(cancel, 200), PRIMARY)
    env.answer(PRIMARY, 487)
    assert env.sent(PRIMARY, "ACK")  # the transaction ACKs the 487 (§17.1.1.3)
    assert call.state is CallState.RINGING and [leg.target for leg in call.ringing] == [BACKUP]


def test_a_late_2xx_from_the_given_up_primary_is_acked_and_hung_up() -> None:
    env = Env()
    call = env.call()
    env.run(6.0)
    env.answer(BACKUP, 180)
    env.answer(PRIMARY, 200, tag="late", body=SDP)  # the primary answers after all
    [(_, ack)] = env.sent(PRIMARY, "ACK")
    [(_, bye)] = env.sent(PRIMARY, "BYE")
    assert ack.to_addr.tag == bye.to_addr.tag == "late" and ack.cseq.seq == 1
    assert env.sent(PRIMARY, "CANCEL") == []
    env.receive(make_response(bye, 200), PRIMARY)
    env.answer(PRIMARY, 200, tag="late", body=SDP)  # its retransmission: the same ACK, no second BYE
    acks = env.sent(PRIMARY, "ACK")
    assert len(acks) == 2 and bytes(acks[1][1]) == bytes(ack)
    assert len(env.sent(PRIMARY, "BYE")) == 1
    assert call.state is CallState.RINGING and call.b is None  # the call still rings the backup
    env.answer(BACKUP, 200, body=SDP)
    assert call.state is CallState.ANSWERED and call.b is not None and call.b.target == BACKUP


def test_beside_another_target_the_backup_rings_after_a_given_up_primary() -> None:
    """Parallel: a phone rings beside the trunk. The primary, given up at 5 s, failed for
    want of a server; the phone's later 486 is its own answer and must not stop the backup."""
    env = Env()
    call = env.call(RouteDecision(action="forward", source="test", strategy="parallel", timeout=30.0,
                                  targets=(RouteTarget(f"sip:bob@{PHONE_B.host}:{PHONE_B.port}"),
                                           RouteTarget("trunk:carrier"))))
    env.run(5.1)
    assert env.sent(BACKUP) == []  # a trunk's further servers ring once the first step is over
    env.run(8.0)
    env.answer(PHONE_B, 486)
    assert env.times(BACKUP, "INVITE") == [8.0] and call.state is CallState.RINGING
    env.answer(BACKUP, 200, body=SDP)
    assert call.state is CallState.ANSWERED and call.b is not None and call.b.target == BACKUP
    assert call.statuses == [408, 486]


def test_each_silent_hop_but_the_last_is_given_up_in_turn_and_an_answer_ends_the_chain() -> None:
    third = Target("udp", "192.0.2.30", 5060)
    backups = [{"host": BACKUP.host, "port": 5060, "transport": "udp"},
               {"host": third.host, "port": 5060, "transport": "udp"}]
    env = Env(backups=backups)
    env.call()
    env.run(10.1)
    assert env.times(BACKUP, "INVITE") == [5.0, 5.5, 6.5, 8.5] and env.times(third, "INVITE") == [10.0]
    # The same trunk, but the primary answers 486: the called party's answer, no other server rings.
    busy = Env(backups=backups)
    call = busy.call()
    busy.answer(PRIMARY, 486)
    busy.run(40.0)
    assert busy.sent(BACKUP) == [] and busy.sent(third) == [] and call.state is CallState.ENDED
    assert busy.to_caller()[-1] == 486


def test_a_primary_that_sends_100_in_time_is_not_given_up() -> None:
    env = Env()
    call = env.call()
    env.run(1.0)
    env.answer(PRIMARY, 100)
    env.run(20.0)
    assert env.sent(BACKUP) == []
    assert env.times(PRIMARY, "INVITE") == [0.0, 0.5]  # Proceeding: no more retransmissions
    assert env.sent(PRIMARY, "CANCEL") == []
    env.answer(PRIMARY, 180)
    env.run(45.0)  # the route's ring time applies, not the failover timeout nor Timer B
    assert call.state is CallState.RINGING and env.sent(BACKUP) == []
    env.answer(PRIMARY, 200, body=SDP)
    assert call.state is CallState.ANSWERED and call.b is not None and call.b.target == PRIMARY


def test_a_challenge_in_time_stops_the_failover_timer() -> None:
    env = Env(username="4930123", password="carrier-secret")
    call = env.call()
    env.run(1.0)
    invite = env.sent(PRIMARY, "INVITE")[-1][1]
    challenge = make_response(invite, 407)
    challenge.set("To", str(invite.to_addr.with_param("tag", "auth")))
    challenge.set("Proxy-Authenticate", 'Digest realm="carrier.test", nonce="abc123"')
    env.receive(challenge, PRIMARY)
    retry = env.sent(PRIMARY, "INVITE")[-1][1]
    assert retry.get("Proxy-Authorization") is not None
    env.run(10.0)  # the server answered: its retry waits for Timer B, not the failover timeout
    assert env.sent(BACKUP) == [] and call.state is CallState.RINGING


def test_failover_timeout_0_keeps_timer_b() -> None:
    env = Env(failover_timeout=0)
    call = env.call()
    env.run(31.9)
    assert env.sent(BACKUP) == []
    assert env.times(PRIMARY, "INVITE") == [0.0, 0.5, 1.5, 3.5, 7.5, 15.5, 31.5]
    env.run(32.1)
    assert env.times(BACKUP, "INVITE") == [32.0]  # Timer B: 64*T1
    assert env.sent(PRIMARY, "CANCEL") == [] and call.statuses == [408]


def test_the_last_hop_waits_for_timer_b() -> None:
    env = Env(failover_timeout=2)
    call = env.call()
    env.run(2.1)
    assert env.times(BACKUP, "INVITE") == [2.0]
    env.run(33.9)  # the backup is the last hop: no failover timeout, Timer B (32 s) from 2 s
    assert call.state is CallState.RINGING
    env.run(34.1)
    assert call.state is CallState.ENDED and call.statuses == [408, 408]
    assert env.to_caller()[-1] == 408


@pytest_twisted.ensureDeferred
async def test_the_console_takes_and_shows_the_failover_timeout(tmp_path: Path) -> None:
    pbx = await serve(tmp_path, [])
    base = pbx.base + "/console/sip-trunk"
    carrier = {"name": "carrier", "destination": {"host": "192.0.2.1", "port": 5060, "transport": "udp"}}
    try:
        status, body = await request("POST", base, carrier)
        assert status == 201 and body["trunk"]["failover_timeout"] == 5.0  # the default, shown
        status, body = await request("PUT", base + "/carrier", {**carrier, "failover_timeout": 1.5})
        assert status == 200 and body["trunk"]["failover_timeout"] == 1.5
        trunk = pbx.service.trunks.registry.trunk("carrier")
        assert trunk is not None and trunk.failover_timeout == 1.5
        assert [t.failover_timeout for t in load_config(pbx.web.config_path).trunks] == [1.5]
        status, body = await request("PUT", base + "/carrier", {**carrier, "failover_timeout": -2})
        assert status == 422 and "failover_timeout" in body["error"]
        assert pbx.service.trunks.registry.trunk("carrier") is trunk  # refused: nothing changed
    finally:
        await pbx.stop()


class SilentServer(DatagramProtocol):
    """A carrier's server that is there and says nothing: it swallows every datagram."""

    def __init__(self) -> None:
        self.received: list[tuple[float, bytes]] = []

    def datagramReceived(self, data: bytes, addr: Any) -> None:  # noqa: N802 (Twisted's name)
        self.received.append((reactor.seconds(), data))


@requires_sipp
@pytest_twisted.ensureDeferred
async def test_a_silent_primary_fails_over_to_the_sipp_backup_in_seconds(tmp_path: Path) -> None:
    silent = SilentServer()
    listening = reactor.listenUDP(0, silent, interface="127.0.0.1")
    backup = free_udp_port()
    carrier = await carrier_uas(tmp_path, backup, name="backup")
    trunk = trunk_config(listening.getHost().port, failover_timeout=2,
                         backups=[{"host": "127.0.0.1", "port": backup, "transport": "udp"}])
    # The default T1 (0.5 s): without the failover timeout the backup would ring after Timer B, 32 s.
    pbx = await start_pbx(pbx_config(tmp_path / "data", trunks=[trunk], routes=[OUTBOUND_ROUTE],
                                     sip={"timers": {"t1": 0.5, "t2": 4.0, "t4": 5.0}}))
    try:
        result = await caller(pbx, tmp_path, "1001", "9" + EXTERNAL, "udp", CALLER_HANGS_UP)
        assert result.ok, result.explain()
        carried = await carrier.done
        assert carried.ok, carried.explain()
        [cdr] = await cdrs(pbx)
        assert cdr.answer_time is not None and cdr.trunk == "carrier"
        assert cdr.answer_time - cdr.start_time < 10.0, (cdr.start_time, cdr.answer_time)
        # The primary got the INVITE and its retransmissions until pbxd gave it up: no CANCEL.
        assert silent.received and all(data.startswith(b"INVITE ") for _, data in silent.received)
        first = silent.received[0][0]
        assert all(at - first < 2.0 + 1.0 for at, _ in silent.received), [at - first for at, _ in silent.received]
    finally:
        await carrier.stop()
        await pbx.stopService()
        await listening.stopListening()
