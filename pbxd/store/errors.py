"""The exceptions the store raises; every one of them is a StoreError."""

from __future__ import annotations


class StoreError(Exception):
    """The database could not do what was asked: the reason says why.

    sqlite3 errors are wrapped in this (with the path and the operation) so
    callers handle one family and the message is readable in a log.
    """


class SchemaError(StoreError):
    """The file's schema is newer than this pbxd knows, or a migration failed."""


class DuplicateError(StoreError):
    """A row with that key exists already (an extension number, for example)."""


class NotFoundError(StoreError):
    """No row has that key."""
