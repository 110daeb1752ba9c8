"""The HTTP root (pbxd.web.app) and its parts: rate limits, CORS, body limits, errors,
authentication, the http/ami config sections. Real HTTP against the service tree where the
behaviour is the port's; a task.Clock where it is time."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from klein import Klein
from twisted.internet import defer, reactor
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from twisted.web.client import Agent
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IBodyProducer
from zope.interface import implementer

from pbxd.config import ConfigError, parse_config
from pbxd.web.app import Route, WebRoot
from pbxd.web.auth import ANONYMOUS, INVALID, READ, Authenticator, Principal, requires
from pbxd.web.errors import install, write_json
from pbxd.web.limits import CorsPolicy, RateLimiter
from tests.web_support import start_web_pbx


# --- rate limits ------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_rate_limit_answers_429_with_retry_after(tmp_path: Path) -> None:
    pbx = await start_web_pbx(tmp_path, http={"rate_limit": {"per_minute": 3, "per_hour": 100}})
    try:
        codes = [(await pbx.call("GET", "/api/status", token="read")).status for _ in range(3)]
        assert codes == [200, 200, 200]
        refused = await pbx.call("GET", "/api/status", token="read")
        assert refused.status == 429
        assert refused.json == {"error": "too many requests"}
        assert 1 <= int(refused.header("Retry-After")) <= 60
        # Whatever the path or credentials: the limit is the client address's.
        assert (await pbx.call("GET", "/nothing", token=None)).status == 429
    finally:
        await pbx.stop()


def test_rate_limiter_windows_on_a_clock() -> None:
    clock = Clock()
    clock.advance(1000)
    limiter = RateLimiter(clock, per_minute=2, per_hour=3)
    assert [limiter.check("a"), limiter.check("a")] == [None, None]
    assert limiter.check("a") == 60
    assert limiter.check("b") is None  # per client
    clock.pump([10] * 3)
    assert limiter.check("a") == 30
    clock.advance(30)
    assert limiter.check("a") is None  # a new minute, the third of the hour
    assert limiter.check("a") == 3600 - 60
    clock.advance(3600)
    assert limiter.check("a") is None
    assert RateLimiter(clock, 0, 0).check("a") is None


def test_rate_limiter_forgets_idle_clients() -> None:
    clock = Clock()
    limiter = RateLimiter(clock, per_minute=5, per_hour=0)
    for index in range(1000):
        limiter.check(f"10.0.{index // 256}.{index % 256}")
    assert len(limiter) == 1000
    clock.advance(3600)
    for _ in range(30):
        limiter.check("10.9.9.9")
    assert len(limiter) == 1  # the sweep (every 1024 checks) dropped the idle ones


# --- CORS ---------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_cors_preflight_and_headers(tmp_path: Path) -> None:
    pbx = await start_web_pbx(tmp_path, http={"cors_origins": ["https://crm.example.com"]})
    try:
        preflight = await pbx.call("OPTIONS", "/api/extensions", token=None, headers={
            "Origin": "https://crm.example.com", "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type"})
        assert preflight.status == 204
        assert preflight.header("Access-Control-Allow-Origin") == "https://crm.example.com"
        assert preflight.header("Access-Control-Allow-Credentials") == "true"
        assert "POST" in preflight.header("Access-Control-Allow-Methods")
        assert preflight.header("Access-Control-Allow-Headers") == "Authorization, Content-Type"
        assert preflight.header("Vary") == "Origin"
        refused = await pbx.call("OPTIONS", "/api/extensions", token=None, headers={
            "Origin": "https://evil.example", "Access-Control-Request-Method": "POST"})
        assert refused.status == 403
        assert refused.header("Access-Control-Allow-Origin") is None
        simple = await pbx.call("GET", "/api/status", headers={"Origin": "https://crm.example.com"})
        assert simple.header("Access-Control-Allow-Origin") == "https://crm.example.com"
        # A page of another origin is refused whole (CORS would only hide the answer,
        # and does not cover WebSockets at all); pbxd's own origin is not foreign.
        other = await pbx.call("GET", "/api/status", headers={"Origin": "https://evil.example"})
        assert (other.status, other.json) == (403, {"error": "this origin is not allowed (http.cors_origins)"})
        assert other.header("Access-Control-Allow-Origin") is None
        assert (await pbx.call("GET", "/ws", headers={"Origin": "null", "Upgrade": "websocket"})).status == 403
        own = await pbx.call("GET", "/api/status", headers={"Origin": pbx.base})
        assert own.status == 200
        # An OPTIONS that is not a preflight is an ordinary request: no such method.
        assert (await pbx.call("OPTIONS", "/api/status")).status == 405
    finally:
        await pbx.stop()


@pytest_twisted.ensureDeferred
async def test_an_open_api_answers_only_to_addresses_and_localhost(tmp_path: Path) -> None:
    """No tokens on loopback: a Host that is a name (DNS rebinding) is refused."""
    pbx = await start_web_pbx(tmp_path, http={"tokens": []})
    try:
        for host in ("127.0.0.1", f"127.0.0.1:{pbx.port}", "localhost:8080", "[::1]:8080", "app.localhost"):
            reply = await pbx.call("GET", "/api/status", token=None, headers={"Host": host})
            assert reply.status == 200, host
        for host in ("evil.example", "evil.example:8080", "127.0.0.1.nip.io", ""):
            reply = await pbx.call("GET", "/api/status", token=None, headers={"Host": host})
            assert reply.status == 403, host
    finally:
        await pbx.stop()
    # With tokens the name does not matter: the token is what counts.
    pbx = await start_web_pbx(tmp_path / "tokens")
    try:
        assert (await pbx.call("GET", "/api/status", token="read", headers={"Host": "pbx.example"})).status == 200
    finally:
        await pbx.stop()


def test_cors_policy_any_origin_and_none() -> None:
    anyone = CorsPolicy(["*"])
    assert anyone.allowed("https://whoever.example")
    nobody = CorsPolicy([])
    assert not nobody.allowed("https://crm.example.com")
    assert CorsPolicy(["https://CRM.example.com/"]).allowed("https://crm.example.com")


# --- bodies, paths, errors ---------------------------------------------------------------------


@implementer(IBodyProducer)
class ChunkedBody:
    """A body of unknown length: the client sends it chunked."""

    length = UNKNOWN_LENGTH

    def __init__(self, data: bytes) -> None:
        self.data = data

    def startProducing(self, consumer: Any) -> defer.Deferred[None]:
        for start in range(0, len(self.data), 65536):
            consumer.write(self.data[start:start + 65536])
        return defer.succeed(None)

    def stopProducing(self) -> None:
        pass

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass


@pytest_twisted.ensureDeferred
async def test_oversize_bodies_are_413(tmp_path: Path) -> None:
    pbx = await start_web_pbx(tmp_path, http={"max_body_bytes": 4096})
    try:
        big = b'{"number": "1009", "password": "' + b"x" * 5000 + b'"}'
        declared = await pbx.call("POST", "/api/extensions", token="write", body=big,
                                  headers={"Content-Type": "application/json"})
        assert declared.status == 413
        assert declared.json == {"error": "the body is larger than http.max_body_bytes (4096 bytes)"}
        response = await Agent(reactor).request(
            b"POST", f"{pbx.base}/api/extensions".encode(),
            Headers({"Authorization": ["Bearer write-token-0123456789abcdef"],
                     "Content-Type": ["application/json"]}),
            ChunkedBody(b"[" + b"1," * 400000 + b"1]"))
        assert response.code == 413
        # At the limit is fine.
        fits = b'{"number": "1009", "password": "pw"}'
        assert (await pbx.call("POST", "/api/extensions", token="write", body=fits,
                               headers={"Content-Type": "application/json"})).status == 201
    finally:
        await pbx.stop()


@pytest_twisted.ensureDeferred
async def test_a_path_that_is_not_utf8_is_400(tmp_path: Path) -> None:
    pbx = await start_web_pbx(tmp_path)
    try:
        reply = await pbx.call("GET", "/api/registered-phones/extension/%ff%fe")
        assert (reply.status, reply.json) == (400, {"error": "the path is not UTF-8"})
    finally:
        await pbx.stop()


class Exploding:
    app = Klein()
    install(app)

    def __init__(self, web: Any) -> None:
        self.web = web

    @app.route("/boom", methods=["GET"])
    def boom(self, request: Any) -> bytes:
        raise ZeroDivisionError("a bug")

    @app.route("/fine/<int:n>", methods=["GET", "PUT"])
    @requires(READ)
    def fine(self, request: Any, n: int) -> bytes:
        return write_json(request, {"n": n})


@pytest_twisted.ensureDeferred
async def test_an_internal_error_is_500_json_and_logged(tmp_path: Path) -> None:
    pbx = await start_web_pbx(tmp_path)
    pbx.service.http.root.mount("/test", Exploding(pbx.service.http.web))
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        reply = await pbx.call("GET", "/test/boom")
        assert (reply.status, reply.json) == (500, {"error": "internal error"})
        assert b"a bug" not in reply.body
        [logged] = [e for e in events if e.get("log_failure") is not None]
        assert logged["log_failure"].check(ZeroDivisionError)
        assert (await pbx.call("GET", "/test/fine/7", token="read")).json == {"n": 7}
        assert (await pbx.call("GET", "/test/fine/x", token="read")).status == 404
    finally:
        globalLogPublisher.removeObserver(events.append)
        await pbx.stop()


def test_routes_are_listed_in_openapi_form() -> None:
    web = type("Web", (), {})()
    root = WebRoot(web)  # type: ignore[arg-type]
    root.mount("/test", Exploding(web))
    assert list(root.routes()) == [Route("/test/boom", frozenset({"GET"})),
                                   Route("/test/fine/{n}", frozenset({"GET", "PUT"}))]
    with pytest.raises(ValueError):
        root.mount("/test/", Exploding(web))
    assert isinstance(root.tree("/test"), Exploding)


# --- authentication -------------------------------------------------------------------------


class FakeRequest:
    def __init__(self, authorization: bytes | None) -> None:
        self.authorization = authorization

    def getHeader(self, name: bytes) -> bytes | None:
        return self.authorization if name == b"authorization" else None


def test_authenticator() -> None:
    auth = Authenticator([("crm", "c" * 16, ("write",)), ("ops", "o" * 16, ("admin",))])
    assert not auth.open
    assert auth.authenticate(FakeRequest(None)) is None
    assert auth.authenticate(FakeRequest(b"Bearer " + b"c" * 16)) == Principal("crm", frozenset({"write"}))
    assert auth.authenticate(FakeRequest(b"bearer   " + b"o" * 16)).name == "ops"  # type: ignore[union-attr]
    for wrong in (b"Bearer " + b"c" * 15, b"Bearer", b"Basic Y3JtOmM=", b"c" * 16, b"Bearer \xff"):
        assert auth.authenticate(FakeRequest(wrong)) is INVALID, wrong
    assert Authenticator().authenticate(FakeRequest(None)) is ANONYMOUS
    # A scheme (the console's cookie) is asked first.
    auth.add_scheme(lambda request: Principal("alice", {"admin"}, "session") if request.authorization == b"cookie"
                    else None)
    assert auth.authenticate(FakeRequest(b"cookie")).scheme == "session"  # type: ignore[union-attr]
    auth.set_tokens([])
    assert auth.open


def test_scopes_include_the_lower_ones() -> None:
    admin = Principal("a", {"admin"})
    assert admin.allows("read") and admin.allows("write") and admin.allows("admin")
    reader = Principal("r", {"read"})
    assert reader.allows("read") and not reader.allows("write")
    with pytest.raises(ValueError):
        Principal("x", {"root"})
    with pytest.raises(ValueError):
        requires("root")


# --- configuration ------------------------------------------------------------------------------


@pytest.mark.parametrize(("data", "error"), [
    ({"http": {"host": "0.0.0.0"}}, "http.host: 0.0.0.0 is not a loopback address and http.tokens is empty"),
    ({"http": {"host": "::"}}, "http.host: :: is not a loopback address"),
    ({"http": {"tokens": [{"name": "a", "token": "short"}]}}, "http.tokens[0].token: must be at least 16"),
    ({"http": {"tokens": [{"name": "a", "token": "x" * 15 + " "}]}}, "http.tokens[0].token"),
    ({"http": {"tokens": [{"name": "a", "token": "a" * 16, "scopes": ["root"]}]}}, "http.tokens[0].scopes[0]"),
    ({"http": {"tokens": [{"name": "a", "token": "a" * 16, "scopes": []}]}}, "http.tokens[0].scopes: must not be empty"),
    ({"http": {"tokens": [{"name": "a", "token": "a" * 16}, {"name": "a", "token": "b" * 16}]}},
     "http.tokens[1].name: 'a' is already http.tokens[0]"),
    ({"http": {"tokens": [{"name": "a", "token": "a" * 16}, {"name": "b", "token": "a" * 16}]}},
     "http.tokens[1].token: is the same as http.tokens[0].token"),
    ({"http": {"cors_origins": ["crm.example.com"]}}, "http.cors_origins[0]: must be an origin"),
    ({"http": {"cors_origins": ["https://crm.example.com/path"]}}, "http.cors_origins[0]"),
    ({"http": {"rate_limit": {"per_minute": -1}}}, "http.rate_limit.per_minute: must be 0-1000000"),
    ({"http": {"max_body_bytes": 10}}, "http.max_body_bytes: must be 1024-67108864"),
    ({"ami": {"allows": ["localhost"]}}, "ami.allows[0]: must be an IP address or network"),
    ({"ami": {"shutdown_deadline": 0}}, "ami.shutdown_deadline: must be greater than 0"),
])
def test_bad_http_and_ami_settings(data: dict[str, Any], error: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(data)
    assert str(caught.value).startswith(error)


def test_good_http_and_ami_settings() -> None:
    config = parse_config({
        "http": {"host": "0.0.0.0", "tokens": [{"name": "a", "token": "a" * 16, "scopes": ["admin"]}],
                 "cors_origins": ["*", "http://localhost:3000/", "http://[::1]:8080"]},
        "ami": {"allows": ["10.0.0.1", "2001:db8::/32"]},
    })
    assert config.http.cors_origins == ("*", "http://localhost:3000", "http://[::1]:8080")
    assert config.ami.allows == ("10.0.0.1/32", "2001:db8::/32")
    assert parse_config({"http": {"host": "0.0.0.0", "allow_unauthenticated": True}}).http.host == "0.0.0.0"
    assert parse_config({"http": {"host": "::1"}}).http.host == "::1"
    assert "a" * 16 not in repr(config.http.tokens[0])  # secrets stay out of logs


def test_scope_names_agree_with_the_config() -> None:
    from pbxd.config import API_SCOPES
    from pbxd.web.auth import SCOPES

    assert API_SCOPES == SCOPES


@pytest_twisted.ensureDeferred
async def test_an_http_port_in_use_stops_start_up(tmp_path: Path) -> None:
    from pbxd.service import PbxService, StartupError
    from tests.web_support import web_config_data

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    data = web_config_data(tmp_path / "data")
    data["http"]["port"] = taken.getsockname()[1]
    service = PbxService(parse_config(data), reactor)
    try:
        with pytest.raises(StartupError) as caught:
            service.privilegedStartService()  # the SIP sockets are bound, then HTTP fails
        assert "Address already in use" in caught.value.reason
    finally:
        taken.close()
        await service.sip.transports.stop()
