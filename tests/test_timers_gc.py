"""The collector settings ``twistd pbxd`` runs with (pbxd.tap.tune_collector, issue 8).

Thousands of UDP transactions linger in Completed for Timer J; the daemon
freezes its start-up objects and collects less often so that no collection
outlasts T1. These run in child processes: the test process keeps Python's
defaults.
"""

from __future__ import annotations

import gc
import json
import subprocess
import sys
from pathlib import Path

import yaml

from conftest import TWISTD, twistd_environment
from pbxd.tap import GC_THRESHOLDS, Options, makeService

# Prints the collector's state from inside twistd once the reactor runs, then stops it.
REPORT_GC = (
    "import gc, json; from twisted.internet import reactor;"
    " reactor.callLater(0.5, lambda: ("
    "print('GC ' + json.dumps([gc.get_threshold(), gc.get_freeze_count()]), flush=True),"
    " reactor.stop()));"
)


def run_twistd_reporting_gc(tmp_path: Path) -> tuple[list[int], int]:
    config = tmp_path / "pbxd.yml"
    config.write_text(yaml.safe_dump({
        "data_dir": str(tmp_path / "data"),
        "sip": {"listen": [{"transport": "udp", "host": "127.0.0.1", "port": 0}]},
        "http": {"port": 0},
    }))
    boot = REPORT_GC + TWISTD[-1]
    result = subprocess.run(
        [sys.executable, "-c", boot, "-n", "--pidfile=", "pbxd", "-c", str(config)],
        cwd=tmp_path, env=twistd_environment(), capture_output=True, text=True, timeout=60,
    )
    # twistd logs what is printed: "... [stdout#info] GC [...]".
    reports = [line.split("GC ", 1)[1] for line in result.stdout.splitlines() if "GC [" in line]
    assert reports, result.stdout + result.stderr
    thresholds, frozen = json.loads(reports[0])
    return thresholds, frozen


def test_twistd_pbxd_freezes_start_up_and_raises_the_thresholds(tmp_path: Path) -> None:
    thresholds, frozen = run_twistd_reporting_gc(tmp_path)
    assert tuple(thresholds) == GC_THRESHOLDS
    assert frozen > 10_000  # modules, configuration, the service tree


def test_a_service_built_outside_twistd_leaves_the_collector_alone() -> None:
    before = gc.get_threshold(), gc.get_freeze_count()
    options = Options()
    options.parseOptions([])
    # What test_tap.py passes for twistd's options: a dict, not twistd's ServerOptions.
    options.parent = {  # type: ignore[attr-defined]
        "nodaemon": True, "logfile": None, "logger": None, "syslog": False,
    }
    makeService(options)
    makeService(Options())
    assert (gc.get_threshold(), gc.get_freeze_count()) == before


def test_the_tuning_collects_before_it_freezes() -> None:
    code = (
        "import gc, json, weakref; from pbxd.tap import tune_collector\n"
        "class Node: pass\n"
        "node = Node(); node.me = node; alive = weakref.ref(node); del node\n"
        "tune_collector()\n"
        "print(json.dumps([gc.get_threshold(), gc.get_freeze_count() > 0, alive() is None]))"
    )
    result = subprocess.run([sys.executable, "-c", code], env=twistd_environment(),
                            capture_output=True, text=True, timeout=60, check=True)
    thresholds, frozen, freed = json.loads(result.stdout)
    assert tuple(thresholds) == GC_THRESHOLDS
    assert frozen
    assert freed  # the garbage cycle was collected, not frozen for good with the rest
