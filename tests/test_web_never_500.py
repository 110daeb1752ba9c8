"""No input gives a 5xx anywhere on the HTTP port: every route of /console,
/ami/v1, /metrics and /ws (and /api once more), every method, with an admin
token (so the handlers run) and without one; malformed JSON, wrong types,
unknown fields, an oversized body, odd path values and query strings. Each
answer is a 2xx or a 4xx, and a 4xx carries a JSON error. (/api alone, with
more query strings: test_web_api.test_no_input_gives_a_500.)"""

from __future__ import annotations

from pathlib import Path

import pytest_twisted

from test_web_api import BODIES, PATH_VALUES
from tests.web_support import WebPbx, start_web_pbx

MAX_BODY = 4096
# Bodies shaped like the trees' own, each wrong in one way, on top of test_web_api's.
MORE_BODIES = [
    b'{"action": "hangup", "colour": "red"}',  # an unknown field
    b'{"action": 5}', b'{"action": "transfer", "target": [], "attended": "yes"}',
    b'{"action": "mute", "track_id": {"a": 1}}', b'{"action": "send_dtmf", "digits": 12}',
    b'{"action": "accept", "sdp": "v=0\\r\\nm=audio 99999 RTP/AVP 0"}',
    b'{"username": 1, "password": null}', b'{"username": "alice", "password": "x", "extra": true}',
    b'{"number": "1003", "password": "pw-1003", "max_calls": -1}',
    b'{"number": "1003", "password": "pw-1003", "dial_patterns": ["("]}',
    b'{"name": "r", "match": {"request_user": "("}, "destination": "1001"}',
    b'{"page": true, "per_page": 1e3}', b'{"since": 1, "until": []}',
    b"{\"a\": 1", b"\xef\xbb\xbf{}", b'{"a": "\\ud800"}',  # truncated, a BOM, a lone surrogate
    b'{"x": "' + b"y" * (MAX_BODY + 1) + b'"}',  # over http.max_body_bytes: 413
]
QUERIES = ["", "?page=%ff&per_page=-1&since=%00&colour=red", "?" + "a=1&" * 300]


@pytest_twisted.ensureDeferred
async def test_no_input_gives_a_500_on_any_tree(tmp_path: Path) -> None:
    pbx = await start_web_pbx(tmp_path, http={"rate_limit": {"per_minute": 0, "per_hour": 0},
                                              "max_body_bytes": MAX_BODY},
                              console={"admins": [{"username": "alice", "password": "wonderland"}]})
    try:
        statuses = await _try_everything(pbx)
    finally:
        await pbx.stop()
    assert {200, 400, 401, 404, 405, 413, 422} <= statuses and 429 not in statuses


async def _try_everything(pbx: WebPbx) -> set[int]:
    statuses: set[int] = set()
    routes = [r for r in pbx.service.http.root.routes() if not r.path.endswith("/shutdown")]
    prefixes = {route.path.split("/")[1] for route in routes}
    assert {"console", "ami", "metrics", "ws", "api"} <= prefixes, prefixes

    async def check(method: str, path: str, body: bytes = b"", token: str | None = "admin") -> None:
        reply = await pbx.call(method, path, body=body or None, token=token,
                               headers={"Content-Type": "application/json"})
        statuses.add(reply.status)
        assert reply.status < 500, (method, path[:80], body[:40], reply.body[:200])
        if reply.status >= 400:
            assert "error" in reply.json, (method, path[:80], reply.body[:200])

    seen = 0
    for route in routes:
        def at(value: str) -> str:
            return "/".join(value if part.startswith("{") else part for part in route.path.split("/"))

        first = at(PATH_VALUES[0])
        for method in sorted(route.methods | {"PATCH", "DELETE"}):
            await check(method, first, token=None)  # no token: 401, whatever the input
            for body in (BODIES + MORE_BODIES if method in ("POST", "PUT") else [b""]):
                await check(method, first, body)
            for query in QUERIES:
                await check(method, first + query, b"{}" if method in ("POST", "PUT") else b"")
            if "{" in route.path:
                for value in PATH_VALUES[1:]:
                    await check(method, at(value), b"{}" if method in ("POST", "PUT") else b"")
            seen += 1
    assert seen > 60
    return statuses
