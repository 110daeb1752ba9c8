"""Log observers: twistd's text lines or one JSON object per line, filtered by level.

pbxd logs through ``twisted.logger`` everywhere; this module only decides how
the events are written. ``pbxd.tap`` builds the observer and ``PbxService``
hands it to twistd (see ``PbxService.setServiceParent``).
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import IO, Any

from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    formatEvent,
    textFileLogObserver,
)
from zope.interface import implementer

from pbxd.config import LogConfig

# Keys that twisted.python.log (the legacy API) adds to events; their content
# is already in the message or in the fields below.
_LEGACY_KEYS = frozenset({"message", "format", "isError", "system", "time", "why", "failure"})


def make_observer(log: LogConfig, stream: IO[str]) -> ILogObserver:
    """An observer writing events at ``log.level`` or above in ``log.format`` to ``stream``."""
    writer = json_lines_observer(stream) if log.format == "json" else textFileLogObserver(stream)
    level = LogLevel.levelWithName(log.level)
    return FilteringLogObserver(writer, [LogLevelFilterPredicate(defaultLogLevel=level)])


def json_lines_observer(stream: IO[str]) -> ILogObserver:
    """An observer writing each event as one JSON object on its own line."""

    @implementer(ILogObserver)
    def observe(event: dict[str, Any]) -> None:
        stream.write(event_as_json_line(event))
        stream.flush()

    return observe  # type: ignore[no-any-return]


def event_as_json_line(event: dict[str, Any]) -> str:
    """One event as a JSON object and a newline.

    ``time`` (ISO 8601, UTC), ``level``, ``namespace`` and the formatted
    ``message`` come first; the event's own fields follow as they are when JSON
    can hold them and as ``repr()`` otherwise; ``traceback`` is there when the
    event carries a failure.
    """
    record: dict[str, Any] = {
        "time": _iso_time(event.get("log_time")),
        "level": getattr(event.get("log_level"), "name", "info"),
        "namespace": event.get("log_namespace", ""),
        "message": formatEvent(event),
    }
    if "log_system" in event:
        record["system"] = event["log_system"]
    for key, value in event.items():
        if not key.startswith("log_") and key not in _LEGACY_KEYS and key not in record:
            record[key] = value
    failure = event.get("log_failure")
    if failure is not None:
        record["traceback"] = failure.getTraceback()
    try:
        return json.dumps(record, default=repr, allow_nan=False) + "\n"
    except (TypeError, ValueError):
        # A field JSON cannot hold even through repr(), e.g. a dict with tuple keys.
        safe = {key: _plain(value) for key, value in record.items()}
        return json.dumps(safe, default=repr, allow_nan=False) + "\n"


def _plain(value: Any) -> Any:
    try:
        json.dumps(value, default=repr, allow_nan=False)
    except (TypeError, ValueError):
        return repr(value)
    return value


def _iso_time(timestamp: Any) -> str | None:
    if not isinstance(timestamp, (int, float)):
        return None
    moment = datetime.fromtimestamp(timestamp, timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
