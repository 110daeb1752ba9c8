"""/api through real HTTP against the running service tree (pbx-rest-api.md shapes)."""

from __future__ import annotations

import datetime
import stat
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import yaml

from pbxd.config import load_config
from pbxd.store import Binding, Cdr
from pbxd.web.api import MASK, mask_secrets, parse_mac_or_ip, replace_top_level, restore_secrets
from pbxd.web.errors import HttpError
from tests.web_support import WebPbx, start_web_pbx


@pytest_twisted.async_yield_fixture
async def pbx(tmp_path: Path) -> AsyncIterator[WebPbx]:
    running = await start_web_pbx(tmp_path)
    yield running
    await running.stop()


def now() -> float:
    return datetime.datetime.now(datetime.timezone.utc).timestamp()


async def register(pbx: WebPbx, number: str) -> None:
    """A binding for ``number`` as the registrar commits one for a REGISTER."""
    location = pbx.service.registrar.location
    aor = location.aor(number)
    binding = Binding(aor=aor, contact_uri=f"sip:{number}@127.0.0.1:5099", expires_at=now() + 600,
                      call_id=f"reg-{number}", cseq=1, source_transport="udp", source_host="127.0.0.1",
                      source_port=5099, received_at=now())
    await location.commit(aor, [binding], [])


# --- status --------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_status_has_the_seed_shape(pbx: WebPbx) -> None:
    reply = await pbx.call("GET", "/api/status", token="read")
    assert reply.status == 200
    assert reply.header("Content-Type") == "application/json; charset=utf-8"
    assert reply.json == {
        "running": True, "registered_extensions": 0, "active_calls": 0, "total_calls": 0,
        "active_recordings": 0, "active_conferences": 0, "parked_calls": 0, "queued_calls": 0,
    }


# --- extensions -----------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_extensions_list_add_update_delete(pbx: WebPbx) -> None:
    listed = await pbx.call("GET", "/api/extensions", token="read")
    assert listed.status == 200
    assert listed.json == [
        {"number": "1001", "name": "Alice", "email": "alice@pbx.test", "registered": False,
         "allow_external": True, "enabled": True, "max_calls": 0, "dial_patterns": []},
        {"number": "1002", "name": "Bob", "email": "", "registered": False, "allow_external": True,
         "enabled": True, "max_calls": 0, "dial_patterns": []},
    ]
    new = {"number": "1005", "name": "New User", "email": "newuser@company.com",
           "password": "securepassword123", "allow_external": True}
    added = await pbx.call("POST", "/api/extensions", token="write", json_body=new)
    assert (added.status, added.json) == (201, {"success": True, "message": "Extension added successfully"})
    # The SIP side knows it at once.
    assert pbx.service.registrar.directory.has_user("1005")
    store = pbx.service.store.store
    stored = await store.get_extension("1005")
    assert (stored.name, stored.email, stored.allow_external) == ("New User", "newuser@company.com", True)

    updated = await pbx.call("PUT", "/api/extensions/1005", token="write",
                             json_body={"name": "Updated Name", "allow_external": False})
    assert (updated.status, updated.json) == (200, {"success": True, "message": "Extension updated successfully"})
    after = await store.get_extension("1005")
    assert (after.name, after.allow_external) == ("Updated Name", False)
    assert after.ha1_md5 == stored.ha1_md5  # no password given: kept

    repassword = await pbx.call("PUT", "/api/extensions/1005", token="write", json_body={"password": "other-pass"})
    assert repassword.status == 200
    assert (await store.get_extension("1005")).ha1_md5 != stored.ha1_md5

    location = pbx.service.registrar.location
    await register(pbx, "1005")
    assert location.has_user("1005")
    assert [e["registered"] for e in (await pbx.call("GET", "/api/extensions")).json if e["number"] == "1005"] == [True]
    assert (await pbx.call("GET", "/api/status")).json["registered_extensions"] == 1
    disabled = await pbx.call("PUT", "/api/extensions/1005", token="write", json_body={"enabled": False})
    assert disabled.status == 200
    assert not pbx.service.registrar.directory.has_user("1005")
    assert not location.has_user("1005")  # its registration went with it
    await register(pbx, "1005")

    deleted = await pbx.call("DELETE", "/api/extensions/1005", token="write")
    assert (deleted.status, deleted.json) == (200, {"success": True, "message": "Extension deleted successfully"})
    assert not location.has_user("1005")
    assert await pbx.service.store.store.bindings_for(location.aor("1005")) == []
    assert [e["number"] for e in (await pbx.call("GET", "/api/extensions")).json] == ["1001", "1002"]


@pytest_twisted.ensureDeferred
async def test_extension_errors(pbx: WebPbx) -> None:
    async def post(body: Any) -> tuple[int, str]:
        reply = await pbx.call("POST", "/api/extensions", token="write", json_body=body)
        return reply.status, reply.json["error"]

    assert await post({"number": "1001", "password": "x1234567"}) == (409, "extension 1001 exists already")
    assert (await post({"number": "1009"}))[0] == 400  # no password
    assert await post({"number": 1009, "password": "pw"}) == (400, "the field 'number' must be a string, got an integer")
    assert await post({"number": "1009", "password": "pw", "allow_external": "yes"}) == (
        400, "the field 'allow_external' must be true or false, got a string")
    status, error = await post({"number": "1009", "password": "pw", "colour": "red"})
    assert status == 400 and error.startswith("unknown field: colour")
    assert (await post({"number": "10 09", "password": "pw"}))[0] == 422  # not a usable number
    assert (await post({"number": "1009", "password": "pw", "email": "not-an-address"}))[0] == 422
    assert (await post({"number": "1009", "password": ""}))[0] == 422
    assert (await post({"number": "1009", "password": "pw", "name": "x" * 201}))[0] == 400
    assert (await post([]))[0] == 400

    missing = await pbx.call("PUT", "/api/extensions/1999", token="write", json_body={"name": "x"})
    assert (missing.status, missing.json) == (404, {"error": "extension 1999 does not exist"})
    nothing = await pbx.call("PUT", "/api/extensions/1001", token="write", json_body={})
    assert nothing.status == 400
    empty_password = await pbx.call("PUT", "/api/extensions/1001", token="write", json_body={"password": ""})
    assert empty_password.status == 422
    gone = await pbx.call("DELETE", "/api/extensions/1999", token="write")
    assert gone.status == 404


@pytest_twisted.ensureDeferred
async def test_extension_toll_fraud_guards(pbx: WebPbx) -> None:
    new = {"number": "1006", "password": "pw-1006", "max_calls": 2, "dial_patterns": ["0[1-9][0-9]{5,}", r"\+44\d+"]}
    assert (await pbx.call("POST", "/api/extensions", token="write", json_body=new)).status == 201
    store = pbx.service.store.store
    stored = await store.get_extension("1006")
    assert (stored.max_calls, stored.dial_patterns) == (2, ("0[1-9][0-9]{5,}", r"\+44\d+"))
    [listed] = [e for e in (await pbx.call("GET", "/api/extensions")).json if e["number"] == "1006"]
    assert (listed["max_calls"], listed["dial_patterns"]) == (2, ["0[1-9][0-9]{5,}", r"\+44\d+"])
    # The SIP side's directory has the new guards before the answer.
    lookup = await pbx.service.registrar.directory.lookup("1006", stored.realm)
    assert lookup.user.max_calls == 2 and lookup.user.may_dial("+442071234567")

    updated = await pbx.call("PUT", "/api/extensions/1006", token="write", json_body={"max_calls": 0, "dial_patterns": []})
    assert updated.status == 200
    after = await store.get_extension("1006")
    assert (after.max_calls, after.dial_patterns) == (0, ())

    async def put(body: Any) -> tuple[int, str]:
        reply = await pbx.call("PUT", "/api/extensions/1006", token="write", json_body=body)
        return reply.status, reply.json["error"]

    assert await put({"max_calls": -1}) == (400, "max_calls must be 0 (no limit) to 10000, not -1")
    assert await put({"max_calls": "2"}) == (400, "the field 'max_calls' must be an integer, got a string")
    assert await put({"max_calls": 2.5}) == (400, "the field 'max_calls' must be an integer, got a number")
    assert await put({"max_calls": True}) == (400, "the field 'max_calls' must be an integer, got true")
    assert await put({"dial_patterns": "0.*"}) == (400, "the field 'dial_patterns' must be a list, got a string")
    assert await put({"dial_patterns": ["0.*", 7]}) == (400, "dial_patterns[1] must be a str, not int")
    status, error = await put({"dial_patterns": ["0.*", "(unclosed"]})
    assert status == 400 and error.startswith("dial_patterns[1] '(unclosed' is not a valid regular expression")
    assert (await put({"dial_patterns": [""]}))[0] == 400
    assert (await put({"dial_patterns": ["1"] * 51}))[0] == 400
    bad_new = await pbx.call("POST", "/api/extensions", token="write",
                             json_body={"number": "1007", "password": "pw", "dial_patterns": ["[0-9"]})
    assert bad_new.status == 400
    assert await store.get_extension("1006") == after  # nothing written by a refused change
    assert "1007" not in {e.number for e in await store.list_extensions()}


@pytest_twisted.ensureDeferred
async def test_malformed_bodies_are_400_and_wrong_types_415(pbx: WebPbx) -> None:
    cases = [
        (b"{", "application/json", 400),
        (b"", "application/json", 400),
        (b'{"number": "1", "number": "2", "password": "x"}', "application/json", 400),
        (b'{"number": NaN}', "application/json", 400),
        (b"\xff\xfe", "application/json", 400),
        (b"[" * 100000 + b"]" * 100000, "application/json", 400),
        (b'{"number": "1009", "password": "pw"}', "text/plain", 415),
        (b'{"number": "1009", "password": "pw"}', "application/x-www-form-urlencoded", 415),
    ]
    for body, content_type, status in cases:
        reply = await pbx.call("POST", "/api/extensions", token="write", body=body,
                               headers={"Content-Type": content_type})
        assert reply.status == status, (body[:20], reply.body)
        assert "error" in reply.json


@pytest_twisted.ensureDeferred
async def test_unknown_routes_methods_and_query_parameters(pbx: WebPbx) -> None:
    assert (await pbx.call("GET", "/api/nothing")).status == 404
    assert (await pbx.call("GET", "/nothing")).json == {"error": "no such resource"}
    wrong = await pbx.call("PATCH", "/api/extensions")
    assert wrong.status == 405
    assert set(wrong.header("Allow").split(", ")) >= {"GET", "POST"}
    assert (await pbx.call("GET", "/api/status?verbose=1")).status == 400
    assert (await pbx.call("GET", "/api/cdr?limit=1&limit=2")).status == 400


# --- auth -------------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_tokens_and_scopes(pbx: WebPbx) -> None:
    none = await pbx.call("GET", "/api/extensions", token=None)
    assert none.status == 401
    assert none.header("WWW-Authenticate") == 'Bearer realm="pbxd"'
    wrong = await pbx.call("GET", "/api/extensions", token="not-a-token-at-all")
    assert wrong.status == 401
    assert "invalid_token" in wrong.header("WWW-Authenticate")
    basic = await pbx.call("GET", "/api/extensions", token=None, headers={"Authorization": "Basic YTpi"})
    assert basic.status == 401
    assert (await pbx.call("GET", "/api/extensions", token="read")).status == 200
    low = await pbx.call("POST", "/api/extensions", token="read", json_body={"number": "1009", "password": "pw"})
    assert (low.status, low.json) == (403, {"error": "the write scope is needed; read has read"})
    assert (await pbx.call("GET", "/api/config", token="write")).status == 403
    assert (await pbx.call("GET", "/api/config", token="admin")).status == 200
    # Admin includes write.
    assert (await pbx.call("POST", "/api/extensions", token="admin",
                           json_body={"number": "1009", "password": "pw"})).status == 201


@pytest_twisted.ensureDeferred
async def test_without_tokens_a_loopback_api_is_open(tmp_path: Path) -> None:
    pbx = await start_web_pbx(tmp_path, http={"tokens": []})
    try:
        assert (await pbx.call("GET", "/api/config", token=None)).status == 200
        # A token sent to an open API does no harm.
        assert (await pbx.call("GET", "/api/status", token="whatever-token-here")).status == 200
    finally:
        await pbx.stop()


# --- CDRs and statistics ----------------------------------------------------------------------


async def add_cdrs(pbx: WebPbx, day_start: float) -> None:
    store = pbx.service.store.store
    calls = [
        ("answered", 10.0, 100.0, 5.0),
        ("answered", 20.0, 50.0, 2.0),
        ("busy", 30.0, 3.0, None),
        ("no_answer", 40.0, 30.0, None),
    ]
    for index, (disposition, offset, length, ring) in enumerate(calls):
        start = day_start + offset
        await store.add_cdr(Cdr(
            call_id=f"call-{index}", from_number="1001", to_number="1002", direction="internal",
            start_time=start, end_time=start + length, disposition=disposition,
            answer_time=None if ring is None else start + ring, recording_path=None))
    # Another day's call counts for that day only.
    await store.add_cdr(Cdr(call_id="old", from_number="1002", to_number="1001", direction="internal",
                            start_time=day_start - 86400, end_time=day_start - 86300, disposition="failed"))


@pytest_twisted.ensureDeferred
async def test_cdr_and_statistics(pbx: WebPbx) -> None:
    day = datetime.date(2024, 1, 15)
    start = datetime.datetime(2024, 1, 15, tzinfo=datetime.timezone.utc).timestamp()
    await add_cdrs(pbx, start)
    cdrs = (await pbx.call("GET", "/api/cdr?date=2024-01-15", token="read")).json
    assert [c["call_id"] for c in cdrs] == ["call-3", "call-2", "call-1", "call-0"]  # newest first
    first = cdrs[-1]
    assert first["from_extension"] == "1001" and first["to_extension"] == "1002"
    assert first["start_time"] == "2024-01-15T00:00:10+00:00"
    assert first["answer_time"] == "2024-01-15T00:00:15+00:00"
    assert (first["duration"], first["billsec"], first["disposition"]) == (100, 95, "answered")
    assert "recording_file" in first
    limited = (await pbx.call("GET", "/api/cdr?date=2024-01-15&limit=2")).json
    assert len(limited) == 2
    assert (await pbx.call("GET", "/api/cdr")).json == []  # today: none

    stats = await pbx.call("GET", f"/api/statistics?date={day.isoformat()}", token="read")
    assert stats.json == {
        "date": "2024-01-15", "total_calls": 4, "answered_calls": 2, "failed_calls": 2,
        "answer_rate": 50.0, "total_duration": 183.0, "total_billsec": 143.0, "average_duration": 45.8,
        "by_disposition": {"answered": 2, "busy": 1, "cancelled": 0, "failed": 0, "no_answer": 1},
    }
    empty = (await pbx.call("GET", "/api/statistics?date=2020-02-29")).json
    assert (empty["total_calls"], empty["answer_rate"], empty["average_duration"]) == (0, 0.0, 0.0)

    for query in ("date=2024-13-01", "date=yesterday", "date=2024-1-5", "limit=0", "limit=-1",
                  "limit=ten", "limit=100001", "date=%ff"):
        reply = await pbx.call("GET", f"/api/cdr?{query}")
        assert reply.status == 400, query
    assert (await pbx.call("GET", "/api/statistics?date=2024-02-30")).status == 400


# --- phones --------------------------------------------------------------------------------------


async def add_phones(pbx: WebPbx) -> None:
    store = pbx.service.store.store
    await store.upsert_phone(extension="1001", ip="192.168.1.100", contact_uri="<sip:1001@192.168.1.100:5060>",
                             user_agent="Yealink SIP-T46S 66.85.0.5", mac="001565123456", vendor="yealink",
                             model="t46s", seen_at=1733392800.0)
    await store.upsert_phone(extension="1002", ip="2001:db8::5", contact_uri="<sip:1002@[2001:db8::5]:5060>",
                             user_agent="Generic SIP Phone", mac=None, vendor=None, model=None,
                             seen_at=1733393100.0)


@pytest_twisted.ensureDeferred
async def test_registered_phones(pbx: WebPbx) -> None:
    await add_phones(pbx)
    phones = (await pbx.call("GET", "/api/registered-phones", token="read")).json
    assert phones[0] == {
        "id": phones[0]["id"], "mac_address": "001565123456", "extension_number": "1001",
        "user_agent": "Yealink SIP-T46S 66.85.0.5", "ip_address": "192.168.1.100",
        "first_registered": "2024-12-05T10:00:00+00:00", "last_registered": "2024-12-05T10:00:00+00:00",
        "contact_uri": "<sip:1001@192.168.1.100:5060>",
    }
    assert phones[1]["mac_address"] is None
    with_mac = (await pbx.call("GET", "/api/registered-phones/with-mac")).json
    assert {k: with_mac[0][k] for k in ("mac_source", "vendor", "model", "config_url")} == {
        "mac_source": "sip_registration", "vendor": "yealink", "model": "t46s", "config_url": None}
    assert with_mac[1]["mac_source"] is None
    mine = (await pbx.call("GET", "/api/registered-phones/extension/1002")).json
    assert [p["ip_address"] for p in mine] == ["2001:db8::5"]
    assert (await pbx.call("GET", "/api/registered-phones/extension/1999")).json == []


@pytest_twisted.ensureDeferred
async def test_phone_lookup(pbx: WebPbx) -> None:
    await add_phones(pbx)
    for mac in ("00:15:65:12:34:56", "00-15-65-12-34-56", "001565123456", "0015.6512.3456", "00:15:65:12:34:56".upper()):
        reply = await pbx.call("GET", f"/api/phone-lookup/{mac}", token="read")
        assert reply.status == 200, mac
        assert reply.json["type"] == "mac" and reply.json["identifier"] == mac
        assert reply.json["correlation"] == {
            "matched": True, "extension": "1001", "mac_address": "001565123456", "ip_address": "192.168.1.100",
            "vendor": "yealink", "model": "t46s"}
    by_ip = (await pbx.call("GET", "/api/phone-lookup/192.168.1.100")).json
    assert (by_ip["type"], by_ip["registered_phone"]["extension_number"]) == ("ip", "1001")
    assert by_ip["provisioned_device"] is None
    for ipv6 in ("2001:db8::5", "2001:0db8:0:0:0:0:0:5", "[2001:db8::5]"):
        reply = await pbx.call("GET", f"/api/phone-lookup/{ipv6}")
        assert reply.json["correlation"]["extension"] == "1002", ipv6
    assert (await pbx.call("GET", "/api/phone-lookup/10.9.9.9")).status == 404
    assert (await pbx.call("GET", "/api/phone-lookup/00:15:65:00:00:01")).status == 404
    for garbage in ("nonsense", "00:15:65:12:34", "00:15-65:12:34:56", "001565zz3456", "999.1.1.1", "%20"):
        reply = await pbx.call("GET", f"/api/phone-lookup/{garbage}")
        assert reply.status == 400, garbage


def test_mac_and_ip_forms() -> None:
    assert parse_mac_or_ip("0015.6512.3456") == ("mac", "001565123456")
    assert parse_mac_or_ip("::ffff:192.0.2.1") == ("ip", "192.0.2.1")
    with pytest.raises(HttpError):
        parse_mac_or_ip("00:15:65:12:34:56:78")


# --- configuration ------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_get_config_never_shows_secrets(tmp_path: Path) -> None:
    pbx = await start_web_pbx(tmp_path, auth={"nonce_secret": "n" * 20},
                              cdr={"push_url": "http://127.0.0.1:9/cdr", "headers": {"Authorization": "Bearer x"}},
                              trunks=[{"name": "carrier", "destination": {"host": "192.0.2.1"},
                                       "username": "u", "password": "trunk-pass"}])
    try:
        reply = await pbx.call("GET", "/api/config", token="admin")
        assert reply.status == 200
        config = reply.json
        text = reply.body.decode()
        for secret in ("secret-1001", "secret-1002", "n" * 20, "trunk-pass", "Bearer x", "token-0123456789"):
            assert secret not in text
        assert config["extensions"][0]["password"] == MASK
        assert config["trunks"][0]["password"] == MASK
        assert config["http"]["tokens"][0]["token"] == MASK
        assert config["cdr"]["headers"] == {"Authorization": MASK}
        assert config["http"]["port"] == 0
    finally:
        await pbx.stop()


@pytest_twisted.ensureDeferred
async def test_put_config_writes_atomically_keeps_comments_and_says_what_needs_a_restart(pbx: WebPbx) -> None:
    path = pbx.config_path
    path.write_text("# top comment\n" + path.read_text().replace("http:\n", "# about http\nhttp:\n"))
    path.chmod(0o600)
    routes = [{"name": "to-bob", "priority": 5, "match": {"request_user": "22"}, "destination": "1002"}]
    reply = await pbx.call("PUT", "/api/config", token="admin",
                           json_body={"routes": routes, "registrar": {"min_expires": 120}})
    assert reply.status == 200, reply.body
    assert reply.json == {
        "success": True, "message": "Configuration updated successfully. Restart required.",
        "comments_kept": True, "applied": ["routes"], "restart_required": ["registrar"], "ignored": [],
    }
    text = path.read_text()
    assert text.startswith("# top comment\n") and "# about http\nhttp:" in text
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".pbxd.yml.")]  # no temporary left
    on_disk = load_config(path)
    assert on_disk.registrar.min_expires == 120 and on_disk.routes[0].name == "to-bob"
    # Routes are live; the registrar waits for a restart.
    assert pbx.service.config.routes[0].name == "to-bob"
    assert pbx.service.config.registrar.min_expires != 120
    static = pbx.service.calls.manager.router.static
    assert "to-bob" in [route.name for route in static.routes]


@pytest_twisted.ensureDeferred
async def test_put_config_keeps_masked_secrets_and_refuses_bad_configs(pbx: WebPbx) -> None:
    config = (await pbx.call("GET", "/api/config")).json
    config["http"]["rate_limit"]["per_minute"] = 500
    reply = await pbx.call("PUT", "/api/config", json_body={"http": config["http"],
                                                           "extensions": config["extensions"]})
    assert reply.status == 200, reply.body
    assert reply.json["applied"] == ["http.rate_limit"]
    assert reply.json["ignored"] == []  # the same extensions as before
    on_disk = yaml.safe_load(pbx.config_path.read_text())
    assert on_disk["http"]["tokens"][0]["token"] == "read-token-0123456789abcdef"
    assert on_disk["extensions"][0]["password"] == "secret-1001"
    assert pbx.service.http.web.limiter.per_minute == 500

    before = pbx.config_path.read_text()
    bad = [
        ({"http": {"port": 70000}}, 422),
        ({"sip": {"listen": "udp"}}, 422),
        ({"nonsense": 1}, 400),
        ([], 400),
        ({}, 400),
        ({"auth": {"nonce_secret": MASK}}, 422),  # nothing to keep: the mask would become the secret
    ]
    for body, status in bad:
        reply = await pbx.call("PUT", "/api/config", json_body=body)
        assert reply.status == status, (body, reply.body)
    assert pbx.config_path.read_text() == before
    assert (await pbx.call("PUT", "/api/config", token="write", json_body={"log": {}})).status == 403


def test_secrets_masks_and_restores() -> None:
    data = {"trunks": [{"name": "a", "password": "pa"}, {"name": "b", "password": "pb"}],
            "routes": [{"name": "r", "headers": {"X-Tenant": "t1"}}],
            "locator": {"headers": {"Authorization": "Bearer s"}},
            "auth": {"nonce_secret": None, "backends": [{"type": "http", "headers": {"X-Key": "k"}}]},
            "console": {"admins": [{"username": "root", "password": None, "password_hash": "pbkdf2$x"}]}}
    masked = mask_secrets(data)
    assert masked["trunks"][0]["password"] == MASK
    assert masked["routes"][0]["headers"] == {"X-Tenant": "t1"}  # SIP headers, not secrets
    assert masked["locator"]["headers"] == {"Authorization": MASK}
    assert masked["auth"]["backends"][0]["headers"] == {"X-Key": MASK}
    assert masked["auth"]["nonce_secret"] is None
    assert masked["console"]["admins"][0] == {"username": "root", "password": None, "password_hash": MASK}
    assert restore_secrets(masked, data)["console"] == data["console"]
    # Reordered trunks find their secrets by name.
    new = {"trunks": [masked["trunks"][1], masked["trunks"][0]]}
    assert restore_secrets(new, data)["trunks"] == [{"name": "b", "password": "pb"}, {"name": "a", "password": "pa"}]
    with pytest.raises(HttpError):
        restore_secrets({"trunks": [{"name": "c", "password": MASK}]}, data)


def test_replace_top_level_keeps_other_blocks() -> None:
    text = "# head\na: 1\n\n# about b\nb:\n  x: 1  # inline\n  y: [1, 2]\n# about c\nc: 3\n"
    out = replace_top_level(text, {"b": {"x": 2}, "d": [1]})
    assert out == "# head\na: 1\n\n# about b\nb:\n  x: 2\n# about c\nc: 3\nd:\n- 1\n"
    assert yaml.safe_load(out) == {"a": 1, "b": {"x": 2}, "c": 3, "d": [1]}


@pytest_twisted.ensureDeferred
async def test_put_config_without_a_file_is_409(tmp_path: Path) -> None:
    pbx = await start_web_pbx(tmp_path)
    pbx.service.http.web.config_path = None
    try:
        reply = await pbx.call("PUT", "/api/config", json_body={"log": {"level": "debug"}})
        assert reply.status == 409
    finally:
        await pbx.stop()


# --- no input is a 500 ------------------------------------------------------------------------


BODIES = [b"", b"null", b"[]", b"{}", b'"text"', b"1e999", b"-0", b'{"call_id": null, "number": null}',
          b'{"call_id": "x", "destination": 5}', b'{"a":' * 2000, b"\x00\xff", b'{"routes": "x"}',
          b'{"http": {"tokens": [{"token": "********"}]}}', b'{"extensions": [{"number": "1"}]}']
PATH_VALUES = ["x", "%00", "..", "%2e%2e", "x" * 3000, "%ff", "1001%2F..%2F", "%20", "-1", "1" * 40]


@pytest_twisted.ensureDeferred
async def test_no_input_gives_a_500(tmp_path: Path) -> None:
    """Every route and method of /api and /ami/v1, with odd path values, bodies and query
    strings: a 4xx (or a 2xx), a JSON error, never a 5xx."""
    pbx = await start_web_pbx(tmp_path, http={"rate_limit": {"per_minute": 0, "per_hour": 0}})
    try:
        await _try_everything(pbx)
    finally:
        await pbx.stop()


async def _try_everything(pbx: WebPbx) -> None:
    statuses: set[int] = set()
    routes = [r for r in pbx.service.http.root.routes() if r.path.startswith(("/api", "/ami"))]
    seen = 0
    for route in routes:
        if route.path.endswith("/shutdown"):
            continue  # a drain would refuse the rest; tested on its own
        paths = [route.path] if "{" not in route.path else [
            "/".join(value if part.startswith("{") else part for part in route.path.split("/"))
            for value in PATH_VALUES]
        for path in paths:
            for method in sorted(route.methods | {"PATCH"}):
                for body in (BODIES if method in ("POST", "PUT") else [b""]):
                    for query in ("", "?date=%ff&limit=%00"):
                        reply = await pbx.call(method, path + query, body=body or None,
                                               headers={"Content-Type": "application/json"})
                        seen += 1
                        statuses.add(reply.status)
                        assert reply.status < 500, (method, path, body[:40], reply.body)
                        if reply.status >= 400:
                            assert "error" in reply.json, (method, path, reply.body)
    assert seen > 500
    assert 429 not in statuses and {200, 400, 404, 405} <= statuses
