"""The cycle collector's settings for a long-lived kernelmap process (controller, API).

A controller process imports torch, pyribs, SQLAlchemy and theirs before its first search:
about 400,000 objects that live as long as the process, and Python's full (generation 2)
passes walk every one of them. Then each candidate it handles is parsed (the key, the static
gate, ~700 nodes and their lists for a 4 KB kernel) and its prompt, reply and state built, so
the young generation, collected every 700 net allocations by default, was collected ~700
times in a run of 300 evaluations, and every tenth of those passes over the middle one.
Measured in bench/llm_bench.py on the 2-vCPU development VM (300 evaluations, instant replies,
the collector's time on the controller thread): with the SQLite journal 1.9 s of the thread's
5.5 s with the defaults, ~0.45 s with the start-up heap frozen, ~0.05 s with the young
generation's threshold raised as well (1.3 s of 3.4 s, then ~0.35 s, in memory);
in the API, the full passes paused requests for ~200 ms every few seconds
(bench/api_load_bench.py).

:func:`tune_collector` moves what is alive at start-up to the collector's permanent generation
and raises the young generation's threshold to :data:`YOUNG_THRESHOLD`, once per process; what
the process allocates later is collected as before, less often.
"""

from __future__ import annotations

import gc
import threading

YOUNG_THRESHOLD = 10_000
"""Net allocations between two collections of the young generation (Python's default: 700;
3.13 raised it to 2,000). Garbage in cycles waits longer, a few MB at most."""

_lock = threading.Lock()
_tuned = False


def tune_collector() -> bool:
    """Collect once, freeze every object alive now (``gc.freeze``) and set the young
    generation's threshold to :data:`YOUNG_THRESHOLD`; later calls do nothing.

    Call it when the process's imports and set-up are done, before its long work starts.
    Frozen objects are still freed when nothing refers to them; only a reference cycle among
    them is never collected, which is why this runs once, at start-up, and not between runs.
    Returns whether this call changed anything.
    """
    global _tuned
    with _lock:
        if _tuned:
            return False
        gc.collect()
        gc.freeze()
        _, middle, old = gc.get_threshold()
        gc.set_threshold(YOUNG_THRESHOLD, middle, old)
        _tuned = True
        return True
