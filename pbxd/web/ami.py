"""``/ami/v1``: the admin interface (rustpbx-api-integration.md §2.3, issue 7).

Only clients whose address is in ``ami.allows`` (default: loopback) get in;
every other one gets 403 for every path, known or not. The allow list is
read from the configuration in force for each request, so a reload changes
it at once. API tokens are not asked for here: the address is the key,
as the seed has it.

- ``GET /health``: status (``ok``, ``draining``, ``starting`` until the
  store is open, ``degraded`` if it failed), uptime, version, active calls,
  registrations, SIP transactions by state, dialogs, trunk states, store,
  load (load averages, the process's CPU seconds and peak memory).
- ``GET /transactions``: the SIP transactions in flight.
- ``GET /dialogs``: the call layer's SIP dialogs (RFC 3261 §12) and their calls.
- ``POST /hangup/{call_id}``: end a call (BYE or CANCEL to its legs); the
  CDR's hangup cause is ``admin_hangup``.
- ``POST /reload/config|routes|trunks|acl``: read and check the config
  file first (:class:`Operations`); a file that does not load changes
  nothing and the answer (422) says why. ``acl`` is the ``security``
  section (the SIP firewall's ACL, allow list, block list and limits);
  ``trunks`` answers which trunks were added, changed and removed
  (pbxd.service.TrunkService.reload).
- ``POST /shutdown``: graceful stop (:meth:`Operations.shutdown`).

:class:`Operations` is also what SIGHUP (reload the config) and SIGTERM
(graceful stop) run; :class:`pbxd.service.HttpService` installs them.
"""

from __future__ import annotations

import ipaddress
import os
import resource
from collections.abc import Callable
from typing import Any

import attrs
from klein import Klein
from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource, getChildForRequest

from pbxd import __version__
from pbxd.call.call import CallState
from pbxd.call.routing import StaticRouter
from pbxd.config import Config, ConfigError, load_config, with_absolute_paths
from pbxd.web.app import WebContext, client_address
from pbxd.web.errors import HttpError, check_query, error_body, install, write_json

log = Logger(namespace="pbxd.web.ami")

RELOADABLE = ("config", "routes", "trunks", "acl")

# Settings a running pbxd takes without a restart (see Operations.apply).
LIVE_HTTP_KEYS = ("tokens", "allow_unauthenticated", "cors_origins", "rate_limit")

# The CDR's hangup cause of a call ended by POST /ami/v1/hangup.
ADMIN_HANGUP = "admin_hangup"

# How often a graceful stop looks whether the last call has ended.
DRAIN_POLL = 0.25


@attrs.frozen
class Applied:
    """What a new configuration changed: ``applied`` live, ``restart_required``
    (kept as they were until pbxd restarts), ``ignored`` (see :meth:`Operations.apply`)."""

    applied: tuple[str, ...] = ()
    restart_required: tuple[str, ...] = ()
    ignored: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"applied": list(self.applied), "restart_required": list(self.restart_required),
                "ignored": list(self.ignored)}


@attrs.frozen
class TrunksReloading:
    """The configuration in force with the new trunks, and the trunk reload
    under way (it fires with pbxd.service.TrunkReload)."""

    in_force: Config
    done: defer.Deferred[Any]


class Operations:
    """Reloads and the graceful stop, for /ami/v1 and the signal handlers.

    ``stop`` ends the process (``reactor.stop`` unless given: tests give
    their own).
    """

    def __init__(self, web: WebContext, stop: Callable[[], Any] | None = None) -> None:
        self.web = web
        self.stop = stop if stop is not None else self._stop_reactor
        self.draining_since: float | None = None
        self._poll: LoopingCall | None = None
        self._deadline: IDelayedCall | None = None
        self._stopped = False

    def _stop_reactor(self) -> None:
        self.web.reactor.stop()

    # -- configuration -------------------------------------------------------------------

    def load(self) -> Config:
        """The config file, read and checked; HttpError 409 without one, 422 if it is bad."""
        path = self.web.config_path
        if path is None:
            raise HttpError(409, "pbxd was started without a config file (--config): nothing to reload")
        try:
            return load_config(path)
        except ConfigError as error:
            raise HttpError(422, f"the config file was not applied: {error}") from None

    def reload(self, what: str) -> dict[str, Any] | defer.Deferred[dict[str, Any]]:
        """Reload ``what`` (one of RELOADABLE) from the config file: the JSON answer
        (for ``trunks``, a Deferred of it: see :meth:`_reload_trunks`)."""
        new = self.load()
        if what == "acl":
            pbx = self.web.pbx
            pbx.config = self._with_security(pbx.config, new)
            log.info("reload acl: SIP ACL, allow list, User-Agent block list and limits applied")
            return {"success": True, "reloaded": what, **Applied(applied=("security",)).to_json()}
        if what == "trunks":
            return self._reload_trunks(new)
        if what == "routes":
            result = self._apply_routes(new)
        else:
            result = self.apply(new)
        log.info("reload {what}: applied {applied}; restart required for {restart}", what=what,
                 applied=", ".join(result.applied) or "nothing",
                 restart=", ".join(result.restart_required) or "nothing")
        return {"success": True, "reloaded": what, **result.to_json()}

    def _reload_trunks(self, new: Config) -> defer.Deferred[dict[str, Any]]:
        """Take ``new``'s trunks; the answer (which trunks were added, changed,
        removed) once the old registrations are gone and the new started."""
        pbx = self.web.pbx
        reloading = self._with_trunks(pbx.config, new)
        pbx.config = reloading.in_force

        def answer(summary: Any) -> dict[str, Any]:
            applied = Applied(applied=("trunks",) if summary else ())
            return {"success": True, "reloaded": "trunks", **applied.to_json(), "trunks": summary.to_json()}

        return reloading.done.addCallback(answer)

    def _with_trunks(self, in_force: Config, new: Config) -> TrunksReloading:
        """``in_force`` with ``new``'s trunks, handed to the trunk service (pbxd.service.TrunkService.reload)."""
        done = self.web.pbx.trunks.reload(new.trunks)
        return TrunksReloading(attrs.evolve(in_force, trunks=new.trunks), done)

    def _with_security(self, in_force: Config, new: Config) -> Config:
        """``in_force`` with ``new``'s security section, handed to the SIP firewall
        (pbxd.security.SipFirewall.reload: ACL, allow list, block list, limits)."""
        in_force = attrs.evolve(in_force, security=new.security)
        self.web.pbx.security.reload(in_force)
        return in_force

    def _apply_routes(self, new: Config) -> Applied:
        pbx = self.web.pbx
        if new.routes == pbx.config.routes:
            return Applied()
        self._swap_routes(new)
        pbx.config = attrs.evolve(pbx.config, routes=new.routes)
        return Applied(applied=("routes",))

    def _swap_routes(self, new: Config) -> None:
        # One assignment: a call being routed keeps the router it started with.
        self.web.pbx.calls.manager.router.static = StaticRouter.from_config(new.routes)

    def apply(self, new: Config) -> Applied:
        """Take what can change live from ``new``; the rest waits for a restart.

        Live: ``routes``, ``trunks``, ``ami``, ``security``, and ``http`` tokens, CORS
        origins, rate limits. ``extensions`` only seed an empty store (the REST API changes
        extensions), so they are ``ignored``. ``pbx.config`` becomes the
        configuration in force: the new values taken, the old ones kept.
        """
        pbx = self.web.pbx
        # As at start-up: a relative data directory is the one pbxd started in,
        # so an unchanged relative path does not read as a change needing a restart.
        new = with_absolute_paths(new)
        old: Config = pbx.config
        in_force = old
        applied: list[str] = []
        restart: list[str] = []
        ignored: list[str] = []
        for field in attrs.fields(Config):
            name = field.name
            if getattr(old, name) == getattr(new, name):
                continue
            if name == "routes":
                self._swap_routes(new)
                in_force = attrs.evolve(in_force, routes=new.routes)
                applied.append(name)
            elif name == "ami":
                in_force = attrs.evolve(in_force, ami=new.ami)
                applied.append(name)
            elif name == "security":
                in_force = self._with_security(in_force, new)
                applied.append(name)
            elif name == "trunks":
                in_force = self._with_trunks(in_force, new).in_force
                applied.append(name)
            elif name == "http":
                http = in_force.http
                for key in attrs.fields_dict(type(old.http)):
                    if getattr(old.http, key) == getattr(new.http, key):
                        continue
                    if key in LIVE_HTTP_KEYS:
                        http = attrs.evolve(http, **{key: getattr(new.http, key)})
                        applied.append(f"http.{key}")
                    else:
                        restart.append(f"http.{key}")
                in_force = attrs.evolve(in_force, http=http)
                self.web.apply_http_config(http)
            elif name == "extensions":
                ignored.append(name)
            else:
                restart.append(name)
        pbx.config = in_force
        return Applied(tuple(applied), tuple(restart), tuple(ignored))

    # -- graceful stop ----------------------------------------------------------------------

    @property
    def draining(self) -> bool:
        return self.draining_since is not None

    def shutdown(self, why: str) -> dict[str, Any]:
        """Refuse new calls, let the calls up end (or hang them up at
        ``ami.shutdown_deadline``), then stop the process. Registrations and
        in-dialog requests go on meanwhile. Asking again changes nothing."""
        deadline = self.web.config.ami.shutdown_deadline
        active = self._active_calls()
        if not self.draining:
            reactor = self.web.reactor
            self.draining_since = reactor.seconds()
            self.web.pbx.calls.manager.accepting = False
            log.info("graceful stop ({why}): new calls get 503; waiting up to {deadline}s for"
                     " {active} calls to end", why=why, deadline=deadline, active=active)
            self._poll = LoopingCall(self._check)
            self._poll.clock = reactor
            # Not now: the answer to the request that asked goes out first.
            self._poll.start(DRAIN_POLL, now=False)
            self._deadline = reactor.callLater(deadline, self._finish, "the shutdown deadline passed")
        remaining = max(0.0, self.draining_since + deadline - self.web.reactor.seconds())  # type: ignore[operator]
        return {"success": True, "status": "draining", "active_calls": active,
                "deadline_seconds": round(remaining, 3)}

    def stop_now(self, why: str) -> None:
        """End at once (the calls up are hung up as pbxd stops)."""
        self._finish(why)

    def _check(self) -> None:
        if self._active_calls() == 0:
            self._finish("no calls are up")

    def _finish(self, why: str) -> None:
        if self._stopped:
            return
        self._stopped = True
        if self._poll is not None and self._poll.running:
            self._poll.stop()
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        log.info("graceful stop: {why}; stopping with {active} calls up", why=why,
                 active=self._active_calls())
        self.stop()

    def cancel(self) -> None:
        """Forget the timers of a graceful stop (the service stops another way)."""
        if self._poll is not None and self._poll.running:
            self._poll.stop()
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()

    # -- what the health report reads -----------------------------------------------------

    def _active_calls(self) -> int:
        return len(self.web.pbx.calls.manager.active)

    def _trunk_registry(self) -> Any:
        trunks = getattr(self.web.pbx, "trunks", None)
        return None if trunks is None else trunks.registry


def _load() -> dict[str, Any]:
    """The machine's load averages and this process's CPU time and peak memory."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    one, five, fifteen = os.getloadavg()
    return {
        "load_average": [round(one, 2), round(five, 2), round(fifteen, 2)],
        "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 3),
        "max_rss_bytes": usage.ru_maxrss * 1024,  # Linux reports KiB
    }


class _AllowList(Resource):
    """Lets only ``ami.allows`` addresses through to the AMI tree."""

    isLeaf = True

    def __init__(self, web: WebContext, inner: IResource) -> None:
        super().__init__()
        self.web = web
        self.inner = inner

    def render(self, request: IRequest) -> Any:
        address = client_address(request)
        allows = self.web.config.ami.allows
        if address is None or not any(address in ipaddress.ip_network(net) for net in allows):
            log.warn("ami: refused {address}", address=str(address))
            return error_body(request, 403, "this address may not use /ami/v1 (ami.allows)")
        return getChildForRequest(self.inner, request).render(request)


class AmiTree:
    """The /ami/v1 routes (see the module docstring)."""

    app = Klein()
    install(app)

    def __init__(self, web: WebContext, operations: Operations | None = None) -> None:
        self.web = web
        self.operations = operations if operations is not None else Operations(web)

    def resource(self) -> IResource:
        return _AllowList(self.web, self.app.resource())

    @app.route("/health", methods=["GET"])
    def health(self, request: IRequest) -> bytes:
        check_query(request, ())
        pbx = self.web.pbx
        now = self.web.reactor.seconds()
        store_service = pbx.store
        if store_service.store is not None:
            store = "open"
        elif getattr(store_service, "_failure", None) is not None:
            store = "failed"
        else:
            store = "opening"
        if self.operations.draining:
            status = "draining"
        elif store == "failed":
            status = "degraded"
        elif store == "opening" or pbx.registrar.registrar is None:
            status = "starting"
        else:
            status = "ok"
        location = pbx.registrar.location
        manager = pbx.calls.manager
        table = pbx.sip.core.layer.transactions
        registry = self.operations._trunk_registry()
        return write_json(request, {
            "status": status,
            "version": __version__,
            "uptime": round(now - self.web.started_at, 3),
            "active_calls": len(manager.active),
            "registrations": {
                "bindings": 0 if location is None else len(location),
                "users": 0 if location is None else len({c.aor for c in location.contacts()}),
            },
            "transactions": {"total": len(table), **table.counts()},
            "dialogs": len(manager.dialogs),
            "trunks": [] if registry is None else [trunk.status() for trunk in registry],
            "store": {"status": store, "path": str(store_service.path)},
            "load": _load(),
        })

    @app.route("/transactions", methods=["GET"])
    def transactions(self, request: IRequest) -> bytes:
        check_query(request, ())
        table = self.web.pbx.sip.core.layer.transactions
        rows = []
        for txn in table.client:
            rows.append(self._transaction("client", txn.request, txn.state.value, txn.target))
        for txn in table.server:
            rows.append(self._transaction("server", txn.request, txn.state.value, txn.source))
        return write_json(request, {"total": len(table), **table.counts(), "transactions": rows})

    @staticmethod
    def _transaction(side: str, message: Any, state: str, peer: Any) -> dict[str, Any]:
        # A transaction's request always has a Via: the layer matched it by its branch.
        return {"side": side, "method": message.method, "call_id": message.call_id,
                "branch": message.via.branch, "state": state,
                "peer": {"transport": peer.transport, "host": peer.host, "port": peer.port}}

    @app.route("/dialogs", methods=["GET"])
    def dialogs(self, request: IRequest) -> bytes:
        check_query(request, ())
        manager = self.web.pbx.calls.manager
        rows = []
        for dialog in manager.dialogs:
            leg = manager.leg_for_dialog(dialog.id)
            rows.append({
                "call": None if leg is None else leg.call.id,
                "call_id": dialog.call_id,
                "local_tag": dialog.local_tag,
                "remote_tag": dialog.remote_tag,
                "role": dialog.role.value,
                "state": dialog.state.value,
                "local_uri": str(dialog.local_uri),
                "remote_uri": str(dialog.remote_uri),
                "remote_target": str(dialog.remote_target),
                "route_set": [str(route) for route in dialog.route_set],
                "local_seq": dialog.local_seq,
                "remote_seq": dialog.remote_seq,
                "secure": dialog.secure,
            })
        return write_json(request, {"total": len(rows), "dialogs": rows})

    @app.route("/hangup/<call_id>", methods=["POST"])
    def hangup(self, request: IRequest, call_id: str) -> bytes:
        check_query(request, ())
        call = self.web.pbx.calls.manager.calls.get(call_id)
        if call is None or call.state is CallState.ENDED:
            raise HttpError(404, f"no call {call_id} is up")
        log.info("ami: hanging up call {call} for {address}", call=call_id, address=str(client_address(request)))
        call.hangup(ADMIN_HANGUP, "system")
        return write_json(request, {"success": True, "call_id": call_id})

    @app.route("/reload/<what>", methods=["POST"])
    def reload(self, request: IRequest, what: str) -> defer.Deferred[bytes]:
        check_query(request, ())
        if what not in RELOADABLE:
            raise HttpError(404, f"nothing called {what!r} can be reloaded; try {', '.join(RELOADABLE)}")
        # A trunk reload answers once the old registrations are gone (bounded).
        return defer.maybeDeferred(self.operations.reload, what).addCallback(
            lambda body: write_json(request, body))

    @app.route("/shutdown", methods=["POST"])
    def shutdown(self, request: IRequest) -> bytes:
        check_query(request, ())
        address = client_address(request)
        return write_json(request, self.operations.shutdown(f"POST /ami/v1/shutdown from {address}"), 202)


__all__ = ["Applied", "AmiTree", "Operations", "RELOADABLE"]
