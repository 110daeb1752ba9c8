"""What an ended call leaves behind: the call manager's dialog <-> leg maps are
emptied as legs end, and the call itself is not kept alive by its legs.

A leg's end looks up its own dialogs instead of walking every dialog of every
live call (that walk made each hang-up cost O(live calls)); these tests check
that nothing stays behind in either map, for an answered call and for a forked
call where the leg that lost had an early dialog of its own.

An ended leg's INVITE transaction outlives the call by 64*T1 (Timers L/M) and
holds the leg; the leg must not hold the call, or the whole call (media
session, timers, messages) stays in memory that long.
"""

from __future__ import annotations

import gc
import weakref
from pathlib import Path

import pytest
import pytest_twisted

from call_support import (
    CALLER_HANGS_UP,
    WAIT_FOR_BYE,
    callee,
    callee_ok,
    caller,
    drained,
    eventually,
    pbx_config,
    start_pbx,
)
from pbxd.service import PbxService
from sipp_runner import requires_sipp

pytestmark = [requires_sipp, pytest.mark.sipp]


@pytest_twisted.async_yield_fixture
async def pbx(tmp_path: Path):
    service = await start_pbx(pbx_config(tmp_path / "data"))
    yield service
    if service.running:
        await service.stopService()


def assert_maps_empty(pbx: PbxService) -> None:
    manager = pbx.calls.manager
    assert manager._leg_of == {}
    assert manager._dialogs_of == {}


@pytest_twisted.ensureDeferred
async def test_an_answered_call_leaves_no_dialog_of_a_leg(pbx: PbxService, tmp_path: Path) -> None:
    answering = await callee(pbx, tmp_path, "1002", "udp", "uas_answer.xml", hangup=WAIT_FOR_BYE)
    result = await caller(pbx, tmp_path, "1001", "1002", "udp", CALLER_HANGS_UP)
    assert result.ok, result.explain()
    done = await answering
    assert callee_ok(done), done.explain()
    await drained(pbx)
    assert_maps_empty(pbx)


@pytest_twisted.ensureDeferred
async def test_a_forked_call_leaves_no_early_dialog_of_the_losing_leg(pbx: PbxService, tmp_path: Path) -> None:
    ringing = await callee(pbx, tmp_path, "1002", "udp", "uas_ring.xml", name="ringing")
    answering = await callee(pbx, tmp_path, "1002", "udp", "uas_answer.xml", name="answering",
                             hangup=WAIT_FOR_BYE)
    manager = pbx.calls.manager
    bound: list[int] = []
    original = manager.bind_dialog

    def counting(dialog, leg):  # type: ignore[no-untyped-def]
        bound.append(id(dialog))
        original(dialog, leg)

    manager.bind_dialog = counting
    result = await caller(pbx, tmp_path, "1001", "1002", "udp", CALLER_HANGS_UP)
    assert result.ok, result.explain()
    for phone in (ringing, answering):
        done = await phone
        assert callee_ok(done), done.explain()
    # The caller's leg and the answering callee's had dialogs bound (the ringing
    # callee's too when its 180 came before the answer); every one is gone.
    assert len(set(bound)) >= 2
    await drained(pbx)
    assert_maps_empty(pbx)


def holders(obj: object, depth: int = 3) -> list[str]:
    """What refers to ``obj``, a few levels up: the failure message of a leak."""
    found: list[str] = []
    level = [obj]
    for _ in range(depth):
        above = [r for o in level for r in gc.get_referrers(o)
                 if r is not level and type(r).__name__ != "frame"][:8]
        found.extend(f"{type(r).__name__}: {repr(r)[:160]}" for r in above)
        level = above
    return found


@pytest_twisted.ensureDeferred
async def test_an_ended_call_is_not_kept_alive_by_its_legs_transactions(tmp_path: Path) -> None:
    # T1 three times the other tests': the legs' transactions stay 64*T1 = 9.6 s after
    # the call, time enough to see it freed while they are there, on a loaded machine too.
    pbx = await start_pbx(pbx_config(tmp_path / "data", sip={"timers": {"t1": 0.15, "t2": 1.2, "t4": 0.3}}))
    try:
        await check_an_ended_call_is_freed(pbx, tmp_path)
    finally:
        await pbx.stopService()


async def check_an_ended_call_is_freed(pbx: PbxService, tmp_path: Path) -> None:
    answering = await callee(pbx, tmp_path, "1002", "udp", "uas_answer.xml", hangup=WAIT_FOR_BYE)
    manager = pbx.calls.manager
    seen: list[weakref.ref] = []
    legs: list = []

    def watch(leg):  # type: ignore[no-untyped-def]
        legs.append(leg)
        if leg.call is not None and not any(ref() is leg.call for ref in seen):
            seen.append(weakref.ref(leg.call))
        started(leg)

    started = manager.leg_started
    manager.leg_started = watch
    result = await caller(pbx, tmp_path, "1001", "1002", "udp", CALLER_HANGS_UP)
    assert result.ok, result.explain()
    done = await answering
    assert callee_ok(done), done.explain()
    await eventually(lambda: not manager.calls)
    [call] = seen
    # Every leg has let go of the call ...
    assert legs and all(leg.is_ended and leg.call is None for leg in legs)

    def released() -> bool:
        gc.collect()
        return call() is None
    # ... which is freed (eventually: the end of a call may have work queued for a moment,
    # seen under load) while the legs' transactions are still there.
    try:
        await eventually(released, timeout=6.0)
    except AssertionError:
        raise AssertionError(f"the ended call is still referred to by {holders(call())}") from None
    assert len(pbx.sip.core.layer.transactions) > 0
