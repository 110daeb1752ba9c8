"""SIPVicious (Debian's sipvicious: svmap, svwar, svcrack) against pbxd on loopback.

A scanner finds the server (svmap) but learns nothing more: no extension is
told apart from a missing one (svwar, REGISTER and INVITE), guessing a
password is cut off by the guard before the right word comes up (svcrack),
the guessing address is then blocked, and a real phone from another
loopback address still registers. With the default User-Agent block list the
scanner, which calls itself "friendly-scanner", is not even answered.
Every tool runs under ``timeout``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet.threads import deferToThread

from call_support import eventually
from pbxd.service import PbxService
from sip_peer import options, udp_peer
from sipp_runner import requires_sipp
from test_registrar import pbx_config, port_of, sipp_register, start_pbx

pytestmark = pytest.mark.skipif(shutil.which("svwar") is None, reason="sipvicious is not installed")

GUARD = {"max_failures": 5, "window": 60, "ban_time": 300}
PASSWORD = "secret-1001"


async def sv(tool: str, *args: str, limit: float = 30) -> str:
    """Run a SIPVicious tool, bounded in time; its stdout and stderr together."""
    command = ["timeout", "-k", "5", str(limit), tool, *args]
    result = await deferToThread(subprocess.run, command, capture_output=True, text=True, timeout=limit + 10,
                                 env={**os.environ, "PYTHONUNBUFFERED": "1"})
    return result.stdout + result.stderr


@pytest_twisted.async_yield_fixture
async def pbx(tmp_path: Path):
    service = await start_pbx(pbx_config(
        tmp_path / "data", auth={"guard": GUARD},
        # No block list: the point is what the scanner learns when it is answered.
        security={"user_agent_blocklist": []}))
    yield service
    await service.stopService()


def target(service: PbxService) -> list[str]:
    return ["-p", str(port_of(service, "udp")), "127.0.0.1"]


@pytest_twisted.ensureDeferred
async def test_svmap_finds_the_server(pbx: PbxService) -> None:
    out = await sv("svmap", *target(pbx))
    assert "127.0.0.1" in out and "pbxd/" in out


@pytest_twisted.ensureDeferred
async def test_the_default_block_list_leaves_the_scanner_unanswered(tmp_path: Path) -> None:
    service = await start_pbx(pbx_config(tmp_path / "data"))
    try:
        out = await sv("svmap", "-p", str(port_of(service, "udp")), "127.0.0.1")
        assert "pbxd/" not in out and "found nothing" in out
        assert service.security.counts["user_agent"] > 0
    finally:
        await service.stopService()


@pytest.mark.parametrize("method", ["REGISTER", "INVITE"])
@pytest_twisted.ensureDeferred
async def test_svwar_finds_no_extension(pbx: PbxService, method: str) -> None:
    out = await sv("svwar", "-m", method, "-e", "1000-1010", *target(pbx))
    # svwar's sanity check: a made-up extension is challenged like the rest.
    assert "authentication request for an unknown extension" in out and "found nothing" in out
    # Forced on, it takes that answer for "no such extension" everywhere.
    out = await sv("svwar", "--force", "-m", method, "-e", "1000-1010", *target(pbx))
    found = {line.split("|")[1].strip() for line in out.splitlines() if line.startswith("| 10")}
    assert found == set() and "found nothing" in out, out


@requires_sipp
@pytest_twisted.ensureDeferred
async def test_svcrack_is_cut_off_and_the_phone_still_registers(pbx: PbxService, tmp_path: Path) -> None:
    words = tmp_path / "words.txt"
    words.write_text("\n".join([*(f"guess-{n}" for n in range(20)), PASSWORD, "after"]) + "\n")
    # After the guard's ban svcrack is answered 403 for good and keeps asking:
    # its run is ended by the time limit, the right word never tried.
    out = await sv("svcrack", "--maximumtime", "3", "-u", "1001", "-d", str(words), *target(pbx), limit=6)
    assert PASSWORD not in out and "| 1001" not in out
    authenticator = pbx.registrar.authenticator
    assert authenticator.counts["failed"] == GUARD["max_failures"]
    assert authenticator.counts["blocked"] > 0
    assert authenticator.counts["ok"] == 0
    assert authenticator.guard.is_blocked("127.0.0.1", None)
    # Another extension's phone, from another address, is not locked out.
    await sipp_register(pbx, tmp_path, "udp", user="1002", password="secret-1002", local_ip="127.0.0.2")
    assert authenticator.counts["ok"] == 1


@requires_sipp
@pytest_twisted.ensureDeferred
async def test_with_action_drop_a_banned_cracker_gets_no_answer_at_all(tmp_path: Path) -> None:
    """``auth.guard.action: drop``: once the guard bans svcrack's address, the
    firewall drops what it sends before parsing; it learns nothing, not even a 403."""
    service = await start_pbx(pbx_config(
        tmp_path / "data", auth={"guard": {**GUARD, "action": "drop"}},
        security={"user_agent_blocklist": [], "trust_loopback": False}))
    try:
        words = tmp_path / "words.txt"
        words.write_text("\n".join([*(f"guess-{n}" for n in range(20)), PASSWORD]) + "\n")
        out = await sv("svcrack", "--maximumtime", "3", "-u", "1001", "-d", str(words),
                       *target(service), limit=6)
        assert PASSWORD not in out and "| 1001" not in out
        authenticator = service.registrar.authenticator
        assert authenticator.counts["failed"] == GUARD["max_failures"]
        assert authenticator.counts["blocked"] == 0  # never reached the authenticator again
        assert service.security.flood.banned("127.0.0.1")
        assert service.security.counts["flood"] > 0

        # A well-formed OPTIONS from the banned address: dropped, unanswered.
        peer, port = await udp_peer(port_of(service, "udp"))
        try:
            dropped = service.security.counts["flood"]
            peer.send(options(peer.port, "udp", "after-the-ban"))
            await eventually(lambda: service.security.counts["flood"] > dropped)
            assert peer.queue.pending == []
        finally:
            await port.stopListening()
        # Another address registers as usual.
        await sipp_register(service, tmp_path, "udp", user="1002", password="secret-1002",
                            local_ip="127.0.0.2")
        assert authenticator.counts["ok"] == 1
    finally:
        await service.stopService()
