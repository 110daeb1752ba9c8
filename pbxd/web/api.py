"""``/api``: the REST API of pbx-rest-api.md (issue 7), in the seed's shapes.

Scopes (:mod:`pbxd.web.auth`): reading is ``read``; changing extensions
and calls is ``write``; the configuration (``GET``/``PUT /config``) is
``admin``. Errors are ``{"error": "..."}``: 400 for a malformed request
(bad JSON, a wrong type, an unknown field or query parameter), 404 for
something that does not exist, 409 for a duplicate, 422 for a well-formed
value pbxd refuses (an extension number it cannot use, a config that does
not check).

Extensions are written through the store and the SIP side's directory is
refreshed before the answer, so a new extension can register and be
called at once; a deleted or disabled one loses its registrations at once. CDRs have the one shape of :func:`pbxd.hooks.cdr_push.cdr_json`.

``PUT /config`` takes a JSON object of top-level config keys; each one given
replaces that key of the file, the others stay. Secrets that ``GET`` shows
as ``"********"`` may be sent back as such: the file's value is kept. The
result is checked as at start-up, then written atomically (a temporary file
renamed over the old one, with its permissions). The blocks of the keys
that did not change are kept as they were, comments included; the new
blocks are written by PyYAML without comments. The answer says what was
applied at once and what needs a restart (:meth:`pbxd.web.ami.Operations.apply`).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
import stat
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import attrs
import yaml
from klein import Klein
from twisted.logger import Logger
from twisted.web.iweb import IRequest

from pbxd.call.call import Call, CallError, CallState
from pbxd.call.originate import OriginateError, originate
from pbxd.config import Config, ConfigError, parse_config, to_data, yaml_data
from pbxd.hooks.cdr_push import _timestamp as iso_time
from pbxd.hooks.cdr_push import cdr_json
from pbxd.store import DuplicateError, Extension, NotFoundError, RegisteredPhone, Store, normalize_mac
from pbxd.store.models import (
    DISPOSITIONS,
    ExtensionSpec,
    check_dial_patterns,
    check_max_calls,
    is_extension_number,
)
from pbxd.web.ami import Operations
from pbxd.web.app import WebContext
from pbxd.web.auth import ADMIN, READ, WRITE, requires
from pbxd.web.errors import (
    Field,
    HttpError,
    check_query,
    install,
    query_int,
    query_text,
    read_json,
    read_json_value,
    write_json,
)

log = Logger(namespace="pbxd.web.api")

UTC = datetime.timezone.utc
MASK = "********"
MAX_CDR_LIMIT = 10000

# --- extensions ---------------------------------------------------------------------------


def _short(limit: int) -> Any:
    def check(value: str) -> str | None:
        return f"must be at most {limit} characters" if len(value) > limit else None

    return check


def _valid(check: Callable[[Any], Any]) -> Any:
    """A Field check from one of the store's value checks: its complaint (which
    names the field, and the pattern at fault) is the 400's message."""
    def reason(value: Any) -> str | None:
        try:
            check(value)
        except (TypeError, ValueError) as error:
            raise HttpError(400, str(error)) from None
        return None

    return reason


EXTENSION_FIELDS = {
    "name": Field(str, check=_short(200)),
    "email": Field(str, check=_short(254)),
    "password": Field(str, check=_short(256)),
    "allow_external": Field(bool),
    "enabled": Field(bool),
    "voicemail_pin": Field(str, nullable=True),
    # Toll-fraud guards: checked here, so that a negative limit or a pattern
    # that does not compile is the client's 400, never the store's refusal.
    "max_calls": Field(int, check=_valid(check_max_calls)),
    "dial_patterns": Field(list, check=_valid(check_dial_patterns)),
}
NEW_EXTENSION = {
    "number": Field(str, required=True),
    **EXTENSION_FIELDS,
    "password": Field(str, required=True, check=_short(256)),
}


class ExtensionAdmin:
    """Extension changes for the REST trees (/api and /console): the store
    first, then the SIP side, so that the answer comes when SIP agrees.

    A new extension is in the directory (it can register and be called) and
    a deleted or disabled one has lost its registrations (it can no longer be
    reached) by the time these return. Errors are HttpErrors: 503 while the
    store is not open, 400 for an update with no field, 404 for an unknown
    number, 409 for a duplicate, 422 for a value the store refuses. Bodies
    are the fields of ExtensionSpec, as :data:`NEW_EXTENSION` and
    :data:`EXTENSION_FIELDS` check them. ``who`` names the tree in the log.
    """

    def __init__(self, pbx: Any) -> None:
        self.pbx = pbx

    def store(self) -> Store:
        store = self.pbx.store.store
        if store is None:
            raise HttpError(503, "the store is not open yet", {"Retry-After": "5"})
        return store  # type: ignore[no-any-return]

    def registered(self, number: str) -> bool:
        location = self.pbx.registrar.location
        return location is not None and location.has_user(number)

    async def add(self, body: dict[str, Any], who: str) -> Extension:
        store = self.store()
        try:
            spec = ExtensionSpec(**body)
        except (TypeError, ValueError) as error:
            raise HttpError(422, str(error)) from None
        try:
            extension = await store.add_extension(spec, self.pbx.registrar.realm)
        except DuplicateError:
            raise HttpError(409, f"extension {spec.number} exists already") from None
        await self._refresh_directory()
        log.info("{who}: extension {number} added", who=who, number=spec.number)
        return extension

    async def update(self, number: str, body: dict[str, Any], who: str) -> Extension:
        if not body:
            raise HttpError(400, f"nothing to change: give one of {', '.join(EXTENSION_FIELDS)}")
        store = self.store()
        if not is_extension_number(number):
            raise HttpError(404, f"extension {number} does not exist")
        try:
            extension = await store.update_extension(number, **body)
        except NotFoundError:
            raise HttpError(404, f"extension {number} does not exist") from None
        except (TypeError, ValueError) as error:
            raise HttpError(422, str(error)) from None
        if not extension.enabled:
            await self._unregister(number)
        await self._refresh_directory()
        log.info("{who}: extension {number} updated ({fields})", who=who, number=number,
                 fields=", ".join(sorted(body)))
        return extension

    async def delete(self, number: str, who: str) -> None:
        store = self.store()
        try:
            await store.delete_extension(number)
        except NotFoundError:
            raise HttpError(404, f"extension {number} does not exist") from None
        await self._unregister(number)
        await self._refresh_directory()
        log.info("{who}: extension {number} deleted", who=who, number=number)

    async def _refresh_directory(self) -> None:
        directory = self.pbx.registrar.directory
        if directory is not None:
            await directory.refresh()

    async def _unregister(self, number: str) -> None:
        """Remove the registrations of an extension deleted or disabled: without
        this it would still be reached (and found) until they expire."""
        location = self.pbx.registrar.location
        if location is None:
            return
        aor = location.aor(number)
        async with location.serialized(aor):
            keys = [contact.key for contact in location.bindings(aor)]
            if keys:
                await location.commit(aor, [], keys)


# --- calls ------------------------------------------------------------------------------------

CALL_ONLY = {"call_id": Field(str, required=True)}
CALL_TRANSFER = {"call_id": Field(str, required=True), "destination": Field(str, required=True)}
def _dialable(limit: int) -> Any:
    def check(value: str) -> str | None:
        return "must not be empty" if not value.strip() else _short(limit)(value)

    return check


CALL_ORIGINATE = {"from": Field(str, required=True, check=_dialable(64)),
                  "to": Field(str, required=True, check=_dialable(256)),
                  "caller_id": Field(str, check=_short(64))}


# --- phones ----------------------------------------------------------------------------------

# The seed's mac_source tells a MAC the phone gave (any of pbxd.registrar.phones'
# sources) from one of provisioning, which pbxd does not have yet.
SIP_REGISTRATION = "sip_registration"

_MAC_FORMS = re.compile(
    r"[0-9A-Fa-f]{12}"  # 001565123456
    r"|[0-9A-Fa-f]{2}(?P<sep>[:\-])[0-9A-Fa-f]{2}(?:(?P=sep)[0-9A-Fa-f]{2}){4}"  # 00:15:65:12:34:56
    r"|[0-9A-Fa-f]{4}\.[0-9A-Fa-f]{4}\.[0-9A-Fa-f]{4}"  # 0015.6512.3456 (Cisco)
)


def parse_mac_or_ip(identifier: str) -> tuple[str, str]:
    """("mac", 12 hex digits) or ("ip", canonical address); HttpError 400 for anything else."""
    text = identifier.strip()
    if _MAC_FORMS.fullmatch(text):
        return "mac", normalize_mac(text.replace(".", ""))  # type: ignore[return-value]
    try:
        address = ipaddress.ip_address(text.removeprefix("[").removesuffix("]"))
    except ValueError:
        raise HttpError(400, f"{identifier!r} is neither a MAC address (001565123456,"
                             " 00:15:65:12:34:56, 00-15-65-12-34-56, 0015.6512.3456)"
                             " nor an IP address") from None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return "ip", str(address)


def phone_json(phone: RegisteredPhone) -> dict[str, Any]:
    return {
        "id": phone.id,
        "mac_address": phone.mac,
        "extension_number": phone.extension,
        "user_agent": phone.user_agent,
        "ip_address": phone.ip,
        "first_registered": iso_time(phone.first_registered, UTC),
        "last_registered": iso_time(phone.last_registered, UTC),
        "contact_uri": phone.contact_uri,
    }


def phone_with_mac_json(phone: RegisteredPhone) -> dict[str, Any]:
    return {
        **phone_json(phone),
        "mac_source": SIP_REGISTRATION if phone.mac else None,
        "vendor": phone.vendor,
        "model": phone.model,
        "config_url": None,  # provisioning comes with its own issue
    }


# --- configuration ----------------------------------------------------------------------------

SECRET_KEYS = frozenset({"password", "password_hash", "token", "nonce_secret", "voicemail_pin"})
# Webhook headers carry the receivers' credentials; routes' headers are SIP headers.
SECRET_HEADER_SECTIONS = frozenset({"http_router", "cdr", "locator", "backends"})


def mask_secrets(data: Any, section: str = "") -> Any:
    """Config data with every secret value replaced by MASK."""
    if isinstance(data, Mapping):
        masked = {}
        for key, value in data.items():
            if key in SECRET_KEYS and value is not None:
                masked[key] = MASK
            elif key == "headers" and section in SECRET_HEADER_SECTIONS and isinstance(value, Mapping):
                masked[key] = {name: MASK for name in value}
            else:
                masked[key] = mask_secrets(value, key if isinstance(value, (Mapping, list)) else section)
        return masked
    if isinstance(data, list):
        return [mask_secrets(item, section) for item in data]
    return data


def _identity(item: Any) -> Any:
    if isinstance(item, Mapping):
        for key in ("name", "number", "username"):
            if isinstance(item.get(key), str):
                return (key, item[key])
    return None


def restore_secrets(new: Any, old: Any) -> Any:
    """``new`` with each MASK put back to the value ``old`` has at the same
    place (list items matched by their name or number, else by position).
    A MASK with nothing to restore is refused: it would become the secret."""
    if isinstance(new, Mapping):
        previous = old if isinstance(old, Mapping) else {}
        restored = {}
        for key, value in new.items():
            if value == MASK:
                if key not in previous or previous[key] in (None, MASK):
                    raise HttpError(422, f"{key!r} is {MASK} but the config file has no value to keep there")
                restored[key] = previous[key]
            else:
                restored[key] = restore_secrets(value, previous.get(key))
        return restored
    if isinstance(new, list):
        previous_items = old if isinstance(old, list) else []
        by_identity = {_identity(item): item for item in previous_items if _identity(item) is not None}
        result = []
        for index, item in enumerate(new):
            identity = _identity(item)
            if identity is not None:
                match = by_identity.get(identity)
            else:
                match = previous_items[index] if index < len(previous_items) else None
            result.append(restore_secrets(item, match))
        return result
    return new


_TOP_LEVEL_KEY = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*:")


def replace_top_level(text: str, updates: Mapping[str, Any]) -> str:
    """``text`` (a YAML mapping) with the blocks of the keys in ``updates``
    replaced (or added at the end); every other line, comments included, kept.

    A block runs from its key's line (at column 0) to the next top-level
    key, less the comment and blank lines right above that key (they belong
    to it)."""
    lines = text.splitlines(keepends=True)
    starts = [(index, match.group(1)) for index, line in enumerate(lines)
              if (match := _TOP_LEVEL_KEY.match(line))]
    blocks: dict[str, tuple[int, int]] = {}
    for position, (start, key) in enumerate(starts):
        end = starts[position + 1][0] if position + 1 < len(starts) else len(lines)
        while end > start + 1 and (not lines[end - 1].strip() or lines[end - 1].lstrip().startswith("#")) \
                and position + 1 < len(starts):
            end -= 1
        blocks[key] = (start, end)
    replaced = list(lines)
    appended = []
    # From the bottom up, so that the earlier blocks' line numbers still hold.
    for key, (start, end) in sorted(blocks.items(), key=lambda item: -item[1][0]):
        if key in updates:
            replaced[start:end] = [_dump_key(key, updates[key])]
    for key, value in updates.items():
        if key not in blocks:
            appended.append(_dump_key(key, value))
    if appended and replaced and not replaced[-1].endswith("\n"):
        replaced[-1] += "\n"
    return "".join(replaced) + "".join(appended)


def _dump_key(key: str, value: Any) -> str:
    return yaml.safe_dump({key: value}, sort_keys=False, default_flow_style=False, allow_unicode=True)


def write_atomically(path: Path, text: str) -> None:
    """Replace ``path`` with ``text``: a temporary file in the same directory,
    flushed to disk, given the old file's permissions, renamed over it."""
    directory = path.parent
    mode = stat.S_IMODE(path.stat().st_mode) if path.exists() else 0o640
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as stream:
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise
    directory_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(directory_fd)  # the rename itself survives a crash
    finally:
        os.close(directory_fd)


TOP_LEVEL_KEYS = tuple(field.name for field in attrs.fields(Config))


# --- the tree -----------------------------------------------------------------------------


def _day(epoch: float) -> datetime.date:
    return datetime.datetime.fromtimestamp(epoch, UTC).date()


def _date(request: IRequest, now: float) -> datetime.date:
    """The ``date`` query parameter; today (UTC, ``now`` on the reactor's clock) without one."""
    raw = query_text(request, "date")
    if raw is None:
        return _day(now)
    try:
        if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", raw):
            raise ValueError
        return datetime.date.fromisoformat(raw)
    except ValueError:
        raise HttpError(400, f"the query parameter 'date' must be a date YYYY-MM-DD, got {raw!r}") from None


class ApiTree:
    """The /api routes (see the module docstring)."""

    app = Klein()
    install(app)

    def __init__(self, web: WebContext, operations: Operations | None = None) -> None:
        self.web = web
        self.operations = operations if operations is not None else Operations(web)
        self.extensions = ExtensionAdmin(web.pbx)

    # -- helpers -------------------------------------------------------------------------

    def _store(self) -> Any:
        return self.extensions.store()

    def _registered(self, number: str) -> bool:
        return self.extensions.registered(number)

    # -- status --------------------------------------------------------------------------

    @app.route("/status", methods=["GET"])
    @requires(READ)
    async def status(self, request: IRequest) -> bytes:
        check_query(request, ())
        store = self._store()
        extensions = await store.list_extensions()
        today = await store.cdr_totals(_day(self.web.reactor.seconds()))
        manager = self.web.pbx.calls.manager
        active = manager.active
        return write_json(request, {
            "running": not self.operations.draining,
            "registered_extensions": sum(1 for e in extensions if self._registered(e.number)),
            "active_calls": len(active),
            "total_calls": sum(count for count, _, _ in today.values()) + len(active),
            "active_recordings": sum(1 for call in active if call.media.recording_path),
            # Conferences, parking and queues come with their own issues: none yet.
            "active_conferences": 0,
            "parked_calls": 0,
            "queued_calls": 0,
        })

    # -- extensions -----------------------------------------------------------------------

    @app.route("/extensions", methods=["GET"])
    @requires(READ)
    async def list_extensions(self, request: IRequest) -> bytes:
        check_query(request, ())
        return write_json(request, [
            {"number": e.number, "name": e.name, "email": e.email,
             "registered": self._registered(e.number), "allow_external": e.allow_external,
             "enabled": e.enabled, "max_calls": e.max_calls, "dial_patterns": list(e.dial_patterns)}
            for e in await self._store().list_extensions()
        ])

    @app.route("/extensions", methods=["POST"])
    @requires(WRITE)
    async def add_extension(self, request: IRequest) -> bytes:
        check_query(request, ())
        await self.extensions.add(read_json(request, NEW_EXTENSION), "api")
        return write_json(request, {"success": True, "message": "Extension added successfully"}, 201)

    @app.route("/extensions/<number>", methods=["PUT"])
    @requires(WRITE)
    async def update_extension(self, request: IRequest, number: str) -> bytes:
        check_query(request, ())
        await self.extensions.update(number, read_json(request, EXTENSION_FIELDS), "api")
        return write_json(request, {"success": True, "message": "Extension updated successfully"})

    @app.route("/extensions/<number>", methods=["DELETE"])
    @requires(WRITE)
    async def delete_extension(self, request: IRequest, number: str) -> bytes:
        check_query(request, ())
        await self.extensions.delete(number, "api")
        return write_json(request, {"success": True, "message": "Extension deleted successfully"})

    # -- calls ----------------------------------------------------------------------------------

    def _call(self, call_id: str) -> Call:
        call = self.web.pbx.calls.manager.calls.get(call_id)
        if call is None or call.state is CallState.ENDED:
            raise HttpError(404, f"no call {call_id} is up")
        return call

    @app.route("/calls", methods=["GET"])
    @requires(READ)
    def calls(self, request: IRequest) -> bytes:
        check_query(request, ())
        return write_json(request, [
            f"Call {call.id}: {call.from_number} -> {call.to_number}"
            f" ({'connected' if call.state is CallState.ANSWERED else 'ringing'})"
            for call in self.web.pbx.calls.manager.active
        ])

    @app.route("/call", methods=["POST"])
    @requires(WRITE)
    async def originate(self, request: IRequest) -> bytes:
        """Click-to-dial (pbxd.call.originate): ring ``from``, then call ``to`` when it answers."""
        check_query(request, ())
        body = read_json(request, CALL_ORIGINATE)
        try:
            call_id = await originate(self.web.pbx.calls.manager, body["from"], body["to"], caller_id=body.get("caller_id"))
        except OriginateError as error:
            retry = {} if error.retry_after is None else {"Retry-After": str(error.retry_after)}
            raise HttpError(error.status, str(error), retry) from None
        log.info("api: click-to-dial {call}: {caller} -> {called}", call=call_id, caller=body["from"],
                 called=body["to"])
        return write_json(request, {"success": True, "call_id": call_id})

    @app.route("/call/transfer", methods=["POST"])
    @requires(WRITE)
    def transfer(self, request: IRequest) -> bytes:
        check_query(request, ())
        body = read_json(request, CALL_TRANSFER)
        call = self._call(body["call_id"])
        try:
            call.transfer(body["destination"])
        except CallError as error:
            raise HttpError(409, str(error)) from None
        log.info("api: call {call} transferred to {destination}", call=call.id, destination=body["destination"])
        return write_json(request, {"success": True})

    @app.route("/call/hold", methods=["POST"])
    @requires(WRITE)
    def hold(self, request: IRequest) -> bytes:
        return self._redirect(request, hold=True)

    @app.route("/call/resume", methods=["POST"])
    @requires(WRITE)
    def resume(self, request: IRequest) -> bytes:
        return self._redirect(request, hold=False)

    def _redirect(self, request: IRequest, hold: bool) -> bytes:
        check_query(request, ())
        call = self._call(read_json(request, CALL_ONLY)["call_id"])
        try:
            call.hold() if hold else call.unhold()
        except CallError as error:
            raise HttpError(409, str(error)) from None
        log.info("api: call {call} {what}", call=call.id, what="held" if hold else "resumed")
        return write_json(request, {"success": True})

    # -- call detail records and statistics --------------------------------------------------

    @app.route("/cdr", methods=["GET"])
    @requires(READ)
    async def cdr(self, request: IRequest) -> bytes:
        check_query(request, ("date", "limit"))
        day = _date(request, self.web.reactor.seconds())
        limit = query_int(request, "limit", 100, 1, MAX_CDR_LIMIT)
        store = self._store()
        return write_json(request, [cdr_json(record) for record in await store.list_cdrs(day, limit)])

    @app.route("/statistics", methods=["GET"])
    @requires(READ)
    async def statistics(self, request: IRequest) -> bytes:
        check_query(request, ("date",))
        day = _date(request, self.web.reactor.seconds())
        store = self._store()
        totals = await store.cdr_totals(day)
        total = sum(count for count, _, _ in totals.values())
        answered = totals.get("answered", (0, 0.0, 0.0))[0]
        duration = sum(seconds for _, seconds, _ in totals.values())
        billsec = sum(seconds for _, _, seconds in totals.values())
        return write_json(request, {
            "date": day.isoformat(),
            "total_calls": total,
            "answered_calls": answered,
            "failed_calls": total - answered,
            "answer_rate": round(100.0 * answered / total, 2) if total else 0.0,
            "total_duration": round(duration, 1),
            "total_billsec": round(billsec, 1),
            "average_duration": round(duration / total, 1) if total else 0.0,
            "by_disposition": {name: totals.get(name, (0, 0.0, 0.0))[0] for name in sorted(DISPOSITIONS)},
        })

    # -- configuration ------------------------------------------------------------------------

    @app.route("/config", methods=["GET"])
    @requires(ADMIN)
    def get_config(self, request: IRequest) -> bytes:
        check_query(request, ())
        return write_json(request, mask_secrets(to_data(self.web.config)))

    @app.route("/config", methods=["PUT"])
    @requires(ADMIN)
    def put_config(self, request: IRequest) -> bytes:
        check_query(request, ())
        body = read_json_value(request)
        if not isinstance(body, dict) or not body:
            raise HttpError(400, "the body must be a JSON object of top-level config keys")
        unknown = sorted(set(body) - set(TOP_LEVEL_KEYS))
        if unknown:
            raise HttpError(400, f"unknown config keys: {', '.join(unknown)} (known: {', '.join(TOP_LEVEL_KEYS)})")
        path = self.web.config_path
        if path is None:
            raise HttpError(409, "pbxd was started without a config file (--config): there is no file to write")
        try:
            text = path.read_text(encoding="utf-8")
            current = yaml_data(text) or {}
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
            raise HttpError(409, f"the config file {path} cannot be read as YAML: {error}") from None
        if not isinstance(current, dict):
            raise HttpError(409, f"the config file {path} does not hold a mapping")
        updates = restore_secrets(body, current)
        merged = {**current, **updates}
        try:
            new = parse_config(merged)
        except ConfigError as error:
            raise HttpError(422, f"the configuration was not written: {error}") from None
        new_text = replace_top_level(text, updates)
        try:
            kept_comments = yaml_data(new_text) == merged
        except yaml.YAMLError:
            kept_comments = False
        if not kept_comments:
            # The file's layout defeats block replacement (anchors, flow style, several
            # documents): write the whole mapping, without its comments.
            new_text = yaml.safe_dump(merged, sort_keys=False, default_flow_style=False, allow_unicode=True)
        try:
            write_atomically(path, new_text)
        except OSError as error:
            raise HttpError(500, f"the config file {path} could not be written: {error.strerror}") from None
        result = self.operations.apply(new)
        log.info("api: config file {path} written ({keys}); applied {applied}; restart required for {restart}",
                 path=str(path), keys=", ".join(sorted(updates)), applied=", ".join(result.applied) or "nothing",
                 restart=", ".join(result.restart_required) or "nothing")
        restart = bool(result.restart_required)
        return write_json(request, {
            "success": True,
            "message": "Configuration updated successfully." + (" Restart required." if restart else ""),
            "comments_kept": kept_comments,
            **result.to_json(),
        })

    # -- phones ----------------------------------------------------------------------------

    @app.route("/registered-phones", methods=["GET"])
    @requires(READ)
    async def registered_phones(self, request: IRequest) -> bytes:
        check_query(request, ())
        store = self._store()
        return write_json(request, [phone_json(phone) for phone in await store.all_phones()])

    @app.route("/registered-phones/with-mac", methods=["GET"])
    @requires(READ)
    async def registered_phones_with_mac(self, request: IRequest) -> bytes:
        check_query(request, ())
        store = self._store()
        return write_json(request, [phone_with_mac_json(phone) for phone in await store.all_phones()])

    @app.route("/registered-phones/extension/<number>", methods=["GET"])
    @requires(READ)
    async def phones_of_extension(self, request: IRequest, number: str) -> bytes:
        check_query(request, ())
        store = self._store()
        return write_json(request, [phone_json(phone) for phone in await store.phones_for_extension(number)])

    @app.route("/phone-lookup/<mac_or_ip>", methods=["GET"])
    @requires(READ)
    async def phone_lookup(self, request: IRequest, mac_or_ip: str) -> bytes:
        check_query(request, ())
        kind, value = parse_mac_or_ip(mac_or_ip)
        store = self._store()
        phones = await (store.phones_by_mac(value) if kind == "mac" else store.phones_by_ip(value))
        if not phones:
            raise HttpError(404, f"no registered phone has the {kind.upper()} address {mac_or_ip}")
        phone = max(phones, key=lambda p: (p.last_registered, p.id))  # the one seen last
        return write_json(request, {
            "identifier": mac_or_ip,
            "type": kind,
            "registered_phone": phone_with_mac_json(phone),
            "provisioned_device": None,  # provisioning comes with its own issue
            "correlation": {
                "matched": True,
                "extension": phone.extension,
                "mac_address": phone.mac,
                "ip_address": phone.ip,
                "vendor": phone.vendor,
                "model": phone.model,
            },
        })


__all__ = ["EXTENSION_FIELDS", "NEW_EXTENSION", "ApiTree", "ExtensionAdmin", "mask_secrets", "parse_mac_or_ip", "replace_top_level", "restore_secrets"]
