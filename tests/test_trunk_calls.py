"""Calls over trunks end to end: pbxd on loopback, sipp phones as extensions, sipp as the carrier.

Outbound: an extension dials an external number; the static route sends it to
``trunk:carrier``; the carrier (sipp UAS) checks the From identity (the
caller's number as the trunk's rules make it), challenges the INVITE with 407
or 401 and checks the answer, then answers. Inbound: the carrier (sipp UAC,
from an address in ``inbound_hosts``, or to the Contact pbxd registered with
its ``line`` token) calls a DID that a route sends to a registered extension,
with no challenge. Refusals: no ``allow_external`` (403), a DID called from an
unknown address (challenged, like any number), over ``max_calls`` (a real
call holds the slot) or ``max_cps`` (in and out): 503 with Retry-After.
Failover: the primary destination's port is closed (ICMP), the backup
answers. The trunk state through a carrier outage is tests/test_trunk_sipp.py's.
"""

from __future__ import annotations

import hashlib
import re
import socket
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer

from call_support import (
    CALLER_HANGS_UP, CALLER_WAITS_FOR_BYE, WAIT_FOR_BYE, callee, callee_ok, caller, cdrs, drained, eventually,
    final_and_ack, pbx_config, phone_dir, port_of, sip_messages, start_pbx,
)
from pbxd.service import PbxService
from pbxd.trunks.registration import REGISTERED
from sipp_runner import SippResult, requires_sipp, run_sipp, scenario
from test_trunk_sipp import Carrier, free_udp_port, register_scenario

pytestmark = requires_sipp

USER, PASSWORD = "4930123", "carrier-secret"
EXTERNAL = "0301234567"  # dialled as 9 + this; the trunk makes it +49301234567
E164 = "+49301234567"
DID = "+4930123100"


def trunk_config(carrier_port: int, **overrides: Any) -> dict[str, Any]:
    return {
        "name": "carrier",
        "destination": {"host": "127.0.0.1", "port": carrier_port, "transport": "udp"},
        "username": USER, "password": PASSWORD, "from_domain": "carrier.test",
        "normalize": [{"pattern": r"0(\d+)", "replacement": r"+49\1"}],
        "caller_id": {"pai": True},
        **overrides,
    }


OUTBOUND_ROUTE = {"name": "outbound", "match": {"request_user": r"9(\d+)"},
                  "rewrite": {"pattern": r"9(\d+)", "replacement": r"\1"}, "destination": "trunk:carrier"}
DID_ROUTE = {"name": "did-main", "match": {"source_trunk": "carrier", "request_user": r"\+4930123100"},
             "destination": "1002"}


async def pbx_with(tmp_path: Path, trunk: dict[str, Any], extensions: list[dict[str, Any]] | None = None,
                   ) -> PbxService:
    sections: dict[str, Any] = {"trunks": [trunk], "routes": [OUTBOUND_ROUTE, DID_ROUTE]}
    if extensions is not None:
        sections["extensions"] = extensions
    return await start_pbx(pbx_config(tmp_path / "data", **sections))


def carrier_call(tmp_path: Path, name: str, after: str) -> Path:
    return scenario("carrier_uac_call.xml", phone_dir(tmp_path, name), after=after)


CARRIER_HANGS_UP = """
  <recv response="100" optional="true"/>
  <recv response="180" optional="true"/>
  <recv response="200" rrs="true"/>
  <send>
    <![CDATA[
      ACK [next_url] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch];rport
      From: <sip:+4930555111@carrier.test>;tag=[pid]SIPpTag09[call_number]
      [last_To:]
      Call-ID: [call_id]
      CSeq: 1 ACK
      Max-Forwards: 70
      Content-Length: 0

    ]]>
  </send>
  <pause milliseconds="300"/>
  <send retrans="500">
    <![CDATA[
      BYE [next_url] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch];rport
      From: <sip:+4930555111@carrier.test>;tag=[pid]SIPpTag09[call_number]
      [last_To:]
      Call-ID: [call_id]
      CSeq: 2 BYE
      Max-Forwards: 70
      Content-Length: 0

    ]]>
  </send>
  <recv response="200"/>
"""


def carrier_refused(status: int) -> str:
    """The carrier's INVITE is answered ``status`` (logged with its headers) and ACKed."""
    return f"""
  <recv response="100" optional="true"/>
  <recv response="{status}"/>
  <send>
    <![CDATA[
      ACK sip:[callee]@[remote_ip]:[remote_port] SIP/2.0
      [last_Via:]
      From: <sip:+4930555111@carrier.test>;tag=[pid]SIPpTag09[call_number]
      [last_To:]
      Call-ID: [call_id]
      CSeq: 1 ACK
      Max-Forwards: 70
      Content-Length: 0

    ]]>
  </send>
"""


def port_taken(port: int) -> bool:
    """the carrier's UDP port is bound (sipp is listening)"""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


CHALLENGES = {
    401: ("401 Unauthorized", "WWW-Authenticate",
          f'<verifyauth assign_to="authvalid" username="{USER}" password="{PASSWORD}"/>'),
    407: ("407 Proxy Authentication Required", "Proxy-Authenticate",
          '<ereg regexp="Digest" search_in="hdr" header="Proxy-Authorization:" check_it="true" '
          'assign_to="authvalid"/>'),
}


async def carrier_uas(tmp_path: Path, port: int, name: str = "carrier",
                      from_pattern: str = "sip:1001@carrier.test", challenge: int = 407) -> Carrier:
    """sipp answering one call on ``port``, once it listens (an INVITE before that is ICMP-refused)."""
    status, header, verify = CHALLENGES[challenge]
    path = scenario("carrier_uas_call.xml", phone_dir(tmp_path, name), challenge=status, authenticate=header,
                    verify=verify, **{"from": from_pattern})
    carrier = Carrier(path, port, calls=1, timeout=25)
    await eventually(lambda: port_taken(port) or carrier.done.called)
    return carrier


def received(result: SippResult, start: str) -> list[str]:
    blocks = result.messages.split("----------------------------------------------- ")
    return [b for b in blocks if "message received" in b and start in b]


def digest_param(header: str, name: str) -> str:
    match = re.search(rf'{name}="?([^",]+)"?', header)
    assert match, header
    return match.group(1)


def check_digest(line: str, method: str) -> None:
    """An MD5 digest answer without qop (RFC 2617 §3.2.2.1), computed here from the account."""
    def md5(text: str) -> str:
        return hashlib.md5(text.encode()).hexdigest()

    ha1 = md5(f"{USER}:{digest_param(line, 'realm')}:{PASSWORD}")
    ha2 = md5(f"{method}:{digest_param(line, 'uri')}")
    assert digest_param(line, "response") == md5(f"{ha1}:{digest_param(line, 'nonce')}:{ha2}"), line


@pytest.mark.parametrize("challenge", [407, 401])
@pytest_twisted.ensureDeferred
async def test_outbound_call_reaches_the_carrier_with_identity_and_credentials(tmp_path: Path,
                                                                                challenge: int) -> None:
    port = free_udp_port()
    carrier = await carrier_uas(tmp_path, port, challenge=challenge)
    pbx = await pbx_with(tmp_path, trunk_config(port))
    try:
        result = await caller(pbx, tmp_path, "1001", "9" + EXTERNAL, "udp", CALLER_HANGS_UP)
        assert result.ok, result.explain()
        carried = await carrier.done
        assert carried.ok, carried.explain()
        invites = received(carried, f"INVITE sip:{E164}@127.0.0.1:{port};transport=udp SIP/2.0")
        assert len(invites) == 2, carried.messages
        first, retry = invites
        assert "From: <sip:1001@carrier.test>;tag=" in first
        assert f"To: <sip:{E164}@carrier.test>" in first
        assert "P-Asserted-Identity: <sip:1001@carrier.test>" in first
        assert "Proxy-Authorization" not in first
        header = "Proxy-Authorization" if challenge == 407 else "Authorization"
        [credentials] = [line for line in retry.splitlines() if line.startswith(f"{header}: Digest ")]
        assert digest_param(credentials, "username") == USER
        check_digest(credentials, "INVITE")
        # §22.2: the same call (Call-ID, From tag), the next CSeq.
        call_id = [line for line in first.splitlines() if line.startswith("Call-ID:")]
        assert call_id and call_id[0] in retry
        assert "CSeq: 1 INVITE" in first and "CSeq: 2 INVITE" in retry
        [cdr] = await cdrs(pbx)
        assert (cdr.trunk, cdr.direction, cdr.from_number, cdr.to_number) == ("carrier", "outbound", "1001", EXTERNAL)
        assert cdr.answer_time is not None
        await drained(pbx)
        assert pbx.trunks.registry.trunk("carrier").limits.active == 0  # type: ignore[union-attr]
    finally:
        await carrier.stop()
        await pbx.stopService()


# The extensions' numbers are a DID block of the carrier's: 1001 is +49301231001.
EXTENSION_BLOCK = {"pattern": r"(1\d{3})", "replacement": r"+4930123\1"}


@pytest.mark.parametrize(("from_user", "from_pattern"), [
    (None, r"sip:\+49301231001@carrier\.test"),
    ("4930123", r"sip:4930123@carrier\.test"),
])
@pytest_twisted.ensureDeferred
async def test_outbound_caller_id_is_the_callers_number_as_the_trunks_rules_make_it(
        tmp_path: Path, from_user: str | None, from_pattern: str) -> None:
    port = free_udp_port()
    carrier = await carrier_uas(tmp_path, port, from_pattern=from_pattern)
    trunk = trunk_config(port, normalize=[{"pattern": r"0(\d+)", "replacement": r"+49\1"}, EXTENSION_BLOCK],
                         caller_id={"pai": True, "rpid": True},
                         **({"from_user": from_user} if from_user else {}))
    pbx = await pbx_with(tmp_path, trunk)
    try:
        result = await caller(pbx, tmp_path, "1001", "9" + EXTERNAL, "udp", CALLER_HANGS_UP)
        assert result.ok, result.explain()
        carried = await carrier.done
        assert carried.ok, carried.explain()  # the carrier checked From
        invites = received(carried, f"INVITE sip:{E164}@")
        assert len(invites) == 2, carried.messages
        for invite in invites:
            assert "P-Asserted-Identity: <sip:+49301231001@carrier.test>" in invite
            assert "Remote-Party-ID: <sip:+49301231001@carrier.test>;party=calling" in invite
            assert "sip:1001@" not in invite
        [cdr] = await cdrs(pbx)
        assert cdr.from_number == "1001"  # the CDR keeps who called
        await drained(pbx)
    finally:
        await carrier.stop()
        await pbx.stopService()


@pytest_twisted.ensureDeferred
async def test_extension_without_allow_external_is_refused(tmp_path: Path) -> None:
    extensions = [{"number": "1001", "password": "secret-1001", "allow_external": False}]
    pbx = await pbx_with(tmp_path, trunk_config(free_udp_port()), extensions)
    try:
        result = await caller(pbx, tmp_path, "1001", "9" + EXTERNAL, "udp", final_and_ack(403))
        assert result.ok, result.explain()
        assert pbx.trunks.registry.trunk("carrier").limits.active == 0  # type: ignore[union-attr]
        await drained(pbx)
    finally:
        await pbx.stopService()


@pytest_twisted.ensureDeferred
async def test_inbound_did_call_reaches_the_extension_without_a_challenge(tmp_path: Path) -> None:
    pbx = await pbx_with(tmp_path, trunk_config(free_udp_port(), dids=[DID], inbound_hosts=["127.0.0.1/32"]))
    try:
        phone = await callee(pbx, tmp_path, "1002", "udp", "uas_answer.xml", hangup=WAIT_FOR_BYE)
        result = await run_sipp(carrier_call(tmp_path, "carrier", CARRIER_HANGS_UP), "127.0.0.1",
                                port_of(pbx, "udp"), keys={"callee": DID})
        assert result.ok, result.explain()
        assert not sip_messages(result, "received", "SIP/2.0 407 "), result.explain()  # not challenged
        answered = await phone
        assert callee_ok(answered), answered.explain()
        [invite] = received(answered, "INVITE sip:1002@")
        assert "From: <sip:+4930555111@carrier.test>;tag=" in invite and f"To: <sip:{DID}@carrier.test>" in invite
        [cdr] = await cdrs(pbx)
        assert (cdr.trunk, cdr.direction, cdr.to_number) == ("carrier", "inbound", DID)
        await drained(pbx)
    finally:
        await pbx.stopService()


@pytest_twisted.ensureDeferred
async def test_did_called_from_an_unknown_address_is_challenged_like_any_number(tmp_path: Path) -> None:
    # A stranger is challenged whether it calls a DID or a number that is
    # nobody's: a 403 before the challenge would tell it which are DIDs.
    pbx = await pbx_with(tmp_path, trunk_config(free_udp_port(), dids=[DID], inbound_hosts=["192.0.2.0/24"]))
    try:
        answers = []
        for callee in (DID, "+4930999999"):
            result = await run_sipp(carrier_call(tmp_path, "stranger", carrier_refused(407)), "127.0.0.1",
                                    port_of(pbx, "udp"), keys={"callee": callee})
            assert result.ok, result.explain()
            [answer] = received(result, "SIP/2.0 407 ")
            answers.append(sorted(line.split(":", 1)[0] for line in answer.splitlines() if ":" in line))
        assert answers[0] == answers[1]
        assert await pbx.store.store.list_cdrs() == []  # no call was set up for the stranger
        await drained(pbx)
    finally:
        await pbx.stopService()


@pytest_twisted.ensureDeferred
async def test_over_max_cps_inbound_is_503_with_retry_after(tmp_path: Path) -> None:
    # 0.01 calls a second: the bucket holds one call, the next comes in 100 s.
    trunk = trunk_config(free_udp_port(), dids=["+4930123*"], inbound_hosts=["127.0.0.1/32"], max_cps=0.01)
    pbx = await pbx_with(tmp_path, trunk)
    try:
        # The first call takes the one token (no route for that DID: 404), the second is over.
        first = await run_sipp(carrier_call(tmp_path, "first", carrier_refused(404)), "127.0.0.1",
                               port_of(pbx, "udp"), keys={"callee": "+4930123999"})
        assert first.ok, first.explain()
        second = await run_sipp(carrier_call(tmp_path, "second", carrier_refused(503)), "127.0.0.1",
                                port_of(pbx, "udp"), keys={"callee": "+4930123999"})
        assert second.ok, second.explain()
        assert "Retry-After: 100" in second.messages
        assert pbx.trunks.registry.trunk("carrier").limits.refused == 1  # type: ignore[union-attr]
        await drained(pbx)
    finally:
        await pbx.stopService()


async def answering_carrier(tmp_path: Path, port: int, name: str = "carrier", calls: int = 1) -> Carrier:
    """sipp answering ``calls`` calls on ``port`` without a challenge and holding each until pbxd's BYE."""
    path = scenario("carrier_uas_answer.xml", phone_dir(tmp_path, name), payload=0, encoding="PCMU/8000", middle="")
    carrier = Carrier(path, port, calls=calls, timeout=25)
    await eventually(lambda: port_taken(port) or carrier.done.called)
    return carrier


def answered_calls(pbx: PbxService) -> list[Any]:
    return [call for call in pbx.calls.manager.calls.values() if call.state.value == "answered"]


@pytest_twisted.ensureDeferred
async def test_over_max_calls_outbound_is_503_with_retry_after(tmp_path: Path) -> None:
    # A real call holds the trunk's one slot: 1001 talks to the carrier until pbxd hangs up.
    port = free_udp_port()
    carrier = await answering_carrier(tmp_path, port)
    pbx = await pbx_with(tmp_path, trunk_config(port, max_calls=1))
    trunk = pbx.trunks.registry.trunk("carrier")
    assert trunk is not None
    try:
        first = defer.Deferred.fromCoroutine(
            caller(pbx, tmp_path, "1001", "9" + EXTERNAL, "udp", CALLER_WAITS_FOR_BYE))

        def up() -> bool:
            """the first call is answered by the carrier"""
            return len(answered_calls(pbx)) == 1 or first.called

        await eventually(up, 15)
        assert trunk.limits.active == 1
        second = await caller(pbx, tmp_path, "1002", "9" + EXTERNAL, "udp", final_and_ack(503))
        assert second.ok, second.explain()
        [refusal] = [b for b in second.messages.split("-----") if "SIP/2.0 503 " in b]
        assert "Retry-After: 10" in refusal
        assert trunk.limits.refused == 1
        [call] = answered_calls(pbx)
        call.hangup()  # BYE both ways: the caller and the carrier each end their call
        held = await first
        assert held.ok, held.explain()
        carried = await carrier.done
        assert carried.ok, carried.explain()
        assert len(received(carried, "INVITE sip:")) == 1  # the refused call never reached it
        await drained(pbx)
        assert trunk.limits.active == 0
    finally:
        await carrier.stop()
        await pbx.stopService()


@pytest_twisted.ensureDeferred
async def test_over_max_cps_outbound_is_503_with_retry_after(tmp_path: Path) -> None:
    # 0.01 calls a second: the first call takes the bucket's one token, the next comes in 100 s.
    port = free_udp_port()
    carrier = await answering_carrier(tmp_path, port)
    pbx = await pbx_with(tmp_path, trunk_config(port, max_cps=0.01))
    trunk = pbx.trunks.registry.trunk("carrier")
    assert trunk is not None
    try:
        first = await caller(pbx, tmp_path, "1001", "9" + EXTERNAL, "udp", CALLER_HANGS_UP)
        assert first.ok, first.explain()
        carried = await carrier.done
        assert carried.ok, carried.explain()
        # The first call is over: max_calls is not what refuses the second, the rate is.
        await drained(pbx)
        second = await caller(pbx, tmp_path, "1002", "9" + EXTERNAL, "udp", final_and_ack(503))
        assert second.ok, second.explain()
        [refusal] = [b for b in second.messages.split("-----") if "SIP/2.0 503 " in b]
        # The token bucket refills from the first call on: 100 s then, less the seconds since.
        retry = re.search(r"^Retry-After: (\d+)", refusal, re.M)
        assert retry is not None and 80 <= int(retry.group(1)) <= 100, refusal
        assert (trunk.limits.refused, trunk.limits.active) == (1, 0)
        answered, refused_cdr = await cdrs(pbx, 2)  # the refused call was never set up, but is recorded
        assert answered.answer_time is not None
        assert (refused_cdr.sip_status, refused_cdr.hangup_cause, refused_cdr.trunk) == (503, "sip_503", "carrier")
    finally:
        await carrier.stop()
        await pbx.stopService()


@pytest.mark.parametrize("transport", ["udp", "tcp"])
@pytest_twisted.ensureDeferred
async def test_failover_to_the_backup_when_the_primary_is_not_there(tmp_path: Path, transport: str) -> None:
    closed, backup = free_udp_port(), free_udp_port()  # nothing listens on closed: ICMP port unreachable
    carrier = await carrier_uas(tmp_path, backup, name="backup")
    trunk = trunk_config(closed, backups=[{"host": "127.0.0.1", "port": backup, "transport": "udp"}])
    pbx = await pbx_with(tmp_path, trunk)
    try:
        result = await caller(pbx, tmp_path, "1001", "9" + EXTERNAL, transport, CALLER_HANGS_UP)
        assert result.ok, result.explain()
        carried = await carrier.done
        assert carried.ok, carried.explain()
        [cdr] = await cdrs(pbx)
        assert (cdr.trunk, cdr.direction) == ("carrier", "outbound") and cdr.answer_time is not None
        await drained(pbx)
    finally:
        await carrier.stop()
        await pbx.stopService()



def to_registered_contact(path: Path, ruri: str) -> Path:
    """carrier_uac_call.xml sending its INVITE to ``ruri`` (To stays the DID)."""
    text = path.read_text()
    default = "INVITE sip:[callee]@[remote_ip]:[remote_port] SIP/2.0"
    assert default in text
    path.write_text(text.replace(default, f"INVITE {ruri} SIP/2.0"))
    return path


@pytest_twisted.ensureDeferred
async def test_inbound_call_to_the_registered_contact_is_known_by_its_line(tmp_path: Path) -> None:
    """pbxd registers to the carrier; the carrier calls the registered Contact (;line=)
    from another address than the registrar's and than any inbound host: the line
    token alone makes it the trunk's call, not challenged."""
    registrar_port = free_udp_port()
    registrar = Carrier(register_scenario(phone_dir(tmp_path, "registrar"), 60, password=PASSWORD), registrar_port,
                        timeout=40)
    await eventually(lambda: port_taken(registrar_port) or registrar.done.called)
    pbx = await pbx_with(tmp_path, trunk_config(registrar_port, dids=[DID], register={"enabled": True, "expires": 60}))
    trunk = pbx.trunks.registry.trunk("carrier")
    assert trunk is not None and trunk.registration is not None
    try:
        def registered_() -> bool:
            """pbxd is registered with the carrier"""
            return trunk.registration.status.state == REGISTERED  # type: ignore[union-attr]

        try:
            await eventually(registered_, 15)
        except AssertionError:
            raise AssertionError(f"{trunk.registration.status}\n{(await registrar.stop()).explain()}") from None  # type: ignore[union-attr]
        pbx_port = port_of(pbx, "udp")
        contact = f"sip:{trunk.contact_user}@127.0.0.1:{pbx_port};transport=udp;line={trunk.line}"
        # A wrong token from that address is a stranger's call: challenged.
        wrong = contact.replace(trunk.line, "0" * 16)
        stranger = await run_sipp(to_registered_contact(carrier_call(tmp_path, "stranger", carrier_refused(407)), wrong),
                                  "127.0.0.1", pbx_port, keys={"callee": DID}, local_ip="127.0.0.2")
        assert stranger.ok, stranger.explain()
        assert sip_messages(stranger, "received", "SIP/2.0 407 "), stranger.explain()
        phone = await callee(pbx, tmp_path, "1002", "udp", "uas_answer.xml", hangup=WAIT_FOR_BYE)
        result = await run_sipp(to_registered_contact(carrier_call(tmp_path, "carrier", CARRIER_HANGS_UP), contact),
                                "127.0.0.1", pbx_port, keys={"callee": DID}, local_ip="127.0.0.2")
        assert result.ok, result.explain()
        assert not sip_messages(result, "received", "SIP/2.0 407 "), result.explain()  # not challenged
        answered = await phone
        assert callee_ok(answered), answered.explain()
        [invite] = received(answered, "INVITE sip:1002@")
        assert f"To: <sip:{DID}@carrier.test>" in invite
        [cdr] = await cdrs(pbx)
        assert (cdr.trunk, cdr.direction, cdr.to_number) == ("carrier", "inbound", DID)
        await drained(pbx)
    finally:
        await pbx.stopService()  # un-REGISTERs: the registrar's scenario ends there
    done = await registrar.done
    assert done.ok, done.explain()


@pytest_twisted.ensureDeferred
async def test_carrier_keepalive_options_to_the_registered_contact_is_200(tmp_path: Path) -> None:
    pbx = await pbx_with(tmp_path, trunk_config(free_udp_port()))
    trunk = pbx.trunks.registry.trunk("carrier")
    assert trunk is not None
    try:
        result = await run_sipp(scenario("carrier_keepalive.xml", phone_dir(tmp_path, "keepalive")), "127.0.0.1",
                                port_of(pbx, "udp"), keys={"user": trunk.contact_user, "line": trunk.line})
        assert result.ok, result.explain()
    finally:
        await pbx.stopService()


async def refusing_carrier(tmp_path: Path, port: int, status: str) -> Carrier:
    path = scenario("carrier_uas_refuse.xml", phone_dir(tmp_path, "primary"), status=status)
    carrier = Carrier(path, port, calls=1, timeout=25)
    await eventually(lambda: port_taken(port) or carrier.done.called)
    return carrier


@pytest_twisted.ensureDeferred
async def test_a_503_from_the_primary_fails_over_to_the_backup(tmp_path: Path) -> None:
    primary_port, backup_port = free_udp_port(), free_udp_port()
    primary = await refusing_carrier(tmp_path, primary_port, "503 Service Unavailable")
    backup = await carrier_uas(tmp_path, backup_port, name="backup")
    pbx = await pbx_with(tmp_path, trunk_config(primary_port, backups=[
        {"host": "127.0.0.1", "port": backup_port, "transport": "udp"}]))
    try:
        result = await caller(pbx, tmp_path, "1001", "9" + EXTERNAL, "udp", CALLER_HANGS_UP)
        assert result.ok, result.explain()
        for carrier in (primary, backup):
            done = await carrier.done
            assert done.ok, done.explain()
        await drained(pbx)
    finally:
        await primary.stop()
        await backup.stop()
        await pbx.stopService()


@pytest_twisted.ensureDeferred
async def test_busy_from_the_primary_is_the_answer_no_failover(tmp_path: Path) -> None:
    primary_port, backup_port = free_udp_port(), free_udp_port()
    primary = await refusing_carrier(tmp_path, primary_port, "486 Busy Here")
    backup = await carrier_uas(tmp_path, backup_port, name="backup")
    pbx = await pbx_with(tmp_path, trunk_config(primary_port, backups=[
        {"host": "127.0.0.1", "port": backup_port, "transport": "udp"}]))
    try:
        result = await caller(pbx, tmp_path, "1001", "9" + EXTERNAL, "udp", final_and_ack(486))
        assert result.ok, result.explain()
        done = await primary.done
        assert done.ok, done.explain()
        await drained(pbx)
        [cdr] = await cdrs(pbx)
        assert (cdr.trunk, cdr.sip_status, cdr.disposition) == ("carrier", 486, "busy")
    finally:
        await primary.stop()
        untouched = await backup.stop()
        await pbx.stopService()
    assert "INVITE" not in untouched.messages


@pytest_twisted.ensureDeferred
async def test_credentials_refused_by_the_carrier_is_403_to_the_caller(tmp_path: Path) -> None:
    port = free_udp_port()
    carrier = Carrier(scenario("carrier_uas_challenge_twice.xml", phone_dir(tmp_path, "carrier")), port,
                      calls=1, timeout=25)
    await eventually(lambda: port_taken(port) or carrier.done.called)
    pbx = await pbx_with(tmp_path, trunk_config(port))
    try:
        result = await caller(pbx, tmp_path, "1001", "9" + EXTERNAL, "udp", final_and_ack(403))
        assert result.ok, result.explain()
        done = await carrier.done
        assert done.ok, done.explain()  # one answer to the first challenge, none to the second
        await drained(pbx)
    finally:
        await carrier.stop()
        await pbx.stopService()
