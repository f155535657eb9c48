"""services.heap: the collector tuned once per process (in a child process: it is global)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

CHILD = """
import gc, json
from services import heap
kept = [[i] for i in range(1000)]  # alive at start-up: frozen
default = gc.get_threshold()
first = heap.tune_collector()
frozen = gc.get_freeze_count()
gc.set_threshold(900, 9, 9)
second = heap.tune_collector()  # does nothing, keeps what was set since
print(json.dumps({"default": default, "first": first, "second": second, "frozen": frozen,
                  "tracked": len(gc.get_objects()), "after": gc.get_threshold()}))
"""


def test_the_collector_is_tuned_once_and_the_start_up_heap_frozen() -> None:
    out = subprocess.run(
        [sys.executable, "-c", CHILD], cwd=ROOT, capture_output=True, text=True, check=True
    )
    got = json.loads(out.stdout)
    assert got["first"] is True and got["second"] is False
    assert got["frozen"] > 1000 > got["tracked"]  # what lived at start-up left the collector's view
    assert got["default"][0] == 700
    assert got["after"] == [900, 9, 9]


def test_the_young_threshold_is_raised_and_the_others_kept() -> None:
    child = "import gc; from services import heap; d = gc.get_threshold(); heap.tune_collector()"
    child += (
        "; print(d[1:] == gc.get_threshold()[1:], gc.get_threshold()[0] == heap.YOUNG_THRESHOLD)"
    )
    out = subprocess.run(
        [sys.executable, "-c", child], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == ["True", "True"]
