from __future__ import annotations

import re
import typing
from pathlib import Path
from typing import Any

import attrs
import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from pbxd import __version__
from pbxd.config import (
    Config,
    ConfigError,
    ListenConfig,
    RtpConfig,
    load_config,
    parse_config,
)

REPO_ROOT = Path(__file__).resolve().parent.parent


def error_of(data: Any) -> str:
    with pytest.raises(ConfigError) as caught:
        parse_config(data)
    return str(caught.value)


@pytest.fixture
def certificate(tmp_path: Path) -> Path:
    # The config only checks that the file is there; the TLS code reads it.
    file = tmp_path / "pbx.crt"
    file.write_text("-----BEGIN CERTIFICATE-----\n")
    return file


# --- defaults ----------------------------------------------------------------------


def test_no_file_and_empty_mappings_give_the_defaults() -> None:
    assert load_config(None) == Config() == parse_config(None) == parse_config({})
    assert parse_config({"sip": None, "log": {}}) == Config()


def test_defaults() -> None:
    config = Config()
    assert config.data_dir == Path("pbxd-data")
    assert config.sip.listen == (
        ListenConfig("udp", "0.0.0.0", 5060),
        ListenConfig("tcp", "0.0.0.0", 5060),
    )
    assert config.sip.domains == ()
    assert config.sip.advertised_host is None
    assert config.sip.user_agent == f"pbxd/{__version__}"
    assert attrs.astuple(config.sip.timers) == (0.5, 4.0, 5.0, 0.2)
    assert config.sip.max_message_size == 65535
    assert config.sip.tcp_idle_timeout == 300.0
    assert config.sip.udp_to_tcp_threshold == 1300
    assert config.sip.tls.certificate is None
    assert (config.sip.tls.verify_client, config.sip.tls.verify_server) == (False, True)
    assert (config.http.host, config.http.port) == ("127.0.0.1", 8080)
    assert (config.rtp.port_min, config.rtp.port_max) == (20000, 30000)
    assert (config.log.format, config.log.level) == ("text", "info")


def test_config_is_frozen() -> None:
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        Config().http.port = 1  # type: ignore[misc]


def test_a_certificate_adds_the_tls_listener(certificate: Path) -> None:
    config = parse_config({"sip": {"tls": {"certificate": str(certificate)}}})
    assert [entry.describe() for entry in config.sip.listen] == [
        "udp 0.0.0.0:5060",
        "tcp 0.0.0.0:5060",
        "tls 0.0.0.0:5061",
    ]
    assert config.sip.tls.certificate == certificate


def test_listen_ports_default_by_transport(certificate: Path) -> None:
    config = parse_config(
        {
            "sip": {
                "listen": [{"transport": "udp", "host": "::1"}, {"transport": "tls"}],
                "tls": {"certificate": str(certificate)},
            }
        }
    )
    assert config.sip.listen == (
        ListenConfig("udp", "::1", 5060),
        ListenConfig("tls", "0.0.0.0", 5061),
    )
    assert config.sip.listen[0].describe() == "udp [::1]:5060"


def test_values_are_normalised() -> None:
    config = parse_config(
        {
            "data_dir": "/var/lib/pbxd",
            "sip": {
                "domains": ["PBX.Example.COM.", "192.0.2.1"],
                "advertised_host": "Pbx.Example.com",
                "timers": {"t1": 1, "t2": 8},
                "listen": [{"transport": "udp", "host": "0:0::0"}],
            },
        }
    )
    assert config.data_dir == Path("/var/lib/pbxd")
    assert config.sip.domains == ("pbx.example.com", "192.0.2.1")
    assert config.sip.advertised_host == "pbx.example.com"
    assert config.sip.timers.t1 == 1.0 and isinstance(config.sip.timers.t1, float)
    assert config.sip.listen[0].host == "::"


# --- errors name the key and the reason ---------------------------------------------

# (YAML as a user would write it, the error it gives)
BAD = [
    ("[1]", "must be a mapping of keys to values, got a list"),
    ("sipp: {}", "sipp: unknown key (did you mean 'sip'?)"),
    ("sip: {listn: []}", "sip.listn: unknown key (did you mean 'listen'?)"),
    (
        "zzz: 1",
        "zzz: unknown key (known: data_dir, sip, http, rtp, log, extensions, auth, registrar,"
        " locator, routes, http_router, cdr, calls, trunks, ami, console, metrics, security)",
    ),
    ("sip: []", "sip: must be a mapping of keys to values, got a list"),
    (
        "sip: {listen: [{transport: udp}, {transport: tcp, port: 70000}]}",
        "sip.listen[1].port: must be 0-65535, got 70000",
    ),
    (
        "sip: {listen: [{host: 0.0.0.0}]}",
        "sip.listen[0].transport: is required (one of udp, tcp, tls)",
    ),
    (
        "sip: {listen: [{transport: sctp}]}",
        "sip.listen[0].transport: must be one of udp, tcp, tls, got 'sctp'",
    ),
    (
        "sip: {listen: [{transport: udp, prot: 1}]}",
        "sip.listen[0].prot: unknown key (did you mean 'port'?)",
    ),
    ("sip: {listen: []}", "sip.listen: must not be empty"),
    ("sip: {listen: udp}", "sip.listen: must be a list, got 'udp'"),
    ("sip: {listen: [udp]}", "sip.listen[0]: must be a mapping of keys to values, got 'udp'"),
    (
        "sip: {listen: [{transport: udp, host: example.com}]}",
        "sip.listen[0].host: must be an IP address, got 'example.com'",
    ),
    ("sip: {listen: [{transport: tls}]}", "sip.listen[0].transport: tls needs sip.tls.certificate"),
    (
        "sip: {listen: [{transport: udp}, {transport: udp, host: 0.0.0.0, port: 5060}]}",
        "sip.listen[1]: udp 0.0.0.0:5060 is already listen[0]",
    ),
    (
        "sip: {listen: [{transport: udp, port: '5060'}]}",
        "sip.listen[0].port: must be an integer, got '5060'",
    ),
    (
        "sip: {listen: [{transport: udp, port: true}]}",
        "sip.listen[0].port: must be an integer, got true",
    ),
    (
        "sip: {listen: [{transport: udp, port: 5060.0}]}",
        "sip.listen[0].port: must be an integer, got 5060.0",
    ),
    ("sip: {domains: example.com}", "sip.domains: must be a list, got 'example.com'"),
    (
        "sip: {domains: [ok.example, -bad-.example]}",
        "sip.domains[1]: must be a host name or IP address, got '-bad-.example'",
    ),
    ("sip: {advertised_host: ''}", "sip.advertised_host: must be a non-empty string, got ''"),
    ("sip: {user_agent: 7}", "sip.user_agent: must be a non-empty string, got 7"),
    ("sip: {timers: {t1: 0}}", "sip.timers.t1: must be greater than 0, got 0"),
    ("sip: {timers: {t4: -1.5}}", "sip.timers.t4: must be greater than 0, got -1.5"),
    ("sip: {timers: {t2: .inf}}", "sip.timers.t2: must be greater than 0, got inf"),
    ("sip: {timers: {t1: fast}}", "sip.timers.t1: must be a number of seconds, got 'fast'"),
    ("sip: {timers: {t1: 5}}", "sip.timers.t2: must be at least t1 (5.0), got 4.0"),
    ("sip: {max_message_size: 100}", "sip.max_message_size: must be 1500-1048576, got 100"),
    ("sip: {tcp_idle_timeout: 0}", "sip.tcp_idle_timeout: must be greater than 0, got 0"),
    ("sip: {udp_to_tcp_threshold: -1}", "sip.udp_to_tcp_threshold: must be 0-65535, got -1"),
    (
        "sip: {tls: {verify_client: yes please}}",
        "sip.tls.verify_client: must be true or false, got 'yes please'",
    ),
    (
        "sip: {tls: {certificate: /nonexistent/pbx.crt}}",
        "sip.tls.certificate: no such file: /nonexistent/pbx.crt",
    ),
    ("http: {host: localhost}", "http.host: must be an IP address, got 'localhost'"),
    ("http: {port: ~}", "http.port: must be an integer, got nothing"),
    ("rtp: {port_min: 20001}", "rtp.port_min: must be even (RTP takes even ports), got 20001"),
    ("rtp: {port_min: 80}", "rtp.port_min: must be 1024-65534, got 80"),
    (
        "rtp: {port_min: 30000, port_max: 30000}",
        "rtp.port_max: must be above port_min (30000), got 30000",
    ),
    ("log: {format: xml}", "log.format: must be one of text, json, got 'xml'"),
    ("log: {level: trace}", "log.level: must be one of debug, info, warn, error, got 'trace'"),
    ("data_dir: ''", "data_dir: must be a non-empty string, got ''"),
    ("data_dir: [a]", "data_dir: must be a non-empty string, got a list"),
]


@pytest.mark.parametrize(("text", "message"), BAD, ids=[text for text, _ in BAD])
def test_bad_values_name_the_key_and_the_reason(text: str, message: str) -> None:
    assert error_of(yaml.safe_load(text)) == message


def test_private_key_without_certificate(tmp_path: Path) -> None:
    key = tmp_path / "pbx.key"
    key.write_text("key")
    assert error_of({"sip": {"tls": {"private_key": str(key)}}}) == (
        "sip.tls.private_key: is set but certificate is not"
    )


def test_config_error_parts() -> None:
    error = ConfigError("http.port", "must be 0-65535, got 70000", "/etc/pbxd/pbxd.yml")
    assert error.key == "http.port"
    assert error.reason == "must be 0-65535, got 70000"
    assert error.file == "/etc/pbxd/pbxd.yml"
    assert str(error) == "/etc/pbxd/pbxd.yml: http.port: must be 0-65535, got 70000"


# --- files ---------------------------------------------------------------------------


def write(tmp_path: Path, text: str | bytes) -> Path:
    file = tmp_path / "pbxd.yml"
    if isinstance(text, bytes):
        file.write_bytes(text)
    else:
        file.write_text(text)
    return file


def load_error(file: Path) -> str:
    with pytest.raises(ConfigError) as caught:
        load_config(file)
    assert caught.value.file == str(file)
    return str(caught.value)


def test_load_a_file(tmp_path: Path) -> None:
    file = write(tmp_path, "http:\n  port: 9090\nlog: {format: json}\n")
    config = load_config(file)
    assert (config.http.port, config.log.format) == (9090, "json")
    assert load_config(str(file)) == config


def test_an_empty_file_gives_the_defaults(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, "# nothing set\n")) == Config()


def test_file_errors_name_the_file(tmp_path: Path) -> None:
    text = "sip:\n  listen:\n    - transport: udp\n    - {transport: tcp, port: 70000}\n"
    file = write(tmp_path, text)
    assert load_error(file) == f"{file}: sip.listen[1].port: must be 0-65535, got 70000"


def test_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yml"
    assert load_error(missing) == f"{missing}: cannot read: No such file or directory"


def test_invalid_yaml(tmp_path: Path) -> None:
    file = write(tmp_path, "http:\n  port: [8080\n")
    expected = rf"{re.escape(str(file))}: not valid YAML: .*\(line 3, column 1\)"
    assert re.fullmatch(expected, load_error(file))


def test_duplicate_keys_are_errors(tmp_path: Path) -> None:
    file = write(tmp_path, "http:\n  port: 8080\n  port: 8081\n")
    assert load_error(file) == f"{file}: not valid YAML: duplicate key 'port' (line 3, column 3)"


def test_not_utf8(tmp_path: Path) -> None:
    file = write(tmp_path, b"http:\n  host: \xff\xfe\n")
    assert load_error(file).startswith(f"{file}: ")


def test_yaml_tags_that_build_objects_are_refused(tmp_path: Path) -> None:
    file = write(tmp_path, "data_dir: !!python/object/apply:os.getcwd []\n")
    assert "not valid YAML" in load_error(file)


def test_example_config_is_complete_and_valid() -> None:
    config = load_config(REPO_ROOT / "etc" / "pbxd.yml")
    assert config == attrs.evolve(Config(), data_dir=Path("/var/lib/pbxd"))
    text = (REPO_ROOT / "etc" / "pbxd.yml").read_text()
    for key in all_keys(Config):
        assert re.search(rf"\b{key.split('.')[-1].rstrip('[]')}:", text), key


def test_every_key_is_documented() -> None:
    text = (REPO_ROOT / "docs" / "configuration.md").read_text()
    for key in all_keys(Config):
        assert f"`{key}`" in text, key


def all_keys(cls: type, prefix: str = "") -> list[str]:
    """Dotted names of every setting, e.g. sip.listen[].port, sip.timers.t1."""
    keys = []
    for field in attrs.fields(attrs.resolve_types(cls)):
        key = prefix + field.name
        keys.append(key)
        if attrs.has(field.type):
            keys += all_keys(field.type, key + ".")
        for item_type in typing.get_args(field.type):  # tuple[ListenConfig, ...]
            if isinstance(item_type, type) and attrs.has(item_type):
                keys += all_keys(item_type, key + "[].")
    return keys


def test_all_keys_walks_sections() -> None:
    keys = all_keys(Config)
    some = {"sip.listen[].port", "sip.timers.t1", "sip.tls.verify_server", "rtp.port_max"}
    assert some <= set(keys)


# --- command-line overrides -----------------------------------------------------------


def test_overrides(certificate: Path) -> None:
    base = parse_config({"sip": {"tls": {"certificate": str(certificate)}}})
    config = base.with_overrides(
        data_dir="/tmp/x",
        sip_host="127.0.0.1",
        sip_port="5070",
        tls_port="5071",
        http_host="::1",
        http_port="0",
        rtp_ports="40000-40100",
        log_format="json",
        log_level="debug",
    )
    assert config.data_dir == Path("/tmp/x")
    assert [entry.describe() for entry in config.sip.listen] == [
        "udp 127.0.0.1:5070",
        "tcp 127.0.0.1:5070",
        "tls 127.0.0.1:5071",
    ]
    assert (config.http.host, config.http.port) == ("::1", 0)
    assert config.rtp == RtpConfig(40000, 40100)
    assert (config.log.format, config.log.level) == ("json", "debug")
    assert config.sip.tls == base.sip.tls


def test_no_overrides_change_nothing() -> None:
    assert Config().with_overrides() == Config()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"sip_port": "x"}, "--sip-port: must be an integer, got 'x'"),
        ({"sip_port": "70000"}, "--sip-port: must be 0-65535, got 70000"),
        ({"tls_port": "5061"}, "--tls-port: no TLS listener (set sip.tls.certificate)"),
        ({"sip_host": "pbx"}, "--sip-host: must be an IP address, got 'pbx'"),
        ({"http_port": "8o80"}, "--http-port: must be an integer, got '8o80'"),
        ({"http_host": "localhost"}, "--http-host: must be an IP address, got 'localhost'"),
        ({"rtp_ports": "20000"}, "--rtp-ports: must be MIN-MAX, e.g. 20000-30000, got '20000'"),
        (
            {"rtp_ports": "20001-30000"},
            "--rtp-ports: port_min must be even (RTP takes even ports), got 20001",
        ),
        (
            {"rtp_ports": "30000-20000"},
            "--rtp-ports: port_max must be above port_min (30000), got 20000",
        ),
        ({"log_format": "xml"}, "--log-format: must be one of text, json, got 'xml'"),
        ({"log_level": "loud"}, "--log-level: must be one of debug, info, warn, error, got 'loud'"),
        ({"data_dir": ""}, "--data-dir: must be a non-empty string, got ''"),
    ],
)
def test_bad_overrides_name_the_option(overrides: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Config().with_overrides(**overrides)
    assert str(caught.value) == message


def test_an_override_that_collides_is_reported_on_the_listener() -> None:
    text = "sip: {listen: [{transport: udp}, {transport: udp, port: 5070}]}"
    config = parse_config(yaml.safe_load(text))
    with pytest.raises(ConfigError) as caught:
        config.with_overrides(sip_port="5080")
    assert str(caught.value) == "sip.listen[1]: udp 0.0.0.0:5080 is already listen[0]"


# --- nothing but ConfigError escapes ---------------------------------------------------

SCHEMA_WORDS = sorted(set(".".join(all_keys(Config)).replace("[]", "").split(".")))
yaml_like = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.sampled_from(SCHEMA_WORDS) | st.text(max_size=8), children, max_size=5),
    max_leaves=20,
)


@given(yaml_like)
def test_any_data_gives_a_config_or_a_config_error(data: Any) -> None:
    try:
        parse_config(data)
    except ConfigError as error:
        assert str(error)


@given(text=st.text(max_size=200))
def test_any_text_gives_a_config_or_a_config_error(
    tmp_path_factory: pytest.TempPathFactory, text: str
) -> None:
    file = tmp_path_factory.getbasetemp() / "any.yml"
    # surrogatepass: lone surrogates become bytes that are not UTF-8, also worth a try
    file.write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        load_config(file)
    except ConfigError as error:
        assert error.file == str(file)
