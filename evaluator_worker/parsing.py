"""One ``ast.parse`` for the whole process, one thread at a time.

CPython 3.11 was seen failing with ``SystemError: AST constructor recursion depth mismatch`` when
threads of one process parse at the same time (the runs of one controller do: the static gate,
candidate keys, LLM edits). Parsing holds the GIL for most of its work anyway, so serialising it
costs next to nothing; every parse of candidate or task source in the controller goes through
:func:`parse`.

:func:`parse_shared` keeps the trees of the last few sources: the controller parses each new
candidate twice (its duplicate key, then the static gate), and one parse of a 4 KB kernel is
0.6-1.5 ms of the few it has per candidate. Those trees are shared: read them, never change
them.
"""

from __future__ import annotations

import ast
import collections
import threading

_LOCK = threading.RLock()
SHARED_TREES = 256
"""Trees :func:`parse_shared` keeps at most (the newest sources). The search loop asks for a
batch of candidates (up to the dispatcher's free capacity) before it gates the first: every
child of the batch is parsed for its key in between, more than that for the LLM emitter (it
keys the replies as they come). With 8 kept, a run with a capacity of 64 on SQLite re-parsed
nearly every child at the gate (64 kept: still 258 of 292)."""
SHARED_MAX_CHARS = 200_000
"""Sources longer than this are parsed each time, not kept."""
SHARED_TOTAL_CHARS = 1_500_000
"""The sources of the trees kept add up to at most this many characters: a tree takes about
35 bytes per character of its source, so at most ~50 MB (256 trees of 4 KB kernels: ~40 MB)."""
_SHARED: collections.OrderedDict[str, ast.Module] = collections.OrderedDict()
_shared_chars = 0


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
    global _shared_chars
    with _LOCK:
        tree = _SHARED.get(source)
        if tree is not None:
            _SHARED.move_to_end(source)
            return tree
        tree = ast.parse(source, filename=filename)
        if len(source) <= SHARED_MAX_CHARS:
            _SHARED[source] = tree
            _shared_chars += len(source)
            while len(_SHARED) > SHARED_TREES or _shared_chars > SHARED_TOTAL_CHARS:
                _shared_chars -= len(_SHARED.popitem(last=False)[0])
        return tree


def clear_shared() -> None:
    """Forget the trees :func:`parse_shared` keeps (for benchmarks that repeat a source)."""
    global _shared_chars
    with _LOCK:
        _SHARED.clear()
        _shared_chars = 0
