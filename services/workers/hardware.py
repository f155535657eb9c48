"""Hardware facts in one place: what a worker reports about the machine it evaluates on.

:func:`hardware_info` gathers them for both kinds of worker (the Celery worker's heartbeat
record, :mod:`services.workers.fleet`; the remote worker's enrolment,
:mod:`services.workers.remote`): the host, the installed torch/triton/cupy versions, and, for
``cuda``, the GPU as torch sees it (asked in a child process, so CUDA is never initialised in a
process that forks afterwards) and the driver as ``nvidia-smi`` reports it.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import socket
import subprocess
import sys
from importlib import metadata
from typing import Any

log = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 60.0
"""Bound on each probe of the GPU (a child importing torch, ``nvidia-smi``)."""

_GPU_PROBE = """\
import json
import torch

out = {"cuda": torch.version.cuda}
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    out.update(
        gpu_name=p.name,
        gpu_memory_mib=p.total_memory // 2**20,
        compute_capability=f"{p.major}.{p.minor}",
        sms=p.multi_processor_count,
        gpu_count=torch.cuda.device_count(),
    )
print(json.dumps(out))
"""


def _version(*distributions: str) -> str | None:
    """The installed version of the first of ``distributions`` that is installed."""
    for name in distributions:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None


def _cupy_version() -> str | None:
    # CuPy ships one distribution per CUDA major (cupy-cuda12x, cupy-cuda13x...) or plain cupy.
    for dist in metadata.distributions():
        name = (dist.metadata["Name"] or "").lower()
        if name == "cupy" or name.startswith("cupy-cuda"):
            return dist.version
    return None


def _cpu_count() -> int | None:
    # The CPUs this process may run on (a container or taskset limits them), not the host's.
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count()


def _probe_torch(timeout_s: float) -> dict[str, Any]:
    """GPU facts from torch, in a child: CUDA initialised here would break the forked pool."""
    try:
        out = subprocess.run(
            [sys.executable, "-c", _GPU_PROBE],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.warning("the GPU probe (torch, in a child process) failed: %s", exc)
        return {}
    lines = [line for line in out.stdout.splitlines() if line.strip()]
    if out.returncode != 0 or not lines:
        log.warning(
            "the GPU probe (torch, in a child process) exited %s: %s",
            out.returncode,
            out.stderr.strip()[-500:],
        )
        return {}
    try:
        found = json.loads(lines[-1])
    except json.JSONDecodeError:
        log.warning("the GPU probe printed no JSON: %r", lines[-1][:200])
        return {}
    return found if isinstance(found, dict) else {}


def _probe_nvidia_smi(timeout_s: float) -> dict[str, Any]:
    """The driver version (torch does not know it), and name and memory as a fallback."""
    cmd = [
        "nvidia-smi",
        "--query-gpu=driver_version,name,memory.total",
        "--format=csv,noheader,nounits",
    ]
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    if visible.isdigit():
        # nvidia-smi numbers GPUs in PCI order and ignores CUDA_VISIBLE_DEVICES; a plain index
        # is what `kernelmap worker --device N` sets (CUDA's order can differ on mixed hosts,
        # which is why torch's answer wins for the GPU's own facts).
        cmd.insert(1, f"--id={visible}")
    try:
        out = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout_s, stdin=subprocess.DEVNULL
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.info("nvidia-smi gave no GPU facts: %s", exc)
        return {}
    first = out.stdout.strip().splitlines()[:1]
    if out.returncode != 0 or not first:
        log.info("nvidia-smi exited %s: %s", out.returncode, out.stderr.strip()[-300:])
        return {}
    fields = [f.strip() for f in first[0].split(",")]
    if len(fields) != 3:
        return {}
    driver, name, memory = fields
    facts: dict[str, Any] = {"driver_version": driver or None, "gpu_name": name or None}
    if memory.isdigit():
        facts["gpu_memory_mib"] = int(memory)
    return facts


def hardware_info(
    device: str, timeout_s: float = PROBE_TIMEOUT_S, sandbox: str | None = None
) -> dict[str, Any]:
    """What a worker reports about the machine it evaluates on.

    Safe in a process that forks afterwards: CUDA is never initialised here (the GPU is asked
    by a child process and by ``nvidia-smi``), and nothing here raises: a fact that cannot be
    found is None.

    Parameters
    ----------
    device:
        ``cuda`` or ``cpu``: where the worker evaluates. The GPU is probed only for ``cuda``.
    timeout_s:
        Bound on each probe (torch's import in a child, then ``nvidia-smi``), in seconds.
    sandbox:
        The worker's sandbox mode; when given, ``sandbox`` is added
        (:func:`evaluator_worker.sandbox.report`).

    Returns
    -------
    dict
        ``hostname``, ``device``, ``gpu_name``, ``gpu_memory_mib`` (MiB), ``gpu_count`` (GPUs
        visible to the worker), ``sms`` (multiprocessors), ``compute_capability`` (``"9.0"``),
        ``driver_version`` (NVIDIA driver), ``cuda`` (torch's CUDA runtime), ``torch``,
        ``triton``, ``cupy`` (installed versions), ``cpu_count`` (CPUs this process may use),
        ``python``, ``machine``.
    """
    info: dict[str, Any] = {
        "hostname": socket.gethostname(),
        "device": device,
        "gpu_name": None,
        "gpu_memory_mib": None,
        "gpu_count": None,
        "sms": None,
        "compute_capability": None,
        "driver_version": None,
        "cuda": None,
        "torch": _version("torch"),
        "triton": _version("triton", "pytorch-triton", "pytorch-triton-rocm"),
        "cupy": _cupy_version(),
        "cpu_count": _cpu_count(),
        "python": platform.python_version(),
        "machine": platform.machine(),
    }
    if sandbox is not None:
        from evaluator_worker.sandbox import report

        info["sandbox"] = report(device, sandbox, timeout_s)
    if device != "cuda":
        return info
    from_torch = _probe_torch(timeout_s)
    from_smi = _probe_nvidia_smi(timeout_s)
    for key in info:
        if info[key] is None:
            info[key] = from_torch.get(key, from_smi.get(key))
    return info
