"""What the trunk tests share: a SIP core stand-in over a real transaction layer."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.names import authority, dns
from twisted.names.error import DNSNameError

from pbxd.sip.timers import TimerSettings
from pbxd.sip.transaction import TransactionLayer
from transaction_support import RecordingTransport, RecordingTU


class Transports(RecordingTransport):
    """Records sends; our address is always 192.0.2.200:5060."""

    def sent_by(self, transport: str, destination_host: str | None = None) -> tuple[str, int]:
        return "192.0.2.200", 5060


class Core:
    """What trunks need of pbxd.core.SipCore: a transaction layer, transports, a name."""

    def __init__(self, clock: Clock) -> None:
        self.transports = Transports(clock)
        self.layer = TransactionLayer(clock, self.transports, RecordingTU(clock), TimerSettings())
        self.transports.layer = self.layer
        self.server_name = "pbxd-test"


class NoSuchDomain:
    """A resolver for which no name exists (NXDOMAIN)."""

    def query(self, query: Any, timeout: Any = None) -> defer.Deferred[Any]:
        return defer.fail(DNSNameError(query))


class ZoneAuthority(authority.FileAuthority):
    """A twisted.names authority for the zone ``test``, its records in a dict
    the test may change (serve it with server.DNSServerFactory)."""

    def __init__(self, records: dict[bytes, list]) -> None:
        self._records = records
        super().__init__("memory")

    def loadFile(self, filename: str) -> None:  # noqa: N802 (Twisted's name)
        self.soa = (b"test", dns.Record_SOA(mname=b"ns.test", rname=b"root.test", minimum=60, ttl=60))
        self.records = self._records
