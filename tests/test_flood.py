"""A SIP flood from one loopback address while a phone on another registers and calls.

The attacker (127.0.0.1, loopback trust turned off) sends tens of thousands of
OPTIONS as fast as a thread can; pbxd bans it after its burst and drops the
rest before parsing, while a phone (sipp from 127.0.0.2) registers and calls
another (sipp on 127.0.0.3), which answers; the call is hung up. Then the
transaction table and the ban table empty on their timers (short SIP timers
and ban here), and the memory pbxd holds is back where it was: a second flood
leaves no more allocated than the first (tracemalloc, not RSS).
"""

from __future__ import annotations

import socket
import threading
import time
import tracemalloc
from pathlib import Path

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread

from call_support import CALLER_HANGS_UP, WAIT_FOR_BYE, callee, callee_ok, caller, cdrs, pbx_ladders
from pbxd.service import PbxService
from sipp_runner import requires_sipp
from test_registrar import pbx_config, port_of, sipp_register, start_pbx

pytestmark = requires_sipp

MIN_DATAGRAMS = 20_000
MAX_DATAGRAMS = 100_000
MAX_SECONDS = 5.0
BAN_TIME = 1.0


def flood(port: int, stop: threading.Event) -> tuple[int, float]:
    """Send OPTIONS from 127.0.0.1 until told to stop (at least MIN_DATAGRAMS), bounded."""
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender.bind(("127.0.0.1", 0))
    local = sender.getsockname()[1]
    start = time.monotonic()
    sent = 0
    try:
        while sent < MAX_DATAGRAMS and time.monotonic() - start < MAX_SECONDS:
            if sent >= MIN_DATAGRAMS and stop.is_set():
                break
            message = (
                f"OPTIONS sip:127.0.0.1:{port} SIP/2.0\r\n"
                f"Via: SIP/2.0/UDP 127.0.0.1:{local};branch=z9hG4bK-flood-{sent};rport\r\n"
                f"From: <sip:x@127.0.0.1>;tag={sent}\r\nTo: <sip:127.0.0.1>\r\n"
                f"Call-ID: flood-{sent}\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
            ).encode()
            try:
                sender.sendto(message, ("127.0.0.1", port))
            except OSError:
                continue  # a full send buffer: the attacker's loss
            sent += 1
    finally:
        sender.close()
    return sent, time.monotonic() - start


async def until(condition, timeout: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    deadline = reactor.seconds() + timeout
    while not condition():
        assert reactor.seconds() < deadline, "not reached in time"
        await deferLater(reactor, 0.05, lambda: None)


async def flood_while_registering(pbx: PbxService, tmp_path: Path, round_: int) -> tuple[int, float]:
    """Flood from 127.0.0.1 while 1002 registers from 127.0.0.2 and calls 1001 on 127.0.0.3."""
    workdir = tmp_path / f"round{round_}"
    # The callee is on TCP: under the flood its answers wait in pbxd's UDP socket queue
    # behind the attacker's datagrams, and over UDP pbxd would rightly retransmit the
    # INVITE to a sipp that has answered already (its out-of-call scenario then aborts
    # instead of answering again); over TCP nothing is retransmitted.
    answering = await callee(pbx, workdir, "1001", "tcp", "uas_answer.xml", hangup=WAIT_FOR_BYE,
                             local_ip="127.0.0.3")
    stop = threading.Event()
    attack = deferToThread(flood, port_of(pbx, "udp"), stop)
    try:
        await sipp_register(pbx, workdir, "udp", user="1002", password="secret-1002", local_ip="127.0.0.2")
        call = await caller(pbx, workdir, "1002", "1001", "udp", CALLER_HANGS_UP, register=False,
                            local_ip="127.0.0.2")
        assert call.ok, pbx_ladders(pbx) + "\n" + call.explain()
        answered = await answering
        assert callee_ok(answered), pbx_ladders(pbx) + "\n" + answered.explain()
    finally:
        stop.set()
    return await attack


@pytest_twisted.ensureDeferred
async def test_a_flood_is_banned_and_phones_still_register_and_call(tmp_path: Path) -> None:
    pbx = await start_pbx(pbx_config(
        tmp_path / "data",
        sip={"timers": {"t1": 0.05, "t2": 0.4, "t4": 0.2}},  # Timer J: 64*T1 = 3.2 s
        security={"trust_loopback": False,
                  "flood": {"requests_per_second": 100, "burst": 200, "ban_time": BAN_TIME}}))
    security, layer = pbx.security, pbx.sip.core.layer
    for round_ in (1, 2):
        (tmp_path / f"round{round_}").mkdir()
    try:
        tracemalloc.start()
        sent, seconds = await flood_while_registering(pbx, tmp_path, 1)
        assert sent >= MIN_DATAGRAMS
        assert (await cdrs(pbx, 1))[0].disposition == "answered"  # the call went through meanwhile
        # The attacker was banned (bans last BAN_TIME, so whether one is in force right
        # now is a matter of timing); the phones never were.
        assert security.flood.bans_total >= 1
        assert not security.flood.banned("127.0.0.2") and not security.flood.banned("127.0.0.3")
        # Only the attacker's burst (and what came after each short ban) got as far as a transaction.
        assert len(layer.transactions) < 1000
        assert security.counts["flood"] > 0.5 * pbx.sip.transports.counters.messages_in
        await until(lambda: len(layer.transactions) == 0 and security.flood.tracked == 0)
        baseline, _ = tracemalloc.get_traced_memory()

        sent2, seconds2 = await flood_while_registering(pbx, tmp_path, 2)
        assert [cdr.disposition for cdr in await cdrs(pbx, 2)] == ["answered", "answered"]
        await until(lambda: len(layer.transactions) == 0 and security.flood.tracked == 0)
        after, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        await pbx.stopService()
    print(f"\nflood: {sent} datagrams in {seconds:.2f}s ({sent / seconds:,.0f}/s), then {sent2} in {seconds2:.2f}s;"
          f" dropped before parsing {security.counts['flood']}, bans {security.flood.bans_total};"
          f" traced memory {baseline / 1e6:.2f} MB after the first flood, {after / 1e6:.2f} MB after the"
          f" second (peak {peak / 1e6:.2f} MB)")
    assert after - baseline < 1_000_000
