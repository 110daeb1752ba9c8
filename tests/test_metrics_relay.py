"""The media relay's Prometheus counters (pbxd.metrics.RelayTotals): cumulative
over ended calls and the calls up now, never lower on a later scrape — when a
call ends, when a stream's loss figure falls (a late packet), or when a call
leaves without an ended event. Read through the real collector of a PbxService
and prometheus-client's own parser. And docs/events.md lists every metric."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import attrs
from prometheus_client.exposition import generate_latest
from twisted.internet import reactor

from pbxd.call.call import CallState
from pbxd.events import CallEvent, EventBus
from pbxd.metrics import RelayTotals, build_registry
from pbxd.service import PbxService
from tests.call_support import pbx_config
from tests.management_support import samples


@attrs.define
class FakeRelay:
    """What RelayTotals reads of a MediaRelay: stats() per leg."""

    figures: dict[str, list[int]]  # leg -> [received packets, octets, lost, sent packets, octets]

    def stats(self) -> dict[str, Any]:
        return {leg: {"received": {"packets": r, "octets": ro, "lost": lost, "loss": 0.0},
                      "sent": {"packets": s, "octets": so}}
                for leg, (r, ro, lost, s, so) in self.figures.items()}


@attrs.define
class FakeMedia:
    relay: FakeRelay | None


@attrs.define
class FakeCall:
    """What the collector reads of a Call."""

    id: str
    media: FakeMedia
    manager: Any = None
    from_number: str = "1001"
    to_number: str = "1002"
    direction: str = "internal"
    trunk: str | None = None
    state: CallState = CallState.ANSWERED


def relayed_call(call_id: str, a: list[int], b: list[int]) -> FakeCall:
    return FakeCall(call_id, FakeMedia(FakeRelay({"a": a, "b": b})))


def relay_samples(registry: Any) -> dict[str, float]:
    found = samples(generate_latest(registry).decode())
    return {name + "".join(f"{{{v}}}" for _, v in labels): value
            for (name, labels), value in found.items() if name.startswith("pbxd_relay")}


def test_relay_counters_never_go_down(tmp_path: Path) -> None:
    service = PbxService(pbx_config(tmp_path / "data"), reactor)
    bus = EventBus()
    registry, collector = build_registry(service, bus)
    try:
        calls = service.calls.manager.calls
        assert relay_samples(registry) == {
            "pbxd_relay_packets_total{in}": 0, "pbxd_relay_packets_total{out}": 0,
            "pbxd_relay_bytes_total{in}": 0, "pbxd_relay_bytes_total{out}": 0,
            "pbxd_relay_lost_packets_total": 0, "pbxd_relayed_calls": 0}
        first = calls["c1"] = relayed_call("c1", [100, 16000, 5, 90, 14400], [90, 14400, 0, 100, 16000])
        bus.publish(CallEvent("ringing", 1.0, "c1", "1001", "1002", "internal"))
        one = relay_samples(registry)
        assert one["pbxd_relay_packets_total{in}"] == 190 and one["pbxd_relay_bytes_total{out}"] == 30400
        assert one["pbxd_relay_lost_packets_total"] == 5 and one["pbxd_relayed_calls"] == 1
        # A late packet lowers the stream's loss; more packets go through; the call ends.
        first.media.relay.figures["a"] = [120, 19200, 4, 110, 17600]
        calls.pop("c1")
        bus.publish(CallEvent("ended", 2.0, "c1", "1001", "1002", "internal", disposition="answered"))
        two = relay_samples(registry)
        assert two["pbxd_relay_packets_total{in}"] == 210 and two["pbxd_relay_lost_packets_total"] == 5
        assert two["pbxd_relayed_calls"] == 0
        # The ended call's figures stay counted; a new one adds to them, and one the
        # collector never saw ring (started before it) counts as well.
        calls["c2"] = relayed_call("c2", [10, 1600, 1, 10, 1600], [0, 0, 0, 0, 0])
        calls["c3"] = FakeCall("c3", FakeMedia(None))  # direct media: nothing to add
        three = relay_samples(registry)
        assert three["pbxd_relay_packets_total{in}"] == 220 and three["pbxd_relay_lost_packets_total"] == 6
        # c2 leaves without an ended event: its figures stay all the same.
        del calls["c2"]
        four = relay_samples(registry)
        assert four["pbxd_relay_packets_total{in}"] == 220 and four["pbxd_relay_bytes_total{in}"] == three[
            "pbxd_relay_bytes_total{in}"]
        for earlier, later in ((one, two), (two, three), (three, four)):
            assert all(later[name] >= value for name, value in earlier.items() if name != "pbxd_relayed_calls")
        assert len(collector.relay) == 1  # c3 only: the ended ones are not held
    finally:
        collector.close()


def test_totals_follow_a_call_once() -> None:
    totals = RelayTotals()
    call = relayed_call("c", [1, 2, 3, 4, 5], [0, 0, 0, 0, 0])
    totals.follow(call)
    totals.follow(call)
    totals.ended_call("c")
    totals.ended_call("c")  # a second ended event adds nothing
    totals.ended_call("unknown")
    assert totals.totals({}) == {("received", "packets"): 1, ("sent", "packets"): 4, ("received", "octets"): 2,
                                 ("sent", "octets"): 5, ("received", "lost"): 3}


def test_every_metric_is_documented(tmp_path: Path) -> None:
    """docs/events.md's table names every pbxd_* family a scrape has (the registrar's
    need a started service: test_metrics scrapes those)."""
    table = (Path(__file__).parent.parent / "docs" / "events.md").read_text()
    documented = set(re.findall(r"^\| `(pbxd_[a-z_]+)`", table, re.MULTILINE))
    service = PbxService(pbx_config(tmp_path / "data"), reactor)
    registry, collector = build_registry(service, EventBus())
    try:
        exposed = {family.name + ("_total" if family.type == "counter" else "")
                   for family in registry.collect() if family.name.startswith("pbxd_")}
    finally:
        collector.close()
    assert "pbxd_calls_refused_toll_fraud_total" in exposed
    assert exposed - documented == set()
