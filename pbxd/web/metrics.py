"""``GET /metrics``: the Prometheus exposition of pbxd's registry (pbxd.metrics).

Like every tree it sits behind the HTTP root's rate limit and
authentication, and needs the read scope (with tokens configured, give
Prometheus a read token: ``authorization: {credentials: ...}`` in its
scrape config).

The format follows the scraper's Accept header (OpenMetrics when asked for,
else the Prometheus text format 0.0.4), with the matching Content-Type.
"""

from __future__ import annotations

from typing import Any

from prometheus_client.exposition import choose_encoder
from twisted.web.resource import Resource
from twisted.web.server import Request

from pbxd.metrics import build_registry
from pbxd.web.auth import READ, require
from pbxd.web.errors import error_body


class MetricsResource(Resource):
    """Mounted at /metrics by pbxd.web.app; ``registry`` is pbxd's (pbxd.metrics)."""

    isLeaf = True
    methods = ("GET",)

    def __init__(self, web: Any) -> None:
        super().__init__()
        self.registry, self.collector = build_registry(web.pbx, web.pbx.events)

    def render(self, request: Request) -> bytes:
        if request.method not in (b"GET", b"HEAD"):
            return error_body(request, 405, "only GET is allowed here", {"Allow": "GET, HEAD"})
        return super().render(request)  # type: ignore[no-any-return]

    def render_GET(self, request: Request) -> bytes:
        require(request, READ)
        if request.postpath not in ([], [b""]):
            return error_body(request, 404, "no such resource")
        accept = (request.getHeader(b"accept") or b"").decode("latin-1")
        encoder, content_type = choose_encoder(accept)
        request.setHeader(b"content-type", content_type.encode("latin-1"))
        request.setHeader(b"cache-control", b"no-store")
        return encoder(self.registry)  # type: ignore[no-any-return]

    def render_HEAD(self, request: Request) -> bytes:
        return self.render_GET(request)


__all__ = ["MetricsResource"]
