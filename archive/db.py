"""Connecting to the database and keeping its schema at the code's Alembic head.

SQLite (a file in the data directory) is the default; PostgreSQL is used by giving a
``postgresql+psycopg://`` URL. Every command that opens the database calls
:func:`ensure_schema`, which migrates a fresh or older database and refuses a newer one.
"""

from __future__ import annotations

import functools
import json
import math
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.orm import Session, sessionmaker

from archive.errors import SchemaError

# Alembic keeps the running migration context in module globals: one upgrade per process at a
# time (other processes are serialised by the database lock taken in migrations/env.py).
_UPGRADE_LOCK = threading.Lock()

#: How long a SQLite writer waits for another process's write lock before failing (ms).
SQLITE_BUSY_TIMEOUT_MS = 30_000


def default_url(data_dir: Path) -> str:
    """The embedded database: ``sqlite:///<data_dir>/kernelmap.db`` (absolute path)."""
    return f"sqlite:///{Path(data_dir).expanduser().resolve() / 'kernelmap.db'}"


def _clean(value: Any) -> Any:
    # PostgreSQL's JSONB rejects NaN/Infinity; store them as null on every backend alike.
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if hasattr(value, "tolist"):  # numpy scalars and arrays
        return _clean(value.tolist())
    return value


def json_dumps(value: Any) -> str:
    """Serialise a JSON column: non-finite floats become null, numpy values plain ones.

    Plain JSON (the common case: results, states) is dumped as it is; only a value the encoder
    refuses (a NaN, a numpy number) is walked and cleaned first, which costs a hundred times
    more on a large value. The one difference between the two ways: a dict key ``True``,
    ``False`` or ``None`` is written as JSON writes it (``"true"``), not as ``str`` does.
    """
    try:
        return json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        return json.dumps(_clean(value), default=str, allow_nan=False)


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    try:
        # busy_timeout first: switching to WAL itself may wait for another process's lock.
        cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cur.execute("PRAGMA foreign_keys=ON")
        _wal(cur)
    finally:
        cur.close()


def _wal(cur: Any) -> None:
    """Switch the file to WAL (once: the mode persists). Switching needs a lock that SQLite
    does not wait for through ``busy_timeout`` when several processes open a fresh file at
    once ("database is locked" at once): retry for as long as the busy timeout."""
    if str(cur.execute("PRAGMA journal_mode").fetchone()[0]).lower() == "wal":
        return
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            cur.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or time.monotonic() >= deadline:
                raise
            time.sleep(0.02)


def make_engine(url: str) -> Engine:
    """An engine for ``url``.

    For a SQLite file the file's directory is created and every connection gets WAL mode,
    a busy timeout of :data:`SQLITE_BUSY_TIMEOUT_MS` and enforced foreign keys.

    Parameters
    ----------
    url:
        ``sqlite:///PATH`` or ``postgresql+psycopg://USER@HOST:PORT/DB``.

    Returns
    -------
    Engine
        Pre-pinging pooled engine; JSON values are serialised by :func:`json_dumps`.
    """
    parsed = make_url(url)
    engine = sa.create_engine(parsed, pool_pre_ping=True, json_serializer=json_dumps)
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database or ""
        if database and database != ":memory:" and not database.startswith("file:"):
            Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        sa.event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def session_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions bound to ``engine``; objects stay readable after commit (no expiry)."""
    return sessionmaker(engine, expire_on_commit=False)


def migrations_dir() -> Path:
    """The Alembic script directory (the ``migrations`` package, wherever it is installed)."""
    import migrations

    return Path(migrations.__file__).resolve().parent


def alembic_config(url_or_engine: str | Engine) -> Config:
    """An Alembic configuration in code (no ``alembic.ini``) for a URL or an engine.

    Usable with :mod:`alembic.command`, e.g. to write a new revision::

        command.revision(alembic_config(url), message="...", autogenerate=True)
    """
    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir()))
    # The URL goes through attributes, not set_main_option: ConfigParser would treat a
    # percent-encoded password as interpolation.
    key = "engine" if isinstance(url_or_engine, Engine) else "url"
    cfg.attributes[key] = url_or_engine
    return cfg


@functools.cache
def head_revision() -> str:
    """The revision the code's models correspond to."""
    head = ScriptDirectory(str(migrations_dir())).get_current_head()
    assert head is not None, "migrations/versions holds no revision"
    return head


def current_revision(engine: Engine) -> str | None:
    """The database's Alembic revision; None for a fresh database."""
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(url_or_engine: str | Engine, revision: str = "head") -> None:
    """Run the Alembic migrations up to ``revision``, in one transaction.

    Concurrent callers are serialised (a lock in this process; across processes an advisory
    lock on PostgreSQL, ``BEGIN IMMEDIATE`` on SQLite, see ``migrations/env.py``), so the
    second one finds the work done.
    """
    engine = url_or_engine if isinstance(url_or_engine, Engine) else make_engine(url_or_engine)
    try:
        with _UPGRADE_LOCK:
            command.upgrade(alembic_config(engine), revision)
    finally:
        if engine is not url_or_engine:
            engine.dispose()


def ensure_schema(engine: Engine) -> None:
    """Bring a fresh or older database to the code's head; cheap when already there.

    Raises
    ------
    SchemaError
        The database is at a revision this code does not know (written by a newer
        kernelmap), or holds kernelmap tables without Alembic's version table.
    """
    current = current_revision(engine)
    head = head_revision()
    if current == head:
        return
    if current is None:
        inspector = sa.inspect(engine)
        # In this order: another process's migration commits both tables at once.
        if inspector.has_table("runs") and not inspector.has_table("alembic_version"):
            raise SchemaError(
                f"{engine.url.render_as_string()} has kernelmap tables but no alembic_version "
                "table: it was not created by kernelmap's migrations; use a fresh database"
            )
    else:
        try:
            ScriptDirectory(str(migrations_dir())).get_revision(current)
        except CommandError:
            raise SchemaError(
                f"the database is at schema revision {current!r}, which this kernelmap does "
                f"not know (its newest is {head!r}): upgrade kernelmap to open it"
            ) from None
    upgrade(engine)
