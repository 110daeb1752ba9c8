"""pbxd's persistent state in one SQLite file: extensions, bindings, phones, CDRs and their SIP ladders, spool."""

from pbxd.store.errors import DuplicateError, NotFoundError, SchemaError, StoreError
from pbxd.store.models import (
    Binding,
    Cdr,
    Extension,
    ExtensionSpec,
    RegisteredPhone,
    SipFlow,
    SpoolEntry,
    binding_key,
    normalize_mac,
)
from pbxd.store.schema import MIGRATIONS
from pbxd.store.store import Store

__all__ = [
    "MIGRATIONS",
    "Binding",
    "Cdr",
    "DuplicateError",
    "Extension",
    "ExtensionSpec",
    "NotFoundError",
    "RegisteredPhone",
    "SchemaError",
    "SipFlow",
    "SpoolEntry",
    "Store",
    "StoreError",
    "binding_key",
    "normalize_mac",
]
