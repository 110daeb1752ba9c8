"""RFC 4475 §3.1.2 (invalid messages) on the wire: each message of
tests/test_rfc4475.py is sent to a running pbxd (its service tree on
127.0.0.1) and what comes back is checked.

Where the RFC says the element should respond, the answer is the status it
names (400, 505 for badvers, 501 preferred for mismatch02) with a reason
phrase and a ``Warning: 399`` saying what was wrong; where it says the
message is discarded (the two responses, scalarlg and bigcode) nothing comes
back. "Nothing" is checked without sleeping: a valid OPTIONS follows each
message and its 200 must be the next thing to arrive (pbxd reads a socket in
order), which also shows the daemon still answers.

Over TCP the framing matters (RFC 3261 §18.3: on a stream Content-Length is
the only way to find where a message ends): a bad header with a good
Content-Length leaves the connection usable; a Content-Length that is
missing, negative or given twice gets its 400 and the connection is closed,
since nothing after it can be framed; one larger than the body makes pbxd
wait for the rest (RFC 4475 §3.1.2.2), the bytes that follow being body.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import reactor

import test_rfc4475 as rfc
from pbxd.config import parse_config
from pbxd.service import PbxService
from sip_peer import Answer, TcpPeer, from_peer, options, tcp_peer, udp_peer

# name -> the status RFC 4475 §3.1.2 asks for, None where the message is dropped.
# baddate (§3.1.2.12) is not here: a Date pbxd never reads is accepted (below).
EXPECTED: dict[str, int | None] = {
    "BADINV01": 400,  # §3.1.2.1
    "CLERR": 400,  # §3.1.2.2, over UDP
    "NCL": 400,  # §3.1.2.3
    "SCALAR02": 400,  # §3.1.2.4
    "SCALARLG": None,  # §3.1.2.5: a response, discarded
    "QUOTBAL": 400,  # §3.1.2.6
    "LTGTRURI": 400,  # §3.1.2.7
    "LWSRURI": 400,  # §3.1.2.8
    "LWSSTART": 400,  # §3.1.2.9
    "TRWS": 400,  # §3.1.2.10
    "ESCRURI": 400,  # §3.1.2.11
    "REGBADCT": 400,  # §3.1.2.13
    "BADASPEC": 400,  # §3.1.2.14
    "BADDN": 400,  # §3.1.2.15
    "BADVERS": 505,  # §3.1.2.16
    "MISMATCH01": 400,  # §3.1.2.17
    "MISMATCH02": 501,  # §3.1.2.18: 501 preferred to 400
    "BIGCODE": None,  # §3.1.2.19: a response, discarded
}


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
    yield service
    pytest_twisted.blockon(service.stopService())


def port_of(service: PbxService, transport: str) -> int:
    return next(listener.port for listener in service.sip.transports.listeners if listener.transport == transport)


def call_id_of(message: bytes) -> str:
    for line in message.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() in (b"call-id", b"i"):
            return value.strip().decode()
    raise AssertionError("no Call-ID")


def assert_refusal(answer: Answer, status: int, call_id: str) -> None:
    """The answer the RFC asks for: the status, a reason phrase, and why in a Warning."""
    assert answer.status == status, answer.raw
    assert answer.call_id == call_id
    assert answer.reason.strip(), answer.start_line
    warning = answer.header("warning")
    assert warning and warning.startswith('399 pbxd "') and len(warning) > len('399 pbxd ""'), answer.raw
    assert answer.header("to")  # copied (§8.2.6.2), with a tag added where the To parses


@pytest.mark.parametrize("name", sorted(EXPECTED))
@pytest_twisted.ensureDeferred
async def test_invalid_message_over_udp(pbx: PbxService, name: str) -> None:
    peer, port = await udp_peer(port_of(pbx, "udp"))
    try:
        message = from_peer(getattr(rfc, name), peer.port)
        peer.send(message)
        peer.send(options(peer.port, "udp", f"after-{name}"))
        seen = await peer.until(f"after-{name}")
    finally:
        await port.stopListening()
    expected = EXPECTED[name]
    if expected is None:
        assert [a.start_line for a in seen] == ["SIP/2.0 200 OK"]
    else:
        refusal, after = seen
        assert_refusal(refusal, expected, call_id_of(message))
        assert after.status == 200
    assert pbx.sip.transports.counters.parse_errors == 1


@pytest_twisted.ensureDeferred
async def test_baddate_is_processed_not_refused(pbx: PbxService) -> None:
    """§3.1.2.12: reject only if the Date matters; pbxd never reads Date, so the
    INVITE goes on to the core (which refuses the foreign domain, not the syntax)."""
    peer, port = await udp_peer(port_of(pbx, "udp"))
    try:
        peer.send(from_peer(rfc.BADDATE, peer.port))
        answers = [a for a in await peer.until(call_id_of(rfc.BADDATE)) if (a.status or 0) >= 200]
    finally:
        await port.stopListening()
    assert answers[0].status != 400 and answers[0].header("warning") is None
    assert pbx.sip.transports.counters.parse_errors == 0


# -- over TCP: framing ------------------------------------------------------------


async def closed_within(peer: TcpPeer, timeout: float = 10.0) -> None:
    await peer.closed.addTimeout(timeout, reactor)


@pytest.mark.parametrize("name", ["BADASPEC", "BADDN", "MISMATCH01", "BADVERS", "BADINV01"])
@pytest_twisted.ensureDeferred
async def test_a_bad_header_on_tcp_leaves_the_connection_usable(pbx: PbxService, name: str) -> None:
    peer = await tcp_peer(port_of(pbx, "tcp"))
    try:
        message = from_peer(getattr(rfc, name), peer.port)
        # One write: the stream must split the two where the Content-Length says.
        peer.send(message + options(peer.port, "tcp", "after"))
        refusal, after = await peer.until("after")
        assert_refusal(refusal, EXPECTED[name], call_id_of(message))  # type: ignore[arg-type]
        assert after.status == 200 and not peer.closed.called
    finally:
        peer.close()


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("NCL", "bad Content-Length '-999'"),  # RFC 4475 §3.1.2.3
        ("MCL01", "conflicting Content-Length"),  # RFC 4475 §3.3.9
        ("INV2543", "missing Content-Length"),  # RFC 4475 §3.4.1: fine on UDP, not on a stream
    ],
)
@pytest_twisted.ensureDeferred
async def test_unframeable_content_length_on_tcp_gets_400_and_close(pbx: PbxService, name: str, why: str) -> None:
    tcp = port_of(pbx, "tcp")
    peer = await tcp_peer(tcp)
    message = from_peer(getattr(rfc, name), peer.port)
    peer.send(message + options(peer.port, "tcp", "swallowed"))
    refusal = await peer.next()
    assert (refusal.status, refusal.call_id) == (400, call_id_of(message))
    assert why in (refusal.header("warning") or ""), refusal.raw
    await closed_within(peer)
    # Nothing after the broken message was taken as a message.
    assert peer.queue.pending == []
    # The daemon answers the next connection.
    again = await tcp_peer(tcp)
    try:
        again.send(options(again.port, "tcp", "next-connection"))
        [answer] = await again.until("next-connection")
        assert answer.status == 200
    finally:
        again.close()


@pytest_twisted.ensureDeferred
async def test_content_length_larger_than_the_body_on_tcp_waits_for_the_rest(pbx: PbxService) -> None:
    """RFC 4475 §3.1.2.2 over a stream: the receiver waits for more data; what
    follows is body until Content-Length is reached, then framing goes on."""
    peer = await tcp_peer(port_of(pbx, "tcp"))
    try:
        clerr = from_peer(rfc.CLERR, peer.port)
        header, body = clerr.split(b"\r\n\r\n", 1)
        swallowed = options(peer.port, "tcp", "swallowed")
        peer.send(clerr + swallowed)
        # The rest of the 9999 announced bytes, then a message of its own.
        peer.send(b"x" * (9999 - len(body) - len(swallowed)) + options(peer.port, "tcp", "after"))
        seen = await peer.until("after")
        invite_answers = [a for a in seen if a.call_id == call_id_of(clerr)]
        if not any((a.status or 0) >= 200 for a in invite_answers):
            invite_answers += await peer.until(call_id_of(clerr))
        assert all(a.call_id != "swallowed" for a in seen)
        final = [a for a in invite_answers if (a.status or 0) >= 200]
        # The INVITE arrived whole: refused for what it asks (a foreign domain),
        # not for its framing.
        assert final and final[0].status != 400, final[0].raw
        assert seen[-1].status == 200 and not peer.closed.called
    finally:
        peer.close()
