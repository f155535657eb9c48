"""What a prompt tells the model a candidate must be: the candidate contract and the static
gate's rules in plain words.

The gate's rules are read from their data (:mod:`evaluator_worker.gate_rules`, standard library
only), so a rule added there shows up in every prompt: each reason (the ``WHY_*`` texts and the
reasons of the name tables) becomes one line, with a few of the names that trigger it. The
walker's own checks (a ``try`` statement, subclassing ``Model``) are not in any table; their
wording is :data:`CONSTRUCTS`, keyed by the ``WHY_*`` constant's name, and a test fails when a
``WHY_*`` constant has neither a table entry nor a wording here.
"""

from __future__ import annotations

import functools

from evaluator_worker import gate_rules

CANDIDATE_CONTRACT = """\
The candidate is one Python file:
- it defines `class ModelNew(nn.Module)` with the reference `Model`'s constructor and `forward`
  signatures; its parameters and buffers have `Model`'s state_dict keys (the evaluator loads
  the reference's weights into it), and its output must match the reference's within the
  task's tolerance on fresh random inputs and held-out shapes;
- it may declare `SEARCH_SPACE = {"NAME": [choice, ...], ...}`, a literal dict: the chosen
  values (the first of each list by default) are set as module globals before the file runs,
  and a parameter search then tunes them;
- kernels are Triton (`@triton.jit`), CuPy `RawKernel` or plain PyTorch; the file is imported,
  never run as a script, and it must pass the static gate below."""

#: Plain words for the checks of the gate's walker, by the ``WHY_*`` constant they report.
CONSTRUCTS: dict[str, str] = {
    "WHY_CATCH": "try/except or a class defining __exit__",
    "WHY_SUBCLASS": (
        "subclassing Model, torch.Tensor or nn.Parameter, or defining __torch_function__ /"
        " __torch_dispatch__"
    ),
    "WHY_ESCAPE": (
        "dunder attributes such as __globals__, __code__, __subclasses__, frame attributes, or"
        " writing .__dict__ / .__class__"
    ),
    "WHY_PATCH": "assigning attributes of imported modules (torch, triton, time, ...)",
    "WHY_ENV": "writing os.environ",
    "WHY_HIDDEN": "getattr with a computed name, 'from X import *', three-argument type()",
    "WHY_PRECISION": "calling torch.backends.* setters",
    "WHY_L2": "persisting-L2 or access-policy settings in CUDA source",
    "WHY_TIMER": "reading %globaltimer or %clock in inline asm",
}

#: The gate's other walker check, with its own reason.
SEARCH_SPACE_RULE = "SEARCH_SPACE must be a literal dict (the search reads it without running it)"


def _why_constants() -> dict[str, str]:
    """``{constant name: reason}`` of the ``WHY_*`` texts, in their order in the module."""
    return {
        k: v for k, v in vars(gate_rules).items() if k.startswith("WHY_") and isinstance(v, str)
    }


def _module_reason(note: str) -> str:
    return note or "interpreter internals, serialisation and the file system are off limits"


def _by_reason() -> dict[str, list[str]]:
    """Every reason of the name tables with the names that trigger it, in table order."""
    out: dict[str, list[str]] = {}
    for name, note in gate_rules.BANNED_MODULES.items():
        out.setdefault(_module_reason(note), []).append(f"import {name}")
    for table in (gate_rules.BANNED_NAMES, gate_rules.BANNED_BUILTINS):
        for name, why in table.items():
            out.setdefault(why, []).append(name)
    for prefix, why in gate_rules.BANNED_PREFIXES.items():
        out.setdefault(why, []).append(prefix + "*")
    return out


@functools.lru_cache(maxsize=8)
def gate_rules_text(examples: int = 8) -> str:
    """The static gate's rules as a bulleted list, one line per reason (made once: the tables
    are constants, and every prompt holds it).

    Parameters
    ----------
    examples:
        How many of the names that trigger a reason are shown on its line (then "and N more").

    Returns
    -------
    str
        Lines ``- <what>: <why>``, the ``WHY_*`` reasons first in their module order, then the
        other reasons of the tables (modules) in table order, then the ``SEARCH_SPACE`` rule.
    """
    names = _by_reason()
    lines = ["The static gate refuses, before anything runs, a source that uses:"]
    whys = _why_constants()
    for const, why in whys.items():
        lines.append(f"- {_what(CONSTRUCTS.get(const), names.pop(why, []), examples)}: {why}")
    for why, triggers in names.items():
        lines.append(f"- {_what(None, triggers, examples)}: {why}")
    lines.append(f"- {SEARCH_SPACE_RULE}")
    lines.append("An honest kernel needs none of these; a refused source is never run.")
    return "\n".join(lines)


def _what(construct: str | None, triggers: list[str], examples: int) -> str:
    parts = [construct] if construct else []
    if triggers:
        shown = ", ".join(triggers[:examples])
        more = len(triggers) - examples
        parts.append(shown + (f" and {more} more" if more > 0 else ""))
    return "; ".join(parts) if parts else "(see the gate)"


def undescribed_rules() -> list[str]:
    """``WHY_*`` constants with neither a wording in :data:`CONSTRUCTS` nor a table entry."""
    used = set(_by_reason())
    return [k for k, v in _why_constants().items() if k not in CONSTRUCTS and v not in used]
