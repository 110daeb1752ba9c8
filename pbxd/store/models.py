"""The records the store reads and writes, as frozen attrs classes.

Every field is validated when a record is built, so a wrong type or an
impossible value (a port of 70000, a CDR that ends before it starts) is a
ValueError/TypeError at the caller and never reaches the database. Times are
epoch seconds (floats), as ``IReactorTime.seconds()`` gives them.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, Mapping

import attrs

TRANSPORTS = frozenset({"udp", "tcp", "tls", "ws", "wss"})
DIRECTIONS = frozenset({"inbound", "outbound", "internal"})
DISPOSITIONS = frozenset({"answered", "busy", "no_answer", "failed", "cancelled"})

# An extension number is a SIP user part pbxd can put in a URI without escaping.
_EXTENSION_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+\-]{0,63}")
_PIN_RE = re.compile(r"[0-9]{1,16}")
_HEX_RE = re.compile(r"[0-9a-f]+")
_MAC_RE = re.compile(r"[0-9a-f]{12}")


def _text(instance: object, attribute: attrs.Attribute, value: object) -> None:
    if not isinstance(value, str):
        raise TypeError(f"{attribute.name} must be a str, not {type(value).__name__}")
    if "\x00" in value:
        raise ValueError(f"{attribute.name} must not contain NUL")


def _nonempty_text(instance: object, attribute: attrs.Attribute, value: object) -> None:
    _text(instance, attribute, value)
    if not value:
        raise ValueError(f"{attribute.name} must not be empty")


def _optional_text(instance: object, attribute: attrs.Attribute, value: object) -> None:
    if value is not None:
        _text(instance, attribute, value)


def _flag(instance: object, attribute: attrs.Attribute, value: object) -> None:
    # bool only: 0/1 or "yes" would be a silent guess.
    if not isinstance(value, bool):
        raise TypeError(f"{attribute.name} must be a bool, not {type(value).__name__}")


def _integer(instance: object, attribute: attrs.Attribute, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{attribute.name} must be an int, not {type(value).__name__}")


def _optional_integer(instance: object, attribute: attrs.Attribute, value: object) -> None:
    if value is not None:
        _integer(instance, attribute, value)


def _time(instance: object, attribute: attrs.Attribute, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{attribute.name} must be a number, not {type(value).__name__}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{attribute.name} must be a finite time >= 0, not {value!r}")


def _optional_time(instance: object, attribute: attrs.Attribute, value: object) -> None:
    if value is not None:
        _time(instance, attribute, value)


def _port(instance: object, attribute: attrs.Attribute, value: object) -> None:
    _integer(instance, attribute, value)
    if not 0 <= value <= 65535:  # type: ignore[operator]
        raise ValueError(f"{attribute.name} must be 0..65535, not {value!r}")


def _hex_digest(length: int):
    def check(instance: object, attribute: attrs.Attribute, value: object) -> None:
        _text(instance, attribute, value)
        if len(value) != length or not _HEX_RE.fullmatch(value):  # type: ignore[arg-type]
            raise ValueError(f"{attribute.name} must be {length} lower-case hex digits")

    return check


def _one_of(choices: frozenset[str]):
    def check(instance: object, attribute: attrs.Attribute, value: object) -> None:
        _text(instance, attribute, value)
        if value not in choices:
            raise ValueError(f"{attribute.name} must be one of {sorted(choices)}, not {value!r}")

    return check


def is_extension_number(text: str) -> bool:
    """Whether ``text`` has the form of an extension number (not whether one exists)."""
    return _EXTENSION_RE.fullmatch(text) is not None


def _extension_number(instance: object, attribute: attrs.Attribute, value: object) -> None:
    _text(instance, attribute, value)
    if not is_extension_number(value):  # type: ignore[arg-type]
        raise ValueError(f"{attribute.name} {value!r} is not a valid extension number")


def _optional_pin(instance: object, attribute: attrs.Attribute, value: object) -> None:
    if value is None:
        return
    _text(instance, attribute, value)
    if not _PIN_RE.fullmatch(value):  # type: ignore[arg-type]
        raise ValueError(f"{attribute.name} must be 1 to 16 digits")


def _email(instance: object, attribute: attrs.Attribute, value: object) -> None:
    _text(instance, attribute, value)
    if value and ("@" not in value or any(c.isspace() for c in value)):  # type: ignore[union-attr]
        raise ValueError(f"{attribute.name} {value!r} is not an e-mail address")


# Toll-fraud guards of an extension (issue 9): bounds that keep a pattern list
# something an operator wrote, not a payload.
MAX_CALL_LIMIT = 10000
MAX_DIAL_PATTERNS = 50
MAX_DIAL_PATTERN_LENGTH = 200


def check_max_calls(value: object) -> int:
    """``value`` as an extension's concurrent-call limit (0: none); TypeError/ValueError naming it."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"max_calls must be an int, not {type(value).__name__}")
    if not 0 <= value <= MAX_CALL_LIMIT:
        raise ValueError(f"max_calls must be 0 (no limit) to {MAX_CALL_LIMIT}, not {value}")
    return value


def check_dial_patterns(value: object) -> tuple[str, ...]:
    """``value`` (a list of regular expressions) as an extension's dial patterns;
    TypeError/ValueError naming the field and the pattern that is wrong."""
    if not isinstance(value, (list, tuple)):
        raise TypeError(f"dial_patterns must be a list of str, not {type(value).__name__}")
    if len(value) > MAX_DIAL_PATTERNS:
        raise ValueError(f"dial_patterns must hold at most {MAX_DIAL_PATTERNS} patterns")
    for index, pattern in enumerate(value):
        if not isinstance(pattern, str):
            raise TypeError(f"dial_patterns[{index}] must be a str, not {type(pattern).__name__}")
        if not pattern or len(pattern) > MAX_DIAL_PATTERN_LENGTH or "\x00" in pattern:
            raise ValueError(f"dial_patterns[{index}] must be 1 to {MAX_DIAL_PATTERN_LENGTH} characters")
        try:
            re.compile(pattern)
        except re.error as error:
            raise ValueError(f"dial_patterns[{index}] {pattern!r} is not a valid regular expression:"
                             f" {error}") from None
    return tuple(value)


def _max_calls(instance: object, attribute: attrs.Attribute, value: object) -> None:
    check_max_calls(value)


def _dial_patterns(instance: object, attribute: attrs.Attribute, value: object) -> None:
    check_dial_patterns(value)


def _as_tuple(value: object) -> object:
    # A list from JSON or YAML held as a tuple (frozen records hash); anything
    # else is left for the validator to refuse.
    return tuple(value) if isinstance(value, list) else value


def normalize_mac(value: str | None) -> str | None:
    """A MAC address as 12 lower-case hex digits (``001565123456``), the form
    the REST API shows; separators ``:``, ``-`` and ``.`` are accepted."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise TypeError(f"mac must be a str, not {type(value).__name__}")
    digits = re.sub(r"[:.\-]", "", value).lower()
    if not _MAC_RE.fullmatch(digits):
        raise ValueError(f"{value!r} is not a MAC address")
    return digits


def binding_key(contact_uri: str, instance_id: str | None, reg_id: int | None) -> str:
    """What makes two registrations the same binding of an AOR.

    RFC 5626 §6: with ``+sip.instance`` and ``reg-id`` the binding is the
    (instance, reg-id) pair, whatever the Contact URI says now (a phone behind
    NAT changes it); RFC 5627 §4.2 keys on the instance alone when there is no
    reg-id. Otherwise it is the Contact URI (RFC 3261 §10.3 step 7), as the
    registrar has normalized it.
    """
    if instance_id:
        return f"instance:{instance_id}:{'' if reg_id is None else reg_id}"
    return f"contact:{contact_uri}"


@attrs.frozen(kw_only=True)
class ExtensionSpec:
    """An extension as config and the REST API give it: with its password."""

    number: str = attrs.field(validator=_extension_number)
    password: str = attrs.field(validator=_nonempty_text, repr=False)
    name: str = attrs.field(default="", validator=_text)
    email: str = attrs.field(default="", validator=_email)
    enabled: bool = attrs.field(default=True, validator=_flag)
    allow_external: bool = attrs.field(default=True, validator=_flag)
    voicemail_pin: str | None = attrs.field(default=None, validator=_optional_pin, repr=False)
    max_calls: int = attrs.field(default=0, validator=_max_calls)
    dial_patterns: tuple[str, ...] = attrs.field(default=(), converter=_as_tuple, validator=_dial_patterns)


@attrs.frozen(kw_only=True)
class Extension:
    """An extension as stored: the password only as HA1 digests for ``realm``."""

    number: str = attrs.field(validator=_extension_number)
    name: str = attrs.field(validator=_text)
    email: str = attrs.field(validator=_email)
    enabled: bool = attrs.field(validator=_flag)
    allow_external: bool = attrs.field(validator=_flag)
    voicemail_pin: str | None = attrs.field(validator=_optional_pin, repr=False)
    ha1_md5: str = attrs.field(validator=_hex_digest(32), repr=False)
    ha1_sha256: str = attrs.field(validator=_hex_digest(64), repr=False)
    realm: str = attrs.field(validator=_nonempty_text)
    created_at: float = attrs.field(validator=_time)
    updated_at: float = attrs.field(validator=_time)
    # Toll-fraud guards (issue 9): concurrent calls it may place (0: no
    # limit); the numbers it may send to a carrier (full matches; none: any).
    max_calls: int = attrs.field(default=0, validator=_max_calls)
    dial_patterns: tuple[str, ...] = attrs.field(default=(), converter=_as_tuple, validator=_dial_patterns)


def _path(instance: object, attribute: attrs.Attribute, value: object) -> None:
    if not isinstance(value, tuple) or not all(isinstance(p, str) for p in value):
        raise TypeError(f"{attribute.name} must be a tuple of str")


def _q(instance: object, attribute: attrs.Attribute, value: object) -> None:
    if value is None:
        return
    _time(instance, attribute, value)
    if not 0 <= value <= 1:  # type: ignore[operator]
        raise ValueError(f"q must be between 0 and 1 (RFC 3261 §20.10), not {value!r}")


@attrs.frozen(kw_only=True)
class Binding:
    """One Contact registered for an AOR, with the flow it came over.

    ``source_*`` is where the REGISTER really came from (the flow: a phone
    behind NAT is reached there, not at its Contact); ``local_*`` is the
    socket pbxd received it on, so requests go back out the same way.
    ``path`` holds the Path header values in order (RFC 3327).
    """

    aor: str = attrs.field(validator=_nonempty_text)
    contact_uri: str = attrs.field(validator=_nonempty_text)
    expires_at: float = attrs.field(validator=_time)
    call_id: str = attrs.field(validator=_nonempty_text)
    cseq: int = attrs.field(validator=_integer)
    source_transport: str = attrs.field(validator=_one_of(TRANSPORTS))
    source_host: str = attrs.field(validator=_nonempty_text)
    source_port: int = attrs.field(validator=_port)
    received_at: float = attrs.field(validator=_time)
    local_host: str = attrs.field(default="", validator=_text)
    local_port: int = attrs.field(default=0, validator=_port)
    instance_id: str | None = attrs.field(default=None, validator=_optional_text)
    reg_id: int | None = attrs.field(default=None, validator=_optional_integer)
    path: tuple[str, ...] = attrs.field(default=(), validator=_path)
    q: float | None = attrs.field(default=None, validator=_q)
    user_agent: str = attrs.field(default="", validator=_text)

    @property
    def key(self) -> str:
        return binding_key(self.contact_uri, self.instance_id, self.reg_id)

    def remaining(self, now: float) -> int:
        """Whole seconds left until expiry, never negative (for Contact ;expires=)."""
        return max(0, int(self.expires_at - now))


@attrs.frozen(kw_only=True)
class RegisteredPhone:
    """A device seen registering for an extension (pbx-rest-api.md, phone tracking)."""

    id: int = attrs.field(validator=_integer)
    extension: str = attrs.field(validator=_nonempty_text)
    ip: str = attrs.field(validator=_nonempty_text)
    mac: str | None = attrs.field(validator=_optional_text)
    user_agent: str = attrs.field(validator=_text)
    contact_uri: str = attrs.field(validator=_text)
    vendor: str | None = attrs.field(validator=_optional_text)
    model: str | None = attrs.field(validator=_optional_text)
    first_registered: float = attrs.field(validator=_time)
    last_registered: float = attrs.field(validator=_time)


def _json_object(instance: object, attribute: attrs.Attribute, value: object) -> None:
    if value is None:
        return
    if not isinstance(value, Mapping):
        raise TypeError(f"{attribute.name} must be a mapping")
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{attribute.name} is not JSON-serializable: {e}") from None


def _default_duration(cdr: Cdr) -> float:
    return cdr.end_time - cdr.start_time


def _default_billsec(cdr: Cdr) -> float:
    return 0.0 if cdr.answer_time is None else cdr.end_time - cdr.answer_time


@attrs.frozen(kw_only=True)
class Cdr:
    """One call detail record (issue 4). ``duration`` runs from start to end,
    ``billsec`` from answer to end; both default to what the times say."""

    call_id: str = attrs.field(validator=_nonempty_text)
    from_number: str = attrs.field(validator=_text)
    to_number: str = attrs.field(validator=_text)
    direction: str = attrs.field(validator=_one_of(DIRECTIONS))
    start_time: float = attrs.field(validator=_time)
    end_time: float = attrs.field(validator=_time)
    disposition: str = attrs.field(validator=_one_of(DISPOSITIONS))
    answer_time: float | None = attrs.field(default=None, validator=_optional_time)
    duration: float = attrs.field(
        default=attrs.Factory(_default_duration, takes_self=True), validator=_time
    )
    billsec: float = attrs.field(
        default=attrs.Factory(_default_billsec, takes_self=True), validator=_time
    )
    hangup_cause: str = attrs.field(default="", validator=_text)
    hangup_side: str = attrs.field(default="", validator=_text)
    sip_status: int | None = attrs.field(default=None, validator=_optional_integer)
    trunk: str | None = attrs.field(default=None, validator=_optional_text)
    recording_path: str | None = attrs.field(default=None, validator=_optional_text)
    recording_size: int | None = attrs.field(default=None, validator=_optional_integer)
    quality: Mapping[str, Any] | None = attrs.field(
        default=None, validator=_json_object, hash=False
    )
    id: int | None = attrs.field(default=None, validator=_optional_integer)

    def __attrs_post_init__(self) -> None:
        if self.end_time < self.start_time:
            raise ValueError("end_time is before start_time")
        if self.answer_time is not None and not (
            self.start_time <= self.answer_time <= self.end_time
        ):
            raise ValueError("answer_time must lie between start_time and end_time")
        if (self.disposition == "answered") != (self.answer_time is not None):
            raise ValueError("answer_time is set exactly when the disposition is 'answered'")
        if self.sip_status is not None and not 100 <= self.sip_status <= 699:
            raise ValueError(f"sip_status must be 100..699, not {self.sip_status}")


def _ladder(instance: object, attribute: attrs.Attribute, value: object) -> None:
    # Whether the steps are JSON is checked once, when Store.add_sip_flows encodes
    # them: encoding a ladder twice per call cost a few % of a busy pbxd's CPU.
    if not isinstance(value, tuple) or not all(isinstance(step, Mapping) for step in value):
        raise TypeError(f"{attribute.name} must be a tuple of mappings")


@attrs.frozen(kw_only=True)
class SipFlow:
    """An ended call's SIP ladder as the console shows it (pbxd.sip.capture):
    ``messages`` are its steps in time order, each the JSON object of
    ``CapturedMessage.to_json``; ``dropped`` the messages the bounds left out."""

    call_id: str = attrs.field(validator=_nonempty_text)
    ended_at: float = attrs.field(validator=_time)
    messages: tuple[Mapping[str, Any], ...] = attrs.field(validator=_ladder, hash=False)
    dropped: int = attrs.field(default=0, validator=_integer)

    def __attrs_post_init__(self) -> None:
        if self.dropped < 0:
            raise ValueError("dropped must be >= 0")


@attrs.frozen(kw_only=True)
class SpoolEntry:
    """A webhook delivery waiting in the durable spool."""

    id: int = attrs.field(validator=_integer)
    kind: str = attrs.field(validator=_nonempty_text)
    url: str = attrs.field(validator=_nonempty_text)
    payload: bytes = attrs.field(validator=attrs.validators.instance_of(bytes), repr=False)
    attempts: int = attrs.field(validator=_integer)
    next_attempt_at: float = attrs.field(validator=_time)
    created_at: float = attrs.field(validator=_time)
    last_error: str = attrs.field(default="", validator=_text)
