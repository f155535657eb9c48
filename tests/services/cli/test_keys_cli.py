"""`kernelmap keys create`: the key on stdout, once; only its hash in the database."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import sqlalchemy as sa

from archive import db
from archive.models import ApiKey
from services.keys import authenticate

ROOT = Path(__file__).resolve().parents[3]


def test_keys_create_prints_only_the_key_and_stores_its_hash(tmp_path):
    env = dict(os.environ, KERNELMAP_DATA_DIR=str(tmp_path))
    env.pop("KERNELMAP_DATABASE_URL", None)
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "services.cli.main",
            "keys",
            "create",
            "--role",
            "user",
            "--name",
            "alice",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 0, p.stderr
    key = p.stdout.strip()
    assert p.stdout.count("\n") == 1 and key.startswith("km_")
    for f in tmp_path.glob("kernelmap.db*"):  # the database and its WAL
        assert key.encode() not in f.read_bytes()
    engine = db.make_engine(db.default_url(tmp_path))
    with db.session_factory(engine)() as s:
        user = authenticate(s, key)
        assert user is not None and user.role == "user" and user.name == "alice"
        row = s.scalars(sa.select(ApiKey).where(ApiKey.user_id == user.id)).one()
        # The sha256 of the whole key, as every earlier version stored it.
        assert row.key_hash == hashlib.sha256(key.encode()).hexdigest()
        assert row.prefix == key[:8]
    engine.dispose()
    bad = subprocess.run(
        [sys.executable, "-m", "services.cli.main", "keys", "create", "--role", "root"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2 and "root" in bad.stderr
