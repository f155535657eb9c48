"""Importing user files (tasks, candidates) as modules from real files.

``@triton.jit`` needs its source in a real file, so candidates are always written to disk and
imported from there, never exec'd from strings.
"""

from __future__ import annotations

import hashlib
import importlib.util
import sys
import traceback
from pathlib import Path
from types import ModuleType
from typing import Any


def import_file(path: str | Path, prefix: str, inject: dict[str, Any] | None = None) -> ModuleType:
    """Import ``path`` as a fresh module named ``<prefix>_<hash>``.

    ``inject`` sets module globals before the module body runs (a candidate's chosen
    ``SEARCH_SPACE`` values). Exceptions from the module body propagate.
    """
    path = Path(path).resolve()
    digest = hashlib.sha256(str(path).encode()).hexdigest()[:12]
    name = f"{prefix}_{digest}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    if inject:
        module.__dict__.update(inject)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


def error_line(exc: BaseException, path: str | Path) -> int | None:
    """The deepest line of ``path`` in the traceback of ``exc``, if any."""
    target = str(Path(path).resolve())
    line = None
    for frame in traceback.extract_tb(exc.__traceback__):
        if frame.filename and str(Path(frame.filename).resolve()) == target:
            line = frame.lineno
    if line is None and isinstance(exc, SyntaxError) and exc.lineno:
        line = exc.lineno
    return line


def describe(exc: BaseException) -> str:
    """``ExcType: message`` on one line, shortened."""
    text = " ".join(str(exc).split())
    if len(text) > 400:
        text = text[:400] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
