"""``twistd pbxd``: command-line options and the service they build."""

from __future__ import annotations

import gc
import sys
from collections.abc import Mapping, Sequence
from typing import IO, Any

from twisted.logger import ILogObserver
from twisted.python import usage
from twisted.python.logfile import LogFile

from pbxd.config import LOG_FORMATS, LOG_LEVELS, Config, ConfigError, load_config
from pbxd.logging import make_observer
from pbxd.service import PbxService


EXIT_BAD_CONFIG = 78  # EX_CONFIG in sysexits.h

# Collector settings for the daemon (issue 8). Generation 0 is collected
# after 50,000 net allocations instead of 700, so the young objects of a
# burst of SIP traffic mostly die before a pass sees them; a full pass comes
# after 100 generation-1 passes instead of 10, about once per 100 million
# allocations. A full pass walks every live tracked object (UDP transactions
# linger 32 s in Completed, RFC 3261 §17.2.2) and took 300 ms under REGISTER
# load, longer than T1, so that every waiting client retransmitted.
GC_THRESHOLDS = (50_000, 20, 100)


def tune_collector() -> None:
    """Collect once, freeze what start-up made, and make collections rarer (the daemon only).

    Frozen objects (modules, configuration, the service tree: about 100,000)
    are never walked again by a collection, so every later pass is shorter.
    Cyclic garbage among them would never be freed, hence the collection
    first. Not for library use: a test process keeps Python's defaults.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = (
        "Runs the pbxd SIP/RTP PBX. Settings come from the YAML file given with "
        "--config (built-in defaults without one); these options override it. "
        "Run in the foreground: twistd -n pbxd -c /etc/pbxd/pbxd.yml"
    )
    # Values stay strings here: Config.with_overrides checks them with the same
    # rules as the file, so every bad value is reported the same way.
    optParameters = [
        ["config", "c", None, "YAML configuration file (see docs/configuration.md)."],
        ["sip-host", None, None, "Local IP address for every SIP listener (sip.listen[].host)."],
        ["sip-port", None, None, "Port of the UDP and TCP SIP listeners."],
        ["tls-port", None, None, "Port of the TLS SIP listeners (needs sip.tls.certificate)."],
        ["http-host", None, None, "Local IP address of the HTTP API (http.host)."],
        ["http-port", None, None, "Port of the HTTP API (http.port)."],
        ["data-dir", None, None, "Directory for the database and recordings (data_dir)."],
        ["rtp-ports", None, None, "RTP relay port range MIN-MAX (rtp.port_min, rtp.port_max)."],
        ["log-format", None, None, f"Log format: {', '.join(LOG_FORMATS)} (log.format)."],
        ["log-level", None, None, f"Lowest level logged: {', '.join(LOG_LEVELS)} (log.level)."],
    ]

    def overrides(self) -> dict[str, str | None]:
        """The options other than --config, as keyword arguments for Config.with_overrides."""
        return {
            name.replace("-", "_"): self[name]
            for name, *_ in self.optParameters
            if name != "config"
        }


def load(options: Options) -> Config:
    """The configuration the options ask for: the file (or defaults) plus overrides."""
    return load_config(options["config"]).with_overrides(**options.overrides())


def makeService(options: Options) -> PbxService:
    try:
        config = load(options)
    except ConfigError as error:
        # twistd would print a traceback for an exception from makeService:
        # one line and the sysexits.h code for a configuration error instead,
        # so that systemd can tell it from failures a restart may cure.
        print(f"pbxd: bad configuration: {error}", file=sys.stderr)
        raise SystemExit(EXIT_BAD_CONFIG) from None
    twistd_options = getattr(options, "parent", None)
    if isinstance(twistd_options, usage.Options):
        # Run by twistd (not built by a test): once the services have
        # started, as the reactor starts running.
        from twisted.internet import reactor

        reactor.addSystemEventTrigger(  # type: ignore[attr-defined]
            "after", "startup", tune_collector
        )
    return PbxService(config, log_observer=_log_observer(config, twistd_options),
                      config_path=options["config"], signals=True)


def _log_observer(config: Config, twistd_options: Mapping[str, Any] | None) -> ILogObserver | None:
    """pbxd's observer, writing where twistd would write its own log.

    None when twistd was told to log elsewhere (--syslog, --logger): then
    twistd's observer is used and log.format/log.level do not apply.
    """
    options = twistd_options or {}
    if options.get("logger") or options.get("syslog"):
        return None
    stream: IO[str] = sys.stdout  # twistd has not redirected stdout to the log yet
    logfile = options.get("logfile")
    if logfile and logfile != "-":
        stream = LogFile.fromFullPath(logfile)  # type: ignore[assignment]
    elif not logfile and twistd_options is not None and not options.get("nodaemon"):
        stream = LogFile.fromFullPath("twistd.log")  # twistd's default for a daemon
    return make_observer(config.log, stream)


def main(argv: Sequence[str] | None = None) -> None:
    """The ``pbxd`` command: ``twistd -n --pidfile= pbxd`` with the given options."""
    from twisted.scripts.twistd import run

    args = sys.argv[1:] if argv is None else list(argv)
    sys.argv = ["pbxd", "-n", "--pidfile=", "pbxd", *args]
    run()
