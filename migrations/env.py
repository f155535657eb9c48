"""Alembic environment: runs the migrations on the engine or URL that ``archive.db`` passes.

The whole upgrade is one transaction, and concurrent upgrades are serialised: the second
waits, then finds the database at head and does nothing.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection

from archive.db import make_engine
from archive.models import Base

#: PostgreSQL advisory lock key held while migrating (an arbitrary constant: "kmap").
MIGRATION_LOCK_KEY = 0x6B6D6170


def _lock(connection: Connection) -> None:
    if connection.dialect.name == "postgresql":
        connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK_KEY})")
    elif connection.dialect.name == "sqlite":
        # pysqlite does not begin a transaction before DDL by itself; take the write lock now.
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def _configure(**kwargs: object) -> None:
    context.configure(
        target_metadata=Base.metadata,
        compare_type=True,
        render_as_batch=True,  # SQLite alters tables by copying them; harmless elsewhere
        **kwargs,
    )


def run_offline() -> None:
    """Write the SQL to stdout instead of running it (``alembic upgrade --sql``)."""
    attributes = context.config.attributes
    url = attributes.get("url") or attributes["engine"].url.render_as_string(hide_password=False)
    _configure(url=url, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    """Run the migrations on a live database, in one transaction."""
    engine = context.config.attributes.get("engine")
    owned = engine is None
    if owned:
        engine = make_engine(context.config.attributes["url"])
    try:
        with engine.connect() as connection, connection.begin():
            _lock(connection)
            _configure(connection=connection)
            with context.begin_transaction():
                context.run_migrations()
    finally:
        if owned:
            engine.dispose()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
