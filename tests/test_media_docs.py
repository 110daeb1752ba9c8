"""The media docs name the hangup cause the code writes (issue 6's RTP timeout)."""

from __future__ import annotations

import re
from pathlib import Path

from pbxd.call import cdr

DOCS = Path(__file__).resolve().parent.parent / "docs"


def test_the_rtp_timeout_cause_in_the_docs_is_the_one_in_the_cdr() -> None:
    media = (DOCS / "media.md").read_text()
    section = media.split("## RTP timeout", 1)[1].split("\n## ", 1)[0]
    assert f"`{cdr.MEDIA_TIMEOUT}`" in section
    rows = (DOCS / "configuration.md").read_text().splitlines()
    [row] = [line for line in rows if line.startswith("| `rtp.timeout`")]
    assert re.findall(r"CDR says `(\w+)`", row) == [cdr.MEDIA_TIMEOUT]
    assert "rtp_timeout" not in media
