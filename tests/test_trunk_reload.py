"""Trunks changed while pbxd runs, over real HTTP, with sipp playing the carrier.

A trunk added through ``/console/sip-trunk`` registers; deleted, it
unregisters (``Expires: 0``). ``POST /ami/v1/reload/trunks`` with a bad file
changes nothing; with a trunk moved to another carrier, the old one sees the
un-REGISTER and the new one the REGISTER. Tests wait on registration events.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest_twisted
import treq
import yaml
from twisted.internet import defer

from call_support import pbx_config, start_pbx
from pbxd.trunks.registration import REGISTERED, RegistrationStatus, TrunkRegistration
from sipp_runner import requires_sipp, scenario
from test_trunk_sipp import (
    PASSWORD, USER, Carrier, free_udp_port, received_registers, register_scenario, when_state,
)
from tests.management_support import ADMIN_TOKEN, TOKENS, WebPbx, bearer, serving

pytestmark = requires_sipp


def trunk_data(port: int, **changes: Any) -> dict[str, Any]:
    return {"name": "carrier", "destination": {"host": "127.0.0.1", "port": port, "transport": "udp"},
            "username": USER, "password": PASSWORD, "from_domain": "carrier.test",
            "register": {"enabled": True, "expires": 60, "retry_min": 0.3, "retry_max": 1.0}, **changes}


def carrier(tmp_path: Path, port: int) -> Carrier:
    return Carrier(register_scenario(tmp_path, 60), port)


async def serve(tmp_path: Path, trunks: list[dict[str, Any]]) -> WebPbx:
    config_file = tmp_path / "pbxd.yml"
    config_file.write_text("# pbxd test config\n" + yaml.safe_dump({"trunks": trunks}, sort_keys=False))
    config = pbx_config(tmp_path / "data", http={"port": 0, "tokens": TOKENS}, trunks=trunks)
    return serving(await start_pbx(config), config_file)


def registration_of(pbx: WebPbx) -> TrunkRegistration:
    trunk = pbx.service.trunks.registry.trunk("carrier")
    assert trunk is not None and trunk.registration is not None
    return trunk.registration  # type: ignore[no-any-return]


def registered(registration: TrunkRegistration) -> defer.Deferred[RegistrationStatus]:
    """Fires once the registration is registered (at once if it is)."""
    if registration.status.state == REGISTERED:
        return defer.succeed(registration.status)
    return when_state(registration, REGISTERED)


async def request(method: str, url: str, body: Any = None) -> tuple[int, Any]:
    kwargs: dict[str, Any] = {"headers": {**bearer(ADMIN_TOKEN), "Content-Type": ["application/json"]}}
    if body is not None:
        kwargs["data"] = json.dumps(body).encode()
    response = await treq.request(method, url, **kwargs)
    return response.code, json.loads(await treq.content(response))


@pytest_twisted.ensureDeferred
async def test_console_adds_a_trunk_that_registers_and_deletes_it_unregistering(tmp_path: Path) -> None:
    port = free_udp_port()
    sipp = carrier(tmp_path, port)
    pbx = await serve(tmp_path, [])
    try:
        status, body = await request("POST", pbx.base + "/console/sip-trunk", trunk_data(port))
        assert status == 201 and body["trunk"]["password"] == "********" and PASSWORD not in json.dumps(body)
        status_now = await registered(registration_of(pbx))
        assert status_now.target == f"udp:127.0.0.1:{port}"
        assert [t.name for t in pbx.service.config.trunks] == ["carrier"]
        status, body = await request("DELETE", pbx.base + "/console/sip-trunk/carrier")
        assert status == 200 and pbx.service.trunks.registry.trunk("carrier") is None
        result = await sipp.done  # the scenario ends with the un-REGISTER
        assert result.ok, result.explain()
        assert "Expires: 0" in received_registers(result)[-1]
        assert pbx.service.trunks.registrations == []
    finally:
        await pbx.stop()
        await sipp.stop()


@pytest_twisted.ensureDeferred
async def test_reload_trunks_moves_a_trunk_to_another_carrier(tmp_path: Path) -> None:
    first_port, second_port = free_udp_port(), free_udp_port()
    first = carrier(tmp_path, first_port)
    pbx = await serve(tmp_path, [trunk_data(first_port)])
    second = None
    try:
        old = registration_of(pbx)
        await registered(old)
        # A bad file: refused with the reason, and the trunk registered as it was.
        pbx.web.config_path.write_text(yaml.safe_dump({"trunks": [trunk_data(second_port, password=None)]}))
        status, body = await request("POST", pbx.base + "/ami/v1/reload/trunks")
        assert status == 422 and "needs username and password" in body["error"]
        assert registration_of(pbx) is old and old.status.state == REGISTERED
        assert pbx.service.config.trunks[0].destination.port == first_port
        # A good one: the first carrier sees the un-REGISTER, the second the REGISTER.
        second = carrier(tmp_path, second_port)
        pbx.web.config_path.write_text(yaml.safe_dump({"trunks": [trunk_data(second_port)]}))
        status, body = await request("POST", pbx.base + "/ami/v1/reload/trunks")
        assert status == 200 and body["trunks"] == {"added": [], "changed": ["carrier"], "removed": []}
        result = await first.done
        assert result.ok, result.explain()
        assert "Expires: 0" in received_registers(result)[-1]
        new = registration_of(pbx)
        assert new is not old and old.status.state == "stopped"
        status_now = await registered(new)
        assert status_now.target == f"udp:127.0.0.1:{second_port}"
    finally:
        await pbx.stop()
        await first.stop()
    result = await second.done  # unregistered as pbxd stopped
    assert result.ok, result.explain()
