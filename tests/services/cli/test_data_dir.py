"""``--data-dir`` on every command that opens the data directory: the flag wins over
``KERNELMAP_DATA_DIR``, so a key made with ``keys create --data-dir X`` is one that
``serve --data-dir X`` accepts."""

from __future__ import annotations

import json

import pytest

from archive import db
from services.cli.main import build_parser, main
from services.keys import authenticate
from tests.services.cli.seeded_run import seed_run

#: Every command that reads or writes the data directory.
COMMANDS = [
    ["run", "task.py"],
    ["demo"],
    ["runs"],
    ["show", "1"],
    ["candidates", "1"],
    ["export", "1", "--best", "-o", "x.py"],
    ["keys", "create", "--role", "user"],
    ["db", "upgrade"],
    ["serve"],
    ["controller"],
    ["worker"],
]


@pytest.fixture
def elsewhere(tmp_path, monkeypatch):
    """``KERNELMAP_DATA_DIR`` points at another directory (where nothing must land)."""
    other = tmp_path / "elsewhere"
    monkeypatch.setenv("KERNELMAP_DATA_DIR", str(other))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("KERNELMAP_DATABASE_URL", raising=False)
    return other


@pytest.mark.parametrize("argv", COMMANDS, ids=lambda a: a[0])
def test_every_data_directory_command_takes_data_dir(argv):
    args = build_parser().parse_args([*argv, "--data-dir", "/some/dir"])
    assert args.data_dir == "/some/dir"


def test_a_key_created_with_data_dir_is_in_that_database(tmp_path, elsewhere, capsys):
    data = tmp_path / "served"
    assert main(["keys", "create", "--role", "user", "--data-dir", str(data)]) == 0
    key = capsys.readouterr().out.strip()
    assert key.startswith("km_")

    def holder(directory):
        engine = db.make_engine(db.default_url(directory))
        db.ensure_schema(engine)
        try:
            with db.session_factory(engine)() as s:
                user = authenticate(s, key)
                return None if user is None else user.role
        finally:
            engine.dispose()

    assert holder(data) == "user"
    assert holder(elsewhere) is None  # not in KERNELMAP_DATA_DIR's database


def test_runs_show_and_candidates_read_the_data_dir(tmp_path, elsewhere, capsys):
    data = tmp_path / "served"
    run_id, ok_id, _ = seed_run(data, task_name="only_in_data_dir")
    seed_run(elsewhere, task_name="only_in_env_dir")

    assert main(["runs", "--data-dir", str(data), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["task"] for r in rows] == ["only_in_data_dir"]

    assert main(["runs"]) == 0  # without the flag: KERNELMAP_DATA_DIR
    out = capsys.readouterr().out
    assert "only_in_env_dir" in out and "only_in_data_dir" not in out

    assert main(["show", str(run_id), "--data-dir", str(data), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["task"] == "only_in_data_dir"
    assert [c["candidate_id"] for c in shown["archive"]] == [ok_id]


def test_export_reads_the_data_dir(tmp_path, elsewhere, capsys):
    data = tmp_path / "served"
    run_id, ok_id, _ = seed_run(data)
    out = tmp_path / "best.py"
    assert main(["export", str(run_id), "--best", "-o", str(out), "--data-dir", str(data)]) == 0
    assert "256" in out.read_text()  # the parameters baked in
    assert f"wrote candidate {ok_id}" in capsys.readouterr().err
    # The environment's directory has no run at all.
    assert main(["export", str(run_id), "--best", "-o", str(out)]) == 2
    assert "no run with id" in capsys.readouterr().err


def test_serve_and_keys_open_the_same_database(tmp_path, elsewhere):
    from services.cli.options import settings_from
    from services.cli.serve import _settings
    from services.runs.search import database_url

    data = str(tmp_path / "served")
    served = _settings(build_parser().parse_args(["serve", "--data-dir", data]))
    keys = settings_from(
        build_parser().parse_args(["keys", "create", "--role", "user", "--data-dir", data])
    )
    assert database_url(served, None) == database_url(keys, None)
    assert str(tmp_path / "served") in database_url(keys, None)
    assert str(elsewhere) not in database_url(keys, None)
