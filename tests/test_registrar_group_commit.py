"""Many phones registering at once over real UDP sockets to a PbxService on a real
SQLite file: their bindings share a few transactions, each 200 goes out only once
its binding is committed, and a commit that fails answers every one of them 503."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest_twisted
from twisted.internet import defer, reactor
from twisted.internet.protocol import DatagramProtocol

from pbxd.config import parse_config
from pbxd.service import PbxService
from pbxd.sip.digest import answer_challenge
from pbxd.sip.message import Response, parse_message
from pbxd.sip.transaction import new_branch
from tests.test_registrar import port_of, start_pbx, stored_bindings

DOMAIN = "pbx.test"
USERS = [str(number) for number in range(2000, 2060)]


def password(user: str) -> str:
    return f"pw-{user}"


class Phones(DatagramProtocol):
    """Many phones on one socket, one Call-ID each; final responses by Call-ID."""

    def __init__(self, pbx_port: int, on_final=None) -> None:  # type: ignore[no-untyped-def]
        self.pbx_port = pbx_port
        self.on_final = on_final
        self.waiting: dict[str, defer.Deferred[Response]] = {}
        self.call_ids = {user: f"{new_branch()}@127.0.0.1" for user in USERS}

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        message = parse_message(data)
        if isinstance(message, Response) and message.status >= 200:
            if self.on_final is not None:
                self.on_final(message)
            self.waiting.pop(message.call_id).callback(message)

    def send(self, user: str, cseq: int, credentials: str | None = None) -> defer.Deferred[Response]:
        port = self.transport.getHost().port  # type: ignore[union-attr]
        lines = [
            "REGISTER sip:127.0.0.1 SIP/2.0",
            f"Via: SIP/2.0/UDP 127.0.0.1:{port};branch={new_branch()};rport",
            "Max-Forwards: 70",
            f"From: <sip:{user}@127.0.0.1>;tag=t{user}",
            f"To: <sip:{user}@127.0.0.1>",
            f"Call-ID: {self.call_ids[user]}",
            f"CSeq: {cseq} REGISTER",
            f"Contact: <sip:{user}@127.0.0.1:{port}>",
            "Expires: 120",
        ]
        if credentials is not None:
            lines.append(f"Authorization: {credentials}")
        data = ("\r\n".join(lines) + "\r\nContent-Length: 0\r\n\r\n").encode()
        waiter: defer.Deferred[Response] = defer.Deferred()
        self.waiting[self.call_ids[user]] = waiter
        self.transport.write(data, ("127.0.0.1", self.pbx_port))  # type: ignore[union-attr]
        return waiter.addTimeout(20, reactor)

    async def register_all(self, cseq: int) -> dict[str, Response]:
        """Challenge every phone, then send every answer in one go."""
        challenges = await defer.gatherResults([self.send(user, cseq) for user in USERS])
        answers = []
        for user, challenge in zip(USERS, challenges):
            assert challenge.status == 401, challenge
            credentials = answer_challenge(challenge.get_all("WWW-Authenticate")[0], "REGISTER",
                                           "sip:127.0.0.1", user, password(user))
            answers.append(self.send(user, cseq + 1, credentials))
        return dict(zip(USERS, await defer.gatherResults(answers)))


@pytest_twisted.async_yield_fixture
async def pbx(tmp_path: Path):
    config = parse_config({
        "data_dir": str(tmp_path / "data"),
        "sip": {"domains": [DOMAIN],
                "listen": [{"transport": "udp", "host": "127.0.0.1", "port": 0}]},
        "extensions": [{"number": user, "password": password(user)} for user in USERS],
        "http": {"port": 0},
        "auth": {"guard": {"trusted": ["127.0.0.0/8"]}},
    })
    service = await start_pbx(config)
    yield service
    await service.stopService()


@pytest_twisted.async_yield_fixture
async def phones(pbx: PbxService):
    protocol = Phones(port_of(pbx, "udp"))
    port = reactor.listenUDP(0, protocol, interface="127.0.0.1")
    yield protocol
    await port.stopListening()


def aor(user: str) -> str:
    return f"sip:{user}@{DOMAIN}"


@pytest_twisted.ensureDeferred
async def test_registrations_at_once_share_commits_and_are_durable_at_their_200(
        pbx: PbxService, phones: Phones) -> None:
    store = pbx.store.store
    assert store is not None
    durable_at_200: dict[str, bool] = {}

    def check(response: Response) -> None:
        if response.status == 200:  # read as another process would, the moment it arrives
            stored = {row["aor"] for row in stored_bindings(pbx)}
            durable_at_200[response.to_addr.sip_uri.user] = aor(response.to_addr.sip_uri.user) in stored

    phones.on_final = check
    commits_before = store.group_commits
    answers = await phones.register_all(cseq=1)
    assert {user: a.status for user, a in answers.items()} == {user: 200 for user in USERS}
    assert durable_at_200 == {user: True for user in USERS}
    # 60 bindings and 60 phone records; one transaction each would be 120.
    commits = store.group_commits - commits_before
    assert commits <= 10, commits
    assert {row["aor"] for row in stored_bindings(pbx)} == {aor(user) for user in USERS}


@pytest_twisted.ensureDeferred
async def test_a_failed_commit_answers_every_waiting_register_503(pbx: PbxService,
                                                                  phones: Phones) -> None:
    store = pbx.store.store
    assert store is not None
    # Shorten the wait for the lock (5 s in service) on the store's one connection.
    await store._pool.runWithConnection(lambda connection: connection.execute(
        "PRAGMA busy_timeout = 100"))
    database = sqlite3.connect(pbx.config.data_dir / "pbxd.sqlite3", isolation_level=None)
    try:
        database.execute("BEGIN IMMEDIATE")  # another process holds the write lock
        answers = await phones.register_all(cseq=1)
        assert {a.status for a in answers.values()} == {503}
        assert {a.get("Retry-After") for a in answers.values()} == {"5"}
        database.execute("ROLLBACK")
        assert stored_bindings(pbx) == []
        assert len(pbx.registrar.location) == 0
        # The lock gone, every phone registers.
        again = await phones.register_all(cseq=3)
        assert {a.status for a in again.values()} == {200}
        assert len(stored_bindings(pbx)) == len(USERS)
    finally:
        database.close()


@pytest_twisted.ensureDeferred
async def test_a_lone_registration_is_one_commit_with_its_phone(pbx: PbxService,
                                                                  phones: Phones) -> None:
    store = pbx.store.store
    assert store is not None
    user = USERS[0]
    challenge = await phones.send(user, 1)
    credentials = answer_challenge(challenge.get_all("WWW-Authenticate")[0], "REGISTER",
                                   "sip:127.0.0.1", user, password(user))
    before = (store.group_commits, store.grouped_writes)
    assert (await phones.send(user, 2, credentials)).status == 200
    # The binding and the phone record went to the SQLite thread together.
    assert (store.group_commits - before[0], store.grouped_writes - before[1]) == (1, 2)
    assert [phone.extension for phone in await store.all_phones()] == [user]
