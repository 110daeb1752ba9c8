"""Call outcomes: which final answer the caller gets, and the CDR a finished call leaves.

Pure: the call hands in what happened, these functions say what it means.

``best_status`` chooses among the final answers of the forks (RFC 3261
§16.7 step 6): a 6xx wins outright (the callee refuses everywhere); else the
lowest class, where within the class a specific answer (486 busy, 404) beats
a timeout (408) and a 487 of our own CANCEL; a 503 is passed on as 500
(§16.7 step 6: a 503 from downstream would make the caller retry elsewhere
as if pbxd were overloaded). No answer at all (no contacts) is 480.

``disposition_for`` maps the outcome to the CDR's disposition;
``recording_file`` names a recording as the CDR keeps it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

import attrs

from pbxd.store import Cdr

# Answers that say least about the callee, chosen last within their class.
_UNINFORMATIVE = (408, 487)

NO_CONTACTS = 480

# Q.850-style hangup causes written to the CDR (hangup_cause).
NORMAL_CLEARING = "normal_clearing"
ORIGINATOR_CANCEL = "originator_cancel"
NO_ANSWER = "no_answer"
USER_BUSY = "user_busy"
CALL_REJECTED = "call_rejected"
MAX_DURATION = "max_duration"
SESSION_TIMER_EXPIRED = "session_timer_expired"
MEDIA_TIMEOUT = "media_timeout"
TRANSFERRED = "transferred"
SHUTDOWN = "system_shutdown"
LOST = "peer_unreachable"


def best_status(statuses: Iterable[int]) -> int:
    """The final status to give the caller after every fork failed (§16.7 step 6)."""
    statuses = [s for s in statuses if s >= 300]
    if not statuses:
        return NO_CONTACTS
    global_failures = [s for s in statuses if s >= 600]
    if global_failures:
        return global_failures[0]
    lowest = min(s // 100 for s in statuses)
    in_class = [s for s in statuses if s // 100 == lowest]
    specific = [s for s in in_class if s not in _UNINFORMATIVE]
    best = specific[0] if specific else in_class[0]
    return 500 if best == 503 else best


def cause_for_status(status: int) -> str:
    """The hangup cause of a call that failed with ``status``."""
    if status in (486, 600):
        return USER_BUSY
    if status in (408, 480):
        return NO_ANSWER
    if status == 487:
        return ORIGINATOR_CANCEL
    if status in (403, 603):
        return CALL_REJECTED
    return f"sip_{status}"


def disposition_for(answered: bool, status: int | None, cause: str) -> str:
    """answered, busy, no_answer, cancelled or failed."""
    if answered:
        return "answered"
    if cause == ORIGINATOR_CANCEL:
        return "cancelled"
    if status in (486, 600) or cause == USER_BUSY:
        return "busy"
    if cause == NO_ANSWER or status in (408, 480):
        return "no_answer"
    return "failed"


def recording_file(path: Path, data_dir: Path | None) -> str:
    """A recording as the CDR names it: relative to ``data_dir`` when inside it
    (``recordings/<call>.wav``: still right when the data directory moves with its
    database), else absolute. Readers join it onto ``data_dir``, which keeps an
    absolute one as it is."""
    path = path.absolute()
    if data_dir is not None and path.is_relative_to(data_dir.absolute()):
        return str(path.relative_to(data_dir.absolute()))
    return str(path)


@attrs.frozen(kw_only=True)
class CallRecord:
    """What a call knows when it ends, for :func:`build_cdr`."""

    call_id: str
    from_number: str
    to_number: str
    direction: str
    start_time: float
    end_time: float
    answer_time: float | None
    status: int | None
    cause: str
    side: str
    trunk: str | None = None
    recording_path: str | None = None
    recording_size: int | None = None
    quality: dict[str, Any] | None = None


def build_cdr(record: CallRecord) -> Cdr:
    answered = record.answer_time is not None
    end = max(record.end_time, record.start_time)
    return Cdr(
        call_id=record.call_id,
        from_number=record.from_number,
        to_number=record.to_number,
        direction=record.direction,
        start_time=record.start_time,
        end_time=end,
        answer_time=min(record.answer_time, end) if record.answer_time is not None else None,
        disposition=disposition_for(answered, record.status, record.cause),
        hangup_cause=record.cause,
        hangup_side=record.side,
        sip_status=record.status,
        trunk=record.trunk,
        recording_path=record.recording_path,
        recording_size=record.recording_size,
        quality=record.quality,
    )


__all__ = [
    "CallRecord",
    "best_status",
    "build_cdr",
    "cause_for_status",
    "disposition_for",
    "recording_file",
]
