"""A run's stored configuration and objective label: one definition for the CLI and the API.

The configuration is what a controller needs to start or resume a run: the seeds (sources and
search spaces), the descriptor dimensions, the archive kind, the parameter emitters' variation,
the device class and the evaluation timeout.
"""

from __future__ import annotations

from typing import Any

from evaluator_worker import static_gate
from evolution.descriptors import default_dims
from services.runs.seeds import Seed


def objective_label(device: str, seeds: list[Seed]) -> str:
    """``gpu-speedup`` on CUDA; on the CPU ``cpu-interpreter`` when any seed uses Triton (its
    interpreted time is not performance), else ``cpu-time``."""
    if device == "cuda":
        return "gpu-speedup"
    uses_triton = any(static_gate.check_source(s.source).uses_triton for s in seeds)
    return "cpu-interpreter" if uses_triton else "cpu-time"


def run_config(
    *,
    device: str,
    seeds: list[Seed],
    timeout_s: float,
    dims: str | None = None,
    workers: int = 1,
    variation: str = "gaussian",
    archive: str = "grid",
    cells: int | None = None,
) -> dict[str, Any]:
    """The JSON configuration stored with a run (``dims`` defaults per device)."""
    return {
        "variation": variation,
        "archive": archive,
        "cells": cells,
        "device": device,
        "workers": workers,
        "dims": dims or ",".join(default_dims(device)),
        "seeds": [s.to_dict() for s in seeds],
        "timeout_s": timeout_s,
    }
