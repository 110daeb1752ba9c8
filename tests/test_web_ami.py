"""/ami/v1 through real HTTP: health, transactions, reloads, graceful shutdown, the
address allow list; and the daemon's SIGTERM, SIGHUP and POST /ami/v1/shutdown."""

from __future__ import annotations

import re
import signal
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest_twisted
import yaml

from pbxd import __version__
from tests.web_support import WebPbx, start_web_pbx, wait_until


@pytest_twisted.async_yield_fixture
async def pbx(tmp_path: Path) -> AsyncIterator[WebPbx]:
    running = await start_web_pbx(tmp_path)
    yield running
    await running.stop()


@pytest_twisted.ensureDeferred
async def test_health(pbx: WebPbx) -> None:
    reply = await pbx.call("GET", "/ami/v1/health", token=None)
    assert reply.status == 200
    health = reply.json
    assert health["status"] == "ok"
    assert health["version"] == __version__
    assert health["uptime"] >= 0
    assert health["active_calls"] == 0
    assert health["registrations"] == {"bindings": 0, "users": 0}
    assert set(health["transactions"]) == {"total", "client", "server"}
    assert health["dialogs"] == 0
    assert health["trunks"] == []
    assert health["store"]["status"] == "open"
    assert health["store"]["path"].endswith("pbxd.sqlite3")
    assert len(health["load"]["load_average"]) == 3
    assert health["load"]["cpu_seconds"] > 0 and health["load"]["max_rss_bytes"] > 1 << 20
    assert (await pbx.call("GET", "/ami/v1/health?x=1")).status == 400
    assert (await pbx.call("POST", "/ami/v1/health")).status == 405
    assert (await pbx.call("GET", "/ami/v1/nothing")).status == 404


@pytest_twisted.ensureDeferred
async def test_transactions_lists_what_is_in_flight(pbx: WebPbx) -> None:
    # An OPTIONS to a peer that never answers keeps a client transaction alive.
    from twisted.internet import reactor
    from twisted.internet.protocol import DatagramProtocol

    from pbxd.sip.message import Request
    from pbxd.transport import Target

    silent = reactor.listenUDP(0, DatagramProtocol(), interface="127.0.0.1")
    port = silent.getHost().port
    try:
        options = Request("OPTIONS", f"sip:nobody@127.0.0.1:{port}", [
            ("Via", "SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK-ami-test"), ("From", "<sip:pbx@pbx.test>;tag=1"),
            ("To", "<sip:nobody@127.0.0.1>"), ("Call-ID", "ami-test"), ("CSeq", "1 OPTIONS"),
            ("Max-Forwards", "70")])
        pbx.service.sip.core.layer.send_request(options, Target("udp", "127.0.0.1", port),
                                                lambda *_: None, lambda *_: None)
        listed = (await pbx.call("GET", "/ami/v1/transactions")).json
        [row] = [r for r in listed["transactions"] if r["call_id"] == "ami-test"]
        assert row == {"side": "client", "method": "OPTIONS", "call_id": "ami-test", "branch": row["branch"],
                       "state": "trying", "peer": {"transport": "udp", "host": "127.0.0.1", "port": port}}
        assert row["branch"].startswith("z9hG4bK")
        assert listed["total"] == len(listed["transactions"])
        assert listed["client"]["trying"] >= 1
    finally:
        await silent.stopListening()


def rewrite(path: Path, **changes: Any) -> None:
    data = yaml.safe_load(path.read_text())
    data.update(changes)
    path.write_text(yaml.safe_dump(data, sort_keys=False))


@pytest_twisted.ensureDeferred
async def test_reload_routes_and_config(pbx: WebPbx) -> None:
    rewrite(pbx.config_path, routes=[{"name": "night", "match": {"request_user": "9"}, "destination": "1001"}])
    reply = await pbx.call("POST", "/ami/v1/reload/routes")
    assert (reply.status, reply.json) == (200, {"success": True, "reloaded": "routes", "applied": ["routes"],
                                                "restart_required": [], "ignored": []})
    assert [r.name for r in pbx.service.calls.manager.router.static.routes if r.name == "night"] == ["night"]

    data = yaml.safe_load(pbx.config_path.read_text())
    data["http"]["cors_origins"] = ["https://crm.example.com"]
    data["http"]["max_body_bytes"] = 4096
    data["ami"] = {"shutdown_deadline": 5}
    data["extensions"] = []
    pbx.config_path.write_text(yaml.safe_dump(data))
    reply = await pbx.call("POST", "/ami/v1/reload/config")
    assert reply.json == {"success": True, "reloaded": "config", "applied": ["http.cors_origins", "ami"],
                          "restart_required": ["http.max_body_bytes"], "ignored": ["extensions"]}
    assert pbx.service.config.ami.shutdown_deadline == 5
    assert pbx.service.config.http.max_body_bytes != 4096  # in force until a restart


@pytest_twisted.ensureDeferred
async def test_a_relative_data_dir_that_names_the_same_directory_is_no_change(
        pbx: WebPbx, monkeypatch: Any) -> None:
    data_dir = pbx.service.config.data_dir
    monkeypatch.chdir(data_dir.parent)
    data = yaml.safe_load(pbx.config_path.read_text())
    data["data_dir"] = data_dir.name
    pbx.config_path.write_text(yaml.safe_dump(data))
    reply = await pbx.call("POST", "/ami/v1/reload/config")
    assert reply.status == 200 and "data_dir" not in reply.json["restart_required"], reply.json
    data["data_dir"] = "elsewhere"
    pbx.config_path.write_text(yaml.safe_dump(data))
    reply = await pbx.call("POST", "/ami/v1/reload/config")
    assert "data_dir" in reply.json["restart_required"], reply.json
    assert pbx.service.config.data_dir == data_dir


@pytest_twisted.ensureDeferred
async def test_a_bad_file_changes_nothing_and_says_why(pbx: WebPbx) -> None:
    before = pbx.service.config
    router = pbx.service.calls.manager.router.static
    for text, reason in [
        ("routes: [{name: x, destination: '1001', match: {request_user: '('}}]\n", "routes[0].match.request_user"),
        ("sip: [\n", "not valid YAML"),
        ("http: {port: 1}\nhttp: {port: 2}\n", "duplicate key"),
    ]:
        pbx.config_path.write_text(text)
        for what in ("routes", "config", "trunks", "acl"):
            reply = await pbx.call("POST", f"/ami/v1/reload/{what}")
            assert reply.status == 422, (what, reply.body)
            assert reason in reply.json["error"]
    assert pbx.service.config is before
    assert pbx.service.calls.manager.router.static is router


@pytest_twisted.ensureDeferred
async def test_reload_acl_takes_the_security_section(pbx: WebPbx) -> None:
    rewrite(pbx.config_path, security={"acl": {"deny": ["192.0.2.0/24"]}})
    reply = await pbx.call("POST", "/ami/v1/reload/acl")
    assert (reply.status, reply.json) == (200, {"success": True, "reloaded": "acl", "applied": ["security"],
                                                "restart_required": [], "ignored": []})
    assert pbx.service.config.security.acl.deny == ("192.0.2.0/24",)
    assert [str(net) for net in pbx.service.security.acl.deny] == ["192.0.2.0/24"]
    # A config reload takes it too.
    rewrite(pbx.config_path, security={"acl": {"deny": []}})
    reply = await pbx.call("POST", "/ami/v1/reload/config")
    assert reply.json["applied"] == ["security"]
    assert pbx.service.security.acl.deny == ()


@pytest_twisted.ensureDeferred
async def test_reload_trunks_checks_the_file_first(pbx: WebPbx) -> None:
    """Without a carrier: the registry and config follow the file (test_trunk_reload.py has sipp)."""
    registry = pbx.service.trunks.registry
    unchanged = await pbx.call("POST", "/ami/v1/reload/trunks")
    assert (unchanged.status, unchanged.json) == (200, {
        "success": True, "reloaded": "trunks", "applied": [], "restart_required": [], "ignored": [],
        "trunks": {"added": [], "changed": [], "removed": []}})
    carrier = {"name": "carrier", "destination": {"host": "192.0.2.1", "port": 5060, "transport": "udp"}}
    for bad, why in [([{**carrier, "register": {"enabled": True}}], "needs username and password"),
                     ([carrier, carrier], "already the name"),
                     ([{**carrier, "colour": "red"}], "unknown key")]:
        rewrite(pbx.config_path, trunks=bad)
        reply = await pbx.call("POST", "/ami/v1/reload/trunks")
        assert reply.status == 422 and why in reply.json["error"], reply.json
        assert len(registry) == 0 and pbx.service.config.trunks == ()
    rewrite(pbx.config_path, trunks=[carrier])
    reply = await pbx.call("POST", "/ami/v1/reload/trunks")
    assert reply.status == 200 and reply.json["trunks"] == {"added": ["carrier"], "changed": [], "removed": []}
    added = registry.trunk("carrier")
    assert added is not None and pbx.service.calls.manager.trunks is registry
    assert [t.name for t in pbx.service.config.trunks] == ["carrier"]
    # A config reload takes trunks too; an unchanged trunk is the same object.
    rewrite(pbx.config_path, trunks=[carrier, {**carrier, "name": "backup"}])
    reply = await pbx.call("POST", "/ami/v1/reload/config")
    assert reply.json["applied"] == ["trunks"]
    assert registry.trunk("carrier") is added and registry.trunk("backup") is not None
    rewrite(pbx.config_path, trunks=[])
    reply = await pbx.call("POST", "/ami/v1/reload/trunks")
    assert reply.json["trunks"] == {"added": [], "changed": [], "removed": ["carrier", "backup"]}
    assert len(registry) == 0


@pytest_twisted.ensureDeferred
async def test_reloads_refused(pbx: WebPbx) -> None:
    assert (await pbx.call("POST", "/ami/v1/reload/everything")).status == 404
    assert (await pbx.call("GET", "/ami/v1/reload/routes")).status == 405
    pbx.service.http.web.config_path = None
    assert (await pbx.call("POST", "/ami/v1/reload/routes")).status == 409


@pytest_twisted.ensureDeferred
async def test_shutdown_drains_then_stops(pbx: WebPbx) -> None:
    reply = await pbx.call("POST", "/ami/v1/shutdown")
    assert reply.status == 202
    assert reply.json == {"success": True, "status": "draining", "active_calls": 0,
                          "deadline_seconds": 60.0}
    assert not pbx.service.calls.manager.accepting  # new INVITEs get 503
    assert (await pbx.call("GET", "/api/status")).json["running"] is False
    assert (await pbx.call("GET", "/ami/v1/health")).json["status"] == "draining"
    await wait_until(lambda: pbx.stops == ["stop"])
    again = await pbx.call("POST", "/ami/v1/shutdown")
    assert again.status == 202
    assert pbx.stops == ["stop"]  # once


@pytest_twisted.ensureDeferred
async def test_shutdown_deadline_stops_with_calls_up(tmp_path: Path) -> None:
    pbx = await start_web_pbx(tmp_path, ami={"shutdown_deadline": 0.3})
    manager = pbx.service.calls.manager
    try:
        # A call that never ends, as far as the drain can see.
        manager.calls["stuck"] = type("StuckCall", (), {"state": None})()
        reply = await pbx.call("POST", "/ami/v1/shutdown")
        assert reply.json["active_calls"] == 1
        await wait_until(lambda: pbx.stops == ["stop"], timeout=5)
    finally:
        del manager.calls["stuck"]
        await pbx.stop()


@pytest_twisted.ensureDeferred
async def test_addresses_outside_ami_allows_get_403(tmp_path: Path) -> None:
    """HTTP on ::1, AMI allowed from 127.0.0.0/8 only: the ::1 client is refused everywhere under
    /ami/v1 (known paths or not), while /api still answers it."""
    pbx = await start_web_pbx(tmp_path, http={"host": "::1"}, ami={"allows": ["127.0.0.0/8"]})
    try:
        for method, path in [("GET", "/ami/v1/health"), ("POST", "/ami/v1/shutdown"),
                             ("GET", "/ami/v1/nothing"), ("POST", "/ami/v1/reload/config")]:
            reply = await pbx.call(method, path)
            assert (reply.status, reply.json) == (403, {"error": "this address may not use /ami/v1 (ami.allows)"})
        assert pbx.stops == [] and pbx.service.calls.manager.accepting
        assert (await pbx.call("GET", "/api/status")).status == 200
        # Allowed once the list has it (read live from the config in force).
        rewrite(pbx.config_path, ami={"allows": ["::1"]})
        assert (await pbx.call("POST", "/api/config", json_body={})).status == 405
        pbx.service.http.operations.reload("config")
        assert (await pbx.call("GET", "/ami/v1/health")).status == 200
    finally:
        await pbx.stop()


# --- the daemon ---------------------------------------------------------------------------


def daemon_config(tmp_path: Path, **extra: Any) -> Path:
    path = tmp_path / "pbxd.yml"
    data = {"data_dir": str(tmp_path / "data"),
            "sip": {"listen": [{"transport": "udp", "host": "127.0.0.1", "port": 0}]},
            "http": {"host": "127.0.0.1", "port": 0}, **extra}
    path.write_text(yaml.safe_dump(data))
    return path


def http_port(daemon: Any) -> int:
    line = daemon.wait_for(lambda line: "http: listening on" in line)
    match = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
    assert match, line
    return int(match[1])


def post(port: int, path: str) -> tuple[int, bytes]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method="POST", data=b"")
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 (loopback)
        return response.status, response.read()


def test_daemon_post_shutdown_stops_the_process(pbxd_daemon: Any, tmp_path: Path) -> None:
    daemon = pbxd_daemon("-c", str(daemon_config(tmp_path)))
    port = http_port(daemon)
    daemon.wait_for(lambda line: f"pbxd {__version__} ready" in line)
    status, body = post(port, "/ami/v1/shutdown")
    assert status == 202 and b'"draining"' in body
    assert daemon.wait(30) == 0
    assert any("graceful stop: no calls are up" in line for line in daemon.lines)
    assert daemon.lines[-1].endswith("Server Shut Down.")


def test_daemon_sigterm_is_a_graceful_stop(pbxd_daemon: Any, tmp_path: Path) -> None:
    daemon = pbxd_daemon("-c", str(daemon_config(tmp_path)))
    daemon.wait_for(lambda line: f"pbxd {__version__} ready" in line)
    assert daemon.stop() == -signal.SIGTERM  # ended by the signal it got, as twistd does
    assert any("graceful stop (SIGTERM)" in line for line in daemon.lines)


def test_daemon_sighup_reloads_the_config(pbxd_daemon: Any, tmp_path: Path) -> None:
    path = daemon_config(tmp_path)
    daemon = pbxd_daemon("-c", str(path))
    daemon.wait_for(lambda line: f"pbxd {__version__} ready" in line)
    data = yaml.safe_load(path.read_text())
    data["routes"] = [{"name": "hup", "destination": "1001"}]
    path.write_text(yaml.safe_dump(data))
    daemon.process.send_signal(signal.SIGHUP)
    daemon.wait_for(lambda line: "reload config: applied routes" in line)
    path.write_text("sip: [\n")
    daemon.process.send_signal(signal.SIGHUP)
    daemon.wait_for(lambda line: "SIGHUP: the config file was not applied" in line)
    assert daemon.process.poll() is None  # a bad file does not stop pbxd
    assert daemon.stop() == -signal.SIGTERM


def test_non_loopback_http_without_tokens_refuses_to_start(pbxd_daemon: Any, tmp_path: Path) -> None:
    daemon = pbxd_daemon("-c", str(daemon_config(tmp_path)), "--http-host", "0.0.0.0")
    assert daemon.wait(30) == 78
    assert any("is not a loopback address and http.tokens is empty" in line for line in daemon.lines)
