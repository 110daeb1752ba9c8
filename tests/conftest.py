"""Fixtures shared by the test modules."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import settings

# CI runs hypothesis derandomized: a run judges the change, not the luck of the
# draw; developers' runs keep exploring new examples.
settings.register_profile("ci", derandomize=True, database=None)
if os.environ.get("CI"):
    settings.load_profile("ci")

REPO_ROOT = Path(__file__).resolve().parent.parent

# Fixture modules shared by several test files, loaded once as plugins so that
# pytest rewrites their asserts too.
pytest_plugins = ["transaction_support", "transport_support"]

# twistd as a child of the interpreter running the tests; PYTHONPATH puts this
# source tree first, so the plugin and pbxd come from here, installed or not.
TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


def twistd_environment() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    return env


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """A data directory that does not exist yet (pbxd creates it on start)."""
    return tmp_path / "data"


class Daemon:
    """A ``twistd -n pbxd`` child process whose merged stdout/stderr is read line by line."""

    def __init__(self, args: list[str], cwd: Path) -> None:
        self.args = args
        self.lines: list[str] = []
        self.process = subprocess.Popen(
            [*TWISTD, "-n", "--pidfile=", "pbxd", *args],
            cwd=cwd,
            env=twistd_environment(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._ended = False  # the reader's end-of-output marker was taken
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def wait_for(self, predicate: Callable[[str], bool], timeout: float = 30.0) -> str:
        """The first new output line for which ``predicate`` is true."""
        while True:
            try:
                line = self._queue.get(timeout=timeout)
            except queue.Empty:
                raise AssertionError(f"no matching line in {timeout}s:\n" + self.output()) from None
            if line is None:
                self._ended = True
                raise AssertionError("pbxd exited before a matching line:\n" + self.output())
            self.lines.append(line)
            if predicate(line):
                return line

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, then the exit code; the remaining output is added to ``lines``."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.wait(timeout)

    def wait(self, timeout: float = 30.0) -> int:
        """The exit code once pbxd ends by itself; the remaining output is added to ``lines``."""
        code = self.process.wait(timeout)
        while not self._ended:
            line = self._queue.get(timeout=timeout)
            if line is None:
                self._ended = True
            else:
                self.lines.append(line)
        return code

    def output(self) -> str:
        return "\n".join(self.lines)


@pytest.fixture
def pbxd_daemon(tmp_path: Path) -> Iterator[Callable[..., Daemon]]:
    """Start ``twistd -n --pidfile= pbxd *args`` in tmp_path; killed at teardown if still up."""
    started: list[Daemon] = []

    def start(*args: str) -> Daemon:
        daemon = Daemon(list(args), tmp_path)
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        if daemon.process.poll() is None:
            daemon.process.kill()
            daemon.process.wait()
