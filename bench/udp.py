"""How many request/response round trips SipTransports carries on loopback.

Run from the repository root: ``PYTHONPATH=. python bench/udp.py [count]``.

Two SipTransports in one process (one reactor, one core): a client keeps a
window of OPTIONS requests outstanding, a server answers each with a 200.
Every round trip is two parses, one Via stamp, two serializations and four
socket operations, so the number is a floor for what one pbxd process moves.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from twisted.internet import defer, task
from twisted.internet.defer import Deferred

from pbxd.sip.ids import new_call_id, new_tag
from pbxd.sip.message import Request, SipMessage, make_response
from pbxd.sip.transaction import new_branch
from pbxd.transport import SipTransports, Target


def request(client: SipTransports, target: Target) -> Request:
    host, port = client.sent_by(target.transport, target.host)
    return Request(
        "OPTIONS",
        f"sip:{target.hostport}",
        [
            ("Via", f"SIP/2.0/{target.via_transport} {host}:{port};branch={new_branch()};rport"),
            ("Max-Forwards", "70"),
            ("From", f"<sip:bench@{host}>;tag={new_tag()}"),
            ("To", f"<sip:{target.hostport}>"),
            ("Call-ID", new_call_id(host)),
            ("CSeq", "1 OPTIONS"),
            ("User-Agent", "pbxd-bench"),
        ],
    )


async def round_trips(reactor: Any, transport: str, count: int, window: int) -> float:
    server, client = SipTransports(reactor), SipTransports(reactor)

    def answer(message: SipMessage, source: Target) -> None:
        if isinstance(message, Request):
            server.send_response(make_response(message, 200), source)

    server.receiver = answer
    port = server.listen(transport, "127.0.0.1", 0).getHost().port
    client.listen(transport, "127.0.0.1", 0)
    target = Target(transport, "127.0.0.1", port)
    done: Deferred[None] = Deferred()
    sent = answered = 0

    def send_one() -> None:
        nonlocal sent
        sent += 1
        client.send(request(client, target), target)

    def on_response(message: SipMessage, source: Target) -> None:
        nonlocal answered
        answered += 1
        if sent < count:
            send_one()
        elif answered == count:
            done.callback(None)

    client.receiver = on_response
    start = time.perf_counter()
    for _ in range(min(window, count)):
        send_one()
    try:
        await done.addTimeout(60, reactor)  # a lost datagram stalls the window
    except defer.TimeoutError:
        pass
    elapsed = time.perf_counter() - start
    lost = count - answered
    await client.stop()
    await server.stop()
    if lost:
        print(f"  ({transport}: {lost} lost)")
    return count / elapsed


async def main(reactor: Any, count: int) -> None:
    print(f"{'transport':<10} {'window':>6} {'round trips/s':>14}")
    for transport in ("udp", "tcp"):
        for window in (1, 32):
            rate = await round_trips(reactor, transport, count, window)
            print(f"{transport:<10} {window:>6} {rate:>14,.0f}")


if __name__ == "__main__":
    total = int(sys.argv[1]) if len(sys.argv) > 1 else 20_000
    task.react(lambda reactor: Deferred.fromCoroutine(main(reactor, total)))
