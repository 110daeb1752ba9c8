"""RTP statistics (RFC 3550 A.1, A.3, A.8) and the E-model MOS."""

from __future__ import annotations

import pytest

from pbxd.media.rtp import ReportBlock
from pbxd.media.stats import RemoteReport, StreamStats, mos, mos_from_r, r_factor


def feed(stats: StreamStats, sequences: list[int], ssrc: int = 1, jitter: float = 0.0) -> None:
    for index, sequence in enumerate(sequences):
        arrival = index * 0.02 + (jitter if index % 2 else 0.0)
        stats.update(sequence, index * 160, ssrc, arrival, 172)


def test_clean_stream() -> None:
    stats = StreamStats()
    feed(stats, list(range(100, 150)))
    assert (stats.packets, stats.octets, stats.expected, stats.lost) == (50, 8600, 50, 0)
    assert stats.jitter_ms == pytest.approx(0.0, abs=1e-9)


def test_loss_across_a_wrap() -> None:
    stats = StreamStats()
    feed(stats, [65530, 65531, 65533, 65535, 0, 2, 3])
    assert stats.expected == 10 and stats.lost == 3 and stats.extended_max == 65536 + 3
    assert stats.loss_fraction == pytest.approx(0.3)


def test_duplicates_and_reordering_are_not_loss() -> None:
    stats = StreamStats()
    feed(stats, [1, 2, 4, 3, 3, 5])
    assert stats.expected == 5 and stats.lost == 0


def test_new_ssrc_starts_counting_over() -> None:
    stats = StreamStats()
    feed(stats, [10, 11, 13])
    feed(stats, [5000, 5001], ssrc=2)
    assert stats.ssrc == 2 and stats.expected == 2 and stats.lost == 0 and stats.packets == 5


def test_restart_of_the_sequence_after_two_packets() -> None:
    stats = StreamStats()
    feed(stats, [100, 101, 40000, 40001, 40002])
    assert stats.expected == 2 and stats.lost == 0  # 40000 only announced the restart (A.1)


def test_jitter_follows_a8_with_the_clock_rate() -> None:
    stats = StreamStats()
    feed(stats, list(range(200)), jitter=0.004)  # every other packet 4 ms late
    # each transit difference is 32 timestamp units at 8 kHz; J converges to 32 -> 4 ms
    assert stats.jitter_ms == pytest.approx(4.0, rel=0.01)
    wide = StreamStats()
    for index in range(200):
        wide.update(index, index * 320, 1, index * 0.02 + (0.004 if index % 2 else 0), 100, clock_rate=16000)
    assert wide.jitter_ms == pytest.approx(4.0, rel=0.01)


def test_event_packets_leave_jitter_alone() -> None:
    stats = StreamStats()
    feed(stats, list(range(10)))
    stats.update(10, 0, 1, 5.0, 16, clock_rate=None)
    assert stats.jitter_ms == 0 and stats.packets == 11


def test_remote_report_from_rtcp_block() -> None:
    block = ReportBlock(1, 64, 12, 100, 160, 0, 0)
    report = RemoteReport.from_block(block, round_trip_ms=30.0)
    assert report == RemoteReport(0.25, 12, 20.0, 30.0)


def test_mos_scale() -> None:
    assert mos_from_r(93.2) == pytest.approx(4.41, abs=0.01)
    assert mos_from_r(-5) == 1.0 and mos_from_r(120) == 4.5
    assert mos(0.0, 0.0) == pytest.approx(4.4, abs=0.05)
    assert mos(0.0, 0.0) > mos(0.01, 5.0) > mos(0.05, 20.0) > mos(0.2, 60.0, 600.0)
    assert r_factor(0.0, 300.0) < r_factor(0.0, 150.0)
    assert mos(0.0, 0.0, codec="g729") < mos(0.0, 0.0)
