"""How many concurrent G.711 calls one pbxd process relays (20 ms packets, 50 pps each way).

Run from the repository root: ``PYTHONPATH=. python bench/relay.py [--steps 100,250,...] [--seconds 5]``.

The relay (``MediaRelay`` on a ``PortPool``, as pbxd runs it) lives in this
process, its reactor in a thread; the phones are one child process that plays
both ends of every call from two UDP sockets, sending 172-byte RTP packets
(12 header + 160 payload) every 20 ms per direction, with call start times
spread evenly over the 20 ms. Each packet carries its send time
(CLOCK_MONOTONIC, shared by both processes), so the child measures one-way
latency through the relay and loss per direction. With two or more CPUs the
relay and the phones are pinned to different cores.

Per step it prints: calls, packets/s through the relay, loss, latency median
and 99th percentile, and the relay process's CPU (user+system, % of one
core, and CPU microseconds per relayed packet). A step passes with loss
under 0.1% and a median under 1 ms; stepping stops after the first step that
fails (``--all`` runs them all, to see how CPU grows). Loopback only;
everything stops by itself. ``--json FILE`` writes the rows too. The load
average is printed before and after: on a shared machine the relay's core is
not its own, and the highest passing step moves with what else runs there.

Two smaller measurements, steadier on a busy machine:
``--inproc`` times pbxd's packet path alone (the shared poller's wake-up:
epoll rounds, recvfrom, pbxd's Python, sendto) for N calls in this process,
as CPU microseconds per packet and the calls per core that implies;
``--syscalls`` times each way to move a datagram here (sendto, recvfrom,
reading until EAGAIN, recvmmsg and sendmmsg through ctypes).

Notes (what the numbers say, and the next step; measured 2026-11-23 on the
2-vCPU VM, see docs/media.md). The shared poller reads one datagram per ready
socket per round of polls, so a relayed packet costs one recvfrom and one
sendto (on loopback the sendto also runs the receiver's side of the stack) and
a share of the polls; reading each socket until EAGAIN had cost a failed
recvfrom per packet (~1 µs). ``--inproc``: about 5 CPU µs per packet, of which
the two system calls are ~2.5 and pbxd's Python ~2.5; the full run adds the
reactor and thread wake-ups (7-8 µs at 250 calls). ``--syscalls``: recvmmsg and
sendmmsg through ctypes cost more than they save here: with one datagram
queued (what a socket holds at 50 packets a second) recvmmsg is ~2 µs dearer
than recvfrom, with eight queued still dearer than eight recvfroms, and
sendmmsg of eight is ~0.2 µs per datagram cheaper than eight sendtos but only
batches datagrams of one socket, and a leg's socket sends one per wake-up.
What removes the per-packet system calls is forwarding latched streams in the
kernel. Tried for real in a private network namespace (``unshare -n``, nft
1.0.6): one nftables table with maps keyed by (phone address, phone port,
relay port) doing DNAT to the other phone and, through a conntrack mark, SNAT
to the other leg's port; one conntrack entry carries both directions. 1,000
calls went through with no loss, costing ~1 µs per packet more than the phones
sending to each other directly, in softirq rather than in pbxd. Not built into
pbxd yet: it needs the unlatched ports untracked (a notrack rule, or the first
packet's conntrack entry keeps the stream out of the NAT), the conntrack entry
deleted when a stream leaves the kernel (mute, record, play, call end, and
before a port is reused), counters for the RTP timeout and stats from
conntrack or nft, and DTMF events kept in user space.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import select
import socket
import struct
import subprocess
import sys
import threading
import time
from typing import Any

PACKET = struct.Struct("!BBHIIIqI")  # RTP header, then call index and send time (ns) in the payload
PAYLOAD_PAD = bytes(160 - 12)
INTERVAL = 0.02
HOST = "127.0.0.1"
# The phones poll without sleeping, so the relay's sends never have to wake them (a VM's
# cross-CPU wake-ups are costly and would be counted against the relay).
BUSY = bool(os.environ.get("BENCH_BUSY_PHONES"))


# -- the phones (child process) ---------------------------------------------------------------------


def phones(seconds: float, warmup: float) -> None:
    """Read the call list (JSON line of [a_port, b_port]) and play both ends; print a JSON result."""
    # By the machine's CPUs, not this process's: it inherits the relay's pinning to CPU 0.
    if (os.cpu_count() or 1) > 1 and not os.environ.get("NOPIN"):
        os.sched_setaffinity(0, {1})
    side_a, side_b = (socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(2))
    for sock in (side_a, side_b):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 << 20)
        sock.bind((HOST, 0))
        sock.setblocking(False)
    print(json.dumps([side_a.getsockname()[1], side_b.getsockname()[1]]), flush=True)
    while True:
        line = sys.stdin.readline()
        if not line:
            return
        calls = json.loads(line)
        print(json.dumps(_play(calls, side_a, side_b, seconds, warmup)), flush=True)


def _play(calls: list[list[int]], side_a: socket.socket, side_b: socket.socket, seconds: float,
          warmup: float) -> dict[str, Any]:
    count = len(calls)
    slots = 20  # start times spread over the 20 ms frame, 1 ms apart
    by_slot: list[list[int]] = [[] for _ in range(slots)]
    for index in range(count):
        by_slot[index % slots].append(index)
    destinations_a = [(HOST, a) for a, _ in calls]
    destinations_b = [(HOST, b) for _, b in calls]
    sequence = 0
    sent = received = 0
    latencies: list[int] = []
    start = time.monotonic()
    measure_from = start + warmup
    stop_at = measure_from + seconds
    tick = 0
    poller = select.epoll()
    poller.register(side_a.fileno(), select.EPOLLIN)
    poller.register(side_b.fileno(), select.EPOLLIN)
    send_a, send_b = side_a.sendto, side_b.sendto
    threshold = int(measure_from * 1e9)
    while True:
        due = start + tick * INTERVAL / slots
        now = time.monotonic()
        if now >= stop_at:
            break
        if now >= due:
            slot = tick % slots
            if slot == 0:
                sequence = (sequence + 1) & 0xFFFF
            stamp = time.monotonic_ns()
            for index in by_slot[slot]:
                head = PACKET.pack(0x80, 0, sequence, sequence * 160, index, index, stamp, 0)
                send_a(head + PAYLOAD_PAD, destinations_a[index])
                send_b(head + PAYLOAD_PAD, destinations_b[index])
            if stamp >= threshold:  # the same test the receiving side applies
                sent += 2 * len(by_slot[slot])
            tick += 1
            continue
        for fd, _ in poller.poll(0 if BUSY else max(0.0, due - now)):
            sock = side_a if fd == side_a.fileno() else side_b
            received += _drain(sock, latencies, measure_from)
    drain_until = time.monotonic() + 0.3
    while time.monotonic() < drain_until:
        for fd, _ in poller.poll(0.05):
            sock = side_a if fd == side_a.fileno() else side_b
            received += _drain(sock, latencies, measure_from)
    poller.close()
    latencies.sort()
    # Sent and received both count the packets stamped inside the window.
    return {
        "calls": count,
        "sent": sent,
        "received": received,
        "p50_us": latencies[len(latencies) // 2] / 1000 if latencies else None,
        "p99_us": latencies[len(latencies) * 99 // 100] / 1000 if latencies else None,
        "cpu": _cpu(),
    }


def _drain(sock: socket.socket, latencies: list[int], measure_from: float) -> int:
    got = 0
    threshold = int(measure_from * 1e9)
    while True:
        try:
            data = sock.recv(2048)
        except BlockingIOError:
            return got
        stamp = PACKET.unpack_from(data)[6]
        if stamp >= threshold:
            got += 1
            latencies.append(time.monotonic_ns() - stamp)


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# -- the relay (this process) -------------------------------------------------------------------------


class BareRelay:
    """A floor for comparison, not pbxd: a bare epoll loop forwarding between socket pairs.

    No Twisted, no latching, stats, DTMF or recording: what Python costs when it
    does nothing but move datagrams. ``connected`` sends with send() on sockets
    connected to the phone (no per-packet address), reads with recv().
    """

    def __init__(self, count: int, phone_a: int, phone_b: int, connected: bool) -> None:
        self.poller = select.epoll()
        self.handlers: dict[int, tuple[Any, Any]] = {}
        self.sockets: list[socket.socket] = []
        self.ports: list[list[int]] = []
        for _ in range(count):
            a, b = (socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(2))
            for sock in (a, b):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
                sock.bind((HOST, 0))
                sock.setblocking(False)
                self.sockets.append(sock)
            self.ports.append([a.getsockname()[1], b.getsockname()[1]])
            if connected:
                a.connect((HOST, phone_a))
                b.connect((HOST, phone_b))
                self.handlers[a.fileno()] = (a.recv, b.send)
                self.handlers[b.fileno()] = (b.recv, a.send)
            else:
                to_a, to_b = (HOST, phone_a), (HOST, phone_b)
                self.handlers[a.fileno()] = (a.recv, lambda data, send=b.sendto: send(data, to_b))
                self.handlers[b.fileno()] = (b.recv, lambda data, send=a.sendto: send(data, to_a))
            for sock in (a, b):
                self.poller.register(sock.fileno(), select.EPOLLIN)
        self.running = True
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        handlers = self.handlers
        while self.running:
            for fd, _ in self.poller.poll(0.1):
                receive, forward = handlers[fd]
                while True:
                    try:
                        data = receive(2048)
                    except OSError:
                        break
                    try:
                        forward(data)
                    except OSError:
                        pass

    def close(self) -> None:
        self.running = False
        self.thread.join()
        self.poller.close()
        for sock in self.sockets:
            sock.close()


def _load() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


# -- the packet path alone ------------------------------------------------------------------------


class _ReaderOnlyReactor:
    """Enough reactor for the shared poller: this benchmark calls its doRead itself."""

    def addReader(self, reader: Any) -> None:
        pass


def in_process(steps: list[int], seconds: float) -> None:
    """Per step: N calls, one 20 ms frame per call into leg A per round, one poller wake-up per round.

    Only the wake-up is timed (process CPU): the epoll rounds, recvfrom, pbxd's
    per-packet Python and the sendto (which on loopback also queues the datagram
    at the receiver). Not timed: the reactor's own epoll_wait and the thread
    wake-ups, which the full benchmark adds. Stepping N shows how the last, empty
    poll of a wake-up is shared out.
    """
    from twisted.internet.task import Clock

    from pbxd.media.ports import PortPool
    from pbxd.media.relay import MediaRelay, RelayOptions, SharedPoller
    from pbxd.sip.sdp import Codec

    if (os.cpu_count() or 1) > 1 and not os.environ.get("NOPIN"):
        os.sched_setaffinity(0, {0})
    print(f"load average before: {_load()}")
    print(f"{'calls':>6} {'packets':>8} {'us/packet':>9} {'calls/core':>10}")
    phone_a, phone_b = (socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(2))
    for sock in (phone_a, phone_b):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        sock.bind((HOST, 0))
        sock.setblocking(False)
    options = RelayOptions(bind_address=HOST, socket_buffer=4 << 20, timeout=None)
    codecs = [Codec(0, "PCMU", 8000)]
    for calls in steps:
        reactor, clock, pool = _ReaderOnlyReactor(), Clock(), PortPool(30000, 39999)
        poller = SharedPoller(reactor)
        SharedPoller._by_reactor[id(reactor)] = poller
        relays = [MediaRelay.open(reactor, pool, options, clock=clock) for _ in range(calls)]
        for relay in relays:
            relay.a.set_remote(phone_a.getsockname(), codecs)
            relay.b.set_remote(phone_b.getsockname(), codecs)
        destinations = [(HOST, relay.a.port) for relay in relays]
        spent = 0.0
        packets = forwarded = 0
        until = time.monotonic() + seconds
        sequence = 0
        while time.monotonic() < until:
            sequence += 1
            frame = PACKET.pack(0x80, 0, sequence & 0xFFFF, sequence * 160, 1, 0, 0, 0) + PAYLOAD_PAD
            for destination in destinations:
                phone_a.sendto(frame, destination)
            before = time.process_time()
            poller.doRead()
            spent += time.process_time() - before
            packets += calls
            while True:
                try:
                    phone_b.recv(2048)
                except BlockingIOError:
                    break
                forwarded += 1
        for relay in relays:
            relay.close()
        SharedPoller._by_reactor.pop(id(reactor), None)
        poller.epoll.close()
        per_packet = 1e6 * spent / packets
        lost = f"  ({packets - forwarded} not forwarded)" if forwarded != packets else ""
        print(f"{calls:>6} {packets:>8} {per_packet:>9.2f} {1e6 / per_packet / 100:>10.0f}{lost}", flush=True)
    print(f"load average after: {_load()}")


# -- what each socket call costs ------------------------------------------------------------------


def syscalls() -> None:
    """The cost of each way to move a datagram, per call and per datagram, on loopback.

    recvmmsg/sendmmsg go through ctypes (libc): the question is whether batching
    pays for the ctypes call and the copying out of ctypes buffers when a relay
    socket holds one datagram per wake-up (50 packets a second per socket).
    """
    import ctypes
    import ctypes.util

    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)

    class IoVec(ctypes.Structure):
        _fields_ = [("base", ctypes.c_void_p), ("length", ctypes.c_size_t)]

    class MsgHdr(ctypes.Structure):
        _fields_ = [("name", ctypes.c_void_p), ("namelen", ctypes.c_uint32), ("iov", ctypes.POINTER(IoVec)),
                    ("iovlen", ctypes.c_size_t), ("control", ctypes.c_void_p), ("controllen", ctypes.c_size_t),
                    ("flags", ctypes.c_int)]

    class MMsgHdr(ctypes.Structure):
        _fields_ = [("header", MsgHdr), ("length", ctypes.c_uint)]

    batch = 8
    buffers = [ctypes.create_string_buffer(2048) for _ in range(batch)]
    names = [ctypes.create_string_buffer(16) for _ in range(batch)]
    vectors = (IoVec * batch)()
    messages = (MMsgHdr * batch)()
    for index in range(batch):
        vectors[index].base, vectors[index].length = ctypes.addressof(buffers[index]), 2048
        header = messages[index].header
        header.name, header.namelen = ctypes.addressof(names[index]), 16
        header.iov, header.iovlen = ctypes.pointer(vectors[index]), 1
    recvmmsg, sendmmsg = libc.recvmmsg, libc.sendmmsg
    recvmmsg.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int, ctypes.c_void_p]
    sendmmsg.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int]
    dont_wait = socket.MSG_DONTWAIT

    receiver, sender = (socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(2))
    for sock in (receiver, sender):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        sock.bind((HOST, 0))
        sock.setblocking(False)
    target = receiver.getsockname()
    data = bytes(172)
    sources: dict[bytes, tuple[str, int]] = {}
    rounds = 20000
    string_at = ctypes.string_at

    def fill(count: int) -> None:
        for _ in range(count):
            sender.sendto(data, target)

    def received_mmsg(count: int) -> int:
        got = recvmmsg(receiver.fileno(), messages, batch, dont_wait, None)
        for index in range(got):
            _ = string_at(buffers[index], messages[index].length)  # the datagram as bytes, as recvfrom gives
            name = names[index].raw[:8]
            if name not in sources:  # sockaddr_in -> (host, port), cached per source
                sources[name] = (socket.inet_ntoa(name[4:8]), int.from_bytes(name[2:4], "big"))
        return got

    def empty() -> int:
        got = 0
        while True:
            try:
                receiver.recv(2048)
            except BlockingIOError:
                return got
            got += 1

    def sendto_loop() -> int:
        for _ in range(rounds):
            sender.sendto(data, target)
            if _ % 1000 == 999:
                empty()
        return rounds

    def recvfrom_one() -> int:
        for _ in range(rounds):
            sender.sendto(data, target)
            receiver.recvfrom(2048)
        return rounds

    def recvfrom_probe() -> int:
        for _ in range(rounds):
            sender.sendto(data, target)
            receiver.recvfrom(2048)
            try:
                receiver.recvfrom(2048)
            except BlockingIOError:
                pass
        return rounds

    def recvmmsg_one() -> int:
        for _ in range(rounds):
            sender.sendto(data, target)
            received_mmsg(1)
        return rounds

    def recvmmsg_eight() -> int:
        for _ in range(rounds // batch):
            fill(batch)
            received_mmsg(batch)
        return rounds // batch * batch

    send_vectors = (IoVec * batch)()
    send_messages = (MMsgHdr * batch)()
    address = ctypes.create_string_buffer(struct.pack("=H", socket.AF_INET) + struct.pack("!H", target[1])
                                          + socket.inet_aton(target[0]) + bytes(8), 16)
    payload = ctypes.create_string_buffer(data, len(data))
    for index in range(batch):
        send_vectors[index].base, send_vectors[index].length = ctypes.addressof(payload), len(data)
        header = send_messages[index].header
        header.name, header.namelen = ctypes.addressof(address), 16
        header.iov, header.iovlen = ctypes.pointer(send_vectors[index]), 1

    def sendmmsg_batch(size: int) -> Any:
        def run() -> int:
            for _ in range(rounds // size):
                sendmmsg(sender.fileno(), send_messages, size, 0)
                empty()
            return rounds // size * size
        return run

    # What sendmmsg costs is timed with the receiver's drain, so time that alone as well.
    def drain_only() -> int:
        for _ in range(rounds // batch):
            fill(batch)
            empty()
        return rounds // batch * batch

    cases = [
        ("sendto (+ a drain per 1000)", "1 datagram per call", sendto_loop, 1),
        ("sendto + recvfrom", "1 queued", recvfrom_one, 1),
        ("sendto + recvfrom + recvfrom (EAGAIN)", "1 queued, read until empty", recvfrom_probe, 1),
        ("sendto + recvmmsg (ctypes)", "1 queued", recvmmsg_one, 1),
        ("8 x sendto + recvmmsg (ctypes)", "8 queued", recvmmsg_eight, 1),
        ("8 x sendto + 9 x recv", "8 queued, read until empty", drain_only, 1),
        ("sendmmsg (ctypes) + 2 x recv", "1 per call", sendmmsg_batch(1), 1),
        ("sendmmsg (ctypes) + 9 x recv", "8 per call", sendmmsg_batch(batch), 1),
    ]
    if (os.cpu_count() or 1) > 1 and not os.environ.get("NOPIN"):
        os.sched_setaffinity(0, {0})
    print(f"load average before: {_load()}")
    print(f"{'calls':<40} {'queue':<28} {'us/datagram':>11}")
    for name, queue, run, _ in cases:
        before = time.process_time()
        count = run()
        spent = time.process_time() - before
        empty()
        print(f"{name:<40} {queue:<28} {1e6 * spent / count:>11.2f}", flush=True)
    print(f"load average after: {_load()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", default="100,250,500,750,1000,1250,1500")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--json", help="also write the rows to this file")
    parser.add_argument("--engine", choices=("pbxd", "pbxd-twisted", "bare", "bare-connected"), default="pbxd",
                        help="what relays: pbxd's MediaRelay (its sockets in one shared epoll set, or"
                             " a Twisted port each), or a bare epoll loop for comparison")
    parser.add_argument("--all", action="store_true", help="run every step, even after one fails")
    parser.add_argument("--burst", type=int, default=0,
                        help="datagrams read per wake-up at most (shared epoll set), per socket (Twisted ports)")
    parser.add_argument("--inproc", action="store_true",
                        help="CPU per relayed packet of pbxd's packet path alone, in this process: no reactor,"
                             " no second process, no scheduling (steady figures for before/after comparisons)")
    parser.add_argument("--syscalls", action="store_true",
                        help="what each socket call costs here, including recvmmsg/sendmmsg through ctypes")
    parser.add_argument("--direct", action="store_true",
                        help="no relay: the phones send to each other (the harness's own floor)")
    parser.add_argument("--phones", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phones:
        phones(args.seconds, args.warmup)
        return
    if args.syscalls:
        syscalls()
        return
    if args.inproc:
        in_process([int(step) for step in args.steps.split(",")], args.seconds)
        return

    import attrs
    from twisted.internet import reactor
    from twisted.internet.threads import blockingCallFromThread

    from pbxd.media.ports import PortPool
    from pbxd.media.relay import MediaRelay, RelayOptions, SharedPoller
    from pbxd.sip.sdp import Codec

    print(f"load average before: {_load()}")
    if (os.cpu_count() or 1) > 1 and not os.environ.get("NOPIN"):
        os.sched_setaffinity(0, {0})
    child = subprocess.Popen(
        [sys.executable, __file__, "--phones", "--seconds", str(args.seconds), "--warmup", str(args.warmup)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": "."},
    )
    assert child.stdin is not None and child.stdout is not None
    phone_a, phone_b = json.loads(child.stdout.readline())
    pool = PortPool(30000, 39999)
    options = RelayOptions(bind_address=HOST, socket_buffer=4 << 20, timeout=None)
    codecs = [Codec(0, "PCMU", 8000)]
    thread = threading.Thread(target=reactor.run, kwargs={"installSignalHandlers": False}, daemon=True)
    thread.start()

    engine_options = attrs.evolve(options, engine="twisted") if args.engine == "pbxd-twisted" else options

    def open_relays(count: int) -> list[MediaRelay]:
        relays = []
        for _ in range(count):
            relay = MediaRelay.open(reactor, pool, engine_options)
            if args.burst:
                if args.engine == "pbxd":
                    SharedPoller.of(reactor).budget = args.burst
                for leg in relay.legs:
                    leg._rtp.read_burst = args.burst  # Twisted ports only
            relay.a.set_remote((HOST, phone_a), codecs)
            relay.b.set_remote((HOST, phone_b), codecs)
            relays.append(relay)
        return relays

    def close_relays(relays: list[MediaRelay]) -> Any:
        from twisted.internet import defer

        return defer.gatherResults([relay.close() for relay in relays])

    rows = []
    print(f"{'calls':>6} {'pkt/s':>8} {'loss %':>8} {'p50 ms':>7} {'p99 ms':>7} {'relay CPU %':>11} "
          f"{'us/packet':>9} {'phones CPU %':>12}  result")
    for calls in [int(step) for step in args.steps.split(",")]:
        bare = None
        if args.direct:
            relays, ports = [], [[phone_b, phone_a]] * calls
        elif args.engine.startswith("bare"):
            relays, bare = [], BareRelay(calls, phone_a, phone_b, args.engine == "bare-connected")
            ports = bare.ports
        else:
            relays = blockingCallFromThread(reactor, open_relays, calls)
            ports = [[relay.a.port, relay.b.port] for relay in relays]
        before, wall = _cpu(), time.monotonic()
        child.stdin.write(json.dumps(ports) + "\n")
        child.stdin.flush()
        result = json.loads(child.stdout.readline())
        cpu = (_cpu() - before) / (time.monotonic() - wall)
        blockingCallFromThread(reactor, close_relays, relays)
        if bare is not None:
            bare.close()
        phones_cpu = result["cpu"] - rows[-1]["phones_cpu_total"] if rows else result["cpu"]
        loss = 1 - result["received"] / result["sent"] if result["sent"] else 1.0
        p50 = (result["p50_us"] or 0) / 1000
        passed = loss < 0.001 and result["p50_us"] is not None and p50 < 1.0
        row = {
            "calls": calls, "packets_per_second": result["sent"] / args.seconds, "loss": loss,
            "p50_ms": p50, "p99_ms": (result["p99_us"] or 0) / 1000, "relay_cpu": cpu,
            "phones_cpu": phones_cpu / (args.seconds + args.warmup + 0.3), "phones_cpu_total": result["cpu"],
            "cpu_us_per_packet": 1e6 * cpu * args.seconds / result["sent"] if result["sent"] else 0.0,
            "passed": passed,
        }
        rows.append(row)
        print(f"{calls:>6} {row['packets_per_second']:>8.0f} {100 * loss:>8.3f} {row['p50_ms']:>7.3f} "
              f"{row['p99_ms']:>7.3f} {100 * cpu:>11.1f} {row['cpu_us_per_packet']:>9.1f} "
              f"{100 * row['phones_cpu']:>12.1f}  "
              f"{'pass' if passed else 'FAIL'}", flush=True)
        if not passed and not args.all:
            break
    print(f"load average after: {_load()}")
    child.stdin.close()
    child.wait(timeout=10)
    reactor.callFromThread(reactor.stop)
    thread.join(timeout=5)
    if args.json:
        with open(args.json, "w") as out:
            json.dump(rows, out, indent=2)


if __name__ == "__main__":
    main()
