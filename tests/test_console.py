"""/console through real HTTP (treq) against a running PbxService on loopback:
login and the session cookie, extensions, routing (live and in the config
file, then a real call routed by a new route), trunks, call records with
filters, paging, a recording with Range requests and the SIP ladder of a real
sipp call hung up from the console. Bad input everywhere."""

from __future__ import annotations

import json
import re
import wave
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import treq
import yaml
from twisted.internet import defer, reactor
from twisted.internet.task import Clock

from call_support import (
    CALLEE_HANGS_UP,
    CALLEE_TAKES_REINVITE,
    CALLER_WAITS_FOR_BYE,
    WAIT_FOR_BYE,
    callee,
    caller,
    callee_ok,
    cdrs,
    drained,
    eventually,
    final_and_ack,
    pbx_config,
    start_pbx,
)
from pbxd.call.media import MediaRequest, direct_media
from pbxd.config import load_config
from pbxd.media.session import relay_media_factory
from pbxd.store import Cdr
from pbxd.events import TrunkEvent
from pbxd.web.console import MAX_SESSIONS, Sessions, hash_password, verify_password
from sipp_runner import requires_sipp
from tests.management_support import (
    ADMIN_TOKEN,
    READ_TOKEN,
    TOKENS,
    bearer,
    connect,
    next_message,
    samples,
    serving,
)

ADMINS = [
    {"username": "alice", "password": "wonderland"},
    # A cheap hash keeps the test fast; pbxd's default is 600000 iterations.
    {"username": "bob", "password_hash": hash_password("builder", iterations=1000)},
]
JSON = {"Content-Type": ["application/json"]}


def headers(token: str | None = ADMIN_TOKEN, **extra: str) -> dict[str, list[str]]:
    result = dict(JSON)
    if token is not None:
        result.update(bearer(token))
    result.update({k.replace("_", "-"): [v] for k, v in extra.items()})
    return result


@pytest_twisted.async_yield_fixture
async def console(tmp_path: Path):
    config_file = tmp_path / "pbxd.yml"
    config = pbx_config(tmp_path / "data", http={"port": 0, "tokens": TOKENS},
                        console={"admins": ADMINS})
    config_file.write_text("# pbxd test config\nsip:\n  domains: [pbx.test]\n\n# no routes yet\nroutes: []\n")
    service = await start_pbx(config)
    running = serving(service, config_file)
    yield running
    await running.stop()


async def call(method: str, url: str, body: Any = None, *, raw: bytes | None = None,
               token: str | None = ADMIN_TOKEN, **extra: str) -> tuple[int, Any, Any]:
    """(status, parsed JSON body, response) of one request."""
    kwargs: dict[str, Any] = {"headers": headers(token, **extra)}
    if raw is not None:
        kwargs["data"] = raw
    elif body is not None:
        kwargs["data"] = json.dumps(body).encode()
    response = await treq.request(method, url, **kwargs)
    content = await treq.content(response)
    parsed = None
    if response.headers.getRawHeaders("content-type", [""])[0].startswith("application/json"):
        parsed = json.loads(content)
    return response.code, parsed, response


def test_sessions_expire_and_are_bounded() -> None:
    clock = Clock()
    sessions = Sessions(clock, ttl=60)
    token, session = sessions.create("alice")
    assert sessions.find(token.encode()) == session and session.expires_at == 60
    clock.advance(59.9)
    assert sessions.find(token.encode()) is not None
    clock.advance(0.1)
    assert sessions.find(token.encode()) is None and len(sessions) == 0
    first, _ = sessions.create("bob")
    for _ in range(MAX_SESSIONS):
        sessions.create("bob")
    assert len(sessions) == MAX_SESSIONS and sessions.find(first.encode()) is None
    assert not sessions.end(b"unknown")


def test_password_hashes() -> None:
    stored = hash_password("secret", iterations=1000)
    assert stored.startswith("pbkdf2_sha256$1000$")
    assert verify_password("secret", stored) and not verify_password("Secret", stored)
    assert not verify_password("secret", "garbage") and not verify_password("x", "a$b$c$d")


# -- login ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("username, password", [("alice", "wonderland"), ("bob", "builder")])
@pytest_twisted.ensureDeferred
async def test_login_gives_a_session_cookie(console, username: str, password: str) -> None:
    base = console.base + "/console"
    status, body, response = await call("POST", base + "/login", {"username": username, "password": password},
                                        token=None)
    assert status == 200 and body["username"] == username and body["expires_at"]
    [cookie] = response.headers.getRawHeaders("set-cookie")
    parts = [part.strip() for part in cookie.split(";")]
    name, _, value = parts[0].partition("=")
    assert name == "pbxd_session" and len(value) >= 32
    assert {"HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=28800"} <= set(parts)
    assert "Secure" not in parts  # plain HTTP here; over TLS the cookie is Secure
    session = {"Cookie": f"pbxd_session={value}"}
    status, extensions, _ = await call("GET", base + "/extensions", token=None, **session)
    assert status == 200 and {e["number"] for e in extensions} >= {"1001", "1002"}
    status, _, _ = await call("POST", base + "/extensions", {"number": "2001", "password": "pw-2001"},
                              token=None, **session)
    assert status == 201  # a session is worth the admin scope
    # The session opens /ws too.
    client, factory = await connect(f"{console.ws_base}/ws", {"Cookie": f"pbxd_session={value}"})
    console.clients.append(client)
    console.service.events.publish(TrunkEvent("up", 1.0, "carrier"))
    assert (await next_message(factory))["trunk"] == "carrier"
    status, body, response = await call("POST", base + "/logout", token=None, **session)
    assert status == 200 and body["ended"] is True
    assert "Max-Age=0" in response.headers.getRawHeaders("set-cookie")[0]
    status, body, _ = await call("GET", base + "/extensions", token=None, **session)
    assert status == 401 and body["error"]


@pytest.mark.parametrize("body, status", [
    ({"username": "alice", "password": "guess"}, 401),
    ({"username": "mallory", "password": "wonderland"}, 401),
    ({"username": "bob", "password": "wonderland"}, 401),
    ({"username": "alice"}, 400),
    ({"username": "alice", "password": "wonderland", "remember": True}, 400),
    ({"username": 7, "password": "x"}, 400),
    ([], 400),
])
@pytest_twisted.ensureDeferred
async def test_bad_logins(console, body: Any, status: int) -> None:
    got, answer, response = await call("POST", console.base + "/console/login", body, token=None)
    assert got == status and answer["error"]
    assert response.headers.getRawHeaders("set-cookie") is None


@pytest_twisted.ensureDeferred
async def test_login_input_that_is_not_json(console) -> None:
    url = console.base + "/console/login"
    status, body, _ = await call("POST", url, raw=b"username=alice", token=None)
    assert status == 400 and body["error"]
    response = await treq.post(url, data=b"{}", headers={"Content-Type": ["text/plain"]})
    assert response.code == 415
    status, body, _ = await call("POST", url, raw=b"x" * 2_000_000, token=None)
    assert status == 413


@pytest_twisted.ensureDeferred
async def test_login_without_admins(tmp_path: Path) -> None:
    service = await start_pbx(pbx_config(tmp_path / "data", http={"port": 0, "tokens": TOKENS}))
    running = serving(service)
    try:
        status, body, _ = await call("POST", running.base + "/console/login",
                                     {"username": "alice", "password": "wonderland"}, token=None)
        assert status == 409 and "console.admins" in body["error"]
    finally:
        await running.stop()


@pytest_twisted.ensureDeferred
async def test_unknown_session_and_scopes(console) -> None:
    base = console.base + "/console"
    status, _, _ = await call("GET", base + "/extensions", token=None, Cookie="pbxd_session=forged")
    assert status == 401
    status, _, _ = await call("GET", base + "/extensions", token=READ_TOKEN)
    assert status == 200
    status, body, _ = await call("POST", base + "/extensions", {"number": "2002", "password": "p"},
                                 token=READ_TOKEN)
    assert status == 403 and "write" in body["error"]
    status, _, _ = await call("GET", base + "/nowhere")
    assert status == 404
    status, _, _ = await call("DELETE", base + "/calls/active")
    assert status == 405


# -- extensions ----------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_extensions_crud(console) -> None:
    base = console.base + "/console/extensions"
    status, created, _ = await call("POST", base, {"number": "3001", "password": "pw-3001", "name": "Desk"})
    assert status == 201 and created["number"] == "3001" and created["registered"] is False
    assert "password" not in created and "ha1_md5" not in created
    assert console.service.sip.core.users.has_user("3001")  # live for SIP at once
    assert (await call("POST", base, {"number": "3001", "password": "x"}))[0] == 409
    status, got, _ = await call("GET", base + "/3001")
    assert status == 200 and got["name"] == "Desk" and (got["max_calls"], got["dial_patterns"]) == (0, [])
    status, updated, _ = await call("PUT", base + "/3001", {"name": "Front desk", "enabled": False})
    assert status == 200 and updated["name"] == "Front desk" and updated["enabled"] is False
    status, guarded, _ = await call("PUT", base + "/3001", {"max_calls": 1, "dial_patterns": ["00[1-9].*"]})
    assert status == 200 and (guarded["max_calls"], guarded["dial_patterns"]) == (1, ["00[1-9].*"])
    assert (await call("GET", base + "/3001"))[1]["dial_patterns"] == ["00[1-9].*"]
    status, created, _ = await call("POST", base, {"number": "3003", "password": "pw", "max_calls": 3,
                                                   "dial_patterns": [r"\+1\d{10}"]})
    assert status == 201 and (created["max_calls"], created["dial_patterns"]) == (3, [r"\+1\d{10}"])
    status, _, _ = await call("DELETE", base + "/3001")
    assert status == 200 and not console.service.sip.core.users.has_user("3001")
    for method, url, body, expected in [
        ("GET", base + "/3001", None, 404),
        ("GET", base + "/a%20b", None, 404),
        ("PUT", base + "/3001", {"name": "x"}, 404),
        ("PUT", base + "/1001", {}, 400),
        ("PUT", base + "/1001", {"name": 5}, 400),
        ("DELETE", base + "/3001", None, 404),
        ("POST", base, {"number": "a b@c", "password": "x"}, 422),
        ("POST", base, {"number": "3002"}, 400),
        ("POST", base, {"number": "3002", "password": "x", "shoe_size": 44}, 400),
        ("POST", base, {"number": "3002", "password": "x", "dial_patterns": ["*"]}, 400),
        ("PUT", base + "/3003", {"max_calls": -2}, 400),
        ("PUT", base + "/3003", {"max_calls": "1"}, 400),
        ("PUT", base + "/3003", {"dial_patterns": ["ok", None]}, 400),
        ("PUT", base + "/3003", {"dial_patterns": {"0": "x"}}, 400),
    ]:
        status, answer, _ = await call(method, url, body)
        assert status == expected, (method, url, body, answer)
        assert answer["error"]


# -- routing --------------------------------------------------------------------------------------

REJECT_999 = {"name": "no-999", "priority": 10, "match": {"request_user": "^999"},
              "action": "reject", "status": 403, "reason": "Not Here"}


@requires_sipp
@pytest.mark.sipp
@pytest_twisted.ensureDeferred
async def test_routing_changes_live_and_in_the_file(console, tmp_path: Path) -> None:
    base = console.base + "/console/routing"
    assert (await call("GET", base))[1] == []
    status, body, _ = await call("POST", base, REJECT_999)
    assert status == 201 and body["persisted"] is True
    assert body["route"]["name"] == "no-999" and body["route"]["status"] == 403
    assert [r.name for r in load_config(console.web.config_path).routes] == ["no-999"]
    text = console.web.config_path.read_text()
    assert "# pbxd test config" in text  # the other keys and their comments stay
    # The next call routes by it.
    result = await caller(console.service, tmp_path, "1001", "999", "udp", final_and_ack(403))
    assert result.ok, result.explain()

    status, body, _ = await call("PUT", base + "/no-999", {**REJECT_999, "status": 404, "reason": "Gone"})
    assert status == 200 and body["route"]["status"] == 404
    assert console.service.config.routes[0].status == 404
    status, got, _ = await call("GET", base + "/no-999")
    assert status == 200 and got["reason"] == "Gone"
    for method, url, payload, expected in [
        ("POST", base, REJECT_999, 409),
        ("POST", base, {**REJECT_999, "name": "x", "action": "explode"}, 422),
        ("POST", base, {**REJECT_999, "name": "x", "colour": "red"}, 400),
        ("POST", base, {"name": "x", "destination": []}, 422),
        ("POST", base, [REJECT_999], 400),
        ("PUT", base + "/missing", REJECT_999, 404),
        ("GET", base + "/missing", None, 404),
        ("DELETE", base + "/missing", None, 404),
    ]:
        status, answer, _ = await call(method, url, payload)
        assert status == expected, (method, url, payload, answer)
        assert answer["error"]
    assert [r.name for r in load_config(console.web.config_path).routes] == ["no-999"]  # nothing changed
    status, _, _ = await call("DELETE", base + "/no-999")
    assert status == 200
    assert console.service.config.routes == () and load_config(console.web.config_path).routes == ()
    assert yaml.safe_load(console.web.config_path.read_text())["routes"] == []


# -- trunks ---------------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_trunk_crud_writes_the_file_and_reloads(console) -> None:
    """Without a carrier (registration off); test_trunk_reload.py registers to sipp."""
    base = console.base + "/console/sip-trunk"
    registry = console.service.trunks.registry
    assert (await call("GET", base))[:2] == (200, [])
    assert (await call("GET", base + "/carrier"))[0] == 404
    carrier = {"name": "carrier", "destination": {"host": "192.0.2.1", "port": 5060, "transport": "udp"},
               "username": "4930123", "password": "s3cret-pw"}
    status, body, response = await call("POST", base, carrier)
    assert status == 201 and body["persisted"] is True and body["trunk"]["password"] == "********"
    assert "s3cret-pw" not in json.dumps(body)
    trunk = registry.trunk("carrier")
    assert trunk is not None and trunk.credentials.password == "s3cret-pw"  # type: ignore[union-attr]
    on_file = load_config(console.web.config_path)
    assert [(t.name, t.password) for t in on_file.trunks] == [("carrier", "s3cret-pw")]
    assert console.web.config_path.read_text().startswith("# pbxd test config\n")  # comments kept
    status, listed, _ = await call("GET", base)
    assert [t["name"] for t in listed] == ["carrier"] and "s3cret-pw" not in json.dumps(listed)
    assert listed[0]["status"]["name"] == "carrier"
    # PUT with the masked password as GET showed it keeps the password; a change is a new Trunk.
    shown = {k: v for k, v in listed[0].items() if k != "status"}
    status, body, _ = await call("PUT", base + "/carrier", {**shown, "max_calls": 3})
    assert status == 200 and body["trunk"]["max_calls"] == 3 and body["trunk"]["password"] == "********"
    changed = registry.trunk("carrier")
    assert changed is not trunk and changed.limits.max_calls == 3  # type: ignore[union-attr]
    assert changed.credentials.password == "s3cret-pw"  # type: ignore[union-attr]
    for method, url, payload, expected in [
        ("POST", base, carrier, 409),
        ("POST", base, {**carrier, "name": "other", "password": "********"}, 422),
        ("POST", base, {**carrier, "name": "other", "register": {"enabled": True}, "username": None}, 422),
        ("POST", base, {**carrier, "name": "other", "colour": "red"}, 400),
        ("POST", base, ["not", "an", "object"], 400),
        ("POST", base, {"name": "other"}, 422),
        ("PUT", base + "/nothing", carrier, 404),
        ("PUT", base + "/carrier", {**carrier, "destination": {"host": ""}}, 422),
        ("DELETE", base + "/nothing", None, 404),
    ]:
        status, answer, _ = await call(method, url, payload)
        assert status == expected, (method, url, payload, answer)
        assert answer["error"]
    assert [t.name for t in load_config(console.web.config_path).trunks] == ["carrier"]  # nothing changed
    assert registry.trunk("carrier") is changed and len(registry) == 1
    assert (await call("POST", base, {**carrier, "name": "x"}, token=READ_TOKEN))[0] == 403
    status, body, _ = await call("DELETE", base + "/carrier")
    assert (status, body) == (200, {"success": True, "name": "carrier", "persisted": True})
    assert len(registry) == 0 and console.service.config.trunks == ()
    assert load_config(console.web.config_path).trunks == ()


# -- call records ---------------------------------------------------------------------------------

DAY = 1_700_000_000.0  # 2023-11-14T22:13:20Z


async def add_records(console, recording: str | None = None) -> list[Cdr]:
    store = console.service.store.store
    made = []
    for index, (caller_number, callee_number, direction, disposition) in enumerate([
        ("1001", "1002", "internal", "answered"),
        ("1002", "1001", "internal", "busy"),
        ("+4930123", "1001", "inbound", "answered"),
        ("1001", "+4930999", "outbound", "no_answer"),
    ]):
        start = DAY + index * 3600
        answered = disposition == "answered"
        made.append(await store.add_cdr(Cdr(
            call_id=f"call-{index}", from_number=caller_number, to_number=callee_number,
            direction=direction, start_time=start, end_time=start + 60, disposition=disposition,
            answer_time=start + 5 if answered else None,
            recording_path=recording if index == 0 else None)))
    return made


@pytest_twisted.ensureDeferred
async def test_call_records_filters_and_paging(console) -> None:
    records = await add_records(console)
    base = console.base + "/console/call-records"
    status, body, _ = await call("GET", base)
    assert status == 200 and body["total"] == 4 and [r["call_id"] for r in body["records"]] == [
        "call-3", "call-2", "call-1", "call-0"]
    status, body, _ = await call("GET", base + "?number=1001&per_page=2&page=2")
    assert body["total"] == 4 and [r["call_id"] for r in body["records"]] == ["call-1", "call-0"]
    status, body, _ = await call("GET", base + "?direction=internal&disposition=answered")
    assert [r["call_id"] for r in body["records"]] == ["call-0"]
    status, body, _ = await call("GET", base + "?since=2023-11-14T23:00:00Z&until=2023-11-15T01:00:00%2B00:00")
    assert [r["call_id"] for r in body["records"]] == ["call-2", "call-1"]
    status, body, _ = await call("POST", base, {"number": "+4930999", "page": 1, "per_page": 10})
    assert status == 200 and [r["call_id"] for r in body["records"]] == ["call-3"]
    status, body, _ = await call("GET", base + f"/{body['records'][0]['id']}")
    assert status == 200 and body["to_extension"] == "+4930999"
    for method, url, payload, expected in [
        ("GET", base + "?since=yesterday", None, 400),
        ("GET", base + "?direction=sideways", None, 400),
        ("GET", base + "?page=0", None, 400),
        ("GET", base + "?per_page=100000", None, 400),
        ("GET", base + "?colour=red", None, 400),
        ("GET", base + "?number=1&number=2", None, 400),
        ("POST", base, {"page": "two"}, 400),
        ("POST", base, {"page": 0}, 400),
        ("POST", base, {"disposition": "happy"}, 400),
        ("POST", base, {"since": "2023-13-45"}, 400),
        ("GET", base + "/999999", None, 404),
        ("GET", base + "/abc", None, 404),
        ("GET", base + "/-1/sip-flow", None, 404),
        ("GET", base + "/abc/sip-flow", None, 404),
        ("GET", base + "/1.5/sip-flow", None, 404),
        ("GET", base + "/%C2%B2/sip-flow", None, 404),  # a digit, but not ASCII
        ("GET", base + "/" + "9" * 40 + "/sip-flow", None, 404),
        ("GET", base + "/999999/sip-flow", None, 404),
        ("GET", base + f"/{records[0].id}/sip-flow", None, 404),  # a CDR without a ladder
        ("GET", base + f"/{records[0].id}/sip-flow?all=1", None, 400),
    ]:
        status, answer, _ = await call(method, url, payload)
        assert status == expected, (method, url, payload, answer)
        assert answer["error"]


@pytest_twisted.ensureDeferred
async def test_recording_with_ranges(console) -> None:
    data_dir = console.service.config.data_dir
    (data_dir / "recordings").mkdir(exist_ok=True)
    path = data_dir / "recordings" / "call-0.wav"
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(8000)
        wav.writeframes(bytes(range(256)) * 1000)  # 256 KB: several chunks
    size = path.stat().st_size
    records = await add_records(console, recording="recordings/call-0.wav")
    url = console.base + f"/console/call-records/{records[0].id}/recording"
    response = await treq.get(url, headers=bearer(READ_TOKEN))
    assert response.code == 200 and response.headers.getRawHeaders("content-type") == ["audio/wav"]
    whole = await treq.content(response)
    assert whole == path.read_bytes() and whole[:4] == b"RIFF"
    assert response.headers.getRawHeaders("accept-ranges") == ["bytes"]
    response = await treq.get(url, headers={**bearer(READ_TOKEN), "Range": ["bytes=0-99"]})
    assert response.code == 206
    assert response.headers.getRawHeaders("content-range") == [f"bytes 0-99/{size}"]
    assert await treq.content(response) == whole[:100]
    response = await treq.get(url, headers={**bearer(READ_TOKEN), "Range": [f"bytes={size - 10}-"]})
    assert response.code == 206 and await treq.content(response) == whole[-10:]
    response = await treq.get(url, headers={**bearer(READ_TOKEN), "Range": ["bytes=-16"]})
    assert response.code == 206 and await treq.content(response) == whole[-16:]
    assert response.headers.getRawHeaders("content-range") == [f"bytes {size - 16}-{size - 1}/{size}"]
    response = await treq.get(url, headers={**bearer(READ_TOKEN), "Range": [f"bytes=100-{size * 2}"]})
    assert response.code == 206 and await treq.content(response) == whole[100:]
    for ignored in ("bytes=0-1,5-9", "bytes=9-2", "lines=1-2", "bytes=x-"):  # the whole file
        response = await treq.get(url, headers={**bearer(READ_TOKEN), "Range": [ignored]})
        assert response.code == 200 and await treq.content(response) == whole, ignored
    for unsatisfiable in (f"bytes={size + 10}-", f"bytes={size}-{size + 5}", "bytes=-0"):
        response = await treq.get(url, headers={**bearer(READ_TOKEN), "Range": [unsatisfiable]})
        assert response.code == 416, unsatisfiable
        assert response.headers.getRawHeaders("content-range") == [f"bytes */{size}"]
        assert "outside" in (await response.json())["error"]
    # No recording, or the file is gone: 404 JSON.
    status, body, _ = await call("GET", console.base + f"/console/call-records/{records[1].id}/recording")
    assert status == 404 and "no recording" in body["error"]
    path.unlink()
    status, body, _ = await call("GET", url)
    assert status == 404 and "no longer" in body["error"]
    assert (await treq.get(url)).code == 401


# -- active calls ---------------------------------------------------------------------------------


@requires_sipp
@pytest.mark.sipp
@pytest_twisted.ensureDeferred
async def test_a_live_call_seen_and_hung_up_from_the_console(console, tmp_path: Path) -> None:
    pbx = console.service
    # Direct media, as a route with media_proxy none gives: the media commands must
    # say so (409) rather than pretend; relayed calls are the test further down.
    pbx.calls.manager.media_factory = direct_media
    base = console.base + "/console/calls/active"
    seen: list[tuple[str, str]] = []
    pbx.events.subscribe(lambda event: seen.append((event.type, event.call_id)), ["call"])
    client, watcher = await connect(f"{console.ws_base}/ws?token={READ_TOKEN}")
    console.clients.append(client)
    client.sendMessage(json.dumps({"subscribe": ["call"]}).encode())
    assert await next_message(watcher) == {"subscribed": ["call"]}
    callee_done = await callee(pbx, tmp_path, "1002", "udp", "uas_answer.xml", hangup=WAIT_FOR_BYE)
    caller_done = defer.Deferred.fromCoroutine(
        caller(pbx, tmp_path, "1001", "1002", "udp", CALLER_WAITS_FOR_BYE))
    await eventually(lambda: [c for c in pbx.calls.manager.active if c.state.value == "answered"])
    status, calls, _ = await call("GET", base, token=READ_TOKEN)
    [active] = calls
    assert (active["from"], active["to"], active["direction"]) == ("1001", "1002", "internal")
    assert active["media"] == "direct"
    assert [t["role"] for t in active["tracks"]] == ["caller", "callee"]
    call_id = active["id"]
    status, one, _ = await call("GET", f"{base}/{call_id}")
    assert status == 200 and one["id"] == call_id
    commands = f"{base}/{call_id}/commands"
    for payload, expected, words in [
        ({"action": "mute", "track_id": active["tracks"][1]["track_id"]}, 409, "not relayed"),
        ({"action": "send_dtmf", "digits": "12#"}, 409, "not relayed"),
        ({"action": "start_recording"}, 409, "not relayed"),
        ({"action": "accept", "sdp": "v=0"}, 409, "only a ringing call"),
        ({"action": "dance"}, 400, "unknown action"),
        ({"action": "hangup", "reason": "bad reason!"}, 400, "reason"),
        ({"action": "hold", "track_id": "leg-nope"}, 404, "no track"),
        ({"action": "send_dtmf", "digits": "xyz"}, 400, "digits"),
        ({"action": "transfer"}, 400, "target"),
        ({"reason": "x"}, 400, "action"),
    ]:
        status, body, _ = await call("POST", commands, payload)
        assert status == expected and words in body["error"], (payload, body)
    assert (await call("POST", commands, {"action": "hangup"}, token=READ_TOKEN))[0] == 403
    assert (await call("POST", f"{base}/nope/commands", {"action": "hangup"}))[0] == 404
    status, body, _ = await call("POST", commands, {"action": "hangup", "reason": "admin_kick"})
    assert status == 200 and body["success"] is True

    result = await caller_done
    assert result.ok, result.explain()
    other = await callee_done
    assert callee_ok(other), other.explain()
    [record] = await cdrs(pbx)
    assert (record.hangup_cause, record.hangup_side) == ("admin_kick", "admin")
    response = await treq.get(console.base + "/metrics", headers=bearer(READ_TOKEN))
    metrics = samples((await treq.content(response)).decode())
    assert metrics[("pbxd_calls_total", (("disposition", "answered"),))] == 1
    assert metrics[("pbxd_active_calls", ())] == 0
    assert [t for t, c in seen if c == call_id] == ["ringing", "answered", "ended"]
    pushed = [await next_message(watcher) for _ in range(3)]
    assert [(e["type"], e["call_id"]) for e in pushed] == [(t, call_id) for t in ("ringing", "answered", "ended")]
    assert pushed[2]["disposition"] == "answered" and pushed[2]["cause"] == "admin_kick"
    assert (await call("GET", f"{base}/{call_id}"))[0] == 404

    status, flow, _ = await call("GET", console.base + f"/console/call-records/{record.id}/sip-flow")
    assert status == 200 and flow["call_id"] == call_id and flow["dropped"] == 0
    lines = [(m["direction"], m["first_line"]) for m in flow["messages"]]
    assert lines[0][0] == "in" and lines[0][1].startswith("INVITE sip:1002@")
    firsts = [line for _, line in lines]
    assert any(line.startswith("INVITE ") for d, line in lines if d == "out")  # the callee's leg
    assert sum(line.startswith("BYE ") for line in firsts) == 2  # pbxd's BYE to each phone
    assert any(line.startswith("SIP/2.0 200") for line in firsts)
    times = [m["time"] for m in flow["messages"]]
    assert times == sorted(times)
    step = flow["messages"][0]
    assert step["from"].startswith("udp:127.0.0.1:") and step["to"].startswith("udp:127.0.0.1:")
    assert "Call-ID: " in step["text"]
    await drained(pbx)

    # Once every transaction is over the ladder is whole; pbxd stopped and started
    # again on the same store still shows it, from the file.
    flow_url = f"/console/call-records/{record.id}/sip-flow"
    status, whole, _ = await call("GET", console.base + flow_url)
    assert status == 200 and len(whole["messages"]) >= len(flow["messages"])
    assert whole["messages"][:len(flow["messages"])] == flow["messages"]
    await console.stop()
    again = serving(await start_pbx(pbx.config))
    console.service = again.service  # the fixture stops this one
    assert again.service.sip.capture.ladder(call_id) is None  # nothing in memory now
    status, stored, _ = await call("GET", again.base + flow_url)
    assert (status, stored) == (200, whole)


@requires_sipp
@pytest.mark.sipp
@pytest_twisted.ensureDeferred
async def test_hold_and_unhold_from_the_console(console, tmp_path: Path) -> None:
    pbx = console.service
    callee_done = await callee(pbx, tmp_path, "1002", "udp", "uas_answer.xml",
                               hangup=CALLEE_TAKES_REINVITE + CALLEE_TAKES_REINVITE + WAIT_FOR_BYE)
    caller_done = defer.Deferred.fromCoroutine(
        caller(pbx, tmp_path, "1001", "1002", "udp", CALLER_WAITS_FOR_BYE))
    [live] = await eventually(lambda: [c for c in pbx.calls.manager.active if c.state.value == "answered"])
    commands = console.base + f"/console/calls/active/{live.id}/commands"
    status, body, _ = await call("POST", commands, {"action": "hold"})
    assert status == 200 and body["success"] is True

    def reinvites() -> list[str]:
        """pbxd's re-INVITEs to the callee, answered"""
        ladder = pbx.sip.capture.ladder(live.id) or []
        texts = [m.text for m in ladder if m.direction == "out" and m.first_line.startswith("INVITE ")
                 and "tag=" in m.text.split("To:", 1)[1].split("\r\n", 1)[0]]
        answered = [m for m in ladder if m.direction == "in" and m.first_line.startswith("SIP/2.0 200")]
        return texts if len(answered) >= 1 + len(texts) else []

    [held] = await eventually(reinvites)
    assert "a=sendonly" in held
    status, _, _ = await call("POST", commands, {"action": "unhold"})
    assert status == 200
    resumed = await eventually(lambda: reinvites()[1:])
    assert "a=sendrecv" in resumed[0]
    status, _, _ = await call("POST", commands, {"action": "hangup"})
    assert status == 200
    result = await caller_done
    assert result.ok, result.explain()
    other = await callee_done
    assert callee_ok(other), other.explain()
    await drained(pbx)


@requires_sipp
@pytest.mark.sipp
@pytest_twisted.ensureDeferred
async def test_blind_transfer_from_the_console(console, tmp_path: Path) -> None:
    """1001 calls 1002; the console transfers 1002 to 1003: 1001 gets BYE, 1002 is
    re-INVITEd towards 1003, and the call goes on until 1003 hangs up."""
    pbx = console.service
    transferee = await callee(pbx, tmp_path, "1002", "udp", "uas_answer.xml",
                              hangup=CALLEE_TAKES_REINVITE + WAIT_FOR_BYE)
    target = await callee(pbx, tmp_path, "1003", "udp", "uas_answer.xml", hangup=CALLEE_HANGS_UP)
    caller_done = defer.Deferred.fromCoroutine(
        caller(pbx, tmp_path, "1001", "1002", "udp", CALLER_WAITS_FOR_BYE))
    [live] = await eventually(lambda: [c for c in pbx.calls.manager.active if c.state.value == "answered"])
    commands = console.base + f"/console/calls/active/{live.id}/commands"
    status, body, _ = await call("POST", commands, {"action": "transfer", "target": "9999"})
    assert status == 409 and "9999" in body["error"]  # nowhere to reach it
    status, body, _ = await call("POST", commands, {"action": "transfer", "target": "1003"})
    assert status == 200 and body["message"] == "transferring to 1003"
    result = await caller_done
    assert result.ok, result.explain()
    for phone in (transferee, target):
        done = await phone
        assert callee_ok(done), done.explain()
    [record] = await cdrs(pbx)
    assert (record.from_number, record.to_number, record.disposition) == ("1001", "1002", "answered")
    await drained(pbx)


def agent_sdp(codec: str = "0 PCMU/8000") -> str:
    """An outside media endpoint's answer (an AI voice agent, say) at 127.0.0.1:40000."""
    number, name = codec.split()
    return ("v=0\r\no=agent 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
            f"m=audio 40000 RTP/AVP {number}\r\na=rtpmap:{number} {name}\r\n")


def relay_every_call(pbx: Any) -> None:
    """Relay the media of every call of ``pbx`` (media_proxy always), whatever its route says."""
    relayed = relay_media_factory(reactor, pbx.config.rtp, pbx.config.data_dir)

    def always_relay(request: MediaRequest) -> Any:
        request.media_proxy = "always"
        return relayed(request)

    pbx.calls.manager.media_factory = always_relay


@requires_sipp
@pytest.mark.sipp
@pytest_twisted.ensureDeferred
async def test_accept_answers_a_ringing_call_with_an_outside_sdp(console, tmp_path: Path) -> None:
    pbx = console.service
    relay_every_call(pbx)
    # The phone rings and never answers: it takes pbxd's CANCEL.
    callee_done = await callee(pbx, tmp_path, "1002", "udp", "uas_ring.xml")
    caller_done = defer.Deferred.fromCoroutine(
        caller(pbx, tmp_path, "1001", "1002", "udp", CALLER_WAITS_FOR_BYE))
    [live] = await eventually(lambda: [c for c in pbx.calls.manager.active if c.ringing
                                       and c.ringing[0].state.value == "early"])
    commands = console.base + f"/console/calls/active/{live.id}/commands"
    for payload, expected, words in [
        ({"action": "accept", "sdp": "hello"}, 422, "not a session description"),
        ({"action": "accept", "sdp": ""}, 422, "not a session description"),
        ({"action": "accept", "sdp": agent_sdp("9 G722/8000")}, 409, "no audio codec in common"),
        ({"action": "accept"}, 400, "sdp"),
    ]:
        status, body, _ = await call("POST", commands, payload)
        assert status == expected and words in body["error"], (payload, body)
    assert live.state.value == "ringing"
    status, body, _ = await call("POST", commands, {"action": "accept", "sdp": agent_sdp()})
    assert status == 200 and body["success"] is True, body
    assert live.state.value == "answered" and live.answer_time is not None
    # The relay sends the caller's RTP to the agent's address.
    relay = live.media.relay
    assert ("127.0.0.1", 40000) in [tuple(leg.remote or ()) for leg in (relay.a, relay.b)]
    other = await callee_done  # CANCEL, 487, ACK
    assert callee_ok(other), other.explain()
    status, body, _ = await call("POST", commands, {"action": "accept", "sdp": agent_sdp()})
    assert status == 409 and "only a ringing call" in body["error"]
    ladder = pbx.sip.capture.ladder(live.id) or []
    [ok] = [m.text for m in ladder if m.direction == "out" and m.first_line.startswith("SIP/2.0 200")
            and "INVITE" in m.text.split("CSeq:", 1)[1].split("\r\n", 1)[0]]
    assert "m=audio" in ok and "m=audio 40000" not in ok  # relayed: pbxd's own port
    await eventually(lambda: not live.inbound.awaiting_ack)  # the caller ACKed
    status, _, _ = await call("POST", commands, {"action": "hangup"})
    assert status == 200
    result = await caller_done
    assert result.ok, result.explain()
    [record] = await cdrs(pbx)
    assert record.disposition == "answered" and record.answer_time is not None
    await drained(pbx)


@requires_sipp
@pytest.mark.sipp
@pytest_twisted.ensureDeferred
async def test_media_commands_on_a_relayed_call(console, tmp_path: Path) -> None:
    pbx = console.service
    relay_every_call(pbx)
    callee_done = await callee(pbx, tmp_path, "1002", "udp", "uas_answer.xml", hangup=WAIT_FOR_BYE)
    caller_done = defer.Deferred.fromCoroutine(
        caller(pbx, tmp_path, "1001", "1002", "udp", CALLER_WAITS_FOR_BYE))
    [live] = await eventually(lambda: [c for c in pbx.calls.manager.active if c.state.value == "answered"])
    status, active, _ = await call("GET", console.base + f"/console/calls/active/{live.id}")
    assert active["media"] == "relayed"
    callee_track = active["tracks"][1]["track_id"]
    commands = console.base + f"/console/calls/active/{live.id}/commands"
    response = await treq.get(console.base + "/metrics", headers=bearer(READ_TOKEN))
    metrics = samples((await treq.content(response)).decode())
    assert metrics[("pbxd_relayed_calls", ())] == 1
    assert ("pbxd_relay_packets_total", (("direction", "in"),)) in metrics
    relay_leg = live.media.leg_for(live.b)
    assert (await call("POST", commands, {"action": "mute", "track_id": callee_track}))[0] == 200
    assert relay_leg.muted is True
    assert (await call("POST", commands, {"action": "unmute", "track_id": callee_track}))[0] == 200
    assert relay_leg.muted is False
    # The seed's example names: audio-0 the caller's track, audio-1 the callee's.
    caller_leg = live.media.leg_for(live.inbound)
    assert (await call("POST", commands, {"action": "mute", "track_id": "audio-0"}))[0] == 200
    assert (caller_leg.muted, relay_leg.muted) == (True, False)
    assert (await call("POST", commands, {"action": "unmute", "track_id": "audio-0"}))[0] == 200
    assert (await call("POST", commands, {"action": "mute", "track_id": "audio-1"}))[0] == 200
    assert relay_leg.muted is True
    assert (await call("POST", commands, {"action": "unmute", "track_id": "audio-1"}))[0] == 200
    assert (await call("POST", commands, {"action": "mute", "track_id": "audio-2"}))[0] == 404
    # A file in the recording's place that is no recording of ours: refused, left alone.
    safe_name = re.sub(r"[^A-Za-z0-9._-]", "_", live.media.request.call_id)[:100]
    in_the_way = live.media._recording_dir / f"{safe_name}.wav"
    in_the_way.parent.mkdir(parents=True, exist_ok=True)
    in_the_way.write_bytes(b"not a recording")
    status, body, _ = await call("POST", commands, {"action": "start_recording"})
    assert (status, in_the_way.read_bytes()) == (409, b"not a recording"), body
    in_the_way.unlink()
    for payload, expected in [
        ({"action": "send_dtmf", "digits": "1"}, 409),  # sipp offered no telephone-event
        ({"action": "pause_recording"}, 409),  # not recording yet
        ({"action": "start_recording"}, 200),
        ({"action": "start_recording"}, 409),
        ({"action": "pause_recording"}, 200),
        ({"action": "resume_recording"}, 200),
        ({"action": "stop_recording"}, 200),
        ({"action": "stop_recording"}, 409),
        ({"action": "hangup"}, 200),
    ]:
        status, body, _ = await call("POST", commands, payload)
        assert status == expected, (payload, body)
    result = await caller_done
    assert result.ok, result.explain()
    other = await callee_done
    assert callee_ok(other), other.explain()
    [record] = await cdrs(pbx)
    assert record.recording_path and record.recording_path.endswith(".wav")
    response = await treq.get(console.base + f"/console/call-records/{record.id}/recording",
                              headers=bearer(READ_TOKEN))
    assert response.code == 200 and (await treq.content(response))[:4] == b"RIFF"
    await drained(pbx)
