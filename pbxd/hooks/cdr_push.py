"""The CDR push (rustpbx-api-integration.md §1.4): each finished call's record,
POSTed as multipart/form-data with its recording.

The form has the field ``calllog.json`` (the CDR as :func:`cdr_json` shapes
it, the shape of pbx-rest-api.md's ``GET /api/cdr`` entries plus the rest of
the record) and, when the call was recorded and ``include_recording`` is on,
the file ``media_audio-0``. Delivery goes through
:meth:`WebhookClient.send_durable_multipart`: the push is spooled to the
store before it is sent, retried with back-off, kept while the receiver is
down and sent when it is back, across restarts. Delivery is at least once: a
receiver de-duplicates by ``call_id``.

The spool keeps the recording's path, not its bytes: the recording must stay
where it is until the push is delivered.
"""

from __future__ import annotations

import datetime
import json
import math
import os
from typing import Any, Iterable, Mapping

from twisted.internet import defer
from twisted.logger import Logger

from pbxd.hooks.client import Delivery, FilePart, WebhookClient
from pbxd.store import Cdr

log = Logger()

CALLLOG_FIELD = "calllog.json"
AUDIO_FIELD = "media_audio-0"
SPOOL_KIND = "cdr"

_AUDIO_TYPES = {".wav": "audio/wav", ".mp3": "audio/mpeg", ".ogg": "audio/ogg",
                ".opus": "audio/opus"}


def _timestamp(epoch: float | None, tz: datetime.tzinfo) -> str | None:
    if epoch is None:
        return None
    return datetime.datetime.fromtimestamp(epoch, tz).isoformat(timespec="seconds")


def _whole_seconds(seconds: float) -> int:
    # Half up, so that 0.5 s of talk bills 1 s (round() would give 0).
    return math.floor(seconds + 0.5)


def cdr_json(cdr: Cdr, tz: datetime.tzinfo = datetime.timezone.utc) -> dict[str, Any]:
    """A CDR as JSON: the one place its shape lives (the REST API uses it too).

    Times are ISO 8601 in ``tz`` with their offset (``2024-01-15T10:00:00+00:00``),
    ``answer_time`` null for a call that was not answered; ``duration`` and
    ``billsec`` are whole seconds. ``from_extension``/``to_extension`` hold
    the number even when it is not an extension (an outside caller or callee).
    """
    return {
        "id": cdr.id,
        "call_id": cdr.call_id,
        "from_extension": cdr.from_number,
        "to_extension": cdr.to_number,
        "direction": cdr.direction,
        "start_time": _timestamp(cdr.start_time, tz),
        "answer_time": _timestamp(cdr.answer_time, tz),
        "end_time": _timestamp(cdr.end_time, tz),
        "disposition": cdr.disposition,
        "duration": _whole_seconds(cdr.duration),
        "billsec": _whole_seconds(cdr.billsec),
        "hangup_cause": cdr.hangup_cause,
        "hangup_side": cdr.hangup_side,
        "sip_status": cdr.sip_status,
        "trunk": cdr.trunk,
        "recording_file": cdr.recording_path,
        "recording_size": cdr.recording_size,
        "quality": None if cdr.quality is None else dict(cdr.quality),
    }


class CdrPusher:
    """Pushes CDRs to ``url`` through ``client`` (whose store spools them).

    ``headers`` (a mapping or pairs) go on every push. A relative
    ``recording_path`` is taken relative to ``recordings_base`` (the data
    directory); the spool keeps the absolute path.
    """

    def __init__(
        self,
        client: WebhookClient,
        url: str,
        headers: Mapping[str, str] | Iterable[tuple[str, str]] = (),
        include_recording: bool = True,
        recordings_base: str | os.PathLike[str] = ".",
        tz: datetime.tzinfo = datetime.timezone.utc,
    ) -> None:
        self.client = client
        self.url = url
        self.headers = dict(headers)
        self.include_recording = include_recording
        self.recordings_base = os.path.abspath(recordings_base)
        self.tz = tz

    @classmethod
    def from_config(cls, cdr_config: Any, client: WebhookClient,
                    recordings_base: str | os.PathLike[str]) -> CdrPusher | None:
        """From the ``cdr`` config section; None when no ``push_url`` is set."""
        if cdr_config.push_url is None:
            return None
        return cls(client, cdr_config.push_url, cdr_config.headers, cdr_config.include_recording,
                   recordings_base)

    def push(self, cdr: Cdr, spooled: defer.Deferred[None] | None = None) -> defer.Deferred[Delivery]:
        """Spool and send one CDR. The Delivery says how it went (SPOOLED:
        it waits for the receiver); the caller need not wait for it, only
        for ``spooled`` (see WebhookClient.send_durable_multipart)."""
        fields = {CALLLOG_FIELD: json.dumps(cdr_json(cdr, self.tz), separators=(",", ":"))}
        files = {}
        recording = self._recording(cdr)
        if recording is not None:
            files[AUDIO_FIELD] = recording
        return self.client.send_durable_multipart(SPOOL_KIND, self.url, fields, files,
                                                  self.headers, spooled=spooled)

    def _recording(self, cdr: Cdr) -> FilePart | None:
        if not self.include_recording or not cdr.recording_path:
            return None
        path = os.path.join(self.recordings_base, cdr.recording_path)
        if not os.path.isfile(path):
            # The CDR matters more than its audio: push it without, loudly,
            # rather than have a push that can never be sent.
            log.error("CDR {call_id}: recording {path} is missing; pushed without it",
                      call_id=cdr.call_id, path=path)
            return None
        extension = os.path.splitext(path)[1].lower()
        return FilePart(path, os.path.basename(path),
                        _AUDIO_TYPES.get(extension, "application/octet-stream"))


__all__ = ["AUDIO_FIELD", "CALLLOG_FIELD", "SPOOL_KIND", "CdrPusher", "cdr_json"]
