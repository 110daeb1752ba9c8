"""pbxd's load benchmarks: sipp drives a real ``twistd -n pbxd`` on loopback at stepped rates.

    python bench/run.py register|calls|latency|memory|all [--target HOST:PORT]
                        [--duration S] [--rates R1,R2,...] [--transport udp|tcp]
                        [--media relay|none] [--json FILE] [--profile|--cprofile]
                        [--calls N] [--rounds N] [--tracemalloc]

``register``: authenticated registrations (REGISTER, 401, REGISTER with digest
credentials, 200) per second, extensions 1000-1998 in turn.
``calls``: calls per second through the B2BUA (INVITE, 407, ACK, INVITE with
credentials, 180, 200, ACK, BYE, 200; no media) from a sipp UAC to a sipp UAS
registered as extension 1999. bench.yml relays media (``media_proxy`` auto: 4
sockets per call, SDP rewritten, though sipp sends no RTP); ``--media none``
runs pbxd with ``media_proxy: none`` on the extensions route instead.
``latency``: calls at a modest rate with both phones tracing their messages;
per call, INVITE in -> out and 200 in -> out through pbxd, in ms (sipp's
microsecond time stamps: loopback and sipp's own delay are included).
``memory``: rounds of ``--calls`` calls held up at once (uac_hold.xml); pbxd's
RSS before, at the peak and after the drain, kB per call, and pbxd's objects
per held call by type (bench/memprobe.py, SIGUSR2).

pbxd starts as ``twistd -n pbxd -c bench/configs/bench.yml`` with a fresh data
directory per benchmark (``--target`` runs the same load against another SIP
server instead, which must know the same extensions and passwords, and then
pbxd's CPU and memory are not measured). With two or more CPUs pbxd runs on
CPU 0 and sipp on CPU 1 (``taskset``), so that the load generator does not take
pbxd's core.

Each step runs sipp at one offered rate (``-r``) for ``--duration`` seconds
(``-m`` = rate x duration calls). A step passes with no failed call,
retransmissions under 0.1% of the requests sent (RFC 7501/7502 style) and at
least 95% of the offered rate achieved (over TCP sipp does not retransmit); the
stepping stops after the first step that fails. Per step the table shows: the
rate offered, the rate achieved (successful calls per second of sipp's elapsed
time), failed calls, retransmissions in % of requests, pbxd's CPU (user+system
over wall time, from /proc/PID/stat; 100% is one core), pbxd's RSS at the end of
the step, and response-time percentiles (p50/p99, ms) from sipp's ``-trace_rtt``
samples. The highest passing rate is the result. Everything is written as JSON
to ``bench/results/<benchmark>-<timestamp>.json`` too (or ``--json FILE``).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import attrs

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
SCENARIOS = BENCH / "scenarios"
CONFIG = BENCH / "configs" / "bench.yml"
RESULTS = BENCH / "results"
TICKS = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")

# bench.yml's extensions: 1000-1998 call and register, 1999 answers.
CALLERS = [str(number) for number in range(1000, 1999)]
CALLEE = "1999"
DOMAIN = "bench.test"

# A step passes with no failed call, fewer retransmissions than this (% of requests),
# and the offered rate carried: over TCP sipp never retransmits, so a server that
# falls behind shows only as a lower achieved rate.
MAX_RETRANSMISSION_PCT = 0.1
MIN_ACHIEVED_RATIO = 0.95

DEFAULT_RATES = {
    "register": [100, 200, 300, 400, 500, 750, 1000, 1500, 2000, 3000, 4000, 5000, 6000],
    "calls": [25, 50, 100, 150, 200, 300, 400, 500, 600],
}
SIPP_TRANSPORT = {"udp": "u1", "tcp": "t1"}


def password(number: str) -> str:
    return f"bench-{number}"


@attrs.frozen
class Step:
    """One offered rate and what came of it."""

    benchmark: str
    transport: str
    offered: int
    calls: int
    successful: int
    failed: int
    achieved: float
    requests: int
    retransmissions: int
    elapsed: float
    pbxd_cpu_pct: float | None
    # pbxd's CPU time per successful call (or registration), ms: what one costs, and less
    # disturbed by a busy machine than the highest passing rate.
    pbxd_cpu_ms: float | None
    # Time pbxd was runnable but waited for a CPU, % of wall time: when it is high, the
    # machine was busy with other work and the step says little about pbxd.
    pbxd_wait_pct: float | None
    pbxd_rss_mb: float | None
    # Response time number (as in the scenario) -> {"p50": ms, "p90": ms, "p99": ms, "samples": n}
    latency_ms: dict[str, dict[str, float]]
    sipp_exit: int

    @property
    def retransmission_pct(self) -> float:
        return 100.0 * self.retransmissions / self.requests if self.requests else 0.0

    @property
    def passed(self) -> bool:
        return (self.failed == 0 and self.successful == self.calls
                and self.retransmission_pct < MAX_RETRANSMISSION_PCT
                and self.achieved >= MIN_ACHIEVED_RATIO * self.offered)

    def as_json(self) -> dict[str, Any]:
        return {**attrs.asdict(self), "retransmission_pct": self.retransmission_pct,
                "passed": self.passed}


# -- the machine and the processes -----------------------------------------------------------


def cpu_count() -> int:
    return len(os.sched_getaffinity(0))


def pinned(cpu: int) -> list[str]:
    """The taskset prefix that runs a command on ``cpu``, when there are two CPUs to split."""
    if cpu_count() >= 2 and shutil.which("taskset"):
        return ["taskset", "-c", str(cpu)]
    return []


def cpu_seconds(pid: int) -> float:
    # Fields after the command name (which may hold spaces): utime and stime are 14 and 15.
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def runqueue_wait_seconds(pid: int) -> float:
    """How long pbxd's threads were ready to run but waited for a CPU (schedstat, field 2)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[1])
        except (OSError, IndexError, ValueError):
            continue  # a thread that ended meanwhile, or no schedstat in this kernel
    return total / 1e9


def rss_mb(pid: int) -> float:
    resident = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    return resident * PAGE / 2**20


def machine() -> dict[str, Any]:
    model = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    sipp = subprocess.run(["sipp", "-v"], capture_output=True, text=True)
    version = re.search(r"SIPp v\S+", sipp.stdout + sipp.stderr)
    return {"nproc": cpu_count(), "cpu": model, "python": sys.version.split()[0],
            "sipp": version.group(0) if version else "?", "pinned": bool(pinned(0))}


def free_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1 (pbxd listens on both)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.1", 0))
            port = udp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port  # type: ignore[no-any-return]


def answers_options(host: str, port: int) -> bool:
    """Whether a SIP server answers an OPTIONS on UDP within 0.2 s."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.bind(("127.0.0.1", 0))
        local = udp.getsockname()[1]
        udp.settimeout(0.2)
        request = (
            f"OPTIONS sip:{host}:{port} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:{local};branch=z9hG4bK-bench-{time.monotonic_ns()};rport\r\n"
            f"From: <sip:bench@{DOMAIN}>;tag=bench\r\nTo: <sip:{host}:{port}>\r\n"
            f"Call-ID: bench-{time.monotonic_ns()}\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\n"
            "Content-Length: 0\r\n\r\n"
        )
        udp.sendto(request.encode(), (host, port))
        try:
            return udp.recv(65536).startswith(b"SIP/2.0 ")
        except OSError:
            return False


class Pbxd:
    """``twistd -n pbxd -c bench/configs/bench.yml`` on a free port, in a scratch directory."""

    def __init__(self, workdir: Path, config: Path = CONFIG, cprofile: bool = False,
                 probe: bool = False, tracemalloc: bool = False) -> None:
        self.port = free_port()
        self.log = (workdir / "pbxd.log").open("w")
        # twistd's own profiler option: cProfile over the whole run, saved at exit.
        self.cprofile = workdir / "pbxd.cprof" if cprofile else None
        profiling = [f"--profile={self.cprofile}", "--profiler=cprofile", "--savestats"] if cprofile else []
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
        # With probe, bench/memprobe.py answers SIGUSR2 with a snapshot of pbxd's objects.
        self.snapshot_path = workdir / "snapshot.json" if probe else None
        boot = "from twisted.scripts.twistd import run; run()"
        if probe:
            boot = (f"import sys; sys.path.insert(0, {str(BENCH)!r}); import memprobe;"
                    f" memprobe.install({str(self.snapshot_path)!r}); {boot}")
            env["PBXD_BENCH_TRACEMALLOC"] = "1" if tracemalloc else "0"
        self.process = subprocess.Popen(
            [*pinned(0), sys.executable, "-c", boot,
             "-n", "--pidfile=", *profiling, "pbxd", "-c", str(config), "--sip-port", str(self.port),
             "--data-dir", str(workdir / "data"), "--http-port", "0"],
            cwd=workdir, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while not answers_options("127.0.0.1", self.port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise SystemExit(f"pbxd did not answer OPTIONS within 60 s; see {self.log.name}:\n"
                                 + Path(self.log.name).read_text()[-3000:])

    @property
    def pid(self) -> int:
        return self.process.pid  # taskset execs the command: same process

    def snapshot(self, timeout: float = 60.0) -> dict[str, Any] | None:
        """pbxd's live objects by type (and its traced heap), from bench/memprobe.py."""
        if self.snapshot_path is None:
            return None
        self.snapshot_path.unlink(missing_ok=True)
        self.process.send_signal(signal.SIGUSR2)
        deadline = time.monotonic() + timeout
        while not self.snapshot_path.exists():
            if time.monotonic() > deadline or self.process.poll() is not None:
                return None
            time.sleep(0.05)
        return json.loads(self.snapshot_path.read_text())  # type: ignore[no-any-return]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                print("pbxd did not stop within 30 s of SIGTERM; killed", file=sys.stderr)
                self.process.kill()
                self.process.wait()
        self.log.close()
        if self.cprofile is not None:
            report_cprofile(self.cprofile)


def bench_config(workdir: Path, media: str) -> Path:
    """bench.yml, or with ``media`` none a copy whose extensions route does not relay media."""
    if media == "relay":
        return CONFIG
    config = workdir / "bench-no-media.yml"
    config.write_text(CONFIG.read_text() + "routes:\n  - {name: extensions, priority: 0,"
                      " match: {extension: true}, destination: \"{called}\", media_proxy: none}\n")
    return config


def report_cprofile(path: Path, top: int = 25) -> None:
    """The functions pbxd spent the most time in over the whole run (cProfile, the
    reactor thread only: the store's SQLite thread is not in it; py-spy sees both)."""
    if not path.exists():
        print(f"cProfile wrote no statistics to {path}")
        return
    import pstats

    print(f"\ncProfile of pbxd over the whole run ({path}):")
    stats = pstats.Stats(str(path))
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(r"pbxd/", top)


# -- sipp ------------------------------------------------------------------------------------------


def users_file(path: Path, numbers: list[str]) -> Path:
    """sipp's -inf CSV: the extension, and its whole [authentication] keyword (sipp expands a
    keyword given in a field, so each call authenticates as its own extension)."""
    path.write_text("SEQUENTIAL\n" + "".join(
        f"{n};[authentication username={n} password={password(n)}]\n" for n in numbers))
    return path


def requests_per_call(scenario: Path) -> int:
    """How many requests one call of a UAC scenario sends (the retransmission base)."""
    return len(re.findall(r"<send\b[^>]*>\s*<!\[CDATA\[\s*[A-Z]+ ", scenario.read_text()))


def sipp_stats(path: Path) -> dict[str, str]:
    """The last row of sipp's -trace_stat CSV (cumulative counters are the (C) columns)."""
    with path.open(newline="") as stats:
        rows = list(csv.reader(stats, delimiter=";"))
    header, last = rows[0], rows[-1]
    return dict(zip(header, last))


def stats_seconds(value: str) -> float:
    """A time of sipp's statistics (date, time and epoch seconds, tab-separated): the epoch seconds."""
    return float(value.split("\t")[-1])


def percentiles(samples: list[float]) -> dict[str, float]:
    if not samples:
        return {}
    ordered = sorted(samples)
    cuts = statistics.quantiles(ordered, n=100, method="inclusive") if len(ordered) > 1 else ordered * 99
    return {"p50": round(cuts[49], 3), "p90": round(cuts[89], 3), "p99": round(cuts[98], 3),
            "samples": len(ordered)}


def response_times(workdir: Path) -> dict[str, dict[str, float]]:
    """Percentiles per response time from sipp's -trace_rtt files (one row per sample:
    date_ms;response_time_ms;rtd_no; sipp 3.6 measures whole milliseconds)."""
    samples: dict[str, list[float]] = {}
    for path in workdir.glob("*_rtt.csv"):
        for line in path.read_text().splitlines():
            parts = line.split(";")
            if len(parts) >= 3 and re.fullmatch(r"[\d.]+", parts[1]):
                samples.setdefault(parts[2].strip(), []).append(float(parts[1]))
    return {number: percentiles(values) for number, values in sorted(samples.items())}


def run_sipp(workdir: Path, scenario: Path, host: str, port: int, transport: str,
             extra: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*pinned(1), "sipp", "-sf", str(scenario), f"{host}:{port}", "-i", "127.0.0.1", "-p", "0",
         "-t", SIPP_TRANSPORT[transport], "-nostdin", "-timeout", f"{timeout:g}s",
         "-trace_err", "-error_file", str(workdir / "errors.log"), *extra],
        cwd=workdir, capture_output=True, text=True, timeout=timeout + 30)


def run_step(benchmark: str, workdir: Path, scenario: Path, host: str, port: int,
             transport: str, rate: int, duration: float, extra: list[str],
             pbxd: Pbxd | None, profile: bool = False) -> Step:
    workdir.mkdir(parents=True)
    calls = max(1, int(rate * duration))
    users = users_file(workdir / "users.csv", CALLERS)
    before = (cpu_seconds(pbxd.pid), runqueue_wait_seconds(pbxd.pid), time.monotonic()) if pbxd else None
    profiler = Profiler(workdir / "profile.txt", pbxd.pid, duration) if pbxd and profile else None
    done = run_sipp(workdir, scenario, host, port, transport, [
        "-inf", str(users), "-r", str(rate), "-rp", "1000", "-m", str(calls),
        "-l", str(max(200, rate * 4)),
        "-trace_stat", "-stf", str(workdir / "stats.csv"), "-fd", "1",
        "-trace_rtt", "-rtt_freq", "100", *extra,
    ], timeout=duration * 3 + 30)
    if profiler is not None:
        profiler.report()
    cpu = cpu_ms = wait = rss = None
    if pbxd is not None and before is not None:
        wall = time.monotonic() - before[2]
        used = cpu_seconds(pbxd.pid) - before[0]
        cpu = round(100.0 * used / wall, 1)
        wait = round(100.0 * (runqueue_wait_seconds(pbxd.pid) - before[1]) / wall, 1)
        rss = round(rss_mb(pbxd.pid), 1)
    stats_path = workdir / "stats.csv"
    if not stats_path.exists():
        raise SystemExit(f"sipp wrote no statistics (exit {done.returncode}):\n{done.stderr[-2000:]}")
    stats = sipp_stats(stats_path)
    successful = int(stats["SuccessfulCall(C)"])
    failed = int(stats["FailedCall(C)"])
    if pbxd is not None and successful:
        cpu_ms = round(1000.0 * used / successful, 2)
    # ElapsedTime counts whole seconds: the start and end stamps say more.
    elapsed = stats_seconds(stats["CurrentTime"]) - stats_seconds(stats["StartTime"])
    return Step(
        benchmark=benchmark, transport=transport, offered=rate, calls=calls,
        successful=successful, failed=failed,
        achieved=round(successful / elapsed, 1) if elapsed else 0.0,
        requests=(successful + failed) * requests_per_call(scenario),
        retransmissions=int(stats["Retransmissions(C)"]), elapsed=round(elapsed, 3),
        pbxd_cpu_pct=cpu, pbxd_cpu_ms=cpu_ms, pbxd_wait_pct=wait, pbxd_rss_mb=rss, latency_ms=response_times(workdir),
        sipp_exit=done.returncode,
    )


class Profiler:
    """py-spy sampling pbxd for one step (all threads: the store's SQLite thread too);
    :meth:`report` prints the functions that take the most samples, by time spent in
    them and, for pbxd's own functions, in them and below them."""

    def __init__(self, output: Path, pid: int, seconds: float) -> None:
        if shutil.which("py-spy") is None:
            raise SystemExit("--profile needs py-spy (pip install py-spy)")
        self.output = output
        self.process = subprocess.Popen(
            ["py-spy", "record", "--pid", str(pid), "--duration", str(max(1, int(seconds))),
             "--rate", "200", "--format", "raw", "--output", str(output), "--nonblocking"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def report(self, top: int = 15) -> None:
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        if not self.output.exists():
            print("py-spy wrote no profile:", self.process.stderr.read()[-500:])  # type: ignore[union-attr]
            return
        inclusive: dict[str, int] = {}
        own: dict[str, int] = {}
        total = 0
        for line in self.output.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            if not stack or not count.isdigit():
                continue
            frames = stack.split(";")
            total += int(count)
            own[frames[-1]] = own.get(frames[-1], 0) + int(count)
            for frame in set(frames):
                inclusive[frame] = inclusive.get(frame, 0) + int(count)
        print(f"  profile: {total} samples; {self.output}")
        # Inclusive time of pbxd's own functions: the framework frames above them
        # (twistd, the reactor loop) include everything and say nothing.
        inclusive = {frame: count for frame, count in inclusive.items() if "pbxd/" in frame}
        for title, table in (("self", own), ("inclusive (pbxd's functions)", inclusive)):
            print(f"  top {top} by {title} time:")
            for frame, count in sorted(table.items(), key=lambda item: -item[1])[:top]:
                print(f"    {100 * count / total:5.1f}%  {frame}")


# -- the benchmarks ----------------------------------------------------------------------------------


class Answerer:
    """The called phone of the calls benchmark: a sipp that registers as 1999 and answers
    every call with uas_answer.xml until it is stopped."""

    def __init__(self, workdir: Path, host: str, port: int, transport: str, seconds: float,
                 extra: list[str] | None = None) -> None:
        workdir.mkdir(parents=True)
        self.workdir = workdir
        self.process = subprocess.Popen(
            [*pinned(1), "sipp", "-sf", str(SCENARIOS / "uas_register.xml"), f"{host}:{port}",
             "-i", "127.0.0.1", "-p", "0", "-t", SIPP_TRANSPORT[transport], "-nostdin",
             "-oocsf", str(SCENARIOS / "uas_answer.xml"), "-key", "user", CALLEE,
             "-au", CALLEE, "-ap", password(CALLEE), "-m", "1", "-d", str(int(seconds * 1000)),
             "-trace_err", "-error_file", str(workdir / "errors.log"),
             "-trace_stat", "-stf", str(workdir / "stats.csv"), "-fd", "1", *(extra or [])],
            cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGUSR1)  # sipp: stop gracefully
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def registered(host: str, port: int, transport: str, workdir: Path, number: str) -> bool:
    """Whether ``number`` can register (one sipp registration): the server knows the
    bench extensions."""
    workdir.mkdir(parents=True)
    done = run_sipp(workdir, SCENARIOS / "register.xml", host, port, transport,
                    ["-inf", str(users_file(workdir / "users.csv", [number])), "-m", "1"], timeout=10)
    return done.returncode == 0


def bench_register(workdir: Path, host: str, port: int, args: argparse.Namespace,
                   pbxd: Pbxd | None) -> list[Step]:
    return step_through("register", workdir, SCENARIOS / "register.xml", host, port, args, pbxd, [])


def bench_calls(workdir: Path, host: str, port: int, args: argparse.Namespace,
                pbxd: Pbxd | None) -> list[Step]:
    rates = args.rates or DEFAULT_RATES["calls"]
    answerer = Answerer(workdir / "answerer", host, port, args.transport,
                        seconds=len(rates) * (args.duration * 3 + 30))
    try:
        if not wait_for_binding(host, port, args.transport, workdir, answerer):
            return []
        return step_through("calls", workdir, SCENARIOS / "uac_call.xml", host, port, args, pbxd,
                            call_keys(port))
    finally:
        answerer.stop()


def call_keys(port: int) -> list[str]:
    """sipp options that make the UAC scenarios call 1999 through the server at ``port``."""
    return ["-key", "callee", CALLEE, "-auth_uri", f"{CALLEE}@{DOMAIN}:{port}"]


# -- latency: what pbxd adds between the two phones -----------------------------------------

# sipp -trace_msg: each message follows a line of dashes and its date and time.
_TRACE_HEADER = re.compile(
    r"^-{10,} (\d{4}-\d\d-\d\d)[ \t](\d\d:\d\d:\d\d(?:\.\d+)?)\s*$", re.M)


@attrs.frozen
class TracedMessage:
    time: float  # epoch seconds, as sipp stamped it
    sent: bool
    first_line: str
    from_user: str
    cseq: str


def traced_messages(path: Path) -> list[TracedMessage]:
    """The SIP messages of a sipp -trace_msg file, with sipp's time stamps."""
    text = path.read_text(errors="replace")
    marks = list(_TRACE_HEADER.finditer(text))
    messages = []
    for mark, following in zip(marks, marks[1:] + [None]):
        body = text[mark.end():following.start() if following else len(text)].strip("\r\n")
        what, _, sip = body.partition("\n\n")
        lines = sip.strip().splitlines()
        if not lines:
            continue
        headers = {}
        for line in lines[1:]:
            name, colon, value = line.partition(":")
            if not colon:
                break
            headers.setdefault(name.strip().lower(), value.strip())
        user = re.search(r"sips?:([^@;>]+)@", headers.get("from", headers.get("f", "")))
        stamp = time.mktime(time.strptime(mark.group(1) + " " + mark.group(2).split(".")[0],
                                          "%Y-%m-%d %H:%M:%S"))
        fraction = mark.group(2).partition(".")[2]
        messages.append(TracedMessage(
            time=stamp + (float("0." + fraction) if fraction else 0.0), sent=" sent" in what,
            first_line=lines[0].strip(), from_user=user.group(1) if user else "",
            cseq=headers.get("cseq", headers.get("cseq", ""))))
    return messages


def first_times(messages: list[TracedMessage], sent: bool, starts: str, cseq_method: str,
                cseq_number: str | None = None) -> dict[str, float]:
    """Per caller (From user): when the first matching message was sent or received."""
    times: dict[str, float] = {}
    for message in messages:
        number, _, method = message.cseq.partition(" ")
        if (message.sent == sent and message.first_line.startswith(starts)
                and method == cseq_method and (cseq_number is None or number == cseq_number)):
            times.setdefault(message.from_user, message.time)
    return times


def hop_latencies(caller: list[TracedMessage], callee: list[TracedMessage]) -> dict[str, list[float]]:
    """Milliseconds per call, matched by the caller's extension (the From user, which pbxd
    keeps on the outbound leg): the authenticated INVITE from the caller's sipp to the
    INVITE at the callee's, the callee's 200 to the caller's 200, and set-up as the caller
    sees it minus the time the callee took to answer (what pbxd added in all)."""
    invite_out = first_times(caller, True, "INVITE ", "INVITE", "2")
    invite_in = first_times(callee, False, "INVITE ", "INVITE")
    ok_out = first_times(callee, True, "SIP/2.0 200", "INVITE")
    ok_in = first_times(caller, False, "SIP/2.0 200", "INVITE", "2")
    hops: dict[str, list[float]] = {"INVITE in -> out": [], "200 in -> out": [], "set-up added": []}
    for user, sent in invite_out.items():
        if user in invite_in and user in ok_out and user in ok_in:
            hops["INVITE in -> out"].append(1000 * (invite_in[user] - sent))
            hops["200 in -> out"].append(1000 * (ok_in[user] - ok_out[user]))
            hops["set-up added"].append(1000 * ((ok_in[user] - sent) - (ok_out[user] - invite_in[user])))
    return hops


def bench_latency(workdir: Path, host: str, port: int, args: argparse.Namespace,
                  pbxd: Pbxd | None) -> list[dict[str, Any]]:
    """Calls at a modest rate with both phones tracing their messages (sipp -trace_msg,
    time stamps in microseconds): how long each hop through the server took. Each rate
    runs at most 999 calls, so that every caller extension places one call."""
    rates = args.rates or [20, 100]
    answerer_trace = workdir / "answerer" / "messages.log"
    answerer = Answerer(workdir / "answerer", host, port, args.transport,
                        seconds=len(rates) * (args.duration * 3 + 30),
                        extra=["-trace_msg", "-message_file", str(answerer_trace)])
    results = []
    try:
        if not wait_for_binding(host, port, args.transport, workdir, answerer):
            return []
        print(f"\nlatency over {args.transport} to {host}:{port}: per hop, ms"
              " (sipp's time stamps on both phones; loopback and sipp's own delay included)")
        print(f"{'rate/s':>6} {'calls':>6} {'hop':<17} {'p50':>7} {'p90':>7} {'p99':>7}"
              f" {'max':>8} {'pbxd CPU%':>9} {'wait%':>5}")
        for rate in rates:
            step_dir = workdir / f"latency-{rate}"
            start = answerer_trace.stat().st_size if answerer_trace.exists() else 0
            duration = min(args.duration, len(CALLERS) / rate)
            step = run_step("latency", step_dir, SCENARIOS / "uac_call.xml", host, port,
                            args.transport, rate, duration,
                            [*call_keys(port), "-trace_msg", "-message_file",
                             str(step_dir / "messages.log")], pbxd)
            time.sleep(0.5)  # the answerer's last BYE and its trace line
            callee_part = step_dir / "answerer-messages.log"
            with answerer_trace.open("rb") as whole:
                whole.seek(start)
                callee_part.write_bytes(whole.read())
            hops = hop_latencies(traced_messages(step_dir / "messages.log"),
                                 traced_messages(callee_part))
            result = {"rate": rate, "calls": step.successful, "failed": step.failed,
                      "pbxd_cpu_pct": step.pbxd_cpu_pct, "pbxd_wait_pct": step.pbxd_wait_pct,
                      "hops_ms": {name: {**percentiles(values), "max": round(max(values), 3)}
                                  for name, values in hops.items() if values}}
            results.append(result)
            for name, cut in result["hops_ms"].items():
                print(f"{rate:>6} {len(hops[name]):>6} {name:<17} {cut['p50']:>7.3f} {cut['p90']:>7.3f}"
                      f" {cut['p99']:>7.3f} {cut['max']:>8.3f}"
                      f" {maybe_number(step.pbxd_cpu_pct):>9} {maybe_number(step.pbxd_wait_pct):>5}")
            if step.failed:
                print(f"{rate:>6}: {step.failed} calls failed")
    finally:
        answerer.stop()
    return results


# -- memory: what a concurrent call costs, and whether it is given back -----------------------


def bench_memory(workdir: Path, host: str, port: int, args: argparse.Namespace,
                 pbxd: Pbxd | None) -> list[dict[str, Any]]:
    """Rounds of ``--calls`` calls held up at once (uac_hold.xml: the BYE waits until every
    call of the round is up), reading pbxd's RSS before, at the peak and once the calls
    have drained. kB per call is (peak - before) / calls. The first round also pays for
    one-time growth (the allocator's arenas, caches); later rounds reuse the memory the
    first one freed, so RSS after each drain should stay level."""
    if pbxd is None:
        raise SystemExit("memory reads pbxd's RSS: it does not work with --target")
    calls = args.calls
    rate = (args.rates or [100])[0]
    ramp = calls / rate
    hold = ramp + 3.0  # every call of the round is up before the first hangs up
    answerer = Answerer(workdir / "answerer", host, port, args.transport,
                        seconds=args.rounds * (ramp + hold + 60) + 60,
                        extra=["-l", str(calls * 2)])
    results = []
    try:
        if not wait_for_binding(host, port, args.transport, workdir, answerer):
            return []
        print(f"\nmemory over {args.transport}: rounds of {calls} calls held up at once"
              f" (set up at {rate}/s, held {hold:.0f} s), pbxd's RSS in MB")
        print(f"{'round':>5} {'calls':>6} {'failed':>6} {'before':>8} {'peak':>8} {'drained':>8}"
              f" {'kB/call':>8}  {'drain s':>7} {'objs/call':>9} {'objs left':>11} {'heap kB/c':>10}")
        time.sleep(1.0)
        start_snapshot = pbxd.snapshot()
        for number in range(1, args.rounds + 1):
            round_dir = workdir / f"memory-{number}"
            round_dir.mkdir(parents=True)
            before = rss_mb(pbxd.pid)
            sipp = subprocess.Popen(
                [*pinned(1), "sipp", "-sf", str(SCENARIOS / "uac_hold.xml"), f"{host}:{port}",
                 "-i", "127.0.0.1", "-p", "0", "-t", SIPP_TRANSPORT[args.transport], "-nostdin",
                 "-inf", str(users_file(round_dir / "users.csv", CALLERS)), "-r", str(rate),
                 "-m", str(calls), "-l", str(calls), "-d", str(int(hold * 1000)),
                 "-timeout", f"{ramp + hold + 60:g}s", "-trace_stat", "-stf",
                 str(round_dir / "stats.csv"), "-fd", "1", "-trace_err", "-error_file",
                 str(round_dir / "errors.log"), *call_keys(port)],
                cwd=round_dir, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            peak = before
            held_at = time.monotonic() + ramp + 1.5  # every call up, none hung up yet
            held = None
            while sipp.poll() is None:
                peak = max(peak, rss_mb(pbxd.pid))
                if held is None and time.monotonic() >= held_at:
                    held = (rss_mb(pbxd.pid), pbxd.snapshot())
                time.sleep(0.1)
            ended = time.monotonic()
            # Drained: once the calls' transactions and timers are gone. An INVITE
            # transaction with a 2xx stays 64*T1 = 32 s over any transport (Timers L and
            # M, RFC 6026 §7.1), a BYE's over UDP too (Timer J, RFC 3261 §17.2.2).
            settle = 35.0
            time.sleep(settle)
            drained = rss_mb(pbxd.pid)
            after = pbxd.snapshot()
            stats = sipp_stats(round_dir / "stats.csv")
            successful, failed = int(stats["SuccessfulCall(C)"]), int(stats["FailedCall(C)"])
            per_call = 1024 * (peak - before) / successful if successful else float("nan")
            result: dict[str, Any] = {
                "round": number, "calls": successful, "failed": failed,
                "rss_before_mb": round(before, 1), "rss_held_mb": round(held[0], 1) if held else None,
                "rss_peak_mb": round(peak, 1), "rss_drained_mb": round(drained, 1),
                "kb_per_call": round(per_call, 1), "drain_seconds": round(time.monotonic() - ended, 1)}
            snapshots = {"before": start_snapshot, "held": held[1] if held else None, "drained": after}
            result["objects"] = {name: snap["objects"] for name, snap in snapshots.items() if snap}
            result["traced_mb"] = {name: round(snap["traced_bytes"] / 2**20, 2)
                                   for name, snap in snapshots.items() if snap and "traced_bytes" in snap}
            results.append(result)
            objects = result["objects"]
            per_call_objects = ((objects["held"] - objects["before"]) / successful
                                if successful and "held" in objects and "before" in objects else None)
            traced = result["traced_mb"]
            traced_per_call = (1024 * (traced["held"] - traced["before"]) / successful
                               if successful and "held" in traced and "before" in traced else None)
            print(f"{number:>5} {successful:>6} {failed:>6} {before:>8.1f} {peak:>8.1f} {drained:>8.1f}"
                  f" {per_call:>8.1f}  {settle:>7.0f}"
                  f" {maybe_number(per_call_objects):>9} {objects.get('drained', 0) - objects.get('before', 0):>+11}"
                  f" {'-' if traced_per_call is None else format(traced_per_call, '.1f'):>10}", flush=True)
            if held and held[1] and start_snapshot and number == 1:
                growth = {kind: held[1]["types"].get(kind, 0) - start_snapshot["types"].get(kind, 0)
                          for kind in held[1]["types"]}
                top = sorted(growth.items(), key=lambda item: -item[1])[:15]
                print("      objects per held call, by type: " + ", ".join(
                    f"{kind} {count / successful:.1f}" for kind, count in top if count > 0))
                if "sites" in held[1]:
                    print("      biggest heap sites while held (tracemalloc, MB): " + ", ".join(
                        f"{site.replace(str(REPO) + '/', '')} {size / 2**20:.1f}"
                        for site, size in list(held[1]["sites"].items())[:8]))
            start_snapshot = after
    finally:
        answerer.stop()
    return results


def maybe_number(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def wait_for_binding(host: str, port: int, transport: str, workdir: Path, answerer: Answerer) -> bool:
    """Wait until a probe call to 1999 is answered: the answerer is registered and the
    server routes calls (until pbxd has its B2BUA, it does not)."""
    deadline = time.monotonic() + 15
    probe = 0
    while time.monotonic() < deadline:
        if answerer.process.poll() is not None:
            print("the answering sipp ended:", answerer.process.stderr.read()[-2000:], file=sys.stderr)
            return False
        probe += 1
        probe_dir = workdir / f"probe-{probe}"
        probe_dir.mkdir(parents=True)
        done = run_sipp(probe_dir, SCENARIOS / "uac_call.xml", host, port, transport, [
            "-inf", str(users_file(probe_dir / "users.csv", CALLERS[:1])), "-m", "1",
            *call_keys(port)], timeout=5)
        if done.returncode == 0:
            return True
    print("calls: a probe call to 1999 was not answered within 15 s: the server does not route"
          " calls between extensions (see the sipp logs under the work directory); skipped",
          file=sys.stderr)
    return False


def step_through(benchmark: str, workdir: Path, scenario: Path, host: str, port: int,
                 args: argparse.Namespace, pbxd: Pbxd | None, extra: list[str]) -> list[Step]:
    steps: list[Step] = []
    print(f"\n{benchmark} over {args.transport} to {host}:{port}, {args.duration:g} s per step")
    print(header())
    for rate in args.rates or DEFAULT_RATES[benchmark]:
        step = run_step(benchmark, workdir / f"{benchmark}-{rate}", scenario, host, port,
                        args.transport, rate, args.duration, extra, pbxd, args.profile)
        steps.append(step)
        print(row(step), flush=True)
        if not step.passed:
            break
    best = max((s.offered for s in steps if s.passed), default=None)
    print(f"{benchmark}: highest passing rate {best if best is not None else 'none'}/s")
    return steps


# -- output ----------------------------------------------------------------------------------------


def header() -> str:
    return (f"{'offered/s':>9} {'achieved/s':>10} {'calls':>7} {'failed':>6} {'retrans%':>8}"
            f" {'pbxd CPU%':>9} {'ms/call':>7} {'wait%':>5} {'RSS MB':>7}  {'rt1 p50/p99 ms':>15}  {'rt2 p50/p99 ms':>15}  result")


def row(step: Step) -> str:
    def rt(number: str) -> str:
        values = step.latency_ms.get(number)
        return f"{values['p50']:.2f}/{values['p99']:.2f}" if values else "-"

    def maybe(value: float | None, form: str) -> str:
        return "-" if value is None else format(value, form)

    return (f"{step.offered:>9} {step.achieved:>10.0f} {step.successful:>7} {step.failed:>6}"
            f" {step.retransmission_pct:>8.3f} {maybe(step.pbxd_cpu_pct, '.0f'):>9}"
            f" {maybe(step.pbxd_cpu_ms, '.2f'):>7}"
            f" {maybe(step.pbxd_wait_pct, '.0f'):>5}"
            f" {maybe(step.pbxd_rss_mb, '.1f'):>7}  {rt('1'):>15}  {rt('2'):>15}"
            f"  {'pass' if step.passed else 'FAIL'}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("benchmark", choices=("register", "calls", "latency", "memory", "all"))
    parser.add_argument("--target", help="HOST:PORT of another SIP server (pbxd is not started)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per step (default 10)")
    parser.add_argument("--rates", type=lambda text: [int(r) for r in text.split(",")],
                        help="offered rates per step, comma-separated (default per benchmark)")
    parser.add_argument("--transport", choices=("udp", "tcp"), default="udp")
    parser.add_argument("--json", type=Path, help="write the results here too")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (sipp logs)")
    parser.add_argument("--profile", action="store_true",
                        help="sample pbxd with py-spy during each step and print where its time goes")
    parser.add_argument("--media", choices=("relay", "none"), default="relay",
                        help="calls through pbxd's media relay (bench.yml: the default) or with"
                             " media_proxy none (the SDP passes unchanged, no ports opened)")
    parser.add_argument("--calls", type=int, default=500,
                        help="memory: calls held up at once per round (default 500)")
    parser.add_argument("--rounds", type=int, default=3, help="memory: rounds (default 3)")
    parser.add_argument("--tracemalloc", action="store_true",
                        help="memory: trace pbxd's Python heap too (slows pbxd down)")
    parser.add_argument("--cprofile", action="store_true",
                        help="run pbxd under cProfile and print its top functions when it stops")
    args = parser.parse_args(argv)
    if shutil.which("sipp") is None:
        raise SystemExit("sipp is not installed (Debian: apt install sip-tester)")
    benchmarks = (["register", "calls", "latency", "memory"] if args.benchmark == "all"
                  else [args.benchmark])
    about = machine()
    print(f"{about['nproc']} CPU(s), {about['cpu']}, Python {about['python']}, {about['sipp']},"
          f" {'pbxd on CPU 0, sipp on CPU 1' if about['pinned'] else 'not pinned'},"
          f" media {args.media}, load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    results: dict[str, Any] = {"machine": about, "transport": args.transport, "media": args.media,
                               "load_average": os.getloadavg(),
                               "duration": args.duration, "target": args.target, "benchmarks": {}}
    workdir = Path(tempfile.mkdtemp(prefix="pbxd-bench-"))
    try:
        for benchmark in benchmarks:
            results["benchmarks"][benchmark] = [
                step.as_json() if isinstance(step, Step) else step
                for step in run_benchmark(benchmark, workdir / benchmark, args)]
    finally:
        if args.keep:
            print(f"work directory kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    out = args.json or RESULTS / f"{args.benchmark}-{time.strftime('%Y%m%dT%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nresults: {out}")
    return 0


def run_benchmark(benchmark: str, workdir: Path, args: argparse.Namespace) -> list[Any]:
    run: Any = {"register": bench_register, "calls": bench_calls, "latency": bench_latency,
                "memory": bench_memory}[benchmark]
    workdir.mkdir(parents=True)
    if args.target:
        host, _, port = args.target.rpartition(":")
        if not registered(host, int(port), args.transport, workdir / "check", CALLERS[0]):
            raise SystemExit(f"{args.target} does not register {CALLERS[0]} with password"
                             f" {password(CALLERS[0])}: give it bench.yml's extensions")
        return run(workdir, host, int(port), args, None)
    pbxd = Pbxd(workdir, bench_config(workdir, args.media), cprofile=args.cprofile,
                probe=benchmark == "memory", tracemalloc=args.tracemalloc)
    try:
        return run(workdir, "127.0.0.1", pbxd.port, args, pbxd)
    finally:
        pbxd.stop()


if __name__ == "__main__":
    sys.exit(main())
