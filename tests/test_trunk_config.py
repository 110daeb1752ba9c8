"""The trunks section of the configuration: defaults, normalised values, errors that name the key."""

from __future__ import annotations

from typing import Any

import pytest

from pbxd.config import ConfigError, parse_config

MINIMAL = {"name": "carrier", "destination": {"host": "SIP.Carrier.Example"}}


def trunk_error(**changes: Any) -> str:
    with pytest.raises(ConfigError) as caught:
        parse_config({"trunks": [{**MINIMAL, **changes}]})
    return str(caught.value)


def test_defaults() -> None:
    trunk = parse_config({"trunks": [MINIMAL]}).trunks[0]
    assert trunk.destination.host == "sip.carrier.example"
    assert trunk.destination.port is None and trunk.destination.transport is None
    assert trunk.register.enabled is False and trunk.register.expires == 3600
    assert (trunk.max_calls, trunk.max_cps, trunk.options_interval) == (0, 0.0, 0.0)
    assert trunk.caller_id.privacy == "auto" and not trunk.caller_id.pai
    assert parse_config({}).trunks == ()


def test_a_full_trunk() -> None:
    trunk = parse_config({"trunks": [{
        **MINIMAL, "backups": [{"host": "192.0.2.1", "port": 5070, "transport": "tcp"}],
        "username": "4930", "password": "pw", "auth_realm": "carrier", "from_user": "4930",
        "from_domain": "carrier.example", "outbound_proxy": "sip:proxy.example;lr", "codecs": ["PCMA"],
        "dids": ["+4930123", "+49301*"], "inbound_hosts": ["192.0.2.0/24", "2001:db8::1"],
        "accept_unknown_sources": True, "max_calls": 30, "max_cps": 2.5,
        "register": {"enabled": True, "expires": 60, "retry_min": 1, "retry_max": 60},
        "options_interval": 15, "pass_headers": ["X-Account"],
        "caller_id": {"pai": True, "rpid": True, "privacy": "always"},
        "normalize": [{"pattern": r"0(\d+)", "replacement": r"+49\1"}],
    }]}).trunks[0]
    assert trunk.inbound_hosts == ("192.0.2.0/24", "2001:db8::1/128")
    assert trunk.max_cps == 2.5 and trunk.register.expires == 60
    assert "pw" not in repr(trunk)


@pytest.mark.parametrize(("changes", "message"), [
    ({"name": "bad name"}, "trunks[0].name: target 'trunk:bad name': bad trunk name"),
    ({"destination": None}, "trunks[0].destination.host: is required"),
    ({"destination": {"host": "x", "transport": "sctp"}}, "trunks[0].destination.transport: must be one of"),
    ({"destination": {"host": "x", "port": 0}}, "trunks[0].destination.port: must be 1-65535, got 0"),
    ({"backups": [{"port": 5060}]}, "trunks[0].backups[0].host: is required"),
    ({"password": "pw"}, "trunks[0].password: is set but username is not"),
    ({"register": {"enabled": True}}, "trunks[0].register.enabled: needs username and password"),
    ({"register": {"retry_min": 10, "retry_max": 5}}, "trunks[0].register.retry_max: must be at least retry_min"),
    ({"register": {"expires": 0}}, "trunks[0].register.expires: must be 1-2147483647, got 0"),
    ({"dids": [4930123]}, 'trunks[0].dids[0]: must be a quoted string (write "4930123")'),
    ({"dids": ["+49 30"]}, "trunks[0].dids[0]: must be a number"),
    ({"dids": ["*"]}, "trunks[0].dids[0]: must be a number"),
    ({"inbound_hosts": ["carrier.example"]}, "trunks[0].inbound_hosts[0]: must be an IP address or network"),
    ({"max_cps": -1}, "trunks[0].max_cps: must be 0 or more, got -1"),
    ({"max_cps": "fast"}, "trunks[0].max_cps: must be a number per second"),
    ({"options_interval": -5}, "trunks[0].options_interval: must be 0 or more"),
    ({"pass_headers": ["Via"]}, "trunks[0].pass_headers[0]: header Via is written by pbxd"),
    ({"pass_headers": ["bad header"]}, "trunks[0].pass_headers[0]: header name 'bad header' is not a SIP token"),
    ({"caller_id": {"privacy": "maybe"}}, "trunks[0].caller_id.privacy: must be one of auto, always, never"),
    ({"normalize": [{"replacement": "x"}]}, "trunks[0].normalize[0].replacement: is set but pattern is not"),
    ({"normalize": [{}]}, "trunks[0].normalize[0].pattern: is required"),
    ({"normalize": [{"pattern": "(", "replacement": ""}]}, "trunks[0].normalize[0].pattern: is not a valid regular"),
    ({"normalize": [{"pattern": "0", "replacement": r"\2"}]}, "trunks[0].normalize[0].replacement:"),
    ({"outbound_proxy": "tel:+123"}, "trunks[0].outbound_proxy: must be a sip: or sips: URI"),
    ({"outbound_proxy": "proxy"}, "trunks[0].outbound_proxy: must be a sip: or sips: URI"),
    ({"from_domain": "not a host"}, "trunks[0].from_domain: must be a host name or IP address"),
    ({"colour": "red"}, "trunks[0].colour: unknown key"),
])
def test_bad_values_name_the_key(changes: dict[str, Any], message: str) -> None:
    assert message in trunk_error(**changes)


def test_names_and_dids_are_unique() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config({"trunks": [MINIMAL, MINIMAL]})
    assert str(caught.value) == "trunks[1].name: 'carrier' is already the name of trunks[0]"
    with pytest.raises(ConfigError) as caught:
        parse_config({"trunks": [{**MINIMAL, "dids": ["+1"]}, {**MINIMAL, "name": "b", "dids": ["+1"]}]})
    assert str(caught.value) == "trunks[1].dids: +1 is already a DID of trunk carrier"
    with pytest.raises(ConfigError):
        parse_config({"trunks": {"carrier": MINIMAL}})
