"""``kernelmap candidates RUN_ID``: every candidate a run proposed (``show`` lists only its
elites), and ``export``'s errors point at it."""

from __future__ import annotations

import json

import pytest

from services.cli.main import main
from tests.services.cli.seeded_run import seed_run


@pytest.fixture
def seeded(tmp_path, monkeypatch):
    """A data directory (``KERNELMAP_DATA_DIR``) holding one run of two candidates."""
    monkeypatch.setenv("KERNELMAP_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("KERNELMAP_DATABASE_URL", raising=False)
    return seed_run(tmp_path / "data")


def test_candidates_lists_every_candidate_not_only_the_elites(seeded, capsys):
    run_id, ok_id, bad_id = seeded
    assert main(["candidates", str(run_id)]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0] == f"run {run_id}: 2 of 2 candidates, by id"
    assert lines[1].split()[:5] == [
        "candidate_id",
        "verdict",
        "ratio",
        "objective_label",
        "emitter",
    ]
    assert lines[2].split()[:5] == [str(ok_id), "OK", "2", "cpu-time", "params"]
    assert lines[3].split()[:5] == [str(bad_id), "INCORRECT", "-", "-", "params"]  # no ratio


def test_candidates_filters_by_verdict_limits_and_prints_json(seeded, capsys):
    run_id, ok_id, bad_id = seeded
    assert main(["candidates", str(run_id), "--verdict", "INCORRECT", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["total"] == 1
    assert [(c["candidate_id"], c["verdict"]) for c in out["candidates"]] == [(bad_id, "INCORRECT")]
    assert out["candidates"][0]["ratio"] is None

    assert main(["candidates", str(run_id), "--json"]) == 0
    ok = json.loads(capsys.readouterr().out)["candidates"][0]
    assert ok["candidate_id"] == ok_id and ok["ratio"] > 0 and ok["params"] == {"BLOCK": 256}

    assert main(["candidates", str(run_id), "--limit", "1"]) == 0
    out = capsys.readouterr().out
    assert f"run {run_id}: 1 of 2 candidates" in out and "(1 more: raise --limit)" in out

    assert main(["candidates", str(run_id), "--verdict", "TIMEOUT"]) == 0
    assert capsys.readouterr().out.strip() == f"run {run_id} has no candidates with verdict TIMEOUT"


def test_candidates_usage_errors_exit_2(seeded, capsys):
    run_id, _, _ = seeded
    assert main(["candidates", "999"]) == 2
    assert "no run with id 999: `kernelmap runs` lists the runs" in capsys.readouterr().err
    assert main(["candidates", str(run_id), "--verdict", "BOGUS"]) == 2
    assert "BOGUS" in capsys.readouterr().err
    assert main(["candidates", str(run_id), "--limit", "0"]) == 2
    assert "--limit must be at least 1" in capsys.readouterr().err


def test_export_of_a_foreign_candidate_points_at_candidates(seeded, tmp_path, capsys):
    run_id, _, bad_id = seeded
    out = tmp_path / "c.py"
    assert main(["export", str(run_id), "--candidate", "12345", "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"run {run_id} has no candidate 12345" in err
    assert f"`kernelmap candidates {run_id}` lists its candidates" in err
    assert "kernelmap show" not in err
    assert not out.exists()
    # A candidate that the listing shows exports.
    assert main(["export", str(run_id), "--candidate", str(bad_id), "-o", str(out)]) == 0
    assert out.exists()
