"""What the registrar remembers between REGISTERs: whether a host is ours, and whether
a Contact is behind a NAT; the answers are the same as without memory, and memory
stays bounded when the sender chooses the names."""

from __future__ import annotations

from types import SimpleNamespace

from pbxd.core import LocalDomains
from pbxd.registrar.location import BoundContact, behind_nat
from pbxd.registrar.registrar import Registrar
from pbxd.store import Binding


def registrar(domains: LocalDomains) -> Registrar:
    core = SimpleNamespace(domains=domains)
    return Registrar(core, location=None, authenticator=None, store=None)  # type: ignore[arg-type]


def test_local_hosts_are_answered_as_local_domains_answers() -> None:
    domains = LocalDomains(["pbx.test"], ["192.0.2.10"])
    memo = registrar(domains)
    hosts = ["pbx.test", "PBX.test.", "192.0.2.10", "[::1]", "127.0.0.1", "other.test",
             "192.0.2.11", "", "[", "pbx.test:5060"]
    for _ in range(2):  # the second round from memory
        assert [memo._is_local(h) for h in hosts] == [domains.is_local(h) for h in hosts]


def test_local_hosts_memory_is_bounded_and_follows_a_new_domain_list() -> None:
    memo = registrar(LocalDomains(["pbx.test"], []))
    for n in range(5000):
        assert not memo._is_local(f"guess-{n}.test")
    assert len(memo._local_hosts) <= 1024
    assert memo._is_local("pbx.test") and not memo._is_local("new.test")
    memo.core.domains = LocalDomains(["new.test"], [])
    assert memo._is_local("new.test") and not memo._is_local("pbx.test")


def binding(contact_uri: str, transport: str = "udp", host: str = "203.0.113.7",
            port: int = 5060) -> Binding:
    return Binding(aor="sip:1001@pbx.test", contact_uri=contact_uri, expires_at=100.0,
                   call_id="c", cseq=1, source_transport=transport, source_host=host,
                   source_port=port, received_at=1.0)


def test_nat_is_judged_per_contact_and_flow_as_without_memory() -> None:
    cases = [
        binding("sip:1001@203.0.113.7:5060"),
        binding("sip:1001@203.0.113.7:5060", port=40000),  # same Contact, another flow
        binding("sip:1001@192.168.1.5:5060"),
        binding("sip:1001@203.0.113.7:5060;transport=tcp", transport="tcp", port=50123),
        binding("sip:1001@203.0.113.7:5060", transport="tcp", port=50123),
        binding("sip:1001@phone.example.com"),
        binding("tel:+15551234"),
        binding("sip:1001@[2001:db8::5]:5060", host="2001:db8::5"),
    ]
    for _ in range(2):
        for b in cases:
            contact = BoundContact.of(b)
            assert contact.nat == behind_nat(b.contact_uri, contact.flow), b
    assert [BoundContact.of(b).nat for b in cases[:3]] == [False, True, True]
