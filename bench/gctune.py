"""An experiment for bench/run.py --gc tuned: pbxd with fewer, cheaper collections.

Imported before twistd runs pbxd. Once the reactor has run for a second
(pbxd started, its configuration and modules loaded), ``gc.freeze()`` moves
every object alive then out of the collector's generations, and the
generation-0 threshold goes from 700 to 50,000 allocations, so that full
collections are rarer and walk only what the load made. It is not pbxd's
behaviour: it measures how much of a step's latency tail the collector is.
"""

from __future__ import annotations

import gc

THRESHOLDS = (50_000, 20, 100)


def install() -> None:
    from twisted.internet import reactor

    def tune() -> None:
        gc.collect()
        gc.freeze()
        gc.set_threshold(*THRESHOLDS)

    reactor.callWhenRunning(reactor.callLater, 1.0, tune)  # type: ignore[attr-defined]
