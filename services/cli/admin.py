"""The administration commands: ``kernelmap db upgrade`` and ``kernelmap keys create``."""

from __future__ import annotations

import argparse
import sys

from services.cli.options import settings_from


def cmd_db(args: argparse.Namespace) -> int:
    """``kernelmap db upgrade``: apply the migrations."""
    from archive import db
    from services.runs.search import database_url

    url = database_url(settings_from(args), args.db)
    db.upgrade(url)
    print(f"database at revision {db.head_revision()}", file=sys.stderr)
    return 0


def cmd_keys(args: argparse.Namespace) -> int:
    """``kernelmap keys create --role R``: prints only the new key on stdout (stored hashed)."""
    from services.keys import create_key
    from services.runs.search import open_database

    engine, sessions = open_database(settings_from(args), args.db)
    try:
        with sessions() as s:
            user, key = create_key(s, args.role, args.name or f"{args.role} key")
            s.commit()
            user_id = user.id
    finally:
        engine.dispose()
    print(key)
    print(
        f"created a {args.role} key for user {user_id}; it is shown only this once", file=sys.stderr
    )
    return 0
