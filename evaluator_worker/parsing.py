"""One ``ast.parse`` for the whole process, one thread at a time.

CPython 3.11 was seen failing with ``SystemError: AST constructor recursion depth mismatch`` when
threads of one process parse at the same time (the runs of one controller do: the static gate,
candidate keys, LLM edits). Parsing holds the GIL for most of its work anyway, so serialising it
costs next to nothing; every parse of candidate or task source in the controller goes through
:func:`parse`.
"""

from __future__ import annotations

import ast
import threading

_LOCK = threading.RLock()


def parse(source: str, filename: str = "<unknown>") -> ast.Module:
    """``ast.parse(source, filename)`` under the process-wide lock (raises what it raises)."""
    with _LOCK:
        return ast.parse(source, filename=filename)
