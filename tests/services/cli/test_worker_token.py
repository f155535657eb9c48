"""The remote worker's enrolment token kept out of ``ps``: ``--token-file PATH`` or
``KERNELMAP_WORKER_TOKEN``, beside ``--token KEY``."""

from __future__ import annotations

import pytest

import services.workers.remote as remote
from services.cli.main import main

URL = "http://127.0.0.1:9"


@pytest.fixture
def joined(monkeypatch, tmp_path):
    """What ``kernelmap worker --join`` hands to the remote worker (which is not started)."""
    calls: list[dict] = []

    def fake(url, token, **kw):
        calls.append({"url": url, "token": token, **kw})
        return 0

    monkeypatch.setattr(remote, "run_remote_worker", fake)
    monkeypatch.delenv("KERNELMAP_WORKER_TOKEN", raising=False)
    monkeypatch.setenv("KERNELMAP_DATA_DIR", str(tmp_path / "data"))
    return calls


def _token_file(tmp_path, text: str, mode: int = 0o600):
    path = tmp_path / "token"
    path.write_text(text)
    path.chmod(mode)
    return path


def test_the_token_from_the_environment(joined, monkeypatch):
    monkeypatch.setenv("KERNELMAP_WORKER_TOKEN", "km_from_env")
    assert main(["worker", "--join", URL]) == 0
    assert joined[0]["token"] == "km_from_env" and joined[0]["url"] == URL


def test_the_token_from_a_file(joined, tmp_path, capsys):
    path = _token_file(tmp_path, "km_from_file\n")
    assert main(["worker", "--join", URL, "--token-file", str(path)]) == 0
    assert joined[0]["token"] == "km_from_file"
    assert "warning" not in capsys.readouterr().err


def test_the_command_line_wins_over_the_environment(joined, monkeypatch, tmp_path):
    monkeypatch.setenv("KERNELMAP_WORKER_TOKEN", "km_from_env")
    path = _token_file(tmp_path, "km_from_file")
    assert main(["worker", "--join", URL, "--token-file", str(path)]) == 0
    assert main(["worker", "--join", URL, "--token", "km_from_argv"]) == 0
    assert [c["token"] for c in joined] == ["km_from_file", "km_from_argv"]


def test_a_file_others_can_read_is_used_with_a_warning(joined, tmp_path, capsys):
    path = _token_file(tmp_path, "km_shared", mode=0o644)
    assert main(["worker", "--join", URL, "--token-file", str(path)]) == 0
    assert joined[0]["token"] == "km_shared"
    err = capsys.readouterr().err
    assert "readable by other users (mode 0644)" in err and f"chmod 600 {path}" in err


def test_a_missing_or_empty_file_is_a_clear_error(joined, tmp_path, capsys):
    missing = tmp_path / "nope"
    assert main(["worker", "--join", URL, "--token-file", str(missing)]) == 2
    assert f"--token-file {missing}: no such file" in capsys.readouterr().err
    empty = _token_file(tmp_path, " \n")
    assert main(["worker", "--join", URL, "--token-file", str(empty)]) == 2
    assert f"--token-file {empty} is empty" in capsys.readouterr().err
    assert joined == []


def test_no_token_anywhere_says_where_to_put_one(joined, capsys):
    assert main(["worker", "--join", URL]) == 2
    err = capsys.readouterr().err
    assert "--token-file PATH, KERNELMAP_WORKER_TOKEN or --token KEY" in err
    assert main(["worker", "--join", URL, "--token", "a", "--token-file", "b"]) == 2
    assert "not allowed with argument" in capsys.readouterr().err
    assert joined == []


def test_the_data_dir_flag_reaches_the_remote_worker(joined, tmp_path):
    assert main(["worker", "--join", URL, "--token", "km_x", "--data-dir", str(tmp_path)]) == 0
    assert joined[0]["data_dir"] == tmp_path
