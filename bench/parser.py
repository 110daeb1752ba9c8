"""Micro-benchmark of the SIP message parser and serializer (pbxd.sip.message).

Run from the repository root (no arguments needed; it takes about 30 s):

    python bench/parser.py                  # the table
    python bench/parser.py --quick          # fewer repeats, for a smoke run
    python bench/parser.py --instructions   # instructions per message (valgrind)

For each message it prints parse and serialize times in microseconds (the
median over the repeats, each repeat timing many calls with ``timeit``) and
the messages per second the medians allow.

Parse columns, because parsed URIs and addresses are cached:

- warm: the same datagram parsed again and again, as with retransmissions and
  the requests and responses of one dialog, which repeat From, To, Contact and
  the Request-URI;
- cold: every message has its own Call-ID, tags, branch and user names, more
  of them than the caches hold, so every URI and address is parsed afresh.

Parse cold+read also reads what the transaction and dialog layers read of
every message (top Via branch and sent-by, CSeq, Call-ID, From and To tags,
the Request-URI, Contacts), since the parser leaves some of that for later:
the column a server's cost per message follows.

Serialize is ``Message.to_bytes()`` of a parsed message: warm is one message
again and again, cold each of the distinct messages once.

Times are CPU time of this process (``time.process_time``), not wall time,
so that other work on a shared machine disturbs them less; compare before and
after on the same machine all the same.

``--instructions`` counts instead of timing, which other load on the machine
does not change: for each column it runs this script twice under valgrind's
callgrind tool (``--run``), once doing the column's work on ``--count``
messages and once only its set-up (building the datagrams, parsing what is to
be serialized), and prints the difference per message. Garbage collection
counts in; a run varies by about 1%.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
import timeit
from typing import Callable

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))

from pbxd.sip.headers import ADDRESS_CACHE_SIZE  # noqa: E402
from pbxd.sip.message import Message, Request, parse_message  # noqa: E402
from pbxd.sip.uri import URI_CACHE_SIZE  # noqa: E402

SDP = (
    "v=0\r\n"
    "o=alice 2890844526 2890844526 IN IP4 192.0.2.101\r\n"
    "s=-\r\n"
    "c=IN IP4 192.0.2.101\r\n"
    "t=0 0\r\n"
    "m=audio 49172 RTP/AVP 0 8 101\r\n"
    "a=rtpmap:101 telephone-event/8000\r\n"
)

INVITE = (
    "INVITE sip:bob{n}@biloxi.example.com SIP/2.0\r\n"
    "Via: SIP/2.0/UDP 192.0.2.101:5060;branch=z9hG4bK776asd{n};rport\r\n"
    "Max-Forwards: 70\r\n"
    "To: Bob <sip:bob{n}@biloxi.example.com>\r\n"
    "From: Alice <sip:alice{n}@atlanta.example.com>;tag=1928301774{n}\r\n"
    "Call-ID: a84b4c76e66710{n}@192.0.2.101\r\n"
    "CSeq: 314159 INVITE\r\n"
    "Contact: <sip:alice{n}@192.0.2.101:5060>\r\n"
    "Allow: INVITE, ACK, CANCEL, BYE, OPTIONS\r\n"
    "Content-Type: application/sdp\r\n"
    f"Content-Length: {len(SDP)}\r\n"
    "\r\n" + SDP
)

OK_200 = (
    "SIP/2.0 200 OK\r\n"
    "Via: SIP/2.0/UDP 192.0.2.101:5060;branch=z9hG4bK776asd{n};rport=5060;received=192.0.2.101\r\n"
    "Record-Route: <sip:192.0.2.1;lr>\r\n"
    "To: Bob <sip:bob{n}@biloxi.example.com>;tag=a6c85cf{n}\r\n"
    "From: Alice <sip:alice{n}@atlanta.example.com>;tag=1928301774{n}\r\n"
    "Call-ID: a84b4c76e66710{n}@192.0.2.101\r\n"
    "CSeq: 314159 INVITE\r\n"
    "Contact: <sip:bob{n}@192.0.2.4>\r\n"
    "Content-Type: application/sdp\r\n"
    f"Content-Length: {len(SDP)}\r\n"
    "\r\n" + SDP
)

REGISTER = (
    "REGISTER sip:registrar.biloxi.example.com SIP/2.0\r\n"
    "Via: SIP/2.0/UDP 192.0.2.4:5060;branch=z9hG4bKnashds{n};rport\r\n"
    "Max-Forwards: 70\r\n"
    "To: Bob <sip:bob{n}@biloxi.example.com>\r\n"
    "From: Bob <sip:bob{n}@biloxi.example.com>;tag=456248{n}\r\n"
    "Call-ID: 843817637684230{n}@998sdasdh09\r\n"
    "CSeq: 1826 REGISTER\r\n"
    "Contact: <sip:bob{n}@192.0.2.4:5060;transport=udp>;expires=3600\r\n"
    "Expires: 7200\r\n"
    "Content-Length: 0\r\n"
    "\r\n"
)

OPTIONS = (
    "OPTIONS sip:pbx.example.com SIP/2.0\r\n"
    "Via: SIP/2.0/UDP 192.0.2.7:5060;branch=z9hG4bKping{n}\r\n"
    "Max-Forwards: 70\r\n"
    "To: <sip:pbx.example.com>\r\n"
    "From: <sip:monitor{n}@example.com>;tag=ping{n}\r\n"
    "Call-ID: ping{n}@192.0.2.7\r\n"
    "CSeq: 1 OPTIONS\r\n"
    "Content-Length: 0\r\n"
    "\r\n"
)

MESSAGES = {"INVITE": INVITE, "200 OK": OK_200, "REGISTER": REGISTER, "OPTIONS": OPTIONS}


def time_per_call(call: Callable[[], object], number: int, repeat: int) -> tuple[float, float]:
    """(min, median) microseconds per call."""
    runs = timeit.repeat(call, number=number, repeat=repeat, timer=time.process_time)
    per_call = [run / number * 1e6 for run in runs]
    return min(per_call), statistics.median(per_call)


def time_each(call: Callable[[bytes], object], items: list, repeat: int) -> tuple[float, float]:
    """(min, median) microseconds per item, each item handled once per run."""

    def run_all() -> None:
        for item in items:
            call(item)

    runs = timeit.repeat(run_all, number=1, repeat=repeat, timer=time.process_time)
    per_call = [run / len(items) * 1e6 for run in runs]
    return min(per_call), statistics.median(per_call)


def parse_and_read(data: bytes) -> None:
    """Parse, then read what the transaction and dialog layers read."""
    message = parse_message(data)
    via = message.via
    via.branch, via.sent_by, message.cseq.method, message.call_id  # noqa: B018
    message.from_addr.tag, message.to_addr.tag, message.contacts  # noqa: B018
    if isinstance(message, Request):
        message.ruri  # noqa: B018


def timing_table(quick: bool) -> None:
    number, repeat = (2000, 3) if quick else (20000, 7)
    cold_repeat = max(5, repeat // 2)
    # More distinct messages than the caches hold, so that none stays cached.
    distinct = 2 * max(URI_CACHE_SIZE, ADDRESS_CACHE_SIZE) + 1
    print(f"load average {os.getloadavg()[0]:.2f}; µs are medians of CPU time per message")
    print(
        f"{'message':<9} {'bytes':>5}  {'parse warm':>10}  {'parse cold':>10}  {'cold+read':>10}"
        f"  {'ser. warm':>9}  {'ser. cold':>9}  {'msgs/s parse warm/cold/cold+read':>34}"
        f"  {'msgs/s serialize warm/cold':>27}"
    )
    for name, template in MESSAGES.items():
        data = template.format(n="").encode()
        message = parse_message(data)
        warm = time_per_call(lambda: parse_message(data), number, repeat)
        # Distinct message sets for each cold column, so none warms the next.
        datagrams = [template.format(n=i).encode() for i in range(distinct)]
        cold = time_each(parse_message, datagrams, cold_repeat)
        datagrams = [template.format(n=distinct + i).encode() for i in range(distinct)]
        read = time_each(parse_and_read, datagrams, cold_repeat)
        serialize = time_per_call(message.to_bytes, number, repeat)
        messages = [parse_message(d) for d in datagrams]
        serialize_cold = time_each(Message.to_bytes, messages, cold_repeat)
        print(
            f"{name:<9} {len(data):>5}  {warm[1]:>7.1f} µs  {cold[1]:>7.1f} µs"
            f"  {read[1]:>7.1f} µs"
            f"  {serialize[1]:>6.1f} µs  {serialize_cold[1]:>6.1f} µs"
            f"  {1e6 / warm[1]:>10,.0f} /{1e6 / cold[1]:>9,.0f} /{1e6 / read[1]:>9,.0f}"
            f"  {1e6 / serialize[1]:>12,.0f} /{1e6 / serialize_cold[1]:>11,.0f}"
        )


COLUMNS = ("cold", "cold+read", "warm", "serialize")


def run_column(column: str, name: str, count: int, setup_only: bool) -> None:
    """Do one column's work on ``count`` messages (or only its set-up), for valgrind."""
    template = MESSAGES[name]
    # Warm up imports, regexes and the header name cache with other messages.
    for i in range(50):
        parse_and_read(template.format(n=10**6 + i).encode())
    if column == "warm":
        data = template.format(n="").encode()
        parse_message(data)
        for _ in range(0 if setup_only else count):
            parse_message(data)
        return
    datagrams = [template.format(n=i).encode() for i in range(count)]
    if column == "serialize":
        messages = [parse_message(d) for d in datagrams]
        if not setup_only:
            for message in messages:
                message.to_bytes()
    elif not setup_only:
        handle = parse_message if column == "cold" else parse_and_read
        for data in datagrams:
            handle(data)


def count_instructions(column: str, name: str, count: int) -> float:
    """Instructions per message of a column: its run minus its set-up, under callgrind."""
    collected = []
    for setup_only in (False, True):
        command = [
            "valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
            sys.executable, os.path.abspath(__file__), "--run", column,
            "--message", name, "--count", str(count),
        ] + (["--setup-only"] if setup_only else [])
        result = subprocess.run(command, capture_output=True, text=True, check=True)
        found = re.search(r"Collected : (\d+)", result.stderr)
        if found is None:
            raise SystemExit(f"no instruction count from valgrind:\n{result.stderr[-2000:]}")
        collected.append(int(found.group(1)))
    return (collected[0] - collected[1]) / count


def instructions_table(names: list[str], count: int) -> None:
    if shutil.which("valgrind") is None:
        raise SystemExit("--instructions needs valgrind (Debian: apt-get install valgrind)")
    print(f"instructions per message (callgrind), {count} distinct messages per column")
    print(f"{'message':<9}" + "".join(f"  {column:>10}" for column in COLUMNS))
    for name in names:
        counts = [count_instructions(column, name, count) for column in COLUMNS]
        print(f"{name:<9}" + "".join(f"  {c:>10,.0f}" for c in counts))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats, for a smoke run")
    parser.add_argument(
        "--instructions", action="store_true",
        help="count instructions per message with valgrind instead of timing",
    )
    parser.add_argument(
        "--message", choices=list(MESSAGES), action="append",
        help="with --instructions: the message(s) to count (default INVITE)",
    )
    parser.add_argument(
        "--count", type=int, default=1000, help="with --instructions: messages per run (1000)"
    )
    parser.add_argument("--run", choices=COLUMNS, help=argparse.SUPPRESS)  # one valgrind run
    parser.add_argument("--setup-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    names = args.message or ["INVITE"]
    if args.run:
        run_column(args.run, names[0], args.count, args.setup_only)
    elif args.instructions:
        instructions_table(names, args.count)
    else:
        timing_table(args.quick)


if __name__ == "__main__":
    main()
