"""The SIP core: the transaction user that every request passes first.

It applies the UAS checks of RFC 3261 §8.2 in the RFC's order (method,
Request-URI, Require), answers OPTIONS to pbxd itself and to any user of its
domains alike (§11; no 404 that would reveal who exists), matches CANCEL to
its INVITE (§9.2), and hands everything else to the handler registered for
the method: the registrar, the call layer, presence... A handler that raises
does not take the daemon down: the request gets a 500 and the error is logged.
"""

from __future__ import annotations

import ipaddress
from typing import Iterable, Protocol

from twisted.logger import Logger

from pbxd.sip.ids import new_tag
from pbxd.sip.message import Request, Response, make_response
from pbxd.sip.transaction import ServerTransaction, TimerSettings, TransactionLayer
from pbxd.sip.uri import SipURI, TelURI, bare_host
from pbxd.transport import Target

log = Logger()

# Option tags pbxd understands in a Require header; a request that requires
# anything else gets 420 (§8.2.2.3). Handlers add theirs with ``support()``.
_CORE_METHODS = ("OPTIONS", "ACK", "CANCEL")


class RequestHandler(Protocol):
    def handle_request(self, txn: ServerTransaction, request: Request) -> None:
        """Answer a new request through ``txn``."""

    def handle_cancel(self, invite_txn: ServerTransaction, cancel: Request) -> None:
        """An INVITE this handler got was cancelled; it must send the 487."""


class UserDirectory(Protocol):
    def has_user(self, user: str) -> bool:
        """Whether a user part of a local Request-URI names someone here."""


class NoUsers:
    """The directory before any registrar exists: nobody lives here."""

    def has_user(self, user: str) -> bool:
        return False


class LocalDomains:
    """Decides whether a Request-URI host is served by this pbxd.

    Configured domains always are, and so are the addresses pbxd listens on
    and names for the machine itself. A wildcard listen address (0.0.0.0 or
    ::) makes every IP literal local, since any of the machine's addresses
    may be the one a phone used.
    """

    def __init__(self, domains: Iterable[str], listen_hosts: Iterable[str], advertised: Iterable[str] = ()) -> None:
        self._names = {d.lower().rstrip(".") for d in domains}
        self._names.update(h.lower() for h in advertised if h)
        self._names.update(("localhost", "localhost.localdomain"))
        self._addresses: set[ipaddress._BaseAddress] = {
            ipaddress.ip_address("127.0.0.1"),
            ipaddress.ip_address("::1"),
        }
        self._any_address = False
        for host in listen_hosts:
            address = _ip(host)
            if address is None:
                self._names.add(host.lower())
            elif address.is_unspecified:
                self._any_address = True
            else:
                self._addresses.add(address)

    def is_local(self, host: str) -> bool:
        address = _ip(bare_host(host))
        if address is None:
            return host.lower().rstrip(".") in self._names
        return self._any_address or address in self._addresses


def _ip(host: str) -> ipaddress._BaseAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


class SipCore:
    """The first transaction user: checks, OPTIONS, CANCEL and dispatch by method."""

    def __init__(
        self,
        clock,
        transports,
        domains: LocalDomains,
        *,
        timers: TimerSettings = TimerSettings(),
        server_name: str = "pbxd",
        users: UserDirectory | None = None,
    ) -> None:
        self.transports = transports
        self.domains = domains
        self.server_name = server_name
        self.users: UserDirectory = users or NoUsers()
        self._handlers: dict[str, RequestHandler] = {}
        self._supported: set[str] = set()
        self._ack_receivers: list = []
        self.layer = TransactionLayer(clock, transports, self, timers)
        transports.receiver = self.layer.receive
        transports.error_receiver = self.layer.transport_error

    # -- configuration by the layers above --------------------------------

    def register(self, method: str, handler: RequestHandler) -> None:
        self._handlers[method.upper()] = handler

    def support(self, *option_tags: str) -> None:
        self._supported.update(option_tags)

    def on_ack(self, receiver) -> None:  # type: ignore[no-untyped-def]
        """Add a receiver for ACKs of 2xx responses (the dialog layer)."""
        self._ack_receivers.append(receiver)

    @property
    def allowed_methods(self) -> list[str]:
        return sorted(set(self._handlers) | set(_CORE_METHODS))

    # -- building responses -----------------------------------------------

    def response(self, request: Request, status: int, reason: str | None = None) -> Response:
        """A response with a To tag where one is due (§8.2.6.2) and our Server header."""
        response = make_response(request, status, reason)
        if status > 100 and request.to_addr.tag is None:
            response.set("To", str(request.to_addr.with_param("tag", new_tag())))
        response.set("Server", self.server_name)
        return response

    def reply(self, txn: ServerTransaction, status: int, reason: str | None = None, **headers: str) -> None:
        response = self.response(txn.request, status, reason)
        for name, value in headers.items():
            response.set(name.replace("_", "-"), value)
        txn.respond(response)

    # -- TransactionUser ----------------------------------------------------

    def request_received(self, txn: ServerTransaction, request: Request) -> None:
        try:
            self._dispatch(txn, request)
        except Exception:
            log.failure("handler failed for {method} {call_id}", method=request.method, call_id=request.call_id)
            if not txn.has_final_response:
                self.reply(txn, 500)

    def ack_received(self, request: Request, source: Target) -> None:
        for receiver in self._ack_receivers:
            receiver(request, source)

    def stray_response(self, response: Response, source: Target) -> None:
        log.debug("stray response {status} for {call_id} from {source}", status=response.status,
                  call_id=response.get("call-id"), source=source)

    # -- the checks ---------------------------------------------------------

    def _dispatch(self, txn: ServerTransaction, request: Request) -> None:
        method = request.method
        if method == "CANCEL":
            self._cancel(txn, request)
            return
        handler = self._handlers.get(method)
        if handler is None and method != "OPTIONS":
            # §8.2.1: a method we do not implement.
            self.reply(txn, 405, Allow=", ".join(self.allowed_methods))
            return
        max_forwards = request.max_forwards
        if max_forwards == 0 and method != "OPTIONS":
            # §16.3 step 3; OPTIONS with Max-Forwards 0 is how one asks a server about itself (§11).
            self.reply(txn, 483)
            return
        ruri = request.ruri
        if not isinstance(ruri, (SipURI, TelURI)):
            self.reply(txn, 416)  # §8.2.2.1
            return
        unsupported = [tag for tag in request.get_all("require") if tag not in self._supported]
        if unsupported:
            self.reply(txn, 420, Unsupported=", ".join(unsupported))  # §8.2.2.3
            return
        if method == "OPTIONS" and handler is None:
            self._options(txn, request)
            return
        handler.handle_request(txn, request)  # type: ignore[union-attr]

    def _options(self, txn: ServerTransaction, request: Request) -> None:
        # §11.2: the answer to OPTIONS tells what this server can do. OPTIONS
        # to any user of a local domain is answered as OPTIONS to pbxd itself,
        # whether that user exists or not: a 404 for the ones that do not
        # would let a scanner (svwar -m OPTIONS) enumerate extensions (issue 9).
        ruri = request.ruri
        if isinstance(ruri, SipURI) and not self.domains.is_local(ruri.host):
            self.reply(txn, 403, "Relaying Forbidden")
            return
        self.reply(
            txn,
            200,
            Allow=", ".join(self.allowed_methods),
            Accept="application/sdp",
            Accept_Encoding="identity",
            Accept_Language="en",
            Supported=", ".join(sorted(self._supported)),
        )

    def _cancel(self, txn: ServerTransaction, cancel: Request) -> None:
        invite = self.layer.find_invite_transaction(cancel)
        if invite is None:
            self.reply(txn, 481)  # §9.2
            return
        # §9.2: the CANCEL is answered 200 whatever the INVITE's state; the
        # INVITE gets 487 only if it has no final response yet.
        self.reply(txn, 200)
        if invite.has_final_response:
            return
        handler = self._handlers.get("INVITE")
        if handler is not None:
            handler.handle_cancel(invite, cancel)
        else:
            self.reply(invite, 487)
