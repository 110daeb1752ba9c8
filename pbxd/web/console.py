"""``/console``: the management tree of rustpbx-api-integration.md §2.1-§2.2 (issue 7).

Who: ``POST /login`` with an admin user of ``console.admins`` gives a session
cookie (HttpOnly, SameSite=Strict, Secure over TLS) worth the ``admin``
scope for ``console.session_ttl`` seconds; API tokens work as everywhere
(:mod:`pbxd.web.auth`). Reading needs ``read``, changing ``write``.

What:

- ``/calls/active``: the calls up or ringing, one call, and commands on it
  (``hangup``, ``transfer``, ``hold``/``unhold``, ``mute``/``unmute``,
  ``send_dtmf``, ``start``/``stop``/``pause``/``resume_recording``,
  ``accept``). A command the call cannot do now is 409 with the reason; the
  media commands need the call's media relayed (409 otherwise: pbxd never
  pretends); ``accept`` answers a ringing call with an outside endpoint's
  SDP (the forks are CANCELled; 422 for SDP that does not parse).
- ``/extensions``: CRUD through the store; the SIP side's directory is
  refreshed before the answer, so a change is live at once.
- ``/routing``: the static routes by name, in the config's shape; a change
  is checked like the config file, written to it (when pbxd runs with one,
  other keys and their comments kept) and then swapped into the router, so
  the next call routes by it.
- ``/sip-trunk``: the trunks with their live state (passwords masked);
  a change is checked, written and applied like ``/routing``'s, the trunk
  registry reloaded (pbxd.service.TrunkService.reload): a new trunk
  registers, a removed one unregisters, a changed one does both.
- ``/call-records``: CDRs with filters and paging (GET query or POST body),
  one record, its recording (HTTP Range: 206 and 416 as RFC 9110 §14) and
  its SIP ladder: from the in-memory capture while the call is up and for the
  capture's grace after, then from the store (pbxd.sip.capture.LadderArchive).
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import os
import re
import secrets
from collections import OrderedDict
from pathlib import Path
from typing import Any

import attrs
import yaml
from klein import Klein
from twisted.internet import defer, threads
from twisted.internet.interfaces import IPullProducer
from twisted.logger import Logger
from twisted.web.iweb import IRequest
from zope.interface import implementer

from pbxd.call.call import CallError
from pbxd.config import ConfigError, route_list, to_data, trunk_list, yaml_data
from pbxd.hooks.cdr_push import cdr_json
from pbxd.sip.errors import SipParseError
from pbxd.store import NotFoundError
from pbxd.store.models import DIRECTIONS, DISPOSITIONS, Extension, is_extension_number
from pbxd.web.ami import Operations
from pbxd.web.api import (
    EXTENSION_FIELDS,
    NEW_EXTENSION,
    ExtensionAdmin,
    mask_secrets,
    replace_top_level,
    restore_secrets,
    write_atomically,
)
from pbxd.web.app import WebContext
from pbxd.web.auth import ADMIN, READ, WRITE, Principal, principal_of, requires
from pbxd.web.errors import (
    Field,
    HttpError,
    check_object,
    check_query,
    install,
    query_int,
    query_text,
    read_json,
    read_json_value,
    write_json,
)

log = Logger(namespace="pbxd.web.console")

SESSION_COOKIE = b"pbxd_session"
MAX_SESSIONS = 1000
MAX_PER_PAGE = 1000

# --- passwords ----------------------------------------------------------------------------------

PBKDF2_ITERATIONS = 600_000  # OWASP's figure for PBKDF2-HMAC-SHA256 (2023)


def hash_password(password: str, iterations: int = PBKDF2_ITERATIONS, salt: bytes | None = None) -> str:
    """``pbkdf2_sha256$<iterations>$<salt>$<digest>`` (base64), for ``console.admins[].password_hash``."""
    salt = salt if salt is not None else secrets.token_bytes(16)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), salt, iterations)
    return "$".join(("pbkdf2_sha256", str(iterations), base64.b64encode(salt).decode(),
                     base64.b64encode(digest).decode()))


def verify_password(password: str, stored: str) -> bool:
    """Whether ``password`` matches ``stored`` (a hash_password string), in constant time."""
    try:
        scheme, iterations, salt, digest = stored.split("$")
        expected = base64.b64decode(digest)
        computed = hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), base64.b64decode(salt),
                                       int(iterations))
    except ValueError:
        return False
    return scheme == "pbkdf2_sha256" and hmac.compare_digest(computed, expected)


def _check_admin(admins: Any, username: str, password: str) -> str | None:
    """The user name if the credentials are right (run in a thread: PBKDF2 is slow on purpose)."""
    admin = next((a for a in admins if hmac.compare_digest(a.username.encode(), username.encode())), None)
    if admin is None:
        # As much work as for a real user, so that timing does not tell who exists.
        decoy = next((a for a in admins if a.password_hash is not None), admins[0])
        _password_matches(decoy, password)
        return None
    return admin.username if _password_matches(admin, password) else None


def _password_matches(admin: Any, password: str) -> bool:
    if admin.password_hash is not None:
        return verify_password(password, admin.password_hash)
    given = hashlib.sha256(password.encode("utf-8")).digest()
    return hmac.compare_digest(given, hashlib.sha256(admin.password.encode("utf-8")).digest())

# --- sessions -----------------------------------------------------------------------------------


@attrs.frozen
class Session:
    username: str
    expires_at: float


class Sessions:
    """Console sessions in memory: a random token (kept only as its SHA-256) per login.

    At most ``MAX_SESSIONS`` live; a new login beyond that ends the oldest.
    """

    def __init__(self, clock: Any, ttl: float) -> None:
        self.clock = clock
        self.ttl = ttl
        self._sessions: OrderedDict[bytes, Session] = OrderedDict()

    def __len__(self) -> int:
        return len(self._sessions)

    def create(self, username: str) -> tuple[str, Session]:
        token = secrets.token_urlsafe(32)
        session = Session(username, self.clock.seconds() + self.ttl)
        self._sessions[hashlib.sha256(token.encode()).digest()] = session
        while len(self._sessions) > MAX_SESSIONS:
            self._sessions.popitem(last=False)
        return token, session

    def find(self, token: bytes) -> Session | None:
        key = hashlib.sha256(token).digest()
        session = self._sessions.get(key)
        if session is None:
            return None
        if session.expires_at <= self.clock.seconds():
            del self._sessions[key]
            return None
        return session

    def end(self, token: bytes) -> bool:
        return self._sessions.pop(hashlib.sha256(token).digest(), None) is not None


def _session_cookie(request: IRequest) -> bytes | None:
    return request.getCookie(SESSION_COOKIE)  # type: ignore[no-any-return]


def _set_cookie(request: IRequest, value: str, max_age: int) -> None:
    flags = [f"{SESSION_COOKIE.decode()}={value}", "Path=/", f"Max-Age={max_age}", "HttpOnly",
             "SameSite=Strict"]
    if request.isSecure():
        flags.append("Secure")
    request.setHeader(b"set-cookie", "; ".join(flags).encode("ascii"))


# --- JSON shapes ----------------------------------------------------------------------------------

UTC = datetime.timezone.utc


def iso(seconds: float | None) -> str | None:
    return None if seconds is None else datetime.datetime.fromtimestamp(seconds, UTC).isoformat()


def extension_json(extension: Extension, registered: bool) -> dict[str, Any]:
    return {"number": extension.number, "name": extension.name, "email": extension.email,
            "enabled": extension.enabled, "allow_external": extension.allow_external,
            "max_calls": extension.max_calls, "dial_patterns": list(extension.dial_patterns),
            "registered": registered, "created_at": iso(extension.created_at),
            "updated_at": iso(extension.updated_at)}


def _role(call: Any, leg: Any) -> str:
    if leg is call.inbound:
        return "caller"
    if leg is call.b:
        return "callee"
    return "ringing" if leg in call.ringing else "other"


def call_json(call: Any, now: float) -> dict[str, Any]:
    media = call.media
    relayed = getattr(media, "relay", None) is not None
    legs = [leg for leg in (call.inbound, call.b, *call.ringing) if leg is not None]
    return {
        "id": call.id,
        "state": call.state.value,
        "from": call.from_number,
        "to": call.to_number,
        "direction": call.direction,
        "trunk": call.trunk,
        "start_time": iso(call.start_time),
        "answer_time": iso(call.answer_time),
        "duration": round(now - call.start_time, 3),
        "media": "relayed" if relayed else "direct",
        "recording": media.recording_path,
        "tracks": [{"track_id": leg.id, "role": _role(call, leg), "call_id": leg.call_id,
                    "peer": str(leg.target), "state": leg.state.value}
                   for leg in dict.fromkeys(legs)],
    }


def route_json(route: Any) -> dict[str, Any]:
    return to_data(route)  # type: ignore[no-any-return]


# --- call-record filters --------------------------------------------------------------------------


def _time_value(value: str, name: str) -> float:
    """An ISO 8601 date (midnight UTC) or date-time (UTC unless it has an offset)."""
    try:
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
            moment = datetime.datetime.combine(datetime.date.fromisoformat(value), datetime.time(), UTC)
        else:
            moment = datetime.datetime.fromisoformat(value)
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=UTC)
    except ValueError:
        raise HttpError(400, f"{name} must be an ISO 8601 date or date-time, got {value!r}") from None
    return moment.timestamp()


def _choice(options: tuple[str, ...]) -> Any:
    def check(value: str) -> str | None:
        return None if value in options else f"must be one of {', '.join(options)}"

    return check


def _non_empty(value: str) -> str | None:
    return None if value.strip() and len(value) <= 256 else "must be 1-256 characters"


RECORD_FILTERS = {
    "since": Field(str, check=_non_empty),
    "until": Field(str, check=_non_empty),
    "direction": Field(str, check=_choice(DIRECTIONS)),
    "disposition": Field(str, check=_choice(DISPOSITIONS)),
    "number": Field(str, check=_non_empty),
    "call_id": Field(str, check=_non_empty),
}
RECORD_SEARCH = {**RECORD_FILTERS, "page": Field(int), "per_page": Field(int)}


def _search_arguments(filters: dict[str, Any]) -> dict[str, Any]:
    arguments = {name: filters[name] for name in ("direction", "disposition", "number", "call_id")
                 if filters.get(name) is not None}
    for name in ("since", "until"):
        if filters.get(name) is not None:
            arguments[name] = _time_value(filters[name], name)
    return arguments


# --- commands --------------------------------------------------------------------------------------


def _cause(value: str) -> str | None:
    return None if re.fullmatch(r"[A-Za-z0-9_.\-]{1,64}", value) else "must be 1-64 letters, digits, _ . -"


def _digits(value: str) -> str | None:
    return None if re.fullmatch(r"[0-9*#A-Da-d]{1,32}", value) else "must be 1-32 of 0-9 * # A-D"


def _text(value: str) -> str | None:
    return None if value.strip() and len(value) <= 512 else "must be 1-512 characters"


ACTION = {"action": Field(str, required=True)}
TRACK = {"track_id": Field(str, check=_text)}
COMMANDS: dict[str, dict[str, Field]] = {
    "hangup": {**ACTION, "reason": Field(str, check=_cause)},
    "transfer": {**ACTION, "target": Field(str, required=True, check=_text), "attended": Field(bool)},
    "hold": {**ACTION, **TRACK},
    "unhold": {**ACTION, **TRACK},
    "mute": {**ACTION, "track_id": Field(str, required=True, check=_text)},
    "unmute": {**ACTION, "track_id": Field(str, required=True, check=_text)},
    "accept": {**ACTION, "sdp": Field(str, required=True)},
    "send_dtmf": {**ACTION, "digits": Field(str, required=True, check=_digits), **TRACK},
    "start_recording": ACTION,
    "stop_recording": ACTION,
    "pause_recording": ACTION,
    "resume_recording": ACTION,
}

LOGIN = {"username": Field(str, required=True, check=_text),
         "password": Field(str, required=True, check=_text)}


class ConsoleTree:
    """The /console routes (see the module docstring)."""

    app = Klein()
    install(app)

    def __init__(self, web: WebContext, operations: Operations | None = None) -> None:
        self.web = web
        self.operations = operations if operations is not None else Operations(web)
        self.sessions = Sessions(web.reactor, web.config.console.session_ttl)
        self.extensions = ExtensionAdmin(web.pbx)
        web.auth.add_scheme(self._session_principal)

    def _session_principal(self, request: IRequest) -> Principal | None:
        """The console session's principal; a stale or unknown cookie counts as none."""
        token = _session_cookie(request)
        if token is None:
            return None
        session = self.sessions.find(token)
        return None if session is None else Principal(session.username, frozenset({ADMIN}), "session")

    # -- helpers ---------------------------------------------------------------------------------

    @property
    def pbx(self) -> Any:
        return self.web.pbx

    def _call(self, call_id: str) -> Any:
        call = self.pbx.calls.manager.calls.get(call_id)
        if call is None or call.state.value == "ended":
            raise HttpError(404, f"no active call {call_id}")
        return call

    # -- login -------------------------------------------------------------------------------------

    @app.route("/login", methods=["POST"])
    async def login(self, request: IRequest) -> bytes:
        check_query(request, ())
        body = read_json(request, LOGIN)
        admins = self.web.config.console.admins
        if not admins:
            raise HttpError(409, "no console users are configured (console.admins); use an API token")
        username = await threads.deferToThreadPool(
            self.web.reactor, self.web.reactor.getThreadPool(), _check_admin, admins,
            body["username"], body["password"])
        if username is None:
            log.warn("console: failed login for {username!r}", username=body["username"])
            raise HttpError(401, "wrong user name or password")
        token, session = self.sessions.create(username)
        _set_cookie(request, token, int(self.sessions.ttl))
        log.info("console: {username} logged in", username=username)
        return write_json(request, {"username": username, "expires_at": iso(session.expires_at)})

    @app.route("/logout", methods=["POST"])
    def logout(self, request: IRequest) -> bytes:
        check_query(request, ())
        token = _session_cookie(request)
        ended = token is not None and self.sessions.end(token)
        _set_cookie(request, "", 0)
        return write_json(request, {"success": True, "ended": ended})

    # -- active calls ----------------------------------------------------------------------------

    @app.route("/calls/active", methods=["GET"])
    @requires(READ)
    def active_calls(self, request: IRequest) -> bytes:
        check_query(request, ())
        now = self.web.reactor.seconds()
        return write_json(request, [call_json(call, now) for call in self.pbx.calls.manager.active])

    @app.route("/calls/active/<call_id>", methods=["GET"])
    @requires(READ)
    def active_call(self, request: IRequest, call_id: str) -> bytes:
        check_query(request, ())
        return write_json(request, call_json(self._call(call_id), self.web.reactor.seconds()))

    @app.route("/calls/active/<call_id>/commands", methods=["POST"])
    @requires(WRITE)
    def command(self, request: IRequest, call_id: str) -> bytes:
        check_query(request, ())
        body = read_json_value(request)
        if not isinstance(body, dict) or not isinstance(body.get("action"), str):
            raise HttpError(400, "the body must be a JSON object with an action"
                                 f" ({', '.join(COMMANDS)})")
        action = body["action"]
        schema = COMMANDS.get(action)
        if schema is None:
            raise HttpError(400, f"unknown action {action!r} (known: {', '.join(COMMANDS)})")
        body = check_object(body, schema)
        call = self._call(call_id)
        try:
            message = self._run(call, action, body)
        except (CallError, ValueError) as error:
            # The call or its media cannot do it now (not answered, no telephone-event...).
            raise HttpError(409, str(error)) from None
        who = principal_of(request)
        log.info("console: {action} on call {call} by {who}", action=action, call=call.id,
                 who=who.name if who is not None else "?")
        return write_json(request, {"success": True, "action": action, "message": message})

    def _run(self, call: Any, action: str, body: dict[str, Any]) -> str:
        if action == "hangup":
            call.hangup(body.get("reason", "admin_hangup"), "admin")
            return "hung up"
        if action == "transfer":
            call.transfer(body["target"], body.get("attended", False))
            return f"transferring to {body['target']}"
        if action in ("hold", "unhold"):
            leg = self._leg(call, body.get("track_id"))
            (call.hold if action == "hold" else call.unhold)(leg)
            return "re-INVITE sent"
        if action == "accept":
            try:
                call.accept(body["sdp"].encode("utf-8"))
            except SipParseError as error:
                raise HttpError(422, f"the sdp is not a session description: {error.reason}") from None
            return "answered with the given SDP"
        media = call.media
        if getattr(media, "relay", None) is None:
            raise HttpError(409, f"the media of call {call.id} is not relayed by pbxd (it flows between"
                                 f" the phones), so pbxd cannot {action.replace('_', ' ')} it")
        if action in ("mute", "unmute", "send_dtmf"):
            track = self._relay_leg(call, body.get("track_id"))
            if action == "mute":
                track.mute()
                return f"{body['track_id']} muted"
            if action == "unmute":
                track.unmute()
                return f"{body['track_id']} unmuted"
            track.send_dtmf(body["digits"].upper())
            return f"sending {body['digits']}"
        return self._recording(call, action)

    def _recording(self, call: Any, action: str) -> str:
        media = call.media
        recorder = media.relay.recorder
        if action == "start_recording":
            if recorder is not None:
                raise HttpError(409, f"call {call.id} is being recorded already")
            try:
                return f"recording to {media.start_recording()}"
            except FileExistsError as error:
                # Not one of our recordings in this format: left untouched.
                raise HttpError(409, f"call {call.id} cannot be recorded: {error}") from None
            except OSError as error:  # a full disk, a directory not writable
                log.error("console: recording call {call} failed to start: {error}", call=call.id, error=str(error))
                raise HttpError(503, f"call {call.id} cannot be recorded: {error.strerror or error}") from None
        if recorder is None:
            raise HttpError(409, f"call {call.id} is not being recorded")
        if action == "stop_recording":
            media.stop_recording()
            return "recording stopped"
        if action == "pause_recording":
            media.pause_recording()
            return "recording paused"
        media.resume_recording()
        return "recording resumed"

    @staticmethod
    def _leg(call: Any, track_id: str | None) -> Any:
        if track_id is None:
            return None
        # The seed's own example names tracks audio-0, audio-1: the caller's, the callee's.
        by_position = {"audio-0": call.inbound, "audio-1": call.b}
        if by_position.get(track_id) is not None:
            return by_position[track_id]
        for leg in (call.inbound, call.b, *call.ringing):
            if leg is not None and leg.id == track_id:
                return leg
        raise HttpError(404, f"call {call.id} has no track {track_id!r}")

    def _relay_leg(self, call: Any, track_id: str | None) -> Any:
        leg = self._leg(call, track_id) or call.b
        track = call.media.leg_for(leg) if leg is not None else None
        if track is None:
            raise HttpError(409, f"track {track_id or 'callee'} of call {call.id} has no relayed media")
        return track

    # -- extensions -------------------------------------------------------------------------------

    @app.route("/extensions", methods=["GET"])
    @requires(READ)
    async def list_extensions(self, request: IRequest) -> bytes:
        check_query(request, ())
        admin = self.extensions
        return write_json(request, [extension_json(e, admin.registered(e.number))
                                    for e in await admin.store().list_extensions()])

    @app.route("/extensions/<number>", methods=["GET"])
    @requires(READ)
    async def get_extension(self, request: IRequest, number: str) -> bytes:
        check_query(request, ())
        store = self.extensions.store()
        if not is_extension_number(number):
            raise HttpError(404, f"extension {number} does not exist")
        try:
            extension = await store.get_extension(number)
        except NotFoundError:
            raise HttpError(404, f"extension {number} does not exist") from None
        return write_json(request, extension_json(extension, self.extensions.registered(number)))

    @app.route("/extensions", methods=["POST"])
    @requires(WRITE)
    async def add_extension(self, request: IRequest) -> bytes:
        check_query(request, ())
        extension = await self.extensions.add(read_json(request, NEW_EXTENSION), "console")
        return write_json(request, extension_json(extension, self.extensions.registered(extension.number)), 201)

    @app.route("/extensions/<number>", methods=["PUT"])
    @requires(WRITE)
    async def update_extension(self, request: IRequest, number: str) -> bytes:
        check_query(request, ())
        extension = await self.extensions.update(number, read_json(request, EXTENSION_FIELDS), "console")
        return write_json(request, extension_json(extension, self.extensions.registered(number)))

    @app.route("/extensions/<number>", methods=["DELETE"])
    @requires(WRITE)
    async def delete_extension(self, request: IRequest, number: str) -> bytes:
        check_query(request, ())
        await self.extensions.delete(number, "console")
        return write_json(request, {"success": True, "number": number})

    # -- routing ----------------------------------------------------------------------------------

    def _route_index(self, name: str) -> int:
        for index, route in enumerate(self.web.config.routes):
            if route.name == name:
                return index
        raise HttpError(404, f"no route named {name!r}")

    @app.route("/routing", methods=["GET"])
    @requires(READ)
    def list_routes(self, request: IRequest) -> bytes:
        check_query(request, ())
        return write_json(request, [route_json(route) for route in self.web.config.routes])

    @app.route("/routing/<name>", methods=["GET"])
    @requires(READ)
    def get_route(self, request: IRequest, name: str) -> bytes:
        check_query(request, ())
        return write_json(request, route_json(self.web.config.routes[self._route_index(name)]))

    @app.route("/routing", methods=["POST"])
    @requires(WRITE)
    def add_route(self, request: IRequest) -> bytes:
        check_query(request, ())
        body = self._route_body(request)
        routes = [route_json(route) for route in self.web.config.routes]
        if any(route["name"] == body.get("name") for route in routes):
            raise HttpError(409, f"a route named {body.get('name')!r} exists already")
        changed, persisted = self._set_routes([*routes, body])
        return write_json(request, {"route": route_json(changed[-1]), "persisted": persisted}, 201)

    @app.route("/routing/<name>", methods=["PUT"])
    @requires(WRITE)
    def replace_route(self, request: IRequest, name: str) -> bytes:
        check_query(request, ())
        body = self._route_body(request)
        body.setdefault("name", name)
        index = self._route_index(name)
        routes = [route_json(route) for route in self.web.config.routes]
        if body["name"] != name and any(route["name"] == body["name"] for route in routes):
            raise HttpError(409, f"a route named {body['name']!r} exists already")
        routes[index] = body
        changed, persisted = self._set_routes(routes)
        return write_json(request, {"route": route_json(changed[index]), "persisted": persisted})

    @app.route("/routing/<name>", methods=["DELETE"])
    @requires(WRITE)
    def delete_route(self, request: IRequest, name: str) -> bytes:
        check_query(request, ())
        index = self._route_index(name)
        routes = [route_json(route) for route in self.web.config.routes]
        del routes[index]
        _, persisted = self._set_routes(routes)
        return write_json(request, {"success": True, "name": name, "persisted": persisted})

    @staticmethod
    def _route_body(request: IRequest) -> dict[str, Any]:
        body = read_json_value(request)
        if not isinstance(body, dict):
            raise HttpError(400, "the body must be a JSON object: one route as in the config's routes")
        return body

    def _set_routes(self, data: list[dict[str, Any]]) -> tuple[tuple[Any, ...], bool]:
        """Check the routes as the config file's, write them there (if pbxd has a
        file; the bool says), then route by them."""
        try:
            routes = route_list(data, "routes")
        except ConfigError as error:
            status = 400 if error.reason.startswith("unknown key") else 422
            raise HttpError(status, f"{error.key}: {error.reason}") from None
        persisted = self._write_section("routes", [route_json(route) for route in routes])
        self.operations.apply(attrs.evolve(self.web.config, routes=routes))
        log.info("console: routes now {names}", names=", ".join(r.name for r in routes) or "none")
        return routes, persisted

    def _write_section(self, key: str, data: Any) -> bool:
        """Replace the ``key`` block of the config file (the rest kept); False without a file."""
        path: Path | None = self.web.config_path
        if path is None:
            return False
        try:
            text = path.read_text(encoding="utf-8")
            current = yaml_data(text) or {}
            new_text = replace_top_level(text, {key: data})
            if not isinstance(current, dict) or yaml_data(new_text) != {**current, key: data}:
                raise HttpError(409, f"the {key} of {path} cannot be replaced in place; change them"
                                     " with PUT /api/config")
            write_atomically(path, new_text)
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
            raise HttpError(409, f"the config file {path} could not be updated: {error}") from None
        return True

    # -- trunks -----------------------------------------------------------------------------------

    def _trunk_index(self, name: str) -> int:
        for index, trunk in enumerate(self.web.config.trunks):
            if trunk.name == name:
                return index
        raise HttpError(404, f"no trunk named {name!r}")

    def _trunk_json(self, config: Any) -> dict[str, Any]:
        registry = getattr(self.pbx, "trunks", None)
        trunk = None if registry is None else registry.registry.trunk(config.name)
        return {**mask_secrets(to_data(config), "trunks"),
                "status": None if trunk is None else trunk.status()}

    @app.route("/sip-trunk", methods=["GET"])
    @requires(READ)
    def list_trunks(self, request: IRequest) -> bytes:
        check_query(request, ())
        return write_json(request, [self._trunk_json(trunk) for trunk in self.web.config.trunks])

    @app.route("/sip-trunk/<name>", methods=["GET"])
    @requires(READ)
    def get_trunk(self, request: IRequest, name: str) -> bytes:
        check_query(request, ())
        for trunk in self.web.config.trunks:
            if trunk.name == name:
                return write_json(request, self._trunk_json(trunk))
        raise HttpError(404, f"no trunk named {name!r}")

    @app.route("/sip-trunk", methods=["POST"])
    @requires(WRITE)
    def add_trunk(self, request: IRequest) -> bytes:
        check_query(request, ())
        body = self._trunk_body(request)
        trunks = [to_data(trunk) for trunk in self.web.config.trunks]
        if any(trunk["name"] == body.get("name") for trunk in trunks):
            raise HttpError(409, f"a trunk named {body.get('name')!r} exists already")
        changed, persisted = self._set_trunks([*trunks, restore_secrets(body, None)])
        return write_json(request, {"trunk": self._trunk_json(changed[-1]), "persisted": persisted}, 201)

    @app.route("/sip-trunk/<name>", methods=["PUT"])
    @requires(WRITE)
    def replace_trunk(self, request: IRequest, name: str) -> bytes:
        check_query(request, ())
        body = self._trunk_body(request)
        body.setdefault("name", name)
        index = self._trunk_index(name)
        trunks = [to_data(trunk) for trunk in self.web.config.trunks]
        if body["name"] != name and any(trunk["name"] == body["name"] for trunk in trunks):
            raise HttpError(409, f"a trunk named {body['name']!r} exists already")
        # A trunk as GET showed it (password masked) keeps its password.
        trunks[index] = restore_secrets(body, trunks[index])
        changed, persisted = self._set_trunks(trunks)
        return write_json(request, {"trunk": self._trunk_json(changed[index]), "persisted": persisted})

    @app.route("/sip-trunk/<name>", methods=["DELETE"])
    @requires(WRITE)
    def delete_trunk(self, request: IRequest, name: str) -> bytes:
        check_query(request, ())
        index = self._trunk_index(name)
        trunks = [to_data(trunk) for trunk in self.web.config.trunks]
        del trunks[index]
        _, persisted = self._set_trunks(trunks)
        return write_json(request, {"success": True, "name": name, "persisted": persisted})

    @staticmethod
    def _trunk_body(request: IRequest) -> dict[str, Any]:
        body = read_json_value(request)
        if not isinstance(body, dict):
            raise HttpError(400, "the body must be a JSON object: one trunk as in the config's trunks")
        return body

    def _set_trunks(self, data: list[dict[str, Any]]) -> tuple[tuple[Any, ...], bool]:
        """Check the trunks as the config file's, write them there (if pbxd has a
        file; the bool says), then reload the trunk registry with them (a trunk
        gone unregisters, a new one registers; see TrunkService.reload)."""
        try:
            trunks = trunk_list(data, "trunks")
        except ConfigError as error:
            status = 400 if error.reason.startswith("unknown key") else 422
            raise HttpError(status, f"{error.key}: {error.reason}") from None
        persisted = self._write_section("trunks", to_data(trunks))
        self.operations.apply(attrs.evolve(self.web.config, trunks=trunks))
        log.info("console: trunks now {names}", names=", ".join(t.name for t in trunks) or "none")
        return trunks, persisted

    # -- call records ------------------------------------------------------------------------------

    async def _records(self, request: IRequest, filters: dict[str, Any], page: int, per_page: int) -> bytes:
        arguments = _search_arguments(filters)
        records, total = await self.extensions.store().search_cdrs(
            **arguments, limit=per_page, offset=(page - 1) * per_page)
        return write_json(request, {"records": [cdr_json(record) for record in records],
                                    "page": page, "per_page": per_page, "total": total})

    @app.route("/call-records", methods=["GET"])
    @requires(READ)
    async def call_records(self, request: IRequest) -> bytes:
        check_query(request, (*RECORD_FILTERS, "page", "per_page"))
        filters = {name: query_text(request, name) for name in RECORD_FILTERS}
        check_object({k: v for k, v in filters.items() if v is not None}, RECORD_FILTERS, "the query")
        page = query_int(request, "page", 1, 1, 1_000_000)
        per_page = query_int(request, "per_page", 50, 1, MAX_PER_PAGE)
        return await self._records(request, filters, page, per_page)

    @app.route("/call-records", methods=["POST"])
    @requires(READ)
    async def search_call_records(self, request: IRequest) -> bytes:
        check_query(request, ())
        body = read_json(request, RECORD_SEARCH)
        page, per_page = body.pop("page", 1), body.pop("per_page", 50)
        if not 1 <= page <= 1_000_000 or not 1 <= per_page <= MAX_PER_PAGE:
            raise HttpError(400, f"page must be 1-1000000 and per_page 1-{MAX_PER_PAGE}")
        return await self._records(request, body, page, per_page)

    async def _record(self, record_id: str) -> Any:
        if not record_id.isascii() or not record_id.isdigit() or len(record_id) > 18:
            raise HttpError(404, f"no call record {record_id}")
        try:
            return await self.extensions.store().get_cdr(int(record_id))
        except NotFoundError:
            raise HttpError(404, f"no call record {record_id}") from None

    @app.route("/call-records/<record_id>", methods=["GET"])
    @requires(READ)
    async def call_record(self, request: IRequest, record_id: str) -> bytes:
        check_query(request, ())
        return write_json(request, cdr_json(await self._record(record_id)))

    @app.route("/call-records/<record_id>/recording", methods=["GET"])
    @requires(READ)
    async def recording(self, request: IRequest, record_id: str) -> Any:
        check_query(request, ())
        record = await self._record(record_id)
        if not record.recording_path:
            raise HttpError(404, f"call record {record_id} has no recording")
        path = Path(record.recording_path)
        if not path.is_absolute():
            path = self.web.config.data_dir / path
        try:
            stream = path.open("rb")
        except OSError:
            raise HttpError(404, f"the recording of call record {record_id} is no longer on disk") from None
        with stream:
            size = os.fstat(stream.fileno()).st_size
            start, end = _byte_range(request.getHeader(b"range"), size)
            request.setHeader(b"content-type", b"audio/wav")
            request.setHeader(b"accept-ranges", b"bytes")
            request.setHeader(b"content-length", str(end - start).encode())
            if (start, end) != (0, size):
                request.setResponseCode(206)
                request.setHeader(b"content-range", f"bytes {start}-{end - 1}/{size}".encode())
            stream.seek(start)
            await _FileSlice(stream, end - start).send(request)
        return b""

    @app.route("/call-records/<record_id>/sip-flow", methods=["GET"])
    @requires(READ)
    async def sip_flow(self, request: IRequest, record_id: str) -> bytes:
        check_query(request, ())
        record = await self._record(record_id)
        capture = self.pbx.sip.capture
        ladder = capture.ladder(record.call_id)
        if ladder is not None:  # a live call, or one that ended in the capture's grace
            dropped, messages = capture.dropped(record.call_id), [message.to_json() for message in ladder]
        else:
            try:
                flow = await self.extensions.store().get_sip_flow(record.call_id)
            except NotFoundError:
                days = self.web.config.console.sip_flow_days
                kept = f"for {days} days" if days else "as long as the CDR"
                raise HttpError(404, f"no SIP ladder of call record {record_id}: a call's ladder is"
                                     f" stored {kept} once it is over (console.sip_flow_days)") from None
            dropped, messages = flow.dropped, list(flow.messages)
        return write_json(request, {"id": record.id, "call_id": record.call_id, "dropped": dropped,
                                    "messages": messages})


_BYTE_RANGE = re.compile(r"bytes=(\d*)-(\d*)")


def _byte_range(header: bytes | None, size: int) -> tuple[int, int]:
    """[start, end) of the file to send for a Range header (RFC 9110 §14).

    No header, another unit, several ranges or bad syntax: the whole file (a
    server may ignore Range). A range that starts past the end: HttpError 416
    with ``Content-Range: bytes */size``.
    """
    match = _BYTE_RANGE.fullmatch(header.decode("latin-1").strip()) if header else None
    if match is None or not (match[1] or match[2]):
        return 0, size
    first, last = match[1], match[2]
    if not first:  # bytes=-N: the last N bytes
        start, end = max(0, size - int(last)), size
        if int(last) == 0:
            start = size
    else:
        start = int(first)
        end = size if not last else min(size, int(last) + 1)
        if last and int(last) < start:
            return 0, size  # invalid: ignored
    if start >= size or start >= end:
        raise HttpError(416, f"the range is outside the recording ({size} bytes)",
                        {"Content-Range": f"bytes */{size}"})
    return start, end


@implementer(IPullProducer)
class _FileSlice:
    """Streams ``length`` bytes of an open file to a request, a chunk each time
    the transport asks, so a long recording never sits in memory."""

    CHUNK = 65536

    def __init__(self, stream: Any, length: int) -> None:
        self.stream = stream
        self.remaining = length
        self.request: Any = None
        self.done: defer.Deferred[None] = defer.Deferred()

    def send(self, request: IRequest) -> defer.Deferred[None]:
        self.request = request
        request.registerProducer(self, False)
        return self.done

    def resumeProducing(self) -> None:
        chunk = self.stream.read(min(self.CHUNK, self.remaining)) if self.remaining else b""
        if not chunk:
            self._finish()
            return
        self.remaining -= len(chunk)
        self.request.write(chunk)

    def stopProducing(self) -> None:
        self._finish()

    def _finish(self) -> None:
        if not self.done.called:
            self.request.unregisterProducer()
            self.done.callback(None)


__all__ = ["ConsoleTree", "Sessions", "hash_password", "verify_password"]


if __name__ == "__main__":  # python -m pbxd.web.console hash
    import getpass
    import sys

    if sys.argv[1:] != ["hash"]:
        sys.exit("usage: python -m pbxd.web.console hash  (reads the password, prints password_hash)")
    first = getpass.getpass("password: ")
    if first != getpass.getpass("again: "):
        sys.exit("the passwords differ")
    print(hash_password(first))
