"""What pbxd holds in memory, read from inside the process (bench/run.py memory).

bench/run.py starts pbxd with this module imported first: ``install(path)``
sets a SIGUSR2 handler that writes one JSON snapshot to ``path`` and renames
it into place (the runner waits for the file). A snapshot has pbxd's live
objects counted by type (``gc.get_objects()``, after a full collection so
that garbage does not count), and, when tracemalloc was started
(``PBXD_BENCH_TRACEMALLOC=1``), the Python heap in bytes and its biggest
allocation sites. The handler runs in the reactor thread between two
bytecodes, like any Python signal handler; a snapshot takes a few hundred ms
with a few hundred thousand objects, which is why it is only for this bench.
"""

from __future__ import annotations

import collections
import gc
import json
import os
import signal
import tracemalloc
from pathlib import Path
from types import FrameType

TOP_TYPES = 40
TOP_SITES = 25


def snapshot() -> dict[str, object]:
    gc.collect()
    objects = gc.get_objects()
    types = collections.Counter(type(o).__qualname__ for o in objects)
    # Bound methods say who holds a callback (a timer's, a transaction's): by function.
    methods = collections.Counter(f"method {o.__func__.__qualname__}" for o in objects
                                  if type(o).__name__ == "method")
    types.update(methods)
    result: dict[str, object] = {"objects": len(objects), "types": dict(types.most_common(TOP_TYPES * 4))}
    del objects
    if tracemalloc.is_tracing():
        traced, _ = tracemalloc.get_traced_memory()
        sites = tracemalloc.take_snapshot().statistics("lineno")[:TOP_SITES]
        result["traced_bytes"] = traced
        result["sites"] = {f"{s.traceback[0].filename}:{s.traceback[0].lineno}": s.size for s in sites}
    return result


def install(path: str) -> None:
    target = Path(path)

    def write(signum: int, frame: FrameType | None) -> None:
        partial = target.with_suffix(".partial")
        partial.write_text(json.dumps(snapshot()))
        partial.rename(target)

    if os.environ.get("PBXD_BENCH_TRACEMALLOC") == "1":
        tracemalloc.start(1)
    signal.signal(signal.SIGUSR2, write)
