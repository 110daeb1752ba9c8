"""Run sipp (Debian's sip-tester) against pbxd on loopback and collect what it saw.

sipp is a SIP peer we did not write: when it accepts pbxd's answers, they are
well-formed to someone other than ourselves. Runs are bounded by sipp's own
global timeout and by a call count.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import attrs
import pytest
from twisted.internet import reactor as default_reactor
from twisted.internet.defer import Deferred
from twisted.internet.utils import getProcessOutputAndValue

SCENARIOS = Path(__file__).parent / "sipp"

requires_sipp = pytest.mark.skipif(shutil.which("sipp") is None, reason="sipp (Debian sip-tester) not installed")

# sipp's -t values for pbxd's transports: one socket for all calls.
SIPP_TRANSPORT = {"udp": "u1", "tcp": "t1"}


@attrs.frozen
class SippResult:
    exit_code: int
    output: str
    errors: str
    messages: str

    @property
    def ok(self) -> bool:
        return self.exit_code == 0

    def explain(self) -> str:
        return f"sipp exit {self.exit_code}\n--- errors ---\n{self.errors}\n--- messages ---\n{self.messages[-4000:]}\n--- output ---\n{self.output[-2000:]}"


def scenario(name: str, workdir: Path, **fills: object) -> Path:
    """A scenario file from tests/sipp with its ``__NAME__`` blanks filled in.

    sipp keywords cannot stand for what it parses itself (the method of a
    request it sends, the status of a response it waits for), so those are
    filled in before sipp reads the file.
    """
    text = (SCENARIOS / name).read_text()
    for key, value in fills.items():
        text = text.replace(f"__{key.upper()}__", str(value))
    path = workdir / name
    path.write_text(text)
    return path


async def run_sipp(
    scenario_path: Path,
    host: str,
    port: int,
    *,
    transport: str = "udp",
    calls: int = 1,
    keys: dict[str, str] | None = None,
    timeout: float = 20.0,
    extra: tuple[str, ...] = (),
    local_ip: str | None = None,
    reactor=default_reactor,  # type: ignore[no-untyped-def]
) -> SippResult:
    """Run one sipp scenario against ``host:port``; ``local_ip`` is the loopback
    address sipp sends from (default ``host``), for a second or third source."""
    workdir = scenario_path.parent
    errors = workdir / f"{scenario_path.stem}.errors.log"
    messages = workdir / f"{scenario_path.stem}.messages.log"
    args = [
        "-sf", str(scenario_path), f"{host}:{port}",
        "-t", SIPP_TRANSPORT[transport],
        "-i", local_ip or host,
        "-m", str(calls),
        "-nostdin",
        "-timeout", f"{timeout}s", "-timeout_error",
        "-trace_err", "-error_file", str(errors),
        "-trace_msg", "-message_file", str(messages),
        *extra,
    ]
    for key, value in (keys or {}).items():
        args += ["-key", key, value]
    d: Deferred = getProcessOutputAndValue("sipp", args, env=dict(os.environ), path=str(workdir), reactor=reactor)
    out, err, code = await d
    return SippResult(
        exit_code=code,
        output=(out + err).decode("utf-8", "replace"),
        errors=errors.read_text(errors="replace") if errors.exists() else "",
        messages=messages.read_text(errors="replace") if messages.exists() else "",
    )
