"""``bench/llm_bench.py --quick``: the LLM emitter bench still runs and reports its figures.

Speed is not asserted (the targets are the bench's to report); the test catches a change to the
emitter, the pool, the journal or the test server that breaks the bench.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FIGURES = {"ms_per_child", "target_ms", "key_ms", "journal_ms", "gate_ms", "idle_ms", "rate"}


@pytest.mark.timeout(240)
def test_quick_run_prints_the_table_and_the_targets_line(tmp_path):
    out = tmp_path / "llm.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "llm_bench.py"),
            "--quick",
            "--latency-ms",
            "20",
            "--json",
            str(out),
            "--tmpdir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=220,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    text = proc.stdout
    columns = ("emitter+gate ms", "p+d+g+d ms", "key ms", "journal ms", "gate ms", "children/s")
    for column in columns:
        assert column in text
    for row in ("memory     0 ms", "sqlite     0 ms", "memory    20 ms", "sqlite    20 ms"):
        assert row in text
    last = text.strip().splitlines()[-1]
    assert last.startswith("targets, instant replies: parse, diff, gate and dedupe")
    assert "all of the emitter's controller time" in last and "proposals/s" in last
    data = json.loads(out.read_text())
    assert len(data["runs"]) == 4
    for run in data["runs"]:
        assert run["children"] > 0 and FIGURES <= set(run["figures"])
    assert not list(tmp_path.glob("tmp*"))  # the SQLite files are gone
