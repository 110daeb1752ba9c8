"""POST /ami/v1/reload/acl applies the config file's security section live."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest_twisted
import yaml

from pbxd.transport.target import Target
from tests.web_support import WebPbx, start_web_pbx

NEIGHBOUR = Target("udp", "127.0.0.2", 5060)


@pytest_twisted.async_yield_fixture
async def pbx(tmp_path: Path) -> AsyncIterator[WebPbx]:
    running = await start_web_pbx(tmp_path)
    yield running
    await running.stop()


def edit_security(pbx: WebPbx, **security: object) -> None:
    data = yaml.safe_load(pbx.config_path.read_text())
    data["security"] = security
    pbx.config_path.write_text(yaml.safe_dump(data))


@pytest_twisted.ensureDeferred
async def test_reload_acl_applies_the_security_section(pbx: WebPbx) -> None:
    firewall = pbx.service.security
    assert firewall.admit_source(NEIGHBOUR)
    edit_security(pbx, acl={"deny": ["127.0.0.2"]}, user_agent_blocklist=["evil-dialer"],
                  limits={"max_transactions": 123})
    reply = await pbx.call("POST", "/ami/v1/reload/acl")
    assert reply.status == 200, reply.body
    assert reply.json["reloaded"] == "acl" and reply.json["applied"] == ["security"]
    assert not firewall.admit_source(NEIGHBOUR)
    assert firewall.user_agents.words == ("evil-dialer",)
    assert pbx.service.sip.core.layer.max_server_transactions == 123
    assert pbx.service.config.security.acl.deny == ("127.0.0.2/32",)


@pytest_twisted.ensureDeferred
async def test_a_bad_security_section_changes_nothing(pbx: WebPbx) -> None:
    before = pbx.service.config
    edit_security(pbx, acl={"deny": ["not-an-address"]})
    reply = await pbx.call("POST", "/ami/v1/reload/acl")
    assert reply.status == 422 and "security.acl.deny[0]" in reply.json["error"]
    assert pbx.service.config is before
    assert pbx.service.security.admit_source(NEIGHBOUR)
