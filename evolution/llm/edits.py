"""From a model reply to a candidate source: SEARCH/REPLACE blocks or a full rewrite.

Reading a reply (:func:`parse_reply`)
-------------------------------------
1. Over :data:`MAX_REPLY_BYTES` (UTF-8): ``too_large``, before anything else is looked at. A
   blank reply: ``empty``. ``\\r\\n`` line ends are read as ``\\n``.
2. **Full rewrite wins**: a fenced code block (```` ```python ````, ```` ```py ```` or a bare
   ```` ``` ````) that holds no SEARCH/REPLACE marker and defines ``class ModelNew`` at its top
   level is a whole file, whatever the prompt asked for. With several such blocks the **last**
   is taken: models that revise themselves put their final answer last.
3. Otherwise SEARCH/REPLACE blocks, anywhere in the reply (inside fences or not)::

       <<<<<<< SEARCH
       lines of the parent, quoted
       =======
       the lines to put there
       >>>>>>> REPLACE

   Markers are recognised on lines of their own (surrounding spaces allowed, 5 to 9 marker
   characters). A block left open, or a SEARCH section that is blank: ``malformed``; more
   than :data:`MAX_BLOCKS` blocks: ``too_large``.
4. Otherwise a reply that is nothing but Python defining ``ModelNew`` (no fence) is a rewrite.
5. Otherwise ``malformed``: a fenced block not closed (a reply cut off at its token limit), code
   without ``ModelNew``, or no code at all.

Applying blocks (:func:`apply_edit`)
------------------------------------
Blocks apply in order, each to the text the previous ones left. A SEARCH section is matched on
whole lines: exactly first; if it matches nowhere, comparing lines with surrounding whitespace
stripped (then the replacement is re-indented by the difference of the first matched line's
indentation). It must match exactly once: zero is ``no_match``, more is ``ambiguous``. The
result over :data:`MAX_SOURCE_BYTES` is ``too_large``, a blank one ``empty``, one equal to the
parent (up to trailing whitespace) ``no_change``; a change of layout or comments only passes
here and is dropped later as a duplicate by its :attr:`~evolution.candidate.CandidateSpec.key`.

:func:`edit_source` does both and never raises: it returns an :class:`EditResult`.
:func:`diff_blocks` and :func:`format_blocks` write blocks that turn one source into another
(for tests, scripted replies and benchmarks).
"""

from __future__ import annotations

import dataclasses
import difflib
import re

from evaluator_worker import parsing
from evolution.llm.errors import EditError

MAX_REPLY_BYTES = 200_000
"""Largest reply read, in UTF-8 bytes."""
MAX_SOURCE_BYTES = 200_000
"""Largest candidate source an edit may produce, in UTF-8 bytes."""
MAX_BLOCKS = 64
"""Most SEARCH/REPLACE blocks one reply may hold (more is ``too_large``: each is a search)."""

MALFORMED = "malformed"
NO_MATCH = "no_match"
AMBIGUOUS = "ambiguous"
EMPTY = "empty"
TOO_LARGE = "too_large"
NO_CHANGE = "no_change"
#: Every machine reason an edit can fail with.
FAILURES = (MALFORMED, NO_MATCH, AMBIGUOUS, EMPTY, TOO_LARGE, NO_CHANGE)

DIFF = "diff"
REWRITE = "rewrite"

_SEARCH = re.compile(r"\s*<{5,9}\s*SEARCH\s*\Z")
_DIVIDER = re.compile(r"\s*={5,9}\s*\Z")
_REPLACE = re.compile(r"\s*>{5,9}\s*REPLACE\s*\Z")
_MARKER = re.compile(r"^\s*(<{5,9}\s*SEARCH|>{5,9}\s*REPLACE)\s*$", re.MULTILINE)
_FENCE = re.compile(r"\s*```\s*([A-Za-z0-9_+-]*)\s*\Z")
_PYTHON_LANGS = frozenset({"", "python", "py", "python3"})
_MODEL_NEW = re.compile(r"^class\s+ModelNew\b", re.MULTILINE)


@dataclasses.dataclass(frozen=True)
class Block:
    """One SEARCH/REPLACE block: lines to find in the source and the lines to put there."""

    search: tuple[str, ...]
    replace: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Edit:
    """What a reply asks for: ``kind`` is ``"diff"`` (``blocks``) or ``"rewrite"`` (``source``)."""

    kind: str
    blocks: tuple[Block, ...] = ()
    source: str = ""


@dataclasses.dataclass(frozen=True)
class EditResult:
    """The outcome of turning a reply into a candidate source.

    Attributes
    ----------
    source:
        The new candidate source, or None when the edit failed.
    kind:
        ``"diff"`` or ``"rewrite"``; ``""`` when the reply could not be read.
    reason:
        None on success, else one of :data:`FAILURES`.
    message:
        What went wrong, for the stored proposal and a repair prompt ("" on success).
    blocks:
        How many SEARCH/REPLACE blocks the reply held.
    """

    source: str | None
    kind: str = ""
    reason: str | None = None
    message: str = ""
    blocks: int = 0

    @property
    def ok(self) -> bool:
        """Whether the reply gave a new source."""
        return self.source is not None


def _check_size(text: str, limit: int, what: str) -> None:
    # len() in characters is a lower bound of the UTF-8 size: a huge text fails before encoding.
    if len(text) > limit or len(text.encode("utf-8", "surrogatepass")) > limit:
        raise EditError(TOO_LARGE, f"the {what} is over {limit} bytes")


def _fences(lines: list[str]) -> tuple[list[str], bool]:
    """Bodies of the closed python-ish fenced blocks, and whether one was left open."""
    bodies: list[str] = []
    i = 0
    while i < len(lines):
        opened = _FENCE.match(lines[i])
        if not opened:
            i += 1
            continue
        lang = opened.group(1).lower()
        for j in range(i + 1, len(lines)):
            if lines[j].strip() == "```":
                if lang in _PYTHON_LANGS:
                    bodies.append("\n".join(lines[i + 1 : j]) + "\n")
                i = j + 1
                break
        else:
            return bodies, lang in _PYTHON_LANGS
    return bodies, False


def _is_whole_file(body: str) -> bool:
    return bool(_MODEL_NEW.search(body)) and not _MARKER.search(body)


def _blocks(lines: list[str]) -> list[Block]:
    """The SEARCH/REPLACE blocks in reading order; EditError for one left open or blank."""
    out: list[Block] = []
    state, search, replace = "out", [], []
    for n, line in enumerate(lines, 1):
        if state == "out":
            if _SEARCH.match(line):
                state, search, replace = "search", [], []
        elif state == "search":
            if _DIVIDER.match(line):
                state = "replace"
            elif _SEARCH.match(line) or _REPLACE.match(line):
                raise EditError(MALFORMED, f"line {n}: marker before the SEARCH block's =======")
            else:
                search.append(line)
        elif _REPLACE.match(line):
            if not any(s.strip() for s in search):
                raise EditError(MALFORMED, "a SEARCH section is blank: quote the lines to change")
            out.append(Block(tuple(search), tuple(replace)))
            state = "out"
        elif _SEARCH.match(line):
            raise EditError(MALFORMED, f"line {n}: SEARCH inside a block (>>>>>>> REPLACE missing)")
        else:
            replace.append(line)
    if state != "out":
        raise EditError(MALFORMED, "a SEARCH/REPLACE block is not closed with >>>>>>> REPLACE")
    return out


def _parses(text: str) -> bool:
    try:
        parsing.parse(text)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return False
    return True


def parse_reply(reply: str, max_bytes: int = MAX_REPLY_BYTES) -> Edit:
    """Read a model reply as an :class:`Edit` (the rules are in the module docstring).

    Raises
    ------
    EditError
        ``too_large``, ``empty`` or ``malformed``, with a message that says what was wrong.
    """
    _check_size(reply, max_bytes, "reply")
    if not reply.strip():
        raise EditError(EMPTY, "the reply is empty")
    lines = reply.replace("\r\n", "\n").split("\n")
    bodies, left_open = _fences(lines)
    whole = [b for b in bodies if _is_whole_file(b)]
    if whole:
        return Edit(REWRITE, source=whole[-1])
    blocks = _blocks(lines)
    if len(blocks) > MAX_BLOCKS:
        raise EditError(TOO_LARGE, f"the reply holds {len(blocks)} blocks, over {MAX_BLOCKS}")
    if blocks:
        return Edit(DIFF, blocks=tuple(blocks))
    if left_open:
        raise EditError(MALFORMED, "the code block is not closed (was the reply cut off?)")
    text = reply.strip("\n") + "\n"
    if not bodies and _MODEL_NEW.search(text) and _parses(text):
        return Edit(REWRITE, source=text)
    if bodies or _MODEL_NEW.search(text):
        raise EditError(MALFORMED, "the code does not define class ModelNew at its top level")
    raise EditError(MALFORMED, "no SEARCH/REPLACE block and no ```python block with the whole file")


def _matches(hay: list[str], needle: list[str], strip: bool) -> list[int]:
    """Start lines where ``needle`` matches (at most two: one more means ambiguous)."""
    if strip:
        hay = [h.strip() for h in hay]
        needle = [n.strip() for n in needle]
    m, first, found = len(needle), needle[0], []
    for i in range(len(hay) - m + 1):
        if hay[i] == first and hay[i : i + m] == needle:
            found.append(i)
            if len(found) > 1:
                break
    return found


def _indent(line: str) -> str:
    return line[: len(line) - len(line.lstrip())]


def _reindent(replace: list[str], search_line: str, found_line: str) -> list[str]:
    """``replace`` shifted by the indentation difference between a quoted and a found line."""
    want, have = _indent(found_line), _indent(search_line)
    if want == have:
        return replace
    if want.endswith(have):
        extra = want[: len(want) - len(have)]
        return [extra + r if r.strip() else r for r in replace]
    if have.endswith(want):
        cut = have[: len(have) - len(want)]
        return [r[len(cut) :] if r.startswith(cut) else r for r in replace]
    return replace


def _apply_block(lines: list[str], block: Block, number: int) -> list[str]:
    search, replace = list(block.search), list(block.replace)
    found = _matches(lines, search, strip=False)
    if not found:
        found = _matches(lines, search, strip=True)
        if len(found) == 1:
            first = next(i for i, s in enumerate(search) if s.strip())
            replace = _reindent(replace, search[first], lines[found[0] + first])
    quoted = next(s for s in search if s.strip()).strip()[:80]
    if not found:
        raise EditError(
            NO_MATCH, f"block {number}: its SEARCH lines (from {quoted!r}) are not in the source"
        )
    if len(found) > 1:
        raise EditError(
            AMBIGUOUS,
            f"block {number}: its SEARCH lines (from {quoted!r}) occur more than once;"
            " quote more lines around them",
        )
    at = found[0]
    return lines[:at] + replace + lines[at + len(search) :]


def apply_edit(parent: str, edit: Edit, max_bytes: int = MAX_SOURCE_BYTES) -> str:
    """The source ``edit`` makes of ``parent`` (the rules are in the module docstring).

    Raises
    ------
    EditError
        ``no_match``, ``ambiguous``, ``too_large``, ``empty`` or ``no_change``.
    """
    if edit.kind == REWRITE:
        result = edit.source
    else:
        lines = parent.replace("\r\n", "\n").split("\n")
        for number, block in enumerate(edit.blocks, 1):
            lines = _apply_block(lines, block, number)
        result = "\n".join(lines)
    _check_size(result, max_bytes, "edited source")
    if not result.strip():
        raise EditError(EMPTY, "the edit leaves an empty source")
    if result.rstrip() == parent.replace("\r\n", "\n").rstrip():
        raise EditError(NO_CHANGE, "the edit leaves the parent's source unchanged")
    return result


def edit_source(
    parent: str,
    reply: str,
    *,
    max_reply_bytes: int = MAX_REPLY_BYTES,
    max_source_bytes: int = MAX_SOURCE_BYTES,
) -> EditResult:
    """Turn ``reply`` into a new source from ``parent``; never raises (failures are results)."""
    kind, count = "", 0
    try:
        edit = parse_reply(reply, max_reply_bytes)
        kind, count = edit.kind, len(edit.blocks)
        source = apply_edit(parent, edit, max_source_bytes)
    except EditError as exc:
        return EditResult(None, kind, exc.reason, str(exc), count)
    return EditResult(source, kind, None, "", count)


def diff_blocks(parent: str, target: str) -> list[Block]:
    """SEARCH/REPLACE blocks that turn ``parent`` into ``target`` under :func:`apply_edit`.

    One block per changed run of lines, each widened with context lines until its SEARCH part
    is non-blank and matches exactly once in the text the earlier blocks leave. Empty when the
    two are equal or no non-blank line is left to quote (write a rewrite instead).
    """
    a, b = parent.split("\n"), target.split("\n")
    if not any(line.strip() for line in a):
        return []
    current, delta, out = list(a), 0, []
    opcodes = difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes()
    for tag, i1, i2, j1, j2 in opcodes:
        if tag == "equal":
            continue
        start, end = i1 + delta, i2 + delta
        lo, hi = start, end
        while True:
            needle = current[lo:hi]
            if needle and any(s.strip() for s in needle):
                if len(_matches(current, needle, strip=False)) == 1:
                    break
            if lo == 0 and hi == len(current):
                return []  # nothing non-blank left to quote: only a rewrite can say it
            lo, hi = max(lo - 1, 0), min(hi + 1, len(current))
        replace = current[lo:start] + b[j1:j2] + current[end:hi]
        out.append(Block(tuple(current[lo:hi]), tuple(replace)))
        current[lo:hi] = replace
        delta += (j2 - j1) - (i2 - i1)
    return out


def format_blocks(blocks: list[Block] | tuple[Block, ...]) -> str:
    """The reply text of ``blocks``, in the format :func:`parse_reply` reads."""
    parts = []
    for block in blocks:
        parts += ["<<<<<<< SEARCH", *block.search, "=======", *block.replace, ">>>>>>> REPLACE"]
    return "\n".join(parts) + "\n"
