"""The LLM bench's kernel and model: the ~4 KB seed, the scripted replies, the endpoint.

Used by ``bench/llm_bench.py`` (see its notes): :func:`seed_source` builds the Triton softmax
every child derives from, :class:`Replies` answers each request with a distinct valid child of
the parent in its prompt, and :class:`Endpoint` serves those replies from the loopback test
server (:class:`tests.llm_server.LlmTestServer`), in a process of its own or in this one.
"""

from __future__ import annotations

import itertools
import multiprocessing
import re
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from evolution.llm.edits import diff_blocks, format_blocks  # noqa: E402
from tests.llm_server import LlmTestServer, Scripted  # noqa: E402

LOOPED = ROOT / "examples" / "softmax" / "triton_softmax_looped.py"
SINGLE = ROOT / "examples" / "softmax" / "triton_softmax.py"
_CODE = re.compile(r"```python\n(.*?)\n```", re.S)
_TUNE = re.compile(r"^ROW_SPLIT = (\d+)$", re.M)


# --- the kernel and the model's replies ---------------------------------------------------------


def seed_source() -> str:
    """The looped softmax with the single-block kernel as its short-row path (~4 KB)."""
    looped, single = LOOPED.read_text(), SINGLE.read_text()
    kernel = single[single.index("@triton.jit") : single.index("\n\nclass ModelNew")]
    call = "        softmax_looped_kernel[(n_rows,)]("
    short = (
        "        if n_cols <= ROW_SPLIT * BLOCK:\n"
        "            # Short rows: the whole row in one block, one pass.\n"
        "            softmax_kernel[(n_rows,)](\n"
        "                out, x, x.stride(0), out.stride(0), n_cols,\n"
        "                BLOCK=triton.next_power_of_2(n_cols), num_warps=num_warps,\n"
        "            )\n"
        "            return out\n"
    )
    if call not in looped:
        raise SystemExit(f"{LOOPED.name} changed: the bench's seed cannot be built")
    source = looped.replace("\n\n@triton.jit", "\n# Rows up to ROW_SPLIT blocks use one pass.\n"
                            "ROW_SPLIT = 1\n\n\n@triton.jit", 1)  # fmt: skip
    source = source.replace("\n\nclass ModelNew", f"\n\n{kernel}\n\n\nclass ModelNew", 1)
    source = source.replace(call, short + call, 1)
    # A docstring of the length models write, so the source is the size of a real candidate.
    notes = "\n".join(
        f"    Tuning note {i}: the block width trades registers for fewer passes over the row;"
        " wider rows favour more warps." for i in range(12)
    )  # fmt: skip
    return source.replace(
        "class ModelNew(nn.Module):\n",
        f'class ModelNew(nn.Module):\n    """Row softmax.\n\n{notes}\n    """\n\n',
        1,
    )


class Replies:
    """The server's ``responder``: a distinct valid child of the prompt's parent per request,
    after ``latency_s``; alternately a SEARCH/REPLACE diff and a whole rewrite."""

    def __init__(self, latency_s: float, seed: str) -> None:
        self.latency_s = latency_s
        self.seed = seed
        self._n = itertools.count(2)
        self.no_parent = 0

    def __call__(self, body: dict | None) -> Scripted:
        n = next(self._n)
        content = ((body or {}).get("messages") or [{}])[-1].get("content", "")
        blocks = _CODE.findall(content)
        if len(blocks) > 1 and _TUNE.search(blocks[1]):
            parent = blocks[1]
        else:  # asked to target a cell with no elite near it: the model writes a new file
            self.no_parent += 1
            parent = self.seed
        child = _TUNE.sub(f"ROW_SPLIT = {n}", parent, count=1)
        child = child.replace("num_warps=num_warps,\n", f"num_warps=min(num_warps, {n}),\n", 1)
        if n % 2 and parent is not self.seed:
            text = (
                f"Splitting rows at {n} blocks keeps short rows in one pass.\n\n"
                + format_blocks(diff_blocks(parent, child))
            )
        else:
            text = f"Here is the whole file, rows split at {n} blocks:\n\n```python\n{child}\n```\n"
        return Scripted(
            text=text,
            delay_s=self.latency_s,
            prompt_tokens=len(content) // 4,
            completion_tokens=len(text) // 4,
        )


class Endpoint:
    """The test server answering with :class:`Replies`: in a process of its own (a model's
    endpoint is never in the controller's process, and the server's Python threads would take
    the controller's GIL), or with ``in_process`` in this one.

    ``base_url`` while it runs; :meth:`stop` returns and keeps ``max_concurrent`` (the most
    requests the server held at once) and ``no_parent`` (replies written without a parent).
    """

    def __init__(self, latency_s: float, seed: str, in_process: bool = False) -> None:
        self.max_concurrent = self.no_parent = 0
        self._server: LlmTestServer | None = None
        self._proc: Any = None
        if in_process:
            self._replies = Replies(latency_s, seed)
            self._server = LlmTestServer().start()
            self._server.responder = self._replies
            self.base_url = self._server.base_url
            return
        ctx = multiprocessing.get_context("fork")  # fast, and nothing of this one is needed
        self._conn, theirs = ctx.Pipe()
        self._proc = ctx.Process(target=_serve, args=(theirs, latency_s, seed), daemon=True)
        self._proc.start()
        if not self._conn.poll(30):
            raise SystemExit("the test server process did not start")
        self.base_url = self._conn.recv()

    def stop(self) -> None:
        """Stop serving and read the server's counts."""
        if self._server is not None:
            self._server.stop()
            self.max_concurrent, self.no_parent = (
                self._server.max_concurrent,
                self._replies.no_parent,
            )
            return
        self._conn.send("stop")
        if self._conn.poll(30):
            self.max_concurrent, self.no_parent = self._conn.recv()
        self._proc.join(10)
        if self._proc.is_alive():
            self._proc.kill()


def _serve(conn: Any, latency_s: float, seed: str) -> None:
    """The server process: serve until told to stop, then send the counts back."""
    server = LlmTestServer().start()
    replies = Replies(latency_s, seed)
    server.responder = replies
    conn.send(server.base_url)
    conn.recv()
    server.stop()
    conn.send((server.max_concurrent, replies.no_parent))
