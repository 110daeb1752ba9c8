"""DTMF digits become ``dtmf`` call events on pbxd's event bus (issue 6: IVR and voicemail consume them).

Digits read from RFC 4733 telephone-events in the RTP are tested end to end in
tests/test_media_e2e.py; here: the event's document, and SIP INFO digits
(application/dtmf-relay and application/dtmf) through a call, streamed to a /ws
client, the INFOs still reaching the other party.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import pytest_twisted

from call_support import (
    ANSWERED, WAIT_FOR_BYE, callee, callee_answers, callee_ok, caller, caller_bye, cdrs, drained, in_dialog, pbx_config,
    start_pbx,
)
from management_support import READ_TOKEN, TOKENS, connect, next_message, serving
from pbxd.events import CALL, DtmfEvent
from sipp_runner import requires_sipp


def test_a_dtmf_event_document() -> None:
    event = DtmfEvent(1700000000.5, "abc@host", "leg-7", "caller", "#", 160, "info")
    assert event.type == "dtmf" and event.topic == CALL
    assert event.to_json() == {"topic": "call", "type": "dtmf", "time": 1700000000.5, "call_id": "abc@host",
                               "track_id": "leg-7", "side": "caller", "digit": "#", "duration": 160,
                               "source": "info"}


def test_a_dtmf_event_names_where_the_digit_came_from() -> None:
    with pytest.raises(ValueError):
        DtmfEvent(0.0, "c", "leg-1", "caller", "1", 0, "carrier-pigeon")


@requires_sipp
@pytest.mark.sipp
@pytest_twisted.ensureDeferred
async def test_info_digits_through_a_call_reach_a_ws_client_and_are_still_forwarded(tmp_path: Path) -> None:
    pbx = await start_pbx(pbx_config(tmp_path / "data", rtp={"port_min": 42400, "port_max": 42499,
                                                             "bind_address": "127.0.0.1"},
                                     http={"port": 0, "tokens": TOKENS}))
    web = serving(pbx)
    try:
        client, factory = await connect(f"{web.ws_base}/ws?token={READ_TOKEN}")
        web.clients.append(client)
        client.sendMessage(json.dumps({"subscribe": ["call"]}).encode())
        assert await next_message(factory) == {"subscribed": ["call"]}
        # The callee must get each INFO unchanged, digits or not (RFC 6086: pbxd only relays them).
        middle = (callee_answers("INFO", "Signal=5") + callee_answers("INFO", "^#")
                  + callee_answers("INFO", "Signal=16") + callee_answers("INFO", "Signal=x"))
        callee_done = await callee(pbx, tmp_path, "1002", "udp", "uas_answer.xml", hangup=middle + WAIT_FOR_BYE)
        after = (ANSWERED
                 + in_dialog(3, "INFO", "application/dtmf-relay", "Signal=5\nDuration=160")
                 + in_dialog(4, "INFO", "application/dtmf", "#")
                 + in_dialog(5, "INFO", "application/dtmf-relay", "Signal=16\nDuration=100")  # flash: no digit
                 + in_dialog(6, "INFO", "application/dtmf-relay", "Signal=x")  # malformed: no digit
                 + caller_bye(7))
        result = await caller(pbx, tmp_path, "1001", "1002", "udp", after)
        assert result.ok, result.explain()
        done = await callee_done
        assert callee_ok(done), done.explain()
        await cdrs(pbx)
        events = [await next_message(factory)]
        while events[-1]["type"] != "ended":
            events.append(await next_message(factory))
        assert [event["type"] for event in events] == ["ringing", "answered", "dtmf", "dtmf", "ended"]
        dtmf = events[2:4]
        assert [(e["digit"], e["duration"], e["side"], e["source"]) for e in dtmf] == [
            ("5", 160, "caller", "info"), ("#", 0, "caller", "info")]
        assert {e["call_id"] for e in dtmf} == {events[0]["call_id"]}
        assert len({e["track_id"] for e in dtmf}) == 1
        await drained(pbx)
    finally:
        await web.stop()
