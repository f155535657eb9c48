"""The canonical form of a candidate's source: what its duplicate key is a hash of.

Two sources that parse to the same syntax tree (whatever their comments, blank lines, quotes,
parentheses or line breaks) are the same candidate. :func:`canonical_form` writes the tree out
as a string of tokens: each node's class and, in the class's field order, every field that is
set, by name (child nodes in turn, lists bracketed, scalars by ``repr``); positions are not
fields, so layout leaves no trace. It is an encoding, not code: one token string per tree and
one tree per token string (the expression contexts, ``Load``/``Store``/``Del``, are left out:
the place of a node in the tree decides them). Fields that are unset (None, an empty list) are
left out too, so a newer Python that adds an empty field (3.12's ``type_params``) writes the
same form.

Writing a tree out this way costs about a quarter of ``ast.unparse`` (0.35-0.6 ms against
1.3-1.8 ms for a 4.3 KB Triton kernel on the development VM, measured side by side), which the
controller pays for every new candidate; the parse itself is shared with the static gate
(:func:`evaluator_worker.parsing.parse_shared`). Source that does not parse, or whose tree is
too deep to walk, is its own form, marked apart so that no text can pose as a parsed tree's
form.
"""

from __future__ import annotations

import ast
from typing import Any

from evaluator_worker import parsing

TREE_MARK = "ast\0"
"""Prefix of the form of a source that parsed."""
TEXT_MARK = "raw\0"
"""Prefix of the form of a source that did not (the text itself follows)."""
_SEP = "\0"

# Per node class: the opening token and, for each field but the context, the tokens that
# name it (alone before a node, with "=" before a scalar, with "[" before a list).
_SHAPES: dict[type, tuple[str, tuple[tuple[str, str, str], ...]]] = {}


def _shape(cls: type) -> tuple[str, tuple[tuple[str, str, str], ...]]:
    fields: tuple[str, ...] = getattr(cls, "_fields", ())
    shape = (cls.__name__ + "(", tuple((f, f + "=", f + "[") for f in fields if f != "ctx"))
    _SHAPES[cls] = shape
    return shape


def tree_tokens(tree: ast.AST) -> list[str]:
    """The tokens of ``tree`` (see the module notes); raises ``RecursionError`` for a tree
    deeper than the interpreter's recursion limit allows."""
    out: list[str] = []
    append = out.append
    shapes = _SHAPES
    node_type = ast.AST

    def visit(node: Any) -> None:
        cls = type(node)
        opening, fields = shapes.get(cls) or _shape(cls)
        append(opening)
        for name, scalar, listed in fields:
            value = getattr(node, name, None)
            if value is None:
                continue
            if isinstance(value, node_type):
                append(name)
                visit(value)
            elif type(value) is list:
                if value:
                    append(listed)
                    for item in value:
                        if isinstance(item, node_type):
                            visit(item)
                        else:
                            append(repr(item))
                    append("]")
            else:
                append(scalar)
                append(repr(value))
        append(")")

    visit(tree)
    return out


def canonical_form(source: str) -> str:
    """The canonical form of ``source``: equal for sources with the same syntax tree, different
    otherwise (see the module notes)."""
    try:
        tree = parsing.parse_shared(source)
        return TREE_MARK + _SEP.join(tree_tokens(tree))
    except (SyntaxError, ValueError, RecursionError):
        return TEXT_MARK + source
