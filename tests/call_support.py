"""What the call tests share: a pbxd on loopback, sipp phones that register, and the checks
that a call left exactly one CDR and nothing behind."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import re
import socket

import attrs
from twisted.internet import defer, reactor, task

from pbxd.config import parse_config
from pbxd.service import PbxService
from sipp_runner import SippResult, run_sipp, scenario

DOMAIN = "pbx.test"
PASSWORDS = {number: f"secret-{number}" for number in ("1001", "1002", "1003", "1004")}

# What the caller does once its INVITE (with credentials) is out; filled into uac_call.xml.
ANSWERED = """
  <recv response="100" optional="true"/>
  <recv response="180" optional="true"/>
  <recv response="200" rrs="true"/>
  <send>
    <![CDATA[
      ACK [next_url] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch];rport
      From: <sip:[user]@[domain]>;tag=[pid]SIPpTag09[call_number]
      [last_To:]
      Call-ID: [call_id]
      CSeq: 2 ACK
      Max-Forwards: 70
      Content-Length: 0

    ]]>
  </send>
"""

CALLER_HANGS_UP = ANSWERED + """
  <pause milliseconds="300"/>
  <send retrans="500">
    <![CDATA[
      BYE [next_url] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch];rport
      From: <sip:[user]@[domain]>;tag=[pid]SIPpTag09[call_number]
      [last_To:]
      Call-ID: [call_id]
      CSeq: 3 BYE
      Max-Forwards: 70
      Content-Length: 0

    ]]>
  </send>
  <recv response="200"/>
"""

def reinvite(cseq: int, direction: str, expect: str) -> str:
    """The caller re-INVITEs with ``a=<direction>`` and checks the answer has ``a=<expect>``."""
    return f"""
  <send retrans="500">
    <![CDATA[
      INVITE [next_url] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch];rport
      From: <sip:[user]@[domain]>;tag=[pid]SIPpTag09[call_number]
      [last_To:]
      Call-ID: [call_id]
      CSeq: {cseq} INVITE
      Contact: <sip:[user]@[local_ip]:[local_port];transport=[transport]>
      Max-Forwards: 70
      Content-Type: application/sdp
      Content-Length: [len]

      v=0
      o=caller 1 {cseq} IN IP[local_ip_type] [local_ip]
      s=-
      c=IN IP[media_ip_type] [media_ip]
      t=0 0
      m=audio [media_port] RTP/AVP 0
      a=rtpmap:0 PCMU/8000
      a={direction}

    ]]>
  </send>
  <recv response="100" optional="true"/>
  <recv response="200">
    <action>
      <ereg regexp="a={expect}" search_in="body" check_it="true" assign_to="answer{cseq}"/>
      <log message="answer {cseq}: [$answer{cseq}]"/>
    </action>
  </recv>
  <send>
    <![CDATA[
      ACK [next_url] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch];rport
      From: <sip:[user]@[domain]>;tag=[pid]SIPpTag09[call_number]
      [last_To:]
      Call-ID: [call_id]
      CSeq: {cseq} ACK
      Max-Forwards: 70
      Content-Length: 0

    ]]>
  </send>
"""


def answers(method: str) -> str:
    """A sipp fragment: wait for a ``method`` request and answer it 200 OK."""
    return f"""
  <recv request="{method}"/>
  <send>
    <![CDATA[
      SIP/2.0 200 OK
      [last_Via:]
      [last_From:]
      [last_To:]
      [last_Call-ID:]
      [last_CSeq:]
      Content-Length: 0

    ]]>
  </send>
"""


NOTIFY_ANSWERED = answers("NOTIFY")


def sipfrags(result: SippResult) -> list[int]:
    """The statuses the NOTIFYs a sipp phone received reported, in order."""
    found = []
    for block in result.messages.split("----------------------------------------------- "):
        if "message received" in block and re.search(r"^NOTIFY ", block, re.M):
            match = re.search(r"^SIP/2\.0 (\d{3}) ", block.split("\n\n", 1)[-1], re.M)
            if match:
                found.append(int(match.group(1)))
    return found


def refer(cseq: int, refer_to: str) -> str:
    """The caller REFERs its peer to ``refer_to`` and takes the 202."""
    return f"""
  <send retrans="500">
    <![CDATA[
      REFER [next_url] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch];rport
      From: <sip:[user]@[domain]>;tag=[pid]SIPpTag09[call_number]
      [last_To:]
      Call-ID: [call_id]
      CSeq: {cseq} REFER
      Contact: <sip:[user]@[local_ip]:[local_port];transport=[transport]>
      Refer-To: {refer_to}
      Referred-By: <sip:[user]@[domain]>
      Max-Forwards: 70
      Content-Length: 0

    ]]>
  </send>
  <recv response="202"/>
"""


def reinvite_refused(cseq: int, status: int, wait: bool = True) -> str:
    """The caller re-INVITEs (``wait``: and waits) for a ``status`` refusal, which it ACKs."""
    send = reinvite(cseq, "sendrecv", "sendrecv").split("<recv response=\"100\"")[0]
    if not wait:  # sipp holds a retransmitted request's scenario until an answer comes
        send = send.replace('<send retrans="500">', "<send>")
    answer = f"""
  <recv response="100" optional="true"/>
  <recv response="{status}"/>
  <send>
    <![CDATA[
      ACK [next_url] SIP/2.0
      [last_Via:]
      From: <sip:[user]@[domain]>;tag=[pid]SIPpTag09[call_number]
      [last_To:]
      Call-ID: [call_id]
      CSeq: {cseq} ACK
      Max-Forwards: 70
      Content-Length: 0

    ]]>
  </send>
"""
    return send + answer if wait else send


def in_dialog(cseq: int, method: str, content_type: str, body: str) -> str:
    """The caller sends ``method`` with a body in its dialog and waits for 200."""
    return f"""
  <send retrans="500">
    <![CDATA[
      {method} [next_url] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch];rport
      From: <sip:[user]@[domain]>;tag=[pid]SIPpTag09[call_number]
      To: <sip:[callee]@[domain]>[peer_tag_param]
      Call-ID: [call_id]
      CSeq: {cseq} {method}
      Contact: <sip:[user]@[local_ip]:[local_port];transport=[transport]>
      Max-Forwards: 70
      Content-Type: {content_type}
      Content-Length: [len]

{body}
    ]]>
  </send>
  <recv response="200"/>
"""


def callee_answers(method: str, check: str, body: str = "", content_type: str = "") -> str:
    """The callee takes ``method`` whose body must contain ``check`` and answers 200 (with ``body``)."""
    name = method.lower()
    typed = f"Content-Type: {content_type}\n      " if body else ""
    return f"""
  <recv request="{method}">
    <action>
      <ereg regexp="{check}" search_in="body" check_it="true" assign_to="{name}"/>
      <log message="{method} [${name}]"/>
    </action>
  </recv>
  <send>
    <![CDATA[
      SIP/2.0 200 OK
      [last_Via:]
      [last_From:]
      [last_To:]
      [last_Call-ID:]
      [last_CSeq:]
      Contact: <sip:[user]@[local_ip]:[local_port];transport=[transport]>
      {typed}Content-Length: [len]

{body}
    ]]>
  </send>
"""


def caller_bye(cseq: int) -> str:
    return f"""
  <send retrans="500">
    <![CDATA[
      BYE [next_url] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch];rport
      From: <sip:[user]@[domain]>;tag=[pid]SIPpTag09[call_number]
      To: <sip:[callee]@[domain]>[peer_tag_param]
      Call-ID: [call_id]
      CSeq: {cseq} BYE
      Max-Forwards: 70
      Content-Length: 0

    ]]>
  </send>
  <recv response="200"/>
"""


WAIT_FOR_BYE = answers("BYE")

CALLER_WAITS_FOR_BYE = ANSWERED + WAIT_FOR_BYE

# A callee answers one re-INVITE (an offer from whoever it is bridged with now).
CALLEE_TAKES_REINVITE = """
  <recv request="INVITE"/>
  <send>
    <![CDATA[
      SIP/2.0 200 OK
      [last_Via:]
      [last_From:]
      [last_To:]
      [last_Call-ID:]
      [last_CSeq:]
      Contact: <sip:[user]@[local_ip]:[local_port];transport=[transport]>
      Content-Type: application/sdp
      Content-Length: [len]

      v=0
      o=callee 1 2 IN IP[local_ip_type] [local_ip]
      s=-
      c=IN IP[media_ip_type] [media_ip]
      t=0 0
      m=audio [media_port] RTP/AVP 0
      a=rtpmap:0 PCMU/8000

    ]]>
  </send>
  <recv request="ACK"/>
"""

CALLEE_HANGS_UP = """
  <pause milliseconds="300"/>
  <send retrans="500">
    <![CDATA[
      BYE [$remote_contact] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch];rport
      From: [$local_uri];tag=[pid]SIPpTag01[call_number]
      To: [$remote_uri];[$remote_tag]
      Call-ID: [call_id]
      CSeq: 1 BYE
      Max-Forwards: 70
      Content-Length: 0

    ]]>
  </send>
  <recv response="200"/>
"""


def final_and_ack(status: int, ringing: bool = False) -> str:
    """The caller waits for ``status`` (after a 180 when ``ringing``) and ACKs it."""
    ring = '<recv response="180"/>' if ringing else '<recv response="180" optional="true"/>'
    return f"""
  <recv response="100" optional="true"/>
  {ring}
  <recv response="{status}"/>
  <send>
    <![CDATA[
      ACK sip:[callee]@[domain]:[remote_port] SIP/2.0
      [last_Via:]
      From: <sip:[user]@[domain]>;tag=[pid]SIPpTag09[call_number]
      [last_To:]
      Call-ID: [call_id]
      CSeq: 2 ACK
      Max-Forwards: 70
      Content-Length: 0

    ]]>
  </send>
"""


CALLER_CANCELS = """
  <recv response="100" optional="true"/>
  <recv response="180"/>
  <send>
    <![CDATA[
      CANCEL sip:[callee]@[domain]:[remote_port] SIP/2.0
      [last_Via:]
      From: <sip:[user]@[domain]>;tag=[pid]SIPpTag09[call_number]
      To: <sip:[callee]@[domain]>
      Call-ID: [call_id]
      CSeq: 2 CANCEL
      Max-Forwards: 70
      Content-Length: 0

    ]]>
  </send>
  <recv response="200"/>
  <recv response="487"/>
  <send>
    <![CDATA[
      ACK sip:[callee]@[domain]:[remote_port] SIP/2.0
      [last_Via:]
      From: <sip:[user]@[domain]>;tag=[pid]SIPpTag09[call_number]
      [last_To:]
      Call-ID: [call_id]
      CSeq: 2 ACK
      Max-Forwards: 70
      Content-Length: 0

    ]]>
  </send>
"""


def pbx_config(data_dir: Path, **sections: Any):  # type: ignore[no-untyped-def]
    raw: dict[str, Any] = {
        "data_dir": str(data_dir),
        "sip": {
            "domains": [DOMAIN],
            "listen": [
                {"transport": "udp", "host": "127.0.0.1", "port": 0},
                {"transport": "tcp", "host": "127.0.0.1", "port": 0},
            ],
            # Short timers so that transactions drain within a test (64*T1 = 3.2 s).
            "timers": {"t1": 0.05, "t2": 0.4, "t4": 0.1},
        },
        "extensions": [{"number": n, "password": p} for n, p in PASSWORDS.items()],
        "http": {"port": 0},  # the HTTP API on a port the OS picks
    }
    for name, values in sections.items():
        raw[name] = {**raw.get(name, {}), **values} if isinstance(values, dict) else values
    return parse_config(raw)


async def start_pbx(config) -> PbxService:  # type: ignore[no-untyped-def]
    service = PbxService(config, reactor)
    # Timer D (32 s, not in the config) shortened like T1, so that an INVITE client
    # transaction that got a 487 or 486 drains within the test.
    layer = service.sip.core.layer
    layer.settings = attrs.evolve(layer.settings, timer_d=0.5)
    service.privilegedStartService()
    service.startService()
    await service.registrar.when_ready()
    await service.store.when_open()
    return service


def port_of(service: PbxService, transport: str) -> int:
    return next(listener.port for listener in service.sip.transports.listeners if listener.transport == transport)


def registered(pbx: PbxService, user: str, count: int = 1) -> defer.Deferred[None]:
    """Fires once ``user`` has ``count`` bindings (at once if it has)."""
    location = pbx.registrar.location
    assert location is not None
    done: defer.Deferred[None] = defer.Deferred()

    def check(*_: object) -> None:
        if not done.called and len(location.lookup_user(user)) >= count:
            location.observers.remove(check)
            done.callback(None)

    location.observers.append(check)
    check()
    return done


# sipp's exit code after the internal command stop_now, which a callee's out-of-call
# scenario runs once its call is done.
STOPPED_BY_SCENARIO = 97


def callee_ok(result: SippResult) -> bool:
    """The callee's out-of-call scenario ran to its end, and nothing unexpected came."""
    events = [line for line in result.errors.splitlines()
              if line.strip() and "events occurred" not in line and "using the out-of-call scenario" not in line]
    return result.exit_code == STOPPED_BY_SCENARIO and not events


def pbx_ladders(pbx: PbxService) -> str:
    """What pbxd itself sent and received for every call it still holds: for failure messages."""
    capture = pbx.sip.capture
    lines = []
    for call_id in list(capture._calls):
        for message in capture.ladder(call_id) or []:
            arrow = "<-" if message.direction == "in" else "->"
            lines.append(f"{message.time:.3f} {call_id[:12]} {arrow} {message.peer} {message.first_line}")
    return "pbxd's own view:\n" + "\n".join(sorted(set(lines)))


def free_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1 just now (for sipp's -p)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.1", 0))
            port = udp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind(("127.0.0.1", port))
                except OSError:
                    continue
        return port


def phone_dir(tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    path.mkdir(exist_ok=True)
    return path


async def callee(pbx: PbxService, tmp_path: Path, user: str, transport: str, ooc: str, *,
                 name: str | None = None, hold_ms: int = 15000, local_ip: str | None = None,
                 **fills: object) -> defer.Deferred[SippResult]:
    """Start a sipp phone that registers ``user`` and answers with ``ooc`` (a uas_*.xml);
    returns once it is registered, with the Deferred of its result."""
    workdir = phone_dir(tmp_path, name or f"callee-{user}")
    before = len(pbx.registrar.location.lookup_user(user))  # type: ignore[union-attr]
    ooc_path = scenario(ooc, workdir, **fills)
    result = defer.Deferred.fromCoroutine(run_sipp(
        scenario("uas_register.xml", workdir, hold=hold_ms), "127.0.0.1", port_of(pbx, transport),
        transport=transport, keys={"user": user, "domain": DOMAIN}, timeout=30,
        # sipp's default port (5060 when free) is shared with every other sipp on the
        # machine, and a callee's port is what pbxd calls: take one of the kernel's choosing.
        extra=("-oocsf", str(ooc_path), "-au", user, "-ap", PASSWORDS[user], "-p", str(free_port())),
        local_ip=local_ip,
    ))
    waiting = registered(pbx, user, before + 1)
    first = await defer.DeferredList([waiting, result], fireOnOneCallback=True, fireOnOneErrback=True)
    if first[1] == 1:  # sipp ended before registering
        raise AssertionError("the callee did not register:\n" + result.result.explain())
    return result


async def caller(pbx: PbxService, tmp_path: Path, user: str, callee_number: str, transport: str, after: str,
                 *, name: str | None = None, register: bool = True,
                 headers: str = "Subject: a call", local_ip: str | None = None) -> SippResult:
    """Register ``user`` (register.xml), then call ``callee_number`` (uac_call.xml) and do ``after``."""
    workdir = phone_dir(tmp_path, name or f"caller-{user}")
    port = port_of(pbx, transport)
    if register:
        registration = await run_sipp(
            scenario("register.xml", workdir, expect=200,
                     contact="<sip:[user]@[local_ip]:[local_port];transport=[transport]>"),
            "127.0.0.1", port, transport=transport,
            keys={"user": user, "domain": "127.0.0.1", "expires": "300"},
            extra=("-au", user, "-ap", PASSWORDS[user]), local_ip=local_ip)
        assert registration.ok, registration.explain()
    return await run_sipp(
        scenario("uac_call.xml", workdir, after=after, headers=headers), "127.0.0.1", port,
        transport=transport, keys={"user": user, "domain": DOMAIN, "callee": callee_number}, timeout=30,
        extra=("-au", user, "-ap", PASSWORDS[user], "-auth_uri", f"{callee_number}@{DOMAIN}:{port}"),
        local_ip=local_ip,
    )


async def eventually(check, timeout: float = 10.0, step: float = 0.05):  # type: ignore[no-untyped-def]
    """Poll ``check()`` on the reactor until it returns something true (bounded)."""
    waited = 0.0
    while True:
        value = check()
        if value:
            return value
        if waited >= timeout:
            raise AssertionError(f"not true after {timeout}s: {check.__doc__ or check}")
        await task.deferLater(reactor, step, lambda: None)
        waited += step


async def cdrs(pbx: PbxService, count: int = 1):  # type: ignore[no-untyped-def]
    """The CDRs once there are ``count`` of them (oldest first)."""
    store = pbx.store.store
    found: list = []

    async def read() -> None:
        found[:] = list(reversed(await store.list_cdrs()))

    for _ in range(200):
        await read()
        if len(found) >= count:
            return found
        await task.deferLater(reactor, 0.05, lambda: None)
    raise AssertionError(f"{len(found)} CDRs, wanted {count}")


def leftovers(pbx: PbxService) -> dict[str, int]:
    manager = pbx.calls.manager
    return {
        "calls": len(manager.calls),
        "legs": len(manager.legs),
        "dialogs": len(manager.dialogs),
        "transactions": len(pbx.sip.core.layer.transactions),
        "transaction timers": len(pbx.sip.core.layer.wheel),
    }


async def drained(pbx: PbxService, timeout: float = 10.0) -> None:
    """Wait until no call, leg, dialog, transaction or transaction timer is left (bounded)."""

    def empty() -> bool:
        """no call, leg, dialog, transaction or transaction timer left"""
        return not any(leftovers(pbx).values())

    try:
        await eventually(empty, timeout)
    except AssertionError:
        raise AssertionError(f"left behind: {leftovers(pbx)}") from None


def sip_messages(result: SippResult, direction: str, first_line: str, cseq_method: str | None = None) -> list[str]:
    """The SIP messages a sipp phone ``direction`` ("sent" or "received") whose first line
    matches the regex ``first_line`` (and whose CSeq names ``cseq_method``), in order;
    retransmissions included. Line ends are sipp's (CRLF)."""
    found = []
    for block in re.split(r"^-{47} .*$", result.messages, flags=re.M):
        head, _, message = block.lstrip("\r\n").partition("\n")
        if f"message {direction}" not in head:
            continue
        message = message.lstrip("\r\n")
        if not re.match(first_line, message):
            continue
        if cseq_method is not None and not re.search(rf"^CSeq:\s*\d+\s+{cseq_method}\s*$", message, re.M | re.I):
            continue
        found.append(message)
    return found
