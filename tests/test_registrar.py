"""The registrar end to end: sipp (and, where sipp cannot, a small UA over a real UDP
socket) registers to PbxService on loopback, and the SQLite file is read afterwards
to see what pbxd kept. Over UDP and TCP."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer, reactor
from twisted.internet.protocol import DatagramProtocol

from pbxd.config import parse_config
from pbxd.service import PbxService, StartupError
from pbxd.sip.digest import answer_challenge
from pbxd.sip.message import Response, parse_message
from pbxd.sip.transaction import new_branch
from pbxd.transport import Target
from tests.sip_peer import Answer, final_answer, register_bytes, tcp_peer, udp_peer
from tests.sipp_runner import SippResult, requires_sipp, run_sipp, scenario

pytestmark = [requires_sipp, pytest.mark.sipp]

TRANSPORTS = ["udp", "tcp"]
DOMAIN = "pbx.test"
AOR = f"sip:1001@{DOMAIN}"
SIPP_CONTACT = "<sip:[user]@[local_ip]:[local_port];transport=[transport]>"
EXTENSIONS = [
    {"number": "1001", "password": "secret-1001"},
    {"number": "1002", "password": "secret-1002"},
]


def pbx_config(data_dir: Path, **sections: Any):  # type: ignore[no-untyped-def]
    raw: dict[str, Any] = {
        "data_dir": str(data_dir),
        "sip": {
            "domains": [DOMAIN],
            "listen": [
                {"transport": "udp", "host": "127.0.0.1", "port": 0},
                {"transport": "tcp", "host": "127.0.0.1", "port": 0},
            ],
        },
        "extensions": EXTENSIONS,
        "registrar": {"min_expires": 30},
        "http": {"port": 0},  # the HTTP API on a port the OS picks
    }
    for name, values in sections.items():
        raw[name] = {**raw.get(name, {}), **values}
    return parse_config(raw)


async def start_pbx(config) -> PbxService:  # type: ignore[no-untyped-def]
    service = PbxService(config, reactor)
    service.privilegedStartService()
    service.startService()
    await service.registrar.when_ready()
    return service


@pytest_twisted.async_yield_fixture
async def make_pbx(tmp_path: Path):
    """Start a PbxService on loopback (config sections as keyword arguments)."""
    started: list[PbxService] = []

    async def make(data_dir: Path | None = None, **sections: Any) -> PbxService:
        service = await start_pbx(pbx_config(data_dir or tmp_path / "data", **sections))
        started.append(service)
        return service

    yield make
    for service in started:
        if service.running:
            await service.stopService()


@pytest_twisted.async_yield_fixture
async def pbx(make_pbx):
    yield await make_pbx()


def port_of(service: PbxService, transport: str) -> int:
    return next(entry.port for entry in service.sip.transports.listeners
                if entry.transport == transport)


def stored_bindings(service: PbxService) -> list[sqlite3.Row]:
    """The bindings table as another process would read it (WAL: committed rows only)."""
    connection = sqlite3.connect(str(service.config.data_dir / "pbxd.sqlite3"))
    connection.row_factory = sqlite3.Row
    try:
        return connection.execute("SELECT * FROM bindings ORDER BY id").fetchall()
    finally:
        connection.close()


def responses(result: SippResult, status: int) -> list[str]:
    """The responses with ``status`` that sipp logged as received."""
    return [block for block in result.messages.split("----------------------------------------------- ")
            if "message received" in block and re.search(rf"^SIP/2\.0 {status} ", block, re.M)]


def contacts_in(message: str) -> list[str]:
    return re.findall(r"^Contact: (.*)$", message, re.M)


async def sipp_register(
    service: PbxService,
    tmp_path: Path,
    transport: str,
    *,
    file: str = "register.xml",
    user: str = "1001",
    password: str = "secret-1001",
    auth_user: str | None = None,
    expect: int = 200,
    expires: int = 120,
    contact: str = SIPP_CONTACT,
    local_ip: str | None = None,
    **fills: Any,
) -> SippResult:
    keys = {"user": user, "domain": "127.0.0.1", "expires": str(expires)}
    keys.update({k: str(v) for k, v in fills.pop("keys", {}).items()})
    # -p 0: sipp 3.6.1 takes 0 as "not given" and binds the first free port from 5060 up
    # (seen in its Via: 127.0.0.1:5060), so concurrent runs do not collide.
    result = await run_sipp(
        scenario(file, tmp_path, expect=expect, contact=contact, **fills),
        "127.0.0.1", port_of(service, transport), transport=transport, keys=keys,
        extra=("-au", auth_user or user, "-ap", password, "-p", "0"), local_ip=local_ip,
    )
    assert result.ok, result.explain()
    return result


# -- registering --------------------------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest_twisted.ensureDeferred
async def test_register_with_digest(pbx: PbxService, tmp_path: Path, transport: str) -> None:
    result = await sipp_register(pbx, tmp_path, transport)
    challenge = responses(result, 401)[0]
    assert [re.search(r"algorithm=([\w-]+)", v).group(1)  # type: ignore[union-attr]
            for v in re.findall(r"^WWW-Authenticate: (.*)$", challenge, re.M)] == ["MD5", "SHA-256"]
    ok = responses(result, 200)[0]
    [contact] = contacts_in(ok)
    assert re.fullmatch(r"<sip:1001@127\.0\.0\.1:\d+;transport=\w+>;expires=120", contact, re.I)
    assert re.search(r"^Date: \w{3}, \d\d \w{3} \d{4} \d\d:\d\d:\d\d GMT$", ok, re.M)
    [row] = stored_bindings(pbx)
    assert (row["aor"], row["source_transport"], row["source_host"], row["cseq"]) == (
        AOR, transport, "127.0.0.1", 2)
    assert row["expires_at"] - row["received_at"] == 120
    assert row["user_agent"].startswith("Yealink SIP-T46S")
    [phone] = await pbx.store.store.all_phones()
    assert (phone.extension, phone.ip, phone.mac) == ("1001", "127.0.0.1", "001565123456")
    assert phone.vendor and phone.model and phone.contact_uri.startswith("<sip:1001@127.0.0.1:")
    assert [c.request_uri for c in pbx.registrar.location.lookup(AOR)] == [row["contact_uri"]]
    assert pbx.sip.core.users.has_user("1001")


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest_twisted.ensureDeferred
async def test_wrong_password_and_unknown_user_get_the_same_answers(
    pbx: PbxService, tmp_path: Path, transport: str
) -> None:
    wrong = await sipp_register(pbx, tmp_path, transport, password="guess", expect=403)
    unknown = await sipp_register(pbx, tmp_path, transport, user="9999", password="guess",
                                  expect=403)

    def shape(message: str) -> list[str]:
        # Header names, and the challenge values without the nonce.
        lines = [line for line in message.splitlines() if re.match(r"^[\w-]+: ", line)]
        return [re.sub(r'nonce="[^"]*"', "", line) if line.startswith("WWW-Auth")
                else line.split(":")[0] for line in lines]

    for status in (401, 403):
        assert shape(responses(wrong, status)[0]) == shape(responses(unknown, status)[0])
    assert stored_bindings(pbx) == []


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest_twisted.ensureDeferred
async def test_stale_nonce_is_answered_with_stale_true(make_pbx, tmp_path: Path,
                                                       transport: str) -> None:
    pbx = await make_pbx(auth={"nonce_lifetime": 1})
    result = await sipp_register(pbx, tmp_path, transport, file="register_stale.xml", pause=1500)
    assert len(responses(result, 200)) == 2
    assert "stale=true" in responses(result, 401)[1]
    [row] = stored_bindings(pbx)
    assert row["cseq"] == 4


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest_twisted.ensureDeferred
async def test_unregister(pbx: PbxService, tmp_path: Path, transport: str) -> None:
    result = await sipp_register(pbx, tmp_path, transport, file="register_twice.xml",
                                 second_contact=SIPP_CONTACT, keys={"second_expires": 0})
    first, second = responses(result, 200)
    assert len(contacts_in(first)) == 1 and contacts_in(second) == []
    assert stored_bindings(pbx) == []
    assert pbx.registrar.location.lookup(AOR) == []


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest_twisted.ensureDeferred
async def test_wildcard_contact_removes_every_binding(pbx: PbxService, tmp_path: Path,
                                                      transport: str) -> None:
    two = SIPP_CONTACT + ", <sip:1001@192.0.2.44:5060>;expires=300"
    result = await sipp_register(pbx, tmp_path, transport, file="register_twice.xml",
                                 contact=two, second_contact="*", keys={"second_expires": 0})
    first, second = responses(result, 200)
    assert len(contacts_in(first)[0].split(",")) + len(contacts_in(first)) - 1 == 2
    assert contacts_in(second) == []
    assert stored_bindings(pbx) == []


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest_twisted.ensureDeferred
async def test_wildcard_contact_needs_expires_0(pbx: PbxService, tmp_path: Path,
                                                transport: str) -> None:
    await sipp_register(pbx, tmp_path, transport, file="register_twice.xml", second_contact="*",
                        keys={"second_expires": 60}, expect=400)
    assert len(stored_bindings(pbx)) == 1


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest_twisted.ensureDeferred
async def test_too_brief_gets_423_with_min_expires(pbx: PbxService, tmp_path: Path,
                                                   transport: str) -> None:
    result = await sipp_register(pbx, tmp_path, transport, expires=10, expect=423)
    assert re.search(r"^Min-Expires: 30$", responses(result, 423)[0], re.M)
    assert stored_bindings(pbx) == []


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest_twisted.ensureDeferred
async def test_several_contacts_in_one_register(pbx: PbxService, tmp_path: Path,
                                                transport: str) -> None:
    contacts = (SIPP_CONTACT + ";q=0.5, <sip:1001@192.0.2.44:5070>;expires=7200;q=0.9,"
                " <sip:1001@192.0.2.45:5060>;expires=0")
    result = await sipp_register(pbx, tmp_path, transport, contact=contacts)
    listed = [c.strip() for line in contacts_in(responses(result, 200)[0])
              for c in line.split(",")]
    # expires=7200 is cut to max_expires; expires=0 of an unknown binding changes nothing.
    assert sorted(listed) == sorted([
        "<sip:1001@192.0.2.44:5070>;expires=3600;q=0.9",
        next(c for c in listed if "127.0.0.1" in c),
    ])
    assert re.search(r";expires=120;q=0.5$", next(c for c in listed if "127.0.0.1" in c))
    rows = stored_bindings(pbx)
    assert sorted(row["q"] for row in rows) == [0.5, 0.9]
    assert [c.request_uri for c in pbx.registrar.location.lookup(AOR)][0] == (
        "sip:1001@192.0.2.44:5070")


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest_twisted.ensureDeferred
async def test_only_the_own_aor_may_be_registered(pbx: PbxService, tmp_path: Path,
                                                  transport: str) -> None:
    await sipp_register(pbx, tmp_path, transport, user="1002", auth_user="1001", expect=403)
    assert stored_bindings(pbx) == []


# -- what sipp cannot send: a small UA on a real UDP socket -------------------------------


class UdpPhone(DatagramProtocol):
    """Sends hand-written requests and returns the responses, in order."""

    def __init__(self, pbx_port: int) -> None:
        self.pbx_port = pbx_port
        self.received: defer.DeferredQueue[Response] = defer.DeferredQueue()
        self.call_id = f"{new_branch()}@127.0.0.1"
        self.cseq = 0

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        message = parse_message(data)
        if isinstance(message, Response) and message.status >= 200:
            self.received.put(message)

    @property
    def port(self) -> int:
        return self.transport.getHost().port  # type: ignore[no-any-return,union-attr]

    async def register(self, *, user: str = "1001", to_user: str | None = None,
                       credentials: str | None = None, cseq: int | None = None,
                       ruri: str = "sip:127.0.0.1", contact: str | None = None,
                       expires: int = 120) -> Response:
        if cseq is None:
            self.cseq += 1
            cseq = self.cseq
        lines = [
            f"REGISTER {ruri} SIP/2.0",
            f"Via: SIP/2.0/UDP 127.0.0.1:{self.port};branch={new_branch()};rport",
            "Max-Forwards: 70",
            f"From: <sip:{user}@127.0.0.1>;tag=udp-phone",
            f"To: <sip:{to_user or user}@127.0.0.1>",
            f"Call-ID: {self.call_id}",
            f"CSeq: {cseq} REGISTER",
            f"Contact: {contact or f'<sip:{user}@127.0.0.1:{self.port}>'}",
            f"Expires: {expires}",
        ]
        if credentials is not None:
            lines.append(f"Authorization: {credentials}")
        data = ("\r\n".join(lines) + "\r\nContent-Length: 0\r\n\r\n").encode()
        self.transport.write(data, ("127.0.0.1", self.pbx_port))  # type: ignore[union-attr]
        return await self.received.get().addTimeout(10, reactor)

    async def login(self, user: str = "1001", password: str = "secret-1001",
                    **options: Any) -> tuple[Response, str]:
        """Register with credentials; the answer and the challenge answered."""
        challenge = await self.register(user=user, **{k: v for k, v in options.items()
                                                      if k in ("ruri", "to_user")})
        assert challenge.status == 401, challenge
        offered = challenge.get_all("WWW-Authenticate")[0]
        ruri = options.get("ruri", "sip:127.0.0.1")
        credentials = answer_challenge(offered, "REGISTER", ruri, user, password,
                                       nc=options.pop("nc", 1))
        return await self.register(user=user, credentials=credentials, **options), offered


@pytest_twisted.async_yield_fixture
async def phone(pbx: PbxService):
    protocol = UdpPhone(port_of(pbx, "udp"))
    port = reactor.listenUDP(0, protocol, interface="127.0.0.1")
    yield protocol
    await port.stopListening()


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest_twisted.ensureDeferred
async def test_a_replayed_authorization_is_refused(pbx: PbxService, transport: str) -> None:
    """A nonce count used before is a replay (RFC 7616 §3.4.5), over either transport."""
    if transport == "udp":
        peer, port = await udp_peer(port_of(pbx, "udp"))
    else:
        peer = await tcp_peer(port_of(pbx, "tcp"))

    async def send(cseq: int, credentials: str | None = None) -> Answer:
        extra = () if credentials is None else (f"Authorization: {credentials}",)
        peer.send(register_bytes(peer.port, transport, user="1001", call_id=f"replay-{transport}",
                                 cseq=cseq, contact=f"<sip:1001@127.0.0.1:{peer.port}>",
                                 expires=120, extra=extra))
        return await final_answer(peer, f"replay-{transport}")

    try:
        challenge = await send(1)
        assert challenge.status == 401
        offered = challenge.headers["www-authenticate"][0]

        def credentials(nc: int) -> str:
            return answer_challenge(offered, "REGISTER", "sip:127.0.0.1", "1001", "secret-1001",
                                    nc=nc, cnonce="fixed-cnonce")

        assert (await send(2, credentials(1))).status == 200
        assert (await send(3, credentials(2))).status == 200
        replayed = await send(4, credentials(2))  # a new transaction, the same nc
    finally:
        if transport == "udp":
            await port.stopListening()
        else:
            peer.close()
    assert replayed.status == 401 and "stale=true" not in (replayed.header("www-authenticate") or "")
    [row] = stored_bindings(pbx)
    assert (row["cseq"], row["source_transport"]) == (3, transport)


@pytest_twisted.ensureDeferred
async def test_an_old_cseq_of_the_same_call_id_is_refused(pbx: PbxService,
                                                           phone: UdpPhone) -> None:
    answer, offered = await phone.login()
    assert answer.status == 200 and answer.cseq.seq == 2
    credentials = answer_challenge(offered, "REGISTER", "sip:127.0.0.1", "1001", "secret-1001",
                                   nc=2)
    late = await phone.register(credentials=credentials, cseq=1)
    assert (late.status, late.reason) == (400, "Invalid CSeq")
    [row] = stored_bindings(pbx)
    assert row["cseq"] == 2


@pytest_twisted.ensureDeferred
async def test_a_foreign_domain_is_refused_before_any_challenge(pbx: PbxService,
                                                                phone: UdpPhone) -> None:
    answer = await phone.register(ruri="sip:example.com")
    assert (answer.status, answer.reason) == (403, "Relaying Forbidden")


@pytest.mark.parametrize(
    ("contact", "reason"),
    [
        ("<sip:1001@127.0.0.1>;expires=soon", "Bad Contact expires"),
        ("<sip:1001@127.0.0.1>;q=2", "Bad Contact q"),
        ("<mailto:1001@example.com>", "Contact Is Not a SIP URI"),
        ("*, <sip:1001@127.0.0.1>", None),
        ("<sip:1001@127.0.0.1", None),
    ],
)
@pytest_twisted.ensureDeferred
async def test_bad_contacts_get_400(pbx: PbxService, phone: UdpPhone, contact: str,
                                    reason: str | None) -> None:
    if reason is None:
        # Malformed: refused before the challenge.
        answer = await phone.register(contact=contact)
    else:
        answer, _ = await phone.login(contact=contact)
    assert answer.status == 400
    if reason is not None:
        assert answer.reason == reason
    assert stored_bindings(pbx) == []


@pytest_twisted.ensureDeferred
async def test_a_query_lists_the_bindings_and_changes_nothing(pbx: PbxService,
                                                              phone: UdpPhone) -> None:
    await phone.login()
    challenge = await phone.register()
    credentials = answer_challenge(challenge.get_all("WWW-Authenticate")[0], "REGISTER",
                                   "sip:127.0.0.1", "1001", "secret-1001")
    lines = ["REGISTER sip:127.0.0.1 SIP/2.0",
             f"Via: SIP/2.0/UDP 127.0.0.1:{phone.port};branch={new_branch()};rport",
             "Max-Forwards: 70", "From: <sip:1001@127.0.0.1>;tag=q", "To: <sip:1001@127.0.0.1>",
             f"Call-ID: query-{phone.call_id}", "CSeq: 1 REGISTER",
             f"Authorization: {credentials}", "Content-Length: 0", "", ""]
    phone.transport.write("\r\n".join(lines).encode(), ("127.0.0.1", phone.pbx_port))
    answer = await phone.received.get().addTimeout(10, reactor)
    assert answer.status == 200 and len(answer.get_all("Contact")) == 1
    assert len(stored_bindings(pbx)) == 1


# -- the service around it ------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_bindings_survive_a_restart_and_then_expire_on_time(make_pbx, tmp_path: Path) -> None:
    data = tmp_path / "data"
    short = {"min_expires": 1}
    first = await make_pbx(data, registrar=short)
    await sipp_register(first, tmp_path, "udp", expires=3)
    [row] = stored_bindings(first)
    await first.stopService()

    second = await make_pbx(data, registrar=short)
    [contact] = second.registrar.location.lookup(AOR)
    assert contact.expires_at == row["expires_at"]
    assert contact.target.port == row["source_port"] and contact.target.local is not None
    expired: defer.Deferred[float] = defer.Deferred()
    second.registrar.location.observers.append(
        lambda event, c: event == "offline" and not expired.called
        and expired.callback(reactor.seconds()))
    when = await expired.addTimeout(20, reactor)
    assert row["expires_at"] <= when < row["expires_at"] + 1.0
    assert second.registrar.location.lookup(AOR) == []
    await second.store.store.all_bindings()  # the purge ran before this in the store's queue
    assert stored_bindings(second) == []


@pytest_twisted.ensureDeferred
async def test_extensions_are_seeded_only_into_an_empty_store(make_pbx, tmp_path: Path) -> None:
    data = tmp_path / "data"
    first = await make_pbx(data)
    assert [e.number for e in await first.store.store.list_extensions()] == ["1001", "1002"]
    await first.store.store.delete_extension("1002")
    await first.stopService()
    second = await make_pbx(data)
    assert [e.number for e in await second.store.store.list_extensions()] == ["1001"]
    assert not second.sip.core.users.has_user("1002")


@pytest_twisted.ensureDeferred
async def test_brute_force_bans_the_address_not_the_others(make_pbx, tmp_path: Path) -> None:
    pbx = await make_pbx(auth={"guard": {"max_failures": 3, "window": 60, "ban_time": 60}})
    # Guesses at another user (whose name gets banned too, from everywhere).
    for _ in range(3):
        await sipp_register(pbx, tmp_path, "udp", user="1002", password="guess", expect=403)
    # The right password from the banned address: 403 at once, no challenge.
    result = await run_sipp(
        scenario("request_rejected.xml", tmp_path, expect=403, method="REGISTER"),
        "127.0.0.1", port_of(pbx, "udp"),
        keys={"user": "1001", "domain": "127.0.0.1", "cseq_method": "REGISTER",
              "extra": "Contact: <sip:1001@127.0.0.1>"},
        extra=("-p", "0"),
    )
    assert result.ok, result.explain()
    assert stored_bindings(pbx) == []
    # Another address registers.
    await sipp_register(pbx, tmp_path, "udp", local_ip="127.0.0.2")
    [row] = stored_bindings(pbx)
    assert row["source_host"] == "127.0.0.2"


def test_registrar_config_reaches_the_service(tmp_path: Path) -> None:
    config = pbx_config(tmp_path / "data", registrar={"max_contacts": 3},
                        auth={"realm": "other.test"})
    service = PbxService(config, reactor)
    assert service.registrar.realm == "other.test"
    assert service.registrar.domain == DOMAIN
    assert "REGISTER" in service.sip.core.allowed_methods


@pytest_twisted.ensureDeferred
async def test_a_register_before_the_store_is_open_waits_for_it(tmp_path: Path) -> None:
    pbx = PbxService(pbx_config(tmp_path / "data"), reactor)
    pbx.privilegedStartService()
    pbx.startService()
    phone = UdpPhone(port_of(pbx, "udp"))
    port = reactor.listenUDP(0, phone, interface="127.0.0.1")
    try:
        # The store opens in its thread once the reactor turns: nothing is ready yet.
        assert pbx.registrar.registrar is None
        request = parse_message(
            f"REGISTER sip:127.0.0.1 SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:{phone.port};branch={new_branch()}\r\n"
            "Max-Forwards: 70\r\nFrom: <sip:1001@127.0.0.1>;tag=early\r\n"
            "To: <sip:1001@127.0.0.1>\r\nCall-ID: early@127.0.0.1\r\nCSeq: 1 REGISTER\r\n"
            f"Contact: <sip:1001@127.0.0.1:{phone.port}>\r\nContent-Length: 0\r\n\r\n".encode())
        pbx.sip.core.layer.receive(request, Target("udp", "127.0.0.1", phone.port))
        answer = await phone.received.get().addTimeout(10, reactor)
        assert answer.status == 401 and pbx.registrar.registrar is not None
    finally:
        await port.stopListening()
        await pbx.stopService()


@pytest.mark.parametrize("problem", ["not a database", "a directory"])
def test_a_store_that_cannot_open_stops_start_up(tmp_path: Path, problem: str) -> None:
    data = tmp_path / "data"
    data.mkdir()
    if problem == "a directory":
        (data / "pbxd.sqlite3").mkdir()
    else:
        (data / "pbxd.sqlite3").write_bytes(b"this is not SQLite" * 100)
    pbx = PbxService(pbx_config(data), reactor)
    with pytest.raises(StartupError) as stopped:
        pbx.startService()
    assert "pbxd.sqlite3" in stopped.value.reason
    for service in pbx:
        if service.running:
            service.stopService()
