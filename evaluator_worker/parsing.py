"""One ``ast.parse`` for the whole process, one thread at a time.

CPython 3.11 was seen failing with ``SystemError: AST constructor recursion depth mismatch`` when
threads of one process parse at the same time (the runs of one controller do: the static gate,
candidate keys, LLM edits). Parsing holds the GIL for most of its work anyway, so serialising it
costs next to nothing; every parse of candidate or task source in the controller goes through
:func:`parse`.

:func:`parse_shared` keeps the trees of the last few sources: the controller parses each new
candidate twice (its duplicate key, then the static gate), and one parse of a 4 KB kernel is
about 0.6 ms of the few it has per candidate. Those trees are shared: read them, never change
them.
"""

from __future__ import annotations

import ast
import collections
import threading

_LOCK = threading.RLock()
SHARED_TREES = 8
"""Trees :func:`parse_shared` keeps (the newest sources)."""
SHARED_MAX_CHARS = 200_000
"""Sources longer than this are parsed each time, not kept."""
_SHARED: collections.OrderedDict[str, ast.Module] = collections.OrderedDict()


def parse(source: str, filename: str = "<unknown>") -> ast.Module:
    """``ast.parse(source, filename)`` under the process-wide lock (raises what it raises)."""
    with _LOCK:
        return ast.parse(source, filename=filename)


def parse_shared(source: str, filename: str = "<unknown>") -> ast.Module:
    """:func:`parse`, with the tree of a source parsed lately returned again.

    The tree is shared with every caller of the same source: never change it. A source that
    does not parse raises each time (failures are not kept); ``filename`` only names the file
    in those errors.
    """
    with _LOCK:
        tree = _SHARED.get(source)
        if tree is not None:
            _SHARED.move_to_end(source)
            return tree
        tree = ast.parse(source, filename=filename)
        if len(source) <= SHARED_MAX_CHARS:
            _SHARED[source] = tree
            while len(_SHARED) > SHARED_TREES:
                _SHARED.popitem(last=False)
        return tree


def clear_shared() -> None:
    """Forget the trees :func:`parse_shared` keeps (for benchmarks that repeat a source)."""
    with _LOCK:
        _SHARED.clear()
