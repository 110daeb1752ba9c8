"""User backends: the HTTP one against a real Klein server on loopback (200, 403, 404,
slow, down, garbage), the store-backed one on a real SQLite file, and chains of them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import pytest_twisted
from klein import Klein
from twisted.internet import defer, reactor, task
from twisted.web.server import Site

from pbxd.hooks.client import WebhookClient
from pbxd.hooks.user_backend import (
    ChainedBackend,
    HttpUserBackend,
    LookupStatus,
    StaticBackend,
    UserRecord,
)
from pbxd.sip.digest import ha1
from pbxd.store import Store

REALM = "pbx.example.com"
MD5_HA1 = ha1("1002", REALM, "hashed-one", "MD5")


class AuthApi:
    """The operator's auth API: what it answers depends on the user asked for."""

    app = Klein()

    def __init__(self) -> None:
        self.requests: list[dict] = []

    @app.route("/auth", methods=["GET", "POST"])
    def auth(self, request):
        fields = {k.decode(): v[0].decode() for k, v in request.args.items()}
        self.requests.append({"method": request.method.decode(), "fields": fields,
                              "api_key": request.getHeader("x-api-key")})
        user = fields.get("u") or fields.get("username")
        request.setHeader("content-type", "application/json")
        answer = ANSWERS.get(user)
        if answer is None:
            request.setResponseCode(404)
            return json.dumps({"reason": "not_found", "message": "no such user"}).encode()
        if answer == "slow":
            return defer.Deferred()  # never answers
        status, body = answer
        request.setResponseCode(status)
        return body if isinstance(body, bytes) else json.dumps(body).encode()


ANSWERS = {
    "1001": (200, {"id": 1001, "username": "1001", "password": "plain-secret",
                   "display_name": "John Doe", "email": "john@pbx.com",
                   "allow_guest_calls": True}),
    "1002": (200, {"username": "1002", "password": MD5_HA1}),
    "1003": (200, {"username": "1003", "ha1_sha256": "ab" * 32}),
    "locked": (403, {"reason": "invalid_password", "message": "Account locked"}),
    "bare403": (403, b"forbidden"),
    "slow": "slow",
    "garbage": (200, b"{not json"),
    "array": (200, [1, 2]),
    "nocreds": (200, {"username": "nocreds"}),
    "badtype": (200, {"password": "x", "display_name": 5}),
    "disabled": (200, {"password": "x", "enabled": False}),
    "broken": (500, b"oops"),
    "teapot": (418, b""),
    "guarded": (200, {"password": "x", "max_calls": 2, "dial_patterns": ["1[0-9]{3}", r"\+44\d+"]}),
    "unguarded": (200, {"password": "x", "max_calls": None, "dial_patterns": None}),
    "negativelimit": (200, {"password": "x", "max_calls": -1}),
    "textlimit": (200, {"password": "x", "max_calls": "2"}),
    "boollimit": (200, {"password": "x", "max_calls": True}),
    "badpattern": (200, {"password": "x", "dial_patterns": ["[0-9"]}),
    "patternstring": (200, {"password": "x", "dial_patterns": "1.*"}),
    "patternnumber": (200, {"password": "x", "dial_patterns": [1001]}),
}


@pytest_twisted.async_yield_fixture
async def api():
    server = AuthApi()
    port = reactor.listenTCP(0, Site(server.app.resource()), interface="127.0.0.1")
    server.url = f"http://127.0.0.1:{port.getHost().port}/auth"
    yield server
    await port.stopListening()


@pytest_twisted.async_yield_fixture
async def client():
    webhook_client = WebhookClient(reactor, backoff=0.01)
    yield webhook_client
    await webhook_client.stop()


def http_backend(client: WebhookClient, url: str, **kwargs) -> HttpUserBackend:
    kwargs.setdefault("username_field", "u")
    kwargs.setdefault("realm_field", "r")
    return HttpUserBackend(client, url, **kwargs)


@pytest_twisted.ensureDeferred
async def test_200_gives_the_user_with_a_plain_password(api, client) -> None:
    backend = http_backend(client, api.url, headers={"X-API-Key": "secret-token"})
    result = await backend.lookup("1001", REALM, "sip:1001@pbx.example.com")
    assert result.status is LookupStatus.FOUND and result.sip_status is None
    user = result.user
    assert (user.username, user.display_name, user.email, user.id) == ("1001", "John Doe",
                                                                      "john@pbx.com", "1001")
    assert user.allow_guest_calls is True
    assert user.ha1_for("MD5") == ha1("1001", REALM, "plain-secret", "MD5")
    assert user.ha1_for("SHA-256") == ha1("1001", REALM, "plain-secret", "SHA-256")
    assert api.requests == [{"method": "GET", "api_key": "secret-token", "fields": {
        "u": "1001", "r": REALM, "request_uri": "sip:1001@pbx.example.com"}}]


@pytest_twisted.ensureDeferred
async def test_an_ha1_answer_only_serves_its_algorithm(api, client) -> None:
    md5_only = (await http_backend(client, api.url).lookup("1002", REALM)).user
    assert md5_only.ha1_for("MD5") == MD5_HA1 and md5_only.ha1_for("SHA-256") is None
    assert md5_only.algorithms == ("MD5",) and md5_only.password is None
    sha_only = (await http_backend(client, api.url).lookup("1003", REALM)).user
    assert sha_only.algorithms == ("SHA-256",) and sha_only.ha1_for("SHA-256") == "ab" * 32


@pytest_twisted.ensureDeferred
async def test_plain_format_takes_a_hex_password_literally(api, client) -> None:
    user = (await http_backend(client, api.url, password_format="plain").lookup("1002",
                                                                                REALM)).user
    assert user.password == MD5_HA1
    assert user.ha1_for("MD5") == ha1("1002", REALM, MD5_HA1, "MD5")


@pytest_twisted.ensureDeferred
async def test_ha1_format_refuses_a_plain_password(api, client) -> None:
    result = await http_backend(client, api.url, password_format="ha1").lookup("1001", REALM)
    assert result.status is LookupStatus.UNAVAILABLE and result.reason == "bad_response"


@pytest_twisted.ensureDeferred
async def test_post_form_sends_the_same_fields(api, client) -> None:
    backend = HttpUserBackend(client, api.url, method="POST")
    assert (await backend.lookup("1001", REALM)).found
    assert api.requests[0]["method"] == "POST"
    assert api.requests[0]["fields"] == {"username": "1001", "realm": REALM}


@pytest_twisted.ensureDeferred
async def test_403_and_404_are_typed_refusals(api, client) -> None:
    backend = http_backend(client, api.url, retries=3)
    locked = await backend.lookup("locked", REALM)
    assert (locked.status, locked.reason, locked.message, locked.sip_status) == (
        LookupStatus.FORBIDDEN, "invalid_password", "Account locked", 403)
    bare = await backend.lookup("bare403", REALM)
    assert (bare.status, bare.reason) == (LookupStatus.FORBIDDEN, "forbidden")
    unknown = await backend.lookup("nobody", REALM)
    assert (unknown.status, unknown.reason, unknown.sip_status) == (LookupStatus.NOT_FOUND,
                                                                    "not_found", 404)
    assert len(api.requests) == 3  # refusals are answers: no retries


@pytest_twisted.ensureDeferred
async def test_disabled_user_is_forbidden(api, client) -> None:
    result = await http_backend(client, api.url).lookup("disabled", REALM)
    assert (result.status, result.reason) == (LookupStatus.FORBIDDEN, "disabled")


@pytest_twisted.ensureDeferred
async def test_the_answer_may_carry_toll_fraud_guards(api, client) -> None:
    guarded = (await http_backend(client, api.url).lookup("guarded", REALM)).user
    assert (guarded.max_calls, guarded.dial_patterns) == (2, ("1[0-9]{3}", r"\+44\d+"))
    assert guarded.may_dial("1234") and guarded.may_dial("+442071234567")
    # The whole number must match: a pattern is not a prefix.
    assert not guarded.may_dial("12345") and not guarded.may_dial("900123")
    # null, like a missing field: no limit, any number.
    unguarded = (await http_backend(client, api.url).lookup("unguarded", REALM)).user
    assert (unguarded.max_calls, unguarded.dial_patterns) == (0, ()) and unguarded.may_dial("900123")


@pytest.mark.parametrize("user", ["garbage", "array", "nocreds", "badtype", "teapot", "negativelimit",
                                  "textlimit", "boollimit", "badpattern", "patternstring", "patternnumber"])
@pytest_twisted.ensureDeferred
async def test_unusable_answers_mean_unavailable(api, client, user: str) -> None:
    result = await http_backend(client, api.url).lookup(user, REALM)
    assert result.status is LookupStatus.UNAVAILABLE and result.sip_status == 503
    assert result.user is None and result.message


@pytest_twisted.ensureDeferred
async def test_a_5xx_is_retried_then_unavailable(api, client) -> None:
    result = await http_backend(client, api.url, retries=2).lookup("broken", REALM)
    assert (result.status, result.reason) == (LookupStatus.UNAVAILABLE, "unreachable")
    assert len(api.requests) == 3


@pytest_twisted.ensureDeferred
async def test_a_slow_backend_times_out_as_unavailable(api, client) -> None:
    backend = http_backend(client, api.url, timeout=0.2, retries=0)
    started = reactor.seconds()
    result = await backend.lookup("slow", REALM)
    assert result.status is LookupStatus.UNAVAILABLE and "no answer" in result.message
    assert reactor.seconds() - started < 5


@pytest_twisted.ensureDeferred
async def test_a_backend_that_is_down_is_unavailable(client) -> None:
    port = reactor.listenTCP(0, Site(AuthApi().app.resource()), interface="127.0.0.1")
    url = f"http://127.0.0.1:{port.getHost().port}/auth"
    await port.stopListening()
    result = await http_backend(client, url, retries=1).lookup("1001", REALM)
    assert result.status is LookupStatus.UNAVAILABLE and result.reason == "unreachable"


@pytest_twisted.ensureDeferred
async def test_answers_are_cached_for_the_ttl_but_failures_are_not(api, client) -> None:
    clock = task.Clock()
    backend = http_backend(client, api.url, cache_ttl=60.0, clock=clock, timeout=0.2,
                           retries=0)
    first = await backend.lookup("1001", REALM)
    assert await backend.lookup("1001", REALM) == first
    assert (await backend.lookup("nobody", REALM)).status is LookupStatus.NOT_FOUND
    assert (await backend.lookup("nobody", REALM)).status is LookupStatus.NOT_FOUND
    assert len(api.requests) == 2
    clock.advance(60.0)
    await backend.lookup("1001", REALM)
    assert len(api.requests) == 3

    await backend.lookup("broken", REALM)
    await backend.lookup("broken", REALM)
    assert len(api.requests) == 5


@pytest_twisted.ensureDeferred
async def test_the_cache_is_bounded(api, client) -> None:
    backend = http_backend(client, api.url, cache_ttl=60.0, max_cache_entries=2,
                           clock=task.Clock())
    for user in ("1001", "1002", "1003", "1001"):
        await backend.lookup(user, REALM)
    assert len(api.requests) == 4  # 1001 was pushed out by 1003


@pytest_twisted.ensureDeferred
async def test_concurrent_lookups_share_one_request(api, client) -> None:
    backend = http_backend(client, api.url)
    results = await defer.gatherResults([backend.lookup("1001", REALM) for _ in range(5)])
    assert len(api.requests) == 1 and all(r.found for r in results)


def test_bad_configuration_is_refused() -> None:
    client = WebhookClient(task.Clock(), treq_client=object())
    with pytest.raises(ValueError):
        HttpUserBackend(client, "http://x/auth", method="PUT")
    with pytest.raises(ValueError):
        HttpUserBackend(client, "http://x/auth", password_format="md5")
    with pytest.raises(ValueError):
        HttpUserBackend(client, "http://x/auth", cache_ttl=-1)
    with pytest.raises(ValueError):
        ChainedBackend([])


# -- the store backend and chains ------------------------------------------------------------


@pytest_twisted.async_yield_fixture
async def store(tmp_path: Path):
    opened = await Store.open(str(tmp_path / "users.sqlite"))
    await opened.seed_extensions([
        {"number": "2001", "password": "pw2001", "name": "Alice", "max_calls": 3, "dial_patterns": ["0[1-9].*"]},
        {"number": "2002", "password": "pw2002", "enabled": False},
        {"number": "locked", "password": "pw"},
    ], REALM)
    yield opened
    await opened.close()


@pytest_twisted.ensureDeferred
async def test_static_backend_reads_the_extensions(store) -> None:
    backend = StaticBackend(store)
    found = await backend.lookup("2001", REALM)
    assert found.found and found.user.display_name == "Alice"
    assert found.user.ha1_for("SHA-256") == ha1("2001", REALM, "pw2001", "SHA-256")
    assert found.user.algorithms == ("MD5", "SHA-256")
    assert (found.user.max_calls, found.user.dial_patterns) == (3, ("0[1-9].*",))
    disabled = await backend.lookup("2002", REALM)
    assert (disabled.status, disabled.reason) == (LookupStatus.FORBIDDEN, "disabled")
    assert (await backend.lookup("9999", REALM)).status is LookupStatus.NOT_FOUND
    other = await backend.lookup("2001", "other.example.com")
    assert (other.status, other.reason) == (LookupStatus.NOT_FOUND, "other_realm")


@pytest_twisted.ensureDeferred
async def test_static_backend_on_a_closed_store_is_unavailable(tmp_path: Path) -> None:
    closed = await Store.open(str(tmp_path / "closed.sqlite"))
    await closed.close()
    result = await StaticBackend(closed).lookup("2001", REALM)
    assert result.status is LookupStatus.UNAVAILABLE


@pytest_twisted.ensureDeferred
async def test_the_first_backend_that_knows_the_user_wins(api, client, store) -> None:
    chain = ChainedBackend([http_backend(client, api.url), StaticBackend(store)])
    from_http = await chain.lookup("1001", REALM)
    assert from_http.found and from_http.backend == "http"
    from_store = await chain.lookup("2001", REALM)
    assert from_store.found and from_store.backend == "static"
    # The API knows "locked" and refuses it: the store's own "locked" is not asked.
    assert (await chain.lookup("locked", REALM)).status is LookupStatus.FORBIDDEN
    assert (await chain.lookup("nobody", REALM)).status is LookupStatus.NOT_FOUND


@pytest_twisted.ensureDeferred
async def test_a_chain_with_a_down_backend_is_unavailable_not_unknown(client, store) -> None:
    port = reactor.listenTCP(0, Site(AuthApi().app.resource()), interface="127.0.0.1")
    url = f"http://127.0.0.1:{port.getHost().port}/auth"
    await port.stopListening()
    chain = ChainedBackend([http_backend(client, url, retries=0), StaticBackend(store)])
    assert (await chain.lookup("2001", REALM)).found  # the store still answers for its users
    assert (await chain.lookup("nobody", REALM)).status is LookupStatus.UNAVAILABLE


def test_user_record_without_credentials_answers_nothing() -> None:
    record = UserRecord(username="u", realm=REALM)
    assert record.algorithms == () and record.ha1_for("MD5") is None
    assert "secret" not in repr(UserRecord(username="u", realm=REALM, password="secret"))
