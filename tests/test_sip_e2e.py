"""The SIP stack end to end: sipp talks to pbxd's service tree over real sockets.

Each test starts PbxService on 127.0.0.1 with ports the OS picks, runs one
sipp scenario from tests/sipp against it and checks what sipp saw and what
pbxd kept (transactions absorbed, no stray ACK reaching the core).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.threads import deferToThread

from pbxd.config import parse_config
from pbxd.sip.message import Response, parse_message
from pbxd.service import PbxService
from certs import make_pki, python_tls_exchange
from sipp_runner import requires_sipp, run_sipp, scenario

TRANSPORTS = ["udp", "tcp"]


@pytest.fixture
def pbx(tmp_path: Path):  # type: ignore[no-untyped-def]
    config = parse_config(
        {
            "data_dir": str(tmp_path / "data"),
            "sip": {
                "listen": [
                    {"transport": "udp", "host": "127.0.0.1", "port": 0},
                    {"transport": "tcp", "host": "127.0.0.1", "port": 0},
                ]
            },
            "http": {"port": 0},
        }
    )
    service = PbxService(config, reactor)
    service.privilegedStartService()
    service.startService()
    acks: list = []
    service.sip.core.on_ack(lambda request, source: acks.append(request))
    service.acks_seen = acks
    yield service
    pytest_twisted.blockon(service.stopService())


def port_of(service: PbxService, transport: str) -> int:
    return next(listener.port for listener in service.sip.transports.listeners if listener.transport == transport)


def received(result, status: int) -> str:  # type: ignore[no-untyped-def]
    """The text of the first response with ``status`` sipp logged as received."""
    for block in result.messages.split("----------------------------------------------- "):
        if "message received" in block and re.search(rf"^SIP/2\.0 {status} ", block, re.M):
            return block
    raise AssertionError(f"sipp received no {status}\n" + result.explain())


@requires_sipp
@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest_twisted.ensureDeferred
async def test_options_ping_is_answered(pbx: PbxService, tmp_path: Path, transport: str) -> None:
    result = await run_sipp(
        scenario("options_ping.xml", tmp_path), "127.0.0.1", port_of(pbx, transport), transport=transport
    )
    assert result.ok, result.explain()
    answer = received(result, 200)
    allow = re.search(r"^Allow: (.*)$", answer, re.M)
    assert allow and {"INVITE", "ACK", "CANCEL", "OPTIONS"} <= {m.strip() for m in allow.group(1).split(",")}
    assert re.search(r"^Server: pbxd/", answer, re.M)
    # §11.2: Supported lists the option tags of the service tree: Path for the
    # registrar (RFC 3327), replaces and timer for calls (RFC 3891, RFC 4028).
    supported = re.search(r"^Supported: (.*)$", answer, re.M)
    assert supported and {"path", "replaces", "timer"} <= {t.strip() for t in supported.group(1).split(",")}
    assert re.search(r"^Accept: application/sdp", answer, re.M)


@requires_sipp
@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize(
    ("keys", "expect"),
    [
        # No such user: challenged like anyone (issue 9: a 404 before the
        # challenge would tell a scanner who exists; 404 comes after digest).
        ({"user": "nobody", "domain": "127.0.0.1", "maxfwd": "70"}, 407),
        ({"user": "bob", "domain": "example.com", "maxfwd": "70"}, 403),  # no relaying for foreign domains
        ({"user": "bob", "domain": "127.0.0.1", "maxfwd": "0"}, 483),  # §16.3: too many hops
    ],
    ids=["unknown-user", "foreign-domain", "max-forwards-0"],
)
@pytest_twisted.ensureDeferred
async def test_invite_is_refused_and_its_ack_absorbed(
    pbx: PbxService, tmp_path: Path, transport: str, keys: dict[str, str], expect: int
) -> None:
    result = await run_sipp(
        scenario("invite_rejected.xml", tmp_path, expect=expect),
        "127.0.0.1",
        port_of(pbx, transport),
        transport=transport,
        keys=keys,
    )
    assert result.ok, result.explain()
    # The ACK for a non-2xx belongs to the INVITE server transaction (§17.2.1):
    # it must not reach the core as if it acknowledged a 2xx.
    assert pbx.acks_seen == []
    states = [txn.state.name for txn in pbx.sip.core.layer.transactions if txn.request.method == "INVITE"]
    # Over UDP the transaction waits in Confirmed for Timer I (T4); over TCP it is gone.
    assert states == (["CONFIRMED"] if transport == "udp" else [])


@requires_sipp
@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize(
    ("keys", "expect"),
    [
        ({"method": "FOO", "cseq_method": "FOO", "extra": "Subject: x"}, 405),  # §8.2.1
        ({"method": "OPTIONS", "cseq_method": "OPTIONS", "extra": "Max-Forwards: 1"}, 400),  # two Max-Forwards
        ({"method": "OPTIONS", "cseq_method": "OPTIONS", "extra": "Require: 100rel-nonsense"}, 420),  # §8.2.2.3
        # OPTIONS to a user who does not exist is answered as OPTIONS to pbxd
        # itself (issue 9: a 404 would let a scanner enumerate extensions).
        ({"method": "OPTIONS", "cseq_method": "OPTIONS", "extra": "Subject: x"}, 200),
    ],
    ids=["unknown-method", "malformed", "unsupported-require", "options-unknown-user"],
)
@pytest_twisted.ensureDeferred
async def test_bad_requests_get_the_right_error(
    pbx: PbxService, tmp_path: Path, transport: str, keys: dict[str, str], expect: int
) -> None:
    keys = {"user": "nobody", "domain": "127.0.0.1", **keys}
    method = keys.pop("method")
    result = await run_sipp(
        scenario("request_rejected.xml", tmp_path, expect=expect, method=method),
        "127.0.0.1",
        port_of(pbx, transport),
        transport=transport,
        keys=keys,
    )
    assert result.ok, result.explain()
    answer = received(result, expect)
    if expect == 405:
        assert re.search(r"^Allow: .*OPTIONS", answer, re.M)
    if expect == 420:
        assert re.search(r"^Unsupported: 100rel-nonsense", answer, re.M)
    if expect == 400:
        assert re.search(r'^Warning: 399 pbxd ".*Max-Forwards', answer, re.M)


@pytest_twisted.ensureDeferred
async def test_options_over_tls_from_a_standard_tls_client(tmp_path: Path) -> None:
    """A client we did not write (Python's ssl module) verifies pbxd's certificate and pings it."""
    pki = make_pki(tmp_path)
    config = parse_config(
        {
            "data_dir": str(tmp_path / "data"),
            "sip": {
                "listen": [{"transport": "tls", "host": "127.0.0.1", "port": 0}],
                "tls": {"certificate": str(pki.server_cert), "private_key": str(pki.server_key)},
            },
            "http": {"port": 0},
        }
    )
    service = PbxService(config, reactor)
    service.privilegedStartService()
    service.startService()
    try:
        port = port_of(service, "tls")
        options = (
            f"OPTIONS sip:127.0.0.1:{port};transport=tls SIP/2.0\r\n"
            "Via: SIP/2.0/TLS client.invalid;branch=z9hG4bK-tls-1;rport\r\n"
            "From: <sip:probe@client.invalid>;tag=t1\r\n"
            f"To: <sip:127.0.0.1:{port}>\r\n"
            "Call-ID: tls-ping-1\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
        ).encode()
        raw = await deferToThread(python_tls_exchange, "127.0.0.1", port, options, pki.ca, "localhost")
    finally:
        await service.stopService()
    response = parse_message(raw)
    assert isinstance(response, Response) and response.status == 200
    assert "OPTIONS" in response.get_all("Allow")
    assert response.via.received == "127.0.0.1" and response.via.rport is not None
    assert response.to_addr.tag


@requires_sipp
def test_daemon_answers_options_over_udp_and_tcp(pbxd_daemon, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The real thing: ``twistd -n pbxd`` on loopback, pinged by sipp over UDP and TCP."""
    import subprocess

    daemon = pbxd_daemon("--sip-host", "127.0.0.1", "--sip-port", "0", "--http-port", "0",
                         "--data-dir", str(tmp_path / "data"))
    ports = {}
    while len(ports) < 2:
        line = daemon.wait_for(lambda text: "SIP listening on" in text)
        match = re.search(r"SIP listening on (udp|tcp) 127\.0\.0\.1:(\d+)", line)
        assert match, line
        ports[match.group(1)] = int(match.group(2))
    daemon.wait_for(lambda text: "ready" in text)
    for transport, port in ports.items():
        path = scenario("options_ping.xml", tmp_path)
        done = subprocess.run(
            ["sipp", "-sf", str(path), f"127.0.0.1:{port}", "-t", {"udp": "u1", "tcp": "t1"}[transport],
             "-i", "127.0.0.1", "-m", "1", "-nostdin", "-timeout", "20s", "-timeout_error"],
            cwd=tmp_path, capture_output=True, timeout=60,
        )
        assert done.returncode == 0, done.stdout.decode(errors="replace")[-2000:]
    assert daemon.stop() in (0, -15)
