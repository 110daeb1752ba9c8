"""Digest authentication: hash math, header parsing, nonces and verification."""

from __future__ import annotations

import base64
import hashlib
from typing import Any

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock

from pbxd.sip.digest import (
    AuthOutcome,
    AuthResult,
    Challenge,
    Credentials,
    DigestAuthenticator,
    NonceManager,
    answer_challenge,
    choose_challenge,
    digest_response,
    find_credentials,
    ha1,
    parse_challenge,
    parse_credentials,
    same_uri,
    stored_ha1s,
)
from pbxd.sip.errors import SipParseError
from pbxd.sip.message import Request, parse_message

SECRET = b"0123456789abcdef0123456789abcdef"
REALM = "pbx.example.com"
URI = "sip:pbx.example.com"


def make_request(
    method: str = "REGISTER", uri: str = URI, body: bytes = b"", auth: str | None = None
) -> Request:
    lines = [
        f"{method} {uri} SIP/2.0",
        "Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK-1",
        "From: <sip:100@pbx.example.com>;tag=a1",
        "To: <sip:100@pbx.example.com>",
        "Call-ID: c1@192.0.2.10",
        f"CSeq: 2 {method}",
        "Max-Forwards: 70",
    ]
    if auth is not None:
        lines.append(f"Authorization: {auth}")
    lines.append(f"Content-Length: {len(body)}")
    request = parse_message(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
    assert isinstance(request, Request)
    return request


# -- hash math: published examples --------------------------------------------


def test_rfc2617_example() -> None:
    # RFC 2617 §3.5: Mufasa / "Circle Of Life", qop=auth.
    stored = ha1("Mufasa", "testrealm@host.com", "Circle Of Life", "MD5")
    response = digest_response(
        stored, "dcd98b7102dd2f0e8b11d0f600bfb0c093", "GET", "/dir/index.html", "MD5",
        qop="auth", nc="00000001", cnonce="0a4f113b",
    )
    assert response == "6629fae49393a05397450978507c4ef1"


@pytest.mark.parametrize(
    "algorithm, expected",
    [
        ("MD5", "8ca523f5e9506fed4657c9700eebdbec"),
        ("SHA-256", "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"),
    ],
)
def test_rfc7616_examples(algorithm: str, expected: str) -> None:
    # RFC 7616 §3.9.1.
    stored = ha1("Mufasa", "http-auth@example.org", "Circle of Life", algorithm)
    response = digest_response(
        stored,
        "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v",
        "GET",
        "/dir/index.html",
        algorithm,
        qop="auth",
        nc="00000001",
        cnonce="f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ",
    )
    assert response == expected


def test_rfc7616_credentials_header_parses_to_the_published_values() -> None:
    value = (
        'Digest username="Mufasa", realm="http-auth@example.org", uri="/dir/index.html", '
        'algorithm=SHA-256, nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v", nc=00000001, '
        'cnonce="f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ", qop=auth, '
        'response="753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1", '
        'opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"'
    )
    credentials = parse_credentials(value)
    assert credentials == Credentials(
        username="Mufasa",
        realm="http-auth@example.org",
        nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v",
        uri="/dir/index.html",
        response="753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1",
        algorithm="SHA-256",
        cnonce="f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ",
        opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS",
        qop="auth",
        nc="00000001",
    )
    assert credentials.nc_value == 1
    assert parse_credentials(credentials.to_header()) == credentials


def test_sess_algorithms_hash_the_stored_ha1_with_nonce_and_cnonce() -> None:
    stored = ha1("alice", REALM, "pw", "SHA-256")
    session = hashlib.sha256(f"{stored}:n1:c1".encode()).hexdigest()
    ha2 = hashlib.sha256(b"INVITE:sip:bob@x").hexdigest()
    expected = hashlib.sha256(f"{session}:n1:00000002:c1:auth:{ha2}".encode()).hexdigest()
    response = digest_response(stored, "n1", "INVITE", "sip:bob@x", "SHA-256-sess", "auth", "00000002", "c1")
    assert response == expected
    assert ha1("alice", REALM, "pw", "SHA-256-sess") == stored


def test_auth_int_hashes_the_body_and_rfc2069_form_without_qop() -> None:
    stored = ha1("alice", REALM, "pw")
    md5 = lambda text: hashlib.md5(text.encode()).hexdigest()  # noqa: E731
    ha2 = md5(f"INVITE:sip:bob@x:{hashlib.md5(b'v=0').hexdigest()}")
    response = digest_response(stored, "n", "INVITE", "sip:bob@x", "MD5", "auth-int", "00000001", "c", b"v=0")
    assert response == md5(f"{stored}:n:00000001:c:auth-int:{ha2}")
    rfc2069 = md5(f"{stored}:n:{md5('INVITE:sip:bob@x')}")
    assert digest_response(stored, "n", "INVITE", "sip:bob@x") == rfc2069


def test_sha512_256_and_stored_ha1s() -> None:
    expected = hashlib.new("sha512_256", b"alice:r:pw").hexdigest()
    assert ha1("alice", "r", "pw", "sha-512-256") == expected
    assert stored_ha1s("alice", "r", "pw") == {
        "MD5": hashlib.md5(b"alice:r:pw").hexdigest(),
        "SHA-256": hashlib.sha256(b"alice:r:pw").hexdigest(),
    }
    assert set(stored_ha1s("a", "r", "pw", ("MD5", "SHA-512-256-sess"))) == {"MD5", "SHA-512-256"}


def test_hash_math_refuses_what_it_cannot_compute() -> None:
    with pytest.raises(ValueError):
        ha1("a", "r", "p", "SHA-1")
    with pytest.raises(ValueError):
        digest_response("x", "n", "GET", "/", "MD5-sess")  # sess needs a cnonce
    with pytest.raises(ValueError):
        digest_response("x", "n", "GET", "/", "MD5", qop="auth")  # qop needs nc and cnonce
    with pytest.raises(ValueError):
        digest_response("x", "n", "GET", "/", "MD5", qop="bogus", nc="00000001", cnonce="c")


# -- header parsing ------------------------------------------------------------


def test_parse_credentials_is_lenient_where_phones_are_sloppy() -> None:
    credentials = parse_credentials(
        'digest  USERNAME="100" ,realm="pbx",nonce=abc, uri=sip:pbx, response="ABCDEF01",'
        ' qop="auth", nc=0000000A, cnonce="x\\"y", algorithm=md5,,'
    )
    assert credentials.username == "100"
    assert credentials.nonce == "abc"
    assert credentials.uri == "sip:pbx"
    assert credentials.response == "abcdef01"
    assert credentials.qop == "auth"
    assert credentials.nc == "0000000A" and credentials.nc_value == 10
    assert credentials.cnonce == 'x"y'
    assert credentials.algorithm == "md5"


REST = 'realm="r", nonce="n", uri="/", response="00"'


def test_parse_credentials_username_star() -> None:
    value = "Digest username*=UTF-8''J%C3%A4s%C3%B8n%20Doe, " + REST
    assert parse_credentials(value).username == "Jäsøn Doe"


@pytest.mark.parametrize(
    "value",
    [
        "",
        "Digest",
        "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==",
        'Digest realm="r", nonce="n", uri="/", response="00"',  # no username
        'Digest username="a", realm="r", nonce="n", uri="/"',  # no response
        'Digest username="a", realm="r", nonce="n", uri="/", response="xyz"',  # not hex
        'Digest username="a" realm="r", nonce="n", uri="/", response="00"',  # no comma
        'Digest username="a", realm="r, nonce="n", uri="/", response="00"',  # unterminated quote
        'Digest username="a", username="b", realm="r", nonce="n", uri="/", response="00"',
        'Digest username="a", realm="r", nonce="n", uri="/", response="00", qop=auth, nc=00000001',
        f'Digest username="a", {REST}, qop=auth, nc=1, cnonce="c"',
        'Digest username="a", realm="r", nonce="n", uri="/", response="00", userhash=maybe',
        'Digest username="a", realm="r", nonce=, uri="/", response="00"',
        'Digest username, realm="r", nonce="n", uri="/", response="00"',
        'Digest username="a", realm="r", nonce="n", uri="/", response="00", "x"',
        "Digest username*=latin-1''x, realm=\"r\", nonce=\"n\", uri=\"/\", response=\"00\"",
        "Digest username*=UTF-8''%FF, realm=\"r\", nonce=\"n\", uri=\"/\", response=\"00\"",
        "Digest username*=UTF-8''a, username=\"a\", " + REST,
        "Digest, username=\"a\"",
        'Digest username="a\\',
    ],
)
def test_parse_credentials_rejects_malformed(value: str) -> None:
    with pytest.raises(SipParseError):
        parse_credentials(value)


@given(st.one_of(st.text(), st.text(alphabet='Digest usernamrlcqop*=",\\ \t\'%0aF8-')))
@settings(max_examples=600)
def test_parse_never_raises_anything_but_sip_parse_error(text: str) -> None:
    for parse in (parse_credentials, parse_challenge):
        try:
            parse(text)
        except SipParseError:
            pass
        try:
            parse("Digest " + text)
        except SipParseError:
            pass


# Printable text: what a quoted-string can carry on one header line.
_printable = st.characters(min_codepoint=0x20, blacklist_categories=("Cs",), blacklist_characters="\x7f")
_param_text = st.text(alphabet=_printable, max_size=20)


@given(
    st.fixed_dictionaries({name: _param_text for name in ("username", "realm", "nonce", "uri", "cnonce")})
)
@settings(max_examples=200)
def test_credentials_format_and_parse_round_trip(fields: dict[str, str]) -> None:
    credentials = Credentials(response="0123abcd", qop="auth", nc="00000001", algorithm="MD5", **fields)
    assert parse_credentials(credentials.to_header()) == credentials


def test_formatting_refuses_header_injection() -> None:
    with pytest.raises(ValueError):
        Credentials("a\r\nVia: evil", "r", "n", "/", "00").to_header()
    with pytest.raises(ValueError):
        DigestAuthenticator(NonceManager(SECRET, Clock()), "bad\nrealm")


def test_challenge_format_and_parse() -> None:
    challenge = Challenge(REALM, "abc", "SHA-256", "op", ("auth",), stale=True)
    text = challenge.to_header()
    assert text == (
        f'Digest realm="{REALM}", nonce="abc", opaque="op", algorithm=SHA-256, qop="auth", stale=true'
    )
    assert parse_challenge(text) == challenge
    minimal = parse_challenge('Digest realm="r", nonce="n"')
    assert minimal == Challenge("r", "n", "MD5", None, (), False)
    future = parse_challenge('Digest realm="r", nonce="n", qop="auth, auth-int", algorithm=x-new')
    assert future.qop == ("auth", "auth-int") and future.algorithm == "x-new"
    for bad in ('Digest nonce="n"', 'Basic realm="r"', 'Digest realm="r", nonce="n", realm="s"'):
        with pytest.raises(SipParseError):
            parse_challenge(bad)


def test_find_credentials_picks_the_realm_and_skips_other_schemes() -> None:
    request = make_request()
    request.add("Authorization", 'Bearer abc.def')
    request.add("Authorization", 'Digest username="a", realm="other", nonce="n", uri="/", response="0"')
    request.add("Authorization", f'Digest username="b", realm="{REALM}", nonce="n", uri="/", response="0"')
    found = find_credentials(request, REALM)
    assert found is not None and found.username == "b"
    assert find_credentials(request, "nowhere") is None
    assert find_credentials(request, REALM, proxy=True) is None
    broken = make_request(auth='Digest username="a", realm=')
    with pytest.raises(SipParseError):
        find_credentials(broken, REALM)


def test_same_uri() -> None:
    assert same_uri("sip:pbx.example.com", "SIP:PBX.example.com")
    assert same_uri("sip:100@pbx;transport=udp", "sip:100@pbx;transport=UDP")
    assert not same_uri("sip:100@pbx", "sip:101@pbx")
    assert not same_uri("sip:pbx;transport=tcp", "sip:pbx")
    assert not same_uri("sip:pbx", "sips:pbx")
    assert same_uri("tel:+1555", "TEL:+1555")
    assert not same_uri("not a uri", "not a uri")


# -- nonces --------------------------------------------------------------------


def test_nonces_are_bound_to_realm_and_secret_and_expire() -> None:
    clock = Clock()
    clock.advance(1000)
    nonces = NonceManager(SECRET, clock, lifetime=300)
    nonce = nonces.issue(REALM)
    assert nonces.check(nonce, REALM) == "valid"
    assert nonces.check(nonce, "other.example.com") == "invalid"
    assert NonceManager(b"another secret, 32 bytes long..", clock).check(nonce, REALM) == "invalid"
    raw = bytearray(base64.urlsafe_b64decode(nonce + "=" * (-len(nonce) % 4)))
    raw[0] ^= 1  # move the timestamp: the MAC no longer matches
    assert nonces.check(base64.urlsafe_b64encode(bytes(raw)).decode(), REALM) == "invalid"
    for junk in ("", "!!!", "a" * 5000, "abcd", nonce[:-4], nonce + "!", nonce[:9] + "." + nonce[9:]):
        assert nonces.check(junk, REALM) == "invalid"
    clock.pump([100, 100, 100])
    assert nonces.check(nonce, REALM) == "valid"  # exactly the lifetime
    clock.advance(0.001)
    assert nonces.check(nonce, REALM) == "stale"
    assert nonces.issue(REALM) != nonces.issue(REALM)


def test_nonce_manager_refuses_weak_settings() -> None:
    with pytest.raises(ValueError):
        NonceManager(b"short", Clock())
    with pytest.raises(ValueError):
        NonceManager(SECRET, Clock(), lifetime=0)


def test_nonce_count_must_strictly_increase() -> None:
    nonces = NonceManager(SECRET, Clock())
    nonce = nonces.issue(REALM)
    assert nonces.accept_count(nonce, 1)
    assert not nonces.accept_count(nonce, 1)
    assert nonces.accept_count(nonce, 3)
    assert not nonces.accept_count(nonce, 2)
    other = nonces.issue(REALM)
    assert nonces.accept_count(other, 1)


def test_nonce_table_forgets_stale_nonces_under_a_flood() -> None:
    clock = Clock()
    nonces = NonceManager(SECRET, clock, lifetime=30, max_tracked=1_000_000)
    peak = 0
    for _ in range(60):  # 60 s of 100 new nonces per second
        for _ in range(100):
            assert nonces.accept_count(nonces.issue(REALM), 1)
        peak = max(peak, nonces.tracked)
        clock.advance(1)
    assert peak <= 100 * 31
    clock.pump([10] * 4)
    nonces.accept_count(nonces.issue(REALM), 1)
    assert nonces.tracked == 1


def test_nonce_table_cap_makes_forgotten_nonces_stale_not_replayable() -> None:
    clock = Clock()
    nonces = NonceManager(SECRET, clock, lifetime=300, max_tracked=100)
    issued = []
    for _ in range(5000):
        nonce = nonces.issue(REALM)
        issued.append(nonce)
        assert nonces.accept_count(nonce, 1)
        assert nonces.tracked <= 100
        clock.advance(0.01)
    # The first nonces were forgotten: they must not be usable again.
    assert nonces.check(issued[0], REALM) == "stale"
    assert nonces.check(issued[-1], REALM) == "valid"
    assert not nonces.accept_count(issued[-1], 1)
    fresh = nonces.issue(REALM)
    assert nonces.check(fresh, REALM) == "valid"


def test_issuing_nonces_keeps_no_state() -> None:
    nonces = NonceManager(SECRET, Clock())
    for _ in range(10_000):
        nonces.issue(REALM)
    assert nonces.tracked == 0


# -- the authenticator ----------------------------------------------------------


class Users:
    """An ha1_lookup over stored HA1s that records what it was asked."""

    def __init__(self, **passwords: str) -> None:
        algorithms = ("MD5", "SHA-256", "SHA-512-256")
        self.ha1s = {u: stored_ha1s(u, REALM, pw, algorithms) for u, pw in passwords.items()}
        self.lookups: list[tuple[str, str, str]] = []

    def __call__(self, username: str, realm: str, algorithm: str) -> str | None:
        self.lookups.append((username, realm, algorithm))
        return self.ha1s.get(username, {}).get(algorithm) if realm == REALM else None


USERS = {"100": "secret"}


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def auth(clock: Clock) -> DigestAuthenticator:
    return DigestAuthenticator(NonceManager(SECRET, clock, lifetime=60), REALM)


def answer(challenge: str | Challenge, password: str = "secret", **kwargs: Any) -> str:
    """What phone 100 sends back for a REGISTER to pbx.example.com."""
    return answer_challenge(challenge, "REGISTER", URI, "100", password, **kwargs)


def verify(auth: DigestAuthenticator, value: str, request: Request | None = None) -> AuthOutcome:
    return auth.verify(request or make_request(), parse_credentials(value), Users(**USERS)).outcome


def login(
    auth: DigestAuthenticator,
    users: Users,
    password: str = "secret",
    user: str = "100",
    nc: int = 1,
    index: int = 0,
    uri: str = URI,
    challenge: str | None = None,
    request_uri: str | None = None,
) -> tuple[AuthResult, str]:
    """Challenge (or reuse ``challenge``), answer, and verify the answer as a REGISTER."""
    challenge = challenge or auth.challenge()[index]
    value = answer_challenge(challenge, "REGISTER", uri, user, password, nc=nc, cnonce="c0ffee")
    request = make_request("REGISTER", request_uri or uri, auth=value)
    credentials = find_credentials(request, REALM)
    assert credentials is not None
    return auth.verify(request, credentials, users), challenge


def test_challenge_offers_md5_first_then_sha256_with_one_nonce(auth: DigestAuthenticator) -> None:
    parsed = [parse_challenge(v) for v in auth.challenge()]
    assert [c.algorithm for c in parsed] == ["MD5", "SHA-256"]
    assert parsed[0].nonce == parsed[1].nonce
    for c in parsed:
        assert (c.realm, c.qop, c.opaque, c.stale) == (REALM, ("auth",), auth.opaque, False)
    assert all(parse_challenge(v).stale for v in auth.challenge(stale=True))


@pytest.mark.parametrize("index, algorithm", [(0, "MD5"), (1, "SHA-256")])
def test_right_password_is_accepted(auth: DigestAuthenticator, index: int, algorithm: str) -> None:
    users = Users(**USERS)
    result, _ = login(auth, users, index=index)
    assert result.ok and result.outcome is AuthOutcome.OK
    assert result.username == "100" and result.algorithm == algorithm
    assert users.lookups == [("100", REALM, algorithm)]


def test_wrong_password_and_unknown_user(auth: DigestAuthenticator) -> None:
    users = Users(**USERS)
    result, _ = login(auth, users, password="guess")
    assert result.outcome is AuthOutcome.WRONG_PASSWORD
    assert result.outcome.is_failure and not result.ok
    result, _ = login(auth, users, user="999")
    assert result.outcome is AuthOutcome.UNKNOWN_USER and result.outcome.is_failure


def test_nonce_reuse_with_increasing_nc_and_replay(auth: DigestAuthenticator) -> None:
    users = Users(**USERS)
    result, challenge = login(auth, users, nc=1)
    assert result.ok
    replay, _ = login(auth, users, nc=1, challenge=challenge)
    assert replay.outcome is AuthOutcome.REPLAYED_NC and not replay.outcome.is_failure
    again, _ = login(auth, users, nc=2, challenge=challenge)
    assert again.ok


def test_wrong_password_does_not_use_up_the_nonce_count(auth: DigestAuthenticator) -> None:
    users = Users(**USERS)
    result, challenge = login(auth, users, password="guess", nc=5)
    assert result.outcome is AuthOutcome.WRONG_PASSWORD
    assert login(auth, users, nc=5, challenge=challenge)[0].ok


def test_stale_nonce_only_with_the_right_password(auth: DigestAuthenticator, clock: Clock) -> None:
    users = Users(**USERS)
    challenge = auth.challenge()[0]
    clock.pump([30, 30, 1])
    assert login(auth, users, challenge=challenge)[0].outcome is AuthOutcome.STALE_NONCE
    wrong = login(auth, users, password="guess", challenge=challenge)[0]
    assert wrong.outcome is AuthOutcome.WRONG_PASSWORD


def test_forged_nonce_and_opaque_are_invalid(auth: DigestAuthenticator) -> None:
    forged = Challenge(REALM, "bm90IG91cnM", "MD5", auth.opaque)
    assert verify(auth, answer(forged)) is AuthOutcome.INVALID_NONCE
    nonce = parse_challenge(auth.challenge()[0]).nonce
    for opaque in ("something-else", None):
        value = answer(Challenge(REALM, nonce, "MD5", opaque))
        assert verify(auth, value) is AuthOutcome.INVALID_NONCE


def test_nonce_of_another_realm_is_invalid(clock: Clock) -> None:
    nonces = NonceManager(SECRET, clock)
    ours = DigestAuthenticator(nonces, REALM)
    theirs = DigestAuthenticator(nonces, "other.example.com")
    nonce = parse_challenge(theirs.challenge()[0]).nonce
    assert verify(ours, answer(Challenge(REALM, nonce, "MD5", ours.opaque))) is AuthOutcome.INVALID_NONCE


def test_wrong_realm(auth: DigestAuthenticator) -> None:
    nonce = parse_challenge(auth.challenge()[0]).nonce
    value = answer(Challenge("elsewhere", nonce, "MD5", auth.opaque))
    assert verify(auth, value) is AuthOutcome.WRONG_REALM


def test_digest_uri_must_match_the_request_uri(auth: DigestAuthenticator) -> None:
    users = Users(**USERS)
    result, _ = login(auth, users, uri=URI, request_uri="sip:evil.example.com")
    assert result.outcome is AuthOutcome.URI_MISMATCH
    # Equivalent per RFC 3261 §19.1.4 (host case) is a match.
    assert login(auth, users, uri="sip:PBX.example.com", request_uri=URI)[0].ok


def test_unsupported_or_unoffered_algorithm(clock: Clock) -> None:
    auth = DigestAuthenticator(NonceManager(SECRET, clock), REALM, algorithms=("SHA-256",))
    nonce = parse_challenge(auth.challenge()[0]).nonce
    for algorithm in ("MD5", "SHA-512-256"):
        value = answer(Challenge(REALM, nonce, algorithm, auth.opaque))
        result = auth.verify(make_request(), parse_credentials(value), Users(**USERS))
        assert result.outcome is AuthOutcome.UNSUPPORTED_ALGORITHM and result.algorithm is None
    value = answer(Challenge(REALM, nonce, "SHA-256", auth.opaque))
    sha1 = value.replace("algorithm=SHA-256", "algorithm=SHA-1")
    assert verify(auth, sha1) is AuthOutcome.UNSUPPORTED_ALGORITHM


@pytest.mark.parametrize("algorithm", ["MD5-sess", "SHA-256-sess", "SHA-512-256", "SHA-512-256-sess"])
def test_other_algorithms_when_configured(clock: Clock, algorithm: str) -> None:
    auth = DigestAuthenticator(NonceManager(SECRET, clock), REALM, algorithms=(algorithm,))
    assert login(auth, Users(**USERS))[0].ok


def test_auth_int_when_offered(clock: Clock) -> None:
    auth = DigestAuthenticator(NonceManager(SECRET, clock), REALM, qop=("auth-int",))
    challenge = auth.challenge()[0]
    assert parse_challenge(challenge).qop == ("auth-int",)
    uri = "sip:100@pbx.example.com"
    value = answer_challenge(challenge, "MESSAGE", uri, "100", "secret", body=b"hello")
    assert "qop=auth-int" in value
    assert verify(auth, value, make_request("MESSAGE", uri, body=b"hello", auth=value)) is AuthOutcome.OK
    tampered = make_request("MESSAGE", uri, body=b"HELLO", auth=value)
    assert verify(auth, value, tampered) is AuthOutcome.WRONG_PASSWORD


def test_qop_rules(auth: DigestAuthenticator) -> None:
    nonce = parse_challenge(auth.challenge()[0]).nonce
    legacy = answer(Challenge(REALM, nonce, "MD5", auth.opaque, qop=()))
    assert "qop" not in legacy and "nc=" not in legacy and "cnonce" not in legacy
    result = auth.verify(make_request(), parse_credentials(legacy), Users(**USERS))
    assert result.outcome is AuthOutcome.BAD_REQUEST and "qop" in result.reason
    lenient = DigestAuthenticator(auth.nonces, REALM, require_qop=False)
    assert verify(lenient, legacy) is AuthOutcome.OK
    not_offered = answer(Challenge(REALM, nonce, "MD5", auth.opaque, qop=("auth-int",)))
    assert verify(auth, not_offered) is AuthOutcome.BAD_REQUEST


def test_qop_is_matched_without_case_and_hashed_as_written(auth: DigestAuthenticator) -> None:
    nonce = parse_challenge(auth.challenge()[0]).nonce
    stored = stored_ha1s("100", REALM, "secret")["MD5"]
    response = digest_response(stored, nonce, "REGISTER", URI, "MD5", "AUTH", "00000001", "c")
    value = (
        f'Digest username="100", realm="{REALM}", nonce="{nonce}", uri="{URI}", response="{response}", '
        f'algorithm=MD5, cnonce="c", opaque="{auth.opaque}", qop=AUTH, nc=00000001'
    )
    assert verify(auth, value) is AuthOutcome.OK


def test_sess_algorithms_need_a_cnonce(auth: DigestAuthenticator) -> None:
    sess = DigestAuthenticator(auth.nonces, REALM, algorithms=("MD5-sess",), require_qop=False)
    nonce = parse_challenge(sess.challenge()[0]).nonce
    value = answer(Challenge(REALM, nonce, "MD5-sess", sess.opaque, qop=()))
    credentials = parse_credentials(value)
    assert credentials.cnonce is not None and credentials.qop is None
    assert sess.verify(make_request(), credentials, Users(**USERS)).ok
    without_cnonce = attrs.evolve(credentials, cnonce=None)
    result = sess.verify(make_request(), without_cnonce, Users(**USERS))
    assert result.outcome is AuthOutcome.BAD_REQUEST


def test_userhash_is_refused(auth: DigestAuthenticator) -> None:
    value = answer(auth.challenge()[0]) + ", userhash=true"
    assert verify(auth, value) is AuthOutcome.BAD_REQUEST


@pytest.mark.parametrize(
    "kwargs",
    [
        {"algorithms": ()},
        {"algorithms": ("MD5", "MD5")},
        {"algorithms": ("SHA-1",)},
        {"qop": ()},
        {"qop": ("auth-conf",)},
    ],
)
def test_authenticator_refuses_bad_configuration(clock: Clock, kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        DigestAuthenticator(NonceManager(SECRET, clock), REALM, **kwargs)


_names = st.text(alphabet=_printable, min_size=1, max_size=16)
_methods = ["REGISTER", "INVITE", "SUBSCRIBE", "MESSAGE", "OPTIONS", "PUBLISH", "REFER"]
_uris = [URI, "sip:100@pbx.example.com;transport=tcp", "sips:[2001:db8::1]:5061", "tel:+15551234"]


@given(
    user=_names,
    password=st.text(max_size=24),
    method=st.sampled_from(_methods),
    uri=st.sampled_from(_uris),
    index=st.sampled_from([0, 1]),
    nc=st.integers(min_value=1, max_value=2**32 - 1),
)
@settings(max_examples=150, deadline=None)
def test_challenge_answer_verify_round_trip(
    user: str, password: str, method: str, uri: str, index: int, nc: int
) -> None:
    auth = DigestAuthenticator(NonceManager(SECRET, Clock()), REALM)
    stored = stored_ha1s(user, REALM, password)
    lookup = lambda u, r, a: stored[a] if (u, r) == (user, REALM) else None  # noqa: E731
    value = answer_challenge(auth.challenge()[index], method, uri, user, password, nc=nc)
    request = make_request(method, uri, auth=value)
    credentials = find_credentials(request, REALM)
    assert credentials is not None and credentials.username == user
    result = auth.verify(request, credentials, lookup)
    assert result.ok, result
    assert auth.verify(request, credentials, lookup).outcome is AuthOutcome.REPLAYED_NC
    wrong = answer_challenge(auth.challenge()[index], method, uri, user, password + "x", nc=nc)
    assert auth.verify(request, parse_credentials(wrong), lookup).outcome is AuthOutcome.WRONG_PASSWORD


@given(
    uri=st.one_of(st.text(max_size=40), st.sampled_from(_uris)),
    nonce=st.one_of(st.none(), st.text(max_size=80)),  # None: a nonce pbxd issued
    nc=st.one_of(st.none(), st.from_regex(r"[0-9a-fA-F]{8}", fullmatch=True)),
    algorithm=st.one_of(st.none(), st.sampled_from(["MD5", "sha-256", "MD5-sess", "x", "SHA-512-256"])),
    qop=st.sampled_from([None, "auth", "auth-int", "AUTH", "junk"]),
    opaque=st.one_of(st.none(), st.text(max_size=10)),
)
@settings(max_examples=300, deadline=None)
def test_verify_never_raises_for_odd_credentials(
    uri: str, nonce: str | None, nc: str | None, algorithm: str | None, qop: str | None, opaque: str | None
) -> None:
    auth = DigestAuthenticator(NonceManager(SECRET, Clock()), REALM, algorithms=("MD5", "SHA-256", "MD5-sess"))
    nonce = nonce if nonce is not None else parse_challenge(auth.challenge()[0]).nonce
    credentials = Credentials(
        "100", REALM, nonce, uri, "00", algorithm, "c" if qop else None, opaque, qop, nc if qop else None
    )
    result = auth.verify(make_request(), credentials, Users(**USERS))
    assert result.outcome is not AuthOutcome.OK


# -- client side -------------------------------------------------------------------


def test_choose_challenge_prefers_the_strongest_supported() -> None:
    values = [
        'Basic realm="r"',
        'Digest realm="r", nonce="n1", algorithm=MD5, qop="auth"',
        "Digest realm=broken, nonce=",
        'Digest realm="r", nonce="n2", algorithm=SHA-256, qop="auth"',
        'Digest realm="r", nonce="n3", algorithm=SHA-256-sess, qop="auth"',
        'Digest realm="r", nonce="n4", algorithm=X-FUTURE, qop="auth"',
        'Digest realm="r", nonce="n5", algorithm=SHA-512-256, qop="auth-conf"',
    ]
    chosen = choose_challenge(values)
    assert chosen is not None and chosen.nonce == "n2"
    assert choose_challenge(values, realm="other") is None
    assert choose_challenge(['Digest realm="r", nonce="n"']) == Challenge("r", "n", "MD5", None, (), False)
    assert choose_challenge([]) is None


def test_answer_challenge_builds_credentials() -> None:
    # The RFC 7616 §3.9.1 exchange, from the client's side.
    value = answer_challenge(
        'Digest realm="http-auth@example.org", nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v", '
        'opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS", algorithm=SHA-256, qop="auth, auth-int"',
        "GET",
        "/dir/index.html",
        "Mufasa",
        "Circle of Life",
        nc=1,
        cnonce="f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ",
    )
    credentials = parse_credentials(value)
    assert credentials.response == "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"
    assert credentials.opaque == "FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"
    assert (credentials.qop, credentials.nc, credentials.algorithm) == ("auth", "00000001", "SHA-256")
    assert value.startswith('Digest username="Mufasa", realm="http-auth@example.org"')


@pytest.mark.parametrize(
    "value",
    [
        'Digest realm="r", nonce="n", algorithm=X-FUTURE',
        'Digest realm="r", nonce="n", qop="auth-conf"',
        'Basic realm="r"',
    ],
)
def test_answer_challenge_refuses_what_it_cannot_answer(value: str) -> None:
    with pytest.raises(SipParseError):
        answer_challenge(value, "REGISTER", "sip:r", "u", "p")
