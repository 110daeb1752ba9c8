"""The registrar: REGISTER processing of RFC 3261 §10.3, with Path (RFC 3327).

The steps run in the RFC's order; each says which rule it applies. Every
change is written to the store before the 200 goes out (through
:meth:`LocationService.commit`), and each successful registration updates
the registered-phones table (IP, User-Agent, Contact, and the MAC, vendor and
model the phone gives away).

Decisions the RFC leaves open:

- A REGISTER with the Call-ID of a binding and a CSeq not above the stored
  one (§10.3 step 7, "the request fails") gets ``400 Invalid CSeq``: it is an
  old request delivered late, retransmissions having been absorbed by the
  transaction layer already; a retry cannot fix it, a new CSeq can.
- An AOR holds at most ``max_contacts`` bindings. A REGISTER adding one more
  replaces the AOR's oldest other bindings (a phone that changed address and
  Call-ID should not be locked out until its old binding expires); one that
  carries more contacts than that on its own gets 403.
- RFC 5626 ``outbound`` is not offered: ``+sip.instance`` and ``reg-id`` only
  key the binding (RFC 5626 §6, RFC 5627 §4.2), and the flow is always where
  pbxd sends.
"""

from __future__ import annotations

import email.utils

import attrs
from twisted.internet import defer
from twisted.logger import Logger

from pbxd.registrar.auth import RequestAuthenticator
from pbxd.registrar.location import BoundContact, LocationService
from pbxd.registrar.phones import phone_facts
from pbxd.sip.errors import SipParseError
from pbxd.sip.headers import Address, quote, unquoted
from pbxd.sip.message import Request
from pbxd.sip.transaction import ServerTransaction
from pbxd.sip.uri import SipURI
from pbxd.store import Binding, Store, StoreError, binding_key

log = Logger(namespace="pbxd.registrar")

# §20.19: larger expiry values are taken as this.
_MAX_DELTA = 2**32 - 1
# Seconds a phone is told to wait when the store cannot take its registration.
STORE_RETRY_AFTER = 5
# How many hosts' "is it ours?" answers are remembered (emptied when full:
# the hosts are the sender's to choose).
_LOCAL_HOSTS_MEMO = 1024


@attrs.frozen
class RegistrarSettings:
    """The registrar's limits (the ``registrar`` config section), in seconds."""

    min_expires: int = 60
    max_expires: int = 3600
    default_expires: int = 3600
    max_contacts: int = 10


class Rejected(Exception):
    """A REGISTER that gets an error response: status, reason phrase, extra headers."""

    def __init__(self, status: int, reason: str | None = None, **headers: str) -> None:
        super().__init__(status, reason)
        self.status = status
        self.reason = reason
        self.headers = headers


@attrs.frozen
class _Requested:
    """One Contact of a REGISTER, checked: the binding it asks for and for how long."""

    contact_uri: str
    contact: str  # the whole Contact value, parameters included
    expires: int
    q: float | None
    instance_id: str | None
    reg_id: int | None

    @property
    def key(self) -> str:
        return binding_key(self.contact_uri, self.instance_id, self.reg_id)


def _delta(value: str, what: str) -> int:
    text = value.strip(" \t")
    if not text.isdigit() or not text.isascii():
        raise Rejected(400, f"Bad {what}")
    return min(int(text), _MAX_DELTA)


def _q_value(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        q = float(value)
    except ValueError:
        raise Rejected(400, "Bad Contact q") from None
    if not 0.0 <= q <= 1.0:  # §20.10: qvalue is 0 to 1
        raise Rejected(400, "Bad Contact q")
    return q


def _normalized(uri: SipURI) -> str:
    # Hosts compare without case (§19.1.4); the rest is kept as the phone wrote it.
    return str(attrs.evolve(uri, host=uri.host.lower()))


class Registrar:
    """Answers REGISTER for the domains of ``core``.

    The core hands it REGISTERs through :class:`pbxd.service.RegistrarService`,
    which registers for the method (and the ``path`` option tag) at once and
    passes requests on once the location service is loaded.
    """

    def __init__(
        self,
        core,  # type: ignore[no-untyped-def]  # pbxd.core.SipCore
        location: LocationService,
        authenticator: RequestAuthenticator,
        store: Store,
        settings: RegistrarSettings = RegistrarSettings(),
    ) -> None:
        self.core = core
        self.location = location
        self.authenticator = authenticator
        self.store = store
        self.settings = settings
        self.registrations = 0
        # The Request-URI and To hosts of every REGISTER are the same few
        # names; LocalDomains parses each as an IP address first.
        self._local_hosts: dict[str, bool] = {}
        self._domains = core.domains

    def _is_local(self, host: str) -> bool:
        domains = self.core.domains
        if domains is not self._domains:  # replaced: what was remembered may be wrong
            self._domains = domains
            self._local_hosts.clear()
        local = self._local_hosts.get(host)
        if local is None:
            if len(self._local_hosts) >= _LOCAL_HOSTS_MEMO:
                self._local_hosts.clear()
            local = self._local_hosts[host] = domains.is_local(host)
        return local

    # -- the transaction user ----------------------------------------------------

    def handle_request(self, txn: ServerTransaction, request: Request) -> None:
        defer.Deferred.fromCoroutine(self.register(txn, request)).addErrback(self._failed, txn)

    def _failed(self, failure, txn: ServerTransaction) -> None:  # type: ignore[no-untyped-def]
        if failure.check(StoreError):
            # The database is locked or failing (issue 9): the phone is told to
            # come back rather than that its registration is wrong.
            log.error("REGISTER {call_id} from {source}: the store failed ({error}); answered 503",
                      call_id=txn.request.get("call-id"), source=str(txn.source), error=str(failure.value))
            if not txn.has_final_response:
                self.core.reply(txn, 503, Retry_After=str(STORE_RETRY_AFTER))
            return
        log.failure("REGISTER {call_id} from {source} failed", failure,
                    call_id=txn.request.get("call-id"), source=str(txn.source))
        if not txn.has_final_response:
            self.core.reply(txn, 500)

    async def register(self, txn: ServerTransaction, request: Request) -> None:
        try:
            await self._register(txn, request)
        except Rejected as rejected:
            log.info("REGISTER {call_id} from {source} rejected: {status} {reason}",
                     call_id=request.get("call-id"), source=str(txn.source),
                     status=rejected.status, reason=rejected.reason)
            self.core.reply(txn, rejected.status, rejected.reason, **rejected.headers)

    async def _register(self, txn: ServerTransaction, request: Request) -> None:
        # §10.3 step 1: the Request-URI names the domain whose bindings change;
        # pbxd keeps only its own and forwards nothing.
        ruri = request.ruri
        if not isinstance(ruri, SipURI):
            raise Rejected(416)  # §8.2.2.1
        if not self._is_local(ruri.host):
            raise Rejected(403, "Relaying Forbidden")
        # Step 2 (Require) was the core's. Headers that must parse are read
        # before the challenge, so that a malformed request gets 400 at once.
        try:
            to = request.to_addr
            wildcard = request.is_wildcard_contact
            contacts = request.contacts
            expires_header = request.expires
        except SipParseError as error:
            raise Rejected(400, _reason(error)) from None
        # Step 3: authenticate (§22). Unknown users are challenged like known ones.
        user = await self.authenticator.authenticate(txn, request)
        if user is None:
            return  # answered already
        # Step 4: an authenticated user may change only the bindings of its own AOR.
        to_uri = to.sip_uri
        aor_user = to_uri.unescaped_user if to_uri is not None else None
        if aor_user is not None and aor_user != user.username:
            raise Rejected(403, "Not Your Address-of-Record")
        # Step 5: the AOR (from To) must be one this registrar serves: 404 if not.
        if to_uri is None or aor_user is None or not self._is_local(to_uri.host):
            raise Rejected(404)
        aor = self.location.aor(aor_user)
        # Steps 6 and 7: what the Contacts ask for, checked before anything changes.
        if wildcard:
            # §10.2.2 / step 6: "*" only with Expires 0 (the parser made sure it is alone).
            if expires_header != 0:
                raise Rejected(400, "Wildcard Contact Needs Expires 0")
            requested = None
        else:
            requested = self._requested(contacts, expires_header)
        async with self.location.serialized(aor):
            now = self.location.clock.seconds()
            current = await self._apply(txn, request, aor_user, requested, now)
        # Step 8: 200 listing every current binding with its remaining time.
        self._answer(txn, request, current, now)

    def _requested(self, contacts: list[Address], expires_header: int | None) -> list[_Requested]:
        settings = self.settings
        requested: dict[str, _Requested] = {}
        too_brief = False
        # RFC 5626 §6: a REGISTER that registers a flow (reg-id) carries that one
        # Contact only; the registrar rejects one with more than one with 400.
        if len(contacts) > 1 and any(contact.param("reg-id") is not None for contact in contacts):
            raise Rejected(400, "Only One Contact With reg-id")
        for contact in contacts:
            uri = contact.sip_uri
            if uri is None:
                raise Rejected(400, "Contact Is Not a SIP URI")
            written = contact.param("expires")
            if written is not None:
                expires = _delta(unquoted(written) or "", "Contact expires")
            elif expires_header is not None:
                expires = expires_header
            else:
                expires = settings.default_expires
            if 0 < expires < settings.min_expires:
                too_brief = True
            reg_id_text = contact.param("reg-id")
            reg_id = None if reg_id_text is None else _delta(reg_id_text, "reg-id")
            entry = _Requested(
                contact_uri=_normalized(uri),
                contact=str(contact),
                expires=min(expires, settings.max_expires),
                q=_q_value(contact.param("q")),
                instance_id=unquoted(contact.param("+sip.instance")),
                reg_id=reg_id,
            )
            requested[entry.key] = entry  # the same binding twice: the last one counts
        if too_brief:
            # Step 7: "the registrar MAY reject ... with 423 (Interval Too Brief)",
            # with the shortest interval it accepts (§20.23).
            raise Rejected(423, Min_Expires=str(settings.min_expires))
        if len(requested) > settings.max_contacts:
            raise Rejected(403, "Too Many Contacts")
        return list(requested.values())

    async def _apply(
        self,
        txn: ServerTransaction,
        request: Request,
        user: str,
        requested: list[_Requested] | None,
        now: float,
    ) -> list[BoundContact]:
        aor = self.location.aor(user)
        existing = {contact.key: contact for contact in self.location.bindings(aor)}
        call_id = request.call_id
        cseq = request.cseq.seq
        if requested is None:
            # Step 6: Contact "*" removes every binding, unless one of them was
            # made by this Call-ID with a CSeq at least this one.
            for contact in existing.values():
                self._check_order(contact, call_id, cseq)
            return await self.location.commit(aor, [], list(existing))
        if not requested:
            return list(existing.values())  # §10.2.3: a query
        source = txn.source
        local_host, local_port = source.local or ("", 0)
        upserts: list[Binding] = []
        removals: list[str] = []
        for entry in requested:
            old = existing.get(entry.key)
            if old is not None:
                # Step 7: same Call-ID → the CSeq must be higher, else the whole request fails.
                self._check_order(old, call_id, cseq)
            if entry.expires == 0:
                removals.append(entry.key)
                continue
            upserts.append(
                Binding(
                    aor=aor,
                    contact_uri=entry.contact_uri,
                    expires_at=now + entry.expires,
                    call_id=call_id,
                    cseq=cseq,
                    source_transport=source.transport,
                    source_host=source.host,
                    source_port=source.port,
                    received_at=now,
                    local_host=local_host,
                    local_port=local_port,
                    instance_id=entry.instance_id,
                    reg_id=entry.reg_id,
                    path=tuple(request.get_all("path")),
                    q=entry.q,
                    user_agent=request.get("user-agent") or "",
                )
            )
        removals += self._make_room(existing, upserts, removals)
        committed = defer.Deferred.fromCoroutine(self.location.commit(aor, upserts, removals))
        if upserts:
            # Queued right behind the bindings, the phone joins their group
            # commit: one hand-off to the SQLite thread for both.
            first = next(entry for entry in requested if entry.expires)
            self._track_phone(user, request, upserts[0], first.contact, now)
        current = await committed
        if upserts:
            self.registrations += 1
        return current

    @staticmethod
    def _check_order(contact: BoundContact, call_id: str, cseq: int) -> None:
        if contact.binding.call_id == call_id and cseq <= contact.binding.cseq:
            raise Rejected(400, "Invalid CSeq")

    def _make_room(
        self, existing: dict[str, BoundContact], upserts: list[Binding], removals: list[str]
    ) -> list[str]:
        """The oldest other bindings to drop so that the AOR stays within max_contacts."""
        keep = {binding.key for binding in upserts}
        others = [c for key, c in existing.items() if key not in keep and key not in removals]
        excess = len(others) + len(upserts) - self.settings.max_contacts
        if excess <= 0:
            return []
        others.sort(key=lambda contact: contact.binding.received_at)
        return [contact.key for contact in others[:excess]]

    def _answer(
        self, txn: ServerTransaction, request: Request, current: list[BoundContact], now: float
    ) -> None:
        response = self.core.response(request, 200)
        for contact in current:
            binding = contact.binding
            value = f"<{binding.contact_uri}>;expires={binding.remaining(now)}"
            if binding.q is not None:
                value += f";q={binding.q:g}"
            if binding.instance_id is not None:
                value += f";+sip.instance={quote(binding.instance_id)}"
            if binding.reg_id is not None:
                value += f";reg-id={binding.reg_id}"
            response.add("Contact", value)
        # §10.3 step 8: a Date header lets phones without a clock set one.
        response.set("Date", email.utils.formatdate(now, usegmt=True))
        # RFC 3327 §5.3: the registrar copies the Path into its 200, in order.
        # Without "Supported: path" it may refuse the Path (420, the recommended
        # policy) or accept it; pbxd accepts it, since phones behind an SBC
        # seldom say Supported: path, and then the copy is due all the same: it
        # shows the phone which proxies were put in its way (§6).
        for value in request.get_all("path"):
            response.add("Path", value)
        txn.respond(response)

    # -- registered phones (pbx-rest-api.md "Phone Registration & MAC/IP Tracking") --

    def _track_phone(
        self, extension: str, request: Request, binding: Binding, contact: str, now: float
    ) -> None:
        """Record the phone; written after the bindings, in their transaction,
        and not waited for: a failure here must not fail the registration
        (readers through the store still see it, as the store runs its calls
        in order)."""
        # The request itself: phone_facts reads only the few headers that may carry a MAC.
        facts = phone_facts(binding.user_agent, binding.instance_id, contact, request)
        d = self.store.upsert_phone(
            extension=extension,
            ip=binding.source_host,
            contact_uri=f"<{binding.contact_uri}>",
            user_agent=binding.user_agent,
            mac=facts.mac,
            vendor=facts.vendor,
            model=facts.model,
            seen_at=now,
        )
        d.addErrback(lambda failure: log.failure("recording the phone of {extension} failed",
                                                 failure, extension=extension))


def _reason(error: SipParseError) -> str:
    """A reason phrase from a parse error: one line, no control characters."""
    return " ".join(str(error.reason).split())[:100] or "Bad Request"


__all__ = ["Registrar", "RegistrarSettings", "Rejected"]
