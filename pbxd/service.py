"""The pbxd process as one Twisted service tree."""

from __future__ import annotations

import os
import signal
import sqlite3
from collections import deque
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import attrs
from twisted.application.service import IService, MultiService, Service
from twisted.internet import defer
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import ILogObserver, Logger
from twisted.python.components import Componentized

from pbxd import __version__
from pbxd.config import Config, SipConfig, TrunkConfig, with_absolute_paths
from pbxd.events import EventBus, registration_publisher, watch_trunks
from pbxd.call.manager import CallManager, CallSettings
from pbxd.core import LocalDomains, SipCore
from pbxd.hooks.cdr_push import CdrPusher
from pbxd.hooks.client import WebhookClient
from pbxd.hooks.http_router import Router
from pbxd.hooks.locator import LocatorNotifier
from pbxd.hooks.user_backend import ChainedBackend, HttpUserBackend
from pbxd.media.session import relay_media_factory
from pbxd.registrar.auth import STATIC_BACKEND, RequestAuthenticator, load_nonce_secret
from pbxd.registrar.directory import ExtensionDirectory
from pbxd.registrar.guard import AuthGuard
from pbxd.registrar.location import LocationService
from pbxd.registrar.qualify import Qualifier
from pbxd.registrar.registrar import Registrar, RegistrarSettings
from pbxd.security import SipFirewall
from pbxd.sip.capture import LadderArchive, SipCapture
from pbxd.sip.digest import DigestAuthenticator, NonceManager
from pbxd.sip.message import Request
from pbxd.sip.timers import TimerSettings
from pbxd.sip.transaction import ServerTransaction
from pbxd.store import Store, StoreError
from pbxd.store.schema import MIGRATIONS, migrate
from pbxd.trunks.dns import Locator
from pbxd.trunks.health import HealthChecker
from pbxd.trunks.registration import TrunkRegistration
from pbxd.trunks.trunk import Trunk, TrunkRegistry


class StartupError(SystemExit):
    """pbxd cannot start (data directory not writable, port taken, ...).

    A SystemExit with code 1, so that under twistd the process ends with the
    one logged line instead of a traceback; ``reason`` says what went wrong.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(1)
        self.reason = reason


class PbxService(MultiService):
    """pbxd: holds the configuration and the services that do the work.

    ``reactor`` is what the children listen and schedule with (the global
    reactor when not given). ``log_observer``, when given, becomes twistd's log
    observer (see ``setServiceParent``). ``config_path`` is the file the
    config came from (the REST API writes it, reloads read it; None: built-in
    defaults). ``signals``: SIGTERM stops gracefully and SIGHUP reloads the
    config (only under twistd, whose reactor owns the process's signals).
    """

    name = "pbxd"
    log = Logger()

    def __init__(
        self,
        config: Config,
        reactor: Any = None,
        log_observer: ILogObserver | None = None,
        *,
        config_path: str | os.PathLike[str] | None = None,
        signals: bool = False,
    ) -> None:
        super().__init__()
        if reactor is None:
            from twisted.internet import reactor as global_reactor

            reactor = global_reactor
        # Relative paths mean the directory pbxd was started in, fixed now: twistd
        # changes to --rundir after makeService, and a recording's path must name
        # the same file for every later reader (CDR push, /console).
        self.config = with_absolute_paths(config)
        self.reactor = reactor
        self.log_observer = log_observer
        self.config_path = None if config_path is None else Path(config_path)
        self.signals = signals
        self._ready_call: IDelayedCall | None = None
        self._begun = False
        # What happens (registrations, calls, trunks), for /ws and /metrics.
        self.events = EventBus()
        for child in self._build_children():
            child.setServiceParent(self)

    def _build_children(self) -> list[IService]:
        """The services pbxd is made of, in start order (they stop in reverse)."""
        self.store = StoreService(self.config, self.reactor)
        self.sip = SipService(self.config.sip, self.reactor)
        self.registrar = RegistrarService(self.config, self.reactor, self.sip.core, self.store)
        self.registrar.events = self.events
        # The console's SIP ladders, stored once a call is over (Timer F after its end).
        self.sip_flows = LadderArchive(self.sip.capture, self.reactor, settle=64 * self.config.sip.timers.t1,
                                       retention=self.config.console.sip_flow_days * 86400.0)
        self.store.when_open().addCallbacks(self.sip_flows.start, lambda _: None)
        self.store.closing.append(self.sip_flows.close)
        self.trunks = TrunkService(self.config, self.reactor, self.sip.core)
        self.trunks.watch = lambda registrations, checkers: watch_trunks(
            self.events, self.reactor, registrations, checkers)
        self.trunks.watch(self.trunks.registrations, self.trunks.checkers)
        # Calls stop first (children stop in reverse): their BYEs need the transports
        # and their CDRs the store.
        self.calls = CallService(self.config, self.reactor, self.sip.core, self.registrar, self.store)
        self.calls.manager.events = self.events
        self.calls.manager.capture = self.sip.capture
        self.calls.manager.trunks = self.trunks.registry
        # Hostile traffic (pbxd.security): ACL and flood bans before parsing,
        # scanners after; the resource limits go to the tables' owners.
        self.security = SipFirewall(self.reactor, self.config)
        self.security.install(self.sip.transports, self.sip.core.layer, self.calls.manager)
        if self.config.auth.guard.action == "drop":
            # A registrar that fails to start is reported by its own service.
            self.registrar.when_ready().addCallbacks(self._drop_banned_sources, lambda _: None)
        # HTTP last: it starts once what it drives exists, and stops first.
        self.http = HttpService(self, self.reactor, self.config_path, self.signals)
        return [self.store, self.sip, self.registrar, self.trunks, self.calls, self.http]

    def _drop_banned_sources(self, registrar: RegistrarService) -> None:
        """auth.guard.action drop: an address the guard bans is banned by the
        firewall too, which drops what it sends before parsing (no 403 to learn from)."""
        def ban(address: str, ban_time: float) -> None:
            self.security.flood.ban(address, "failed authentications (auth.guard)", ban_time)
        registrar.authenticator.guard.source_ban_listeners.append(ban)

    def setServiceParent(self, parent: Any) -> None:
        super().setServiceParent(parent)
        # twistd creates the Application after makeService() and then starts
        # logging with the Application's ILogObserver component if it has one
        # (twisted.application.app.AppLogger.start): this is where pbxd's own
        # format and level take over from twistd's default text observer.
        if (
            self.log_observer is not None
            and isinstance(parent, Componentized)
            and parent.getComponent(ILogObserver) is None
        ):
            parent.setComponent(ILogObserver, self.log_observer)

    def privilegedStartService(self) -> None:
        # Sockets are bound here, before twistd runs the reactor, so that a
        # port in use ends start-up instead of leaving a daemon without SIP.
        self._begin()
        try:
            super().privilegedStartService()
        except (OSError, CannotListenError, ValueError) as error:
            self._cannot_start(str(error), error)

    def startService(self) -> None:
        self._begin()
        try:
            super().startService()
        except (OSError, CannotListenError, StoreError, ValueError) as error:
            self._cannot_start(str(error), error)
        # twistd starts services before the reactor runs and installs its
        # signal handlers; "ready" means both, so SIGTERM now stops pbxd cleanly.
        self._ready_call = self.reactor.callLater(0, self._ready)

    def _begin(self) -> None:
        """Prepare the data directory, once, before any child starts or binds."""
        if self._begun:
            return
        self._begun = True
        # The data directory comes first: the store keeps its files there.
        try:
            self.config.data_dir.mkdir(mode=0o750, parents=True, exist_ok=True)
        except OSError as error:
            self._cannot_start(f"data_dir {self.config.data_dir}: {error.strerror}", error)
        self.log.info(
            "pbxd {version} starting, data directory {data_dir}",
            version=__version__,
            data_dir=str(self.config.data_dir.absolute()),
        )

    def _ready(self) -> None:
        self._ready_call = None
        self.log.info("pbxd {version} ready", version=__version__)

    def stopService(self) -> Any:
        if self._ready_call is not None:
            self._ready_call.cancel()
            self._ready_call = None

        # MultiService stops every child at once; trunks unregister first,
        # while the SIP stack still runs (bounded: TrunkService.unregister).
        def stop_the_rest(_: object) -> Any:
            return super(PbxService, self).stopService()

        return defer.maybeDeferred(self.trunks.unregister).addBoth(stop_the_rest)

    def _cannot_start(self, reason: str, error: Exception) -> None:
        self.log.critical("pbxd cannot start: {reason}", reason=reason)
        raise StartupError(reason) from error


class SipService(Service):
    """The SIP stack: transports on the configured addresses, the transaction
    layer and the SIP core with its transaction users."""

    name = "sip"

    def __init__(self, config: SipConfig, reactor: Any) -> None:
        from pbxd.transport import SipTransports, TlsClientPolicy, server_tls_options

        self.config = config
        self.reactor = reactor
        tls = config.tls
        server_context = None
        if tls.certificate is not None:
            server_context = server_tls_options(
                tls.certificate,
                tls.private_key or tls.certificate,
                tls.ca_certificates if tls.verify_client else None,
            )
        self.transports = SipTransports(
            reactor,
            max_message_size=config.max_message_size,
            tcp_idle_timeout=config.tcp_idle_timeout,
            udp_to_tcp_threshold=config.udp_to_tcp_threshold,
            tls_server_context=server_context,
            tls_client_policy=TlsClientPolicy.from_files(
                tls.ca_certificates, tls.certificate, tls.private_key or tls.certificate
            ) if tls.certificate is not None else TlsClientPolicy.from_files(tls.ca_certificates),
            advertised_host=config.advertised_host,
        )
        timers = config.timers
        self.core = SipCore(
            reactor,
            self.transports,
            LocalDomains(config.domains, [entry.host for entry in config.listen], [config.advertised_host or ""]),
            timers=TimerSettings(t1=timers.t1, t2=timers.t2, t4=timers.t4, trying_delay=timers.invite_trying_delay),
            server_name=config.user_agent,
        )
        self.capture = SipCapture(reactor)
        self.transports.capture = self.capture

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        self._listen()

    def startService(self) -> None:
        super().startService()
        if not self.transports.listeners:  # started without the privileged step
            self._listen()

    def _listen(self) -> None:
        for entry in self.config.listen:
            self.transports.listen(entry.transport, entry.host, entry.port)

    def stopService(self) -> Any:
        super().stopService()
        self.core.layer.close()
        return self.transports.stop()


def auth_realm(config: Config) -> str:
    """The digest realm: ``auth.realm``, else the first SIP domain, else "pbxd"."""
    if config.auth.realm is not None:
        return config.auth.realm
    return config.sip.domains[0] if config.sip.domains else "pbxd"


class StoreService(Service):
    """The SQLite store in ``data_dir/pbxd.sqlite3``, opened at start, closed at stop.

    The file is opened and migrated once synchronously at start (before the
    reactor serves anything), so that a file that cannot be used stops
    start-up with one line; the store proper then opens in its thread.
    The ``extensions:`` of the config are written into a store that has no
    extensions yet; once it has some, the config's list is not read again
    (the REST API changes extensions from then on).
    """

    name = "store"
    FILE_NAME = "pbxd.sqlite3"
    log = Logger()

    def __init__(self, config: Config, reactor: Any) -> None:
        self.config = config
        self.reactor = reactor
        self.path = config.data_dir / self.FILE_NAME
        self.store: Store | None = None
        self._waiting: list[defer.Deferred[Store]] = []
        self._failure: Any = None
        # Last writes before the file closes (LadderArchive.close); the close waits for them.
        self.closing: list[Callable[[], object]] = []

    def startService(self) -> None:
        super().startService()
        self._check_file()
        Store.open(str(self.path), self.reactor).addCallback(self._opened).addErrback(self._failed)

    def _check_file(self) -> None:
        try:
            connection = sqlite3.connect(str(self.path), timeout=5.0)
        except sqlite3.Error as error:
            raise StoreError(f"store {self.path}: cannot open: {error}") from error
        try:
            migrate(connection, MIGRATIONS, self.reactor.seconds())
        except (StoreError, sqlite3.Error) as error:
            raise StoreError(f"store {self.path}: {error}") from error
        finally:
            connection.close()

    async def _seed(self, store: Store) -> None:
        wanted = self.config.extensions
        if not wanted:
            return
        if await store.list_extensions():
            self.log.info(
                "store: {count} extensions in the config are not seeded: the store has extensions"
                " already (change them through the REST API)",
                count=len(wanted),
            )
            return
        added = await store.seed_extensions([e.spec() for e in wanted], auth_realm(self.config))
        self.log.info("store: seeded {count} extensions from the config", count=len(added))

    def _opened(self, store: Store) -> defer.Deferred[None]:
        def ready(_: object) -> None:
            self.store = store
            waiting, self._waiting = self._waiting, []
            for waiter in waiting:
                waiter.callback(store)

        return defer.Deferred.fromCoroutine(self._seed(store)).addCallback(ready)

    def _failed(self, failure: Any) -> None:
        self._failure = failure
        self.log.critical("store {path} failed to open: {error}", path=str(self.path),
                          error=failure.value)
        waiting, self._waiting = self._waiting, []
        for waiter in waiting:
            waiter.errback(failure)

    def when_open(self) -> defer.Deferred[Store]:
        """Fires with the Store once it is open and seeded (at once if it is)."""
        if self.store is not None:
            return defer.succeed(self.store)
        if self._failure is not None:
            return defer.fail(self._failure)
        waiter: defer.Deferred[Store] = defer.Deferred()
        self._waiting.append(waiter)
        return waiter

    def stopService(self) -> Any:
        super().stopService()
        store, self.store = self.store, None
        if store is not None:
            for last_writes in self.closing:
                last_writes()
            return store.close()
        return None


class RegistrarService(Service):
    """The registrar, its digest authentication and the location service.

    Everything that needs the store is built once the store is open and the
    bindings are loaded. REGISTERs that arrive before that (the sockets are
    bound earlier, in the privileged start) wait for it, up to
    ``MAX_WAITING`` of them, so that no REGISTER ever sees an empty location
    service; more are answered 503 with Retry-After. The call layer waits on
    :meth:`when_ready` before it looks anyone up.
    """

    name = "registrar"
    MAX_WAITING = 1000
    log = Logger()

    def __init__(self, config: Config, reactor: Any, core: SipCore, store: StoreService) -> None:
        self.config = config
        self.reactor = reactor
        self.core = core
        self.store_service = store
        self.realm = auth_realm(config)
        # AORs are sip:<user>@<domain> whichever address a phone registered to.
        self.domain = config.sip.domains[0] if config.sip.domains else self.realm
        self.webhooks: WebhookClient | None = None
        self.location: LocationService | None = None
        self.authenticator: RequestAuthenticator | None = None
        self.registrar: Registrar | None = None
        self.directory: ExtensionDirectory | None = None
        self.qualifier: Qualifier | None = None
        self.events: EventBus | None = None  # set by PbxService
        self._waiting: deque[tuple[ServerTransaction, Request]] = deque()
        self._failure: Any = None
        self._ready_waiters: list[defer.Deferred[RegistrarService]] = []
        core.register("REGISTER", self)
        core.support("path")

    # -- start and stop ------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        # Made here, once data_dir exists; a bad key file stops start-up.
        self._nonce_secret = load_nonce_secret(self.config.data_dir, self.config.auth.nonce_secret)
        self.store_service.when_open().addCallback(
            lambda store: defer.Deferred.fromCoroutine(self._build(store))
        ).addErrback(self._failed)

    async def _build(self, store: Store) -> None:
        auth, settings, locator = self.config.auth, self.config.registrar, self.config.locator
        if locator.url is not None or any(b.type == "http" for b in auth.backends):
            self.webhooks = WebhookClient(self.reactor)
        # The extensions in memory: the static backend answers from them, no store read per REGISTER.
        self.directory = ExtensionDirectory(store, name=STATIC_BACKEND)
        await self.directory.refresh()
        backends: list[Any] = []
        for index, backend in enumerate(auth.backends):
            if backend.type == "static":
                backends.append(self.directory)
            else:
                backends.append(HttpUserBackend(
                    self.webhooks, backend.url, method=backend.method,
                    username_field=backend.username_field, realm_field=backend.realm_field,
                    request_uri_field=backend.request_uri_field, headers=dict(backend.headers),
                    timeout=backend.timeout, retries=backend.retries, cache_ttl=backend.cache_ttl,
                    password_format=backend.password_format, clock=self.reactor,
                    name=f"http[{index}]",
                ))
        guard = AuthGuard(self.reactor, auth.guard.max_failures, auth.guard.window,
                          auth.guard.ban_time, auth.guard.trusted)
        digest = DigestAuthenticator(
            NonceManager(self._nonce_secret, self.reactor, auth.nonce_lifetime),
            self.realm, auth.algorithms,
        )
        self.authenticator = RequestAuthenticator(
            self.core, backends[0] if len(backends) == 1 else ChainedBackend(backends), digest,
            guard, auth.failure_response,
        )
        notifier = None
        if locator.url is not None:
            notifier = LocatorNotifier(self.webhooks, locator.url, locator.events,
                                       dict(locator.headers), locator.timeout, locator.retries)
        self.location = LocationService(store, self.reactor, notifier, domain=self.domain)
        if self.events is not None:
            self.location.observers.append(registration_publisher(self.events, self.reactor))
        await self.location.load()
        self.directory.location = self.location
        self.core.users = self.directory
        if settings.qualify_interval > 0:
            self.qualifier = Qualifier(self.core, self.location, self.reactor,
                                       settings.qualify_interval)
            self.qualifier.start()
        self.registrar = Registrar(
            self.core, self.location, self.authenticator, store,
            RegistrarSettings(settings.min_expires, settings.max_expires,
                              settings.default_expires, settings.max_contacts),
        )
        self.log.info("registrar ready: realm {realm}, {bindings} bindings, {extensions} extensions",
                      realm=self.realm, bindings=len(self.location), extensions=len(self.directory))
        waiting, self._waiting = self._waiting, deque()
        for txn, request in waiting:
            self.registrar.handle_request(txn, request)
        ready, self._ready_waiters = self._ready_waiters, []
        for waiter in ready:
            waiter.callback(self)

    def _failed(self, failure: Any) -> None:
        self.log.failure("the registrar could not start", failure)
        self._failure = failure
        waiting, self._waiting = self._waiting, deque()
        for txn, _ in waiting:
            if not txn.has_final_response:
                self.core.reply(txn, 500)
        ready, self._ready_waiters = self._ready_waiters, []
        for waiter in ready:
            waiter.errback(failure)

    def when_ready(self) -> defer.Deferred[RegistrarService]:
        """Fires once the location service is loaded and REGISTERs are handled
        (fails if the registrar could not start)."""
        if self.registrar is not None:
            return defer.succeed(self)
        if self._failure is not None:
            return defer.fail(self._failure)
        waiter: defer.Deferred[RegistrarService] = defer.Deferred()
        self._ready_waiters.append(waiter)
        return waiter

    def stopService(self) -> Any:
        super().stopService()
        if self.qualifier is not None:
            self.qualifier.stop()
        if self.location is not None:
            self.location.stop()
        if self.webhooks is not None:
            return self.webhooks.stop()
        return None

    # -- REGISTER until the registrar is built ----------------------------------------

    def handle_request(self, txn: ServerTransaction, request: Request) -> None:
        if self.registrar is not None:
            self.registrar.handle_request(txn, request)
        elif self._failure is not None:
            self.core.reply(txn, 500)
        elif len(self._waiting) < self.MAX_WAITING:
            self._waiting.append((txn, request))
        else:
            self.core.reply(txn, 503, Retry_After="5")


class CallService(Service):
    """The call layer (B2BUA): a :class:`CallManager` on the SIP core.

    It is registered for INVITE at once, so no INVITE meets a pbxd without a
    call layer; until the registrar is ready, new calls get 503 with
    Retry-After. The store is attached when it opens (CDRs); the HTTP router
    and CDR push share one WebhookClient spooling to that store. Stopping
    refuses new calls, hangs up the calls up (BYE) and waits for their CDRs,
    before the store (which stops after this service) closes.
    """

    name = "calls"
    log = Logger()

    def __init__(self, config: Config, reactor: Any, core: SipCore, registrar: RegistrarService,
                 store: StoreService) -> None:
        self.config = config
        self.reactor = reactor
        self.store_service = store
        calls = config.calls
        self.webhooks: WebhookClient | None = None
        if config.http_router.url is not None or config.cdr.push_url is not None:
            self.webhooks = WebhookClient(reactor)
        self.manager = CallManager(
            core, reactor, registrar,
            Router.from_config(config.routes, config.http_router, self.webhooks),
            CallSettings(calls.max_ring_time, calls.max_duration, calls.session_expires, calls.min_se,
                         calls.session_timers),
            # Media is relayed unless a route or the HTTP router says media_proxy
            # none (or nat, for callers that are not behind NAT).
            media_factory=relay_media_factory(reactor, config.rtp, config.data_dir),
        )

    def startService(self) -> None:
        super().startService()
        self.store_service.when_open().addCallback(self._store_open).addErrback(
            lambda failure: self.log.failure("calls: no store for CDRs", failure))

    def _store_open(self, store: Store) -> None:
        self.manager.store = store
        if self.webhooks is not None:
            self.webhooks.spool = store
            self.manager.cdr_pusher = CdrPusher.from_config(self.config.cdr, self.webhooks, self.config.data_dir)
            if self.manager.cdr_pusher is not None:
                self.webhooks.start()

    def stopService(self) -> Any:
        super().stopService()
        d = self.manager.stop()
        if self.webhooks is not None:
            webhooks = self.webhooks
            d.addCallback(lambda _: webhooks.stop())
        return d


@attrs.frozen
class TrunkReload:
    """What a trunk reload changed: trunk names added, changed and removed."""

    added: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.added or self.changed or self.removed)

    def to_json(self) -> dict[str, list[str]]:
        return {"added": list(self.added), "changed": list(self.changed), "removed": list(self.removed)}


class TrunkService(Service):
    """SIP trunks: the registry the call layer asks, registrations, health checks.

    ``resolver`` is the DNS resolver for RFC 3263 (None: the system's, made on
    first use). Registrations start with the service and are unregistered by
    :meth:`unregister`, which PbxService runs before the SIP stack stops; it
    fires when every carrier has answered or after
    ``pbxd.trunks.registration.UNREGISTER_TIMEOUT``.
    """

    name = "trunks"
    log = Logger()

    def __init__(self, config: Config, reactor: Any, core: SipCore, resolver: Any = None) -> None:
        self.reactor = reactor
        self.core = core
        self.locator = Locator(resolver, reactor)
        self.registry = TrunkRegistry.from_config(config.trunks, reactor, self.locator)
        self.registrations: list[TrunkRegistration] = []
        self.checkers: list[HealthChecker] = []
        # Told of the registrations and health checkers of trunks a reload adds
        # (PbxService publishes their events): (registrations, checkers).
        self.watch: Callable[[list[TrunkRegistration], list[HealthChecker]], None] | None = None
        for trunk in self.registry:
            self._drive(trunk)
        self._unregistered: defer.Deferred[Any] | None = None

    def _drive(self, trunk: Trunk) -> tuple[list[TrunkRegistration], list[HealthChecker]]:
        """Make the registration and health checker ``trunk``'s configuration asks for."""
        registrations = [TrunkRegistration(self.core, trunk, self.reactor)] if trunk.config.register.enabled else []
        checkers = ([HealthChecker(self.core, trunk, self.reactor, trunk.config.options_interval)]
                    if trunk.config.options_interval > 0 else [])
        self.registrations += registrations
        self.checkers += checkers
        return registrations, checkers

    def startService(self) -> None:
        super().startService()
        for checker in self.checkers:
            checker.start()
        for registration in self.registrations:
            registration.start()
        if len(self.registry):
            self.log.info("trunks: {count} configured, {registering} registering, {checked} health-checked",
                          count=len(self.registry), registering=len(self.registrations),
                          checked=len(self.checkers))

    def reload(self, configs: Iterable[TrunkConfig]) -> defer.Deferred[TrunkReload]:
        """Take a new list of trunks (already checked) while running.

        By name: a trunk gone is unregistered (bounded by UNREGISTER_TIMEOUT)
        and no longer health-checked; a changed one is stopped the same way,
        then started again from its new configuration; a new one starts; an
        unchanged one is left alone (its registration and health go on). The
        registry the call layer holds is the same object, its trunks replaced
        at once: calls up keep the Trunk they started with. Fires with what
        changed once the old registrations have stopped and the new started.
        """
        configs = tuple(configs)
        old = {trunk.name: trunk for trunk in self.registry}
        wanted = {config.name: config for config in configs}
        removed = tuple(name for name in old if name not in wanted)
        changed = tuple(name for name, config in wanted.items() if name in old and old[name].config != config)
        added = tuple(name for name in wanted if name not in old)
        summary = TrunkReload(added, changed, removed)
        if not summary:
            return defer.succeed(summary)
        trunks = [old[name] if name in old and name not in changed
                  else Trunk(config, self.reactor, self.locator) for name, config in wanted.items()]
        self.registry.replace(trunks)
        starts = []
        for trunk in trunks:
            if trunk.name in added:
                starts.append(self._start(trunk, defer.succeed(None)))
            elif trunk.name in changed:
                starts.append(self._start(trunk, self._stop(old[trunk.name])))
        stops = [self._stop(old[name]) for name in removed]
        self.log.info("trunks reloaded: added {added}, changed {changed}, removed {removed}",
                      added=", ".join(added) or "none", changed=", ".join(changed) or "none",
                      removed=", ".join(removed) or "none")
        return defer.DeferredList([*starts, *stops], consumeErrors=True).addCallback(lambda _: summary)

    def _stop(self, trunk: Trunk) -> defer.Deferred[None]:
        """Stop a trunk that leaves the registry: its health checks, its registration (unregistering)."""
        for checker in [c for c in self.checkers if c.trunk is trunk]:
            checker.stop()
            self.checkers.remove(checker)
        registrations = [r for r in self.registrations if r.trunk is trunk]
        for registration in registrations:
            self.registrations.remove(registration)
        return defer.DeferredList([r.stop() for r in registrations], consumeErrors=True).addCallback(lambda _: None)

    def _start(self, trunk: Trunk, after: defer.Deferred[None]) -> defer.Deferred[None]:
        """Drive a trunk new to the registry once ``after`` fires (a changed
        trunk's old registration is gone first: one binding per account)."""
        registrations, checkers = self._drive(trunk)
        if self.watch is not None:
            self.watch(registrations, checkers)

        def begin(_: object) -> None:
            if not self.running or self._unregistered is not None or self.registry.trunk(trunk.name) is not trunk:
                return  # stopping, or reloaded again meanwhile
            for checker in checkers:
                checker.start()
            for registration in registrations:
                registration.start()

        return after.addCallback(begin)

    def unregister(self) -> defer.Deferred[None]:
        """Stop health checks and registrations, unregistering; done once, and
        each caller gets a Deferred of its own that fires when it is over."""
        if self._unregistered is None:
            for checker in self.checkers:
                checker.stop()
            self._unregistered = defer.DeferredList(
                [registration.stop() for registration in self.registrations], consumeErrors=True
            )
        waiter: defer.Deferred[None] = defer.Deferred()

        def done(result: object) -> object:
            waiter.callback(None)
            return result

        self._unregistered.addBoth(done)
        return waiter

    def stopService(self) -> Any:
        super().stopService()
        return self.unregister()


class HttpService(Service):
    """The HTTP port (``http.host``:``http.port``): /api, /ami/v1 and the
    other trees of :func:`pbxd.web.app.build_root`, served by Klein.

    The socket is bound in the privileged start (a port in use stops
    start-up). With ``signals``, SIGTERM starts the graceful stop of
    :meth:`pbxd.web.ami.Operations.shutdown` (a second SIGTERM stops at once)
    and SIGHUP reloads the config file; the handlers are installed once the
    reactor runs, after twistd's own, which they replace.
    """

    name = "http"
    log = Logger()

    def __init__(self, pbx: PbxService, reactor: Any, config_path: Path | None = None,
                 signals: bool = False) -> None:
        from pbxd.web.app import PbxdSite, WebContext, build_root

        self.reactor = reactor
        self.web = WebContext.from_config(pbx, reactor, config_path)
        self.root = build_root(self.web)
        self.operations = self.root.tree("/ami/v1").operations
        self.site = PbxdSite(self.root, pbx.config.http.max_body_bytes, reactor)
        self.signals = signals
        self.port: Any = None

    @property
    def address(self) -> tuple[str, int]:
        """The host and port listened on (the real port when the config says 0)."""
        host = self.port.getHost()
        return host.host, host.port

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        self._listen()

    def startService(self) -> None:
        super().startService()
        if self.port is None:  # started without the privileged step
            self._listen()
        self.web.started_at = self.reactor.seconds()
        if self.signals:
            self.reactor.callWhenRunning(self.install_signal_handlers)

    def _listen(self) -> None:
        http = self.web.config.http
        self.port = self.reactor.listenTCP(http.port, self.site, interface=http.host)
        host, port = self.address
        self.log.info("http: listening on {host}:{port}{open}", host=f"[{host}]" if ":" in host else host,
                      port=port, open="" if http.tokens else " (no API tokens: open to local clients)")

    def install_signal_handlers(self) -> None:
        # A signal handler runs between two bytecodes of whatever the reactor
        # was doing: it only hands the work to the reactor's thread.
        signal.signal(signal.SIGTERM, lambda *_: self.reactor.callFromThread(self.on_sigterm))
        signal.signal(signal.SIGHUP, lambda *_: self.reactor.callFromThread(self.on_sighup))

    def on_sigterm(self) -> None:
        # twistd ends the process by the signal the reactor says stopped it (so
        # that systemd sees "killed by SIGTERM", as with twistd's own handler).
        if hasattr(self.reactor, "_exitSignal"):
            self.reactor._exitSignal = signal.SIGTERM
        if self.operations.draining:
            self.operations.stop_now("a second SIGTERM")
        else:
            self.operations.shutdown("SIGTERM")

    def on_sighup(self) -> None:
        from pbxd.web.errors import HttpError

        try:
            self.operations.reload("config")
        except HttpError as error:
            self.log.error("SIGHUP: {reason}", reason=error.message)

    def stopService(self) -> Any:
        super().stopService()
        self.operations.cancel()
        port, self.port = self.port, None
        return None if port is None else port.stopListening()
