"""Running the evaluator bench's cases: one :class:`Evaluator` per configuration, one
:class:`Row` per case.

:class:`Runner` evaluates each case on the evaluator of its (static gate, timeout)
configuration, after loading (and timing) the task in the judge, and turns every outcome, an
exception included, into a :class:`Row`. :func:`share_zygote` spreads each evaluator's zygote
start over the candidates it spawned, for the per-candidate overhead.

Imports ``evaluator_worker``: the repository root must be on ``sys.path`` (``evaluator_bench.py``
puts it there).
"""

from __future__ import annotations

import dataclasses
import gc
import os
import re
import sys
import time
from pathlib import Path

import torch
from bench_cases import ROOT, Case

from evaluator_worker.config import EvalConfig
from evaluator_worker.judge import Evaluator
from evaluator_worker.result import EvalResult

#: The bench tasks' size knobs, passed through the sandbox's environment allow-list.
PASS_ENV = ("KERNELMAP_BENCH_SCALE", "KERNELMAP_BENCH_BATCH_SCALE")


def sandbox_mode() -> str:
    """``KERNELMAP_SANDBOX`` as the service reads it (gpu_check sets relaxed where it must)."""
    return "relaxed" if os.environ.get("KERNELMAP_SANDBOX") == "relaxed" else "strict"


@dataclasses.dataclass
class Row:
    """One case's outcome."""

    case: Case
    evaluator: str
    result: EvalResult | None
    error: str | None
    wall_s: float
    zygote_share_s: float | None = None

    @property
    def verdict(self) -> str:
        return self.result.verdict.value if self.result is not None else "ERROR"

    @property
    def ok(self) -> bool:
        """An expected verdict, and no fast OK where the case bounds the speedup."""
        if self.result is None or self.verdict not in self.case.expected:
            return False
        s = self.result.speedup_vs_eager
        cap = self.case.max_speedup
        return not (self.verdict == "OK" and cap is not None and s is not None and s >= cap)

    @property
    def stages(self) -> dict[str, float]:
        return self.result.stages_s if self.result is not None else {}

    @property
    def spawned(self) -> bool:
        """Whether a candidate process was started (a static reject never starts one)."""
        return "spawn_s" in self.stages

    @property
    def overhead_s(self) -> float | None:
        """spawn_s + load_s + this case's share of its evaluator's zygote start."""
        if not self.spawned:
            return None
        st = self.stages
        return st["spawn_s"] + st.get("load_s", 0.0) + (self.zygote_share_s or 0.0)


def progress(text: str) -> None:
    """A progress line on stderr."""
    print(text, file=sys.stderr, flush=True)


class Runner:
    """Runs cases through one evaluator per (static gate, timeout) configuration."""

    def __init__(self, device: str, timeout_s: float, workdir: Path) -> None:
        self.device = device
        self.timeout_s = timeout_s
        self.workdir = workdir
        self.evaluators: dict[str, Evaluator] = {}
        self.task_load_s: dict[str, float] = {}
        self._loaded: set[tuple[str, str]] = set()

    def key(self, case: Case) -> str:
        timeout = case.timeout_s or self.timeout_s
        return f"gate={'on' if case.gate else 'off'},timeout={timeout:g}s"

    def evaluator(self, case: Case) -> Evaluator:
        key = self.key(case)
        if key not in self.evaluators:
            cfg = EvalConfig(
                device=self.device,
                static_gate=case.gate,
                pass_env=PASS_ENV,
                sandbox=sandbox_mode(),
                timeout_s=case.timeout_s or self.timeout_s,
            )
            self.evaluators[key] = Evaluator(cfg)
        return self.evaluators[key]

    def candidate_file(self, case: Case) -> Path:
        if case.source is None:
            assert case.candidate is not None, case.name
            return case.candidate
        path = self.workdir / (re.sub(r"[^A-Za-z0-9_]+", "__", case.name) + ".py")
        path.write_text(case.source, encoding="utf-8")
        return path

    def load_task(self, ev: Evaluator, key: str, task: Path) -> None:
        """Load (and time) the task in the judge before the case, so total_s leaves it out."""
        if (key, str(task)) in self._loaded:
            return
        t0 = time.monotonic()
        ev.task(task)
        dt = time.monotonic() - t0
        self._loaded.add((key, str(task)))
        name = str(task.relative_to(ROOT)) if task.is_relative_to(ROOT) else str(task)
        self.task_load_s[name] = max(self.task_load_s.get(name, 0.0), dt)
        if dt > 1.0:
            progress(f"      (judge loaded {name} in {dt:.1f} s)")

    def run(self, case: Case) -> Row:
        key = self.key(case)
        t0 = time.monotonic()
        result, error = None, None
        try:
            ev = self.evaluator(case)
            self.load_task(ev, key, case.task)
            result = ev.evaluate(case.task, self.candidate_file(case))
        except Exception as e:  # the bench reports; one broken case must not end the run
            error = f"{type(e).__name__}: {' '.join(str(e).split())[:500]}"
        finally:
            if self.device == "cuda":
                # The judge's reference tensors live in this process: give the memory back.
                gc.collect()
                torch.cuda.empty_cache()
        return Row(case, key, result, error, time.monotonic() - t0)

    def close(self) -> None:
        for ev in self.evaluators.values():
            ev.close()


def share_zygote(rows: list[Row]) -> dict[str, tuple[float, int]]:
    """Spread each evaluator's zygote start time over the candidates it spawned."""
    per: dict[str, tuple[float, int]] = {}
    for r in rows:
        z, n = per.get(r.evaluator, (0.0, 0))
        per[r.evaluator] = (z + r.stages.get("zygote_start_s", 0.0), n + int(r.spawned))
    for r in rows:
        z, n = per[r.evaluator]
        r.zygote_share_s = z / n if n else None
    return per
