"""The extensions, auth, registrar and locator config sections: defaults, and bad
values stopping start-up with the key and the reason."""

from __future__ import annotations

import pytest

from pbxd.config import LOCATOR_EVENT_NAMES, Config, ConfigError, parse_config
from pbxd.hooks.locator import LOCATOR_EVENTS
from pbxd.service import auth_realm


def error_of(data: object) -> str:
    with pytest.raises(ConfigError) as caught:
        parse_config(data)
    return str(caught.value)


def test_defaults() -> None:
    config = Config()
    assert config.extensions == ()
    auth = config.auth
    assert (auth.realm, auth.algorithms, auth.nonce_lifetime, auth.nonce_secret) == (
        None, ("MD5", "SHA-256"), 300.0, None)
    assert auth.failure_response == 403
    assert [b.type for b in auth.backends] == ["static"]
    assert (auth.guard.max_failures, auth.guard.window, auth.guard.ban_time,
            auth.guard.trusted, auth.guard.action) == (5, 60.0, 300.0, (), "reject")
    registrar = config.registrar
    assert (registrar.min_expires, registrar.max_expires, registrar.default_expires,
            registrar.max_contacts, registrar.qualify_interval) == (60, 3600, 3600, 10, 0.0)
    assert config.locator.url is None and config.locator.events == LOCATOR_EVENTS


def test_locator_event_names_are_the_notifiers() -> None:
    assert LOCATOR_EVENT_NAMES == LOCATOR_EVENTS


def test_a_full_section_parses() -> None:
    config = parse_config({
        "sip": {"domains": ["pbx.example.com"]},
        "extensions": [{"number": "1001", "password": "x", "name": "Alice",
                        "email": "a@example.com", "voicemail_pin": "0042",
                        "allow_external": False, "enabled": False, "max_calls": 2,
                        "dial_patterns": ["0[1-9][0-9]+", "\\+44[0-9]{10}"]}],
        "auth": {"algorithms": ["sha-256", "md5-SESS"], "failure_response": 401,
                 "nonce_secret": "0123456789abcdef",
                 "backends": [{"type": "http", "url": "https://api.example.com/auth",
                               "method": "POST", "headers": {"X-API-Key": "k"},
                               "cache_ttl": 0, "retries": 0}, {"type": "static"}],
                 "guard": {"trusted": ["10.0.0.0/8", "2001:db8::1"]}},
        "registrar": {"min_expires": 30, "default_expires": 30, "qualify_interval": 25},
        "locator": {"url": "http://127.0.0.1:9000/events", "events": ["offline"]},
    })
    [extension] = config.extensions
    spec = extension.spec()
    assert (spec.number, spec.voicemail_pin, spec.enabled, spec.allow_external) == (
        "1001", "0042", False, False)
    assert (spec.max_calls, spec.dial_patterns) == (2, ("0[1-9][0-9]+", r"\+44[0-9]{10}"))
    assert "password" not in repr(extension) and "0123456789" not in repr(config.auth)
    assert config.auth.algorithms == ("SHA-256", "MD5-sess")
    assert config.auth.backends[0].headers == (("X-API-Key", "k"),)
    assert config.auth.guard.trusted == ("10.0.0.0/8", "2001:db8::1/128")
    assert auth_realm(config) == "pbx.example.com"
    assert auth_realm(Config()) == "pbxd"
    assert auth_realm(parse_config({"auth": {"realm": "r"}})) == "r"
    # Values survive the command-line override round trip.
    assert config.with_overrides(sip_port="5070").auth == config.auth


@pytest.mark.parametrize(
    ("data", "error"),
    [
        ({"extensions": [{"number": 1001, "password": "x"}]},
         'extensions[0].number: must be a quoted string (write "1001"), got the number 1001'),
        ({"extensions": [{"number": "1001"}]}, "extensions[0].password: is required"),
        ({"extensions": [{"number": "10 01", "password": "x"}]},
         "extensions[0].number: number '10 01' is not a valid extension number"),
        ({"extensions": [{"number": "1", "password": "x", "voicemail_pin": "12a"}]},
         "extensions[0].voicemail_pin: voicemail_pin must be 1 to 16 digits"),
        ({"extensions": [{"number": "1", "password": "x", "email": "nobody"}]},
         "extensions[0].email: email 'nobody' is not an e-mail address"),
        ({"extensions": [{"number": "1", "password": "x"}, {"number": "1", "password": "y"}]},
         "extensions[1].number: 1 is already extensions[0]"),
        ({"extensions": {"1001": "x"}}, "extensions: must be a list, got a mapping"),
        ({"extensions": [{"number": "1", "password": "x", "max_calls": -1}]},
         "extensions[0].max_calls: must be 0-10000, got -1"),
        ({"extensions": [{"number": "1", "password": "x", "max_calls": "2"}]},
         "extensions[0].max_calls: must be an integer, got '2'"),
        ({"extensions": [{"number": "1", "password": "x", "dial_patterns": "0.*"}]},
         "extensions[0].dial_patterns: must be a list, got '0.*'"),
        ({"extensions": [{"number": "1", "password": "x", "dial_patterns": ["0.*", 5]}]},
         "extensions[0].dial_patterns[1]: must be a non-empty string, got 5"),
        ({"extensions": [{"number": "1", "password": "x", "dial_patterns": ["0.*", "[0-9"]}]},
         "extensions[0].dial_patterns[1]: dial_patterns[1] '[0-9' is not a valid regular expression:"
         " unterminated character set at position 0"),
        ({"auth": {"algorithms": []}}, "auth.algorithms: must not be empty"),
        ({"auth": {"algorithms": ["MD5", "md5"]}}, "auth.algorithms: lists an algorithm twice"),
        ({"auth": {"algorithms": ["SHA-512-256"]}},
         "auth.algorithms[0]: must be one of MD5, MD5-sess, SHA-256, SHA-256-sess,"
         " got 'SHA-512-256'"),
        ({"auth": {"failure_response": 402}}, "auth.failure_response: must be 401 or 403, got 402"),
        ({"auth": {"nonce_secret": "short"}}, "auth.nonce_secret: must be at least 16 bytes long"),
        ({"auth": {"realm": 'a"b'}},
         "auth.realm: must not contain quotes, backslashes or control characters"),
        ({"auth": {"backends": []}}, "auth.backends: must not be empty"),
        ({"auth": {"backends": [{"type": "ldap"}]}},
         "auth.backends[0].type: must be one of static, http, got 'ldap'"),
        ({"auth": {"backends": [{"type": "http"}]}},
         "auth.backends[0].url: is required for type http"),
        ({"auth": {"backends": [{"type": "static", "url": "http://x/"}]}},
         "auth.backends[0].url: is only for type http"),
        ({"auth": {"backends": [{"type": "http", "url": "ftp://x/"}]}},
         "auth.backends[0].url: must be an http:// or https:// URL, got 'ftp://x/'"),
        ({"auth": {"backends": [{"type": "http", "url": "http://x/", "headers": {"A": "b\nC: d"}}]}},
         "auth.backends[0].headers.A: must be a one-line string, got 'b\\nC: d'"),
        ({"auth": {"backends": [{"type": "http", "url": "http://x/", "cache_ttl": -1}]}},
         "auth.backends[0].cache_ttl: must be 0 or more, got -1"),
        ({"auth": {"guard": {"trusted": ["10.0.0.0/33"]}}},
         "auth.guard.trusted[0]: must be an IP address or network, got '10.0.0.0/33'"),
        ({"auth": {"guard": {"max_failures": 0}}},
         "auth.guard.max_failures: must be 1-1000000, got 0"),
        ({"auth": {"guard": {"action": "silence"}}},
         "auth.guard.action: must be one of reject, drop, got 'silence'"),
        ({"registrar": {"max_expires": 30}},
         "registrar.max_expires: must be at least min_expires (60), got 30"),
        ({"registrar": {"default_expires": 7200}},
         "registrar.default_expires: must be between min_expires and max_expires (60-3600),"
         " got 7200"),
        ({"registrar": {"qualify_interval": -5}},
         "registrar.qualify_interval: must be 0 or more, got -5"),
        ({"locator": {"events": ["online"]}},
         "locator.events[0]: must be one of registered, unregistered, offline, got 'online'"),
        ({"locator": {"uri": "http://x/"}}, "locator.uri: unknown key (did you mean 'url'?)"),
    ],
)
def test_bad_values_name_the_key(data: object, error: str) -> None:
    assert error_of(data) == error
