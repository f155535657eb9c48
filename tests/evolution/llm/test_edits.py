"""Replies become candidate sources: SEARCH/REPLACE blocks, full rewrites, typed failures."""

from __future__ import annotations

import random
import time

import pytest

from evolution.llm.edits import (
    AMBIGUOUS,
    DIFF,
    EMPTY,
    MALFORMED,
    MAX_BLOCKS,
    NO_CHANGE,
    NO_MATCH,
    REWRITE,
    TOO_LARGE,
    apply_edit,
    diff_blocks,
    edit_source,
    format_blocks,
    parse_reply,
)
from evolution.llm.errors import EditError

PARENT = """import torch
import torch.nn as nn


class ModelNew(nn.Module):
    def __init__(self):
        super().__init__()

    def forward(self, x):
        y = torch.relu(x)
        return y * 2
"""

REWRITE_SRC = """import torch
import torch.nn as nn


class ModelNew(nn.Module):
    def forward(self, x):
        return torch.relu(x) * 2.0
"""


def test_one_block_in_a_fence_applies():
    reply = (
        "Fuse it:\n```python\n<<<<<<< SEARCH\n        y = torch.relu(x)\n        return y * 2\n"
        "=======\n        return torch.relu(x).mul_(2)\n>>>>>>> REPLACE\n```\n"
    )
    result = edit_source(PARENT, reply)
    assert result.ok and result.kind == DIFF and result.blocks == 1
    assert "return torch.relu(x).mul_(2)" in result.source
    assert "y = torch.relu(x)" not in result.source


def test_several_blocks_apply_in_order():
    reply = format_blocks(
        parse_reply(
            "<<<<<<< SEARCH\nimport torch\n=======\nimport math\nimport torch\n>>>>>>> REPLACE\n"
            "<<<<<<< SEARCH\n        return y * 2\n=======\n        return y * math.e\n"
            ">>>>>>> REPLACE\n"
        ).blocks
    )
    result = edit_source(PARENT, reply)
    assert result.ok and result.blocks == 2
    assert result.source.startswith("import math\nimport torch\n")
    assert "y * math.e" in result.source


def test_whitespace_tolerant_match_reindents_the_replacement():
    # Quoted with 4 spaces instead of 8 and a trailing space: found by the stripped comparison.
    reply = (
        "<<<<<<< SEARCH\n    y = torch.relu(x) \n=======\n    y = torch.sigmoid(x)\n>>>>>>> REPLACE"
    )
    result = edit_source(PARENT, reply)
    assert result.ok, result.message
    assert "\n        y = torch.sigmoid(x)\n" in result.source


def test_a_fenced_whole_file_is_a_rewrite_whatever_else_the_reply_holds():
    reply = (
        "<<<<<<< SEARCH\nnot in the parent\n=======\nx\n>>>>>>> REPLACE\n"
        f"Or rather, the whole file:\n```python\n{REWRITE_SRC}```\n"
    )
    result = edit_source(PARENT, reply)
    assert result.ok and result.kind == REWRITE
    assert result.source == REWRITE_SRC


def test_of_several_whole_files_the_last_wins():
    second = REWRITE_SRC.replace("2.0", "3.0")
    reply = f"```python\n{REWRITE_SRC}```\nbetter:\n```py\n{second}```\n```python\nx = 1\n```"
    assert edit_source(PARENT, reply).source == second


def test_an_unfenced_whole_file_is_a_rewrite():
    assert edit_source(PARENT, REWRITE_SRC).source == REWRITE_SRC


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        ("", EMPTY),
        ("   \n\n", EMPTY),
        ("I cannot help with that.", MALFORMED),
        ("```python\ndef f():\n    return 1\n```", MALFORMED),  # code without ModelNew
        ("```python\nclass ModelNew:\n    pass\n", MALFORMED),  # cut off: fence never closed
        ("<<<<<<< SEARCH\nimport torch\n=======\nimport math\n", MALFORMED),  # block never closed
        ("<<<<<<< SEARCH\n\n=======\nimport math\n>>>>>>> REPLACE", MALFORMED),  # blank SEARCH
        ("<<<<<<< SEARCH\nimport numpy\n=======\nimport math\n>>>>>>> REPLACE", NO_MATCH),
        ("<<<<<<< SEARCH\nimport torch\n=======\nimport torch\n>>>>>>> REPLACE", NO_CHANGE),
        (f"```python\n{PARENT}```", NO_CHANGE),
    ],
)
def test_failures_have_a_reason_and_a_message(reply, reason):
    result = edit_source(PARENT, reply)
    assert not result.ok and result.source is None
    assert result.reason == reason
    assert result.message


def test_a_search_that_matches_twice_is_ambiguous():
    parent = PARENT + "\n\ndef g(x):\n        y = torch.relu(x)\n        return y\n"
    reply = "<<<<<<< SEARCH\n        y = torch.relu(x)\n=======\n        y = x\n>>>>>>> REPLACE"
    result = edit_source(parent, reply)
    assert result.reason == AMBIGUOUS and "more than once" in result.message


def test_deleting_everything_is_empty():
    reply = format_blocks([b for b in diff_blocks(PARENT, "\n")])
    assert edit_source(PARENT, reply).reason in (EMPTY, MALFORMED)
    with pytest.raises(EditError) as err:
        apply_edit("x = 1", parse_reply("<<<<<<< SEARCH\nx = 1\n=======\n>>>>>>> REPLACE"))
    assert err.value.reason == EMPTY


def test_a_huge_reply_is_refused_fast():
    reply = "<<<<<<< SEARCH\n" + "x = 1\n" * 2_000_000 + "=======\n>>>>>>> REPLACE\n"
    start = time.perf_counter()
    result = edit_source(PARENT, reply)
    assert result.reason == TOO_LARGE
    assert time.perf_counter() - start < 0.05


def test_a_result_over_the_limit_is_too_large():
    reply = "<<<<<<< SEARCH\nimport torch\n=======\n" + "# pad\n" * 2000 + ">>>>>>> REPLACE"
    assert edit_source(PARENT, reply, max_source_bytes=5000).reason == TOO_LARGE
    multibyte = "# é\n" * 40
    assert edit_source(PARENT, multibyte, max_reply_bytes=100).reason == TOO_LARGE


_VOCAB = [
    "x = 1", "y = x + 1", "return y", "", "    pass", "    return x", "def f(x):",
    "# note", "z = torch.relu(x)", "    y = y * 2", "import torch", "class A:",
]  # fmt: skip


def _random_source(rng: random.Random) -> str:
    lines = [rng.choice(_VOCAB) for _ in range(rng.randint(1, 30))]
    return "\n".join(lines) + rng.choice(["", "\n"])


def _mutate(rng: random.Random, source: str) -> str:
    lines = source.split("\n")
    for _ in range(rng.randint(1, 4)):
        op = rng.choice(["insert", "delete", "replace"])
        at = rng.randrange(len(lines) + (op == "insert"))
        if op == "insert":
            lines.insert(at, rng.choice(_VOCAB + ["new = 42", "w = 0"]))
        elif op == "delete" and len(lines) > 1:
            del lines[at]
        elif op == "replace":
            lines[at] = rng.choice(["changed()", "q = 3", "    r = 4"])
    return "\n".join(lines)


@pytest.mark.parametrize("seed", range(300))
def test_applying_generated_blocks_reproduces_the_target(seed):
    rng = random.Random(seed)
    parent = _random_source(rng)
    target = _mutate(rng, parent)
    blocks = diff_blocks(parent, target)
    result = edit_source(parent, format_blocks(blocks))
    if target.rstrip() == parent.rstrip():
        assert not blocks or result.reason == NO_CHANGE
    elif not target.strip():
        assert result.reason in (EMPTY, MALFORMED)
    elif blocks:
        assert result.ok, (result.reason, result.message)
        assert result.source == target


def test_too_many_blocks_are_refused():
    block = "<<<<<<< SEARCH\nimport torch\n=======\nimport torch\n>>>>>>> REPLACE\n"
    assert edit_source(PARENT, block * (MAX_BLOCKS + 1)).reason == TOO_LARGE
