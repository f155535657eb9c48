"""Throwaway databases for tests: a SQLite file, or a fresh PostgreSQL database dropped after.

Tests of any module that needs the database can share these; tests that use PostgreSQL are
marked ``postgres`` and must fail, not skip, where the server is missing (CI starts it).
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from archive.db import default_url

#: The developers' and CI's server (trust auth); ``KERNELMAP_TEST_POSTGRES_URL`` overrides it.
DEFAULT_POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def postgres_test_url() -> str:
    """The server tests create their databases on (any existing database of it)."""
    return os.environ.get("KERNELMAP_TEST_POSTGRES_URL", DEFAULT_POSTGRES_URL)


@contextlib.contextmanager
def temporary_postgres_database(server_url: str | None = None) -> Iterator[str]:
    """Create an empty database ``kernelmap_test_<hex>``; yield its URL; drop it.

    Raises
    ------
    RuntimeError
        The server does not answer (with how to start it).
    """
    server_url = server_url or postgres_test_url()
    admin = sa.create_engine(server_url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    name = f"kernelmap_test_{uuid.uuid4().hex[:16]}"
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    except sa.exc.OperationalError as exc:
        shown = make_url(server_url).render_as_string()
        raise RuntimeError(
            f"PostgreSQL is not reachable at {shown}: start it (.ci/run does), set "
            f"KERNELMAP_TEST_POSTGRES_URL, or deselect with -m 'not postgres' ({exc.orig})"
        ) from exc
    try:
        yield make_url(server_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            # FORCE: engines a failed test did not dispose must not keep the database alive.
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


@contextlib.contextmanager
def temporary_database(backend: str, directory: Path) -> Iterator[str]:
    """The URL of an empty database: ``sqlite`` (a file in ``directory``) or ``postgres``."""
    if backend == "sqlite":
        yield default_url(directory)
    elif backend == "postgres":
        with temporary_postgres_database() as url:
            yield url
    else:
        raise ValueError(f"unknown backend {backend!r}; expected 'sqlite' or 'postgres'")
