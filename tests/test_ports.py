"""The relay port pool: even ports, FIFO reuse, no leaks, exhaustion."""

from __future__ import annotations

import pytest
from twisted.internet.error import CannotListenError

from pbxd.media.ports import PortPool, PortsExhausted


def test_even_ports_with_room_for_rtcp() -> None:
    pool = PortPool(20000, 20007)
    assert pool.size == 4
    ports = [pool.allocate() for _ in range(4)]
    assert ports == [20000, 20002, 20004, 20006]
    with pytest.raises(PortsExhausted):
        pool.allocate()
    # an odd top leaves out the pair that would not fit
    assert PortPool(20000, 20006).size == 3
    assert PortPool(20001, 20006).size == 2


def test_released_ports_are_reused_last() -> None:
    pool = PortPool(20000, 20006)
    first = pool.allocate()
    pool.release(first)
    assert [pool.allocate() for _ in range(3)] == [20002, 20004, 20000]


def test_release_twice_is_an_error_and_pool_returns_to_full() -> None:
    pool = PortPool(30000, 30100)
    taken = [pool.allocate() for _ in range(30)]
    for port in taken:
        pool.release(port)
    assert pool.available == pool.size and not pool.in_use
    with pytest.raises(ValueError):
        pool.release(taken[0])
    with pytest.raises(ValueError):
        pool.release(12345)


def test_bind_skips_ports_in_use_elsewhere() -> None:
    pool = PortPool(20000, 20010)

    def listen(port: int) -> str:
        if port < 20004:
            raise CannotListenError("", port, OSError(98, "Address already in use"))
        return f"bound {port}"

    assert pool.bind(listen) == (20004, "bound 20004")
    assert pool.in_use == {20004}
    assert pool.available == pool.size - 1


def test_bind_gives_up_and_leaks_nothing() -> None:
    pool = PortPool(20000, 20010)

    def refuse(port: int) -> None:
        raise CannotListenError("", port, OSError(98, "Address already in use"))

    with pytest.raises(PortsExhausted):
        pool.bind(refuse)
    assert pool.available == pool.size
