"""Recording a real call end to end: sipp phones talk through pbxd (each plays a second of noise
from a pcap this test writes: the caller PCMA, the callee PCMU), a route or the HTTP router says
``record: true``, and the WAV is decoded and compared with what each phone sent. The CDR
names the file and its size, /console streams it and the CDR push (a Klein receiver on
loopback) carries it as ``media_audio-0``. The first test runs pbxd with a relative
``data_dir`` from another working directory, as a default install does."""

from __future__ import annotations

import json
import socket
import struct
import wave
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import pytest_twisted
import treq
from klein import Klein
from twisted.internet import defer, reactor
from twisted.web.server import Site

from call_support import (
    CALLER_HANGS_UP, DOMAIN, PASSWORDS, WAIT_FOR_BYE, callee_ok, cdrs, drained, pbx_config, phone_dir, port_of,
    registered, start_pbx,
)
from management_support import READ_TOKEN, TOKENS, bearer
from pbxd.media import g711
from pbxd.media.rtp import RtpPacket
from pbxd.service import PbxService
from sipp_runner import SippResult, requires_sipp, run_sipp, scenario

pytestmark = [requires_sipp, pytest.mark.sipp]

RATE = 8000
HOST = "127.0.0.1"
SECONDS = 1.0


def sound(seed: int, amplitude: int) -> np.ndarray:
    """A second of noise: no stretch of it repeats, so where it lies in the file is unambiguous."""
    return np.random.default_rng(seed).integers(-amplitude, amplitude, round(SECONDS * RATE)).astype(np.int16)


def write_pcap(path: Path, samples: np.ndarray, law: str, ssrc: int) -> np.ndarray:
    """A pcap of RTP packets (20 ms each, paced 20 ms apart) carrying ``samples`` in ``law``, for
    sipp's play_pcap_audio; returns the samples as the far side decodes them."""
    decode, encode, _ = g711.CODECS[law]
    payload_type = 0 if law == "pcmu" else 8
    records = []
    for index, start in enumerate(range(0, len(samples), 160)):
        rtp = RtpPacket(payload_type, index, 8000 + start, ssrc, encode(samples[start:start + 160]).tobytes()).to_bytes()
        udp = struct.pack(">HHHH", 5000, 6000, 8 + len(rtp), 0) + rtp
        ip = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), index, 0, 64, 17, 0,
                         socket.inet_aton(HOST), socket.inet_aton(HOST))
        frame = b"\x00" * 12 + b"\x08\x00" + ip + udp  # Ethernet, IPv4, UDP
        micros = index * 20_000
        records.append(struct.pack("<IIII", 1_700_000_000 + micros // 1_000_000, micros % 1_000_000,
                                   len(frame), len(frame)) + frame)
    path.write_bytes(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1) + b"".join(records))
    return decode(encode(samples))


def media_port() -> int:
    """A free UDP port on loopback, a multiple of 4 (sipp's media takes the ports above too)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind((HOST, 0))
            port = probe.getsockname()[1]
        if port % 4 == 0 and port < 65000:
            return port


def play(pcap: Path) -> str:
    return f'<nop><action><exec play_pcap_audio="{pcap}"/></action></nop>\n'


class Receiver:
    """The CDR push's receiver (and, for the second test, the HTTP router)."""

    app = Klein()

    def __init__(self, route_answer: dict[str, Any] | None = None) -> None:
        self.route_answer = route_answer
        self.pushes: list[dict[str, Any]] = []
        self.pushed: defer.Deferred[None] = defer.Deferred()

    @app.route("/cdr", methods=["POST"])
    def cdr(self, request):  # type: ignore[no-untyped-def]
        self.pushes.append({"content_type": request.getHeader("content-type"),
                            "fields": {k.decode(): v for k, v in request.args.items()}})
        if not self.pushed.called:
            self.pushed.callback(None)
        return b"{}"

    @app.route("/route", methods=["POST"])
    def route(self, request):  # type: ignore[no-untyped-def]
        request.setHeader("content-type", "application/json")
        return json.dumps(self.route_answer).encode()


async def recorded_call(pbx: PbxService, tmp_path: Path) -> tuple[np.ndarray, np.ndarray, SippResult, SippResult]:
    """1002 answers and plays a second of PCMU; 1001 calls it and plays a second of PCMA.
    Returns what each side's sound decodes to and the two phones' results."""
    port = port_of(pbx, "udp")
    callee_dir, caller_dir = phone_dir(tmp_path, "callee"), phone_dir(tmp_path, "caller")
    callee_said = write_pcap(callee_dir / "said.pcap", sound(1002, 5000), "pcmu", 0x2222)
    caller_said = write_pcap(caller_dir / "said.pcap", sound(1001, 7000), "pcma", 0x1111)

    # The caller offers PCMA and PCMU, the callee answers both, PCMU first: each may send
    # either (RFC 3264 §6.1), and each sends its own.
    answer = scenario("uas_answer.xml", callee_dir, hangup=play(callee_dir / "said.pcap") + WAIT_FOR_BYE)
    answer.write_text(answer.read_text().replace("m=audio [media_port] RTP/AVP 0", "m=audio [media_port] RTP/AVP 0 8")
                      .replace("a=rtpmap:0 PCMU/8000", "a=rtpmap:0 PCMU/8000\n      a=rtpmap:8 PCMA/8000"))
    callee_done = defer.Deferred.fromCoroutine(run_sipp(
        scenario("uas_register.xml", callee_dir, hold=15000), HOST, port,
        keys={"user": "1002", "domain": DOMAIN}, timeout=30,
        extra=("-oocsf", str(answer), "-au", "1002", "-ap", PASSWORDS["1002"], "-mp", str(media_port()))))
    await registered(pbx, "1002").addTimeout(10, reactor)

    registration = await run_sipp(
        scenario("register.xml", caller_dir, expect=200,
                 contact="<sip:[user]@[local_ip]:[local_port];transport=[transport]>"),
        HOST, port, keys={"user": "1001", "domain": "127.0.0.1", "expires": "300"},
        extra=("-au", "1001", "-ap", PASSWORDS["1001"]))
    assert registration.ok, registration.explain()
    # The caller talks for a second, then a little more, and hangs up.
    call = scenario("uac_call.xml", caller_dir, headers="Subject: recorded", after=CALLER_HANGS_UP.replace(
        '<pause milliseconds="300"/>', play(caller_dir / "said.pcap") + '<pause milliseconds="1600"/>'))
    call.write_text(call.read_text().replace("m=audio [media_port] RTP/AVP 0", "m=audio [media_port] RTP/AVP 8 0")
                    .replace("a=rtpmap:0 PCMU/8000", "a=rtpmap:8 PCMA/8000\n      a=rtpmap:0 PCMU/8000"))
    result = await run_sipp(
        call, HOST, port, keys={"user": "1001", "domain": DOMAIN, "callee": "1002"}, timeout=30,
        extra=("-au", "1001", "-ap", PASSWORDS["1001"], "-auth_uri", f"1002@{DOMAIN}:{port}",
               "-mp", str(media_port())))
    return caller_said, callee_said, result, await callee_done


def channels(path: Path) -> np.ndarray:
    with wave.open(str(path), "rb") as wav:
        assert (wav.getnchannels(), wav.getsampwidth(), wav.getframerate()) == (2, 2, RATE)
        data = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2")
    return data.reshape(-1, 2)


def assert_holds_exactly(channel: np.ndarray, said: np.ndarray, name: str) -> None:
    """``said`` is in ``channel`` sample for sample, once, and the rest is silence."""
    windows = np.lib.stride_tricks.sliding_window_view(channel, 160)
    starts = np.flatnonzero((windows == said[:160]).all(axis=1))
    assert len(starts) == 1, f"{name}: the start of what was sent is found {len(starts)} times"
    start = int(starts[0])
    assert (channel[start:start + len(said)] == said).all(), f"{name}: the audio differs from what was sent"
    assert not channel[:start].any() and not channel[start + len(said):].any(), f"{name}: sound outside what was sent"


async def check_recording(pbx: PbxService, receiver: Receiver, caller_said: np.ndarray,
                          callee_said: np.ndarray) -> None:
    [cdr] = await cdrs(pbx)
    assert cdr.disposition == "answered" and cdr.recording_path
    assert cdr.recording_path == f"recordings/{cdr.call_id.replace('@', '_')}.wav"  # relative to data_dir
    path = pbx.config.data_dir / cdr.recording_path
    audio = path.read_bytes()
    assert cdr.recording_size == len(audio)
    frames = channels(path)
    # The call lasted about the caller's 1.6 s pause (plus set-up): so does the file.
    assert 1.5 * RATE <= len(frames) <= 4.0 * RATE
    assert_holds_exactly(frames[:, 0], caller_said, "caller (left)")
    assert_holds_exactly(frames[:, 1], callee_said, "callee (right)")

    await receiver.pushed.addTimeout(10, reactor)
    [push] = receiver.pushes
    assert push["content_type"].startswith("multipart/form-data; boundary=")
    assert list(push["fields"]) == ["calllog.json", "media_audio-0"]
    calllog = json.loads(push["fields"]["calllog.json"][0])
    assert (calllog["call_id"], calllog["recording_file"], calllog["recording_size"]) == (
        cdr.call_id, cdr.recording_path, len(audio))
    assert push["fields"]["media_audio-0"] == [audio]

    url = f"http://127.0.0.1:{pbx.http.address[1]}/console/call-records/{cdr.id}/recording"
    response = await treq.get(url, headers=bearer(READ_TOKEN))
    assert response.code == 200 and await treq.content(response) == audio


@pytest_twisted.ensureDeferred
async def test_a_route_with_record_true_records_both_sides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    receiver = Receiver()
    listening = reactor.listenTCP(0, Site(receiver.app.resource()), interface=HOST)
    # A relative data_dir, as the default: pbxd starts in tmp_path, then the working
    # directory moves before the call is recorded, streamed and pushed.
    monkeypatch.chdir(tmp_path)
    config = pbx_config(
        Path("pbxd-data"), rtp={"port_min": 43000, "port_max": 43099, "bind_address": HOST},
        http={"port": 0, "tokens": TOKENS},
        # Every call to an extension recorded: the built-in extensions route, replaced by name.
        routes=[{"name": "extensions", "match": {"extension": True}, "destination": "{called}", "record": True}],
        cdr={"push_url": f"http://{HOST}:{listening.getHost().port}/cdr"})
    pbx = await start_pbx(config)
    monkeypatch.chdir(phone_dir(tmp_path, "elsewhere"))
    try:
        assert pbx.config.data_dir == tmp_path / "pbxd-data"
        caller_said, callee_said, result, other = await recorded_call(pbx, tmp_path)
        assert result.ok, result.explain()
        assert callee_ok(other), other.explain()
        await check_recording(pbx, receiver, caller_said, callee_said)
        assert not (tmp_path / "elsewhere" / "pbxd-data").exists()
        await drained(pbx)
    finally:
        await pbx.stopService()
        await listening.stopListening()


@pytest_twisted.ensureDeferred
async def test_the_http_router_answering_record_true_records_both_sides(tmp_path: Path) -> None:
    receiver = Receiver({"action": "forward", "targets": ["1002"], "record": True})
    listening = reactor.listenTCP(0, Site(receiver.app.resource()), interface=HOST)
    base = f"http://{HOST}:{listening.getHost().port}"
    pbx = await start_pbx(pbx_config(
        tmp_path / "data", rtp={"port_min": 43100, "port_max": 43199, "bind_address": HOST},
        http={"port": 0, "tokens": TOKENS}, http_router={"url": f"{base}/route", "timeout": 2.0},
        cdr={"push_url": f"{base}/cdr"}))
    try:
        caller_said, callee_said, result, other = await recorded_call(pbx, tmp_path)
        assert result.ok, result.explain()
        assert callee_ok(other), other.explain()
        await check_recording(pbx, receiver, caller_said, callee_said)
        await drained(pbx)
    finally:
        await pbx.stopService()
        await listening.stopListening()
