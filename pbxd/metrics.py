"""Prometheus metrics: pbxd's own counters, read when /metrics is scraped.

Nothing here counts on the hot path: :class:`PbxCollector` reads the
counters the layers keep anyway (SipTransports.counters, the transaction
layer's table and retransmissions, AuthGuard's totals, WebhookClient.metrics,
the store's error count, the location service's size, the live calls) at
scrape time. The only state of its own comes from the event bus: calls by
disposition (each call's ``ended`` event), registration events by type, and
the media relay's totals (:class:`RelayTotals`).

Every metric is named ``pbxd_*``; the registry also carries the standard
``process_*`` and ``python_*`` collectors of prometheus-client.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, SummaryMetricFamily
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from pbxd import events

WEBHOOK_OUTCOMES = ("sent", "failed", "retried", "spooled", "redelivered", "rejected", "lost")

# A relayed call's figures: (relay leg, figure) -> count.
_RELAY_FIGURES = (("received", "packets"), ("sent", "packets"), ("received", "octets"), ("sent", "octets"),
                  ("received", "lost"))


class RelayTotals:
    """The media relay's counters since pbxd started: the ended calls' final
    figures plus the calls up now, so that a Prometheus counter never goes down
    when a call ends.

    A call is followed from its ``ringing`` event to its ``ended`` one (or until
    the manager no longer holds it). Each of its figures counts as the highest
    seen: packets and octets only grow, but a stream's ``lost`` falls when a
    late packet turns up or the phone restarts its stream (RFC 3550 A.3), and
    a counter must not.
    """

    def __init__(self) -> None:
        self.ended: dict[tuple[str, str], int] = dict.fromkeys(_RELAY_FIGURES, 0)
        self._calls: dict[str, tuple[Any, dict[tuple[str, str, str], int]]] = {}

    def __len__(self) -> int:
        return len(self._calls)

    def follow(self, call: Any) -> None:
        self._calls.setdefault(call.id, (call, {}))

    def ended_call(self, call_id: str) -> None:
        followed = self._calls.pop(call_id, None)
        if followed is not None:
            for key, count in self._highest(*followed).items():
                self.ended[key] += count

    def totals(self, live: dict[str, Any]) -> dict[tuple[str, str], int]:
        """Every figure summed over the ended calls and the calls up now
        (``live``: the manager's calls by id, each followed from now on)."""
        for call_id in [call_id for call_id in self._calls if call_id not in live]:
            self.ended_call(call_id)  # gone without an ended event: it ended all the same
        for call in live.values():
            self.follow(call)
        totals = dict(self.ended)
        for followed in self._calls.values():
            for key, count in self._highest(*followed).items():
                totals[key] += count
        return totals

    @staticmethod
    def _highest(call: Any, highest: dict[tuple[str, str, str], int]) -> dict[tuple[str, str], int]:
        relay = getattr(call.media, "relay", None)
        if relay is not None:
            for leg, stats in relay.stats().items():
                for side, figure in _RELAY_FIGURES:
                    key = (leg, side, figure)
                    highest[key] = max(highest.get(key, 0), int(stats[side][figure]))
        figures = dict.fromkeys(_RELAY_FIGURES, 0)
        for (_, side, figure), count in highest.items():
            figures[side, figure] += count
        return figures


class PbxCollector(Collector):
    """Reads a :class:`pbxd.service.PbxService` tree at scrape time.

    Parts not built yet (the registrar before the store opens) are left out
    of a scrape rather than reported as zero.
    """

    def __init__(self, service: Any, bus: events.EventBus) -> None:
        self.service = service
        self.bus = bus
        self.calls_ended: dict[str, int] = {}
        self.registration_events: dict[str, int] = dict.fromkeys(events.REGISTRATION_TYPES, 0)
        self.relay = RelayTotals()
        self._subscription = bus.subscribe(self._observe, [events.CALL, events.REGISTRATION])

    def close(self) -> None:
        self._subscription.cancel()

    def _observe(self, event: Any) -> None:
        if event.topic == events.REGISTRATION:
            self.registration_events[event.type] = self.registration_events.get(event.type, 0) + 1
        elif getattr(event, "type", None) == "ringing":
            calls = getattr(self.service, "calls", None)
            call = None if calls is None else calls.manager.calls.get(event.call_id)
            if call is not None:
                self.relay.follow(call)
        elif getattr(event, "type", None) == "ended":
            disposition = event.disposition or "unknown"
            self.calls_ended[disposition] = self.calls_ended.get(disposition, 0) + 1
            self.relay.ended_call(event.call_id)

    def describe(self) -> list[Any]:
        # Families depend on what is built; an empty describe() keeps the
        # registry from calling collect() at registration time.
        return []

    def collect(self) -> Iterator[Any]:
        yield from self._sip()
        yield from self._security()
        yield from self._registrar()
        yield from self._calls()
        yield from self._webhooks()
        yield from self._store()
        yield from self._events()

    # -- per layer -----------------------------------------------------------------

    def _sip(self) -> Iterator[Any]:
        sip = self.service.sip
        counters = sip.transports.counters
        messages = CounterMetricFamily("pbxd_sip_messages", "SIP messages parsed in and sent out",
                                       labels=["direction"])
        messages.add_metric(["in"], counters.messages_in)
        messages.add_metric(["out"], counters.messages_out)
        yield messages
        yield CounterMetricFamily("pbxd_sip_parse_errors", "Unparseable SIP messages and broken streams",
                                  value=counters.parse_errors)
        yield CounterMetricFamily("pbxd_sip_dropped", "SIP messages dropped (oversize, misrouted, full buffers)",
                                  value=counters.dropped)
        yield CounterMetricFamily("pbxd_sip_transport_errors", "SIP transport failures reported",
                                  value=counters.transport_errors)
        yield GaugeMetricFamily("pbxd_sip_connections", "Open SIP TCP/TLS connections",
                                value=sip.transports.open_connections)
        layer = sip.core.layer
        transactions = GaugeMetricFamily("pbxd_sip_transactions", "Live SIP transactions by side and state",
                                         labels=["side", "state"])
        for side, states in layer.transactions.counts().items():
            for state, count in sorted(states.items()):
                transactions.add_metric([side, state], count)
        yield transactions
        yield CounterMetricFamily("pbxd_sip_retransmissions", "Requests and responses resent by Timers A, E and G",
                                  value=layer.retransmissions)

    def _security(self) -> Iterator[Any]:
        """pbxd.security (docs/security.md): drops by reason, flood bans, refusals over the limits;
        recordings lost to a full disk."""
        security = getattr(self.service, "security", None)
        if security is None:
            return
        dropped = CounterMetricFamily("pbxd_security_dropped", "SIP dropped by the firewall, by reason",
                                      labels=["reason"])
        for name, value in security.metrics.items():
            if name.startswith("dropped_"):
                dropped.add_metric([name.removeprefix("dropped_")], value)
        yield dropped
        yield CounterMetricFamily("pbxd_security_bans", "Sources banned for flooding or a scanner's User-Agent",
                                  value=security.flood.bans_total)
        yield GaugeMetricFamily("pbxd_security_bans_active", "Flood bans in force now",
                                value=security.flood.bans_active)
        yield GaugeMetricFamily("pbxd_security_tracked_sources", "Sources with a rate bucket or a ban held",
                                value=security.flood.tracked)
        yield CounterMetricFamily("pbxd_sip_refused_over_limit",
                                  "New requests answered 503 because the transaction table was full",
                                  value=self.service.sip.core.layer.refused_over_limit)
        from pbxd.media.recorder import Recorder

        yield CounterMetricFamily("pbxd_recording_failures", "Recordings that could not start or were cut short"
                                  " (a full disk): the calls went on unrecorded", value=Recorder.failures)

    def _registrar(self) -> Iterator[Any]:
        registrar = self.service.registrar
        location = registrar.location
        if location is not None:
            yield GaugeMetricFamily("pbxd_registrations", "Registered contacts (bindings) held",
                                    value=len(location))
            online = sum(1 for contact in location.contacts() if contact.online)
            yield GaugeMetricFamily("pbxd_registrations_online", "Registered contacts not marked offline by qualify",
                                    value=online)
        authenticator = registrar.authenticator
        if authenticator is not None:
            guard = authenticator.guard
            yield CounterMetricFamily("pbxd_auth_failures", "Failed digest authentications",
                                      value=guard.failures_total)
            yield CounterMetricFamily("pbxd_auth_bans", "Sources and users banned for failing too often",
                                      value=guard.bans_total)
            yield GaugeMetricFamily("pbxd_auth_bans_active", "Bans in force now", value=guard.bans_active)

    def _calls(self) -> Iterator[Any]:
        calls = getattr(self.service, "calls", None)
        if calls is not None:
            active = calls.manager.active
            yield GaugeMetricFamily("pbxd_active_calls", "Calls ringing or up", value=len(active))
            refused = CounterMetricFamily("pbxd_calls_refused_toll_fraud",
                                          "Calls refused by the toll-fraud guards (docs/security.md), by reason",
                                          labels=["reason"])
            for reason, count in calls.manager.guard_refusals.items():
                refused.add_metric([reason], count)
            yield refused
            yield GaugeMetricFamily("pbxd_relayed_calls", "Calls up now whose media pbxd relays",
                                    value=sum(getattr(call.media, "relay", None) is not None for call in active))
            yield from self._relay(self.relay.totals(calls.manager.calls))
        ended = CounterMetricFamily("pbxd_calls", "Calls ended, by disposition", labels=["disposition"])
        for disposition, count in sorted(self.calls_ended.items()):
            ended.add_metric([disposition], count)
        yield ended

    @staticmethod
    def _relay(totals: dict[tuple[str, str], int]) -> Iterator[Any]:
        """The media relay since start (RelayTotals): ended calls and the calls up now."""
        packets = CounterMetricFamily("pbxd_relay_packets", "RTP packets relayed (in: from the phones,"
                                      " out: to them)", labels=["direction"])
        octets = CounterMetricFamily("pbxd_relay_bytes", "RTP payload bytes relayed (in: from the phones,"
                                     " out: to them)", labels=["direction"])
        for direction, side in (("in", "received"), ("out", "sent")):
            packets.add_metric([direction], totals[side, "packets"])
            octets.add_metric([direction], totals[side, "octets"])
        yield packets
        yield octets
        yield CounterMetricFamily("pbxd_relay_lost_packets", "RTP packets lost on the way to pbxd",
                                  value=totals["received", "lost"])

    def _webhooks(self) -> Iterator[Any]:
        clients = [(name, getattr(getattr(self.service, name, None), "webhooks", None))
                   for name in ("registrar", "calls")]
        clients = [(name, client) for name, client in clients if client is not None]
        requests = CounterMetricFamily("pbxd_webhook_requests", "Webhook deliveries by outcome",
                                       labels=["client", "outcome"])
        latency = SummaryMetricFamily("pbxd_webhook_latency_seconds", "Time to a webhook's answer",
                                      labels=["client"])
        for name, client in clients:
            metrics = client.metrics
            for outcome in WEBHOOK_OUTCOMES:
                requests.add_metric([name, outcome], getattr(metrics, outcome))
            latency.add_metric([name], metrics.latency_count, metrics.latency_sum)
        yield requests
        yield latency

    def _store(self) -> Iterator[Any]:
        store = self.service.store.store
        if store is not None:
            yield CounterMetricFamily("pbxd_store_errors", "Database operations that failed",
                                      value=store.errors)

    def _events(self) -> Iterator[Any]:
        published = CounterMetricFamily("pbxd_events_published", "Events published on the bus, by topic",
                                        labels=["topic"])
        for topic, count in self.bus.published.items():
            published.add_metric([topic], count)
        yield published
        registrations = CounterMetricFamily("pbxd_registration_events", "Location events by type",
                                            labels=["type"])
        for type, count in self.registration_events.items():
            registrations.add_metric([type], count)
        yield registrations


def build_registry(service: Any, bus: events.EventBus) -> tuple[CollectorRegistry, PbxCollector]:
    """A registry with pbxd's collector and the process and platform ones."""
    registry = CollectorRegistry(auto_describe=False)
    collector = PbxCollector(service, bus)
    registry.register(collector)
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    return registry, collector


__all__ = ["PbxCollector", "RelayTotals", "build_registry"]
