"""/metrics: the Prometheus exposition of a running PbxService, scraped over
HTTP with treq and parsed with prometheus-client's own parser, after real
REGISTERs from sipp (one good, one with a wrong password)."""

from __future__ import annotations

from pathlib import Path

import pytest
import pytest_twisted
import treq
from twisted.internet import reactor

from pbxd.events import CallEvent, EventBus
from pbxd.metrics import build_registry
from pbxd.service import PbxService
from tests.management_support import READ_TOKEN, TOKENS, bearer, samples, serving
from tests.sipp_runner import requires_sipp
from tests.test_registrar import pbx_config, sipp_register, start_pbx

pytestmark = [requires_sipp, pytest.mark.sipp]


@pytest_twisted.async_yield_fixture
async def metered(tmp_path: Path):
    """A PbxService with /metrics on its HTTP root; yields (service, url)."""
    service = await start_pbx(pbx_config(tmp_path / "data", http={"port": 0, "tokens": TOKENS}))
    running = serving(service)
    yield service, running.base + "/metrics"
    await running.stop()


async def scrape(url: str, **headers: str) -> tuple[str, str]:
    response = await treq.get(url, headers={"Authorization": [f"Bearer {READ_TOKEN}"],
                                            **{k: [v] for k, v in headers.items()}})
    assert response.code == 200
    return response.headers.getRawHeaders("content-type")[0], (await treq.text_content(response))


@pytest_twisted.ensureDeferred
async def test_metrics_after_real_registrations(metered, tmp_path: Path) -> None:
    service, url = metered
    bus = service.events
    content_type, text = await scrape(url)
    assert content_type == "text/plain; version=0.0.4; charset=utf-8"
    before = samples(text)
    assert before[("pbxd_registrations", ())] == 0

    await sipp_register(service, tmp_path, "udp")
    await sipp_register(service, tmp_path, "udp", password="guess", expect=403)
    bus.publish(CallEvent("ended", 0.0, "c1", "1001", "1002", "internal", disposition="busy"))

    after = samples((await scrape(url))[1])
    assert after[("pbxd_registrations", ())] == 1
    assert after[("pbxd_registration_events_total", (("type", "registered"),))] == 1
    assert after[("pbxd_auth_failures_total", ())] >= 1
    # Two REGISTERs each way per sipp run, at least.
    assert after[("pbxd_sip_messages_total", (("direction", "in"),))] >= 4
    assert after[("pbxd_sip_messages_total", (("direction", "out"),))] >= 4
    assert after[("pbxd_calls_total", (("disposition", "busy"),))] == 1
    assert after[("pbxd_events_published_total", (("topic", "registration"),))] == 1
    assert after[("pbxd_store_errors_total", ())] == 0
    assert ("pbxd_sip_retransmissions_total", ()) in after
    assert (("pbxd_active_calls", ()) in after) == hasattr(service, "calls")
    assert any(name == "pbxd_sip_transactions" for name, _ in after)
    assert any(name.startswith("process_") for name, _ in after)


@pytest_twisted.ensureDeferred
async def test_openmetrics_on_request_and_wrong_methods(metered) -> None:
    _, url = metered
    content_type, text = await scrape(url, Accept="application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text")
    assert text.rstrip().endswith("# EOF")
    response = await treq.get(url)
    assert response.code == 401 and "error" in await response.json()
    response = await treq.post(url, data=b"x", headers=bearer(READ_TOKEN))
    assert response.code == 405
    assert response.headers.getRawHeaders("allow") == ["GET, HEAD"]
    assert (await response.json())["error"]
    response = await treq.get(url + "/nested", headers=bearer(READ_TOKEN))
    assert response.code == 404 and "error" in await response.json()


def test_a_service_not_started_is_scraped_without_its_registrar(tmp_path: Path) -> None:
    service = PbxService(pbx_config(tmp_path / "data"), reactor)
    registry, collector = build_registry(service, EventBus())
    names = {metric.name for metric in registry.collect()}
    collector.close()
    assert "pbxd_sip_messages" in names and "pbxd_registrations" not in names


@pytest_twisted.ensureDeferred
async def test_metrics_can_be_turned_off(tmp_path: Path) -> None:
    service = await start_pbx(pbx_config(tmp_path / "data", http={"port": 0, "tokens": TOKENS},
                                         metrics={"enabled": False}))
    running = serving(service)
    try:
        response = await treq.get(running.base + "/metrics", headers=bearer(READ_TOKEN))
        assert response.code == 404 and "error" in await response.json()
    finally:
        await running.stop()
