"""JSON in and out of the HTTP trees, and every error as ``{"error": "..."}``.

A handler raises :class:`HttpError` (or lets :func:`read_json` /
:func:`query_text` raise it) and the error handler :func:`install` puts on
each Klein tree answers with its status and message. Routing errors become
JSON too (404 for an unknown route, 405 with ``Allow`` for a known route and
the wrong method); anything else a handler raises is a bug: 500, logged
with its traceback, and the client sees no detail of it.

Request bodies are JSON objects read by :func:`read_json` against a
:data:`Schema` (field name to :class:`Field`): a body that is not UTF-8 JSON,
is not an object, repeats a key, has a field of the wrong type or a field
the schema does not know is 400, a body that is not ``application/json``
is 415 (a cross-site form cannot send that type without a CORS preflight,
so this also keeps browsers on other sites from posting to an open API).
Oversize bodies are refused before any handler runs (413, :mod:`pbxd.web.app`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

import attrs
from klein import Klein
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound

log = Logger(namespace="pbxd.web")

JSON_TYPE = b"application/json"


class HttpError(Exception):
    """Answer ``status`` with ``{"error": message}`` and the extra ``headers``."""

    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(status, message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})

    def __str__(self) -> str:
        return f"{self.status} {self.message}"


def json_bytes(value: Any) -> bytes:
    """``value`` as compact UTF-8 JSON (no NaN: strict JSON parsers refuse it)."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")


def write_json(request: IRequest, value: Any, status: int = 200) -> bytes:
    """Set the status and JSON content type; the body for the handler to return."""
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json; charset=utf-8")
    request.setHeader(b"cache-control", b"no-store")
    return json_bytes(value)


def error_body(request: IRequest, status: int, message: str,
               headers: Mapping[str, str] | None = None) -> bytes:
    """Write an error's status and headers; its body ``{"error": message}``."""
    for name, value in (headers or {}).items():
        request.setHeader(name.encode("latin-1"), value.encode("latin-1"))
    return write_json(request, {"error": message}, status)


def answer_failure(request: IRequest, failure: Failure) -> bytes:
    """The JSON answer to whatever a route raised (see the module docstring)."""
    error = failure.value
    if isinstance(error, HttpError):
        return error_body(request, error.status, error.message, error.headers)
    if isinstance(error, MethodNotAllowed):
        allowed = ", ".join(sorted(error.valid_methods or ()))
        return error_body(request, 405, f"method {request.method.decode('latin-1')} is not allowed here",
                          {"Allow": allowed} if allowed else None)
    if isinstance(error, NotFound):
        return error_body(request, 404, "no such resource")
    if isinstance(error, HTTPException) and error.code is not None and error.code < 500:
        return error_body(request, error.code, error.description or error.name)
    log.failure("internal error answering {method} {path}", failure,
                method=request.method.decode("latin-1"), path=request.path.decode("latin-1", "replace"))
    return error_body(request, 500, "internal error")


def install(app: Klein) -> None:
    """Make every error of a Klein tree (routing and handlers) a JSON answer.

    For a Klein declared on a class, call it in the class body after the
    app: ``app = Klein(); install(app)``.
    """

    @app.handle_errors(Exception)
    def _json_error(*args: Any) -> bytes:
        # (request, failure), or (instance, request, failure) on a class's Klein.
        request, failure = args[-2], args[-1]
        return answer_failure(request, failure)


# --- reading request input ---------------------------------------------------------------


def _type_name(kind: type) -> str:
    return {str: "a string", bool: "true or false", int: "an integer", float: "a number",
            list: "a list", dict: "an object"}.get(kind, kind.__name__)


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return {str: "a string", int: "an integer", float: "a number", list: "a list",
            dict: "an object"}.get(type(value), type(value).__name__)


@attrs.frozen
class Field:
    """One field of a JSON object body.

    ``kind`` is the JSON type (``str``, ``bool``, ``int``, ``float`` — an
    integer is a number too —, ``list``, ``dict``); ``null`` is accepted
    only when ``nullable``. ``check`` may refuse a well-typed value by
    returning the reason (400) — or raise HttpError for another status.
    """

    kind: type
    required: bool = False
    nullable: bool = False
    check: Callable[[Any], str | None] | None = None

    def accepts(self, value: Any) -> bool:
        if value is None:
            return self.nullable
        if isinstance(value, bool):
            return self.kind is bool
        if self.kind is float:
            return isinstance(value, (int, float))
        return isinstance(value, self.kind)


Schema = Mapping[str, Field]


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise HttpError(400, f"the key {key!r} is given twice")
        result[key] = value
    return result


def _no_constant(name: str) -> Any:
    raise HttpError(400, f"{name} is not JSON")


def read_body(request: IRequest) -> bytes:
    """The whole request body (the HTTP layer has read and bounded it)."""
    content = request.content
    if content is None:
        return b""
    content.seek(0)
    data: bytes = content.read()
    return data


def read_json_value(request: IRequest) -> Any:
    """The request body parsed as JSON, any JSON value; HttpError 415/400 otherwise."""
    content_type = (request.getHeader(b"content-type") or b"").split(b";", 1)[0].strip().lower()
    if content_type != JSON_TYPE:
        raise HttpError(415, "the body must be JSON with Content-Type: application/json")
    body = read_body(request)
    if not body.strip():
        raise HttpError(400, "the body is empty; a JSON object is expected")
    try:
        return json.loads(body.decode("utf-8"), object_pairs_hook=_no_duplicates,
                          parse_constant=_no_constant)
    except UnicodeDecodeError:
        raise HttpError(400, "the body is not UTF-8") from None
    except json.JSONDecodeError as error:
        raise HttpError(400, f"the body is not valid JSON: {error.msg} at line {error.lineno}"
                             f" column {error.colno}") from None
    except RecursionError:
        raise HttpError(400, "the body nests too deeply") from None


def check_object(value: Any, schema: Schema, where: str = "the body") -> dict[str, Any]:
    """``value`` checked against ``schema``: the fields that were given."""
    if not isinstance(value, dict):
        raise HttpError(400, f"{where} must be a JSON object, got {_json_type(value)}")
    unknown = sorted(set(value) - set(schema))
    if unknown:
        raise HttpError(400, f"unknown field{'s' if len(unknown) > 1 else ''}: {', '.join(unknown)}"
                             f" (known: {', '.join(schema)})")
    for name, field in schema.items():
        if name not in value:
            if field.required:
                raise HttpError(400, f"the field {name!r} is required")
            continue
        item = value[name]
        if not field.accepts(item):
            raise HttpError(400, f"the field {name!r} must be {_type_name(field.kind)}"
                                 f"{' or null' if field.nullable else ''}, got {_json_type(item)}")
        if field.check is not None and item is not None:
            reason = field.check(item)
            if reason is not None:
                raise HttpError(400, f"the field {name!r} {reason}")
    return dict(value)


def read_json(request: IRequest, schema: Schema) -> dict[str, Any]:
    """The request's JSON object body, checked against ``schema``."""
    return check_object(read_json_value(request), schema)


def query_text(request: IRequest, name: str) -> str | None:
    """The query parameter ``name`` (None when absent); given twice or not UTF-8: 400."""
    values = (request.args or {}).get(name.encode("ascii"), [])
    if not values:
        return None
    if len(values) > 1:
        raise HttpError(400, f"the query parameter {name!r} is given more than once")
    try:
        return values[0].decode("utf-8")  # type: ignore[no-any-return]
    except UnicodeDecodeError:
        raise HttpError(400, f"the query parameter {name!r} is not UTF-8") from None


def query_int(request: IRequest, name: str, default: int, low: int, high: int) -> int:
    """An integer query parameter in ``low..high``; ``default`` when absent."""
    raw = query_text(request, name)
    if raw is None:
        return default
    if not raw.isascii() or not raw.isdigit():
        raise HttpError(400, f"the query parameter {name!r} must be a whole number, got {raw!r}")
    value = int(raw)
    if not low <= value <= high:
        raise HttpError(400, f"the query parameter {name!r} must be {low}-{high}, got {value}")
    return value


def check_query(request: IRequest, known: tuple[str, ...]) -> None:
    """400 for a query parameter the route does not know (a typo is never ignored)."""
    for raw in (request.args or {}):
        name = raw.decode("utf-8", "replace")
        if name not in known:
            hint = f" (known: {', '.join(known)})" if known else ""
            raise HttpError(400, f"unknown query parameter {name!r}{hint}")


__all__ = [
    "Field",
    "HttpError",
    "Schema",
    "answer_failure",
    "check_object",
    "check_query",
    "error_body",
    "install",
    "json_bytes",
    "query_int",
    "query_text",
    "read_body",
    "read_json",
    "read_json_value",
    "write_json",
]
