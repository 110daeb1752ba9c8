"""Micro-benchmark of SDP handling on the call path (pbxd.sip.sdp).

Run from the repository root (no arguments needed; it takes a few seconds):

    python bench/sdp.py            # the table
    python bench/sdp.py --quick    # fewer repeats, for a smoke run

Every relayed offer and answer is parsed, rewritten for the relay (ICE
stripped, c= and ports replaced, o= version bumped) and written out once per
leg. For two bodies (a plain desk-phone offer and a softphone offer with ICE)
the table gives the microseconds of each step (min and median over the
repeats) and how many offers per second the median of the whole round allows.
"""

from __future__ import annotations

import os
import statistics
import sys
import timeit
from typing import Callable

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))

from pbxd.sip.sdp import bump_version, common_codecs, parse_sdp, rewrite_media, strip_ice  # noqa: E402


def body(*lines: str) -> bytes:
    return "".join(f"{line}\r\n" for line in lines).encode()


DESK_PHONE = body(
    "v=0",
    "o=- 20518 0 IN IP4 192.168.1.50",
    "s=SDP data",
    "c=IN IP4 192.168.1.50",
    "t=0 0",
    "m=audio 11780 RTP/AVP 0 8 18 9 101",
    "a=rtpmap:0 PCMU/8000",
    "a=rtpmap:8 PCMA/8000",
    "a=rtpmap:18 G729/8000",
    "a=fmtp:18 annexb=no",
    "a=rtpmap:9 G722/8000",
    "a=rtpmap:101 telephone-event/8000",
    "a=fmtp:101 0-15",
    "a=ptime:20",
    "a=sendrecv",
)

SOFTPHONE = body(
    "v=0",
    "o=- 3917383733 3917383733 IN IP4 192.168.1.20",
    "s=pjmedia",
    "b=AS:84",
    "t=0 0",
    "a=X-nat:0",
    "m=audio 4000 RTP/AVP 96 9 8 0 101",
    "c=IN IP4 192.168.1.20",
    "b=TIAS:64000",
    "a=rtcp:4001 IN IP4 192.168.1.20",
    "a=sendrecv",
    "a=rtpmap:96 opus/48000/2",
    "a=fmtp:96 useinbandfec=1",
    "a=rtpmap:9 G722/8000",
    "a=rtpmap:8 PCMA/8000",
    "a=rtpmap:0 PCMU/8000",
    "a=rtpmap:101 telephone-event/8000",
    "a=fmtp:101 0-16",
    "a=ice-ufrag:8hhY",
    "a=ice-pwd:asd88fgpdd777uzjYhagZg",
    "a=candidate:1 1 UDP 2130706431 192.168.1.20 4000 typ host",
    "a=candidate:2 1 UDP 1694498815 203.0.113.7 4000 typ srflx raddr 192.168.1.20 rport 4000",
    "a=candidate:1 2 UDP 2130706430 192.168.1.20 4001 typ host",
    "a=end-of-candidates",
    "a=rtcp-mux",
)

CAPABILITIES = ["PCMU", "PCMA", "G722", "telephone-event"]


def relay_round(data: bytes) -> bytes:
    sdp = parse_sdp(data)
    if not common_codecs(sdp.media[0], CAPABILITIES):
        raise AssertionError("no codec in common")
    return bump_version(rewrite_media(strip_ice(sdp), "203.0.113.1", [30000])).to_bytes()


def measure(call: Callable[[], object], repeats: int, number: int) -> tuple[float, float]:
    times = [t / number * 1e6 for t in timeit.repeat(call, repeat=repeats, number=number)]
    return min(times), statistics.median(times)


def main() -> None:
    quick = "--quick" in sys.argv
    repeats, number = (3, 200) if quick else (9, 2000)
    print(f"{'body':<11} {'step':<22} {'min µs':>8} {'median µs':>10} {'per s':>9}")
    for name, data in (("desk phone", DESK_PHONE), ("softphone", SOFTPHONE)):
        parsed = parse_sdp(data)
        rewritten = rewrite_media(strip_ice(parsed), "203.0.113.1", [30000])
        steps: list[tuple[str, Callable[[], object]]] = [
            ("parse", lambda: parse_sdp(data)),
            ("codecs + common", lambda: common_codecs(parsed.media[0], CAPABILITIES)),
            ("strip ICE + rewrite", lambda: rewrite_media(strip_ice(parsed), "203.0.113.1", [30000])),
            ("bump + serialize", lambda: bump_version(rewritten).to_bytes()),
            ("whole relay round", lambda: relay_round(data)),
        ]
        for step, call in steps:
            best, median = measure(call, repeats, number)
            rate = f"{1e6 / median:9.0f}" if step == "whole relay round" else ""
            print(f"{name:<11} {step:<22} {best:8.1f} {median:10.1f} {rate:>9}")


if __name__ == "__main__":
    main()
