"""evaluator_worker.parsing: one parse at a time, and the shared trees of recent sources."""

from __future__ import annotations

import ast
import threading

import pytest

from evaluator_worker import parsing


def test_a_recent_source_gives_the_same_tree_again():
    source = "x = 1  # shared-tree test a\n"
    first = parsing.parse_shared(source)
    assert parsing.parse_shared(source) is first
    assert ast.dump(first) == ast.dump(ast.parse(source))
    assert parsing.parse(source) is not first  # parse always parses


def test_only_the_newest_sources_are_kept():
    sources = [f"y = {i}  # shared-tree test b\n" for i in range(parsing.SHARED_TREES + 1)]
    trees = [parsing.parse_shared(s) for s in sources]
    assert parsing.parse_shared(sources[-1]) is trees[-1]
    assert parsing.parse_shared(sources[0]) is not trees[0]  # pushed out by the newer ones


def test_the_trees_kept_are_bounded_by_their_sources_total_size():
    parsing.clear_shared()
    # Each source just under the cap for one: a few of them fill the total.
    size = parsing.SHARED_MAX_CHARS - 100
    sources = [f"w = {i}\n" + "#" * size + "\n" for i in range(10)]
    trees = [parsing.parse_shared(s) for s in sources]
    fit = parsing.SHARED_TOTAL_CHARS // (size + 8)
    assert 0 < fit < len(sources)
    # The newest that fit are kept (looked up newest first: a miss parses and keeps again).
    newest = [parsing.parse_shared(s) is t for s, t in zip(sources[::-1], trees[::-1], strict=True)]
    assert newest[:fit] == [True] * fit and not any(newest[fit:])


def test_clear_shared_forgets_every_tree():
    source = "v = 1  # shared-tree test c\n"
    tree = parsing.parse_shared(source)
    parsing.clear_shared()
    assert parsing.parse_shared(source) is not tree


def test_a_long_source_is_not_kept():
    source = "z = 1\n" + "#" * parsing.SHARED_MAX_CHARS + "\n"
    assert parsing.parse_shared(source) is not parsing.parse_shared(source)


def test_a_source_that_does_not_parse_raises_every_time_with_its_filename():
    for _ in range(2):
        with pytest.raises(SyntaxError) as info:
            parsing.parse_shared("def f(:\n", filename="cand.py")
        assert info.value.filename == "cand.py"


def test_threads_parsing_at_once_get_correct_trees():
    sources = [f"def f{i}(a):\n    return [a * {i} for _ in range(3)]\n" for i in range(40)]
    errors: list[BaseException] = []

    def work(chunk: list[str]) -> None:
        try:
            for s in chunk * 5:
                # The reference tree through the lock too: two bare ast.parse calls at once
                # are what fails (see the module notes of evaluator_worker.parsing).
                assert ast.unparse(parsing.parse_shared(s)) == ast.unparse(parsing.parse(s))
        except BaseException as exc:  # noqa: BLE001 (reported by the main thread)
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(sources[i::4],)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
