"""The SQLite store: one file, one connection, every call a Deferred.

SQLite calls block, so they run in the thread of a twisted.enterprise.adbapi
pool of exactly one connection: writes are serialized without locks of our
own, and the reactor thread never waits on the disk. The file is in WAL mode
(readers do not block the writer, and a crash loses no committed row) with
foreign keys on. sqlite3 errors come back as :class:`StoreError` naming the
operation and the file; the interaction functions (``_*`` below) run in the
pool thread and touch nothing but their connection and arguments.

Writes on the REGISTER path (bindings, registered phones) are group-committed:
writes made within a few milliseconds (:data:`GROUP_WINDOW`) go together, and
while one transaction of them is in the thread the next ones queue; when it
is back everything queued goes in one transaction, each write in a savepoint
of its own. A hand-off to the thread and a commit cost far more than a row, so under
load this turns one of each per REGISTER into one per batch. A write's
Deferred fires only after the commit of the transaction that holds it.

Other parts of pbxd keep a copy of the extensions in memory (the directory
that answers digest lookups): :attr:`Store.extension_listeners` are told of
every committed change to the extensions table.
"""

from __future__ import annotations

import datetime
import json
import sqlite3
import zlib
from typing import Any, Callable, Iterable, Mapping, Sequence, TypeVar

import attrs
from twisted.enterprise import adbapi
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from pbxd.sip.digest import stored_ha1s
from pbxd.store.errors import DuplicateError, NotFoundError, StoreError
from pbxd.store.models import (
    Binding,
    Cdr,
    Extension,
    ExtensionSpec,
    RegisteredPhone,
    SipFlow,
    SpoolEntry,
    normalize_mac,
)
from pbxd.store.schema import MIGRATIONS, migrate

log = Logger()

T = TypeVar("T")

# update_extension's "leave this field as it is".
_KEEP: Any = object()

_SYNCHRONOUS = ("OFF", "NORMAL", "FULL", "EXTRA")

# listener(number, extension): told after a committed change; None when deleted.
ExtensionListener = Callable[[str, "Extension | None"], None]

# How long a write waits for company when the writer is idle (while a group
# is in the thread the next one gathers anyway, for as long as that one
# takes). Each REGISTER's 200 waits up to this much longer; in exchange the
# REGISTERs of those milliseconds share one hand-off and one commit. Measured
# (pbxd CPU ms per registration, bench/run.py, 2 runs each, 0 / 2 / 5 ms):
# TCP 1000/s 0.81 / 0.76 / 0.73; UDP 600/s 0.98 / 0.97 / 0.94; UDP 300/s
# 1.30 / 1.30 / 1.19.
GROUP_WINDOW = 0.005
# zlib level for stored SIP ladders: on a 12-message call ladder level 1 takes
# half the default's time (30 against 59 µs) and stores it about 5% larger.
LADDER_COMPRESSION = 1

# sqlite3 errors that concern one write of a group (a constraint, a bad value):
# that write is rolled back to its savepoint and the others go on. Any other
# (locked, I/O, disk full, corrupt) fails the whole transaction.
_WRITE_OWN_ERRORS = (sqlite3.IntegrityError, sqlite3.DataError, sqlite3.ProgrammingError,
                     sqlite3.InterfaceError)


@attrs.define
class _QueuedWrite:
    """A write waiting for the next group transaction, and who waits for it."""

    operation: str
    interaction: Callable[[Any], Any]
    done: defer.Deferred


@attrs.frozen
class _WriteOutcome:
    """What one write of a group came to, handed back from the pool thread."""

    result: Any = None
    error: BaseException | None = None


def _write_group(cursor: Any, interactions: list[Callable[[Any], Any]]) -> list[_WriteOutcome]:
    """Run a group of writes in one transaction (pool thread); adbapi commits it
    on return and rolls it back if this raises."""
    # An explicit BEGIN: a SAVEPOINT outside a transaction would open one of
    # its own, and its RELEASE would commit every write on its own.
    if not cursor.connection.in_transaction:
        cursor.execute("BEGIN IMMEDIATE")
    outcomes = []
    for interaction in interactions:
        cursor.execute("SAVEPOINT write")
        try:
            result = interaction(cursor)
        except _WRITE_OWN_ERRORS + (StoreError, TypeError, ValueError) as error:
            cursor.execute("ROLLBACK TO write")
            cursor.execute("RELEASE write")
            outcomes.append(_WriteOutcome(error=error))
            continue
        cursor.execute("RELEASE write")
        outcomes.append(_WriteOutcome(result=result))
    return outcomes


def _extension_from_row(row: sqlite3.Row) -> Extension:
    return Extension(
        number=row["number"],
        name=row["name"],
        email=row["email"],
        enabled=bool(row["enabled"]),
        allow_external=bool(row["allow_external"]),
        voicemail_pin=row["voicemail_pin"],
        max_calls=row["max_calls"],
        dial_patterns=tuple(json.loads(row["dial_patterns"])),
        ha1_md5=row["ha1_md5"],
        ha1_sha256=row["ha1_sha256"],
        realm=row["realm"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


_BINDING_COLUMNS = (
    "aor", "binding_key", "contact_uri", "instance_id", "reg_id", "path", "call_id", "cseq",
    "expires_at", "q", "source_transport", "source_host", "source_port", "local_host",
    "local_port", "user_agent", "received_at",
)

# Insert a binding, or replace the one with the same AOR and key.
_UPSERT_BINDING = (
    f"INSERT INTO bindings ({', '.join(_BINDING_COLUMNS)})"
    f" VALUES ({', '.join('?' for _ in _BINDING_COLUMNS)})"
    " ON CONFLICT (aor, binding_key) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in _BINDING_COLUMNS[2:])
)


def _binding_values(binding: Binding) -> tuple:
    return (
        binding.aor, binding.key, binding.contact_uri, binding.instance_id, binding.reg_id,
        json.dumps(list(binding.path)), binding.call_id, binding.cseq, float(binding.expires_at),
        None if binding.q is None else float(binding.q), binding.source_transport,
        binding.source_host, binding.source_port, binding.local_host, binding.local_port,
        binding.user_agent, float(binding.received_at),
    )


def _binding_from_row(row: sqlite3.Row) -> Binding:
    return Binding(
        aor=row["aor"],
        contact_uri=row["contact_uri"],
        expires_at=row["expires_at"],
        call_id=row["call_id"],
        cseq=row["cseq"],
        source_transport=row["source_transport"],
        source_host=row["source_host"],
        source_port=row["source_port"],
        received_at=row["received_at"],
        local_host=row["local_host"],
        local_port=row["local_port"],
        instance_id=row["instance_id"],
        reg_id=row["reg_id"],
        path=tuple(json.loads(row["path"])),
        q=row["q"],
        user_agent=row["user_agent"],
    )


def _phone_from_row(row: sqlite3.Row) -> RegisteredPhone:
    return RegisteredPhone(
        id=row["id"],
        extension=row["extension"],
        ip=row["ip"],
        mac=row["mac"],
        user_agent=row["user_agent"],
        contact_uri=row["contact_uri"],
        vendor=row["vendor"],
        model=row["model"],
        first_registered=row["first_registered"],
        last_registered=row["last_registered"],
    )


_CDR_COLUMNS = (
    "call_id", "from_number", "to_number", "direction", "start_time", "answer_time", "end_time",
    "disposition", "duration", "billsec", "hangup_cause", "hangup_side", "sip_status", "trunk",
    "recording_path", "recording_size", "quality",
)


def _cdr_values(cdr: Cdr) -> tuple:
    values = []
    for column in _CDR_COLUMNS:
        value = getattr(cdr, column)
        if column == "quality":
            value = None if value is None else json.dumps(value, allow_nan=False)
        elif column in ("start_time", "answer_time", "end_time", "duration", "billsec"):
            value = None if value is None else float(value)
        values.append(value)
    return tuple(values)


def _cdr_from_row(row: sqlite3.Row) -> Cdr:
    fields = {column: row[column] for column in _CDR_COLUMNS}
    if fields["quality"] is not None:
        fields["quality"] = json.loads(fields["quality"])
    return Cdr(id=row["id"], **fields)


def _spool_from_row(row: sqlite3.Row) -> SpoolEntry:
    return SpoolEntry(
        id=row["id"],
        kind=row["kind"],
        url=row["url"],
        payload=bytes(row["payload"]),
        attempts=row["attempts"],
        next_attempt_at=row["next_attempt_at"],
        created_at=row["created_at"],
        last_error=row["last_error"],
    )


def _phone_key(mac: str | None, contact_uri: str) -> str:
    # A phone is the same device when it shows the same MAC; without one the
    # Contact URI is the best identity it gives.
    return f"mac:{mac}" if mac else f"contact:{contact_uri}"


def _day_bounds(date: datetime.date | str, tz: datetime.tzinfo) -> tuple[float, float]:
    if isinstance(date, str):
        try:
            date = datetime.date.fromisoformat(date)
        except ValueError:
            raise ValueError(f"date {date!r} is not YYYY-MM-DD") from None
    if isinstance(date, datetime.datetime) or not isinstance(date, datetime.date):
        raise TypeError("date must be a datetime.date or a 'YYYY-MM-DD' string")
    start = datetime.datetime.combine(date, datetime.time(), tzinfo=tz)
    return start.timestamp(), (start + datetime.timedelta(days=1)).timestamp()


def _count(value: object, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, not {value!r}")
    return value


class Store:
    """The pbxd database. Build it with :meth:`open`; end it with :meth:`close`."""

    def __init__(self, path: str, pool: adbapi.ConnectionPool, reactor: IReactorTime) -> None:
        self.path = path
        self._pool = pool
        self._reactor = reactor
        self._pending: set[defer.Deferred] = set()
        self._closed = False
        self.errors = 0  # sqlite3 errors since start (for /metrics)
        self.extension_listeners: list[ExtensionListener] = []
        # Group commit: writes waiting for a transaction, and transactions of
        # them in the pool thread now.
        self._queued: list[_QueuedWrite] = []
        self._groups_in_thread = 0
        self._window: Any = None  # the IDelayedCall that ends the gathering window
        self.group_commits = 0  # transactions of grouped writes committed
        self.grouped_writes = 0  # writes they held

    # -- life cycle --------------------------------------------------------

    @classmethod
    def open(
        cls,
        path: str,
        reactor: Any = None,
        *,
        busy_timeout: float = 5.0,
        synchronous: str = "NORMAL",
        migrations: Sequence[str] = MIGRATIONS,
    ) -> defer.Deferred[Store]:
        """Open (creating if need be) and migrate the database at ``path``.

        ``busy_timeout`` is how long a write waits for another process's lock
        before failing. ``synchronous=NORMAL`` is safe in WAL mode against a
        crash of pbxd (only a power cut may lose the last commits); FULL also
        survives that, at one fsync per commit. ``migrations`` is for tests
        that need a file at an older version.
        """
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        if synchronous.upper() not in _SYNCHRONOUS:
            raise ValueError(f"synchronous must be one of {_SYNCHRONOUS}")
        pragmas = (
            f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}",
            "PRAGMA foreign_keys = ON",
            f"PRAGMA synchronous = {synchronous.upper()}",
        )

        def on_connect(conn: sqlite3.Connection) -> None:
            conn.row_factory = sqlite3.Row
            for pragma in pragmas:
                conn.execute(pragma)
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode.lower() != "wal":
                log.warn("store {path}: journal mode is {mode}, not WAL", path=path, mode=mode)

        pool = adbapi.ConnectionPool(
            "sqlite3",
            path,
            check_same_thread=False,
            # Transactions are begun by sqlite3 implicitly before writes and
            # committed by adbapi when an interaction returns.
            cp_min=1,
            cp_max=1,
            cp_openfun=on_connect,
            cp_reactor=reactor,
        )
        store = cls(path, pool, reactor)
        now = reactor.seconds()

        def opened(applied: list[int]) -> Store:
            if applied:
                log.info("store {path}: applied schema migrations {applied}", path=path,
                         applied=applied)
            return store

        def failed(failure: Failure) -> Failure:
            pool.close()
            store._closed = True
            if failure.check(StoreError):
                raise type(failure.value)(f"{path}: {failure.value}")
            if failure.check(sqlite3.Error):
                raise StoreError(f"cannot open {path}: {failure.value}")
            return failure

        d = pool.runWithConnection(migrate, migrations, now)
        return d.addCallbacks(opened, failed)

    def close(self) -> defer.Deferred[None]:
        """Wait for the operations under way, then close the file.

        Calls made after this fail with StoreError; nothing already accepted
        is lost.
        """
        if self._closed:
            return defer.succeed(None)
        self._closed = True
        pending = list(self._pending)

        def shut(_: object) -> None:
            self._pool.close()
            log.info("store {path}: closed", path=self.path)

        return defer.DeferredList(pending, consumeErrors=True).addCallback(shut)

    def _run(self, operation: str, interaction: Callable[..., T], *args: Any) -> defer.Deferred[T]:
        """Run ``interaction(cursor, *args)`` in one transaction in the pool thread."""
        if self._closed:
            return defer.fail(StoreError(f"{operation}: the store at {self.path} is closed"))
        if self._queued:
            # Writes queued for a group go first: every call runs in the order made.
            self._write_queued()

        def translate(failure: Failure) -> Failure:
            return Failure(self._store_error(operation, failure.value))

        d = self._pool.runInteraction(interaction, *args).addErrback(translate)
        self._pending.add(d)

        def done(result: T) -> T:
            self._pending.discard(d)
            return result

        return d.addBoth(done)

    def _store_error(self, operation: str, error: BaseException) -> BaseException:
        """A sqlite3 error as the StoreError callers see (counted and logged); others as they are."""
        if not isinstance(error, sqlite3.Error):
            return error
        self.errors += 1
        log.error("store {path}: {operation} failed: {error}", path=self.path,
                  operation=operation, error=error)
        return StoreError(f"{operation} on {self.path}: {error}")

    def _grouped(self, operation: str, interaction: Callable[[Any], T]) -> defer.Deferred[T]:
        """Run ``interaction(cursor)`` in the next group transaction (see the module
        docstring); fires once that transaction has committed. Its own errors fail
        it alone; a failed commit fails every write of the group."""
        if self._closed:
            return defer.fail(StoreError(f"{operation}: the store at {self.path} is closed"))
        done: defer.Deferred[T] = defer.Deferred()
        self._queued.append(_QueuedWrite(operation, interaction, done))
        self._pending.add(done)
        done.addBoth(self._forget, done)
        if not self._groups_in_thread and self._window is None:
            self._window = self._reactor.callLater(GROUP_WINDOW, self._window_ended)
        return done

    def _window_ended(self) -> None:
        self._window = None
        if self._queued and not self._groups_in_thread:
            self._write_queued()

    def _forget(self, result: T, d: defer.Deferred) -> T:
        self._pending.discard(d)
        return result

    def _write_queued(self) -> None:
        if self._window is not None:
            self._window.cancel()
            self._window = None
        group, self._queued = self._queued, []
        self._groups_in_thread += 1
        d = self._pool.runInteraction(_write_group, [write.interaction for write in group])
        d.addCallbacks(self._group_committed, self._group_failed,
                       callbackArgs=(group,), errbackArgs=(group,))

    def _group_committed(self, outcomes: list[_WriteOutcome], group: list[_QueuedWrite]) -> None:
        self._groups_in_thread -= 1
        self.group_commits += 1
        self.grouped_writes += len(group)
        for write, outcome in zip(group, outcomes):
            if outcome.error is None:
                write.done.callback(outcome.result)
            else:
                write.done.errback(Failure(self._store_error(write.operation, outcome.error)))
        self._next_group()

    def _group_failed(self, failure: Failure, group: list[_QueuedWrite]) -> None:
        self._groups_in_thread -= 1
        error = failure.value
        if isinstance(error, sqlite3.Error):
            self.errors += len(group)  # operations that failed, as for calls made alone
            log.error("store {path}: a group of {count} writes failed: {error}", path=self.path,
                      count=len(group), error=error)
        for write in group:
            # Nothing of the group was committed: each write fails as it would alone.
            if isinstance(error, sqlite3.Error):
                write.done.errback(StoreError(f"{write.operation} on {self.path}: {error}"))
            else:
                write.done.errback(failure)
        self._next_group()

    def _next_group(self) -> None:
        if self._queued and not self._groups_in_thread:
            self._write_queued()

    def _rows(self, operation: str, from_row: Callable[[sqlite3.Row], T], sql: str,
              args: tuple = ()) -> defer.Deferred[list[T]]:
        """Run one statement (a SELECT, or a DELETE ... RETURNING) and map its rows."""

        def fetch(cursor: Any) -> list[T]:
            cursor.execute(sql, args)
            return [from_row(row) for row in cursor.fetchall()]

        return self._run(operation, fetch)

    # -- extensions --------------------------------------------------------

    def _extension_changed(self, extension: Extension) -> Extension:
        self._tell_listeners(extension.number, extension)
        return extension

    def _tell_listeners(self, number: str, extension: Extension | None) -> None:
        for listener in self.extension_listeners:
            try:
                listener(number, extension)
            except Exception:
                log.failure("store {path}: an extension listener failed", path=self.path)

    def _new_extension(self, spec: ExtensionSpec, realm: str, now: float) -> Extension:
        hashes = stored_ha1s(spec.number, realm, spec.password)
        return Extension(
            number=spec.number,
            name=spec.name,
            email=spec.email,
            enabled=spec.enabled,
            allow_external=spec.allow_external,
            voicemail_pin=spec.voicemail_pin,
            max_calls=spec.max_calls,
            dial_patterns=spec.dial_patterns,
            ha1_md5=hashes["MD5"],
            ha1_sha256=hashes["SHA-256"],
            realm=realm,
            created_at=now,
            updated_at=now,
        )

    @staticmethod
    def _insert_extension(cursor: Any, extension: Extension) -> None:
        cursor.execute(
            "INSERT INTO extensions (number, name, email, enabled, allow_external,"
            " voicemail_pin, max_calls, dial_patterns, ha1_md5, ha1_sha256, realm, created_at,"
            " updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                extension.number, extension.name, extension.email, int(extension.enabled),
                int(extension.allow_external), extension.voicemail_pin, extension.max_calls,
                json.dumps(list(extension.dial_patterns)), extension.ha1_md5,
                extension.ha1_sha256, extension.realm, float(extension.created_at),
                float(extension.updated_at),
            ),
        )

    def add_extension(self, spec: ExtensionSpec, realm: str) -> defer.Deferred[Extension]:
        """Store a new extension, its password as HA1s for ``realm``.

        Fails with DuplicateError when the number exists.
        """
        try:
            extension = self._new_extension(spec, realm, self._reactor.seconds())
        except (TypeError, ValueError) as e:
            return defer.fail(e)

        def add(cursor: Any) -> Extension:
            try:
                self._insert_extension(cursor, extension)
            except sqlite3.IntegrityError as e:
                if "UNIQUE" in str(e):
                    raise DuplicateError(f"extension {extension.number} exists") from None
                raise
            return extension

        return self._run("add_extension", add).addCallback(self._extension_changed)

    def update_extension(
        self,
        number: str,
        *,
        password: str | None = None,
        realm: str | None = None,
        name: str = _KEEP,
        email: str = _KEEP,
        enabled: bool = _KEEP,
        allow_external: bool = _KEEP,
        voicemail_pin: str | None = _KEEP,
        max_calls: int = _KEEP,
        dial_patterns: Sequence[str] = _KEEP,
    ) -> defer.Deferred[Extension]:
        """Change the fields given; a new password (and/or realm) replaces the HA1s.

        A new realm without a password is refused: the HA1s cannot be
        recomputed without it. Fails with NotFoundError for an unknown number.
        """
        if realm is not None and password is None:
            return defer.fail(ValueError("changing the realm needs the password"))
        if password is not None and (not isinstance(password, str) or not password):
            return defer.fail(ValueError("password must be a non-empty str"))
        changes = {
            key: value
            for key, value in dict(name=name, email=email, enabled=enabled,
                                   allow_external=allow_external,
                                   voicemail_pin=voicemail_pin, max_calls=max_calls,
                                   dial_patterns=dial_patterns).items()
            if value is not _KEEP
        }
        now = self._reactor.seconds()

        def update(cursor: Any) -> Extension:
            cursor.execute("SELECT * FROM extensions WHERE number = ?", (number,))
            row = cursor.fetchone()
            if row is None:
                raise NotFoundError(f"extension {number} does not exist")
            current = _extension_from_row(row)
            fields = dict(changes, updated_at=now)
            if password is not None:
                new_realm = realm if realm is not None else current.realm
                hashes = stored_ha1s(current.number, new_realm, password)
                fields.update(ha1_md5=hashes["MD5"], ha1_sha256=hashes["SHA-256"],
                              realm=new_realm)
            # evolve runs the validators, so a bad value fails here, before the write.
            updated = attrs.evolve(current, **fields)
            cursor.execute(
                "UPDATE extensions SET name = ?, email = ?, enabled = ?, allow_external = ?,"
                " voicemail_pin = ?, max_calls = ?, dial_patterns = ?, ha1_md5 = ?,"
                " ha1_sha256 = ?, realm = ?, updated_at = ? WHERE number = ?",
                (
                    updated.name, updated.email, int(updated.enabled),
                    int(updated.allow_external), updated.voicemail_pin, updated.max_calls,
                    json.dumps(list(updated.dial_patterns)), updated.ha1_md5,
                    updated.ha1_sha256, updated.realm, float(updated.updated_at), number,
                ),
            )
            return updated

        return self._run("update_extension", update).addCallback(self._extension_changed)

    def delete_extension(self, number: str) -> defer.Deferred[None]:
        """Remove an extension; NotFoundError if there is none."""

        def delete(cursor: Any) -> None:
            cursor.execute("DELETE FROM extensions WHERE number = ?", (number,))
            if cursor.rowcount == 0:
                raise NotFoundError(f"extension {number} does not exist")

        def deleted(_: None) -> None:
            self._tell_listeners(number, None)

        return self._run("delete_extension", delete).addCallback(deleted)

    def get_extension(self, number: str) -> defer.Deferred[Extension]:
        """The extension with that number; NotFoundError if there is none."""

        def get(cursor: Any) -> Extension:
            cursor.execute("SELECT * FROM extensions WHERE number = ?", (number,))
            row = cursor.fetchone()
            if row is None:
                raise NotFoundError(f"extension {number} does not exist")
            return _extension_from_row(row)

        return self._run("get_extension", get)

    def list_extensions(self) -> defer.Deferred[list[Extension]]:
        """All extensions, by number."""
        return self._rows("list_extensions", _extension_from_row,
                          "SELECT * FROM extensions ORDER BY number")

    def seed_extensions(
        self, specs: Iterable[ExtensionSpec | Mapping[str, Any]], realm: str
    ) -> defer.Deferred[list[str]]:
        """Insert the extensions that are not stored yet (first-start seeding
        from config); those present are left alone, whatever their password.

        Fires with the numbers inserted. Mappings are taken as ExtensionSpec
        keyword arguments.
        """
        try:
            now = self._reactor.seconds()
            extensions = [
                self._new_extension(
                    spec if isinstance(spec, ExtensionSpec) else ExtensionSpec(**spec), realm, now
                )
                for spec in specs
            ]
        except (TypeError, ValueError) as e:
            return defer.fail(e)

        def seed(cursor: Any) -> list[str]:
            inserted = []
            for extension in extensions:
                cursor.execute("SELECT 1 FROM extensions WHERE number = ?", (extension.number,))
                if cursor.fetchone() is None:
                    self._insert_extension(cursor, extension)
                    inserted.append(extension.number)
            return inserted

        def seeded(inserted: list[str]) -> list[str]:
            for extension in extensions:
                if extension.number in inserted:
                    self._tell_listeners(extension.number, extension)
            return inserted

        return self._run("seed_extensions", seed).addCallback(seeded)

    # -- bindings (location service) -------------------------------------------

    def upsert_binding(self, binding: Binding) -> defer.Deferred[Binding]:
        """Insert the binding, or replace the one with the same AOR and key
        (:func:`pbxd.store.models.binding_key`)."""
        if not isinstance(binding, Binding):
            return defer.fail(TypeError("upsert_binding takes a Binding"))

        def upsert(cursor: Any) -> Binding:
            cursor.execute(_UPSERT_BINDING, _binding_values(binding))
            return binding

        return self._run("upsert_binding", upsert)

    def apply_bindings(
        self, aor: str, upserts: Sequence[Binding], remove_keys: Sequence[str]
    ) -> defer.Deferred[list[Binding]]:
        """One REGISTER's changes to an AOR in one transaction, all or nothing:
        remove the bindings with ``remove_keys``, then insert or replace
        ``upserts`` (which must be bindings of ``aor``). Fires with the
        bindings removed."""
        if not all(isinstance(b, Binding) and b.aor == aor for b in upserts):
            return defer.fail(ValueError(f"apply_bindings takes Bindings of {aor}"))
        keys = list(remove_keys)
        values = [_binding_values(binding) for binding in upserts]

        def apply(cursor: Any) -> list[Binding]:
            removed = []
            for key in keys:
                cursor.execute(
                    "DELETE FROM bindings WHERE aor = ? AND binding_key = ? RETURNING *", (aor, key)
                )
                removed += [_binding_from_row(row) for row in cursor.fetchall()]
            for row_values in values:
                cursor.execute(_UPSERT_BINDING, row_values)
            return removed

        return self._grouped("apply_bindings", apply)

    def remove_binding(self, aor: str, key: str) -> defer.Deferred[Binding | None]:
        """Remove one binding; fires with it, or None if there was none."""

        def remove(cursor: Any) -> Binding | None:
            cursor.execute("DELETE FROM bindings WHERE aor = ? AND binding_key = ? RETURNING *",
                           (aor, key))
            row = cursor.fetchone()
            return None if row is None else _binding_from_row(row)

        return self._run("remove_binding", remove)

    def remove_all_bindings(self, aor: str) -> defer.Deferred[list[Binding]]:
        """Remove every binding of an AOR (``Contact: *``); fires with them."""
        return self._rows("remove_all_bindings", _binding_from_row,
                          "DELETE FROM bindings WHERE aor = ? RETURNING *", (aor,))

    def bindings_for(self, aor: str) -> defer.Deferred[list[Binding]]:
        """The bindings of an AOR, highest q first (absent q counts as 1.0)."""
        return self._rows("bindings_for", _binding_from_row,
                          "SELECT * FROM bindings WHERE aor = ? ORDER BY coalesce(q, 1.0) DESC, id",
                          (aor,))

    def all_bindings(self) -> defer.Deferred[list[Binding]]:
        """Every stored binding (to load the location service at start)."""
        return self._rows("all_bindings", _binding_from_row,
                          "SELECT * FROM bindings ORDER BY aor, id")

    def purge_expired(self, now: float) -> defer.Deferred[list[Binding]]:
        """Remove the bindings that expired at or before ``now``; fires with them."""
        return self._rows("purge_expired", _binding_from_row,
                          "DELETE FROM bindings WHERE expires_at <= ? RETURNING *", (now,))

    # -- registered phones ------------------------------------------------------

    def upsert_phone(
        self,
        *,
        extension: str,
        ip: str,
        contact_uri: str = "",
        user_agent: str = "",
        mac: str | None = None,
        vendor: str | None = None,
        model: str | None = None,
        seen_at: float | None = None,
    ) -> defer.Deferred[RegisteredPhone]:
        """Record that a phone registered for ``extension``.

        The phone is the row with the same extension and MAC (or, without a
        MAC, the same Contact URI): its first_registered is kept, the rest
        updated. The MAC is normalized to 12 lower-case hex digits.
        """
        try:
            mac = normalize_mac(mac)
            now = self._reactor.seconds() if seen_at is None else seen_at
            # Validate through the model before writing (id 0 is a placeholder).
            RegisteredPhone(
                id=0, extension=extension, ip=ip, mac=mac, user_agent=user_agent,
                contact_uri=contact_uri, vendor=vendor, model=model, first_registered=now,
                last_registered=now,
            )
        except (TypeError, ValueError) as e:
            return defer.fail(e)
        key = _phone_key(mac, contact_uri)

        def upsert(cursor: Any) -> RegisteredPhone:
            cursor.execute(
                "INSERT INTO registered_phones (extension, phone_key, ip, mac, user_agent,"
                " contact_uri, vendor, model, first_registered, last_registered)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (extension, phone_key) DO UPDATE SET ip = excluded.ip,"
                " user_agent = excluded.user_agent, contact_uri = excluded.contact_uri,"
                " vendor = coalesce(excluded.vendor, vendor),"
                " model = coalesce(excluded.model, model),"
                " last_registered = excluded.last_registered RETURNING *",
                (extension, key, ip, mac, user_agent, contact_uri, vendor, model, float(now),
                 float(now)),
            )
            return _phone_from_row(cursor.fetchone())

        return self._grouped("upsert_phone", upsert)

    def _select_phones(self, operation: str, where: str,
                       args: tuple) -> defer.Deferred[list[RegisteredPhone]]:
        return self._rows(operation, _phone_from_row,
                          f"SELECT * FROM registered_phones {where} ORDER BY id", args)

    def all_phones(self) -> defer.Deferred[list[RegisteredPhone]]:
        return self._select_phones("all_phones", "", ())

    def phones_for_extension(self, extension: str) -> defer.Deferred[list[RegisteredPhone]]:
        return self._select_phones("phones_for_extension", "WHERE extension = ?", (extension,))

    def phones_by_mac(self, mac: str) -> defer.Deferred[list[RegisteredPhone]]:
        """Phones with that MAC (one device may register several extensions)."""
        try:
            normalized = normalize_mac(mac)
        except (TypeError, ValueError) as e:
            return defer.fail(e)
        return self._select_phones("phones_by_mac", "WHERE mac = ?", (normalized,))

    def phones_by_ip(self, ip: str) -> defer.Deferred[list[RegisteredPhone]]:
        return self._select_phones("phones_by_ip", "WHERE ip = ?", (ip,))

    # -- call detail records ----------------------------------------------------

    def add_cdr(self, cdr: Cdr) -> defer.Deferred[Cdr]:
        """Write a CDR; fires with it, carrying its new id."""
        if not isinstance(cdr, Cdr):
            return defer.fail(TypeError("add_cdr takes a Cdr"))
        if cdr.id is not None:
            return defer.fail(ValueError("a new CDR has no id yet"))
        columns = ", ".join(_CDR_COLUMNS)
        placeholders = ", ".join("?" for _ in _CDR_COLUMNS)

        def add(cursor: Any) -> Cdr:
            cursor.execute(f"INSERT INTO cdrs ({columns}) VALUES ({placeholders})",
                           _cdr_values(cdr))
            return attrs.evolve(cdr, id=cursor.lastrowid)

        return self._run("add_cdr", add)

    def list_cdrs(
        self,
        date: datetime.date | str | None = None,
        limit: int = 100,
        offset: int = 0,
        tz: datetime.tzinfo = datetime.timezone.utc,
    ) -> defer.Deferred[list[Cdr]]:
        """CDRs newest first; with ``date``, only calls that started that day in ``tz``."""
        try:
            limit = _count(limit, "limit", 1)
            offset = _count(offset, "offset", 0)
            bounds = None if date is None else _day_bounds(date, tz)
        except (TypeError, ValueError) as e:
            return defer.fail(e)
        order = " ORDER BY start_time DESC, id DESC LIMIT ? OFFSET ?"
        if bounds is None:
            return self._rows("list_cdrs", _cdr_from_row, "SELECT * FROM cdrs" + order,
                              (limit, offset))
        return self._rows("list_cdrs", _cdr_from_row,
                          "SELECT * FROM cdrs WHERE start_time >= ? AND start_time < ?" + order,
                          (*bounds, limit, offset))

    def cdr_totals(
        self, date: datetime.date | str, tz: datetime.tzinfo = datetime.timezone.utc
    ) -> defer.Deferred[dict[str, tuple[int, float, float]]]:
        """For the calls that started on ``date`` in ``tz``: per disposition,
        (calls, total duration, total billsec), summed by SQLite (the REST
        API's statistics)."""
        try:
            bounds = _day_bounds(date, tz)
        except (TypeError, ValueError) as e:
            return defer.fail(e)

        def totals(cursor: Any) -> dict[str, tuple[int, float, float]]:
            cursor.execute(
                "SELECT disposition, count(*), total(duration), total(billsec) FROM cdrs"
                " WHERE start_time >= ? AND start_time < ? GROUP BY disposition", bounds)
            return {row[0]: (row[1], row[2], row[3]) for row in cursor.fetchall()}

        return self._run("cdr_totals", totals)

    def search_cdrs(
        self,
        *,
        since: float | None = None,
        until: float | None = None,
        direction: str | None = None,
        disposition: str | None = None,
        number: str | None = None,
        call_id: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> defer.Deferred[tuple[list[Cdr], int]]:
        """CDRs newest first matching every filter given, and how many match in all
        (the console's call records): started in ``[since, until)``, ``number``
        the caller or the callee."""
        try:
            limit = _count(limit, "limit", 1)
            offset = _count(offset, "offset", 0)
        except (TypeError, ValueError) as e:
            return defer.fail(e)
        conditions: list[str] = []
        args: list[Any] = []
        for sql, value in (("start_time >= ?", since), ("start_time < ?", until),
                           ("direction = ?", direction), ("disposition = ?", disposition),
                           ("call_id = ?", call_id)):
            if value is not None:
                conditions.append(sql)
                args.append(value)
        if number is not None:
            conditions.append("(from_number = ? OR to_number = ?)")
            args += [number, number]
        where = f" WHERE {' AND '.join(conditions)}" if conditions else ""

        def search(cursor: Any) -> tuple[list[Cdr], int]:
            cursor.execute(f"SELECT count(*) FROM cdrs{where}", args)
            total = cursor.fetchone()[0]
            cursor.execute(f"SELECT * FROM cdrs{where} ORDER BY start_time DESC, id DESC"
                           " LIMIT ? OFFSET ?", (*args, limit, offset))
            return [_cdr_from_row(row) for row in cursor.fetchall()], total

        return self._run("search_cdrs", search)

    def get_cdr(self, cdr_id: int) -> defer.Deferred[Cdr]:
        """The CDR with that id; NotFoundError if there is none."""

        def get(cursor: Any) -> Cdr:
            cursor.execute("SELECT * FROM cdrs WHERE id = ?", (cdr_id,))
            row = cursor.fetchone()
            if row is None:
                raise NotFoundError(f"CDR {cdr_id} does not exist")
            return _cdr_from_row(row)

        return self._run("get_cdr", get)

    # -- SIP ladders of ended calls --------------------------------------------------

    def add_sip_flows(self, flows: Sequence[SipFlow]) -> defer.Deferred[None]:
        """Keep ended calls' SIP ladders (one replaces an earlier one of its Call-ID).

        Group-committed like the REGISTER path's writes: the calls that end
        together share one transaction. Fires once it has committed.
        """
        if not all(isinstance(flow, SipFlow) for flow in flows):
            return defer.fail(TypeError("add_sip_flows takes SipFlows"))
        try:
            rows = [(flow.call_id, float(flow.ended_at), flow.dropped,
                     json.dumps(flow.messages, allow_nan=False, separators=(",", ":")).encode())
                    for flow in flows]
        except (TypeError, ValueError) as e:
            return defer.fail(ValueError(f"a SIP ladder is not JSON: {e}"))

        def add(cursor: Any) -> None:
            # Compressed here, in the pool thread: zlib lets go of the GIL, the reactor goes on.
            cursor.executemany(
                "INSERT INTO sip_flows (call_id, ended_at, dropped, messages) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (call_id) DO UPDATE SET ended_at = excluded.ended_at,"
                " dropped = excluded.dropped, messages = excluded.messages",
                [(call_id, ended_at, dropped, zlib.compress(text, LADDER_COMPRESSION))
                 for call_id, ended_at, dropped, text in rows])

        return self._grouped("add_sip_flows", add)

    def get_sip_flow(self, call_id: str) -> defer.Deferred[SipFlow]:
        """The stored ladder of the call with that Call-ID; NotFoundError if there is none."""

        def get(cursor: Any) -> SipFlow:
            cursor.execute("SELECT * FROM sip_flows WHERE call_id = ?", (call_id,))
            row = cursor.fetchone()
            if row is None:
                raise NotFoundError(f"no SIP ladder of call {call_id}")
            try:
                steps = json.loads(zlib.decompress(row["messages"]))
            except (zlib.error, ValueError) as e:
                raise StoreError(f"the SIP ladder of call {call_id} is unreadable: {e}") from None
            return SipFlow(call_id=row["call_id"], ended_at=row["ended_at"], dropped=row["dropped"],
                           messages=tuple(steps))

        return self._run("get_sip_flow", get)

    def prune_sip_flows(self, ended_before: float) -> defer.Deferred[int]:
        """Forget the ladders of calls that ended before ``ended_before``; fires with how many."""

        def prune(cursor: Any) -> int:
            cursor.execute("DELETE FROM sip_flows WHERE ended_at < ?", (float(ended_before),))
            return int(cursor.rowcount)

        return self._run("prune_sip_flows", prune)

    # -- webhook spool ------------------------------------------------------------

    def spool_add(self, kind: str, url: str, payload: bytes,
                  next_attempt_at: float | None = None) -> defer.Deferred[SpoolEntry]:
        """Put a delivery in the spool; fires with its entry (and id)."""
        now = self._reactor.seconds()
        try:
            entry = SpoolEntry(id=0, kind=kind, url=url, payload=payload, attempts=0,
                               next_attempt_at=now if next_attempt_at is None else next_attempt_at,
                               created_at=now)
        except (TypeError, ValueError) as e:
            return defer.fail(e)

        def add(cursor: Any) -> SpoolEntry:
            cursor.execute(
                "INSERT INTO webhook_spool (kind, url, payload, attempts, next_attempt_at,"
                " created_at) VALUES (?, ?, ?, 0, ?, ?)",
                (entry.kind, entry.url, entry.payload, float(entry.next_attempt_at),
                 float(entry.created_at)),
            )
            return attrs.evolve(entry, id=cursor.lastrowid)

        return self._run("spool_add", add)

    def spool_due(self, now: float, limit: int = 100) -> defer.Deferred[list[SpoolEntry]]:
        """Spooled deliveries whose next attempt is due, oldest first."""
        return self._rows("spool_due", _spool_from_row,
                          "SELECT * FROM webhook_spool WHERE next_attempt_at <= ?"
                          " ORDER BY next_attempt_at, id LIMIT ?", (now, limit))

    def spool_entries(self) -> defer.Deferred[list[SpoolEntry]]:
        """Everything in the spool, oldest first."""
        return self._rows("spool_entries", _spool_from_row,
                          "SELECT * FROM webhook_spool ORDER BY id")

    def spool_delete(self, entry_id: int) -> defer.Deferred[None]:
        """Forget a delivered (or definitively refused) spool entry."""

        def delete(cursor: Any) -> None:
            cursor.execute("DELETE FROM webhook_spool WHERE id = ?", (entry_id,))

        return self._run("spool_delete", delete)

    def spool_reschedule(self, entry_id: int, attempts: int, next_attempt_at: float,
                         last_error: str) -> defer.Deferred[None]:
        """Record a failed attempt and when to try again."""

        def reschedule(cursor: Any) -> None:
            cursor.execute(
                "UPDATE webhook_spool SET attempts = ?, next_attempt_at = ?, last_error = ?"
                " WHERE id = ?", (attempts, float(next_attempt_at), last_error, entry_id))

        return self._run("spool_reschedule", reschedule)
