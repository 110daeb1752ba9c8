"""The registrar with its webhooks, against real Klein servers on loopback: the HTTP
user backend (200 / 403 / 404 / slow / down, and what SIP answer each gives) and the
locator (registered, unregistered, offline after expiry and after failed qualify)."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from klein import Klein
from twisted.internet import defer, reactor
from twisted.web.server import Site

from pbxd.service import PbxService
from pbxd.sip.digest import ha1
from pbxd.sip.message import Request, Response, make_response, parse_message
from tests.sipp_runner import requires_sipp
from tests.test_registrar import (
    AOR,
    DOMAIN,
    SIPP_CONTACT,
    UdpPhone,
    make_pbx,  # noqa: F401 (a fixture: pytest finds it in this module's namespace)
    port_of,
    sipp_register,
    stored_bindings,
)

pytestmark = [requires_sipp, pytest.mark.sipp]


class AuthApi:
    """The operator's user backend (rustpbx-api-integration.md §1.2)."""

    app = Klein()

    def __init__(self) -> None:
        self.asked: list[dict[str, str]] = []

    @app.route("/auth")
    def auth(self, request):  # type: ignore[no-untyped-def]
        fields = {k.decode(): v[0].decode() for k, v in request.args.items()}
        self.asked.append(fields)
        request.setHeader("content-type", "application/json")
        user = fields["u"]
        if user == "slow":
            return defer.Deferred()  # never answers
        if user == "locked":
            request.setResponseCode(403)
            return json.dumps({"reason": "invalid_password", "message": "Account locked"})
        if user in ("2001", "2002"):
            password = "remote-secret" if user == "2001" else ha1(user, DOMAIN, "remote-secret")
            return json.dumps({"id": int(user), "username": user, "password": password})
        request.setResponseCode(404)
        return json.dumps({"reason": "not_found", "message": "no such user"})


class Receiver:
    """The locator webhook's receiver: every event, in order of arrival."""

    app = Klein()

    def __init__(self) -> None:
        self.events: defer.DeferredQueue[dict[str, Any]] = defer.DeferredQueue()

    @app.route("/events", methods=["POST"])
    def events(self, request):  # type: ignore[no-untyped-def]
        self.events.put(json.loads(request.content.read()))
        return b"{}"

    async def next(self, timeout: float = 15) -> dict[str, Any]:
        return await self.events.get().addTimeout(timeout, reactor)


@pytest_twisted.async_yield_fixture
async def serve():
    ports = []

    def listen(app: Any) -> str:
        port = reactor.listenTCP(0, Site(app.app.resource()), interface="127.0.0.1")
        ports.append(port)
        return f"http://127.0.0.1:{port.getHost().port}"

    yield listen
    for port in ports:
        await port.stopListening()


def closed_port() -> int:
    """A loopback port nobody listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]  # type: ignore[no-any-return]


def http_backend(url: str, **options: Any) -> dict[str, Any]:
    return {"type": "http", "url": url, "username_field": "u", "realm_field": "r",
            "timeout": 1, "retries": 0, **options}


# -- the HTTP user backend ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("user", "password", "expect"),
    [
        ("2001", "remote-secret", 200),  # plain password in the answer
        ("2002", "remote-secret", 200),  # HA1 in the answer
        ("2001", "guess", 403),
        ("locked", "whatever", 403),  # the API's 403, after the digest step
        ("nobody", "whatever", 404),  # the API's 404, after the digest step
        ("slow", "whatever", 503),  # timeout: the backend is unavailable
    ],
)
@pytest_twisted.ensureDeferred
async def test_http_backend_answers_become_sip_answers(
    make_pbx, serve, tmp_path: Path, user: str, password: str, expect: int
) -> None:
    api = AuthApi()
    pbx = await make_pbx(auth={"backends": [http_backend(serve(api) + "/auth")]})
    result = await sipp_register(pbx, tmp_path, "udp", user=user, password=password,
                                 expect=expect)
    assert api.asked and api.asked[0]["u"] == user and api.asked[0]["r"] == DOMAIN
    assert api.asked[0]["request_uri"].startswith("sip:127.0.0.1:")
    if expect == 503:
        assert "Retry-After: 30" in result.messages
    rows = stored_bindings(pbx)
    assert [row["aor"] for row in rows] == ([f"sip:{user}@{DOMAIN}"] if expect == 200 else [])
    if expect == 200:
        # Users of the backend are not extensions, but they are here while registered.
        assert pbx.sip.core.users.has_user(user)


@pytest_twisted.ensureDeferred
async def test_a_backend_that_is_down_gives_503(make_pbx, tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{closed_port()}/auth"
    pbx = await make_pbx(auth={"backends": [http_backend(url)]})
    result = await sipp_register(pbx, tmp_path, "udp", user="2001", password="remote-secret",
                                 expect=503)
    assert "Retry-After: 30" in result.messages
    # An unavailable backend is no password guess: no ban follows.
    assert pbx.registrar.authenticator.guard.failures_total == 0


@pytest_twisted.ensureDeferred
async def test_store_and_http_backends_chained(make_pbx, serve, tmp_path: Path) -> None:
    api = AuthApi()
    pbx = await make_pbx(auth={"backends": [{"type": "static"},
                                            http_backend(serve(api) + "/auth", cache_ttl=60)]})
    await sipp_register(pbx, tmp_path, "udp")  # 1001, from the store
    assert api.asked == []
    await sipp_register(pbx, tmp_path, "tcp", user="2001", password="remote-secret")
    await sipp_register(pbx, tmp_path, "udp", user="2001", password="remote-secret")
    assert len(api.asked) == 1  # the second time from the cache
    # 2001 has two bindings: its TCP and its UDP Contact.
    assert sorted(row["aor"] for row in stored_bindings(pbx)) == [AOR] + [f"sip:2001@{DOMAIN}"] * 2


# -- the locator webhook ---------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_locator_hears_registered_unregistered_and_offline(make_pbx, serve,
                                                                 tmp_path: Path) -> None:
    receiver = Receiver()
    pbx = await make_pbx(locator={"url": serve(receiver) + "/events", "headers": {"X-Key": "k"}},
                         registrar={"min_expires": 1})
    await sipp_register(pbx, tmp_path, "tcp", file="register_twice.xml",
                        second_contact=SIPP_CONTACT, keys={"second_expires": 0})
    registered, unregistered = await receiver.next(), await receiver.next()
    assert registered["event"] == "registered" and unregistered["event"] == "unregistered"
    location = registered["location"]
    assert location["aor"] == AOR and location["transport"] == "TCP"
    assert location["destination"].startswith("127.0.0.1:") and location["expires"] in (119, 120)
    assert location["user_agent"] == "" and unregistered["location"]["expires"] == 0

    await sipp_register(pbx, tmp_path, "udp", expires=2)
    assert (await receiver.next())["event"] == "registered"
    offline = await receiver.next(timeout=10)
    assert offline["event"] == "offline" and offline["location"]["aor"] == AOR
    await pbx.store.store.all_bindings()  # the purge ran before this in the store's queue
    assert stored_bindings(pbx) == []


@pytest_twisted.ensureDeferred
async def test_locator_event_filter(make_pbx, serve, tmp_path: Path) -> None:
    receiver = Receiver()
    pbx = await make_pbx(locator={"url": serve(receiver) + "/events", "events": ["unregistered"]})
    await sipp_register(pbx, tmp_path, "udp", file="register_twice.xml",
                        second_contact=SIPP_CONTACT, keys={"second_expires": 0})
    assert (await receiver.next())["event"] == "unregistered"
    assert receiver.events.pending == []


@pytest_twisted.ensureDeferred
async def test_a_locator_that_is_down_does_not_hold_up_registration(make_pbx,
                                                                    tmp_path: Path) -> None:
    pbx = await make_pbx(locator={"url": f"http://127.0.0.1:{closed_port()}/events",
                                  "retries": 0})
    await sipp_register(pbx, tmp_path, "udp")
    assert len(stored_bindings(pbx)) == 1


# -- qualify -------------------------------------------------------------------------------


class AnsweringPhone(UdpPhone):
    """A UDP phone that answers OPTIONS while ``answering`` is set."""

    answering = True
    asked = 0

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        message = parse_message(data)
        if isinstance(message, Request) and message.method == "OPTIONS":
            self.asked += 1
            if self.answering:
                response: Response = make_response(message, 200)
                response.set("To", str(message.to_addr.with_param("tag", "phone")))
                self.transport.write(response.to_bytes(), addr)  # type: ignore[union-attr]
            return
        super().datagramReceived(data, addr)


@pytest_twisted.ensureDeferred
async def test_qualify_marks_a_silent_phone_offline_and_back(make_pbx, serve) -> None:
    receiver = Receiver()
    pbx: PbxService = await make_pbx(
        sip={"timers": {"t1": 0.05, "t2": 0.4}},  # Timer F: 64 x T1 = 3.2 s
        registrar={"qualify_interval": 1},
        locator={"url": serve(receiver) + "/events"},
    )
    phone = AnsweringPhone(port_of(pbx, "udp"))
    port = reactor.listenUDP(0, phone, interface="127.0.0.1")
    try:
        answer, _ = await phone.login()
        assert answer.status == 200
        assert (await receiver.next())["event"] == "registered"
        phone.answering = False
        offline = await receiver.next(timeout=15)
        assert offline["event"] == "offline" and phone.asked >= 1
        assert pbx.registrar.location.lookup(AOR) == []  # kept, but not called
        assert len(pbx.registrar.location.bindings(AOR)) == 1 and len(stored_bindings(pbx)) == 1
        phone.answering = True
        assert (await receiver.next(timeout=15))["event"] == "registered"
        assert len(pbx.registrar.location.lookup(AOR)) == 1
    finally:
        await port.stopListening()
