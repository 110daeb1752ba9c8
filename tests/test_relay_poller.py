"""The relay's shared epoll set over real UDP sockets on 127.0.0.1: rounds, fairness, the wake-up budget."""

from __future__ import annotations

import errno
import select
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from pbxd.media.relay import PolledSocket, SharedPoller

HOST = "127.0.0.1"

pytestmark = pytest.mark.skipif(not hasattr(select, "epoll"), reason="the shared poller is Linux only")


class ReaderOnlyReactor:
    """Just enough reactor for a poller: it is read when the test says so."""

    def __init__(self) -> None:
        self.readers: list[Any] = []

    def addReader(self, reader: Any) -> None:
        self.readers.append(reader)


@pytest.fixture
def sender() -> Iterator[socket.socket]:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((HOST, 0))
        yield sock


def polled_sockets(poller: SharedPoller, count: int) -> tuple[list[PolledSocket], list[tuple[int, bytes]]]:
    """``count`` sockets on the poller; what they are given lands in the returned list as (index, data)."""
    delivered: list[tuple[int, bytes]] = []
    sockets = []
    for index in range(count):
        polled = PolledSocket(poller, HOST, 0, 1 << 16)
        polled.deliver = lambda data, source, index=index: delivered.append((index, data))
        sockets.append(polled)
    return sockets, delivered


def queue(sender: socket.socket, polled: PolledSocket, payloads: list[bytes]) -> None:
    for payload in payloads:
        sender.sendto(payload, polled.socket.getsockname())


def test_one_wake_up_reads_every_queued_datagram_one_socket_at_a_time(sender: socket.socket) -> None:
    reactor = ReaderOnlyReactor()
    poller = SharedPoller(reactor)
    assert reactor.readers == [poller]
    (first, second), delivered = polled_sockets(poller, 2)
    queue(sender, first, [b"a1", b"a2", b"a3"])
    queue(sender, second, [b"b1"])
    poller.doRead()
    # Rounds: each ready socket gives one datagram per round, so the quiet socket's
    # packet does not wait behind the busy one's queue.
    assert [data for _, data in delivered][:2] in ([b"a1", b"b1"], [b"b1", b"a1"])
    assert [data for index, data in delivered if index == 0] == [b"a1", b"a2", b"a3"]
    assert len(delivered) == 4
    for polled in (first, second):
        polled.close()


def test_a_wake_up_stops_at_its_budget_and_the_next_one_goes_on(sender: socket.socket) -> None:
    poller = SharedPoller(ReaderOnlyReactor(), budget=3)
    (polled,), delivered = polled_sockets(poller, 1)
    queue(sender, polled, [b"%d" % n for n in range(5)])
    poller.doRead()
    assert [data for _, data in delivered] == [b"0", b"1", b"2"]
    poller.doRead()
    assert [data for _, data in delivered] == [b"0", b"1", b"2", b"3", b"4"]
    polled.close()


def test_a_socket_closed_by_an_earlier_packet_of_the_round_is_skipped(sender: socket.socket) -> None:
    poller = SharedPoller(ReaderOnlyReactor())
    sockets, delivered = polled_sockets(poller, 2)

    def close_both(data: bytes, source: Any) -> None:
        delivered.append((-1, data))
        for polled in sockets:
            polled.close()

    for polled in sockets:
        polled.deliver = close_both
        queue(sender, polled, [b"x"])
    poller.doRead()
    assert delivered == [(-1, b"x")]
    assert poller.sockets == {}


def test_a_failing_handler_does_not_stop_the_others(sender: socket.socket) -> None:
    poller = SharedPoller(ReaderOnlyReactor())
    (broken, working), delivered = polled_sockets(poller, 2)

    def fail(data: bytes, source: Any) -> None:
        raise RuntimeError("a bug in a packet handler")

    broken.deliver = fail
    queue(sender, broken, [b"bad"])
    queue(sender, working, [b"good"])
    poller.doRead()
    assert delivered == [(1, b"good")]
    for polled in (broken, working):
        polled.close()


def test_an_icmp_error_on_read_is_skipped(sender: socket.socket) -> None:
    # A send to a closed port makes the kernel report ECONNREFUSED on the sender's next read.
    poller = SharedPoller(ReaderOnlyReactor())
    (polled,), delivered = polled_sockets(poller, 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as gone:
        gone.bind((HOST, 0))
        nobody = gone.getsockname()
    polled.socket.connect(nobody)  # connected: loopback ICMP errors reach a connected socket
    polled.socket.send(b"to nobody")
    poller.doRead()
    assert delivered == []
    polled.socket.connect((HOST, sender.getsockname()[1]))
    sender.sendto(b"after", polled.socket.getsockname())
    poller.doRead()
    assert delivered == [(0, b"after")]
    polled.close()


class CountingEpoll:
    """The poller's epoll set, noting how many sockets each poll found ready."""

    def __init__(self, epoll: Any) -> None:
        self.epoll = epoll
        self.found: list[int] = []

    def poll(self, timeout: float, maxevents: int) -> list[tuple[int, int]]:
        ready = self.epoll.poll(timeout, maxevents)
        self.found.append(len(ready))
        return ready

    def __getattr__(self, name: str) -> Any:
        return getattr(self.epoll, name)


def test_a_socket_alone_two_rounds_running_is_read_until_empty(sender: socket.socket) -> None:
    poller = SharedPoller(ReaderOnlyReactor())
    (polled,), delivered = polled_sockets(poller, 1)
    counting = poller.epoll = CountingEpoll(poller.epoll)  # type: ignore[assignment]
    queue(sender, polled, [b"%d" % n for n in range(50)])
    poller.doRead()
    assert [data for _, data in delivered] == [b"%d" % n for n in range(50)]
    # One datagram in the first round; alone again in the second, so the rest then (not a poll each).
    assert counting.found == [1, 1, 0]
    polled.close()


def test_sockets_ready_together_are_not_drained(sender: socket.socket) -> None:
    poller = SharedPoller(ReaderOnlyReactor())
    (first, second), delivered = polled_sockets(poller, 2)
    counting = poller.epoll = CountingEpoll(poller.epoll)  # type: ignore[assignment]
    queue(sender, first, [b"a1", b"a2"])
    queue(sender, second, [b"b1", b"b2"])
    poller.doRead()
    assert counting.found == [2, 2, 0]
    assert sorted(data for _, data in delivered[:2]) == [b"a1", b"b1"]
    for polled in (first, second):
        polled.close()


def test_a_failing_read_is_logged_and_the_poller_goes_on(sender: socket.socket) -> None:
    poller = SharedPoller(ReaderOnlyReactor())
    (broken, working), delivered = polled_sockets(poller, 2)

    def read_fails(size: int) -> Any:
        raise OSError(errno.EIO, "an I/O error the relay does not expect")

    broken.receive = read_fails  # type: ignore[assignment]
    queue(sender, broken, [b"never read"])
    queue(sender, working, [b"good"])
    poller.doRead()  # raises nothing: the reactor would drop the poller, and all media with it
    assert delivered == [(1, b"good")]
    assert broken.socket.fileno() not in poller.sockets  # not read (and logged) again and again
    queue(sender, working, [b"still"])
    poller.doRead()
    assert delivered == [(1, b"good"), (1, b"still")]
    for polled in (broken, working):
        polled.close()
