from __future__ import annotations

import io
import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from conftest import TWISTD, twistd_environment
from twisted.application.service import Application, IService, IServiceMaker
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import ILogObserver, Logger, LogLevel, globalLogPublisher
from twisted.plugin import getPlugins
from twisted.python.failure import Failure
from twisted.python.usage import UsageError

from pbxd import __version__
from pbxd.config import Config, LogConfig, parse_config
from pbxd.logging import event_as_json_line, make_observer
from pbxd.service import PbxService, StartupError
from pbxd.tap import EXIT_BAD_CONFIG, Options, makeService


def options(*args: str, parent: dict[str, Any] | None = None) -> Options:
    parsed = Options()
    parsed.parseOptions(list(args))
    if parent is not None:
        parsed.parent = parent  # what twistd's ServerOptions does for a subcommand
    return parsed


# --- options and makeService ------------------------------------------------------------


def test_options_map_to_overrides() -> None:
    parsed = options("-c", "x.yml", "--sip-port", "5070", "--log-format", "json")
    assert parsed["config"] == "x.yml"
    assert parsed.overrides() == {
        "sip_host": None,
        "sip_port": "5070",
        "tls_port": None,
        "http_host": None,
        "http_port": None,
        "data_dir": None,
        "rtp_ports": None,
        "log_format": "json",
        "log_level": None,
    }


def test_options_refuse_stray_arguments() -> None:
    with pytest.raises(UsageError):
        options("extra")


def test_make_service_without_a_file_uses_defaults_and_overrides(data_dir: Path) -> None:
    service = makeService(
        options("--data-dir", str(data_dir), "--sip-port", "0", "--http-port", "0")
    )
    assert isinstance(service, PbxService)
    expected = Config().with_overrides(data_dir=str(data_dir), sip_port="0", http_port="0")
    assert service.config == expected
    assert not data_dir.exists()  # created on start, not when the service is built


def test_make_service_reads_the_file(tmp_path: Path) -> None:
    file = tmp_path / "pbxd.yml"
    file.write_text("http: {port: 9090}\nrtp: {port_min: 40000, port_max: 40010}\n")
    service = makeService(options("-c", str(file), "--rtp-ports", "50000-50100"))
    assert service.config.http.port == 9090
    assert (service.config.rtp.port_min, service.config.rtp.port_max) == (50000, 50100)


def test_bad_configuration_exits_78_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    file = tmp_path / "bad.yml"
    file.write_text("rtp:\n  port_min: 20001\n")
    with pytest.raises(SystemExit) as caught:
        makeService(options("-c", str(file)))
    assert caught.value.code == EXIT_BAD_CONFIG == 78
    assert capsys.readouterr().err == (
        f"pbxd: bad configuration: {file}: "
        "rtp.port_min: must be even (RTP takes even ports), got 20001\n"
    )


def test_bad_option_value_exits_78(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        makeService(options("--http-port", "http"))
    assert capsys.readouterr().err == (
        "pbxd: bad configuration: --http-port: must be an integer, got 'http'\n"
    )


@pytest.mark.parametrize(
    ("twistd_options", "takes_over"),
    [
        (None, True),  # not under twistd (tests, embedding)
        ({"nodaemon": True, "logfile": None, "logger": None, "syslog": False}, True),
        ({"nodaemon": True, "logfile": "-", "logger": None, "syslog": False}, True),
        ({"nodaemon": True, "logfile": None, "logger": "my.observer", "syslog": False}, False),
        ({"nodaemon": False, "logfile": None, "logger": None, "syslog": True}, False),
    ],
)
def test_pbxd_logs_unless_twistd_was_told_otherwise(
    twistd_options: dict[str, Any] | None, takes_over: bool
) -> None:
    service = makeService(options(parent=twistd_options))
    assert (service.log_observer is not None) == takes_over


def test_log_file_from_twistd_gets_pbxd_format(tmp_path: Path) -> None:
    logfile = tmp_path / "pbxd.log"
    twistd_options = {"nodaemon": False, "logfile": str(logfile), "logger": None, "syslog": False}
    service = makeService(options("--log-format", "json", parent=twistd_options))
    assert service.log_observer is not None
    emit(service.log_observer, LogLevel.info, "hello {who}", who="file")
    assert json.loads(logfile.read_text())["message"] == "hello file"


# --- the plugin ---------------------------------------------------------------------------


def test_plugin_is_found_and_builds_pbxd() -> None:
    makers = {maker.tapname: maker for maker in getPlugins(IServiceMaker)}
    maker = makers["pbxd"]
    assert maker.options is Options
    assert maker.makeService is makeService


def test_plugin_module_imports_nothing_of_pbxd() -> None:
    # twistd imports every plugin module for `twistd --help`: pbxd's must be cheap.
    code = (
        "import sys, twisted.plugins.pbxd_plugin as p; "
        "print(p.pbxd.tapname, sorted(m for m in sys.modules if m.split('.')[0] == 'pbxd'))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        env=twistd_environment(),
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout.split() == ["pbxd", "[]"]


# --- the service -------------------------------------------------------------------------


def loopback_config(data_dir: Path) -> Config:
    """A configuration whose SIP listens on loopback ports the OS picks."""
    return parse_config(
        {"data_dir": str(data_dir), "sip": {"listen": [{"transport": "udp", "host": "127.0.0.1", "port": 0}]},
         "http": {"port": 0}}
    )


@pytest_twisted.inlineCallbacks
def test_service_creates_the_data_dir_on_start(data_dir: Path) -> Any:
    service = PbxService(loopback_config(data_dir / "deeper"), reactor=reactor)
    assert service.reactor is reactor
    assert service.name == "pbxd"
    out = io.StringIO()
    observer = make_observer(LogConfig(format="json"), out)
    ready: Deferred[None] = Deferred()

    def watch(event: dict[str, Any]) -> None:
        if event.get("log_format", "").endswith("ready") and not ready.called:
            ready.callback(None)

    globalLogPublisher.addObserver(observer)
    globalLogPublisher.addObserver(watch)
    try:
        service.startService()
        assert (data_dir / "deeper").is_dir()
        assert service.running
        yield ready
    finally:
        yield service.stopService()
        globalLogPublisher.removeObserver(observer)
        globalLogPublisher.removeObserver(watch)
    messages = [json.loads(line)["message"] for line in out.getvalue().splitlines()]
    assert messages[0] == f"pbxd {__version__} starting, data directory {data_dir / 'deeper'}"
    assert f"pbxd {__version__} ready" in messages
    assert any(m.startswith("SIP listening on udp 127.0.0.1:") for m in messages)


@pytest_twisted.inlineCallbacks
def test_service_stopped_before_the_reactor_runs_leaves_no_call(data_dir: Path) -> Any:
    service = PbxService(loopback_config(data_dir), reactor=reactor)
    service.startService()
    yield service.stopService()
    assert service._ready_call is None
    assert all(not listener.listening_port.connected for listener in service.sip.transports.listeners)


def test_service_that_cannot_make_its_data_dir_says_why(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    service = PbxService(parse_config({"data_dir": str(blocker / "data")}), reactor=Clock())
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        with pytest.raises(StartupError) as caught:
            service.startService()
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert caught.value.code == 1
    assert caught.value.reason == f"data_dir {blocker / 'data'}: Not a directory"
    critical = [e for e in events if e.get("log_level") == LogLevel.critical]
    assert [e["reason"] for e in critical] == [caught.value.reason]


def test_service_hands_its_observer_to_the_twistd_application() -> None:
    observer = make_observer(LogConfig(), io.StringIO())
    application = Application("pbxd")
    PbxService(Config(), reactor=Clock(), log_observer=observer).setServiceParent(application)
    assert application.getComponent(ILogObserver) is observer
    assert [s.name for s in IService(application)] == ["pbxd"]


def test_service_keeps_an_observer_the_application_already_has() -> None:
    theirs = make_observer(LogConfig(), io.StringIO())
    application = Application("pbxd")
    application.setComponent(ILogObserver, theirs)
    ours = make_observer(LogConfig(), io.StringIO())
    PbxService(Config(), reactor=Clock(), log_observer=ours).setServiceParent(application)
    assert application.getComponent(ILogObserver) is theirs


# --- log observers -----------------------------------------------------------------------


def emit(observer: ILogObserver, level: LogLevel, text: str, **fields: Any) -> None:
    logger = Logger(namespace="pbxd.test", observer=observer)
    logger.emit(level, text, **fields)


def test_level_filter() -> None:
    out = io.StringIO()
    observer = make_observer(LogConfig(format="json", level="warn"), out)
    emit(observer, LogLevel.info, "quiet")
    emit(observer, LogLevel.warn, "loud {n}", n=1)
    emit(observer, LogLevel.error, "louder")
    messages = [json.loads(line)["message"] for line in out.getvalue().splitlines()]
    assert messages == ["loud 1", "louder"]


def test_text_format() -> None:
    out = io.StringIO()
    observer = make_observer(LogConfig(), out)
    emit(observer, LogLevel.info, "registered {aor}", aor="sip:alice@example.com")
    assert out.getvalue().endswith("[pbxd.test#info] registered sip:alice@example.com\n")


def test_json_line_fields() -> None:
    out = io.StringIO()
    observer = make_observer(LogConfig(format="json", level="debug"), out)
    emit(observer, LogLevel.debug, "got {n} from {peer}", n=3, peer="udp")
    (line,) = out.getvalue().splitlines()
    record = json.loads(line)
    assert record.pop("time").endswith("Z")
    assert record == {
        "level": "debug",
        "namespace": "pbxd.test",
        "message": "got 3 from udp",
        "n": 3,
        "peer": "udp",
    }


def test_json_line_with_failure_and_awkward_values() -> None:
    try:
        1 / 0
    except ZeroDivisionError:
        failure = Failure()

    class Opaque:
        def __repr__(self) -> str:
            return "<opaque>"

    event = {
        "log_format": "oops {thing}",
        "log_level": LogLevel.error,
        "log_namespace": "pbxd.test",
        "log_time": 0.5,
        "log_failure": failure,
        "log_system": "UDP",
        "thing": Opaque(),
        "nan": float("nan"),
        "tuple_keys": {(1, 2): "x"},
        "text": "line\nbreak é",
    }
    line = event_as_json_line(event)
    assert line.endswith("\n") and line.count("\n") == 1
    record = json.loads(line)
    assert record["time"] == "1970-01-01T00:00:00.500Z"
    assert record["message"] == "oops <opaque>"
    assert record["system"] == "UDP"
    assert record["thing"] == "<opaque>"
    assert record["nan"] == "nan"
    assert record["tuple_keys"] == "{(1, 2): 'x'}"
    assert record["text"] == "line\nbreak é"
    assert "ZeroDivisionError" in record["traceback"]


def test_json_line_for_a_legacy_event() -> None:
    from twisted.python import log as legacy

    out = io.StringIO()
    observer = make_observer(LogConfig(format="json"), out)
    globalLogPublisher.addObserver(observer)
    try:
        legacy.msg("old style", system="legacy")
    finally:
        globalLogPublisher.removeObserver(observer)
    records = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [(r["message"], r["system"]) for r in records] == [("old style", "legacy")]
    assert "isError" not in records[0] and "format" not in records[0]


# --- the real twistd ------------------------------------------------------------------------


def test_twistd_with_a_bad_config_file_prints_one_line_and_fails(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yml"
    bad.write_text("sip:\n  listen:\n    - transport: udp\n    - {transport: tcp, port: 70000}\n")
    result = subprocess.run(
        [*TWISTD, "-n", "pbxd", "-c", str(bad)],
        cwd=tmp_path,
        env=twistd_environment(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 78
    assert result.stderr == (
        f"pbxd: bad configuration: {bad}: sip.listen[1].port: must be 0-65535, got 70000\n"
    )
    assert result.stdout == ""
    assert not (tmp_path / "twistd.pid").exists()


def test_twistd_runs_pbxd_and_stops_on_sigterm(pbxd_daemon: Any, data_dir: Path) -> None:
    daemon = pbxd_daemon("--data-dir", str(data_dir), "--sip-port", "0", "--http-port", "0")
    daemon.wait_for(lambda line: f"pbxd {__version__} ready" in line)
    assert data_dir.is_dir()
    # twistd shuts down cleanly, then ends by the signal it got (as systemd expects)
    assert daemon.stop() == -signal.SIGTERM
    assert daemon.lines[-1].endswith("Server Shut Down.")


def test_twistd_logs_json_lines(pbxd_daemon: Any, data_dir: Path) -> None:
    daemon = pbxd_daemon(
        "--data-dir", str(data_dir), "--sip-port", "0", "--http-port", "0", "--log-format", "json"
    )
    line = daemon.wait_for(lambda line: "starting" in line and "pbxd.service" in line)
    record = json.loads(line)
    assert record["namespace"] == "pbxd.service.PbxService"
    assert record["level"] == "info"
    assert record["version"] == __version__
    assert record["data_dir"] == str(data_dir)
    daemon.wait_for(lambda line: json.loads(line)["message"] == f"pbxd {__version__} ready")
    assert daemon.stop() == -signal.SIGTERM
    records = [json.loads(line) for line in daemon.lines]  # every line is one JSON object
    assert records[0]["message"].startswith("twistd ")
    assert records[-1]["message"] == "Server Shut Down."


def test_twistd_with_an_unusable_data_dir_fails_with_one_critical_line(
    pbxd_daemon: Any, tmp_path: Path
) -> None:
    (tmp_path / "file").write_text("")
    data = tmp_path / "file" / "data"
    daemon = pbxd_daemon("--data-dir", str(data), "--sip-port", "0", "--http-port", "0")
    assert daemon.wait() == 1
    problems = [line for line in daemon.lines if "#info]" not in line]
    assert len(problems) == 1, daemon.output()
    assert problems[0].endswith(
        f"[pbxd.service.PbxService#critical] pbxd cannot start: data_dir {data}: Not a directory"
    )
