"""Where an evaluation runs: the device ``auto`` resolves to, what ran it, the parameters.

The one place that maps a hardware class to a device (:func:`device_of_class`) and the one
``auto`` detection (:func:`detect_device`); the CLI, the workers and the controller use these.
Plain helpers of the judge (:mod:`evaluator_worker.judge`), importable without it.
"""

from __future__ import annotations

import os
import platform
from typing import Any

import torch

from kernelmap_errors import KernelmapError


def device_of_class(hardware_class: str) -> str:
    """The evaluator device of a hardware class: ``cpu`` for ``cpu``, ``cuda`` for any GPU
    class (``cuda``, ``h100``, ``h200``...)."""
    return "cpu" if hardware_class == "cpu" else "cuda"


def detect_device() -> str:
    """``cuda`` when a GPU is visible to this process, else ``cpu``: what ``auto`` means.

    It asks NVML, not the CUDA runtime, so no CUDA context is made here: a process that forks
    workers after asking (the Celery worker's pool) keeps a usable GPU in its children.
    """
    os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")
    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_device(device: str) -> torch.device:
    """``auto`` -> CUDA when a GPU is visible, else the CPU."""
    if device == "auto":
        device = detect_device()
    if device == "cuda" and not torch.cuda.is_available():
        raise KernelmapError("--device cuda was asked for, but no CUDA GPU is visible")
    return (
        torch.device("cuda", torch.cuda.current_device())
        if device == "cuda"
        else torch.device("cpu")
    )


def choose_params(space: dict | None, given: dict[str, Any] | None) -> dict[str, Any]:
    """The ``SEARCH_SPACE`` values to inject: ``given`` (checked), else the first of each."""
    space = space or {}
    given = dict(given or {})
    for name, value in given.items():
        if name not in space:
            raise KernelmapError(
                f"parameter {name!r} is not in the candidate's SEARCH_SPACE {sorted(space)}"
            )
        if value not in space[name]:
            raise KernelmapError(f"parameter {name}={value!r} is not one of {space[name]}")
    for name, values in space.items():
        if not isinstance(values, (list, tuple)) or not values:
            raise KernelmapError(f"SEARCH_SPACE[{name!r}] must be a non-empty list of choices")
        given.setdefault(name, values[0])
    return given


def hardware(device: torch.device) -> dict[str, Any]:
    """What ran the evaluation: device name, versions."""
    hw: dict[str, Any] = {
        "device": device.type,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
    }
    try:
        import triton

        hw["triton"] = triton.__version__
    except ImportError:
        hw["triton"] = None
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        hw.update(
            name=props.name,
            sms=props.multi_processor_count,
            memory_gb=round(props.total_memory / 2**30, 1),
            cuda=torch.version.cuda,
        )
    else:
        hw["name"] = platform.processor() or "cpu"
    return hw
