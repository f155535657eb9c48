"""Features measured from the compiled kernels (candidate-process side).

Triton: registers, spills, shared memory, warps, stages, and from the PTX whether tensor cores
(``mma``/``wgmma``) and 128-bit vector loads (``ld.global.v4``) are used. CuPy ``RawKernel``:
``num_regs``, ``shared_size_bytes``, ``local_size_bytes``. From a torch.profiler trace of one
call: the kernels per forward (fusion degree), their grid sizes, streams and time split
between the candidate's own kernels and library kernels.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from types import ModuleType
from typing import Any


def _triton_functions(module: ModuleType) -> dict[str, Any]:
    try:
        from triton.runtime.jit import JITFunction
    except ImportError:
        return {}
    found: dict[str, Any] = {}
    for name, obj in vars(module).items():
        fn, depth = obj, 0
        while fn is not None and not isinstance(fn, JITFunction) and depth < 4:
            fn, depth = getattr(fn, "fn", None), depth + 1
        if isinstance(fn, JITFunction):
            found[getattr(fn, "__name__", name)] = fn
    return found


def kernel_names(module: ModuleType) -> set[str]:
    """Names the candidate's own kernels show up with in a profiler trace."""
    names = set(_triton_functions(module))
    for obj in vars(module).values():
        if type(obj).__module__.startswith("cupy") and hasattr(obj, "name"):
            names.add(str(obj.name))
    return names


def triton_features(module: ModuleType) -> list[dict[str, Any]]:
    """One entry per compiled Triton kernel variant of the candidate (GPU only)."""
    out = []
    for name, fn in _triton_functions(module).items():
        for caches in getattr(fn, "device_caches", {}).values():
            cache = caches[0] if isinstance(caches, tuple) else caches
            for kernel in list(getattr(cache, "values", lambda: [])()):
                try:
                    if hasattr(kernel, "_init_handles"):
                        kernel._init_handles()
                    md = kernel.metadata
                    ptx = kernel.asm.get("ptx", "") if hasattr(kernel, "asm") else ""
                    out.append(
                        {
                            "kernel": name,
                            "n_regs": int(getattr(kernel, "n_regs", 0) or 0),
                            "n_spills": int(getattr(kernel, "n_spills", 0) or 0),
                            "shared": int(getattr(md, "shared", 0) or 0),
                            "num_warps": int(getattr(md, "num_warps", 0) or 0),
                            "num_stages": int(getattr(md, "num_stages", 0) or 0),
                            "tensor_cores": ("wgmma" in ptx)
                            or (" mma." in ptx)
                            or ("\tmma." in ptx),
                            "vector_load_v4": "ld.global.v4" in ptx,
                        }
                    )
                except Exception as e:  # a feature we cannot read is reported, never fatal
                    out.append({"kernel": name, "error": f"{type(e).__name__}: {e}"})
    return out


def cupy_features(module: ModuleType) -> list[dict[str, Any]]:
    """Attributes of the candidate's compiled CuPy ``RawKernel`` objects."""
    out = []
    for name, obj in vars(module).items():
        if type(obj).__name__ == "RawKernel" and type(obj).__module__.startswith("cupy"):
            try:
                a = obj.attributes
                out.append(
                    {
                        "kernel": name,
                        "num_regs": a.get("num_regs"),
                        "shared_size_bytes": a.get("shared_size_bytes"),
                        "local_size_bytes": a.get("local_size_bytes"),
                    }
                )
            except Exception as e:  # not compiled yet, or no device
                out.append({"kernel": name, "error": f"{type(e).__name__}: {e}"})
    return out


def profile_call(
    call: Callable[[], Any], marker: Callable[[], Any], own_kernels: set[str]
) -> dict[str, Any]:
    """Trace one call with torch.profiler; the marker kernel launched first names the stream."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        marker()
        call()
        torch.cuda.synchronize()
    fd, path = tempfile.mkstemp(suffix=".json")
    os.close(fd)
    try:
        prof.export_chrome_trace(path)
        with open(path) as f:
            trace = json.load(f)
    finally:
        os.unlink(path)
    kernels = sorted(
        (e for e in trace.get("traceEvents", []) if e.get("cat") == "kernel"),
        key=lambda e: e.get("ts", 0),
    )
    if not kernels:
        return {"kernels": [], "kernel_count": 0}
    main_stream = kernels[0].get("args", {}).get("stream")
    kernels = kernels[1:]
    rows = []
    own_us = lib_us = 0.0
    for e in kernels:
        args = e.get("args", {})
        name = e.get("name", "")
        dur = float(e.get("dur", 0.0))
        own = any(k and k in name for k in own_kernels)
        own_us += dur if own else 0.0
        lib_us += 0.0 if own else dur
        rows.append(
            {
                "name": name[:120],
                "us": dur,
                "stream": args.get("stream"),
                "grid": args.get("grid"),
                "block": args.get("block"),
                "own": own,
            }
        )
    return {
        "kernels": rows,
        "kernel_count": len(rows),
        "main_stream": main_stream,
        "side_stream_kernels": sum(1 for r in rows if r["stream"] != main_stream),
        "own_us": own_us,
        "library_us": lib_us,
    }
