"""The HTTP port: one root resource in front of the trees (/api, /ami/v1, /console, /metrics, /ws).

Every request goes through :class:`WebRoot` before any tree sees it, in
this order:

1. the per-client-address rate limit (429 with ``Retry-After``);
2. a CORS preflight is answered here (204, or 403 for an origin not
   allowed); other cross-origin responses get their CORS headers; a
   request from a browser page of an origin neither pbxd's own nor allowed
   is 403, as is, when the API is open because no token is configured (on
   loopback), one whose Host is a name other than localhost (DNS rebinding);
3. a body over ``http.max_body_bytes`` is 413 (:class:`BoundedRequest`
   stops keeping it as it arrives, so a huge body costs no memory);
4. authentication (:mod:`pbxd.web.auth`): what it found is kept on the
   request for the routes' :func:`~pbxd.web.auth.require`;
5. the tree mounted at the longest matching path prefix renders it, with
   the prefix moved to ``request.prepath`` (a Klein tree's routes are
   relative to its prefix: ``/status`` in the tree mounted at ``/api``);
   no tree: 404.

A tree is an object with an ``app`` attribute (a Klein bound to the tree
instance, with :func:`pbxd.web.errors.install` applied; served as
``tree.resource()`` when the tree has that method, e.g. to put a check in
front of every route, else as ``app.resource()``), or any ``IResource``.
:func:`build_root` mounts pbxd's trees; each is constructed as
``Tree(web)`` with the :class:`WebContext`. :meth:`WebRoot.routes` lists
every route (the OpenAPI test compares them with docs/openapi.yaml).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
from klein import Klein
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import server
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource, getChildForRequest

from pbxd.web.auth import Authenticator, remember
from pbxd.web.errors import answer_failure, error_body
from pbxd.web.limits import CorsPolicy, RateLimiter

log = Logger(namespace="pbxd.web")

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@attrs.define
class WebContext:
    """What the trees work with.

    ``pbx`` is the :class:`pbxd.service.PbxService` (its ``config``, ``store``,
    ``sip``, ``registrar``, ``trunks``, ``calls`` … services); ``config_path``
    the YAML file pbxd was started with (None: built-in defaults);
    ``started_at`` when the HTTP service started, on ``reactor``'s clock.
    ``limiter`` and ``cors`` are the root's, replaced on a config reload.
    """

    pbx: Any
    reactor: Any
    auth: Authenticator
    limiter: RateLimiter
    cors: CorsPolicy
    config_path: Path | None = None
    started_at: float = 0.0

    @property
    def config(self) -> Any:
        """The configuration in force now (a reload replaces it)."""
        return self.pbx.config

    def apply_http_config(self, http: Any) -> None:
        """Take the live-changeable ``http`` settings: tokens, CORS, rate limits."""
        self.auth.set_tokens(http.tokens)
        self.cors = CorsPolicy(http.cors_origins)
        self.limiter = RateLimiter(self.reactor, http.rate_limit.per_minute, http.rate_limit.per_hour)

    @classmethod
    def from_config(cls, pbx: Any, reactor: Any, config_path: Path | None = None) -> WebContext:
        http = pbx.config.http
        return cls(pbx, reactor, Authenticator(http.tokens), RateLimiter(
            reactor, http.rate_limit.per_minute, http.rate_limit.per_hour),
            CorsPolicy(http.cors_origins), config_path, reactor.seconds())


def client_address(request: IRequest) -> IpAddress | None:
    """The peer's IP address (an IPv4-mapped IPv6 address as the IPv4 one);
    None for a peer that has none (a UNIX socket)."""
    peer = request.getClientAddress()
    if not isinstance(peer, (IPv4Address, IPv6Address)):
        return None
    address = ipaddress.ip_address(peer.host.split("%", 1)[0])
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _local_host_name(request: IRequest) -> bool:
    """Whether the Host asked for is an IP literal or localhost.

    Without tokens the API trusts whoever reaches it; a web page could reach
    it through DNS rebinding (its own name resolving to 127.0.0.1, so the
    browser deems the requests same-origin), but then the Host header holds
    that name. Names other than localhost are refused. (With
    ``http.allow_unauthenticated`` the operator protects the port: no check.)"""
    raw = (request.getHeader(b"host") or b"").decode("latin-1").strip().lower()
    name = raw[1:].split("]", 1)[0] if raw.startswith("[") else raw.rsplit(":", 1)[0]
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


class BoundedRequest(server.Request):
    """A request that keeps at most its site's ``max_body_bytes`` of body.

    Past the limit the body is dropped as it arrives and ``body_too_large``
    is set; the root answers 413 (the client's upload still has to end: HTTP/1.1
    has no way to refuse the rest and keep the connection).
    """

    body_too_large = False
    _body_received = 0

    def _limit(self) -> int:
        return int(getattr(self.channel.site, "max_body_bytes", 1 << 20))

    def gotLength(self, length: int | None) -> None:
        if length is not None and length > self._limit():
            self.body_too_large = True
            length = None  # keep nothing: no temporary file sized for it
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        if self.body_too_large:
            return
        self._body_received += len(data)
        if self._body_received > self._limit():
            self.body_too_large = True
            self.content.seek(0)
            self.content.truncate()
            return
        super().handleContentChunk(data)


class PbxdSite(server.Site):
    """The Site of the HTTP port: :class:`BoundedRequest`s, no tracebacks to
    clients, one debug log event per request instead of an access log file."""

    requestFactory = BoundedRequest
    displayTracebacks = False
    noisy = False

    def __init__(self, root: IResource, max_body_bytes: int, reactor: Any = None) -> None:
        super().__init__(root, reactor=reactor)
        self.max_body_bytes = max_body_bytes

    def log(self, request: Any) -> None:
        log.debug("http {client} {method} {path} {status}",
                  client=str(client_address(request)), method=request.method.decode("latin-1"),
                  path=request.uri.decode("latin-1"), status=request.code)


@attrs.frozen
class Route:
    """One route of the HTTP port: an OpenAPI-style path and its methods."""

    path: str
    methods: frozenset[str]


_RULE_ARGUMENT = re.compile(r"<(?:[^:<>]+:)?([^<>]+)>")


def _openapi_path(prefix: str, rule: str) -> str:
    path = prefix + _RULE_ARGUMENT.sub(r"{\1}", rule)
    return path.rstrip("/") if path != "/" else path


class WebRoot(Resource):
    """The root resource of the HTTP port (see the module docstring)."""

    isLeaf = True

    def __init__(self, web: WebContext) -> None:
        super().__init__()
        self.web = web
        self._mounts: list[tuple[list[bytes], str, Any, IResource]] = []

    def mount(self, prefix: str, tree: Any) -> None:
        """Serve ``tree`` (see the module docstring) under ``prefix``."""
        if not prefix.startswith("/") or prefix.endswith("/"):
            raise ValueError(f"a mount prefix starts and does not end with '/': {prefix!r}")
        app = getattr(tree, "app", None)
        if callable(getattr(tree, "resource", None)):
            resource = tree.resource()
        elif isinstance(app, Klein):
            resource = app.resource()
        else:
            resource = IResource(tree)
        segments = prefix.encode("ascii").split(b"/")[1:]
        self._mounts.append((segments, prefix, tree, resource))
        self._mounts.sort(key=lambda mount: -len(mount[0]))

    def tree(self, prefix: str) -> Any:
        """The tree mounted at ``prefix``; KeyError if none is."""
        for _, mounted, tree, _ in self._mounts:
            if mounted == prefix:
                return tree
        raise KeyError(prefix)

    def routes(self) -> Iterator[Route]:
        """Every route of every tree. A tree that is not Klein is one route at
        its prefix, with the methods in its ``methods`` attribute (default GET)."""
        for _, prefix, tree, _ in sorted(self._mounts, key=lambda mount: mount[1]):
            app = getattr(tree, "app", None)
            if not isinstance(app, Klein):
                yield Route(prefix, frozenset(getattr(tree, "methods", ("GET",))))
                continue
            by_path: dict[str, set[str]] = {}
            for rule in app.url_map.iter_rules():
                methods = set(rule.methods or ()) - {"HEAD", "OPTIONS"}
                by_path.setdefault(_openapi_path(prefix, rule.rule), set()).update(methods)
            for path, methods in sorted(by_path.items()):
                yield Route(path, frozenset(methods))

    def render(self, request: IRequest) -> Any:
        try:
            return self._render(request)
        except Exception:
            return answer_failure(request, Failure())

    def _render(self, request: IRequest) -> Any:
        web = self.web
        client = client_address(request)
        wait = web.limiter.check(str(client))
        if wait is not None:
            web.cors.decorate(request)
            return error_body(request, 429, "too many requests", {"Retry-After": str(wait)})
        if web.cors.is_preflight(request):
            if not web.cors.preflight(request):
                return error_body(request, 403, "this origin is not allowed (http.cors_origins)")
            return b""
        web.cors.decorate(request)
        if web.cors.foreign(request):
            return error_body(request, 403, "this origin is not allowed (http.cors_origins)")
        if web.auth.open and not web.config.http.allow_unauthenticated and not _local_host_name(request):
            return error_body(request, 403, "an API without tokens answers only to an IP address or"
                                            " localhost in the Host header")
        if getattr(request, "body_too_large", False):
            return error_body(request, 413, "the body is larger than http.max_body_bytes"
                                            f" ({request.channel.site.max_body_bytes} bytes)")
        try:
            request.path.decode("utf-8")
            for segment in request.postpath:
                segment.decode("utf-8")
        except UnicodeDecodeError:
            return error_body(request, 400, "the path is not UTF-8")
        remember(request, web.auth.authenticate(request))
        for segments, _, _, resource in self._mounts:
            if request.postpath[:len(segments)] == segments:
                request.prepath.extend(segments)
                del request.postpath[:len(segments)]
                return getChildForRequest(resource, request).render(request)
        return error_body(request, 404, "no such resource")


def build_root(web: WebContext) -> WebRoot:
    """The root with every pbxd tree mounted. The trees are imported here:
    they import the layers they drive, which this module must not need."""
    from pbxd.web.ami import AmiTree, Operations
    from pbxd.web.api import ApiTree
    from pbxd.web.console import ConsoleTree
    from pbxd.web.metrics import MetricsResource
    from pbxd.web.ws import EventsResource

    operations = Operations(web)  # one draining state for /api/status, /ami/v1 and /console
    root = WebRoot(web)
    root.mount("/api", ApiTree(web, operations))
    root.mount("/ami/v1", AmiTree(web, operations))
    root.mount("/console", ConsoleTree(web, operations))
    if web.config.metrics.enabled:
        root.mount("/metrics", MetricsResource(web))
    root.mount("/ws", EventsResource(web))
    return root


__all__ = [
    "BoundedRequest",
    "PbxdSite",
    "Route",
    "WebContext",
    "WebRoot",
    "build_root",
    "client_address",
]
