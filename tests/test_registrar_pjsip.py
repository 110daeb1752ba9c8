"""A real phone stack registers with SHA-256 digest: PJSIP (pjsua2), which, unlike
sipp 3.6.1 ("authentication must use MD5 or AKAv1-MD5"), answers SHA-256 challenges.

pjsua2 runs without threads of its own: its events are handled from a LoopingCall
on the reactor, so its callbacks run on the reactor thread. One Endpoint serves the
module (PJSIP allows one per process).
"""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer, reactor, task
from twisted.logger import globalLogPublisher

from pbxd.service import PbxService
from tests.test_registrar import AOR, port_of, start_pbx, stored_bindings, pbx_config

pj = pytest.importorskip("pjsua2")

TRANSPORT_TYPES = {"udp": pj.PJSIP_TRANSPORT_UDP, "tcp": pj.PJSIP_TRANSPORT_TCP}


class Phone(pj.Account):
    """A pjsua2 account that reports its registration states to a Deferred."""

    def __init__(self) -> None:
        super().__init__()
        self.states: list[tuple[int, bool]] = []
        self.waiting: defer.Deferred[tuple[int, bool]] | None = None

    def onRegState(self, prm: Any) -> None:  # noqa: N802 (pjsua2's name)
        state = (prm.code, self.getInfo().regIsActive)
        self.states.append(state)
        if self.waiting is not None and not self.waiting.called:
            self.waiting.callback(state)

    def next_state(self) -> defer.Deferred[tuple[int, bool]]:
        self.waiting = defer.Deferred()
        return self.waiting.addTimeout(15, reactor)


@pytest.fixture(scope="module")
def endpoint():  # type: ignore[no-untyped-def]
    ep = pj.Endpoint()
    ep.libCreate()
    config = pj.EpConfig()
    config.uaConfig.threadCnt = 0
    config.uaConfig.mainThreadOnly = True
    config.logConfig.level = 1
    config.logConfig.consoleLevel = 1
    ep.libInit(config)
    transports = {}
    for name, kind in TRANSPORT_TYPES.items():
        transport_config = pj.TransportConfig()
        transport_config.port = 0
        transport_config.boundAddress = "127.0.0.1"
        transports[name] = ep.transportCreate(kind, transport_config)
    ep.libStart()
    ep.audDevManager().setNullDev()
    loop = task.LoopingCall(ep.libHandleEvents, 0)
    loop.start(0.01)
    ep.pbxd_transports = transports
    yield ep
    loop.stop()
    # pjsua2 objects delete their C++ half when collected: that must happen
    # while the library is alive, or PJSIP asserts and aborts the interpreter.
    gc.collect()
    ep.libDestroy()


@pytest.mark.parametrize("transport", ["udp", "tcp"])
@pytest_twisted.ensureDeferred
async def test_pjsip_registers_with_sha256(endpoint, tmp_path: Path, transport: str) -> None:  # type: ignore[no-untyped-def]
    pbx: PbxService = await start_pbx(
        pbx_config(tmp_path / "data", auth={"algorithms": ["SHA-256", "MD5"]}))
    used: list[str] = []

    def observe(event: dict) -> None:
        if "algorithm" in event and event.get("log_namespace") == "pbxd.registrar.auth":
            used.append(event["algorithm"])

    globalLogPublisher.addObserver(observe)
    phone = Phone()
    try:
        config = pj.AccountConfig()
        config.idUri = "sip:1001@127.0.0.1"
        config.regConfig.registrarUri = (
            f"sip:127.0.0.1:{port_of(pbx, transport)};transport={transport}")
        config.regConfig.timeoutSec = 120
        config.sipConfig.transportId = endpoint.pbxd_transports[transport]
        config.sipConfig.authCreds.append(pj.AuthCredInfo("digest", "*", "1001", 0, "secret-1001"))
        registered = phone.next_state()
        phone.create(config)
        assert await registered == (200, True)
        assert used == ["SHA-256"]
        [row] = stored_bindings(pbx)
        assert (row["aor"], row["source_transport"]) == (AOR, transport)
        assert row["expires_at"] - row["received_at"] == 120
        # Unregistering (Expires: 0) removes the binding from memory and disk.
        unregistered = phone.next_state()
        phone.setRegistration(False)
        assert (await unregistered)[1] is False
        assert stored_bindings(pbx) == []
        assert pbx.registrar.location.lookup(AOR) == []
    finally:
        globalLogPublisher.removeObserver(observe)
        phone.shutdown()
        await pbx.stopService()
