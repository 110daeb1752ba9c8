"""The SQLite schema as an ordered list of migrations, and the code that applies them.

Migration N (1-based) turns a version N-1 file into a version N file. A file
records each migration applied in ``schema_version``; opening it applies the
missing ones in order, each in its own transaction, and refuses a file whose
version is newer than this code knows (an older pbxd must not write to it).
Tables are STRICT so that SQLite itself refuses a value of the wrong type.
Never edit a released migration: append a new one.
"""

from __future__ import annotations

import sqlite3
from typing import Any, Sequence

from pbxd.store.errors import SchemaError

MIGRATIONS: tuple[str, ...] = (
    # 1: the registrar's tables.
    """
    CREATE TABLE extensions (
        number TEXT PRIMARY KEY NOT NULL,
        name TEXT NOT NULL DEFAULT '',
        email TEXT NOT NULL DEFAULT '',
        enabled INTEGER NOT NULL DEFAULT 1 CHECK (enabled IN (0, 1)),
        allow_external INTEGER NOT NULL DEFAULT 1 CHECK (allow_external IN (0, 1)),
        voicemail_pin TEXT,
        ha1_md5 TEXT NOT NULL CHECK (length(ha1_md5) = 32),
        ha1_sha256 TEXT NOT NULL CHECK (length(ha1_sha256) = 64),
        realm TEXT NOT NULL,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL
    ) STRICT;

    CREATE TABLE bindings (
        id INTEGER PRIMARY KEY,
        aor TEXT NOT NULL,
        binding_key TEXT NOT NULL,
        contact_uri TEXT NOT NULL,
        instance_id TEXT,
        reg_id INTEGER,
        path TEXT NOT NULL DEFAULT '[]',
        call_id TEXT NOT NULL,
        cseq INTEGER NOT NULL,
        expires_at REAL NOT NULL,
        q REAL,
        source_transport TEXT NOT NULL,
        source_host TEXT NOT NULL,
        source_port INTEGER NOT NULL CHECK (source_port BETWEEN 0 AND 65535),
        local_host TEXT NOT NULL DEFAULT '',
        local_port INTEGER NOT NULL DEFAULT 0 CHECK (local_port BETWEEN 0 AND 65535),
        user_agent TEXT NOT NULL DEFAULT '',
        received_at REAL NOT NULL,
        UNIQUE (aor, binding_key)
    ) STRICT;
    CREATE INDEX bindings_expires_at ON bindings (expires_at);

    CREATE TABLE registered_phones (
        id INTEGER PRIMARY KEY,
        extension TEXT NOT NULL,
        phone_key TEXT NOT NULL,
        ip TEXT NOT NULL,
        mac TEXT CHECK (mac IS NULL OR length(mac) = 12),
        user_agent TEXT NOT NULL DEFAULT '',
        contact_uri TEXT NOT NULL DEFAULT '',
        vendor TEXT,
        model TEXT,
        first_registered REAL NOT NULL,
        last_registered REAL NOT NULL,
        UNIQUE (extension, phone_key)
    ) STRICT;
    CREATE INDEX registered_phones_mac ON registered_phones (mac);
    CREATE INDEX registered_phones_ip ON registered_phones (ip);
    """,
    # 2: call records and the webhook spool.
    """
    CREATE TABLE cdrs (
        id INTEGER PRIMARY KEY,
        call_id TEXT NOT NULL,
        from_number TEXT NOT NULL,
        to_number TEXT NOT NULL,
        direction TEXT NOT NULL CHECK (direction IN ('inbound', 'outbound', 'internal')),
        start_time REAL NOT NULL,
        answer_time REAL,
        end_time REAL NOT NULL,
        disposition TEXT NOT NULL
            CHECK (disposition IN ('answered', 'busy', 'no_answer', 'failed', 'cancelled')),
        duration REAL NOT NULL,
        billsec REAL NOT NULL,
        hangup_cause TEXT NOT NULL DEFAULT '',
        hangup_side TEXT NOT NULL DEFAULT '',
        sip_status INTEGER,
        trunk TEXT,
        recording_path TEXT,
        recording_size INTEGER,
        quality TEXT
    ) STRICT;
    CREATE INDEX cdrs_start_time ON cdrs (start_time);
    CREATE INDEX cdrs_call_id ON cdrs (call_id);

    CREATE TABLE webhook_spool (
        id INTEGER PRIMARY KEY,
        kind TEXT NOT NULL,
        url TEXT NOT NULL,
        payload BLOB NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at REAL NOT NULL,
        created_at REAL NOT NULL,
        last_error TEXT NOT NULL DEFAULT ''
    ) STRICT;
    CREATE INDEX webhook_spool_next_attempt_at ON webhook_spool (next_attempt_at);
    """,
    # 3: the toll-fraud guards of an extension (issue 9): how many calls it may
    # place at once (0: no limit) and the numbers it may send to a carrier, a
    # JSON array of regular expressions ('[]': any number).
    """
    ALTER TABLE extensions ADD COLUMN max_calls INTEGER NOT NULL DEFAULT 0 CHECK (max_calls >= 0);
    ALTER TABLE extensions ADD COLUMN dial_patterns TEXT NOT NULL DEFAULT '[]'
        CHECK (json_valid(dial_patterns) AND json_type(dial_patterns) = 'array');
    """,
    # 4: the SIP ladder of each ended call (the console's sip-flow), keyed by the
    # call's Call-ID as its CDR has it. ``messages`` is the ladder's steps as a
    # zlib-compressed JSON array (SIP text shrinks about five-fold); ``dropped``
    # counts the messages the capture's bounds left out.
    """
    CREATE TABLE sip_flows (
        call_id TEXT PRIMARY KEY NOT NULL,
        ended_at REAL NOT NULL,
        dropped INTEGER NOT NULL DEFAULT 0 CHECK (dropped >= 0),
        messages BLOB NOT NULL
    ) STRICT;
    CREATE INDEX sip_flows_ended_at ON sip_flows (ended_at);
    """,
)


def _statements(script: str) -> list[str]:
    """Split a migration script into statements, so that they can run inside
    one explicit transaction (``executescript`` would commit first)."""
    statements, pending = [], ""
    for line in script.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            statements.append(pending.strip())
            pending = ""
    if pending.strip():
        raise SchemaError(f"migration has an unterminated statement: {pending.strip()[:60]!r}")
    return statements


def schema_version(conn: Any) -> int:
    """The highest migration applied to the file, 0 for a new file."""
    row = conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'"
    ).fetchone()
    if row is None:
        return 0
    return conn.execute("SELECT coalesce(max(version), 0) FROM schema_version").fetchone()[0]


def migrate(conn: Any, migrations: Sequence[str], now: float) -> list[int]:
    """Bring the file up to ``len(migrations)``; return the versions applied.

    Each migration runs in a BEGIN IMMEDIATE transaction that re-reads the
    version first, so two processes opening one new file do not both apply it.
    """
    known = len(migrations)
    applied: list[int] = []
    while True:
        conn.execute("BEGIN IMMEDIATE")
        current = -1
        try:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_version ("
                " version INTEGER PRIMARY KEY, applied_at REAL NOT NULL) STRICT"
            )
            current = schema_version(conn)
            if current > known:
                raise SchemaError(
                    f"the database is at schema version {current}, newer than the"
                    f" {known} this pbxd knows; use a newer pbxd or another file"
                )
            if current == known:
                conn.commit()
                return applied
            version = current + 1
            for statement in _statements(migrations[version - 1]):
                conn.execute(statement)
            conn.execute("INSERT INTO schema_version VALUES (?, ?)", (version, now))
            conn.commit()
            applied.append(version)
        except sqlite3.Error as e:
            conn.rollback()
            step = "reading the schema version" if current < 0 else f"migration to {current + 1}"
            raise SchemaError(f"{step} failed: {e}") from e
        except BaseException:
            conn.rollback()
            raise
