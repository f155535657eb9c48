"""The process's long-lived heap, kept out of the cycle collector's full passes.

A controller process imports torch, pyribs, SQLAlchemy and theirs before its first search:
about 400,000 objects that live as long as the process. Python's full (generation 2) passes
walk every one of them: measured in bench/llm_bench.py on the 2-vCPU development VM, three
such passes in a 300-evaluation LLM search cost ~1.1 s of the controller thread's 3.4 s (the
search's own allocations trigger them: each child's syntax tree is thousands of objects), and
in the API they paused requests for ~200 ms every few seconds (bench/api_load_bench.py).
:func:`freeze_startup_heap` moves what is alive at start-up to the collector's permanent
generation, once per process; what the process allocates later is collected as before.
"""

from __future__ import annotations

import gc
import threading

_lock = threading.Lock()
_frozen = False


def freeze_startup_heap() -> bool:
    """Collect once, then freeze every object alive now (``gc.freeze``); later calls do
    nothing. Call it when the process's imports and set-up are done, before its long work
    starts. Frozen objects are still freed when nothing refers to them; only a reference
    cycle among them is never collected, which is why this runs once, at start-up, and not
    between runs. Returns whether this call froze the heap."""
    global _frozen
    with _lock:
        if _frozen:
            return False
        gc.collect()
        gc.freeze()
        _frozen = True
        return True
