"""pbxd configuration: YAML in, frozen attrs classes out, every value checked.

Each section is a frozen attrs class whose fields are declared with
``setting(default, kind)``; the *kind* is a function ``(value, key) -> value``
that converts a YAML value and raises :class:`ConfigError` naming the dotted
key when the value is wrong. Keys a section does not declare are errors, so a
typo never falls back to a default silently.

Adding a section is one class plus one field on :class:`Config`::

    @attrs.frozen
    class AmiConfig:
        enabled: bool = setting(False, boolean)

    class Config:
        ...
        ami: AmiConfig = subsection(AmiConfig)

A section may define ``_checked(self) -> Self`` for rules that span several of
its keys (and for defaults that depend on other keys); it raises ConfigError
with a key relative to the section and returns the completed section.
"""

from __future__ import annotations

import difflib
import ipaddress
import math
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import attrs
import yaml

from pbxd import __version__
from pbxd.call import routing
from pbxd.security.acl import DEFAULT_USER_AGENT_BLOCKLIST
from pbxd.store.models import MAX_CALL_LIMIT

T = TypeVar("T")
Kind = Callable[[Any, str], Any]

_KIND = "pbxd.config.kind"


class ConfigError(Exception):
    """A configuration value is wrong.

    ``key`` is the dotted path of the offending value (``sip.listen[1].port``),
    or the command-line option that supplied it (``--sip-port``), or "" when
    the problem is the file as a whole. ``file`` is the file it came from, if any.
    """

    def __init__(self, key: str, reason: str, file: str | None = None) -> None:
        super().__init__(key, reason, file)
        self.key = key
        self.reason = reason
        self.file = file

    def __str__(self) -> str:
        return ": ".join(part for part in (self.file, self.key, self.reason) if part)


def _join(prefix: str, key: str) -> str:
    if not prefix:
        return key
    if not key:
        return prefix
    return prefix + key if key.startswith("[") else f"{prefix}.{key}"


def _describe(value: object) -> str:
    """How a bad value is shown in an error: as the YAML author wrote it."""
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, Mapping):
        return "a mapping"
    return type(value).__name__


# --- kinds: convert one YAML value or raise ConfigError(key, reason) ---------


def integer(low: int, high: int) -> Kind:
    def parse(value: Any, key: str) -> int:
        # bool is an int subclass, but `port: yes` is a mistake, not 1.
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(key, f"must be an integer, got {_describe(value)}")
        if not low <= value <= high:
            raise ConfigError(key, f"must be {low}-{high}, got {value}")
        return value

    return parse


def seconds(value: Any, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(key, f"must be a number of seconds, got {_describe(value)}")
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(key, f"must be greater than 0, got {value}")
    return float(value)


def non_negative_seconds(value: Any, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(key, f"must be a number of seconds, got {_describe(value)}")
    if not math.isfinite(value) or value < 0:
        raise ConfigError(key, f"must be 0 or more, got {value}")
    return float(value)


def boolean(value: Any, key: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(key, f"must be true or false, got {_describe(value)}")
    return value


def text(value: Any, key: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(key, f"must be a non-empty string, got {_describe(value)}")
    return value


def choice(*names: str) -> Kind:
    def parse(value: Any, key: str) -> str:
        if value not in names:
            raise ConfigError(key, f"must be one of {', '.join(names)}, got {_describe(value)}")
        return str(value)

    return parse


def ip_address(value: Any, key: str) -> str:
    """A local address to listen on: an IPv4 or IPv6 literal."""
    text(value, key)
    try:
        return str(ipaddress.ip_address(value.strip()))
    except ValueError:
        raise ConfigError(key, f"must be an IP address, got {_describe(value)}") from None


_DNS_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)\Z")


def host_name(value: Any, key: str) -> str:
    """A DNS name or an IP literal, lower-cased (host names are case-insensitive)."""
    text(value, key)
    host = value.strip().lower()
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    name = host[:-1] if host.endswith(".") else host
    if len(name) > 253 or not all(_DNS_LABEL.match(label) for label in name.split(".")):
        raise ConfigError(key, f"must be a host name or IP address, got {_describe(value)}")
    return name


def path(value: Any, key: str) -> Path:
    return Path(text(value, key))


def existing_file(value: Any, key: str) -> Path:
    file = path(value, key)
    if not file.is_file():
        raise ConfigError(key, f"no such file: {file}")
    return file


def optional(kind: Kind) -> Kind:
    def parse(value: Any, key: str) -> Any:
        return None if value is None else kind(value, key)

    return parse


def list_of(kind: Kind, *, non_empty: bool = False) -> Kind:
    def parse(value: Any, key: str) -> tuple[Any, ...]:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(key, f"must be a list, got {_describe(value)}")
        if non_empty and not value:
            raise ConfigError(key, "must not be empty")
        return tuple(kind(item, f"{key}[{index}]") for index, item in enumerate(value))

    return parse


def section(cls: type[T]) -> Callable[[Any, str], T]:
    def parse(value: Any, key: str) -> T:
        return _parse_section(cls, value, key)

    return parse


def _mapping(value: Any, key: str) -> Mapping[Any, Any]:
    if value is None:  # `sip:` with nothing under it means "all defaults"
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(key, f"must be a mapping of keys to values, got {_describe(value)}")
    return value


def _parse_section(cls: type[T], value: Any, key: str) -> T:
    raw = _mapping(value, key)
    fields = {field.name: field for field in attrs.fields(cls)}  # type: ignore[arg-type]
    for name in raw:
        if name not in fields:
            near = difflib.get_close_matches(str(name), list(fields), n=1)
            hint = f" (did you mean '{near[0]}'?)" if near else f" (known: {', '.join(fields)})"
            raise ConfigError(_join(key, str(name)), "unknown key" + hint)
    values = {}
    for name, field in fields.items():
        if name in raw:
            values[name] = field.metadata[_KIND](raw[name], _join(key, name))
        elif field.default is attrs.NOTHING:
            raise ConfigError(_join(key, name), "is required")
    instance = cls(**values)
    checked = getattr(instance, "_checked", None)
    if checked is None:
        return instance
    try:
        return checked()  # type: ignore[no-any-return]
    except ConfigError as error:
        raise ConfigError(_join(key, error.key), error.reason) from None


# --- field declarations ---------------------------------------------------------


def setting(default: Any, kind: Kind) -> Any:
    """A key with a default value, converted and checked by ``kind``."""
    return attrs.field(default=default, metadata={_KIND: kind})


def required(kind: Kind) -> Any:
    """A key that must be given."""
    return attrs.field(metadata={_KIND: kind})


def subsection(cls: type[T]) -> Any:
    """A nested section; its default is the section with all defaults applied."""
    return attrs.field(factory=lambda: _parse_section(cls, {}, ""), metadata={_KIND: section(cls)})


# --- sections --------------------------------------------------------------------

PORT = integer(0, 65535)  # 0 lets the OS choose a free port (tests use it)
TRANSPORTS = ("udp", "tcp", "tls")
DEFAULT_SIP_PORTS = {"udp": 5060, "tcp": 5060, "tls": 5061}  # RFC 3261 §19.1.2
LOG_FORMATS = ("text", "json")
LOG_LEVELS = ("debug", "info", "warn", "error")


@attrs.frozen
class ListenConfig:
    """One SIP socket: a transport on a local address and port."""

    transport: str = required(choice(*TRANSPORTS))
    host: str = setting("0.0.0.0", ip_address)
    port: int = setting(5060, PORT)

    def describe(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.transport} {host}:{self.port}"


def listen_entry(value: Any, key: str) -> ListenConfig:
    """A listen entry; its port defaults by transport (5061 for TLS, else 5060)."""
    raw = _mapping(value, key)
    if "transport" not in raw:
        raise ConfigError(_join(key, "transport"), f"is required (one of {', '.join(TRANSPORTS)})")
    transport = choice(*TRANSPORTS)(raw["transport"], _join(key, "transport"))
    return _parse_section(ListenConfig, {"port": DEFAULT_SIP_PORTS[transport], **raw}, key)


@attrs.frozen
class TimersConfig:
    """RFC 3261 §17 timer bases, in seconds."""

    t1: float = setting(0.5, seconds)
    t2: float = setting(4.0, seconds)
    t4: float = setting(5.0, seconds)
    invite_trying_delay: float = setting(0.2, seconds)  # §17.2.1: 100 Trying after 200 ms

    def _checked(self) -> TimersConfig:
        if self.t2 < self.t1:
            raise ConfigError("t2", f"must be at least t1 ({self.t1}), got {self.t2}")
        return self


@attrs.frozen
class TlsConfig:
    """Certificates for SIP over TLS; listening on TLS needs ``certificate``."""

    certificate: Path | None = setting(None, optional(existing_file))
    private_key: Path | None = setting(None, optional(existing_file))  # None: in certificate
    ca_certificates: Path | None = setting(None, optional(existing_file))  # None: system CAs
    verify_client: bool = setting(False, boolean)
    verify_server: bool = setting(True, boolean)

    def _checked(self) -> TlsConfig:
        if self.private_key is not None and self.certificate is None:
            raise ConfigError("private_key", "is set but certificate is not")
        return self


@attrs.frozen
class SipConfig:
    listen: tuple[ListenConfig, ...] = setting((), list_of(listen_entry, non_empty=True))
    domains: tuple[str, ...] = setting((), list_of(host_name))
    advertised_host: str | None = setting(None, optional(host_name))
    user_agent: str = setting(f"pbxd/{__version__}", text)
    timers: TimersConfig = subsection(TimersConfig)
    max_message_size: int = setting(65535, integer(1500, 1048576))
    tcp_idle_timeout: float = setting(300.0, seconds)
    udp_to_tcp_threshold: int = setting(1300, integer(0, 65535))  # 0: never switch
    tls: TlsConfig = subsection(TlsConfig)

    def _checked(self) -> SipConfig:
        listen = self.listen or self._default_listen()
        seen: dict[tuple[str, str, int], int] = {}
        for index, entry in enumerate(listen):
            if entry.transport == "tls" and self.tls.certificate is None:
                raise ConfigError(f"listen[{index}].transport", "tls needs sip.tls.certificate")
            where = (entry.transport, entry.host, entry.port)
            if entry.port and where in seen:
                raise ConfigError(
                    f"listen[{index}]", f"{entry.describe()} is already listen[{seen[where]}]"
                )
            seen[where] = index
        return attrs.evolve(self, listen=listen)

    def _default_listen(self) -> tuple[ListenConfig, ...]:
        transports = ("udp", "tcp", "tls") if self.tls.certificate else ("udp", "tcp")
        return tuple(ListenConfig(t, "0.0.0.0", DEFAULT_SIP_PORTS[t]) for t in transports)


API_SCOPES = ("read", "write", "admin")  # pbxd.web.auth.SCOPES (a test keeps them equal)


def api_token(value: Any, key: str) -> str:
    """A bearer token: at least 16 printable ASCII characters without spaces."""
    token = text(value, key)
    if len(token) < 16 or not re.fullmatch(r"[\x21-\x7e]+", token):
        raise ConfigError(key, "must be at least 16 printable ASCII characters without spaces")
    return token


@attrs.frozen
class ApiTokenConfig:
    """An API token (``Authorization: Bearer <token>``) and what it may do."""

    name: str = required(text)
    token: str = attrs.field(metadata={_KIND: api_token}, repr=False)
    scopes: tuple[str, ...] = setting(("read",), list_of(choice(*API_SCOPES), non_empty=True))


def token_list(value: Any, key: str) -> tuple[ApiTokenConfig, ...]:
    tokens: tuple[ApiTokenConfig, ...] = list_of(section(ApiTokenConfig))(value, key)
    names: dict[str, int] = {}
    secrets: dict[str, int] = {}
    for index, token in enumerate(tokens):
        if token.name in names:
            raise ConfigError(f"{key}[{index}].name", f"{token.name!r} is already {key}[{names[token.name]}]")
        if token.token in secrets:
            raise ConfigError(f"{key}[{index}].token", f"is the same as {key}[{secrets[token.token]}].token")
        names[token.name] = secrets[token.token] = index
    return tokens


def cors_origin(value: Any, key: str) -> str:
    """A web origin (``https://crm.example.com``, ``http://localhost:3000``) or ``*``."""
    origin = text(value, key).strip()
    if origin != "*" and not re.fullmatch(r"https?://[A-Za-z0-9.\-]+(:[0-9]{1,5})?|https?://\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?", origin.rstrip("/")):
        raise ConfigError(key, f"must be an origin such as https://crm.example.com, or *, got {_describe(value)}")
    return origin.rstrip("/")


@attrs.frozen
class RateLimitConfig:
    """Requests per client address (pbx-rest-api.md: 100 a minute, 1000 an hour); 0: no limit."""

    per_minute: int = setting(100, integer(0, 1_000_000))
    per_hour: int = setting(1000, integer(0, 100_000_000))


@attrs.frozen
class HttpConfig:
    """The HTTP port: /api, /console, /ami/v1, /metrics, /ws (issue 7)."""

    host: str = setting("127.0.0.1", ip_address)
    port: int = setting(8080, PORT)
    tokens: tuple[ApiTokenConfig, ...] = setting((), token_list)
    allow_unauthenticated: bool = setting(False, boolean)
    cors_origins: tuple[str, ...] = setting((), list_of(cors_origin))
    rate_limit: RateLimitConfig = subsection(RateLimitConfig)
    max_body_bytes: int = setting(1048576, integer(1024, 67108864))

    def _checked(self) -> HttpConfig:
        if not self.tokens and not self.allow_unauthenticated and not ipaddress.ip_address(self.host).is_loopback:
            raise ConfigError(
                "host", f"{self.host} is not a loopback address and http.tokens is empty: anyone who"
                " can reach the port could run pbxd; add tokens, or set http.allow_unauthenticated: true",
            )
        return self


@attrs.frozen
class RtpConfig:
    """The media relay (docs/media.md): ports, addresses, timeout, recording.

    Each leg takes an even RTP port and the odd RTCP port above it.
    ``advertised_address`` is what goes in the SDP (None: the address the SIP
    message goes out from); ``timeout`` 0 never hangs up on silence;
    ``recording_dir`` None is ``<data_dir>/recordings``.
    """

    port_min: int = setting(20000, integer(1024, 65534))
    port_max: int = setting(30000, integer(1025, 65535))
    bind_address: str = setting("0.0.0.0", ip_address)
    advertised_address: str | None = setting(None, optional(ip_address))
    timeout: float = setting(30.0, non_negative_seconds)
    relatch_packets: int = setting(8, integer(1, 1000))
    socket_buffer: int = setting(1 << 20, integer(1 << 16, 1 << 26))
    recording_dir: Path | None = setting(None, optional(path))
    recording_format: str = setting("stereo", choice("stereo", "mono"))

    def _checked(self) -> RtpConfig:
        if self.port_min % 2:
            raise ConfigError(
                "port_min", f"must be even (RTP takes even ports), got {self.port_min}"
            )
        if self.port_max <= self.port_min:
            raise ConfigError(
                "port_max", f"must be above port_min ({self.port_min}), got {self.port_max}"
            )
        return self


@attrs.frozen
class LogConfig:
    format: str = setting("text", choice(*LOG_FORMATS))
    level: str = setting("info", choice(*LOG_LEVELS))


# --- extensions, authentication, registrar, locator (issue 3) ---------------------


def string(value: Any, key: str) -> str:
    """Any string, the empty one included."""
    if not isinstance(value, str):
        raise ConfigError(key, f"must be a string, got {_describe(value)}")
    return value


def quoted_digits_or_name(value: Any, key: str) -> str:
    """A string that YAML would otherwise read as a number (extension numbers, PINs).

    An unquoted ``0100`` is the octal number 64 to YAML; refusing numbers is
    the only way to never store the wrong extension.
    """
    if isinstance(value, int) and not isinstance(value, bool):
        raise ConfigError(key, f'must be a quoted string (write "{value}"), got the number {value}')
    return text(value, key)


def network(value: Any, key: str) -> str:
    """An address or CIDR network (``10.0.0.0/8``, ``2001:db8::/32``)."""
    text(value, key)
    try:
        return str(ipaddress.ip_network(value.strip(), strict=False))
    except ValueError:
        raise ConfigError(key, f"must be an IP address or network, got {_describe(value)}") from None


def http_url(value: Any, key: str) -> str:
    text(value, key)
    if not re.match(r"https?://[^/\s]+", value) or any(c.isspace() for c in value):
        raise ConfigError(key, f"must be an http:// or https:// URL, got {_describe(value)}")
    return value


def string_map(value: Any, key: str) -> tuple[tuple[str, str], ...]:
    """A mapping of names to one-line strings (extra headers), kept as pairs so
    that the config stays hashable. The pairs themselves are accepted too, as
    ``Config.with_overrides`` hands them back (attrs.asdict makes them lists)."""
    if isinstance(value, (list, tuple)) and all(
        isinstance(pair, (list, tuple)) and len(pair) == 2 for pair in value
    ):
        items = [tuple(pair) for pair in value]
    else:
        items = list(_mapping(value, key).items())
    pairs = []
    for name, item in items:
        if not isinstance(name, str) or not name:
            raise ConfigError(key, f"keys must be strings, got {_describe(name)}")
        if not isinstance(item, str) or "\r" in item or "\n" in item:
            raise ConfigError(_join(key, name), f"must be a one-line string, got {_describe(item)}")
        pairs.append((name, item))
    return tuple(pairs)


# The Digest algorithms the store keeps HA1s for (RFC 7616 §6.1 names);
# -sess variants derive their HA1 from the same stored value.
DIGEST_ALGORITHMS = ("MD5", "MD5-sess", "SHA-256", "SHA-256-sess")


def digest_algorithms(value: Any, key: str) -> tuple[str, ...]:
    names = {name.lower(): name for name in DIGEST_ALGORITHMS}

    def one(item: Any, item_key: str) -> str:
        if not isinstance(item, str) or item.lower() not in names:
            raise ConfigError(
                item_key, f"must be one of {', '.join(DIGEST_ALGORITHMS)}, got {_describe(item)}"
            )
        return names[item.lower()]

    algorithms = list_of(one, non_empty=True)(value, key)
    if len(set(algorithms)) != len(algorithms):
        raise ConfigError(key, "lists an algorithm twice")
    return algorithms  # type: ignore[no-any-return]


@attrs.frozen
class ExtensionConfig:
    """An extension seeded into the store when pbxd first starts with an empty one."""

    number: str = required(quoted_digits_or_name)
    password: str = attrs.field(metadata={_KIND: text}, repr=False)
    name: str = setting("", string)
    email: str = setting("", string)
    allow_external: bool = setting(True, boolean)
    voicemail_pin: str | None = setting(None, optional(quoted_digits_or_name))
    enabled: bool = setting(True, boolean)
    # Toll-fraud guards (docs/security.md): calls placed at once (0: no limit),
    # and the numbers it may send to a carrier (full matches; none: any).
    max_calls: int = setting(0, integer(0, MAX_CALL_LIMIT))
    dial_patterns: tuple[str, ...] = setting((), list_of(text))

    def spec(self) -> Any:
        """The store's ExtensionSpec for this entry (it validates every field)."""
        from pbxd.store.models import ExtensionSpec

        return ExtensionSpec(**attrs.asdict(self))

    def _checked(self) -> ExtensionConfig:
        try:
            self.spec()
        except (TypeError, ValueError) as error:
            message = str(error)
            field = message.split(" ", 1)[0]
            names = [f.name for f in attrs.fields(ExtensionConfig)]
            raise ConfigError(field if field.split("[", 1)[0] in names else "", message) from None
        return self


def extension_list(value: Any, key: str) -> tuple[ExtensionConfig, ...]:
    extensions = list_of(section(ExtensionConfig))(value, key)
    seen: dict[str, int] = {}
    for index, extension in enumerate(extensions):
        if extension.number in seen:
            raise ConfigError(
                f"{key}[{index}].number",
                f"{extension.number} is already {key}[{seen[extension.number]}]",
            )
        seen[extension.number] = index
    return extensions  # type: ignore[no-any-return]


@attrs.frozen
class UserBackendConfig:
    """Where credentials come from: ``static`` (the store) or ``http``
    (rustpbx-api-integration.md §1.2). The other keys are for ``http``."""

    type: str = required(choice("static", "http"))
    url: str | None = setting(None, optional(http_url))
    method: str = setting("GET", choice("GET", "POST"))
    username_field: str = setting("username", text)
    realm_field: str = setting("realm", text)
    request_uri_field: str = setting("request_uri", text)
    headers: tuple[tuple[str, str], ...] = setting((), string_map)
    timeout: float = setting(5.0, seconds)
    retries: int = setting(1, integer(0, 10))
    cache_ttl: float = setting(0.0, non_negative_seconds)
    password_format: str = setting("auto", choice("auto", "plain", "ha1"))

    def _checked(self) -> UserBackendConfig:
        if self.type == "http" and self.url is None:
            raise ConfigError("url", "is required for type http")
        if self.type == "static" and self.url is not None:
            raise ConfigError("url", "is only for type http")
        return self


@attrs.frozen
class GuardConfig:
    """Brute-force protection: failures per source address and per user."""

    max_failures: int = setting(5, integer(1, 1_000_000))
    window: float = setting(60.0, seconds)
    ban_time: float = setting(300.0, seconds)
    trusted: tuple[str, ...] = setting((), list_of(network))
    action: str = setting("reject", choice("reject", "drop"))


@attrs.frozen
class AuthConfig:
    """Digest authentication of REGISTER (and of calls from extensions)."""

    realm: str | None = setting(None, optional(text))  # None: first sip.domain, else "pbxd"
    algorithms: tuple[str, ...] = setting(("MD5", "SHA-256"), digest_algorithms)
    nonce_lifetime: float = setting(300.0, seconds)
    nonce_secret: str | None = attrs.field(
        default=None, metadata={_KIND: optional(text)}, repr=False
    )
    failure_response: int = setting(403, integer(401, 403))
    backends: tuple[UserBackendConfig, ...] = setting(
        (UserBackendConfig("static"),), list_of(section(UserBackendConfig), non_empty=True)
    )
    guard: GuardConfig = subsection(GuardConfig)

    def _checked(self) -> AuthConfig:
        if self.failure_response not in (401, 403):
            raise ConfigError("failure_response", f"must be 401 or 403, got {self.failure_response}")
        if self.nonce_secret is not None and len(self.nonce_secret.encode("utf-8")) < 16:
            raise ConfigError("nonce_secret", "must be at least 16 bytes long")
        if self.realm is not None and re.search(r'[\x00-\x1f\x7f"\\]', self.realm):
            raise ConfigError("realm", "must not contain quotes, backslashes or control characters")
        return self


@attrs.frozen
class RegistrarConfig:
    """RFC 3261 §10.3 limits and the qualify interval, in seconds."""

    min_expires: int = setting(60, integer(1, 86400))
    max_expires: int = setting(3600, integer(1, 2**31 - 1))
    default_expires: int = setting(3600, integer(1, 2**31 - 1))
    max_contacts: int = setting(10, integer(1, 1000))
    qualify_interval: float = setting(0.0, non_negative_seconds)  # 0: no qualify

    def _checked(self) -> RegistrarConfig:
        if self.max_expires < self.min_expires:
            raise ConfigError(
                "max_expires", f"must be at least min_expires ({self.min_expires}), got {self.max_expires}"
            )
        if not self.min_expires <= self.default_expires <= self.max_expires:
            raise ConfigError(
                "default_expires",
                f"must be between min_expires and max_expires ({self.min_expires}-{self.max_expires}),"
                f" got {self.default_expires}",
            )
        return self


# pbxd.hooks.locator.LOCATOR_EVENTS; spelled out here so that reading the
# configuration does not import the HTTP client (a test keeps them equal).
LOCATOR_EVENT_NAMES = ("registered", "unregistered", "offline")


@attrs.frozen
class LocatorConfig:
    """The locator webhook (rustpbx-api-integration.md §1.3); no url: no events."""

    url: str | None = setting(None, optional(http_url))
    events: tuple[str, ...] = setting(LOCATOR_EVENT_NAMES, list_of(choice(*LOCATOR_EVENT_NAMES)))
    headers: tuple[tuple[str, str], ...] = setting((), string_map)
    timeout: float = setting(5.0, seconds)
    retries: int = setting(3, integer(0, 10))


# --- call routing, HTTP router, CDR push (issue 4) --------------------------------------


def regex(value: Any, key: str) -> str:
    """A regular expression (Python syntax), compiled so that a bad one stops start-up."""
    text(value, key)
    try:
        re.compile(value)
    except re.error as error:
        raise ConfigError(key, f"is not a valid regular expression: {error}") from None
    return value


def _routing_rule(check: Callable[[Any], Any], value: Any, key: str) -> Any:
    """``check(value)`` from pbxd.call.routing, its RouteError as a ConfigError."""
    try:
        return check(value)
    except routing.RouteError as error:
        raise ConfigError(key, str(error)) from None


def route_destination(value: Any, key: str) -> tuple[str, ...]:
    """One destination or a list: an extension number, ``trunk:NAME`` or a
    sip:/tel: URI, each of which may hold ``{called}``."""
    if isinstance(value, Mapping) and list(value) == ["called"]:
        raise ConfigError(key, 'write "{called}" in quotes (unquoted, YAML reads a mapping)')

    def one(item: Any, item_key: str) -> str:
        return _routing_rule(routing.check_destination, quoted_digits_or_name(item, item_key),
                             item_key)

    if isinstance(value, (str, int)):
        return (one(value, key),)
    # An empty list is "no destination", which only a reject route may have.
    return list_of(one)(value, key)  # type: ignore[no-any-return]


def route_headers(value: Any, key: str) -> tuple[tuple[str, str], ...]:
    """SIP headers to add to the outbound INVITE (not those pbxd writes itself)."""
    pairs = string_map(value, key)
    for pair in pairs:
        _routing_rule(lambda p: routing.check_header(*p), pair, _join(key, pair[0]))
    return pairs


def reason_phrase(value: Any, key: str) -> str:
    return _routing_rule(routing.check_reason, text(value, key), key)  # type: ignore[no-any-return]


@attrs.frozen
class RouteMatchConfig:
    """A route's conditions: all that are set must hold. Regexes match the whole value."""

    request_user: str | None = setting(None, optional(regex))
    from_user: str | None = setting(None, optional(regex))
    to_user: str | None = setting(None, optional(regex))
    source_trunk: str | None = setting(None, optional(regex))
    source_ip: tuple[str, ...] = setting((), list_of(network))
    direction: tuple[str, ...] = setting((), list_of(choice(*routing.DIRECTIONS)))
    extension: bool | None = setting(None, optional(boolean))


@attrs.frozen
class RewriteConfig:
    """Rewrites the called number when ``pattern`` matches all of it."""

    pattern: str | None = setting(None, optional(regex))
    replacement: str = setting("", string)

    def _checked(self) -> RewriteConfig:
        if self.pattern is None:
            if self.replacement:
                raise ConfigError("replacement", "is set but pattern is not")
            return self
        pattern = self.pattern
        _routing_rule(lambda r: routing.check_rewrite(pattern, r), self.replacement, "replacement")
        return self


@attrs.frozen
class RouteConfig:
    """One static route; pbxd.call.routing.StaticRouter.from_config compiles them."""

    name: str = required(text)
    priority: int = setting(100, integer(-1_000_000, 1_000_000))
    enabled: bool = setting(True, boolean)
    match: RouteMatchConfig = subsection(RouteMatchConfig)
    rewrite: RewriteConfig = subsection(RewriteConfig)
    action: str = setting("forward", choice(*routing.STATIC_ACTIONS))
    destination: tuple[str, ...] = setting((), route_destination)
    strategy: str = setting("parallel", choice(*routing.STRATEGIES))
    status: int | None = setting(None, optional(integer(400, 699)))
    reason: str | None = setting(None, optional(reason_phrase))
    ring_timeout: float | None = setting(None, optional(seconds))
    max_duration: float | None = setting(None, optional(seconds))
    record: bool = setting(False, boolean)
    media_proxy: str = setting("auto", choice(*routing.MEDIA_PROXY_MODES))
    headers: tuple[tuple[str, str], ...] = setting((), route_headers)

    def _checked(self) -> RouteConfig:
        if self.action == "forward":
            # A disabled route may be just a name: `{name: extensions, enabled: false}`.
            if not self.destination and self.enabled:
                raise ConfigError("destination", "is required when action is forward")
            for key in ("status", "reason"):
                if getattr(self, key) is not None:
                    raise ConfigError(key, "is only for action reject")
        elif self.destination:
            raise ConfigError("destination", "is only for action forward")
        return self


def route_list(value: Any, key: str) -> tuple[RouteConfig, ...]:
    routes: tuple[RouteConfig, ...] = list_of(section(RouteConfig))(value, key)
    seen: dict[str, int] = {}
    for index, route in enumerate(routes):
        if route.name in seen:
            raise ConfigError(_join(key, f"[{index}].name"),
                              f"{route.name!r} is already the name of {key}[{seen[route.name]}]")
        seen[route.name] = index
    return routes


@attrs.frozen
class HttpRouterConfig:
    """The HTTP router webhook (rustpbx-api-integration.md §1.1); off without a url."""

    url: str | None = setting(None, optional(http_url))
    headers: tuple[tuple[str, str], ...] = setting((), string_map)
    timeout: float = setting(3.0, seconds)
    fallback_to_static: bool = setting(True, boolean)


@attrs.frozen
class CdrConfig:
    """The CDR push (rustpbx-api-integration.md §1.4); off without a push_url."""

    push_url: str | None = setting(None, optional(http_url))
    headers: tuple[tuple[str, str], ...] = setting((), string_map)
    include_recording: bool = setting(True, boolean)


# --- SIP trunks (issue 5) -------------------------------------------------------------


def trunk_name(value: Any, key: str) -> str:
    """A name that ``trunk:NAME`` route destinations can use."""
    name = text(value, key)
    _routing_rule(routing.check_destination, f"trunk:{name}", key)
    return name


def sip_uri(value: Any, key: str) -> str:
    """A sip: or sips: URI (an outbound proxy)."""
    from pbxd.sip.uri import SipURI, parse_uri

    text(value, key)
    try:
        uri = parse_uri(value.strip())
    except ValueError:
        uri = None
    if not isinstance(uri, SipURI):
        raise ConfigError(key, f"must be a sip: or sips: URI, got {_describe(value)}")
    return value.strip()


def header_name(value: Any, key: str) -> str:
    """A SIP header name pbxd does not write itself (headers passed through a trunk)."""
    return _routing_rule(lambda name: routing.check_header(name, "")[0], text(value, key), key)  # type: ignore[no-any-return]


_DID = re.compile(r"\+?[0-9A-Za-z#*.\-]+\*?\Z")


def did_number(value: Any, key: str) -> str:
    """A DID as the carrier's numbers are matched after ``normalize``; a
    trailing ``*`` makes it a prefix (a number block)."""
    number = quoted_digits_or_name(value, key).strip()
    if not _DID.match(number) or number == "*":
        raise ConfigError(key, f"must be a number such as \"+4930123456\" or a block \"+49301234*\", got {_describe(value)}")
    return number


# An RTP encoding name, optionally with clock rate and channels: "PCMA", "opus/48000/2" (RFC 4566 §6 rtpmap).
_CODEC = re.compile(r"[^\s/]+(?:/[0-9]{1,10}(?:/[0-9]{1,3})?)?\Z")


def codec_name(value: Any, key: str) -> str:
    """A codec a trunk may offer: ``name[/rate[/channels]]``, the name in any case."""
    name = text(value, key).strip()
    if not _CODEC.match(name):
        raise ConfigError(key, f"must be a codec such as \"PCMA\" or \"opus/48000/2\", got {_describe(value)}")
    return name


def rate(value: Any, key: str) -> float:
    """A number of events per second, 0 or more."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(key, f"must be a number per second, got {_describe(value)}")
    if not math.isfinite(value) or value < 0:
        raise ConfigError(key, f"must be 0 or more, got {value}")
    return float(value)


@attrs.frozen
class TrunkDestinationConfig:
    """Where a trunk sends: a host, and the port and transport or RFC 3263 to find them."""

    host: str = required(host_name)
    port: int | None = setting(None, optional(integer(1, 65535)))  # None: SRV or the default
    transport: str | None = setting(None, optional(choice(*TRANSPORTS)))  # None: NAPTR/SRV


@attrs.frozen
class TrunkRegisterConfig:
    """Outbound registration (RFC 3261 §10.2) to the trunk's primary destination."""

    enabled: bool = setting(False, boolean)
    expires: int = setting(3600, integer(1, 2**31 - 1))
    retry_min: float = setting(5.0, seconds)
    retry_max: float = setting(300.0, seconds)

    def _checked(self) -> TrunkRegisterConfig:
        if self.retry_max < self.retry_min:
            raise ConfigError("retry_max", f"must be at least retry_min ({self.retry_min}), got {self.retry_max}")
        return self


@attrs.frozen
class CallerIdConfig:
    """How the caller is presented to the carrier (RFC 3325, draft-ietf-sip-privacy-04, RFC 3323)."""

    pai: bool = setting(False, boolean)
    rpid: bool = setting(False, boolean)
    privacy: str = setting("auto", choice("auto", "always", "never"))


@attrs.frozen
class TrunkConfig:
    """One SIP trunk to a carrier; pbxd.trunks builds a Trunk from it."""

    name: str = required(trunk_name)
    destination: TrunkDestinationConfig = required(section(TrunkDestinationConfig))
    backups: tuple[TrunkDestinationConfig, ...] = setting((), list_of(section(TrunkDestinationConfig)))
    username: str | None = setting(None, optional(text))
    password: str | None = attrs.field(default=None, metadata={_KIND: optional(text)}, repr=False)
    auth_realm: str | None = setting(None, optional(text))  # None: any realm
    from_user: str | None = setting(None, optional(text))
    from_domain: str | None = setting(None, optional(host_name))
    outbound_proxy: str | None = setting(None, optional(sip_uri))
    codecs: tuple[str, ...] = setting((), list_of(codec_name))
    dids: tuple[str, ...] = setting((), list_of(did_number))
    inbound_hosts: tuple[str, ...] = setting((), list_of(network))
    accept_unknown_sources: bool = setting(False, boolean)
    max_calls: int = setting(0, integer(0, 1_000_000))  # 0: no limit
    max_cps: float = setting(0.0, rate)  # new calls per second; 0: no limit
    register: TrunkRegisterConfig = subsection(TrunkRegisterConfig)
    options_interval: float = setting(0.0, non_negative_seconds)  # 0: no health checks
    # Seconds a call waits for any response from a server before trying the next; 0: Timer B.
    failover_timeout: float = setting(5.0, non_negative_seconds)
    pass_headers: tuple[str, ...] = setting((), list_of(header_name))
    caller_id: CallerIdConfig = subsection(CallerIdConfig)
    normalize: tuple[RewriteConfig, ...] = setting((), list_of(section(RewriteConfig)))

    def _checked(self) -> TrunkConfig:
        if self.password is not None and self.username is None:
            raise ConfigError("password", "is set but username is not")
        if self.register.enabled and (self.username is None or self.password is None):
            raise ConfigError("register.enabled", "needs username and password")
        for index, rule in enumerate(self.normalize):
            if rule.pattern is None:
                raise ConfigError(f"normalize[{index}].pattern", "is required")
        return self


def trunk_list(value: Any, key: str) -> tuple[TrunkConfig, ...]:
    trunks: tuple[TrunkConfig, ...] = list_of(section(TrunkConfig))(value, key)
    names: dict[str, int] = {}
    dids: dict[str, str] = {}
    for index, trunk in enumerate(trunks):
        if trunk.name in names:
            raise ConfigError(f"{key}[{index}].name",
                              f"{trunk.name!r} is already the name of {key}[{names[trunk.name]}]")
        names[trunk.name] = index
        for number in trunk.dids:
            if number in dids:
                raise ConfigError(f"{key}[{index}].dids", f"{number} is already a DID of trunk {dids[number]}")
            dids[number] = trunk.name
    return trunks


@attrs.frozen
class CallsConfig:
    """The B2BUA (issue 4): ring time, call length and session timers (RFC 4028), in seconds."""

    max_ring_time: float = setting(60.0, seconds)
    max_duration: float = setting(0.0, non_negative_seconds)  # 0: unlimited
    session_timers: bool = setting(True, boolean)
    session_expires: int = setting(1800, integer(90, 86400))
    min_se: int = setting(90, integer(90, 86400))

    def _checked(self) -> CallsConfig:
        if self.session_expires < self.min_se:
            raise ConfigError("session_expires", f"must be at least min_se ({self.min_se}), got {self.session_expires}")
        return self


@attrs.frozen
class AmiConfig:
    """The /ami/v1 tree (rustpbx-api-integration.md §2.3): who may use it, how long a graceful stop waits."""

    allows: tuple[str, ...] = setting(("127.0.0.0/8", "::1/128"), list_of(network))
    shutdown_deadline: float = setting(60.0, seconds)


# pbkdf2_sha256$<iterations>$<salt, base64>$<digest, base64>: pbxd.web.console.hash_password.
_PASSWORD_HASH = re.compile(r"pbkdf2_sha256\$[1-9][0-9]{3,7}\$[A-Za-z0-9+/=]{8,}\$[A-Za-z0-9+/=]{43,44}")


def password_hash(value: Any, key: str) -> str:
    if not isinstance(value, str) or not _PASSWORD_HASH.fullmatch(value):
        raise ConfigError(key, "must be pbkdf2_sha256$<iterations>$<salt>$<digest> as"
                               " `python -m pbxd.web.console hash` prints it")
    return value


@attrs.frozen
class ConsoleAdminConfig:
    """A console user: ``password`` in clear or ``password_hash`` (one of them)."""

    username: str = required(text)
    password: str | None = setting(None, optional(text))
    password_hash: str | None = setting(None, optional(password_hash))

    def _checked(self) -> ConsoleAdminConfig:
        if (self.password is None) == (self.password_hash is None):
            raise ConfigError("password", "give either password or password_hash")
        return self


def admin_list(value: Any, key: str) -> tuple[ConsoleAdminConfig, ...]:
    admins: tuple[ConsoleAdminConfig, ...] = list_of(section(ConsoleAdminConfig))(value, key)
    seen: dict[str, int] = {}
    for index, admin in enumerate(admins):
        if admin.username in seen:
            raise ConfigError(f"{key}[{index}].username",
                              f"{admin.username!r} is already {key}[{seen[admin.username]}]")
        seen[admin.username] = index
    return admins


@attrs.frozen
class ConsoleConfig:
    """The /console tree (issue 7): who may log in, how long a session lasts."""

    admins: tuple[ConsoleAdminConfig, ...] = setting((), admin_list)
    session_ttl: float = setting(28800.0, seconds)
    sip_flow_days: int = setting(30, integer(0, 36500))  # stored SIP ladders; 0: kept like CDRs


@attrs.frozen
class FloodConfig:
    """Per-source request-rate limit for SIP (pbxd.security.flood)."""

    requests_per_second: float = setting(50.0, rate)
    burst: int = setting(200, integer(1, 10_000_000))
    ban_time: float = setting(300.0, seconds)
    max_tracked: int = setting(100_000, integer(1, 10_000_000))

    def _checked(self) -> FloodConfig:
        if self.requests_per_second <= 0:
            raise ConfigError("requests_per_second", "must be more than 0")
        return self


@attrs.frozen
class SipAclConfig:
    """Which source addresses may send SIP at all; deny wins over allow, empty allow: everyone."""

    allow: tuple[str, ...] = setting((), list_of(network))
    deny: tuple[str, ...] = setting((), list_of(network))


@attrs.frozen
class LimitsConfig:
    """Resource limits (issue 9); 0: no limit."""

    max_transactions: int = setting(50_000, integer(0, 10_000_000))
    max_dialogs: int = setting(5_000, integer(0, 10_000_000))
    max_connections_per_ip: int = setting(64, integer(0, 1_000_000))
    max_headers: int = setting(200, integer(0, 100_000))


@attrs.frozen
class SecurityConfig:
    """Hostile traffic (issue 9, pbxd.security): flood bans, ACL, scanner block list, limits."""

    flood: FloodConfig = subsection(FloodConfig)
    allow: tuple[str, ...] = setting((), list_of(network))  # never rate-limited or banned
    acl: SipAclConfig = subsection(SipAclConfig)
    user_agent_blocklist: tuple[str, ...] = setting(DEFAULT_USER_AGENT_BLOCKLIST, list_of(text))
    trust_loopback: bool = setting(True, boolean)
    limits: LimitsConfig = subsection(LimitsConfig)


@attrs.frozen
class MetricsConfig:
    """Prometheus text at /metrics (issue 7)."""

    enabled: bool = setting(True, boolean)


@attrs.frozen
class Config:
    """The whole configuration. ``Config()`` is the configuration with no file."""

    data_dir: Path = setting(Path("pbxd-data"), path)  # relative: to the working directory
    sip: SipConfig = subsection(SipConfig)
    http: HttpConfig = subsection(HttpConfig)
    rtp: RtpConfig = subsection(RtpConfig)
    log: LogConfig = subsection(LogConfig)
    extensions: tuple[ExtensionConfig, ...] = setting((), extension_list)
    auth: AuthConfig = subsection(AuthConfig)
    registrar: RegistrarConfig = subsection(RegistrarConfig)
    locator: LocatorConfig = subsection(LocatorConfig)
    routes: tuple[RouteConfig, ...] = setting((), route_list)
    http_router: HttpRouterConfig = subsection(HttpRouterConfig)
    cdr: CdrConfig = subsection(CdrConfig)
    calls: CallsConfig = subsection(CallsConfig)
    trunks: tuple[TrunkConfig, ...] = setting((), trunk_list)
    ami: AmiConfig = subsection(AmiConfig)
    console: ConsoleConfig = subsection(ConsoleConfig)
    metrics: MetricsConfig = subsection(MetricsConfig)
    security: SecurityConfig = subsection(SecurityConfig)

    def with_overrides(
        self,
        *,
        data_dir: str | None = None,
        sip_host: str | None = None,
        sip_port: str | None = None,
        tls_port: str | None = None,
        http_host: str | None = None,
        http_port: str | None = None,
        rtp_ports: str | None = None,
        log_format: str | None = None,
        log_level: str | None = None,
    ) -> Config:
        """This configuration with command-line values applied.

        Values are strings as typed on the command line; None leaves a setting
        alone. A bad value raises ConfigError naming the option (``--sip-port``).
        ``sip_host`` applies to every listener, ``sip_port`` to the UDP and TCP
        listeners, ``tls_port`` to the TLS listeners.
        """
        raw = attrs.asdict(self, value_serializer=_serialize)
        listen = raw["sip"]["listen"]
        if data_dir is not None:
            raw["data_dir"] = str(path(data_dir, "--data-dir"))
        if sip_host is not None:
            host = ip_address(sip_host, "--sip-host")
            for entry in listen:
                entry["host"] = host
        if sip_port is not None:
            port = PORT(_cli_integer(sip_port, "--sip-port"), "--sip-port")
            for entry in listen:
                if entry["transport"] != "tls":
                    entry["port"] = port
        if tls_port is not None:
            port = PORT(_cli_integer(tls_port, "--tls-port"), "--tls-port")
            tls_entries = [entry for entry in listen if entry["transport"] == "tls"]
            if not tls_entries:
                raise ConfigError("--tls-port", "no TLS listener (set sip.tls.certificate)")
            for entry in tls_entries:
                entry["port"] = port
        if http_host is not None:
            raw["http"]["host"] = ip_address(http_host, "--http-host")
        if http_port is not None:
            raw["http"]["port"] = PORT(_cli_integer(http_port, "--http-port"), "--http-port")
        if rtp_ports is not None:
            ports = _rtp_range(rtp_ports, "--rtp-ports")  # the range only; the other rtp keys stay
            raw["rtp"].update(port_min=ports.port_min, port_max=ports.port_max)
        if log_format is not None:
            raw["log"]["format"] = choice(*LOG_FORMATS)(log_format, "--log-format")
        if log_level is not None:
            raw["log"]["level"] = choice(*LOG_LEVELS)(log_level, "--log-level")
        return parse_config(raw)


def to_data(value: Any) -> Any:
    """A configuration (or a section, or a value of one) as plain data in the
    shape a file holds it: sections as mappings, lists as lists, header maps
    as mappings, paths as strings. ``parse_config(to_data(config)) == config``."""
    if attrs.has(type(value)):
        data = {}
        for field in attrs.fields(type(value)):
            item = getattr(value, field.name)
            if field.metadata.get(_KIND) in (string_map, route_headers):
                data[field.name] = dict(item)
            else:
                data[field.name] = to_data(item)
        return data
    if isinstance(value, (list, tuple)):
        return [to_data(item) for item in value]
    if isinstance(value, Path):
        return str(value)
    return value


def _serialize(instance: Any, field: Any, value: Any) -> Any:
    return str(value) if isinstance(value, Path) else value


def _cli_integer(value: str, option: str) -> int:
    try:
        return int(value, 10)
    except ValueError:
        raise ConfigError(option, f"must be an integer, got {value!r}") from None


def _rtp_range(value: str, option: str) -> RtpConfig:
    match = re.fullmatch(r"\s*(\d+)\s*-\s*(\d+)\s*", value)
    if match is None:
        raise ConfigError(option, f"must be MIN-MAX, e.g. 20000-30000, got {value!r}")
    low, high = int(match[1]), int(match[2])
    try:
        return _parse_section(RtpConfig, {"port_min": low, "port_max": high}, "")
    except ConfigError as error:
        raise ConfigError(option, f"{error.key} {error.reason}") from None


# --- loading -------------------------------------------------------------------


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that rejects a key given twice in one mapping (PyYAML keeps the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
            except TypeError:  # unhashable key: SafeLoader reports it below
                break
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def yaml_data(text: str) -> Any:
    """YAML text parsed as :func:`load_config` parses a file (safe types only,
    a key given twice in a mapping refused); yaml.YAMLError if it is not YAML."""
    return yaml.load(text, Loader=_StrictLoader)


def with_absolute_paths(config: Config) -> Config:
    """``config`` with ``data_dir`` and ``rtp.recording_dir`` absolute (from the working directory)."""
    recordings = config.rtp.recording_dir
    rtp = attrs.evolve(config.rtp, recording_dir=None if recordings is None else recordings.absolute())
    return attrs.evolve(config, data_dir=config.data_dir.absolute(), rtp=rtp)


def parse_config(data: object) -> Config:
    """Check a mapping (parsed YAML; None means empty) and build the Config."""
    return _parse_section(Config, data, "")


def load_config(file: str | os.PathLike[str] | None) -> Config:
    """Read and check a YAML config file; None gives the defaults.

    Every error is a ConfigError whose ``file`` is the file's name.
    """
    if file is None:
        return Config()
    name = os.fspath(file)
    try:
        with open(name, encoding="utf-8") as stream:
            data = yaml.load(stream, Loader=_StrictLoader)
        return parse_config(data)
    except ConfigError as error:
        raise ConfigError(error.key, error.reason, name) from None
    except OSError as error:
        raise ConfigError("", f"cannot read: {error.strerror}", name) from None
    except UnicodeDecodeError:
        raise ConfigError("", "not UTF-8 text", name) from None
    except yaml.YAMLError as error:
        raise ConfigError("", f"not valid YAML: {_yaml_problem(error)}", name) from None


def _yaml_problem(error: yaml.YAMLError) -> str:
    if isinstance(error, yaml.MarkedYAMLError) and error.problem_mark is not None:
        mark = error.problem_mark
        return f"{error.problem} (line {mark.line + 1}, column {mark.column + 1})"
    return str(error).replace("\n", " ")
