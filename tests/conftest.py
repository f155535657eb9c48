"""Shared fixtures: an empty database of each backend (SQLite file, real PostgreSQL)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from archive import db
from archive.testing import temporary_database

#: The fleet tests' fixtures (``env``, ``start_worker``), the browser tests' (``chromium``,
#: ``page``, ``live_server``, ``screenshots``) and the scripted LLM endpoint (``llm_server``),
#: shared by several test modules.
pytest_plugins = ["tests.fleet_fixtures", "tests.web.browser", "tests.llm_server"]

BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


@pytest.fixture(params=BACKENDS)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database of each backend: a SQLite file, or a fresh PostgreSQL database."""
    with temporary_database(request.param, tmp_path / "data") as url:
        yield url


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    """An engine on the empty database, migrated to head."""
    eng = db.make_engine(db_url)
    db.ensure_schema(eng)
    yield eng
    eng.dispose()


@pytest.fixture
def sessions(engine: Engine) -> sessionmaker[Session]:
    """Sessions on that database."""
    return db.session_factory(engine)
