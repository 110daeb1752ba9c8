"""pbxd.security without sockets: token buckets and bans on a task.Clock, the
ACL, the User-Agent block list, the header limit, reloads and bounded tables."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.task import Clock

from pbxd.config import ConfigError, parse_config
from pbxd.security import ACL, FLOOD, HEADERS, USER_AGENT, SipFirewall, trunk_networks
from pbxd.security.acl import NetworkAcl, UserAgentBlocklist, source_address
from pbxd.security.flood import FloodGuard, FloodLimits
from pbxd.sip.message import parse_message
from pbxd.transport.target import Target

ATTACKER = Target("udp", "203.0.113.7", 5060)
PHONE = Target("udp", "198.51.100.20", 5060)


def config(**security: Any):  # type: ignore[no-untyped-def]
    return parse_config({"security": security})


def options(user_agent: str | None = None, headers: int = 0) -> bytes:
    lines = [
        "OPTIONS sip:127.0.0.1 SIP/2.0",
        "Via: SIP/2.0/UDP 203.0.113.7:5060;branch=z9hG4bK-1",
        "From: <sip:x@203.0.113.7>;tag=1",
        "To: <sip:127.0.0.1>",
        "Call-ID: c1",
        "CSeq: 1 OPTIONS",
        "Max-Forwards: 70",
    ]
    if user_agent is not None:
        lines.append(f"User-Agent: {user_agent}")
    lines += [f"X-Filler-{n}: {n}" for n in range(headers)]
    return ("\r\n".join(lines) + "\r\nContent-Length: 0\r\n\r\n").encode()


def test_a_source_gets_its_burst_then_is_banned_for_ban_time() -> None:
    clock = Clock()
    guard = FloodGuard(clock, FloodLimits(requests_per_second=10, burst=5, ban_time=60, max_tracked=100))
    assert all(guard.admit("203.0.113.7") for _ in range(5))
    assert not guard.admit("203.0.113.7")  # the sixth at once empties the bucket: banned
    assert guard.bans_total == 1 and guard.banned("203.0.113.7")
    clock.advance(59.9)
    assert not guard.admit("203.0.113.7")  # a ban is not refilled by waiting in it
    clock.advance(0.2)
    assert guard.admit("203.0.113.7")
    assert guard.dropped_total == 2


def test_the_rate_refills_the_bucket() -> None:
    clock = Clock()
    guard = FloodGuard(clock, FloodLimits(requests_per_second=10, burst=5, ban_time=60))
    for _ in range(100):  # 10 per second for 10 seconds: always within the rate
        assert guard.admit("203.0.113.7")
        clock.advance(0.1)
    assert guard.bans_total == 0


def test_one_noisy_source_does_not_lock_out_another() -> None:
    clock = Clock()
    guard = FloodGuard(clock, FloodLimits(requests_per_second=1, burst=3, ban_time=60))
    while guard.admit("203.0.113.7"):
        pass
    assert guard.admit("198.51.100.20")


def test_tables_stay_bounded_and_empty_out_on_the_clock() -> None:
    clock = Clock()
    guard = FloodGuard(clock, FloodLimits(requests_per_second=1, burst=1, ban_time=30, max_tracked=100))
    for n in range(10_000):
        address = f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}"
        guard.admit(address)
        guard.admit(address)  # the second at once bans it
    assert len(guard._buckets) <= 100 and len(guard._bans) <= 100
    assert guard.bans_total == 10_000
    clock.advance(31)
    assert guard.tracked == 0


def test_limits_are_checked() -> None:
    with pytest.raises(ValueError):
        FloodLimits(requests_per_second=0)
    with pytest.raises(ConfigError, match="security.flood.requests_per_second"):
        config(flood={"requests_per_second": 0})
    with pytest.raises(ConfigError, match=r"security.acl.deny\[0\]"):
        config(acl={"deny": ["not-a-network"]})


def test_acl_deny_wins_and_empty_allow_lets_everyone_in() -> None:
    acl = NetworkAcl(allow=["10.0.0.0/8"], deny=["10.6.6.0/24"])
    assert acl.permits(source_address("10.1.2.3"))
    assert not acl.permits(source_address("10.6.6.6"))
    assert not acl.permits(source_address("192.0.2.1"))
    assert NetworkAcl().permits(source_address("2001:db8::1"))
    assert source_address("::ffff:10.6.6.6") == source_address("10.6.6.6")
    assert source_address("[2001:db8::1]") == source_address("2001:db8::1")


def test_user_agent_words_match_case_insensitively() -> None:
    blocklist = UserAgentBlocklist()
    assert blocklist.match("Friendly-Scanner") == "friendly-scanner"
    assert blocklist.match("sipvicious 0.3.4") == "sipvicious"
    assert blocklist.match("Yealink SIP-T46S") is None
    assert blocklist.match(None) is None
    assert UserAgentBlocklist([]).match("friendly-scanner") is None


def test_firewall_drops_denied_sources_before_anything_else() -> None:
    firewall = SipFirewall(Clock(), config(acl={"deny": ["203.0.113.0/24"]}, trust_loopback=True))
    assert not firewall.admit_source(ATTACKER)
    assert not firewall.admit_source(Target("tcp", "203.0.113.99", 40000))
    assert firewall.admit_source(PHONE)
    assert firewall.counts[ACL] == 2
    # Loopback is trusted for flood control, not beyond the ACL.
    strict = SipFirewall(Clock(), config(acl={"allow": ["198.51.100.0/24"]}))
    assert not strict.admit_source(Target("udp", "127.0.0.1", 5060))


def test_firewall_floods_are_per_source_and_exemptions_hold() -> None:
    clock = Clock()
    firewall = SipFirewall(clock, parse_config({
        "security": {"flood": {"requests_per_second": 1, "burst": 2, "ban_time": 10}, "allow": ["192.0.2.0/24"]},
        "trunks": [{"name": "carrier", "destination": {"host": "198.18.0.1"}, "inbound_hosts": ["198.19.0.0/16"]}],
    }))
    assert [firewall.admit_source(ATTACKER) for _ in range(4)] == [True, True, False, False]
    assert firewall.counts[FLOOD] == 2
    for exempt in ("127.0.0.1", "::1", "192.0.2.55", "198.18.0.1", "198.19.4.4"):
        assert all(firewall.admit_source(Target("udp", exempt, 5060)) for _ in range(50)), exempt
    assert firewall.admit_source(PHONE)
    clock.advance(10.5)
    assert firewall.admit_source(ATTACKER)


def test_trunk_networks_take_literals_and_inbound_hosts_only() -> None:
    cfg = parse_config({"trunks": [
        {"name": "a", "destination": {"host": "sip.example.net"}, "backups": [{"host": "2001:db8::5"}],
         "inbound_hosts": ["198.19.0.0/16"]},
    ]})
    assert trunk_networks(cfg) == ["198.19.0.0/16", "2001:db8::5"]


def test_loopback_trust_can_be_turned_off() -> None:
    firewall = SipFirewall(Clock(), config(trust_loopback=False, flood={"burst": 1}))
    assert firewall.admit_source(Target("udp", "127.0.0.1", 5060))
    assert not firewall.admit_source(Target("udp", "127.0.0.1", 5060))
    assert firewall.admit_source(Target("udp", "::1", 5060))  # another source: its own bucket


def test_a_scanner_user_agent_is_dropped_and_its_source_banned() -> None:
    firewall = SipFirewall(Clock(), config())
    assert firewall.screen(parse_message(options("Yealink")), ATTACKER)
    assert not firewall.screen(parse_message(options("friendly-scanner")), ATTACKER)
    assert firewall.counts[USER_AGENT] == 1
    assert not firewall.admit_source(ATTACKER)  # banned: the next datagram is dropped unparsed
    # A trusted source is dropped but not banned (a test or monitoring box).
    local = Target("udp", "127.0.0.1", 5060)
    assert not firewall.screen(parse_message(options("sipcli/v1.8")), local)
    assert firewall.admit_source(local)


def test_too_many_headers_are_dropped() -> None:
    firewall = SipFirewall(Clock(), config(limits={"max_headers": 20}))
    assert firewall.screen(parse_message(options(headers=10)), PHONE)
    assert not firewall.screen(parse_message(options(headers=20)), PHONE)
    assert firewall.counts[HEADERS] == 1
    assert SipFirewall(Clock(), config(limits={"max_headers": 0})).screen(parse_message(options(headers=500)), PHONE)


class _Owner:
    max_connections_per_ip = 0
    max_server_transactions = 0
    max_calls = 0
    receiver = None
    source_filter = None


def test_reload_swaps_the_lists_and_limits_keeps_the_bans() -> None:
    clock = Clock()
    firewall = SipFirewall(clock, config(flood={"burst": 1}, trust_loopback=False))
    transports, layer, calls = _Owner(), _Owner(), _Owner()
    seen: list = []
    transports.receiver = lambda message, source: seen.append(message)
    firewall.install(transports, layer, calls)
    assert (transports.max_connections_per_ip, layer.max_server_transactions, calls.max_calls) == (64, 50000, 5000)
    assert transports.source_filter == firewall.admit_source
    transports.receiver(parse_message(options("friendly-scanner")), ATTACKER)
    transports.receiver(parse_message(options("Yealink")), PHONE)
    assert len(seen) == 1
    firewall.reload(config(acl={"deny": ["198.51.100.0/24"]}, user_agent_blocklist=[],
                           limits={"max_transactions": 7, "max_dialogs": 3, "max_connections_per_ip": 2}))
    assert (transports.max_connections_per_ip, layer.max_server_transactions, calls.max_calls) == (2, 7, 3)
    assert not firewall.admit_source(PHONE)  # denied now
    assert not firewall.admit_source(ATTACKER)  # still banned
    transports.receiver(parse_message(options("friendly-scanner")), Target("udp", "192.0.2.1", 5060))
    assert len(seen) == 2  # the block list is empty now
    assert firewall.metrics["bans_active"] == 1 and firewall.metrics["dropped_acl"] == 1


def test_the_firewall_counts_reach_metrics(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from pbxd.metrics import build_registry
    from pbxd.service import PbxService

    service = PbxService(parse_config({"data_dir": str(tmp_path), "security": {
        "acl": {"deny": ["203.0.113.0/24"]}, "flood": {"burst": 1}}}), Clock())
    firewall = service.security
    firewall.admit_source(ATTACKER)
    firewall.admit_source(PHONE)
    firewall.admit_source(PHONE)
    registry, collector = build_registry(service, service.events)
    try:
        assert registry.get_sample_value("pbxd_security_dropped_total", {"reason": "acl"}) == 1
        assert registry.get_sample_value("pbxd_security_dropped_total", {"reason": "flood"}) == 1
        assert registry.get_sample_value("pbxd_security_bans_total") == 1
        assert registry.get_sample_value("pbxd_security_bans_active") == 1
        assert registry.get_sample_value("pbxd_sip_refused_over_limit_total") == 0
        assert registry.get_sample_value("pbxd_recording_failures_total") is not None
    finally:
        collector.close()
